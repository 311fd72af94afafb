"""The hardware-side commands as a user runs them: gemm, info, demo; and all of them (with csim
and config) in an environment where PyTorch cannot be imported."""

import subprocess
import sys

import pytest

from lora_qta.cli import main
from lora_qta.hw.config import config

REG = config().registers


def run(*args, **kw):
    return subprocess.run([sys.executable, "-m", "lora_qta.cli", *args], capture_output=True, text=True, **kw)


def test_gemm_reports_bit_exact_cycles_and_utilization():
    # a LoRA-rank GEMM (N = 8) in the partitioned mode, asked for by name: with the per-burst model
    # the planner's own choice for it is plain OS (fetch-bound; tests/analysis cover the choice)
    p = run("gemm", "300", "320", "8", "--trans-b", "--backend", "csim", "--dataflow", "partitioned")
    assert p.returncode == 0, p.stderr
    assert "bit-exact with numpy" in p.stdout
    assert "cycles" in p.stdout and "utilization" in p.stdout and "OS partitioned (split" in p.stdout


def test_gemm_int8_stochastic_forced_ws():
    p = run("gemm", "64", "96", "40", "--dataflow", "ws", "--out", "int8", "--rounding", "stochastic")
    assert p.returncode == 0, p.stderr
    assert "WS" in p.stdout and "bit-exact" in p.stdout


def test_info_prints_configuration_and_register_map():
    p = run("info", "--board", "pynq_z2")
    assert p.returncode == 0, p.stderr
    bd = config().board("pynq_z2")
    assert f"{bd.array_rows}x{bd.array_cols} PEs" in p.stdout and f"| 0x{REG['m']:02X} | `m` |" in p.stdout and "not synthesized" in p.stdout
    assert "pre-place-and-route, no timing" in p.stdout and "estimate" in p.stdout   # labelled figures


def test_demo_checks_all_six_gemms(capsys):
    assert main(["demo", "--tokens", "64", "--features", "48", "--rank", "4"]) == 0
    out = capsys.readouterr().out
    assert out.count("yes") == 18 and "bit-exact" in out
    assert "fwd  H = X.A^T" in out and "bwd dX = dH.A" in out


@pytest.mark.parametrize("opt", ["--tokens", "--features", "--rank"])
def test_demo_names_a_bad_size_option(opt, capsys):
    assert main(["demo", opt, "0"]) == 2
    assert f"lora-qta: error: {opt} must be at least 1, not 0" in capsys.readouterr().err


# Runs the command line with a meta-path finder in front that refuses every torch module, as on a
# board image without PyTorch (PYNQ-Z2 has no wheel for it).
NO_TORCH = """
import importlib.abc
import sys


class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"{name} is unimportable in this test")
        return None


sys.meta_path.insert(0, NoTorch())
from lora_qta.cli import main

code = main(sys.argv[1:])
assert "torch" not in sys.modules
sys.exit(code)
"""


@pytest.mark.parametrize("args, expect", [
    (["csim", "--board", "pynq_z2"], " 0 failed"),
    (["info", "--board", "kv260"], f"| 0x{REG['cycles_measured']:02X} | `cycles_measured` |"),
    (["config", "header", "--board", "zcu104"], "#define QTA_TOP_PARAMS"),
    (["config", "regmap"], f"| 0x{REG['a']:02X} | `a` |"),
    (["gemm", "300", "320", "8", "--trans-b"], "bit-exact with numpy"),        # fast engine, float64 path
    (["gemm", "64", "96", "40", "--backend", "csim", "--out", "int8"], "bit-exact with numpy"),
    (["demo", "--tokens", "32", "--features", "24", "--rank", "4"], "all outputs bit-exact"),
    (["calltime", "--calls", "3", "--warmup", "1", "--backend", "csim"], "whole call path (Accelerator.gemm)"),
])
def test_hardware_commands_run_without_torch(args, expect):
    p = subprocess.run([sys.executable, "-c", NO_TORCH, *args], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert expect in p.stdout
