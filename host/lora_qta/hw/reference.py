"""A small numpy reference of what the kernel computes, written for reading, not speed.

It knows nothing of tiles, dataflows, ports or cycles: the kernel's result must not depend on
them. Tests compare the C-simulated kernel and the fast engine with it bit for bit:
``C[b] = epilogue(op(A[b]) . op(B[b]) [+ C[b]])`` for every batch item ``b``, where ``op(A)`` is A,
A^T or the im2col matrix of an NHWC feature map (:func:`im2col`), plus the status, ``sat_count``
and ``amax`` outputs. hls/README.md defines the contract this restates. Standard library and
numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .call import ConvGeometry

MASK32 = np.uint64(0xFFFFFFFF)
SHIFT_MAX = 62
AMAX_CAP = 2**31 - 1


def mix32(x: np.ndarray | int) -> np.ndarray:
    """The kernel's rounding hash on uint32 values (lowbias32 finaliser)."""
    x = np.asarray(x, dtype=np.uint64) & MASK32
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x7FEB352D)) & MASK32
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x846CA68B)) & MASK32
    x ^= x >> np.uint64(16)
    return x


def rounding_bits(seed: int, rows: np.ndarray, cols: np.ndarray, n: int, item: int = 0, m: int = 0) -> np.ndarray:
    """The 32 random bits the kernel draws for output (row, col) of batch item ``item`` of an
    m x n GEMM: mix32(mix32(seed) + (item * m + row) * n + col), all modulo 2^32."""
    base = np.uint64(int(mix32(seed & 0xFFFFFFFF)))
    r = rows.astype(np.uint64) + np.uint64(item * m)
    idx = (r * np.uint64(n) + cols.astype(np.uint64)) & MASK32
    return mix32((idx + base) & MASK32)


def im2col(x: np.ndarray, geo: ConvGeometry, m: int | None = None) -> np.ndarray:
    """The explicit im2col matrix (rows: output pixels in (image, ho, wo) order; columns:
    (ky, kx, ci)) of an NHWC INT8 map ``x`` (images x h x w x channels, channels >= cin),
    first ``m`` rows (default all). Padding and the holes of a dilated input read as 0."""
    imgs = x.shape[0]
    out = np.zeros((imgs, geo.ho, geo.wo, geo.kh, geo.kw, geo.cin), dtype=np.int8)
    for ky in range(geo.kh):
        for kx in range(geo.kw):
            for ho in range(geo.ho):
                hi = ho * geo.stride - geo.pad + ky
                if hi < 0 or hi > (geo.h - 1) * geo.dil or hi % geo.dil:
                    continue
                for wo in range(geo.wo):
                    wi = wo * geo.stride - geo.pad + kx
                    if wi < 0 or wi > (geo.w - 1) * geo.dil or wi % geo.dil:
                        continue
                    out[:, ho, wo, ky, kx, :] = x[:, hi // geo.dil, wi // geo.dil, :geo.cin]
    rows = out.reshape(imgs * geo.ho * geo.wo, geo.k)
    return rows if m is None else rows[:m]


def effective_shift(shift: np.ndarray) -> np.ndarray:
    """A per-row/column pair's shift as the kernel uses it: its low byte, at most 62."""
    return np.minimum(np.asarray(shift, dtype=np.int64) & 0xFF, SHIFT_MAX)


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


@dataclass
class Result:
    """The reference's output of one call: C per batch item and the status outputs."""

    c: np.ndarray          # batch x m x n (int32 or int8)
    saturated: bool
    sat_count: int
    amax: int


def reference_call(a, b, *, m: int, n: int, k: int, trans_a: bool = False, trans_b: bool = False,
                   out_int8: bool = False, accumulate: bool = False, c_in=None, scale_mode: str = "tensor",
                   mult: int = 1, shift: int = 0, scales: np.ndarray | None = None, stochastic: bool = False,
                   seed: int = 0, conv: ConvGeometry | None = None) -> Result:
    """The kernel's semantics for a batch: ``a[i]``, ``b[i]`` are item i's operands as stored
    (2-D; for ``conv`` ``a[i]`` is the NHWC map), ``c_in[i]`` its old C (accumulate). ``scales``
    is an (m or n) x 2 array of INT32 (multiplier, shift) pairs for the row and column modes."""
    outs, nsat, amax = [], 0, 0
    for item in range(len(a)):
        if conv is not None:
            opa = im2col(np.asarray(a[item]), conv, m).astype(np.int64)
        else:
            opa = (np.asarray(a[item]).T if trans_a else np.asarray(a[item])).astype(np.int64)
        opb = (np.asarray(b[item]).T if trans_b else np.asarray(b[item])).astype(np.int64)
        acc = opa[:m, :k] @ opb[:k, :n]
        old = np.asarray(c_in[item]).astype(np.int64) if accumulate else 0
        if not out_int8:
            pre = acc + old
            out = np.clip(pre, -(2**31), 2**31 - 1).astype(np.int32)
        else:
            if scale_mode == "tensor":
                mul = np.full((m, n), mult, dtype=np.int64)
                sh = np.full((m, n), shift, dtype=np.int64)
            elif scale_mode == "row":
                mul = np.repeat(scales[:m, 0:1].astype(np.int64), n, axis=1)
                sh = np.repeat(effective_shift(scales[:m, 1:2]), n, axis=1)
            else:
                mul = np.repeat(scales[:n, 0][None, :].astype(np.int64), m, axis=0)
                sh = np.repeat(effective_shift(scales[:n, 1])[None, :], m, axis=0)
            rows, cols = np.meshgrid(np.arange(m), np.arange(n), indexing="ij")
            q = requantize(acc, mul, sh, stochastic, rounding_bits(seed, rows, cols, n, item, m))
            pre = q + (old.astype(object) if accumulate else 0)
            out = np.clip(pre, -128, 127).astype(np.int8)
        pre = np.asarray(pre, dtype=object)
        nsat += int((out.astype(object) != pre).sum())
        if pre.size:
            amax = max(amax, min(int(max(abs(int(v)) for v in pre.ravel())), AMAX_CAP))
        outs.append(out)
    return Result(np.stack(outs), nsat > 0, min(nsat, 2**32 - 1), amax)


def reference_gemm(a: np.ndarray, b: np.ndarray, *, trans_a: bool = False, trans_b: bool = False,
                   out_int8: bool = False, accumulate: bool = False, c_in: np.ndarray | None = None,
                   scale_mode: str = "tensor", mult: int = 1, shift: int = 0, scales: np.ndarray | None = None,
                   stochastic: bool = False, seed: int = 0) -> tuple[np.ndarray, bool]:
    """One 2-D GEMM: (C, saturated) (:func:`reference_call` with a batch of one)."""
    m, k = (a.shape[1], a.shape[0]) if trans_a else a.shape
    n = b.shape[0] if trans_b else b.shape[1]
    r = reference_call([a], [b], m=m, n=n, k=k, trans_a=trans_a, trans_b=trans_b, out_int8=out_int8,
                       accumulate=accumulate, c_in=None if c_in is None else [c_in], scale_mode=scale_mode,
                       mult=mult, shift=shift, scales=scales, stochastic=stochastic, seed=seed)
    return r.c[0], r.saturated
