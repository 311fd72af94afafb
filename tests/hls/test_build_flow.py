"""The whole build flow with stand-ins for ``vitis_hls``, ``vitis-run`` and ``vivado``: a tclsh
interpreter (``mock_tool.tcl``) runs the real scripts against the generated config, logs every
tool command and fakes the files the tools write. This checks the commands and the values the
scripts pass (part, clock, widths, addresses, VLNV), not what the tools would do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from lora_qta.hw.config import config
from flow_helpers import (BOARDS, CSYNTH_STANDINS, REPO, TARGET_VERSION, TCLSH, config_vars, copy_repo, fake_tool,
                          generator, needs_tclsh, run, tool_free_path)

MOCK_TOOL = Path(__file__).with_name("mock_tool.tcl")
MEETS = CSYNTH_STANDINS / "meets"  # the stand-in synthesis report a flow gets unless MOCK_CSYNTH says otherwise
"""The stand-in tools' Tcl interpreter (its header says what it does)."""

VERSION_BANNERS = {
    "vitis_hls": "****** Vitis HLS - High-Level Synthesis from C, C++ and OpenCL v2024.2 (64-bit)",
    "vitis-run": "vitis-run v2024.2 (64-bit)",
    "vivado": "vivado v2024.2 (64-bit)\nTool Version Limit: 2024.11",
}


def mock_tools(tmp_path: Path, tools: tuple[str, ...]) -> tuple[str, Path]:
    """A PATH whose vitis_hls / vitis-run / vivado (those in ``tools``) are stand-ins."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    logs = tmp_path / "logs"
    logs.mkdir()
    for tool in tools:
        fake_tool(bin_dir, tool,
                  f'case "$1" in -version|--version) echo "{VERSION_BANNERS[tool]}"; exit 0;; esac\n'
                  f': "${{MOCK_CSYNTH:={MEETS}}}"; export MOCK_CSYNTH\n'
                  f'exec "{TCLSH}" "{MOCK_TOOL}" {tool} "{logs / (tool + ".log")}" "$@"\n')
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
    # the gate ran with this board's qta_config.h: its DSP window and the [schedule] depths (review S7)
    pes = config().board(board).pes
    assert f"DSP within [{pes}, {pes + 256}]" in res.stdout and "pipeline depths within [schedule]" in res.stdout
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

GATE = REPO / "hls" / "tcl" / "csynth_gate.py"
BUDGET_ZCU104 = "DSP 1728 BRAM_18K 624 URAM 96 LUT 230400 FF 460800"


@pytest.mark.parametrize("report,passes,miss", [
    ("meets", True, None),
    ("misses_ii", False, "II: loop array_step/array_cycles reached II=2, target 1"),
    ("relaxed", True, None),  # control loops at their declared II=4 / PIPELINE off do not stop the build (B7)
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


def test_csynth_gate_takes_relaxed_iis_from_the_kernel_pragmas(tmp_path):
    """Review 2 B2: real reports carry no target II, so the gate reads the targets from the
    kernel's PIPELINE pragmas: the kernel's II=4 steps loop is declared, every other loop is held
    to II=1, and a loop declared at II=2 in a given source passes at 2."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("csynth_gate", GATE)
    gate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gate)
    assert gate.declared_iis(gate.KERNEL.read_text()) == {"steps": 4}
    assert gate.target_ii("descriptors/steps", {"steps": 4}) == 4
    assert gate.target_ii("load/load_cycles_1", {"load_cycles": 2}) == 2  # HLS's suffix on a copy
    assert gate.target_ii("array_step/array_cycles", {"steps": 4}) == 1
    for f in (CSYNTH_STANDINS / "meets").iterdir():
        (tmp_path / f.name).write_text(f.read_text())
    xml = (CSYNTH_STANDINS / "misses_ii" / "array_step_csynth.xml").read_text()
    assert "TargetII" not in xml  # the real schema
    (tmp_path / "array_step_csynth.xml").write_text(xml)
    miss = run([sys.executable, str(GATE), str(tmp_path), "--budget", BUDGET_ZCU104])
    assert miss.returncode == 1 and "reached II=2, target 1" in miss.stdout
    src = tmp_path / "kernel.cpp"
    src.write_text("array_cycles:\n    for (int i = 0; i < n; i++) {\n#pragma HLS PIPELINE II=2\n    }\n")
    ok = run([sys.executable, str(GATE), str(tmp_path), "--budget", BUDGET_ZCU104, "--kernel", str(src)])
    assert ok.returncode == 0, ok.stdout  # II 2 was declared; the period comes from the report
    small = run([sys.executable, str(GATE), str(tmp_path), "--budget", "LUT 30000"])
    assert small.returncode == 1 and "LUT 40000 exceeds the budget 30000" in small.stdout
    missing = run([sys.executable, str(GATE), str(tmp_path / "nothing")])
    assert missing.returncode == 2


@pytest.mark.parametrize("suffix", ["_1", ".1"])
def test_csynth_gate_holds_every_copy_of_a_loop(tmp_path, suffix):
    """Review 3 G1/G2: HLS names a loop's copies label_N or label.N (``load_operand`` is inlined
    twice into ``load``): a copy takes its label's II target, and the deepest copy is held to the
    depth the cycle model charges (before, the copy was unchecked or the last one parsed won)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("csynth_gate", GATE)
    gate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gate)
    assert gate.target_ii(f"descriptors/steps{suffix}", {"steps": 4}) == 4
    for f in (CSYNTH_STANDINS / "meets").iterdir():
        (tmp_path / f.name).write_text(f.read_text())
    load = tmp_path / "load_csynth.xml"
    xml = load.read_text()
    first = xml[xml.index("      <load_cycles>"):xml.index("      </load_cycles>") + len("      </load_cycles>\n")]
    copy = first.replace("load_cycles>", f"load_cycles{suffix}>").replace("<PipelineDepth>6", "<PipelineDepth>9")
    for order in ((copy, first), (first, copy)):  # the deep copy before and after the original
        load.write_text(xml.replace(first, "".join(order)))
        misses = gate.check(sorted(tmp_path.glob("*.xml")), None, {}, config={"QTA_LOAD_PIPELINE": 6},
                            declared={})
        assert any("loop load_cycles has PipelineDepth 9 > QTA_LOAD_PIPELINE = 6" in m for m in misses), misses
    load.write_text(xml)
    assert not [m for m in gate.check(sorted(tmp_path.glob("*.xml")), None, {}, config={"QTA_LOAD_PIPELINE": 6},
                                      declared={}) if m.startswith("depth")]


def test_csynth_stand_ins_follow_the_real_report_schema():
    """No TargetII (real Vitis reports have none); every pipelined loop has PipelineII and
    PipelineDepth; module reports carry SummaryOfViolations (review 2 B2)."""
    for path in sorted(CSYNTH_STANDINS.glob("*/*.xml")):
        text = path.read_text()
        assert "<TargetII>" not in text, path
        assert text.count("<PipelineII>") == text.count("<PipelineDepth>"), path
        if "<SummaryOfLoopLatency>" in text:
            assert "<SummaryOfLoopViolations>" in text, path


@needs_tclsh
@pytest.mark.parametrize("report", ["misses_ii", "over_budget", "slow_clock"])
def test_hls_flow_stops_before_export_when_csynth_misses(tmp_path, report):
    repo = copy_repo(tmp_path / "repo")
    path, logs = mock_tools(tmp_path, ("vitis_hls", "vivado"))
    stand_in = {"MOCK_CSYNTH": str(CSYNTH_STANDINS / report)}
    res = run(["bash", str(repo / "scripts/build_bitstream.sh"), "zcu104"], path=path, cwd=repo, env_extra=stand_in)
    assert res.returncode != 0
    assert "csynth gate: synthesis missed its targets" in res.stderr and "GATE FAIL" in res.stderr
    hls = log_lines(logs, "vitis_hls")
    assert logged(hls, "csynth_design") and not logged(hls, "export_design")
    assert not (repo / "build/zcu104/ip").exists()
    assert not (logs / "vivado.log").exists()
    # exporting the same solution without synthesizing again is refused too
    again = run(["vitis_hls", "-f", str(repo / "hls/tcl/run_hls.tcl"), "-tclargs", "zcu104", "export"],
                path=path, cwd=repo / "build" / "zcu104", env_extra=stand_in)
    assert again.returncode == 1 and "GATE FAIL" in again.stderr


def test_csynth_gate_holds_relaxed_loops_to_their_target(tmp_path):
    for f in (CSYNTH_STANDINS / "relaxed").iterdir():
        (tmp_path / f.name).write_text(f.read_text())
    desc = tmp_path / "descriptors_csynth.xml"
    desc.write_text(desc.read_text().replace("<PipelineII>4", "<PipelineII>5"))
    res = run([sys.executable, str(GATE), str(tmp_path), "--budget", BUDGET_ZCU104])
    assert res.returncode == 1 and "II: loop descriptors/steps reached II=5, target 4" in res.stdout


def test_csynth_gate_checks_dataflow_dsp_and_pipeline_depths(tmp_path):
    """Review S7: DATAFLOW applied, R x C <= DSP <= R x C + margin, reported depths of the loops
    the cycle model charges a constant for within hardware.toml's [schedule]."""
    for f in (CSYNTH_STANDINS / "meets").iterdir():
        (tmp_path / f.name).write_text(f.read_text())
    header = tmp_path / "qta_config.h"
    header.write_text("#define QTA_ROWS 32\n#define QTA_COLS 32\n#define QTA_ARRAY_PIPELINE 12\n")
    top = tmp_path / "csynth.xml"
    top.write_text(top.read_text().replace("<DSP>120</DSP>", "<DSP>1100</DSP>", 1))
    ok = run([sys.executable, str(GATE), str(tmp_path), "--budget", BUDGET_ZCU104, "--config", str(header)])
    assert ok.returncode == 0, ok.stdout
    two_arrays = top.read_text().replace("<DSP>1100</DSP>", "<DSP>2048</DSP>", 1)
    top.write_text(two_arrays)
    res = run([sys.executable, str(GATE), str(tmp_path), "--config", str(header)])
    assert res.returncode == 1 and "dsp: DSP 2048 > 1024 PEs" in res.stdout
    top.write_text(two_arrays.replace("<DSP>2048</DSP>", "<DSP>600</DSP>", 1))
    res = run([sys.executable, str(GATE), str(tmp_path), "--config", str(header)])
    assert "dsp: DSP 600 < 1024 PEs" in res.stdout
    top.write_text(two_arrays.replace("<DSP>2048</DSP>", "<DSP>1100</DSP>", 1).replace("dataflow", "none"))
    arr = tmp_path / "array_step_csynth.xml"
    arr.write_text(arr.read_text().replace("<PipelineDepth>12", "<PipelineDepth>14"))
    res = run([sys.executable, str(GATE), str(tmp_path), "--config", str(header)])
    assert "dataflow: the top's PipelineType is not dataflow" in res.stdout
    assert "depth: loop array_cycles has PipelineDepth 14 > QTA_ARRAY_PIPELINE = 12" in res.stdout
    arr.write_text(arr.read_text().replace("<PipelineII>1", "<PipelineII>undef"))
    res = run([sys.executable, str(GATE), str(tmp_path), "--config", str(header)])
    assert "has no numeric II" in res.stdout


@needs_tclsh
@pytest.mark.parametrize("board", sorted(BOARDS))
@pytest.mark.parametrize("case,miss", [
    ("fabric_macs", "dsp: DSP {low} < {pes} PEs"),
    ("deep_array", "depth: loop array_cycles has PipelineDepth 99 > QTA_ARRAY_PIPELINE"),
])
def test_flow_gate_checks_the_board_dsp_window_and_depths(tmp_path, board, case, miss):
    """Review S7 in the real flow: run_hls.tcl passes the board's qta_config.h to the gate, so a
    synthesis with fewer DSPs than the board's PEs (MACs in fabric) or a deeper array pipeline than
    [schedule] stops the build before export, on every board."""
    stand_in = tmp_path / "stand_in"
    stand_in.mkdir()
    for f in MEETS.iterdir():
        (stand_in / f.name).write_text(f.read_text())
    top = stand_in / "csynth.xml"
    if case == "fabric_macs":   # the mock adds the board's R x C: a negative rest leaves DSP < R x C
        top.write_text(top.read_text().replace("<DSP>120</DSP>", "<DSP>-8</DSP>", 1))
    else:
        arr = stand_in / "array_step_csynth.xml"
        arr.write_text(arr.read_text().replace("<PipelineDepth>12", "<PipelineDepth>99"))
    repo = copy_repo(tmp_path / "repo")
    path, logs = mock_tools(tmp_path, ("vitis_hls",))
    res = run(["bash", str(repo / "scripts/build_bitstream.sh"), board, "--hls-only"], path=path, cwd=repo,
              env_extra={"MOCK_CSYNTH": str(stand_in)})
    pes = config().board(board).pes
    assert res.returncode != 0
    assert "GATE FAIL: " + miss.format(low=pes - 8, pes=pes) in res.stderr, res.stderr
    assert not logged(log_lines(logs, "vitis_hls"), "export_design")
    assert not (repo / f"build/{board}/ip").exists()
