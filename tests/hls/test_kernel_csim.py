"""The HLS kernel itself: its C++ testbench under g++, and the synthesizable-subset rules."""

from pathlib import Path

import pytest

from hls_rules import violations
from lora_qta.runtime import csim
from lora_qta.hw.config import config

HLS_SRC = Path(__file__).resolve().parents[2] / "hls" / "src"
KERNEL_SOURCES = [HLS_SRC / "qta_gemm.cpp", HLS_SRC / "qta_gemm.h"]


@pytest.mark.parametrize("board", sorted(config().boards))
def test_cpp_testbench_passes(board):
    proc = csim.run_testbench(config().board(board))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " 0 failed" in proc.stdout


def test_build_uses_strict_warnings():
    assert {"-std=c++14", "-Wall", "-Werror"} <= set(csim.CXXFLAGS)


@pytest.mark.parametrize("path", KERNEL_SOURCES, ids=lambda p: p.name)
def test_kernel_sources_are_in_the_synthesizable_subset(path: Path):
    assert violations(path.read_text()) == []


@pytest.mark.parametrize("snippet, rule", [
    ("int *p = new int[4];", "dynamic memory"),
    ("#include <vector>\nstd::vector<int> v;", "standard containers"),
    ("void f(int n) {\n  while (n) { n--; }\n}", "unbounded loops"),
    ("#pragma HLS RESOURCE variable=x core=RAM_2P", "legacy Vivado HLS"),
    ("#pragma HLS INTERFACE s_axilite port=return", "legacy INTERFACE"),
    ("void g(int n) {\n  for (int i = 0; i < n; i++) {\n    x += i;\n  }\n}", "LOOP_TRIPCOUNT"),
    ("\nint fact(int n) {\n  return n ? n * fact(n - 1) : 1;\n}", "recursion"),
])
def test_rules_catch_violations(snippet, rule):
    assert any(rule in v for v in violations(snippet)), violations(snippet)


def test_kernel_reports_config_digest():
    from lora_qta.hw.config import board_digest

    for name in config().boards:
        board = config().board(name)
        assert csim.load(board)._lib.qta_csim_config_digest().decode() == board_digest(board)
