"""The host time of one accelerator call, measured where the calls run: on a board, or on this
machine's emulated device. It is the figure the step model assumes as a board's ``call_us``
(hardware.toml's note on ``call_us``).

Two loops over the same small GEMM (INT32 output, 16 x 16 x 16 by default):

* ``driver``: one planned call on operands placed in device memory once (resident), issued again
  and again: the flush of both operands, :meth:`~lora_qta.runtime.accelerator.Accelerator.run_call`
  (its alignment and capacity checks, the argument register block, ap_start, the completion poll,
  the output registers) and the invalidate of the output. No planner, no copies: what ``call_us``
  states (register traffic and cache maintenance bookkeeping; the per-line cost of the cache
  maintenance is modelled apart, by ``cache_gbps``).
* ``gemm``: :meth:`~lora_qta.runtime.accelerator.Accelerator.gemm` on numpy operands: also the
  operand checks, the planner's cached lookup, the copies into the ``pynq`` buffers and the copy
  of the result. This is the package's whole call path, which the step model's sensitivity rows
  (``call_us`` x10 and x50) stand for.

Each call's wall time minus the kernel's own time is the host's part. The kernel's time is its
measured cycle count at the board's configured clock on a board. Where the bitstream reports no
count it is the modelled count, and the result says so. On the emulated device it is the emulated
engine's time on this machine. The driver's completion poll sleeps between reads (10 us, doubling
up to 1 ms: ``driver.POLL_FIRST_S``, ``POLL_MAX_S``), so on a board a kernel that outlasts the
first read adds the sleep's overshoot to the host's part: each loop also reports the time from
ap_start to ap_done as the host saw it beyond the kernel's (``done_us``), and the summary warns
when its median exceeds the first sleep (then most calls slept at least once; without a sleep it
is one register write and one read). Only a board's figures describe a board: on a PC the loops
measure this machine's Python, not the board's ARM cores.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from ..errors import BackendError, OptionError
from ..hw.call import GemmCall, ceil_to

if TYPE_CHECKING:  # the runtime (pynq) is imported when a loop runs: the command line imports SHAPE
    from ..runtime.accelerator import Accelerator

SHAPE = (16, 16, 16)
"""(M, K, N) of the default GEMM: one tile of every board, so the kernel's part is small."""

def percentiles(values: Sequence[float]) -> dict[str, float]:
    """Median and the 10th and 90th percentiles of ``values`` (linear interpolation), and how
    many values there are (``n``)."""
    v = np.asarray(values, dtype=np.float64)
    p10, median, p90 = np.percentile(v, [10, 50, 90])
    return {"median": float(median), "p10": float(p10), "p90": float(p90), "n": int(v.size)}


class _KernelClock:
    """The kernel's own time of each call an accelerator runs: the emulated engine's time on an
    emulated device, else the measured (or, without a counter, the modelled) cycle count at the
    board's clock."""

    def __init__(self, acc: Accelerator):
        self.acc = acc
        self.emulated = acc.backend != "board"
        self.modelled = False
        self._t = acc.kernel_seconds

    def mark(self) -> None:
        """Count the emulated engine's time from here (before a timed call)."""
        self._t = self.acc.kernel_seconds

    def source(self) -> str:
        if self.emulated:
            return "the emulated engine's time on this machine"
        if self.modelled:
            return "modelled (the kernel's modelled cycles at the clock: this bitstream reports no measured count)"
        return "measured (the kernel's cycle counter at the configured clock)"

    def of_call(self, measured: int | None, modelled: int) -> float:
        """Seconds of kernel time of the call that just ran (its cycle counts as the driver or
        ``gemm`` returned them)."""
        if self.emulated:
            now = self.acc.kernel_seconds
            spent, self._t = now - self._t, now
            return spent
        if not measured:
            self.modelled = True
        return (measured or modelled) / (self.acc.board.clock_mhz * 1e6)


def _timed(fn: Callable[[], tuple[int | None, int, float]], clock: _KernelClock, calls: int,
           warmup: int) -> dict[str, dict[str, float]]:
    """``warmup`` untimed calls of ``fn`` (returning the call's measured and modelled cycles and
    its ap_start-to-ap_done seconds as the driver saw them), then ``calls`` timed ones: per-call
    wall, kernel and host times and the start-to-done time beyond the kernel's (percentiles,
    microseconds)."""
    for _ in range(warmup):
        fn()
    wall, kernel, done = [], [], []
    for _ in range(calls):
        clock.mark()
        t0 = time.perf_counter()
        measured, modelled, done_s = fn()
        wall.append(time.perf_counter() - t0)
        kernel.append(clock.of_call(measured, modelled))
        done.append(done_s)
    w, k, d = (np.asarray(x) * 1e6 for x in (wall, kernel, done))
    return {"wall_us": percentiles(w), "kernel_us": percentiles(k), "host_us": percentiles(w - k),
            "done_us": percentiles(d - k)}


def _check(name: str, got: np.ndarray, want: np.ndarray) -> None:
    if not np.array_equal(got, want):
        raise BackendError(f"calltime's {name} loop computed a GEMM that does not equal numpy's product, so its times "
                           "mean nothing; check the accelerator with `lora-qta gemm` on this backend")


def measure(acc: Accelerator, calls: int = 200, warmup: int = 20,
            shape: Sequence[int] = SHAPE, seed: int = 0) -> dict[str, Any]:
    """Time ``calls`` calls of each loop (after ``warmup`` untimed ones) on ``acc``; returns the
    per-call wall, kernel and host times (median, 10th and 90th percentile, in microseconds) of
    ``driver`` and ``gemm``, how the kernel's time was obtained, and the board's stated
    ``call_us``. Each loop's last output is checked against numpy after the loop."""
    import pynq

    from ..runtime import planner
    from ..runtime.driver import POLL_FIRST_S, POLL_MAX_S
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
    ra = rb = cbuf = None
    try:
        ra = acc.resident(a, "calltime a")
        rb = acc.resident(b, "calltime b")
        abuf, bbuf = ra.buffer(acc), rb.buffer(acc)
        ldc = ceil_to(4 * n, board.axi_bytes) // 4  # INT32 rows padded to the beat
        cbuf = pynq.allocate((m, ldc), dtype=np.int32, target=acc.device)
        offsets = {"a": acc.offset(abuf), "b": acc.offset(bbuf), "c": acc.offset(cbuf)}
        planned = planner.plan(board, GemmCall(m, n, k, ra.ld, rb.ld, ldc, 1, 1, 1))
        call = planned.call

        def driver() -> tuple[int | None, int, float]:
            abuf.flush()
            bbuf.flush()
            info = acc.run_call(call, offsets)
            cbuf.invalidate()
            return (info.cycles_measured if acc.measures_cycles else None), info.cycles_model, info.wall_s

        last: list[Any] = [None]

        def gemm() -> tuple[int | None, int, float]:
            r = last[0] = acc.gemm(a, b)
            return r.cycles_measured, r.cycles_model, r.wall_s

        figures = {"driver": _timed(driver, clock, calls, warmup)}
        _check("driver", np.asarray(cbuf)[:, :n], want)
        figures["gemm"] = _timed(gemm, clock, calls, warmup)
        _check("gemm", np.asarray(last[0].output), want)
    finally:
        for handle in (ra, rb):
            if handle is not None:
                acc.free(handle)
        if cbuf is not None and hasattr(cbuf, "freebuffer"):
            cbuf.freebuffer()
    where = ("on the board" if acc.backend == "board"
             else "on this machine under emulation (this machine's Python, not the board's ARM cores)")
    return {"board": board.name, "backend": acc.backend, "measured": where, "shape": [m, k, n], "calls": calls,
            "warmup": warmup, "kernel_time": clock.source(), "stated_call_us": board.host.call_us,
            "clock_mhz": board.clock_mhz, "dataflow": call.dataflow,
            "poll_sleep_us": [POLL_FIRST_S * 1e6, POLL_MAX_S * 1e6],
            "cycles_model": int(planned.report.cycles), **figures}


__all__ = ["SHAPE", "measure", "percentiles"]
