"""``scripts/build_bitstream.sh`` without the AMD tools: ``bash -n``, help, unknown board, bad
arguments, missing tools named."""

from __future__ import annotations

import os
import subprocess

import pytest

from flow_helpers import BOARDS, SCRIPT, TARGET_VERSION, copy_repo, fake_tool, run, tool_free_path


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
