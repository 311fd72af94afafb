"""The lora-qta command line as a user runs it."""

import subprocess
import sys

import pytest

from lora_qta.cli import build_parser, main


def run(*args):
    return subprocess.run([sys.executable, "-m", "lora_qta.cli", *args], capture_output=True, text=True)


def test_gemm_reports_bit_exact_cycles_and_utilization():
    p = run("gemm", "300", "320", "8", "--trans-b", "--backend", "csim")
    assert p.returncode == 0, p.stderr
    assert "bit-exact with numpy" in p.stdout
    assert "cycles" in p.stdout and "utilization" in p.stdout and "OS partitioned" in p.stdout


def test_gemm_int8_stochastic_forced_ws():
    p = run("gemm", "64", "96", "40", "--dataflow", "ws", "--out", "int8", "--rounding", "stochastic")
    assert p.returncode == 0, p.stderr
    assert "WS" in p.stdout and "bit-exact" in p.stdout


def test_info_prints_configuration_and_register_map():
    p = run("info", "--board", "pynq_z2")
    assert p.returncode == 0, p.stderr
    assert "16x8 PEs" in p.stdout and "| 0x40 | `m` |" in p.stdout and "not synthesized" in p.stdout


def test_demo_checks_all_six_gemms(capsys):
    assert main(["demo", "--tokens", "64", "--features", "48", "--rank", "4"]) == 0
    out = capsys.readouterr().out
    assert out.count("yes") == 18 and "bit-exact" in out


def test_errors_are_clear_and_exit_2():
    p = run("gemm", "8", "8", "8", "--board", "zedboard")
    assert p.returncode == 2 and "unknown board 'zedboard'" in p.stderr and "Traceback" not in p.stderr
    p = run("gemm", "8", "8", "8", "--dataflow", "ws", "--split", "1")
    assert p.returncode == 2 and "weight-stationary needs split <= 0" in p.stderr


@pytest.mark.parametrize("command", ["info", "gemm", "demo", "csim", "config", "run", "finetune", "evaluate"])
def test_every_option_has_help(command):
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    for action in sub._actions:
        if action.dest != "help":
            assert action.help and len(action.help) > 10, (command, action.dest)


@pytest.mark.parametrize("command", ["bench", "energy", "power"])
def test_delegated_commands_explain_their_options(command):
    p = run(command, "--help")
    assert p.returncode == 0 and "--out" in p.stdout
