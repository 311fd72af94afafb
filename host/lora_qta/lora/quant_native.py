"""The fused host quantizer: :func:`~lora_qta.lora.quant.quantize_along` in C++
(``quant_native.cpp``), compiled with g++ at first use and called through ctypes; and the
dequantization of an INT8 output scaled per row and per channel with its per-channel amax in one
pass (:func:`dequantize_rows_cols`, the ``row8c`` scheme's host step).

The torch code of ``quantize_along`` states the semantics; this is a faster route to the same
bits (tests/lora/test_quant_native.py compares them). It takes a float32 CPU tensor whose
memory is dense (C-contiguous, or a permuted view of a C-contiguous tensor such as an NHWC view
of an NCHW map) and whose dimensions, in memory order and leaving out those of size 1, are
``[reduced]``, ``[kept, reduced]`` (one scale per row), ``[reduced, kept]`` (per column) or
``[kept, reduced, kept]`` (per column of each block): :func:`split` says how, or None for
anything else, which the torch code handles. One C call does the amax and the rounding of a
block of rows while it is in cache (short rows, such as the attention's head dimension, as wide
blocks); a per-column scale is reduced row by row with a running maximum per column. A permuted
view is quantized in its memory order and its INT8 result transposed back in C when the view is
a batch of transposed matrices (an NHWC view), else by torch.

The library is built with ``-O3 -ffp-contract=off`` (no ``-ffast-math``: every operation is exact
IEEE float32) and ``-march=native`` where the compiler has it, so its cache key
(``$LORA_QTA_CACHE/hostquant``) includes the compiler's predefined macros for that target
(its version and the instruction sets). If no compiler is found or the build fails, the torch code
runs, after one warning. ``LORA_QTA_HOST_QUANT=torch`` forces the torch code.
"""

from __future__ import annotations

import ctypes
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ..errors import DivergedError
from ..runtime.cxx import NativeLibrary

ENGINE_ENV = "LORA_QTA_HOST_QUANT"
"""``torch`` forces the torch code of quantize_along; ``native`` (or unset) uses the C++ one."""
SOURCE = "quant_native.cpp"
CXXFLAGS = ("-std=c++14", "-O3", "-ffp-contract=off", "-Wall", "-Werror", "-shared", "-fPIC")


class Split(NamedTuple):
    """How a tensor is quantized in C: its dimensions in memory order (``order``; None when it is
    C-contiguous already) seen as a C-contiguous (b, r, c) block with one scale per (b, r) over c
    (``per_col`` False; b is 1) or per (b, c) over r, and the shape of the scales in memory
    order (size 1 on the reduced dimensions; () for one 0-d scale), and how the INT8 result
    returns to the view's order."""

    order: tuple[int, ...] | None
    b: int
    r: int
    c: int
    per_col: bool
    scale_shape: tuple[int, ...]
    transpose: tuple[int, int, int] | None = None
    """(B, R, C) when the INT8 result in memory order is the view's order transposed as blocks
    (B, R, C) -> (B, C, R), as for an NHWC view of an NCHW map (done in C); else torch permutes."""


def split(xf: torch.Tensor, dims: tuple[int, ...] | None) -> Split | None:
    """The :class:`Split` of a float32 tensor quantized with scales over ``dims`` (None: one
    for the whole tensor), or None when the C code does not handle it (empty, 0-d, not dense,
    a layout of reduced and kept dimensions it has no loop for, dimensions out of range)."""
    nd = xf.ndim
    if xf.dtype != torch.float32 or nd == 0 or xf.numel() == 0 or xf.device.type != "cpu":
        return None
    if nd == 2 and xf.is_contiguous():  # the LoRA runtime's and the Linear layers' calls
        if dims is None:
            return Split(None, 1, 1, xf.numel(), False, ())
        if dims == (1,) or dims == (0,):
            rows, cols = xf.shape
            return Split(None, 1, rows, cols, dims == (0,), (rows, 1) if dims == (1,) else (1, cols))
    if dims is None:
        reduced = set(range(nd))
    else:
        if not all(isinstance(d, int) and -nd <= d < nd for d in dims):
            return None
        reduced = {d % nd for d in dims}
        if len(reduced) != len(dims):
            return None
    order = None
    if not xf.is_contiguous():
        order = tuple(sorted(range(nd), key=lambda d: -xf.stride(d)))
        if not xf.permute(order).is_contiguous():
            return None
    runs: list[list] = []  # [reduced?, elements] of the dimensions of size > 1, in memory order
    for d in order or range(nd):
        n = xf.shape[d]
        if n == 1:
            continue
        if runs and runs[-1][0] == (d in reduced):
            runs[-1][1] *= n
        else:
            runs.append([d in reduced, n])
    kinds, sizes = tuple(k for k, _ in runs), [n for _, n in runs]
    if kinds in ((), (True,)):
        b, r, c, per_col = 1, 1, xf.numel(), False
    elif kinds == (False,):
        b, r, c, per_col = 1, xf.numel(), 1, False
    elif kinds == (False, True):
        b, r, c, per_col = 1, sizes[0], sizes[1], False
    elif kinds == (True, False):
        b, r, c, per_col = 1, sizes[0], sizes[1], True
    elif kinds == (False, True, False):
        b, r, c, per_col = sizes[0], sizes[1], sizes[2], True
    else:
        return None
    scale_shape = () if dims is None else tuple(1 if d in reduced else xf.shape[d] for d in order or range(nd))
    return Split(order, b, r, c, per_col, scale_shape, order and block_transpose(order, xf.shape))


def block_transpose(order: tuple[int, ...], shape: torch.Size) -> tuple[int, int, int] | None:
    """(B, R, C) if dimensions in memory order ``order`` are the view's (0..k-1, j..n-1, k..j-1):
    the view's order is then the memory's as (B, R, C) blocks transposed to (B, C, R)."""
    k = next(i for i, d in enumerate(order) if d != i)
    j, n = order[k], len(order)
    if order != (*range(k), *range(j, n), *range(k, j)):
        return None
    return math.prod(shape[:k]), math.prod(shape[j:]), math.prod(shape[k:j])


def _declare(lib: ctypes.CDLL) -> None:
    p, i64, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
    lib.qta_quant_scales.argtypes = [p, i64, i64, i64, ctypes.c_int, f32, f32, p]
    lib.qta_quant_apply.argtypes = [p, i64, i64, i64, ctypes.c_int, p, p, f32, p]
    lib.qta_quant_nearest.argtypes = [p, i64, i64, i64, ctypes.c_int, f32, f32, p, p]
    lib.qta_quant_scales.restype = lib.qta_quant_nearest.restype = ctypes.c_int
    lib.qta_transpose_i8.argtypes = [p, i64, i64, i64, p]
    lib.qta_quant_apply.restype = lib.qta_transpose_i8.restype = None
    lib.qta_dequant_rows_cols.argtypes = [p, i64, i64, p, i64, p, p, p]
    lib.qta_dequant_rows_cols.restype = None


NATIVE = NativeLibrary(Path(__file__).with_name(SOURCE), CXXFLAGS, "hostquant", "libqta_quant.so",
                       "the host quantizer", ENGINE_ENV, "torch", _declare)
"""The C++ quantizer: ``NATIVE.engine()`` reads ``$LORA_QTA_HOST_QUANT``, ``NATIVE.build()``
compiles it, ``NATIVE.load()`` loads it (None, after one warning, when it cannot be)."""


def plan(xf: torch.Tensor, dims: tuple[int, ...] | None) -> Split | None:
    """The :class:`Split` to quantize ``xf`` with in C, or None: the torch code (forced by
    ``$LORA_QTA_HOST_QUANT``, the library unavailable, or a tensor :func:`split` leaves out)."""
    if NATIVE.engine() == NATIVE.fallback:
        return None
    sp = split(xf, dims)  # before loading: a tensor the C code leaves out needs no compiler
    return sp if sp is not None and NATIVE.load() is not None else None


def diverged(where: str) -> DivergedError:
    """The error of a NaN or Inf met by the quantizer ``where`` names (both engines raise it)."""
    return DivergedError(f"NaN or Inf reached the INT8 quantizer{f' ({where})' if where else ''}: the training "
                         "diverged; lower the learning rate")


def quantize(xf: torch.Tensor, dims: tuple[int, ...] | None, generator: torch.Generator | None, where: str,
             eps: float, qmax: int, out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(C-contiguous INT8 tensor, float32 scales) of ``xf`` with absmax scales over ``dims``, or
    None when the C code does not take it (:func:`plan`). Raises :func:`diverged` if ``xf``
    holds a NaN or an Inf (before ``generator`` is drawn from). Stochastic rounding adds
    ``torch.rand(xf.shape, generator=generator)``, as the torch code does. ``out`` (a
    C-contiguous INT8 tensor of ``xf``'s shape, checked by the caller) receives the INT8 values,
    written in place where ``xf`` is C-contiguous, and is returned."""
    sp = plan(xf, dims)
    if sp is None:
        return None
    lib = NATIVE.lib
    xp = xf if sp.order is None else xf.permute(sp.order)
    # numpy allocates faster than torch.empty (~1 us each); the tensors own the arrays
    q = out if out is not None and sp.order is None else torch.from_numpy(np.empty(xp.shape, dtype=np.int8))
    scale = torch.from_numpy(np.empty(sp.scale_shape, dtype=np.float32))
    args = (xp.data_ptr(), sp.b, sp.r, sp.c, sp.per_col)
    if generator is None:
        if lib.qta_quant_nearest(*args, eps, qmax, scale.data_ptr(), q.data_ptr()):
            raise diverged(where)
    else:
        if lib.qta_quant_scales(*args, eps, qmax, scale.data_ptr()):
            raise diverged(where)
        u = torch.rand(xf.shape, generator=generator, dtype=torch.float32)
        if sp.order is not None:
            u = u.permute(sp.order).contiguous()
        lib.qta_quant_apply(*args, scale.data_ptr(), u.data_ptr(), qmax, q.data_ptr())
    if sp.order is not None:
        back = sorted(range(len(sp.order)), key=sp.order.__getitem__)
        if sp.transpose is not None:
            view_order = torch.from_numpy(np.empty(xf.shape, dtype=np.int8))
            lib.qta_transpose_i8(q.data_ptr(), *sp.transpose, view_order.data_ptr())
            q = view_order
        else:
            q = q.permute(back).contiguous()
        if sp.scale_shape:
            scale = scale.permute(back)
    if out is not None and q is not out:
        out.copy_(q)
        q = out
    return q, scale


def dequantize_rows_cols(q: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
                         ) -> tuple[torch.Tensor, np.ndarray] | None:
    """(float32 ``q * rows * cols``, per-column max |q| as int32) of an INT8 output in one C
    pass, or None when the C code does not take it (forced off, the library unavailable, or
    operands it leaves out): :func:`~lora_qta.lora.quant.dequantize` ``(q, rows, cols)`` then
    states the values. ``q`` is C-contiguous INT8 with the channels last; ``rows`` float32 of
    ``q``'s leading dimensions with size-1 ones after them (a scale per token, or per image of
    an NHWC map); ``cols`` a float32 vector per channel."""
    if NATIVE.engine() == NATIVE.fallback or q.dtype != torch.int8 or not q.is_contiguous() or q.dim() < 2:
        return None
    if not q.device.type == rows.device.type == cols.device.type == "cpu":
        return None
    nd, c = q.dim(), q.shape[-1]
    if rows.dtype != torch.float32 or rows.dim() != nd or cols.dtype != torch.float32 or cols.shape != (c,):
        return None
    j = next((i for i in range(nd) if all(s == 1 for s in rows.shape[i:])), nd)
    if j == nd or tuple(rows.shape[:j]) != tuple(q.shape[:j]) or NATIVE.load() is None:
        return None
    rowsc, colsc = rows.contiguous(), cols.contiguous()
    r = q.numel() // c if c else 0
    y = torch.from_numpy(np.empty(q.shape, dtype=np.float32))
    colmax = np.empty(c, dtype=np.int32)
    if r and c:
        NATIVE.lib.qta_dequant_rows_cols(q.data_ptr(), r, c, rowsc.data_ptr(), math.prod(q.shape[j:-1]),
                                         colsc.data_ptr(), y.data_ptr(), colmax.ctypes.data)
    else:
        colmax[:] = 0
    return y, colmax


__all__ = ["ENGINE_ENV", "NATIVE", "Split", "dequantize_rows_cols", "diverged", "plan", "quantize", "split"]
