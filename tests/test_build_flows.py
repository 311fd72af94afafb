"""Checks of the bitstream build flow that run without the AMD tools.

* every Tcl script is syntactically complete (tclsh ``info complete``) and refuses to run
  outside the tool it is written for;
* every ``$QTA_*`` variable the scripts use is defined by the generated ``config.tcl`` of
  every board, and no board value is hard-coded in the scripts;
* ``scripts/build_bitstream.sh``: ``bash -n``, help, unknown board, missing tools;
* the whole flow, with stand-ins for ``vitis_hls``, ``vitis-run`` and ``vivado``: a tclsh
  interpreter that runs the real scripts against the generated config, logs every tool
  command and fakes the files the tools write. This checks the commands and the values
  the scripts pass (part, clock, widths, addresses, VLNV), not what the tools would do.

The flow tests run in a copy of the repository under ``tmp_path``, never in the checkout.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TCL_DIR = REPO / "hls" / "tcl"
SCRIPT = REPO / "scripts" / "build_bitstream.sh"
TCL_SCRIPTS = ("run_hls.tcl", "build_bitstream.tcl", "bd_zynq_us.tcl", "bd_zynq7.tcl")
CSYNTH_STANDINS = REPO / "tests" / "data" / "csynth"
GATE = REPO / "hls" / "tcl" / "csynth_gate.py"
TOOLS = ("vitis_hls", "vitis-run", "vivado")
TARGET_VERSION = "2024.2"

TCLSH = shutil.which("tclsh")
needs_tclsh = pytest.mark.skipif(TCLSH is None, reason="tclsh is not installed")


def generator(*args: str) -> str:
    """Output of ``python -m lora_qta.hwconfig ARGS`` run from the checkout."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "host"))
    return subprocess.run([sys.executable, "-m", "lora_qta.hwconfig", *args], env=env,
                          check=True, capture_output=True, text=True).stdout


def board_names() -> list[str]:
    """The boards of hardware.toml, by the generator's own answer to an unknown board."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "host"))
    code = "from lora_qta.hwconfig import config; print(' '.join(sorted(config().boards)))"
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                         capture_output=True, text=True).stdout
    return out.split()


BOARDS = board_names()


def config_vars(board: str) -> dict[str, str]:
    """The ``set QTA_X {value}`` lines of the generated config.tcl of ``board``."""
    return dict(re.findall(r"^set (QTA_\w+) \{(.*)\}$", generator("tcl", "--board", board), re.M))


def tool_free_path() -> str:
    """PATH without any directory that holds one of the AMD tools."""
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep)
            if d and not any((Path(d) / t).exists() for t in TOOLS)]
    return os.pathsep.join(dirs)


def run(cmd: list[str], env_extra: dict[str, str] | None = None, path: str | None = None,
        cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QTA_", "MOCK_"))}
    env.pop("PYTHONPATH", None)
    env["PATH"] = path if path is not None else tool_free_path()
    env["QTA_PYTHON"] = sys.executable
    env.update(env_extra or {})
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


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


# ----------------------------------------------------------------- build_bitstream.sh basics

def test_script_passes_bash_syntax_check():
    res = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_script_help():
    res = run(["bash", str(SCRIPT), "-h"])
    assert res.returncode == 0
    assert "usage: scripts/build_bitstream.sh <board>" in res.stdout
    assert "--hls-only" in res.stdout and "--cosim" in res.stdout
    assert f"Vitis/{TARGET_VERSION}/settings64.sh" in res.stdout


def copy_repo(dst: Path, git: bool = True) -> Path:
    """The files the flow reads, in a fresh directory (kernel sources are placeholders)."""
    shutil.copytree(REPO / "host" / "lora_qta", dst / "host" / "lora_qta",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for rel in ("scripts/build_bitstream.sh", "hls/tcl/csynth_gate.py", *(f"hls/tcl/{n}" for n in TCL_SCRIPTS)):
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dst / rel)
    for rel in ("hls/src/qta_gemm.cpp", "hls/src/qta_gemm.h", "hls/src/qta_blocks.h", "hls/tb/qta_gemm_tb.cpp"):
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        (dst / rel).write_text("// placeholder: the stand-in tools compile nothing\n")
    if git:
        subprocess.run(["git", "init", "-q"], cwd=dst, check=True)
        subprocess.run(["git", "add", "-A"], cwd=dst, check=True)
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com",
                        "commit", "-qm", "fixture"], cwd=dst, check=True)
    return dst


def test_script_rejects_an_unknown_board(tmp_path):
    repo = copy_repo(tmp_path / "repo", git=False)
    res = run(["bash", str(repo / "scripts/build_bitstream.sh"), "no_such_board"])
    assert res.returncode != 0
    assert "no_such_board" in res.stderr
    for board in BOARDS:
        assert board in res.stderr
    assert not (repo / "build").exists()


@pytest.mark.parametrize("args", [[], ["zcu104", "--fast"], ["zcu104", "kv260"]])
def test_script_rejects_bad_arguments(args):
    res = run(["bash", str(SCRIPT), *args])
    assert res.returncode == 64
    assert "error:" in res.stderr


def test_script_without_tools_exits_2_naming_them(tmp_path):
    repo = copy_repo(tmp_path / "repo", git=False)
    res = run(["bash", str(repo / "scripts/build_bitstream.sh"), BOARDS[0]])
    assert res.returncode == 2, res.stderr
    assert "vitis_hls" in res.stderr and "vivado" in res.stderr
    assert TARGET_VERSION in res.stderr and "settings64.sh" in res.stderr
    # the configuration is generated before the tools are looked for
    assert (repo / "build" / BOARDS[0] / "config.tcl").is_file()
    assert (repo / "build" / BOARDS[0] / "qta_config.h").is_file()


def fake_tool(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def test_script_names_only_the_missing_tool(tmp_path):
    repo = copy_repo(tmp_path / "repo", git=False)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_tool(bin_dir, "vitis_hls", "exit 0\n")
    path = f"{bin_dir}{os.pathsep}{tool_free_path()}"
    res = run(["bash", str(repo / "scripts/build_bitstream.sh"), BOARDS[0]], path=path)
    assert res.returncode == 2
    assert "not on PATH: vivado." in res.stderr

    # --hls-only needs no Vivado, but an HLS tool
    res = run(["bash", str(repo / "scripts/build_bitstream.sh"), BOARDS[0], "--hls-only"])
    assert res.returncode == 2
    assert "not on PATH: vitis_hls (or vitis-run)." in res.stderr


# ---------------------------------------------------------------- the flow with stand-in tools

# Runs a flow script as vitis_hls / vitis-run / vivado would: the script given by -f, --tcl
# or -source, argv = the words after -tclargs. Commands tclsh does not know are tool
# commands: they are logged (one line each, as a Tcl list) and answered with plausible
# values; those that write files in the real tools write placeholder files here.
MOCK_TOOL = r"""
lassign $argv mock_tool mock_log_path
set tool_args [lrange $argv 2 end]
set mock_script ""
set argv {}
for {set i 0} {$i < [llength $tool_args]} {incr i} {
    switch -- [lindex $tool_args $i] {
        -f - -source - --tcl { set mock_script [lindex $tool_args [incr i]] }
        -tclargs { set argv [lrange $tool_args [expr {$i + 1}] end]; break }
    }
}
set argc [llength $argv]
set mock_log [open $mock_log_path a]
set mock_offsets [dict create]
set mock_top ""

proc mock_record {args} { puts $::mock_log $args; flush $::mock_log }
proc mock_write {path} {
    file mkdir [file dirname $path]
    set fh [open $path w]; puts $fh "placeholder written by the stand-in $::mock_tool"; close $fh
}
proc mock_option {args name {default ""}} {
    set i [lsearch -exact $args $name]
    expr {$i < 0 ? $default : [lindex $args [expr {$i + 1}]]}
}
proc mock_env {name default} {
    expr {[info exists ::env($name)] ? $::env($name) : $default}
}

rename unknown mock_tcl_unknown
proc unknown {cmd args} {
    if {[auto_load $cmd]} { return [uplevel 1 [list $cmd {*}$args]] }
    mock_record $cmd {*}$args
    switch -- $cmd {
        get_bd_pins - get_bd_intf_pins - get_bd_addr_spaces - get_bd_cells - get_runs -
        get_files - create_bd_cell { return [lindex $args end] }
        current_project - current_fileset { return mock }
        get_ipdefs { return [string map {* 9.9} [lindex $args end]] }
        get_board_parts {
            return [expr {[mock_env MOCK_BOARD_FILES 0] ? [lindex $args end] : ""}]
        }
        get_bd_addr_segs {
            set space [mock_option $args -of_objects]
            if {"-addressables" in $args} {
                return [list "$space/seg/HPn_DDR_LOW" "$space/seg/HPn_QSPI"]
            }
            return [lindex $args end]
        }
        assign_bd_address {
            set seg SEG_[dict size $::mock_offsets]
            dict set ::mock_offsets $seg [mock_option $args -offset 0x0]
            return $seg
        }
        set_property {
            if {[lindex $args 0] eq "top"} { set ::mock_top [lindex $args 1] }
        }
        get_property {
            lassign $args prop obj
            switch -glob -- $prop {
                PROGRESS { return 100% }
                STATS.WNS { return [mock_env MOCK_WNS 0.125] }
                STATS.WHS { return 0.010 }
                DIRECTORY { return [file join $::mock_prj_dir vivado_prj.runs $obj] }
                NAME { return [file tail $obj] }
                OFFSET { return [dict get $::mock_offsets $obj] }
                CONFIG.*ACT* { return [expr {double($::QTA_CLOCK_MHZ)}] }
            }
        }
        generate_target {
            set bd [file rootname [file tail [lindex $args end]]]
            mock_write [file join $::mock_prj_dir vivado_prj.gen sources_1 bd $bd hw_handoff $bd.hwh]
        }
        make_wrapper { return [file join $::mock_prj_dir wrapper.v] }
        launch_runs {
            if {[lindex $args 0] eq "impl_1"} {
                mock_write [file join $::mock_prj_dir vivado_prj.runs impl_1 $::mock_top.bit]
            }
        }
        report_utilization - report_timing_summary { mock_write [mock_option $args -file] }
    }
    return ""
}

# Vitis HLS commands with outputs, and the two that the scripts look for.
proc open_project {args} { mock_record open_project {*}$args; set ::mock_project [lindex $args end] }
proc open_solution {args} { mock_record open_solution {*}$args; set ::mock_solution [lindex $args end] }
proc mock_solution_dir {} { file join [pwd] $::mock_project $::mock_solution }
proc csynth_design {args} {
    mock_record csynth_design {*}$args
    # the synthesis reports: stand-ins from tests/data/csynth ($MOCK_CSYNTH picks one)
    set report [file join [mock_solution_dir] syn report]
    mock_write [file join $report csynth.rpt]
    foreach f [glob -directory [mock_env MOCK_CSYNTH $::mock_csynth_default] *.xml] {
        file copy -force $f [file join $report [file tail $f]]
    }
}
proc cosim_design {args} {
    mock_record cosim_design {*}$args
    mock_write [file join [mock_solution_dir] sim report ${::QTA_TOP}_cosim.rpt]
}
proc export_design {args} {
    mock_record export_design {*}$args
    set xml "<spirit:component>"
    foreach {tag opt} {vendor -vendor library -library name -ipname version -version} {
        append xml "<spirit:$tag>[mock_option $args $opt]</spirit:$tag>"
    }
    set ip [file join [mock_solution_dir] impl ip]
    file mkdir $ip
    set fh [open [file join $ip component.xml] w]
    puts $fh "$xml</spirit:component>"
    close $fh
}
proc create_project {args} {
    mock_record create_project {*}$args
    set ::mock_prj_dir [lindex [lsearch -all -inline -not -glob $args -*] 1]
}
proc create_bd_design {args} { mock_record create_bd_design {*}$args }

source $mock_script
"""

VERSION_BANNERS = {
    "vitis_hls": "****** Vitis HLS - High-Level Synthesis from C, C++ and OpenCL v2024.2 (64-bit)",
    "vitis-run": "vitis-run v2024.2 (64-bit)",
    "vivado": "vivado v2024.2 (64-bit)\nTool Version Limit: 2024.11",
}


def mock_tools(tmp_path: Path, tools: tuple[str, ...]) -> tuple[str, Path]:
    """A PATH whose vitis_hls / vitis-run / vivado (those in ``tools``) are stand-ins."""
    mock = tmp_path / "mock_tool.tcl"
    mock.write_text(f"set mock_csynth_default {{{CSYNTH_STANDINS / 'meets'}}}\n" + MOCK_TOOL)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    logs = tmp_path / "logs"
    logs.mkdir()
    for tool in tools:
        fake_tool(bin_dir, tool,
                  f'case "$1" in -version|--version) echo "{VERSION_BANNERS[tool]}"; exit 0;; esac\n'
                  f'exec "{TCLSH}" "{mock}" {tool} "{logs / (tool + ".log")}" "$@"\n')
    return f"{bin_dir}{os.pathsep}{tool_free_path()}", logs


def log_lines(logs: Path, tool: str) -> list[str]:
    return (logs / f"{tool}.log").read_text().splitlines()


def logged(lines: list[str], *prefixes: str) -> list[str]:
    return [line for line in lines if line.startswith(prefixes)]


@needs_tclsh
@pytest.mark.parametrize("board,hls_tool,board_files", [
    ("zcu104", "vitis_hls", True),
    ("kv260", "vitis_hls", False),
    ("pynq_z2", "vitis-run", True),
])
def test_full_flow_with_stand_in_tools(tmp_path, board, hls_tool, board_files):
    assert board in BOARDS
    cfg = config_vars(board)
    repo = copy_repo(tmp_path / "repo")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True,
                          capture_output=True, text=True).stdout.strip()
    path, logs = mock_tools(tmp_path, (hls_tool, "vivado"))
    started = datetime.now(timezone.utc).replace(microsecond=0)
    res = run(["bash", str(repo / "scripts/build_bitstream.sh"), board], path=path, cwd=repo,
              env_extra={"MOCK_BOARD_FILES": "1" if board_files else "0"})
    assert res.returncode == 0, res.stdout + res.stderr
    build = repo / "build" / board
    out = repo / "bitstreams" / board
    name = cfg["QTA_BITSTREAM_NAME"]
    assert name == f"qta_{board}"

    # HLS: project, part, clock, interface width, steps, export identity, outputs
    hls = log_lines(logs, hls_tool)
    cflags = f"-std=c++14 -DQTA_VITIS_BLOCKS -I{build} -I{repo / 'hls' / 'src'}"
    assert f"set_part {cfg['QTA_PART']}" in hls
    assert f"create_clock -period {cfg['QTA_CLOCK_PERIOD_NS']} -name default" in hls
    assert f"config_interface -m_axi_alignment_byte_size {int(cfg['QTA_AXI_DATA_WIDTH']) // 8}" in hls
    assert "csynth gate" not in res.stderr and "GATE PASS" in res.stdout
    assert f"open_solution -reset -flow_target vivado sol_{board}" in hls
    assert f"add_files -cflags {{{cflags}}} {repo / 'hls/src/qta_gemm.cpp'}" in hls
    assert f"add_files -tb -cflags {{{cflags}}} {repo / 'hls/tb/qta_gemm_tb.cpp'}" in hls
    steps = [line.split()[0] for line in logged(hls, "csim_design", "csynth_design",
                                                 "cosim_design", "export_design")]
    assert steps == ["csim_design", "csynth_design", "export_design"]
    (export,) = logged(hls, "export_design")
    assert ("-format ip_catalog" in export and "-vendor xilinx.com -library hls -ipname qta_gemm "
            "-version 2.0" in export)
    assert (build / "ip" / "component.xml").is_file()
    assert (build / "reports" / "csynth.rpt").is_file()

    # Vivado: project, board part, PS configuration, kernel, addresses, runs
    viv = log_lines(logs, "vivado")
    assert f"create_project -force vivado_prj {build / 'vivado_prj'} -part {cfg['QTA_PART']}" in viv
    assert (f"set_property board_part {cfg['QTA_BOARD_PART']} mock" in viv) == board_files
    assert ("board files" in res.stdout) != board_files
    assert f"set_property ip_repo_paths {build / 'ip'} mock" in viv
    assert f"create_bd_cell -type ip -vlnv {cfg['QTA_VLNV']} qta_gemm_0" in viv
    ps_config = " ".join(logged(viv, "set_property -dict"))
    width = cfg["QTA_AXI_DATA_WIDTH"]
    if cfg["QTA_FAMILY"] == "zynq_us":
        ps, irq, ctrl = "zynq_ultra_ps_e_0", "pl_ps_irq0", "M_AXI_HPM0_FPD"
        hp = [f"S_AXI_HP{i}_FPD" for i in range(4)]
        assert f"CONFIG.PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ {cfg['QTA_CLOCK_MHZ']}" in ps_config
        assert "CONFIG.PSU__USE__M_AXI_GP1 0" in ps_config
        for i in range(2, 6):
            assert f"CONFIG.PSU__USE__S_AXI_GP{i} 1" in ps_config
            assert f"CONFIG.PSU__SAXIGP{i}__DATA_WIDTH {width}" in ps_config
        preset = logged(viv, "apply_bd_automation -rule xilinx.com:bd_rule:zynq_ultra_ps_e")
        assert bool(preset) == board_files
    else:
        ps, irq, ctrl = "processing_system7_0", "IRQ_F2P", "M_AXI_GP0"
        hp = [f"S_AXI_HP{i}" for i in range(4)]
        assert width == "64"
        assert f"CONFIG.PCW_FPGA0_PERIPHERAL_FREQMHZ {cfg['QTA_CLOCK_MHZ']}" in ps_config
        for i in range(4):
            assert f"CONFIG.PCW_USE_S_AXI_HP{i} 1" in ps_config
            assert f"CONFIG.PCW_S_AXI_HP{i}_DATA_WIDTH {width}" in ps_config
        (automation,) = logged(viv, "apply_bd_automation -rule xilinx.com:bd_rule:processing_system7")
        assert f"apply_board_preset {int(board_files)}" in automation
    assert f"connect_bd_net qta_gemm_0/interrupt {ps}/{irq}" in viv
    assert f"connect_bd_intf_net {ps}/{ctrl} smartconnect_ctrl/S00_AXI" in viv
    for bundle, port in zip(("gmem0", "gmem1", "gmem2", "gmem3"), hp):
        assert f"connect_bd_intf_net qta_gemm_0/m_axi_{bundle} smartconnect_{bundle}/S00_AXI" in viv
        assert f"connect_bd_intf_net smartconnect_{bundle}/M00_AXI {ps}/{port}" in viv
        space = f"qta_gemm_0/Data_m_axi_{bundle}"
        assert f"assign_bd_address -target_address_space {space} {space}/seg/HPn_DDR_LOW" in viv
        assert f"exclude_bd_addr_seg -target_address_space {space} {space}/seg/HPn_QSPI" in viv
    assert (f"assign_bd_address -target_address_space {ps}/Data -offset "
            f"{cfg['QTA_KERNEL_BASE_ADDRESS']} -range 64K qta_gemm_0/s_axi_control/Reg") in viv
    assert cfg["QTA_ADDRESS_RANGE"] == "65536"
    assert "validate_bd_design" in viv
    assert "launch_runs impl_1 -jobs 2 -to_step write_bitstream" in viv

    # outputs and manifest
    for f in (f"{name}.bit", f"{name}.hwh", "manifest.json", f"reports/{name}_utilization.rpt",
              f"reports/{name}_timing_summary.rpt", f"reports/{name}_csynth.rpt"):
        assert (out / f).is_file(), f
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["board"] == board
    assert manifest["config_digest"] == generator("digest", "--board", board).strip()
    assert manifest["config_digest"] == cfg["QTA_CONFIG_DIGEST"]
    assert manifest["vlnv"] == cfg["QTA_VLNV"]
    assert manifest["files"] == {"bitstream": f"{name}.bit", "hwh": f"{name}.hwh"}
    assert set(manifest["sha256"]) == {f"{name}.bit", f"{name}.hwh"}
    assert manifest["tools"] == {"vitis_hls": TARGET_VERSION, "vivado": TARGET_VERSION}
    built = datetime.fromisoformat(manifest["build_date"])
    assert built.utcoffset() == timedelta(0)
    assert started <= built <= datetime.now(timezone.utc)
    assert manifest["git_commit"] == head
    assert manifest["git_dirty"] is False


@needs_tclsh
def test_flow_with_cosim_and_local_changes(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    (repo / "hls/src/qta_gemm.cpp").write_text("// edited\n")
    path, logs = mock_tools(tmp_path, ("vitis_hls", "vivado"))
    res = run(["bash", str(repo / "scripts/build_bitstream.sh"), "zcu104", "--cosim"],
              path=path, cwd=repo)
    assert res.returncode == 0, res.stderr
    hls = log_lines(logs, "vitis_hls")
    steps = [line.split()[0] for line in logged(hls, "csim_design", "csynth_design",
                                                 "cosim_design", "export_design")]
    assert steps == ["csim_design", "csynth_design", "cosim_design", "export_design"]
    assert (repo / "build/zcu104/reports/qta_gemm_cosim.rpt").is_file()
    manifest = json.loads((repo / "bitstreams/zcu104/manifest.json").read_text())
    assert manifest["git_dirty"] is True


@needs_tclsh
def test_hls_only_stops_before_vivado(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    path, logs = mock_tools(tmp_path, ("vitis_hls",))
    res = run(["bash", str(repo / "scripts/build_bitstream.sh"), "pynq-z2", "--hls-only"],
              path=path, cwd=repo)
    assert res.returncode == 0, res.stderr
    assert (repo / "build/pynq_z2/ip/component.xml").is_file()
    assert not (repo / "bitstreams").exists()
    assert not (logs / "vivado.log").exists()


@needs_tclsh
def test_timing_failure_keeps_no_bitstream(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    path, _ = mock_tools(tmp_path, ("vitis_hls", "vivado"))
    res = run(["bash", str(repo / "scripts/build_bitstream.sh"), "kv260"], path=path, cwd=repo,
              env_extra={"MOCK_WNS": "-0.250"})
    assert res.returncode == 1
    assert "timing not met" in res.stderr
    assert not (repo / "bitstreams/kv260/qta_kv260.bit").exists()
    assert (repo / "bitstreams/kv260/reports/qta_kv260_timing_summary.rpt").is_file()

    res = run(["bash", str(repo / "scripts/build_bitstream.sh"), "kv260"], path=path, cwd=repo,
              env_extra={"MOCK_WNS": "-0.250", "QTA_ALLOW_TIMING_FAILURE": "1"})
    assert res.returncode == 0, res.stderr
    assert (repo / "bitstreams/kv260/qta_kv260.bit").is_file()


@needs_tclsh
def test_hls_flow_checks_its_steps(tmp_path):
    repo = copy_repo(tmp_path / "repo", git=False)
    path, logs = mock_tools(tmp_path, ("vitis_hls",))
    build = repo / "build" / "zcu104"
    build.mkdir(parents=True)
    (build / "config.tcl").write_text(generator("tcl", "--board", "zcu104"))
    (build / "qta_config.h").write_text(generator("header", "--board", "zcu104"))
    hls = ["vitis_hls", "-f", str(repo / "hls/tcl/run_hls.tcl"), "-tclargs", "zcu104"]

    res = run([*hls, "synth"], path=path, cwd=build)
    assert res.returncode == 1 and "unknown step 'synth'" in res.stderr

    res = run([*hls, "export"], path=path, cwd=build)
    assert res.returncode == 1 and "no synthesis results" in res.stderr

    res = run([*hls, "csynth"], path=path, cwd=build)
    assert res.returncode == 0, res.stderr
    res = run([*hls, "export"], path=path, cwd=build)
    assert res.returncode == 0, res.stderr
    assert "open_solution -flow_target vivado sol_zcu104" in log_lines(logs, "vitis_hls")

    res = run(["vitis_hls", "-f", str(repo / "hls/tcl/run_hls.tcl"), "-tclargs", "kv260"],
              path=path, cwd=build)
    assert res.returncode == 1 and "build/kv260/config.tcl is missing" in res.stderr


# ------------------------------------------------------------------------- the csynth gate

BUDGET_ZCU104 = "DSP 1728 BRAM_18K 624 URAM 96 LUT 230400 FF 460800"


@pytest.mark.parametrize("report,passes,miss", [
    ("meets", True, None),
    ("misses_ii", False, "II: loop os_step/os_cycles reached II=2, target 1"),
    ("over_budget", False, "resources: DSP 1856 exceeds the budget 1728"),
    ("slow_clock", False, "clock: estimated period 4.407 ns exceeds the target 4.000 ns"),
])
def test_csynth_gate_on_stand_in_reports(report, passes, miss):
    res = run([sys.executable, str(GATE), str(CSYNTH_STANDINS / report), "--period", "4.000",
               "--budget", BUDGET_ZCU104])
    assert res.returncode == (0 if passes else 1), res.stdout + res.stderr
    if miss:
        assert f"GATE FAIL: {miss}" in res.stdout
    else:
        assert "GATE PASS" in res.stdout


def test_csynth_gate_reads_target_ii_and_budget(tmp_path):
    xml = (CSYNTH_STANDINS / "misses_ii" / "os_step_csynth.xml").read_text()
    (tmp_path / "csynth.xml").write_text((CSYNTH_STANDINS / "meets" / "csynth.xml").read_text())
    (tmp_path / "os_step_csynth.xml").write_text(xml.replace("<PipelineII>2", "<TargetII>2</TargetII><PipelineII>2"))
    ok = run([sys.executable, str(GATE), str(tmp_path), "--budget", BUDGET_ZCU104])
    assert ok.returncode == 0, ok.stdout  # II 2 was the target; period from the report (4.00)
    small = run([sys.executable, str(GATE), str(tmp_path), "--budget", "LUT 30000"])
    assert small.returncode == 1 and "LUT 40000 exceeds the budget 30000" in small.stdout
    empty = run([sys.executable, str(GATE), str(tmp_path / "nothing")])
    assert empty.returncode == 2


@needs_tclsh
@pytest.mark.parametrize("report", ["misses_ii", "over_budget", "slow_clock"])
def test_hls_flow_stops_before_export_when_csynth_misses(tmp_path, report):
    repo = copy_repo(tmp_path / "repo")
    path, logs = mock_tools(tmp_path, ("vitis_hls", "vivado"))
    res = run(["bash", str(repo / "scripts/build_bitstream.sh"), "zcu104"], path=path, cwd=repo,
              env_extra={"MOCK_CSYNTH": str(CSYNTH_STANDINS / report)})
    assert res.returncode != 0
    assert "csynth gate: synthesis missed its targets" in res.stderr and "GATE FAIL" in res.stderr
    hls = log_lines(logs, "vitis_hls")
    assert logged(hls, "csynth_design") and not logged(hls, "export_design")
    assert not (repo / "build/zcu104/ip").exists()
    assert not (logs / "vivado.log").exists()
    # an export of the same solution without synthesizing again is refused too
    build = repo / "build" / "zcu104"
    again = run(["vitis_hls", "-f", str(repo / "hls/tcl/run_hls.tcl"), "-tclargs", "zcu104", "export"],
                path=path, cwd=build)
    assert again.returncode == 1 and "GATE FAIL" in again.stderr
