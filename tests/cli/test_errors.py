"""Bad input reaches the user as one line ``lora-qta: error: ...`` with exit status 2, never a
traceback: unknown board, impossible shapes or modes, a C-simulation build that fails."""

import os
import subprocess
import sys

import pytest


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "lora_qta.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


def one_error_line(p: subprocess.CompletedProcess) -> str:
    """The single ``lora-qta: error:`` line of a failed command's stderr."""
    assert p.returncode == 2, p.stdout + p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lora-qta: error: "), p.stderr
    return lines[0]


def test_unknown_board():
    assert "unknown board 'zedboard'" in one_error_line(run("gemm", "8", "8", "8", "--board", "zedboard"))
    assert "use one of kv260, pynq_z2, zcu104" in one_error_line(run("csim", "--board", "zedboard"))
    assert "unknown board 'nexys'" in one_error_line(run("config", "tcl", "--board", "nexys"))


@pytest.mark.parametrize("args, message", [
    (["gemm", "0", "8", "8"], "GEMM dimensions must be at least 1, got M=0"),
    (["gemm", "-3", "8", "8"], "GEMM dimensions must be at least 1, got M=-3"),
    (["gemm", "70000", "8", "8"], "M = 70000 is outside 1..65536"),
    (["gemm", "8", "8", "8", "--dataflow", "ws", "--split", "1"], "weight-stationary needs split <= 0"),
    (["energy", "--models", "sd21", "--no-plot"], "unknown model 'sd21'"),
])
def test_bad_shapes_and_modes(args, message):
    assert message in one_error_line(run(*args))


@pytest.mark.parametrize("args", [["csim"], ["gemm", "16", "16", "16", "--backend", "csim"]])
def test_a_missing_compiler_is_one_line(args, tmp_path):
    line = one_error_line(run(*args, env={"CXX": "/nonexistent/g++", "LORA_QTA_CACHE": str(tmp_path)}))
    assert "C++ compiler '/nonexistent/g++' not found; install g++" in line
