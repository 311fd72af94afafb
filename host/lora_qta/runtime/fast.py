"""The fast emulation engine: the kernel's results computed with vectorized numpy.

Bit-exact with the C-simulated kernel (checked on every test run): the GEMM is an exact
integer product (PyTorch's INT8 x INT8 -> INT32 ``_int_mm``, exact because the configured
K <= 131071 keeps every dot product inside INT32; float64 BLAS where ``_int_mm`` is missing,
exact because every partial sum is an integer below 2**53), the epilogue is the kernel's
integer arithmetic on int64 arrays, and the cycle count is the planner's closed-form model
of the kernel's schedule.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

try:  # PyTorch's exact INT8 GEMM (same thread pool as the training loop)
    import torch

    _int_mm = getattr(torch, "_int_mm", None)
except ImportError:  # pragma: no cover - torch is a dependency of the package
    torch, _int_mm = None, None

from ..hw.config import BoardConfig, config
from ..hw.call import GemmCall
from .planner import kernel_accepts, model_cycles
from ..hw.reference import rounding_bits


def _matrix(mem: np.ndarray, rows: int, cols: int, ld: int, dtype: np.dtype) -> np.ndarray:
    """A (rows x cols) strided view of ``mem`` (bytes from the operand's address)."""
    item = np.dtype(dtype).itemsize
    return np.ndarray((rows, cols), dtype=dtype, buffer=mem, strides=(ld * item, item))


def exact_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """op(A) . op(B) of INT8 matrices, exact (int32 from ``_int_mm``, else int64; the values
    always fit INT32 for K within the configured limit)."""
    if _int_mm is not None:
        ta = torch.from_numpy(np.ascontiguousarray(a))
        tb = torch.from_numpy(np.ascontiguousarray(b))
        return _int_mm(ta, tb).numpy()
    return (a.astype(np.float64) @ b.astype(np.float64)).astype(np.int64)


def requantize(acc: np.ndarray, mult: np.ndarray, shift: np.ndarray, stochastic: bool,
               bits: np.ndarray | None) -> np.ndarray:
    """round((acc * mult) / 2**shift) as the kernel does it, vectorized on int64."""
    p = acc * mult
    sh = np.broadcast_to(shift, p.shape)
    out = p.copy()
    nz = sh > 0
    if stochastic:
        b = bits.astype(np.int64)
        noise = np.where(sh <= 32, b >> np.clip(32 - sh, 0, 32), b << np.clip(sh - 32, 0, 62))
        out[nz] = (p[nz] + noise[nz]) >> sh[nz]
    else:
        q = p >> sh
        rem = p - (q << sh)
        half = np.left_shift(1, np.maximum(sh - 1, 0))
        up = (rem > half) | ((rem == half) & ((q & 1) == 1))
        out[nz] = (q + up)[nz]
    return out


def run(board: BoardConfig, call: GemmCall, a: np.ndarray, b: np.ndarray, c: np.ndarray,
        scales: np.ndarray | None) -> tuple[int, int]:
    """Execute ``call`` on operand memory (uint8 views from each address); (status, cycles)."""
    st = config().status
    if not kernel_accepts(board, call):
        return 1 << st["bad_args"], config().schedule.call_overhead
    ra, ca = call.stored_shape_a()
    rb, cb = call.stored_shape_b()
    opa = _matrix(a, ra, ca, call.lda, np.int8)
    opb = _matrix(b, rb, cb, call.ldb, np.int8)
    opa, opb = (opa.T if call.trans_a else opa), (opb.T if call.trans_b else opb)
    out_dtype = np.int8 if call.out_int8 else np.int32
    cview = _matrix(c, call.m, call.n, call.ldc, out_dtype)
    acc = exact_matmul(opa, opb)
    if not call.out_int8 and not call.accumulate:
        # INT32 output of an exact product that fits INT32: nothing to round, nothing can saturate
        cview[...] = acc
        return 0, _cycles(board, call)
    acc = acc.astype(np.int64)  # the epilogue's arithmetic is 64-bit, as in the kernel
    if not call.out_int8:
        total = acc + cview.astype(np.int64) if call.accumulate else acc
        lo, hi = -(2**31), 2**31 - 1
    else:
        if call.scale_mode == "tensor":
            mult, shift = np.int64(call.mult), np.int64(call.shift)
        else:
            cnt = call.m if call.scale_mode == "row" else call.n
            pairs = np.ndarray((cnt, 2), dtype=np.int32, buffer=scales).astype(np.int64)
            shape = (cnt, 1) if call.scale_mode == "row" else (1, cnt)
            mult, shift = pairs[:, 0].reshape(shape), pairs[:, 1].reshape(shape)
        bits = None
        if call.stochastic:
            rows, cols = np.meshgrid(np.arange(call.m), np.arange(call.n), indexing="ij", sparse=True)
            bits = rounding_bits(call.seed, rows, cols, call.n)
        total = requantize(acc, mult, shift, call.stochastic, bits)
        if call.accumulate:
            total = total + cview.astype(np.int64)
        lo, hi = -128, 127
    clipped = np.clip(total, lo, hi)
    saturated = bool((clipped != total).any())
    cview[...] = clipped.astype(out_dtype)
    status = (1 << st["saturated"]) if saturated else 0
    return status, _cycles(board, call)


@lru_cache(maxsize=8192)
def _cycles(board: BoardConfig, call: GemmCall) -> int:
    """The kernel's cycle count of ``call`` (the planner's model; cached per call)."""
    return model_cycles(board, call).cycles
