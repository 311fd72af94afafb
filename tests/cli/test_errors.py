"""Bad input reaches the user as one line ``lora-qta: error: ...`` with exit status 2, never a
traceback: unknown board, impossible shapes or modes, a C-simulation build that fails."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

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


@pytest.mark.parametrize("var, message", [
    ("LORA_QTA_BOARD", "LORA_QTA_BOARD='bogus' is not a board: use one of kv260, pynq_z2, zcu104 (the boards of "
                       "hardware.toml), or unset LORA_QTA_BOARD"),
    ("LORA_QTA_BACKEND", "LORA_QTA_BACKEND='bogus' is not a backend: use one of auto, board, emulation, csim, fast, "
                         "or unset LORA_QTA_BACKEND"),
])
def test_a_bad_environment_default_names_the_variable(var, message):
    """Nothing on the command line said 'bogus': the error says where it came from."""
    assert one_error_line(run("gemm", "8", "8", "8", env={var: "bogus"})) == f"lora-qta: error: {message}"


def test_rtl_sim_takes_the_board_from_the_environment(tmp_path):
    """`rtl sim`'s --board defaults to $LORA_QTA_BOARD, as its help says (it took ZCU104)."""
    import json

    import numpy as np

    np.save(tmp_path / "a.npy", np.ones((2, 3), np.int8))
    np.save(tmp_path / "b.npy", np.ones((3, 2), np.int8))
    args = ["rtl", "sim", "--dataflow", "os", "--a", str(tmp_path / "a.npy"), "--b", str(tmp_path / "b.npy"),
            "--out", str(tmp_path / "c.npy")]
    p = run(*args, env={"LORA_QTA_BOARD": "pynq_z2"})
    if p.returncode != 0 and "verilator" in (p.stderr + p.stdout).lower():
        pytest.skip("no Verilator here")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["board"] == "pynq_z2"
    assert "LORA_QTA_BOARD='nexys' is not a board" in one_error_line(run(*args, env={"LORA_QTA_BOARD": "nexys"}))


@pytest.mark.parametrize("args, message", [
    (["gemm", "0", "8", "8"], "GEMM dimensions must be at least 1, got M=0"),
    (["gemm", "-3", "8", "8"], "GEMM dimensions must be at least 1, got M=-3"),
    (["gemm", "8", "8", "8", "--dataflow", "ws", "--split", "1"], "for dataflow 'ws' on zcu104: use one of "
                                                                   "[-3, -2, -1, 0]"),
    # the splits of the dataflow asked for (a WS hint for OS, and 0 offered for partitioned, before)
    (["gemm", "8", "8", "8", "--dataflow", "partitioned", "--split", "0"], "use one of [-3, -2, -1, 1, 2]"),
    (["gemm", "8", "8", "8", "--seed", "-1"], "--seed must be at least 0, not -1"),   # a numpy traceback
    (["demo", "--seed", "-1"], "--seed must be at least 0, not -1"),
    # the default INT32 output is not rounded: the option was silently ignored
    (["gemm", "8", "8", "8", "--rounding", "stochastic"], "--rounding stochastic is the INT8 epilogue's: it "
                                                          "needs --out int8"),
    (["energy", "--models", "sd21", "--no-plot"], "unknown model 'sd21'"),
])
def test_bad_shapes_and_modes(args, message):
    assert message in one_error_line(run(*args))


@pytest.mark.parametrize("args, message", [
    # a zero or empty value was taken for the default: 300 steps, the default variants
    (["evaluate", "--steps", "0", "--seeds", "0", "--variants", "fp32"], "--steps must be at least 1, not 0"),
    (["evaluate", "--variants", ""], "--variants must include fp32"),
    (["evaluate", "--threads", "0"], "--threads must be a positive integer, not 0"),  # was a RuntimeError
    # --combine trains nothing: the options of new runs are refused, not ignored
    (["evaluate", "--combine", "a,b", "--board", "kv260"], "--combine pools finished evaluations and trains "
                                                           "nothing: leave out --board"),
    (["evaluate", "--combine", "a,b", "--seed", "3"], "leave out --seed"),
    # option values named as options, not as a GEMM dimension, a ZeroDivisionError or a ValueError
    (["energy", "--dram-pj", "0"], "--dram-pj must be a positive number, not 0.0"),
    (["energy", "--dram-pj", "-5"], "--dram-pj must be a positive number, not -5.0"),
    (["energy", "--ranks", "0"], "--ranks must be at least 1, not 0"),
    (["energy", "--ranks", ""], "--ranks names nothing: give at least one value"),
    (["power", "--rank", "0"], "--rank must be at least 1, not 0"),
    (["power", "--tokens", "-5"], "--tokens must be at least 1, not -5"),
    (["power", "--interval", "0"], "--interval must be a positive number, not 0.0"),
    (["power", "--idle-seconds", "0"], "--idle-seconds must be a positive number, not 0.0"),
    (["throughput", "--quick", "--repeat", "0"], "--repeat must be at least 1, not 0"),
    # bench: refused before its first stage (after the dataflow sweep had run and was written,
    # or a traceback, or a GEMM dimension, or the default silently, before)
    (["bench", "--energy-models", "foo"], "--energy-models: unknown model 'foo'"),
    (["bench", "--energy-boards", "foo"], "--energy-boards: unknown board 'foo'"),
    (["bench", "--allreduce-model", "foo"], "--allreduce-model: unknown model 'foo'"),
    (["bench", "--step-boards", "foo"], "--step-boards: unknown board 'foo'"),
    (["bench", "--ranks", ""], "--ranks names nothing"),
    (["bench", "--models", ""], "--models names nothing"),
    (["bench", "--allreduce-boards", ""], "--allreduce-boards names nothing"),
    (["bench", "--ranks", "0"], "--ranks must be at least 1, not 0"),
    (["bench", "--csim-ranks", "0"], "--csim-ranks must be at least 1, not 0"),
    (["bench", "--step-rank", "0"], "--step-rank must be at least 1, not 0"),
    (["bench", "--allreduce-boards", "0"], "--allreduce-boards must be at least 1, not 0"),
    (["bench", "--resolution", "0"], "--resolution must be at least 1, not 0"),
    (["bench", "--csim-limit", "0"], "--csim-limit must be at least 1, not 0"),
    (["bench", "--boards", "zcu104", "--detail-board", "kv260"], "--detail-board kv260 is not among --boards"),
    (["bench", "--ranks", "4", "--detail-ranks", "8"], "--detail-ranks 8: only ranks of --ranks (4) are swept"),
    # speed: a ZeroDivisionError, NaN figures
    (["speed", "--steps", "0"], "--steps must be at least 1, not 0"),
    (["speed", "--warmup", "-1"], "--warmup must be at least 0, not -1"),
])
def test_bad_option_values_name_the_option(args, message, tmp_path):
    assert message in one_error_line(run(*args, "--output-dir" if args[0] == "evaluate" else "--out",
                                         str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, kind", [
    (["config", "header", "-o", "{dir}"], "folder"), (["calltime", "--calls", "2", "--out", "{dir}"], "folder"),
    (["speed", "--out", "{file}/x.json"], "file above"), (["energy", "--out", "{file}"], "file"),
    (["power", "--out", "{file}"], "file"), (["bench", "--out", "{file}"], "file"),
    (["throughput", "--quick", "--out", "{dir}"], "folder"),
    (["rtl", "sim", "--dataflow", "os", "--a", "{a}", "--b", "{a}", "--out", "{dir}"], "folder"),
])
def test_an_unusable_output_path_is_refused_before_the_work(args, kind, tmp_path):
    """Refused at once, not after the work (a power recording was lost to a FileExistsError)."""
    import numpy as np

    (tmp_path / "afile").write_text("x")
    np.save(tmp_path / "a.npy", np.ones((2, 2), np.int8))
    argv = [a.format(dir=tmp_path, file=tmp_path / "afile", a=tmp_path / "a.npy") for a in args]
    line = one_error_line(run(*argv))
    expected = {"folder": f"{tmp_path} is a folder: give the file to write",
                "file": f"{tmp_path / 'afile'} is a file: give a folder",
                "file above": f"{tmp_path / 'afile'} is a file, not a folder"}[kind]
    assert expected in line


def test_rtl_sim_writes_the_file_it_names(tmp_path):
    """np.save appended .npy to a name without it, so the reported path did not exist."""
    import json

    import numpy as np

    np.save(tmp_path / "a.npy", np.ones((2, 3), np.int8))
    np.save(tmp_path / "b.npy", np.ones((3, 2), np.int8))
    out = tmp_path / "new" / "C"
    p = run("rtl", "sim", "--dataflow", "os", "--a", str(tmp_path / "a.npy"), "--b", str(tmp_path / "b.npy"),
            "--out", str(out))
    if p.returncode != 0 and "verilator" in (p.stderr + p.stdout).lower():
        pytest.skip("no Verilator here")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["out"] == str(out) and np.array_equal(np.load(out), np.full((2, 2), 3))


@pytest.mark.parametrize("args", [["config", "digest"], ["csim", "--help"]])
def test_every_board_option_defaults_to_lora_qta_board(args):
    """`config digest` gave ZCU104's digest while `info` gave the variable's board."""
    if args[0] == "csim":  # csim's help names the variable as its default, as every --board does
        assert "$LORA_QTA_BOARD" in " ".join(run(*args).stdout.split())
        return
    assert run(*args, env={"LORA_QTA_BOARD": "kv260"}).stdout == run(*args, "--board", "kv260").stdout
    assert run(*args, env={"LORA_QTA_BOARD": "kv260"}).stdout != run(*args, "--board", "zcu104").stdout


def test_a_closed_pipe_is_no_traceback():
    """`lora-qta info | head -1`."""
    p = subprocess.run(f"{sys.executable} -m lora_qta.cli info | head -1", shell=True, capture_output=True,
                       text=True, timeout=600)
    assert p.stdout.startswith("board") and "Traceback" not in p.stderr, p.stderr


@pytest.mark.parametrize("args", [["csim"], ["gemm", "16", "16", "16", "--backend", "csim"]])
def test_a_missing_compiler_is_one_line(args, tmp_path):
    line = one_error_line(run(*args, env={"CXX": "/nonexistent/g++", "LORA_QTA_CACHE": str(tmp_path)}))
    assert "C++ compiler '/nonexistent/g++' not found; install g++" in line


def test_a_kernel_that_does_not_compile_is_one_line_pointing_at_the_log(tmp_path):
    hls = tmp_path / "hls"
    shutil.copytree(Path(__file__).resolve().parents[2] / "hls", hls, ignore=shutil.ignore_patterns("tcl"))
    with (hls / "src" / "qta_gemm.cpp").open("a") as f:
        f.write("\nthis is not C++;\n")
    cache = tmp_path / "cache"
    line = one_error_line(run("csim", "--board", "pynq_z2",
                              env={"LORA_QTA_HLS_DIR": str(hls), "LORA_QTA_CACHE": str(cache)}))
    assert "compiling the kernel with" in line and "failed (exit status 1)" in line
    log = Path(line.rsplit(" are in ", 1)[1])
    assert log.is_file() and log.is_relative_to(cache) and "qta_gemm.cpp" in log.read_text()


def test_a_missing_source_folder_is_one_line(tmp_path):
    line = one_error_line(run("gemm", "8", "8", "8", "--backend", "csim",
                              env={"LORA_QTA_HLS_DIR": str(tmp_path), "LORA_QTA_CACHE": str(tmp_path)}))
    assert f"are not in {tmp_path}: set LORA_QTA_HLS_DIR to the repository's hls/ folder" in line


def test_a_gemm_beyond_the_limits_runs_in_several_calls():
    """Issue 9, item 4: M = 70000 exceeds the ZCU104's 65536; the runtime splits it."""
    p = run("gemm", "70000", "8", "8")
    assert p.returncode == 0 and "bit-exact with numpy" in p.stdout and "2 kernel calls" in p.stdout, p.stderr


@pytest.mark.parametrize("command", [["evaluate"], ["finetune"], ["speed"]])
def test_a_missing_dependency_is_named_not_a_traceback(command, tmp_path):
    """A PYNQ-Z2 installs without torch (no armv7l wheels): its training commands said
    ModuleNotFoundError in a traceback. Here torch is made unimportable in the child process."""
    out = ["--output-dir" if command[0] in ("evaluate", "finetune") else "--out", str(tmp_path / "out")]
    block = ("import sys; sys.modules['torch'] = None; from lora_qta.cli import main; "
             "sys.exit(main(sys.argv[1:]))")
    p = subprocess.run([sys.executable, "-c", block, *command, *out], capture_output=True, text=True,
                       timeout=600, cwd=tmp_path)
    line = one_error_line(p)
    assert f"`lora-qta {command[0]}` needs the Python package torch" in line and "make install" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["rtl", "synth", "--family", "xcup", "--rows", "0", "--cols", "4"], "--rows must be at least 1, not 0"),
    (["rtl", "synth", "--family", "xcup", "--rows", "4", "--cols", "6"],
     "array sides and min_sub must be powers of two: rows 4, cols 6, min_sub 4"),
])
def test_rtl_synth_names_the_sides(args, message):
    """It showed ArrayShape(...) and blamed a min_sub derived from --rows 0."""
    assert message in one_error_line(run(*args))


def test_a_cache_variable_naming_a_file_is_refused_before_the_work(tmp_path):
    """yosys ran for 12 s and its result was lost to a NotADirectoryError traceback."""
    (tmp_path / "afile").write_text("x")
    line = one_error_line(run("rtl", "synth", "--family", "xcup", "--rows", "4", "--cols", "2", "--min-sub", "2",
                              env={"LORA_QTA_CACHE": str(tmp_path / "afile")}))
    assert f"LORA_QTA_CACHE={tmp_path / 'afile'}: {tmp_path / 'afile'} is a file, not a folder" in line
