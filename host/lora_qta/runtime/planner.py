"""GEMM planner: the kernel's cycle model, a roofline, tiling and the choice of dataflow.

The cycle model restates, in closed form, the schedule the kernel counts while it runs
(``hls/src/qta_gemm.cpp``; README "Cycle model"). Tests require the two to agree exactly
for every shape, so the planner's predictions are the C-simulated kernel's cycle counts.

Steps t = 0..T-1 are the (block, K-chunk) pairs in the kernel's order; with per-step stage
latencies F (fill), P (PE array) and S (store, only on a block's last chunk)::

    cycles = call_overhead + sum_{i=0}^{T+1} ( max(F[i], P[i-1], S[i-2]) + step_overhead )
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from ..errors import PlanError
from ..hw.config import BoardConfig, config
from ..hw.call import SCALE_MODES, GemmCall


def _ceil(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    return -(-np.asarray(a) // np.asarray(b))


def array_shape(board: BoardConfig, split: int) -> tuple[int, int, int, int]:
    """(LR, LC, SR, SC): logical array sides and physical sub-array sides for ``split``."""
    r, c = board.array_rows, board.array_cols
    if split >= 0:
        return r << split, c >> split, r, c >> split
    return r >> -split, c << -split, r >> -split, c


@dataclass(frozen=True)
class CycleReport:
    """The modelled schedule of one call (all figures are model outputs, in cycles/bytes)."""

    cycles: int
    fill_cycles: int      # sum of the fill stage over steps
    compute_cycles: int   # sum of the PE-array stage over steps
    store_cycles: int     # sum of the store stage over blocks
    steps: int
    bytes_a: int
    bytes_b: int
    bytes_c: int          # written, plus read when accumulating
    bytes_scales: int
    macs: int
    pes: int
    axi_bytes: int

    @property
    def bytes_moved(self) -> int:
        """All DDR traffic of the call."""
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
        """Roofline memory bound: the busiest AXI port streaming one beat per cycle."""
        ports = (self.bytes_a, self.bytes_b, self.bytes_c + self.bytes_scales)
        return max(ports) / self.axi_bytes

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
    and whether it is its block's last chunk."""
    nbm, nbn, nkc = (int(_ceil(call.m, call.tile_m)), int(_ceil(call.n, call.tile_n)),
                     int(_ceil(call.k, call.tile_k)))
    t = np.arange(nbm * nbn * nkc, dtype=np.int64)
    kc, blk = t % nkc, t // nkc
    bm, bn = blk // nbn, blk % nbn
    mt = np.minimum(call.tile_m, call.m - bm * call.tile_m)
    nt = np.minimum(call.tile_n, call.n - bn * call.tile_n)
    kt = np.minimum(call.tile_k, call.k - kc * call.tile_k)
    return mt, nt, kt, kc == nkc - 1


def model_cycles(board: BoardConfig, call: GemmCall) -> CycleReport:
    """The kernel's cycle count and traffic for ``call`` on ``board`` (exact, vectorized)."""
    s = config().schedule
    bpb = board.axi_bytes
    mt, nt, kt, last = step_tiles(call)

    # fill: stored rows x beats per row on each port, in parallel
    rows_a, len_a = (kt, mt) if call.trans_a else (mt, kt)
    rows_b, len_b = (nt, kt) if call.trans_b else (kt, nt)
    fill = s.ddr_latency + np.maximum(rows_a * _ceil(len_a, bpb), rows_b * _ceil(len_b, bpb))

    # compute: folds x cycles per fold on the logical array
    lr, lc, sr, sc = array_shape(board, call.split)
    skew = sr + sc - 2 + s.pipeline_depth
    if call.dataflow == "os":
        comp = _ceil(mt, lr) * _ceil(nt, lc) * (kt + skew)
    else:
        comp = _ceil(kt, lr) * _ceil(nt, lc) * (sr + mt + skew)

    # store: only at a block's last chunk
    eb = call.out_bytes
    per_row = np.maximum(_ceil(nt * eb, bpb), _ceil(nt, board.epilogue_lanes))
    store = s.ddr_latency + mt * per_row
    n_scales = 0
    if call.out_int8 and call.scale_mode != "tensor":
        cnt = mt if call.scale_mode == "row" else nt
        store = store + s.ddr_latency + _ceil(2 * cnt * 4, bpb)
        n_scales = int((cnt * last).sum())
    if call.accumulate:
        store = store + s.ddr_latency
    store = np.where(last, store, 0)

    steps = len(mt)
    zero2 = np.zeros(2, dtype=np.int64)
    f = np.concatenate([fill, zero2])
    p = np.concatenate([[0], comp, [0]])
    st = np.concatenate([zero2, store])
    total = s.call_overhead + int(np.maximum(np.maximum(f, p), st).sum()) + (steps + 2) * s.step_overhead

    out_bytes = int((mt * nt * last).sum()) * eb
    return CycleReport(
        cycles=total,
        fill_cycles=int(fill.sum()), compute_cycles=int(comp.sum()), store_cycles=int(store.sum()),
        steps=steps,
        bytes_a=int((mt * kt).sum()), bytes_b=int((kt * nt).sum()),
        bytes_c=out_bytes * (2 if call.accumulate else 1), bytes_scales=8 * n_scales,
        macs=call.macs, pes=board.pes, axi_bytes=bpb,
    )


def _tile_candidates(dim: int, limit: int, grain: int) -> set[int]:
    """Block sizes worth trying along one dimension: the fewest blocks, balanced and
    rounded up to the logical array's grain, and the largest block."""
    out = {min(dim, limit)}
    for nb in (int(_ceil(dim, limit)), int(_ceil(dim, limit)) + 1):
        size = int(_ceil(_ceil(dim, nb), grain)) * grain
        if size <= limit:
            out.add(size)
        out.add(int(_ceil(dim, nb)))
    return {x for x in out if 1 <= x <= limit}


def valid_modes(board: BoardConfig) -> list[tuple[str, int]]:
    """Every (dataflow, split) the kernel accepts on ``board``."""
    return [("os", s) for s in board.splits] + [("ws", s) for s in board.splits if s <= 0]


@dataclass(frozen=True)
class Plan:
    """The planner's choice for one GEMM: the call to make and its modelled schedule."""

    call: GemmCall
    report: CycleReport


def plan(board: BoardConfig, call: GemmCall, dataflow: str = "auto", split: int | None = None) -> Plan:
    """Choose tiles, dataflow and partition for ``call`` by the cycle model.

    ``dataflow`` is ``"auto"``, ``"ws"``, ``"os"`` or ``"partitioned"`` (the best split
    other than 0, either dataflow); ``split`` forces a partition exponent. Tile sizes and
    mode fields already in ``call`` are replaced.
    """
    check_limits(board, call)
    return _plan_cached(board, call, dataflow, split)


@lru_cache(maxsize=4096)
def _plan_cached(board: BoardConfig, call: GemmCall, dataflow: str, split: int | None) -> Plan:
    modes = valid_modes(board)
    if dataflow in ("ws", "os"):
        modes = [md for md in modes if md[0] == dataflow]
    elif dataflow == "partitioned":
        modes = [md for md in modes if md[1] != 0]
    elif dataflow != "auto":
        raise PlanError(f"unknown dataflow {dataflow!r}: use auto, ws, os or partitioned")
    if split is not None:
        modes = [md for md in modes if md[1] == split]
        if not modes:
            raise PlanError(f"split {split} is not available for dataflow {dataflow!r} on {board.name} "
                            f"(splits {list(board.splits)}; weight-stationary needs split <= 0)")
    best: Plan | None = None
    for df, sp in modes:
        lr, lc, _, _ = array_shape(board, sp)
        gm, gk = (lr, 1) if df == "os" else (1, lr)
        for tm in _tile_candidates(call.m, board.tile_m_max, gm):
            for tn in _tile_candidates(call.n, board.tile_n_max, lc):
                for tk in _tile_candidates(call.k, board.tile_k_max, gk):
                    cand = replace(call, tile_m=tm, tile_n=tn, tile_k=tk, dataflow=df, split=sp)
                    rep = model_cycles(board, cand)
                    key = (rep.cycles, rep.bytes_moved)
                    if best is None or key < (best.report.cycles, best.report.bytes_moved):
                        best = Plan(cand, rep)
    assert best is not None
    return best


def check_limits(board: BoardConfig, call: GemmCall) -> None:
    """Raise :class:`PlanError` naming the dimension that exceeds the configuration."""
    for name, val, lim in (("M", call.m, board.max_m), ("N", call.n, board.max_n), ("K", call.k, board.max_k)):
        if not 1 <= val <= lim:
            raise PlanError(f"{name} = {val} is outside 1..{lim}, the limit of the {board.name} configuration")
    if call.out_int8 and not 0 <= call.shift <= 62:
        raise PlanError(f"shift = {call.shift} is outside 0..62")
    if not -(2**31) <= call.mult < 2**31:
        raise PlanError(f"multiplier {call.mult} does not fit INT32")


def kernel_accepts(board: BoardConfig, call: GemmCall) -> bool:
    """Whether the kernel's argument check passes (else it sets status ``bad_args``)."""
    return (
        1 <= call.m <= board.max_m and 1 <= call.n <= board.max_n and 1 <= call.k <= board.max_k
        and call.lda >= (call.m if call.trans_a else call.k)
        and call.ldb >= (call.k if call.trans_b else call.n)
        and call.ldc >= call.n
        and 1 <= call.tile_m <= board.tile_m_max and 1 <= call.tile_n <= board.tile_n_max
        and 1 <= call.tile_k <= board.tile_k_max
        and call.split in board.splits and (call.dataflow == "os" or call.split <= 0)
        and call.scale_mode in SCALE_MODES and 0 <= call.shift <= 62
    )
