"""What the checks of the bitstream build flow share: the paths of the flow, the generator run
from the checkout, a PATH without the AMD tools, a copy of the repository to run the flow in, and
stand-in executables. The flow tests run in such a copy under ``tmp_path``, never in the checkout."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TCL_DIR = REPO / "hls" / "tcl"
SCRIPT = REPO / "scripts" / "build_bitstream.sh"
TCL_SCRIPTS = ("run_hls.tcl", "build_bitstream.tcl", "bd_zynq_us.tcl", "bd_zynq7.tcl")
CSYNTH_STANDINS = REPO / "tests" / "data" / "csynth"
"""Stand-in csynth.xml reports of a solution (one that meets every target, one per miss)."""
TOOLS = ("vitis_hls", "vitis-run", "vivado")
TARGET_VERSION = "2024.2"

TCLSH = shutil.which("tclsh")
needs_tclsh = pytest.mark.skipif(TCLSH is None, reason="tclsh is not installed")


def generator(*args: str) -> str:
    """Output of ``python -m lora_qta.hw.generate ARGS`` run from the checkout."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "host"))
    return subprocess.run([sys.executable, "-m", "lora_qta.hw.generate", *args], env=env,
                          check=True, capture_output=True, text=True).stdout


def board_names() -> list[str]:
    """The boards of hardware.toml, by the generator's own answer to an unknown board."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "host"))
    code = "from lora_qta.hw.config import config; print(' '.join(sorted(config().boards)))"
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
    if sys.version_info < (3, 11) and any("build_bitstream" in str(c) for c in cmd):
        pytest.skip("build_bitstream.sh runs its generators with Python 3.11+ (tomllib), by design")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QTA_", "MOCK_"))}
    env.pop("PYTHONPATH", None)
    env["PATH"] = path if path is not None else tool_free_path()
    env["QTA_PYTHON"] = sys.executable
    env.update(env_extra or {})
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


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


def fake_tool(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
