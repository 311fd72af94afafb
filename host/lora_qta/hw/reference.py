"""A small numpy reference of what the kernel computes, written for reading, not speed.

It knows nothing of tiles, dataflows or cycles: the kernel's result must not depend on
them. Tests compare the C-simulated kernel and the fast engine with it bit for bit.
"""

from __future__ import annotations

import numpy as np

MASK32 = np.uint64(0xFFFFFFFF)


def mix32(x: np.ndarray | int) -> np.ndarray:
    """The kernel's rounding hash on uint32 values (lowbias32 finaliser)."""
    x = np.asarray(x, dtype=np.uint64) & MASK32
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x7FEB352D)) & MASK32
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x846CA68B)) & MASK32
    x ^= x >> np.uint64(16)
    return x


def rounding_bits(seed: int, rows: np.ndarray, cols: np.ndarray, n: int) -> np.ndarray:
    """The 32 random bits the kernel draws for output (row, col) of an n-column GEMM."""
    base = np.uint64(int(mix32(seed & 0xFFFFFFFF)))
    idx = (rows.astype(np.uint64) * np.uint64(n) + cols.astype(np.uint64)) & MASK32
    return mix32((idx + base) & MASK32)


def requantize(acc: np.ndarray, mult: np.ndarray, shift: np.ndarray, stochastic: bool,
               bits: np.ndarray) -> np.ndarray:
    """(acc * mult) / 2**shift rounded half-to-even, or stochastically with ``bits``.

    Uses Python integers element by element (object arrays), so no width can overflow.
    """
    out = np.empty(acc.shape, dtype=object)
    for idx in np.ndindex(acc.shape):
        p = int(acc[idx]) * int(mult[idx])
        sh = int(shift[idx])
        if sh == 0:
            out[idx] = p
        elif stochastic:
            u = int(bits[idx]) >> (32 - sh) if sh <= 32 else int(bits[idx]) << (sh - 32)
            out[idx] = (p + u) // (1 << sh)
        else:
            q, rem = divmod(p, 1 << sh)
            half = 1 << (sh - 1)
            out[idx] = q + (1 if rem > half or (rem == half and q % 2) else 0)
    return out


def reference_gemm(
    a: np.ndarray,
    b: np.ndarray,
    *,
    trans_a: bool = False,
    trans_b: bool = False,
    out_int8: bool = False,
    accumulate: bool = False,
    c_in: np.ndarray | None = None,
    scale_mode: str = "tensor",
    mult: int = 1,
    shift: int = 0,
    scales: np.ndarray | None = None,
    stochastic: bool = False,
    seed: int = 0,
) -> tuple[np.ndarray, bool]:
    """C = epilogue(op(A) . op(B) [+ C]) as the kernel defines it; returns (C, saturated).

    ``a``/``b`` are INT8 as stored (transposed when ``trans_a``/``trans_b``); ``scales`` is
    an (rows or cols) x 2 array of (multiplier, shift) for the row and column modes.
    """
    opa = (a.T if trans_a else a).astype(np.int64)
    opb = (b.T if trans_b else b).astype(np.int64)
    acc = opa @ opb
    m, n = acc.shape
    if not out_int8:
        total = acc + (c_in.astype(np.int64) if accumulate else 0)
        out = np.clip(total, -(2**31), 2**31 - 1)
        return out.astype(np.int32), bool((out != total).any())
    if scale_mode == "tensor":
        mul = np.full((m, n), mult, dtype=np.int64)
        sh = np.full((m, n), shift, dtype=np.int64)
    elif scale_mode == "row":
        mul = np.repeat(scales[:m, 0:1].astype(np.int64), n, axis=1)
        sh = np.repeat(scales[:m, 1:2].astype(np.int64), n, axis=1)
    else:
        mul = np.repeat(scales[:n, 0][None, :].astype(np.int64), m, axis=0)
        sh = np.repeat(scales[:n, 1][None, :].astype(np.int64), m, axis=0)
    rows, cols = np.meshgrid(np.arange(m), np.arange(n), indexing="ij")
    q = requantize(acc, mul, sh, stochastic, rounding_bits(seed, rows, cols, n))
    if accumulate:
        q = q + c_in.astype(np.int64).astype(object)
    clipped = np.clip(q, -128, 127)
    return clipped.astype(np.int8), bool((clipped != q).any())
