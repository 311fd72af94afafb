"""The contract's arithmetic of the PE array (design contract v2, section 1), as the RTL bench uses it.

Geometry of the partition modes (:func:`geometry`), the folds of a step in order and their
lengths (:func:`step_folds`, :func:`fold_cycles`, :func:`model_step`), the edge values the
loader feeds each cycle (:func:`os_fold_edges`, :func:`ws_load_edges`, :func:`ws_stream_edges`)
and where each tap value belongs in the output tile (:func:`tap_outputs`). The cocotb bench
drives the RTL array with these functions; numpy only.

The sub-array geometry, the fold length and the step's array cycles are not restated here: they
are the planner's (:func:`lora_qta.runtime.planner.split_geometry`, ``fold_cycles``,
``array_step_cycles``), the same formulas the HLS kernel's ``cycles_model`` is tested against,
so the Verilator cycle checks hold the RTL array to the one cycle model of the package.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import RtlInputError
from ..hw.config import config
from ..runtime.planner import array_step_cycles, fold_cycles, split_geometry

# The array's phase output (hls/rtl/qta_array_ctrl.v).
PHASE_IDLE, PHASE_FOLD, PHASE_LOAD, PHASE_DRAIN = 0, 1, 2, 3

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
                raise RtlInputError(f"array sides and min_sub must be powers of two: {self._sides}")
        if self.rows < self.min_sub or self.cols < self.min_sub or self.cols < 2:
            raise RtlInputError(f"array sides must be >= min_sub (and cols >= 2): {self._sides}")

    @property
    def _sides(self) -> str:
        return f"rows {self.rows}, cols {self.cols}, min_sub {self.min_sub}"

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
    cfg = config()
    b = cfg.board(board)
    dim = max(b.tile_m_max, b.tile_n_max, b.tile_k_max).bit_length()   # as QTA_DIM_BITS
    return ArrayShape(b.array_rows, b.array_cols, cfg.schedule.min_subarray, dim, b.name)


def geometry(shape: ArrayShape, split: int) -> tuple[int, int, int, int]:
    """(LR, LC, SR, SC): logical array and sub-array sides for partition exponent ``split``."""
    if split not in shape.splits("os"):
        raise RtlInputError(f"split {split} is not legal on {shape.label}: {shape.splits('os')}")
    return split_geometry(shape.rows, shape.cols, split)


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
    lr, lc, sr, sc = geometry(shape, split)
    folds = step_folds(shape, dataflow, split, mt, nt, kt)
    per = [int(fold_cycles(dataflow, sr, sc, kt, mt))] * len(folds)
    return per, int(array_step_cycles(dataflow, lr, lc, sr, sc, mt, nt, kt))


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
