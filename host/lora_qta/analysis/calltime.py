"""The host time of one accelerator call, measured where the calls run: on a board, or on this
machine's emulated device. It is the figure the step model assumes as a board's ``call_us``
(hardware.toml's note on ``call_us``).

Two loops over the same small GEMM (INT32 output, 16 x 16 x 16 by default):

* ``driver``: one planned call on operands placed in device memory once, issued again and again
  through :meth:`~lora_qta.runtime.accelerator.Accelerator.run_call`: its alignment and capacity
  checks, the argument register block, ap_start, the completion poll and the output registers.
  No planner, no copies: the register traffic of a call, which ``call_us`` states.
* ``gemm``: :meth:`~lora_qta.runtime.accelerator.Accelerator.gemm` on numpy operands: also the
  operand checks, the planner's cached lookup, the copies into the ``pynq`` buffers with their
  flush and invalidate, and the copy of the result. This is the package's whole call path, which
  the step model's sensitivity rows (``call_us`` x10 and x50) stand for.

Each call's wall time minus the kernel's own time is the host's part. The kernel's time is its
measured cycle count at the board's clock on a board. Where the bitstream reports no count it is
the modelled count, and the report says so. On the emulated device it is the emulated engine's
time on this machine. Only a board's figures describe a board: on a PC the loop measures this
machine's Python, not the board's ARM cores.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..errors import BackendError, OptionError
from ..hw.call import GemmCall

if TYPE_CHECKING:  # the runtime (pynq) is imported when a loop runs: the command line imports SHAPE
    from ..runtime.accelerator import Accelerator

SHAPE = (16, 16, 16)
"""(M, K, N) of the default GEMM: one tile of every board, so the kernel's part is small."""


def _ceil_to(x: int, step: int) -> int:
    return -(-x // step) * step


def _stats(values: Sequence[float]) -> dict[str, float]:
    """Median and the 10th and 90th percentiles of ``values`` (microseconds)."""
    v = np.asarray(values, dtype=np.float64)
    p10, median, p90 = np.percentile(v, [10, 50, 90])
    return {"median": float(median), "p10": float(p10), "p90": float(p90)}


class _KernelClock:
    """The kernel's own time of the calls an accelerator runs: the emulated engine's time on an
    emulated device, else the measured (or, without a counter, the modelled) cycle count at the
    board's clock."""

    def __init__(self, acc: Accelerator):
        self.acc = acc
        self.emulated = acc.backend != "board"
        self.modelled = False
        self._t = self._engine_seconds()

    def _engine_seconds(self) -> float:
        return float(getattr(self.acc.device, "kernel_seconds", 0.0))

    def mark(self) -> None:
        """Start counting the emulated engine's time from here (before a timed call)."""
        self._t = self._engine_seconds()

    def source(self) -> str:
        if self.emulated:
            return "the emulated engine's time on this machine"
        if self.modelled:
            return "modelled (the kernel's modelled cycles at the clock: this bitstream reports no measured count)"
        return "measured (the kernel's cycle counter at the clock)"

    def since_last(self, measured: int | None, modelled: int) -> float:
        """Seconds of kernel time of the call that just ran (its cycle counts as the driver or
        ``gemm`` returned them)."""
        if self.emulated:
            now = self._engine_seconds()
            spent, self._t = now - self._t, now
            return spent
        if not measured:
            self.modelled = True
            return modelled / (self.acc.board.clock_mhz * 1e6)
        return measured / (self.acc.board.clock_mhz * 1e6)


def _placed(acc: Accelerator, a: np.ndarray, b: np.ndarray) -> tuple[GemmCall, dict[str, int], Any]:
    """``a`` and ``b`` (M x K and K x N INT8) in device buffers of their own, rows padded to the
    beat, and the planned call with the operands' offsets: (call, offsets, the output buffer)."""
    import pynq

    from ..runtime import planner

    beat = acc.board.axi_bytes
    (m, k), n = a.shape, b.shape[1]
    lda, ldb, ldc = _ceil_to(k, beat), _ceil_to(n, beat), _ceil_to(4 * n, beat) // 4
    bufs = {}
    for name, src, ld in (("a", a, lda), ("b", b, ldb)):
        buf = pynq.allocate((src.shape[0], ld), dtype=np.int8, target=acc.device)
        buf[:] = 0
        buf[:, :src.shape[1]] = src
        buf.flush()
        bufs[name] = buf
    bufs["c"] = pynq.allocate((m, ldc), dtype=np.int32, target=acc.device)
    offsets = {name: int(buf.device_address) - acc.memory_base for name, buf in bufs.items()}
    call = planner.plan(acc.board, GemmCall(m, n, k, lda, ldb, ldc, 1, 1, 1)).call
    return call, offsets, bufs


def measure(acc: Accelerator, calls: int = 200, warmup: int = 20,
            shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> dict[str, Any]:
    """Time ``calls`` calls of each loop (after ``warmup`` untimed ones) on ``acc``; returns the
    per-call wall, kernel and host times (median, 10th and 90th percentile, in microseconds) of
    ``driver`` and ``gemm``, how the kernel's time was obtained, and the board's stated
    ``call_us``. Both loops' outputs are checked against numpy."""
    from ..runtime import planner
    from ..runtime.check import random_operands

    if calls < 1 or warmup < 0:
        raise OptionError(f"calltime needs at least one timed call and no negative warm-up, got calls={calls}, "
                          f"warmup={warmup}")
    if len(shape) != 3:
        raise OptionError(f"the GEMM's shape is three numbers M,K,N, got {len(shape)}: {list(shape)}")
    m, k, n = shape
    board = acc.board
    if min(shape) < 1 or m > board.max_m or k > board.max_k or n > board.max_n:
        raise OptionError(f"calltime times one kernel call: M, K, N = {m}, {k}, {n} must be at least 1 and within "
                          f"the {board.name} limits {board.max_m}, {board.max_k}, {board.max_n}")
    a, b = random_operands(np.random.default_rng(seed), m, k, n)
    want = a.astype(np.int64) @ b.astype(np.int64)
    clock = _KernelClock(acc)
    call, offsets, bufs = _placed(acc, a, b)
    try:
        def driver() -> tuple[int | None, int]:
            info = acc.run_call(call, offsets)
            return (info.cycles_measured if acc.measures_cycles else None), info.cycles_model

        def gemm() -> tuple[int | None, int]:
            r = acc.gemm(a, b)
            return r.cycles_measured, r.cycles_model

        out: dict[str, Any] = {}
        for name, fn in (("driver", driver), ("gemm", gemm)):
            for _ in range(warmup):
                fn()
            wall, kernel = [], []
            for _ in range(calls):
                clock.mark()
                t0 = time.perf_counter()
                measured, modelled = fn()
                wall.append(time.perf_counter() - t0)
                kernel.append(clock.since_last(measured, modelled))
            w, kn = np.asarray(wall) * 1e6, np.asarray(kernel) * 1e6
            out[name] = {"wall_us": _stats(w), "kernel_us": _stats(kn), "host_us": _stats(w - kn)}
        bufs["c"].invalidate()
        if not np.array_equal(np.asarray(bufs["c"])[:, :n], want) or not np.array_equal(acc.gemm(a, b).output, want):
            raise BackendError("calltime's GEMM does not equal numpy's product: the accelerator does not compute "
                               "correctly, so its times mean nothing; check it with `lora-qta gemm` on this backend")
    finally:
        for buf in bufs.values():
            if hasattr(buf, "freebuffer"):
                buf.freebuffer()
    where = ("on the board" if acc.backend == "board"
             else "on this machine under emulation (this machine's Python, not the board's ARM cores)")
    return {"board": board.name, "backend": acc.backend, "measured": where, "shape": [m, k, n], "calls": calls,
            "warmup": warmup, "kernel_time": clock.source(), "stated_call_us": board.host.call_us,
            "dataflow": call.dataflow, "cycles_model": int(planner.plan(board, call).report.cycles), **out}


def summary(r: dict[str, Any]) -> str:
    """:func:`measure`'s figures as text, with what to do with them."""
    m, k, n = r["shape"]
    lines = [f"Host time per accelerator call, {m}x{k}x{n} GEMM on {r['board']} [{r['backend']}], measured "
             f"{r['measured']}; {r['calls']} calls per loop after {r['warmup']} of warm-up",
             f"kernel time: {r['kernel_time']}", "",
             f"  {'loop':34s} {'wall':>9s} {'kernel':>9s} {'host':>9s}   host 10-90%"]
    labels = {"driver": "driver (run_call: registers, poll)", "gemm": "whole call path (Accelerator.gemm)"}
    for name in ("driver", "gemm"):
        x = r[name]
        lines.append(f"  {labels[name]:34s} {x['wall_us']['median']:7.1f}us {x['kernel_us']['median']:7.1f}us "
                     f"{x['host_us']['median']:7.1f}us   {x['host_us']['p10']:.1f}-{x['host_us']['p90']:.1f} us")
    drv, whole = r["driver"]["host_us"]["median"], r["gemm"]["host_us"]["median"]
    lines += ["", f"hardware.toml states call_us = {r['stated_call_us']:g} us for {r['board']} (the register traffic "
              f"of a call); measured here: {drv:.1f} us (driver), {whole:.1f} us (whole call path, "
              f"{whole / r['stated_call_us']:.1f}x the stated figure; the step model's sensitivity rows run x10 "
              "and x50)"]
    if r["backend"] == "board":
        lines.append(f"to model this board with it: set call_us = {drv:.0f} under [boards.{r['board']}.host] in "
                     "hardware.toml, then rerun `lora-qta bench`")
    else:
        lines.append("these are not board figures: run `lora-qta calltime` on the board (backend board) to measure "
                     "its ARM cores")
    return "\n".join(lines) + "\n"


__all__ = ["SHAPE", "measure", "summary"]
