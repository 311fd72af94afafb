"""The RTL array simulated cycle by cycle: Verilator builds it for cocotb, and the cocotb bench
(``hls/rtl/tb/tb_array.py``) runs whole steps through it. Each cycle the bench reads the
array's registered status, drives the edges with :mod:`.contract`'s functions, files every
valid tap value at its output position and counts cycles per fold and per step. Also the
Verilator lint.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import RtlInputError, RtlToolError
from . import contract
from .contract import ArrayShape, board_shape, geometry, model_step
from .tools import (MAKE_FIXES, RUNTIME_OBJECTS, TB_MODULE, TOP, _cocotb_paths, _hash, _run, _sources,
                    _verilator_release, _vh, cache_dir, rtl_dir, verilator_env)

def lint(shape: ArrayShape) -> str:
    """``verilator --lint-only -Wall`` on the array; returns the tool's output (raises on warnings)."""
    exe, env = verilator_env()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "qta_config.vh").write_text(_vh(shape))
        proc = _run([exe, "--lint-only", "-Wall", f"-I{tmp}", "--top-module", TOP, *_sources()],
                    "verilator lint", env=env)
    return proc.stdout + proc.stderr


def sim_key(shape: ArrayShape, fold_trim: int, cocotb: dict) -> str:
    """The cache key of a simulator build: the design's parameters, the tools' versions and the
    folder of cocotb's VPI library (``cocotb["libs"]``). The executable finds that library by the
    rpath of the environment that built it, so a build is reused only by that environment;
    another virtualenv, or one deleted and made anew elsewhere, builds its own instead of
    loading a library that is gone."""
    return _hash(_vh(shape), _verilator_release(), cocotb["version"], str(cocotb["libs"]), MAKE_FIXES, fold_trim,
                 "sim-v1")


def build_sim(shape: ArrayShape, fold_trim: int = 0) -> Path:
    """Verilate the array for cocotb (VPI) and compile it; returns the build folder (cached).

    ``fold_trim`` > 0 builds a deliberately wrong array whose folds are that many cycles shorter
    than the contract's (the tests show that it then computes wrong results)."""
    exe, env = verilator_env()
    cc = _cocotb_paths()
    out = cache_dir() / f"sim-{shape.label}{f'-trim{fold_trim}' if fold_trim else ''}-{sim_key(shape, fold_trim, cc)}"
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
            "PYTHONPATH": os.pathsep.join([str(rtl_dir() / "tb"), *sys.path]),
            "QTA_RTL_MODULE": contract.__name__, "QTA_RTL_JOB": str(job),
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
