"""GEMM planner: the kernel's cycle model, a roofline, the legal tiles and the choice of mode.

The cycle model restates the schedule kernel v2 counts while it runs (``hls/src/qta_gemm.cpp``;
hls/README.md "Cycle model"): every process reports the trip counts of its loops plus fixed
latencies, and the model process combines them by an overlap recurrence. Tests require
:func:`model_cycles` to equal the C-simulated kernel's ``cycles_model`` for every call, so the
planner's predictions are the kernel's modelled counts (a model, also on a board: the kernel's
``cycles_measured`` is what a board measures).

Per step t (block x K chunk) and block b, in the kernel's order (batch item, block row, block
column, K chunk)::

    L[t] = max(load[t] + ddr_latency, max_p fetch_p[t])
    P[t] = array[t]
    S[b] = max(store[b] + ddr_latency, write[b])
    Lend[t] = max(Lend[t-1], Pend[t-2], Send[b-1] if accumulate and t is b's first step) + L[t]
    Pend[t] = max(Lend[t], Pend[t-1], Send[b-2] if t is b's first step) + P[t]
    Send[b] = max(Pend[b's last step], Send[b-1]) + S[b]
    cycles = call_overhead + Send[last block]

with ``fetch``, ``load``, ``array``, ``store``, ``write`` the per-process counts of
:func:`step_costs` and :func:`block_costs`. Every m_axi burst (a row, a conv tap, the scale
vector) costs its beats plus ``burst_overhead + ddr_latency``: the kernel's burst loops sit in
non-pipelined row loops, so each burst waits for its first beat (reads) or its write response
(writes) before the next is issued (review S1). ``write`` is the busiest writer's row bursts,
which are also the old-C row bursts of accumulate mode; in accumulate mode the fetchers read a
block's old C behind its operands, so the next block's first fetch waits for the store (S2). :func:`model_cycles` evaluates the recurrence exactly;
because blocks repeat, it skips ahead once the schedule relative to the last block's end repeats
(the recurrence is invariant under a common shift, so a repeated relative state repeats its
increment exactly).

:func:`plan` picks tiles, dataflow and partition: for every legal mode a grid of tile sizes
(every multiple of the beat for short dimensions; balanced splits, powers of two, multiples of
the array's grain and the largest chunk the banks hold for long ones), candidates ranked by a
lower bound (the busiest process's total plus the others' shortest step), evaluated exactly in
that order until the bound exceeds the best, then a local search of the neighbouring tiles.
:func:`exhaustive_plan` does the same over every legal tile (the tests hold :func:`plan` within
2% of it on the LoRA shapes of SD 1.5 and SDXL).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np

from ..errors import PlanError
from ..hw.call import SCALE_MODES, GemmCall
from ..hw.config import BoardConfig, config


def _ceil(a, b):
    """Ceiling division of ints or integer arrays (no conversion: it runs in the search's inner loop)."""
    return -(-a // b)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def split_geometry(rows: int, cols: int, split: int) -> tuple[int, int, int, int]:
    """(LR, LC, SR, SC): logical array sides and physical sub-array sides of a ``rows`` x ``cols``
    PE array at partition exponent ``split`` (design contract v2, section 1; legality is the
    caller's: :func:`valid_modes`, or the RTL contract's own check)."""
    if split >= 0:
        return rows << split, cols >> split, rows, cols >> split
    return rows >> -split, cols << -split, rows >> -split, cols


def array_shape(board: BoardConfig, split: int) -> tuple[int, int, int, int]:
    """(LR, LC, SR, SC): logical array sides and physical sub-array sides for ``split``."""
    return split_geometry(board.array_rows, board.array_cols, split)


def fold_cycles(dataflow: str, sr, sc, kt, mt):
    """Cycles of one fold of the PE array (design contract v2, section 1), ints or arrays:
    OS ``kt + SR + SC - 2`` (stream the K chunk, then the skew across the sub-array), WS
    ``2*SR + SC + mt - 2`` (SR cycles of weight load, then mt rows streamed through the skew).
    The one statement of the fold length: the array cost of :func:`step_costs` and the RTL
    contract (``lora_qta.rtl.contract``, which the Verilator bench checks the RTL against) use it."""
    if dataflow == "os":
        return kt + sr + sc - 2
    return 2 * sr + sc + mt - 2


def fold_count(dataflow: str, lr, lc, sr, mt, nt, kt):
    """Folds of one step: OS one per LR x LC output tile, WS one per SR-deep K slice and LC
    columns (ints or arrays)."""
    if dataflow == "os":
        return _ceil(mt, lr) * _ceil(nt, lc)
    return _ceil(kt, sr) * _ceil(nt, lc)


def drain_cycles(dataflow: str, sr: int) -> int:
    """Cycles after a step's last fold: the OS drain shifts SR rows of accumulators out; WS has none."""
    return sr if dataflow == "os" else 0


def array_step_cycles(dataflow: str, lr, lc, sr, sc, mt, nt, kt):
    """Cycles of the PE array for one step, without the array process's pipeline depth: its folds
    back to back, then the drain."""
    return (fold_count(dataflow, lr, lc, sr, mt, nt, kt) * fold_cycles(dataflow, sr, sc, kt, mt)
            + drain_cycles(dataflow, sr))


# ----------------------------------------------------------------------------------- costs

def _maximum(a, b):
    """Element-wise max of ints or integer arrays: Python's ``max`` on two ints (the cost of one
    call is what a new call's plan pays: a numpy operation on scalars costs ~1 us), else numpy's."""
    if type(a) is int and type(b) is int:
        return a if a >= b else b
    return np.maximum(a, b)


def _where(cond, a, b):
    """``np.where`` of ints or arrays; a Python conditional when ``cond`` is a Python bool."""
    if type(cond) is bool:
        return a if cond else b
    return np.where(cond, a, b)


def _integers(*xs):
    """``xs`` as they are when every one is a Python int or bool (one call's model), else as
    int64 arrays (the search's candidates; bools as bool arrays)."""
    if all(type(x) in (int, bool) for x in xs):
        return xs
    return tuple(np.asarray(x) if type(x) is bool or getattr(x, "dtype", None) == bool
                 else np.asarray(x, dtype=np.int64) for x in xs)


def _rows_p(n, p, ports: int):
    """Rows of a tile of ``n`` rows that port ``p`` carries (rows r = p mod ports)."""
    return _maximum(0, _ceil(n - p, ports))


def load_phases(board: BoardConfig, natural: bool, nrows, seg, width):
    """Cycles of the loader's loop for one operand (without its pipeline depth): groups of stored
    rows fill per-port row buffers while the previous group is emitted, two words per cycle.
    ``natural``: the operand's rows are stored along the array edge they feed (one flag for
    every step; the other arguments ints or arrays)."""
    ports, beat = board.axi_ports, board.axi_bytes
    trows = max(board.array_rows, board.array_cols) // ports
    nb = _ceil(seg, beat)
    rows_per_group = ports if natural else width
    groups = _ceil(nrows, rows_per_group)
    last_rows = nrows - (groups - 1) * rows_per_group
    nw = _ceil(seg, width)
    if natural:
        fill_full, fill_last = nb, nb
        emit_full, emit_last = (ports // 2) * nw, _ceil(last_rows, 2) * nw
    else:
        fill_full, fill_last = (width // ports) * nb, _ceil(last_rows, ports) * nb
        emit_full = emit_last = trows + _ceil(seg, 2)
    many = (fill_full + _maximum(groups - 2, 0) * _maximum(fill_full, emit_full)
            + _maximum(fill_last, emit_full) + emit_last)
    return _where(groups == 1, fill_last + emit_last, many)


def step_costs(board: BoardConfig, call: GemmCall, mt, nt, kt, k0, first, last):
    """(L, P) of steps with tile sizes ``mt``, ``nt``, ``kt`` (ints, or arrays for the search),
    K offset ``k0``, first/last K chunk of their block; the mode and the rest come from ``call``."""
    s = config().schedule
    r, c, ports, beat = board.array_rows, board.array_cols, board.axi_ports, board.axi_bytes
    lr, lc, sr, sc = array_shape(board, call.split)
    sp = call.split
    bo = s.burst_overhead + s.ddr_latency  # per burst beyond its beats
    mt, nt, kt, k0, first, last = _integers(mt, nt, kt, k0, first, last)

    def fetch(p: int):
        """The fetcher cycles of port ``p`` (it carries the stored rows r = p mod ports)."""
        f = 0
        if call.scaled:  # one contiguous burst on port 0
            cnt = mt if call.scale_mode == "row" else nt
            f = f + _where(first & (p == 0), _ceil(8 * cnt, beat) + bo, 0)
        if call.conv is not None:
            cin = call.conv.cin
            pieces = _ceil(k0 % cin + kt, cin)
            f = f + _rows_p(mt, p, ports) * (kt // beat + bo * pieces)
        else:
            nr, seg = (kt, mt) if call.trans_a else (mt, kt)
            f = f + _rows_p(nr, p, ports) * (_ceil(seg, beat) + bo)
        nr, seg = (nt, kt) if call.trans_b else (kt, nt)
        return f + _rows_p(nr, p, ports) * (_ceil(seg, beat) + bo)

    fetch_max = fetch(0)
    for p in range(1, ports):
        fetch_max = _maximum(fetch_max, fetch(p))
    stored_k = call.trans_a and call.conv is None
    nra, sega = (kt, mt) if stored_k else (mt, kt)
    if call.dataflow == "os":
        nat_a, wa = stored_k, (r if sp >= 0 else sr)
    else:
        nat_a, wa = (not stored_k), sr
    load_a = load_phases(board, nat_a, nra, sega, wa) + s.load_pipeline
    nrb, segb = (nt, kt) if call.trans_b else (kt, nt)
    load_b = load_phases(board, not call.trans_b, nrb, segb, c if sp <= 0 else sc) + s.load_pipeline
    lcost = _maximum(load_a + load_b + s.ddr_latency, fetch_max)
    pcost = array_step_cycles(call.dataflow, lr, lc, sr, sc, mt, nt, kt)
    return lcost, pcost + s.array_pipeline


def block_costs(board: BoardConfig, call: GemmCall, mt, nt):
    """S of blocks of ``mt`` x ``nt`` outputs (ints or arrays): the epilogue's loop and its last
    write response, or the busiest writer's row bursts (port 0), which in accumulate mode are
    also the old-C reads."""
    s = config().schedule
    ports, beat = board.axi_ports, board.axi_bytes
    mt, nt = _integers(mt, nt)
    store = _ceil(mt, board.epilogue_rows) * _ceil(nt, s.min_subarray) + s.store_pipeline
    if call.scaled:
        store = store + _ceil(8 * (mt if call.scale_mode == "row" else nt), beat) + s.burst_overhead
    write = _ceil(mt, ports) * (_ceil(nt * call.out_bytes, beat) + s.burst_overhead + s.ddr_latency)
    return _maximum(store + s.ddr_latency, write)


# ----------------------------------------------------------------------------- the model

@dataclass(frozen=True)
class CycleReport:
    """The modelled schedule of one call (model outputs, in cycles and logical bytes)."""

    cycles: int
    load_cycles: int      # sum of L over steps (load side: fetchers and loader)
    array_cycles: int     # sum of P over steps
    store_cycles: int     # sum of S over blocks (store side: epilogue and writers)
    steps: int
    blocks: int
    bytes_a: int
    bytes_b: int
    bytes_c: int          # written, plus read when accumulating
    bytes_scales: int
    macs: int
    pes: int
    axi_bytes: int
    axi_ports: int

    @property
    def bytes_moved(self) -> int:
        """All DDR traffic of the call (logical bytes)."""
        return self.bytes_a + self.bytes_b + self.bytes_c + self.bytes_scales

    @property
    def utilization(self) -> float:
        """MACs / (cycles x PEs): the fraction of the array's peak actually used (<= 1)."""
        return self.macs / (self.cycles * self.pes)

    @property
    def compute_bound_cycles(self) -> float:
        """Roofline compute bound: every PE busy every cycle."""
        return self.macs / self.pes

    @property
    def memory_bound_cycles(self) -> float:
        """Roofline memory bound: every AXI port streaming one beat per cycle (tile rows are
        striped over all ports, whatever the operand)."""
        return self.bytes_moved / (self.axi_bytes * self.axi_ports)

    @property
    def roofline_cycles(self) -> float:
        """The tighter of the two bounds."""
        return max(self.compute_bound_cycles, self.memory_bound_cycles)

    @property
    def bound(self) -> str:
        """Which roof limits this GEMM: ``"compute"`` or ``"memory"``."""
        return "compute" if self.compute_bound_cycles >= self.memory_bound_cycles else "memory"

    @property
    def roofline_fraction(self) -> float:
        """Attained fraction of the roofline (roofline cycles / modelled cycles)."""
        return self.roofline_cycles / self.cycles


def step_tiles(call: GemmCall) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The kernel's steps in order: clipped tile sizes (mt, nt, kt) of each (block, K chunk)
    over every batch item, and whether it is its block's last chunk."""
    nbm, nbn, nkc = cdiv(call.m, call.tile_m), cdiv(call.n, call.tile_n), cdiv(call.k, call.tile_k)
    t = np.arange(call.batch * nbm * nbn * nkc, dtype=np.int64)
    kc, blk = t % nkc, (t // nkc) % (nbm * nbn)
    bm, bn = blk // nbn, blk % nbn
    mt = np.minimum(call.tile_m, call.m - bm * call.tile_m)
    nt = np.minimum(call.tile_n, call.n - bn * call.tile_n)
    kt = np.minimum(call.tile_k, call.k - kc * call.tile_k)
    return mt, nt, kt, kc == nkc - 1


def _mode_signature(call: GemmCall) -> GemmCall:
    """The fields of ``call`` the per-step costs depend on (shape and tiles left out), as a
    hashable key for the cost caches."""
    return call.updated(m=1, n=1, k=1, lda=0, ldb=0, ldc=0, tile_m=1, tile_n=1, tile_k=1, mult=1, shift=0,
                        seed=0, batch=1, stride_a=0, stride_b=0, stride_c=0)


@lru_cache(maxsize=1 << 16)
def _step_cost(board: BoardConfig, sig: GemmCall, mt: int, nt: int, kt: int, k0: int, first: bool,
               last: bool) -> tuple[int, int]:
    lc, pc = step_costs(board, sig, mt, nt, kt, k0, first, last)
    return int(lc), int(pc)


@lru_cache(maxsize=1 << 14)
def _block_cost(board: BoardConfig, sig: GemmCall, mt: int, nt: int) -> int:
    return int(block_costs(board, sig, mt, nt))


class _Schedule:
    """The recurrence over a call's steps, with the per-block-type costs computed once."""

    def __init__(self, board: BoardConfig, call: GemmCall):
        self.board, self.call = board, call
        self.nkc = cdiv(call.k, call.tile_k)
        k0 = np.arange(self.nkc, dtype=np.int64) * call.tile_k
        self.k0, self.kt = k0, np.minimum(call.tile_k, call.k - k0)
        self.first = np.arange(self.nkc) == 0
        self.last = np.arange(self.nkc) == self.nkc - 1
        self._types: dict[tuple[int, int], tuple[list[int], list[int], int]] = {}
        self.sig = _mode_signature(call)  # what the step costs depend on besides the tiles

    def costs(self, mt: int, nt: int) -> tuple[list[int], list[int], int]:
        key = (mt, nt)
        if key not in self._types:
            sig = self.sig
            cin = self.call.conv.cin if self.call.conv is not None else 1
            # a step's cost depends on (K tile, K offset modulo cin, first, last) only: the many
            # middle chunks of a long K share one key, so the cached cost is looked up once per
            # distinct key (hashing the mode signature per chunk cost more than the model)
            keys = list(zip(self.kt.tolist(), (self.k0 % cin).tolist(), self.first.tolist(), self.last.tolist()))
            cost = {k: _step_cost(self.board, sig, mt, nt, *k) for k in dict.fromkeys(keys)}
            steps = [cost[k] for k in keys]
            self._types[key] = ([x[0] for x in steps], [x[1] for x in steps], _block_cost(self.board, sig, mt, nt))
        return self._types[key]

    def block(self, state: tuple, mt: int, nt: int) -> tuple:
        """The state (Lend, Pend[t-1], Pend[t-2], Send[b-1], Send[b-2]) after one block."""
        lend, p1, p2, s1, s2 = state
        ls, ps, sb = self.costs(mt, nt)
        n, i, prev = self.nkc, 0, None
        while i < n:
            lc, pc = ls[i], ps[i]
            lend = max(lend, p2, s1 if i == 0 and self.call.accumulate else 0) + lc
            start = max(lend, p1)
            if i == 0:
                start = max(start, s2)
            p2, p1 = p1, start + pc
            i += 1
            # middle chunks (neither first nor last) repeat: skip ahead once the relative state repeats
            if 2 <= i < n - 1 and ls[i] == lc and ps[i] == pc:
                rel = (lend - p1, p2 - p1)
                if prev is not None and prev[0] == rel:
                    d = p1 - prev[1]
                    j = i
                    while j < n - 1 and ls[j] == lc and ps[j] == pc:
                        j += 1
                    lend, p1, p2 = lend + (j - i) * d, p1 + (j - i) * d, p2 + (j - i) * d
                    i, prev = j, None
                    continue
                prev = (rel, p1)
            else:
                prev = None
        return (lend, p1, p2, max(p1, s1) + sb, s1)

    @staticmethod
    def repeat(state: tuple, unit: Callable[[tuple], tuple], reps: int) -> tuple:
        """``unit`` applied ``reps`` times, skipping ahead once the state relative to the last
        Send and the increment of Send repeat (then every further unit adds the same)."""
        prev = None
        for r in range(reps):
            before = state
            state = unit(state)
            cur = (tuple(x - state[3] for x in state), state[3] - before[3])
            if prev == cur:
                d = cur[1] * (reps - r - 1)
                return tuple(x + d for x in state)
            prev = cur
        return state

    def total(self) -> int:
        call = self.call
        nbm, nbn = cdiv(call.m, call.tile_m), cdiv(call.n, call.tile_n)
        medge, nedge = call.m - (nbm - 1) * call.tile_m, call.n - (nbn - 1) * call.tile_n

        def row(state, mt):
            if nbn > 1:
                state = self.repeat(state, lambda st: self.block(st, mt, call.tile_n), nbn - 1)
            return self.block(state, mt, nedge)

        def item(state):
            if nbm > 1:
                state = self.repeat(state, lambda st: row(st, call.tile_m), nbm - 1)
            return row(state, medge)

        return self.repeat((0, 0, 0, 0, 0), item, call.batch)[3]


def _cycles(board: BoardConfig, call: GemmCall) -> int:
    """Just the modelled cycle count of ``call`` (what the search compares)."""
    return config().schedule.call_overhead + _Schedule(board, call).total()


def model_cycles(board: BoardConfig, call: GemmCall) -> CycleReport:
    """The kernel's modelled cycle count and traffic for ``call`` on ``board`` (exact)."""
    s = config().schedule
    sched = _Schedule(board, call)
    cycles = s.call_overhead + sched.total()
    nbm, nbn = cdiv(call.m, call.tile_m), cdiv(call.n, call.tile_n)
    medge, nedge = call.m - (nbm - 1) * call.tile_m, call.n - (nbn - 1) * call.tile_n
    sum_l = sum_p = sum_s = 0
    for mt, cm in ((call.tile_m, nbm - 1), (medge, 1)):
        for nt, cn in ((call.tile_n, nbn - 1), (nedge, 1)):
            cnt = cm * cn * call.batch
            if cnt:
                ls, ps, sb = sched.costs(mt, nt)
                sum_l += cnt * sum(ls)
                sum_p += cnt * sum(ps)
                sum_s += cnt * sb
    mt, nt, kt, last = step_tiles(call)
    out = int((mt * nt * last).sum()) * call.out_bytes
    return CycleReport(
        cycles=int(cycles), load_cycles=sum_l, array_cycles=sum_p, store_cycles=sum_s,
        steps=len(mt), blocks=call.batch * nbm * nbn,
        bytes_a=int((mt * kt).sum()), bytes_b=int((kt * nt).sum()),
        bytes_c=out * (2 if call.accumulate else 1),
        bytes_scales=8 * int(((mt if call.scale_mode == "row" else nt) * last).sum()) if call.scaled else 0,
        macs=call.macs, pes=board.pes, axi_bytes=board.axi_bytes, axi_ports=board.axi_ports,
    )


# ------------------------------------------------------------------------- legal calls

def valid_modes(board: BoardConfig) -> list[tuple[str, int]]:
    """Every (dataflow, split) the kernel accepts on ``board``."""
    return [("os", s) for s in board.splits] + [("ws", s) for s in board.splits if s <= 0]


def fits(board: BoardConfig, dataflow: str, split: int, mt, nt, kt):
    """Whether the feeder banks and accumulators hold steps of ``mt`` x ``nt`` x ``kt`` in this
    mode (hls/README.md, "Capacity"; ints, or arrays for the search)."""
    r, c = board.array_rows, board.array_cols
    lr, lc, sr, sc = array_shape(board, split)
    mt, nt, kt = _integers(mt, nt, kt)
    wa, wb = (r if split >= 0 else sr), (c if split <= 0 else sc)
    ea, eb = (2 ** split if split > 0 else 1), (2 ** -split if split < 0 else 1)
    if dataflow == "os":
        nfa = _ceil(_ceil(mt, wa), ea)
        ok = nfa * kt <= board.a_depth
        if split > 0:
            ok = ok & (nfa * kt <= board.a_side_depth)
        acc = _ceil(mt, lr) * _ceil(nt, lc) * sr
    else:
        ok = _ceil(kt, sr) * mt <= board.a_depth
        acc = _ceil(nt, lc) * mt
    ok = ok & (acc <= board.acc_depth)
    if split < 0:
        ok = ok & (acc <= board.acc_side_depth)
    nfb = _ceil(_ceil(nt, wb), eb)
    ok = ok & (nfb * kt <= board.b_depth)
    if split < 0:
        ok = ok & (nfb * kt <= board.b_side_depth)
    return ok


def _tile_ok(t: int, dim: int, tmax: int, beat: int) -> bool:
    return 1 <= t <= tmax and (t % beat == 0 or t >= dim)


def kernel_accepts(board: BoardConfig, call: GemmCall) -> bool:
    """Whether the kernel's argument check passes for the call's scalar registers (else it sets
    status ``bad_args``); the offsets' alignment is the driver's and the device's check.

    The check is cached per call with the epilogue's multiplier and seed left out (they are not
    checked) and the shift tested on its own, so delayed scaling (a new scale every step) hits
    the cache."""
    if not 0 <= call.shift <= 62:
        return False
    return _accepts(board, call.schedule_key())


@lru_cache(maxsize=1 << 14)
def _accepts(board: BoardConfig, call: GemmCall) -> bool:
    beat = board.axi_bytes
    c = call
    ok = (1 <= c.m <= board.max_m and 1 <= c.n <= board.max_n and 1 <= c.k <= board.max_k and c.batch >= 1
          and _tile_ok(c.tile_m, c.m, board.tile_m_max, beat) and _tile_ok(c.tile_n, c.n, board.tile_n_max, beat)
          and _tile_ok(c.tile_k, c.k, board.tile_k_max, beat)
          and c.split in board.splits and (c.dataflow == "os" or c.split <= 0)
          and c.scale_mode in SCALE_MODES and 0 <= c.shift <= 62
          and c.lda % beat == 0 and c.ldb % beat == 0 and (c.ldc * c.out_bytes) % beat == 0
          and c.stride_a % beat == 0 and c.stride_b % beat == 0 and c.stride_c % beat == 0
          and c.ldb >= (c.k if c.trans_b else c.n) and c.ldc >= c.n and not c.c_items_overlap)
    if c.conv is not None:
        g = c.conv
        ok = ok and (not c.trans_a and g.cin >= beat and g.cin % beat == 0 and c.lda >= g.cin and g.kh >= 1
                     and g.kw >= 1 and g.stride >= 1 and g.dil in (1, 2) and min(g.h, g.w, g.ho, g.wo) >= 1
                     and g.k == c.k and max(g.h, g.w, g.ho, g.wo) < 1 << 16
                     and max(g.kh, g.kw, g.stride, g.pad) < 1 << 8)
    else:
        ok = ok and c.lda >= (c.m if c.trans_a else c.k)
    return bool(ok and fits(board, c.dataflow, c.split, min(c.tile_m, c.m), min(c.tile_n, c.n),
                            min(c.tile_k, c.k)))


def check_limits(board: BoardConfig, call: GemmCall) -> None:
    """Raise :class:`PlanError` naming what exceeds the configuration."""
    for name, val, lim in (("M", call.m, board.max_m), ("N", call.n, board.max_n), ("K", call.k, board.max_k)):
        if not 1 <= val <= lim:
            raise PlanError(f"{name} = {val} is outside 1..{lim}, the limit of the {board.name} configuration")
    if call.out_int8 and not 0 <= call.shift <= 62:
        raise PlanError(f"shift = {call.shift} is outside 0..62")
    if not -(2**31) <= call.mult < 2**31:
        raise PlanError(f"multiplier {call.mult} does not fit INT32")
    if call.batch < 1:
        raise PlanError(f"batch = {call.batch}: a call needs at least one GEMM")
    if call.conv is not None:
        g = call.conv
        if g.k != call.k or g.cin % board.axi_bytes or g.dil not in (1, 2):
            raise PlanError(f"convolution {g}: K must be kh*kw*cin ({g.k}), cin a multiple of "
                            f"{board.axi_bytes} (pad the channels) and the dilation 1 or 2")


# ----------------------------------------------------------------------------- the search

@dataclass(frozen=True)
class Plan:
    """The planner's choice for one GEMM: the call to make and its modelled schedule."""

    call: GemmCall
    report: CycleReport


def _full_grid(dim: int, tmax: int, beat: int) -> np.ndarray:
    """Every legal tile of one dimension: multiples of the beat below it, and the whole of it."""
    vals = [t for t in range(beat, min(dim, tmax + 1), beat) if t < dim]
    if dim <= tmax:
        vals.append(dim)
    return np.array(sorted(set(vals)), dtype=np.int64)


def _short_grid(dim: int, tmax: int, beat: int, grains: tuple[int, ...], splits: int = 16) -> np.ndarray:
    """Tiles worth trying along a long dimension: balanced splits into 1..``splits`` blocks
    (rounded up to the beat and to each grain), powers of two of the beat, the largest."""
    if min(dim, tmax) // beat <= 24:
        return _full_grid(dim, tmax, beat)
    out = {dim} if dim <= tmax else set()
    for nb in range(1, splits + 1):
        t = cdiv(cdiv(dim, nb), beat) * beat
        if t > tmax or (t >= dim and nb > 1):
            continue
        if t < dim:
            out.add(t)
        for g in grains:
            t2 = cdiv(t, g) * g
            if t2 <= tmax and t2 < dim:
                out.add(t2)
    p = beat
    while p <= tmax:
        if p < dim:
            out.add(p)
        p *= 2
    if dim > tmax:
        out.add(tmax // beat * beat)
    return np.array(sorted(x for x in out if x <= tmax), dtype=np.int64)


def _k_caps(board: BoardConfig, call: GemmCall, dataflow: str, split: int, tms, tns) -> set[int]:
    """The largest legal K chunk for each tile pair, and the balanced split of K into it."""
    r, c, beat = board.array_rows, board.array_cols, board.axi_bytes
    lr, lc, sr, sc = array_shape(board, split)
    out: set[int] = set()
    for tm in tms:
        for tn in tns:
            mt, nt = min(int(tm), call.m), min(int(tn), call.n)
            wb, eb = (c if split <= 0 else sc), (2 ** -split if split < 0 else 1)
            nfb = cdiv(cdiv(nt, wb), eb)
            caps = [board.b_depth // nfb] + ([board.b_side_depth // nfb] if split < 0 else [])
            if dataflow == "os":
                nfa = cdiv(cdiv(mt, r if split >= 0 else sr), 2 ** split if split > 0 else 1)
                caps += [board.a_depth // nfa] + ([board.a_side_depth // nfa] if split > 0 else [])
            else:
                caps.append((board.a_depth // mt) * sr)
            cap = min(min(caps), board.tile_k_max) // beat * beat
            if cap < beat:
                continue
            if cap >= call.k:
                out.add(call.k)
                continue
            out.add(cap)
            out.add(cdiv(cdiv(call.k, cdiv(call.k, cap)), beat) * beat)
    return out


def _grids(board: BoardConfig, call: GemmCall, dataflow: str, split: int, exhaustive: bool):
    beat = board.axi_bytes
    if exhaustive:
        return (_full_grid(call.m, board.tile_m_max, beat), _full_grid(call.n, board.tile_n_max, beat),
                _full_grid(call.k, board.tile_k_max, beat))
    lr, lc, sr, _ = array_shape(board, split)
    gm = _short_grid(call.m, board.tile_m_max, beat, (lr, 64) if dataflow == "os" else (64,))
    gn = _short_grid(call.n, board.tile_n_max, beat, (lc, 64))
    gk = set(_short_grid(call.k, board.tile_k_max, beat, (sr, 64) if dataflow == "ws" else (64, 128)).tolist())
    gk |= _k_caps(board, call, dataflow, split, gm, gn)
    return gm, gn, np.array(sorted(gk), dtype=np.int64)


def _lower_bounds(board: BoardConfig, call: GemmCall, tm, tn, tk) -> np.ndarray:
    """call_overhead + max over the processes of (its total + the others' shortest step), a
    lower bound of :func:`model_cycles` for every candidate (vectorized: the twelve step kinds
    -- full or edge block row and column, first, middle and last K chunk -- and the four block
    kinds of every candidate in one evaluation each)."""
    s = config().schedule
    m, n, k = call.m, call.n, call.k
    nbm, nbn, nkc = _ceil(m, tm), _ceil(n, tn), _ceil(k, tk)
    medge, nedge, kedge = m - (nbm - 1) * tm, n - (nbn - 1) * tn, k - (nkc - 1) * tk
    big = np.iinfo(np.int64).max // 8
    single = nkc == 1
    one = np.ones_like(tm)
    yes, no = np.ones(tm.shape, dtype=bool), np.zeros(tm.shape, dtype=bool)
    blocks = [(mt, nt, cm * cn * call.batch) for mt, cm in ((tm, nbm - 1), (medge, one))
              for nt, cn in ((tn, nbn - 1), (nedge, one))]
    chunks = ((np.where(single, k, tk), one, yes, single), (tk, np.maximum(nkc - 2, 0), no, no),
              (kedge, np.where(single, 0, 1), no, yes))
    steps = [(mt, nt, kt, cb * cnt, first, last) for mt, nt, cb in blocks for kt, cnt, first, last in chunks]
    smt, snt, skt, sw, sfirst, slast = (np.stack(x) for x in zip(*steps))
    # conv pieces at their minimum (k0 mod cin = 0): still a lower bound
    lc, pc = step_costs(board, call, smt, snt, skt, np.zeros_like(skt), sfirst, slast)
    live = sw > 0
    sum_l, sum_p = (sw * lc).sum(axis=0), (sw * pc).sum(axis=0)
    min_l, min_p = np.where(live, lc, big).min(axis=0), np.where(live, pc, big).min(axis=0)
    bmt, bnt, bw = (np.stack(x) for x in zip(*blocks))
    sb = block_costs(board, call, bmt, bnt)
    sum_s, min_s = (bw * sb).sum(axis=0), np.where(bw > 0, sb, big).min(axis=0)
    lb = np.maximum(np.maximum(sum_l + min_p + min_s, min_l + sum_p + min_s), min_l + min_p + sum_s)
    return s.call_overhead + lb


def _search(board: BoardConfig, call: GemmCall, modes: list[tuple[str, int]], exhaustive: bool) -> Plan | None:
    rows = []
    for mi, (df, sp) in enumerate(modes):
        gm, gn, gk = _grids(board, call, df, sp, exhaustive)
        if not (len(gm) and len(gn) and len(gk)):
            continue
        tm, tn, tk = (x.ravel() for x in np.meshgrid(gm, gn, gk, indexing="ij"))
        ok = fits(board, df, sp, np.minimum(tm, call.m), np.minimum(tn, call.n), np.minimum(tk, call.k))
        tm, tn, tk = tm[ok], tn[ok], tk[ok]
        if not len(tm):
            continue
        lb = _lower_bounds(board, call.updated(dataflow=df, split=sp), tm, tn, tk)
        rows.append(np.stack([lb, np.full_like(tm, mi), tm, tn, tk], axis=1))
    if not rows:
        return None
    cands = np.concatenate(rows)
    cands = cands[np.lexsort((cands[:, 4], cands[:, 3], cands[:, 2], cands[:, 1], cands[:, 0]))]
    best: tuple[int, GemmCall] | None = None
    for lb, mi, tm, tn, tk in cands.tolist():
        if best is not None and lb >= best[0]:
            break
        df, sp = modes[mi]
        cand = call.with_tiles(tm, tn, tk, df, sp)
        cyc = _cycles(board, cand)
        if best is None or cyc < best[0]:
            best = (cyc, cand)
    assert best is not None
    cand = best[1] if exhaustive else _refine(board, best[0], best[1])
    return Plan(cand, model_cycles(board, cand))


def _refine(board: BoardConfig, cycles: int, call: GemmCall) -> GemmCall:
    """Local search: the neighbouring tiles (up to 3 beats either way in each dimension) of the
    best candidate, in its mode, until none is better (pruned by the lower bound)."""
    beat = board.axi_bytes
    seen: set[tuple[int, int, int]] = set()
    improved = True
    while improved:
        improved = False
        base = call
        steps = np.arange(-3, 4) * beat
        tm, tn, tk = (x.ravel() for x in np.meshgrid(np.minimum(base.tile_m + steps, base.m),
                                                      np.minimum(base.tile_n + steps, base.n),
                                                      np.minimum(base.tile_k + steps, base.k), indexing="ij"))
        keep = [i for i, t in enumerate(zip(tm.tolist(), tn.tolist(), tk.tolist()))
                if t not in seen and _tile_ok(t[0], base.m, board.tile_m_max, beat)
                and _tile_ok(t[1], base.n, board.tile_n_max, beat) and _tile_ok(t[2], base.k, board.tile_k_max, beat)]
        seen.update(zip(tm.tolist(), tn.tolist(), tk.tolist()))
        if not keep:
            break
        tm, tn, tk = tm[keep], tn[keep], tk[keep]
        ok = fits(board, base.dataflow, base.split, tm, tn, tk)
        tm, tn, tk = tm[ok], tn[ok], tk[ok]
        if not len(tm):
            break
        lb = _lower_bounds(board, base, tm, tn, tk)
        for i in np.argsort(lb, kind="stable"):
            if lb[i] >= cycles:
                break
            cand = base.with_tiles(int(tm[i]), int(tn[i]), int(tk[i]), base.dataflow, base.split)
            cyc = _cycles(board, cand)
            if cyc < cycles:
                cycles, call, improved = cyc, cand, True
    return call


def _modes(board: BoardConfig, dataflow: str, split: int | None) -> list[tuple[str, int]]:
    modes = valid_modes(board)
    if dataflow in ("ws", "os"):
        modes = [md for md in modes if md[0] == dataflow]
    elif dataflow == "partitioned":
        modes = [md for md in modes if md[1] != 0]
    elif dataflow != "auto":
        raise PlanError(f"unknown dataflow {dataflow!r}: use auto, ws, os or partitioned")
    if split is not None:
        offered = sorted({md[1] for md in modes})  # the splits of this dataflow on this board
        modes = [md for md in modes if md[1] == split]
        if not modes:
            raise PlanError(f"split {split} is not available for dataflow {dataflow!r} on {board.name}: "
                            f"use one of {offered}")
    return modes


def plan(board: BoardConfig, call: GemmCall, dataflow: str = "auto", split: int | None = None,
         k_bucket: int | None = None) -> Plan:
    """Choose tiles, dataflow and partition for ``call`` by the cycle model.

    ``dataflow`` is ``"auto"``, ``"ws"``, ``"os"`` or ``"partitioned"`` (the best split
    other than 0, either dataflow); ``split`` forces a partition exponent. Tile sizes and
    mode fields already in ``call`` are replaced. The epilogue's scale and seed do not change
    the schedule: calls that differ only in them share one cached search (delayed scaling
    changes the scale every step).

    ``k_bucket`` (a GEMM, not a convolution): for GEMMs whose K changes from call to call (the
    token groups of the LoRA weight gradients), one search per bucket of K instead of one per K:
    the mode and tiles of the plan of K rounded up to a multiple of ``k_bucket``, the K tile
    clipped to K (legal: the buffers' demand only shrinks with K); the report is the exact model
    of the call. See :func:`bucket_plan`.

    The plan of a whole call (scale and seed included) is cached too: a training step repeats
    the same few hundred calls, which then cost one lookup.
    """
    return _plan_call(board, call, dataflow, split, k_bucket)


@lru_cache(maxsize=1 << 12)
def _plan_call(board: BoardConfig, call: GemmCall, dataflow: str, split: int | None, k_bucket: int | None) -> Plan:
    """:func:`plan` of one call (its errors are raised each time: exceptions are not cached)."""
    check_limits(board, call)
    if k_bucket and call.conv is None:
        return bucket_plan(board, call, dataflow, split, k_bucket)
    key = call.schedule_key()
    found = _plan_cached(board, key, dataflow, split, False)
    if key is call:
        return found
    return Plan(found.call.updated(mult=call.mult, shift=call.shift, seed=call.seed), found.report)


def exhaustive_plan(board: BoardConfig, call: GemmCall, dataflow: str = "auto", split: int | None = None) -> Plan:
    """The optimum of the cycle model over every legal tile and mode (branch and bound; slow:
    for tests and benchmarks)."""
    check_limits(board, call)
    return _plan_cached(board, call, dataflow, split, True)


@lru_cache(maxsize=4096)
def _plan_cached(board: BoardConfig, call: GemmCall, dataflow: str, split: int | None, exhaustive: bool) -> Plan:
    base = call.with_tiles(call.m, call.n, call.k, "os", 0)
    found = _search(board, base, _modes(board, dataflow, split), exhaustive)
    if found is None:
        raise PlanError(f"no tiling of the {call.m}x{call.k}x{call.n} GEMM fits the {board.name} buffers in "
                        f"dataflow {dataflow!r}" + (f", split {split}" if split is not None else ""))
    return found


def k_bucket_top(board: BoardConfig, k: int, per_octave: int) -> int:
    """The top of ``k``'s bucket when each octave of K is cut into ``per_octave`` equal buckets
    (at least a beat wide): K rounded up to a multiple of max(beat, 2**floor(log2 k) / per_octave)."""
    width = max(board.axi_bytes, (1 << (k.bit_length() - 1)) // per_octave)
    return cdiv(k, width) * width


def bucket_plan(board: BoardConfig, call: GemmCall, dataflow: str, split: int | None, k_bucket: int) -> Plan:
    """The plan of ``call`` (a GEMM) from the cached search of its K bucket (see :func:`plan`)."""
    if k_bucket < 1:
        raise PlanError(f"k_bucket must be a positive number of buckets per octave of K, not {k_bucket}")
    key = call.schedule_key()
    kb = min(k_bucket_top(board, call.k, k_bucket), board.max_k)
    # the leading dimensions and batch strides do not enter the search: left out, so that every K
    # of the bucket shares it
    bucket = key.updated(k=kb, lda=0, ldb=0, ldc=0, stride_a=0, stride_b=0, stride_c=0)
    found = _plan_cached(board, bucket, dataflow, split, False).call
    tiles = _fit_k_tile(board, key, found)
    report = cached_model(board, tiles)
    return Plan(tiles if key is call else tiles.updated(mult=call.mult, shift=call.shift, seed=call.seed), report)


@lru_cache(maxsize=1 << 14)
def _fit_k_tile(board: BoardConfig, call: GemmCall, found: GemmCall) -> GemmCall:
    """``call`` in the mode and M/N tiles of ``found`` (the plan of its K bucket), with the best K
    tile by the exact model among: the bucket's K tile clipped to K, K cut into as many balanced
    chunks, and the whole K when the buffers hold it."""
    beat, kt = board.axi_bytes, found.tile_k
    chunks = cdiv(call.k, kt)
    cands = [min(kt, call.k), min(cdiv(cdiv(call.k, chunks), beat) * beat, call.k)]
    if call.k <= board.tile_k_max and fits(board, found.dataflow, found.split, min(found.tile_m, call.m),
                                           min(found.tile_n, call.n), call.k):
        cands.append(call.k)
    best = None
    for t in dict.fromkeys(cands):
        cand = call.with_tiles(found.tile_m, found.tile_n, t, found.dataflow, found.split)
        cyc = cached_model(board, cand).cycles  # the chosen one's report is then cached for the plan
        if best is None or cyc < best[0]:
            best = (cyc, cand)
    return best[1]


@lru_cache(maxsize=1 << 14)
def cached_model(board: BoardConfig, call: GemmCall) -> CycleReport:
    """:func:`model_cycles`, cached per call (pass :meth:`GemmCall.schedule_key`): shared by the
    planner's K-bucket plans and the emulation engine's ``cycles_model`` output."""
    return model_cycles(board, call)
