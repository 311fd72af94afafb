"""The Tcl flows without the AMD tools: every script is syntactically complete (tclsh ``info
complete``) and refuses to run outside the tool it is written for; every ``$QTA_*`` variable the
scripts use is defined by the generated ``config.tcl`` of every board, and no board value is
hard-coded in the scripts."""

from __future__ import annotations

import re
import subprocess

import pytest

from flow_helpers import BOARDS, TARGET_VERSION, TCL_DIR, TCL_SCRIPTS, TCLSH, config_vars, needs_tclsh, run


# ------------------------------------------------------------------------------- Tcl syntax

# Reads a file and reports the first line of a command that never completes.
TCL_CHECKER = r"""
set fh [open [lindex $argv 0] r]
set lines [split [read $fh] \n]
close $fh
set command ""
set start 0
set n 0
foreach line $lines {
    incr n
    if {$command eq ""} { set start $n }
    append command $line \n
    if {[info complete $command]} { set command "" }
}
if {[string trim $command] ne ""} {
    puts "command starting at line $start is not complete"
    exit 1
}
"""


def test_all_tcl_scripts_exist():
    assert sorted(p.name for p in TCL_DIR.glob("*.tcl")) == sorted(TCL_SCRIPTS)


@needs_tclsh
@pytest.mark.parametrize("name", TCL_SCRIPTS)
def test_tcl_script_is_complete(name, tmp_path):
    checker = tmp_path / "check.tcl"
    checker.write_text(TCL_CHECKER)
    res = subprocess.run([TCLSH, str(checker), str(TCL_DIR / name)], capture_output=True, text=True)
    assert res.returncode == 0, f"{name}: {res.stdout}{res.stderr}"


@needs_tclsh
def test_tcl_checker_detects_an_unbalanced_brace(tmp_path):
    checker = tmp_path / "check.tcl"
    checker.write_text(TCL_CHECKER)
    bad = tmp_path / "bad.tcl"
    bad.write_text('puts ok\nif {1} {\n    puts "missing brace"\n')
    res = subprocess.run([TCLSH, str(checker), str(bad)], capture_output=True, text=True)
    assert res.returncode == 1 and "line 2" in res.stdout


@needs_tclsh
@pytest.mark.parametrize("name,tool", [("run_hls.tcl", "Vitis HLS"), ("build_bitstream.tcl", "Vivado")])
def test_tcl_flow_refuses_to_run_outside_its_tool(name, tool):
    res = run([TCLSH, str(TCL_DIR / name), BOARDS[0]])
    assert res.returncode == 2
    assert tool in res.stderr and TARGET_VERSION in res.stderr


# ------------------------------------------------------------------------ config variables

QTA_REF = re.compile(r"\$\{?(?:::)?(QTA_[A-Za-z0-9_]+)")


def referenced_vars(name: str) -> set[str]:
    return set(QTA_REF.findall((TCL_DIR / name).read_text()))


# What each script must take from config.tcl rather than spell out itself.
REQUIRED_REFS = {
    "run_hls.tcl": {"QTA_BOARD", "QTA_PART", "QTA_CLOCK_PERIOD_NS", "QTA_TOP", "QTA_VLNV",
                    "QTA_AXI_DATA_WIDTH", "QTA_BUDGET"},
    "build_bitstream.tcl": {"QTA_BOARD", "QTA_FAMILY", "QTA_PART", "QTA_BOARD_PART", "QTA_VLNV",
                            "QTA_KERNEL_BASE_ADDRESS", "QTA_ADDRESS_RANGE", "QTA_BITSTREAM_NAME",
                            "QTA_CLOCK_MHZ", "QTA_AXI_PORTS"},
    "bd_zynq_us.tcl": {"QTA_CLOCK_MHZ", "QTA_AXI_DATA_WIDTH"},
    "bd_zynq7.tcl": {"QTA_CLOCK_MHZ", "QTA_AXI_DATA_WIDTH"},
}


@pytest.mark.parametrize("name", TCL_SCRIPTS)
def test_tcl_script_takes_its_values_from_config(name):
    missing = REQUIRED_REFS[name] - referenced_vars(name)
    assert not missing, f"{name} does not use {sorted(missing)}"


@pytest.mark.parametrize("board", BOARDS)
def test_generated_config_defines_every_variable_the_scripts_use(board):
    defined = set(config_vars(board))
    assert {"QTA_BOARD", "QTA_PART", "QTA_VLNV"} <= defined
    for name in TCL_SCRIPTS:
        undefined = referenced_vars(name) - defined
        assert not undefined, f"{name} uses {sorted(undefined)}, not in config.tcl of {board}"


@pytest.mark.parametrize("board", BOARDS)
def test_no_board_value_is_hard_coded(board):
    values = config_vars(board)
    for name in TCL_SCRIPTS:
        text = (TCL_DIR / name).read_text()
        for key in ("QTA_PART", "QTA_BOARD_PART", "QTA_KERNEL_BASE_ADDRESS", "QTA_VLNV"):
            assert values[key] not in text, f"{name} hard-codes {key} = {values[key]}"


def test_every_config_variable_is_used():
    used = set().union(*(referenced_vars(n) for n in TCL_SCRIPTS))
    unused = set(config_vars(BOARDS[0])) - used
    assert not unused, f"config.tcl variables no flow uses: {sorted(unused)}"
