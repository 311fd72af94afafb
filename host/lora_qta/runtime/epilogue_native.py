"""The fast engine's INT8-output epilogue in C++ (``epilogue_native.cpp``), compiled with g++ at
first use and called through ctypes.

:func:`lora_qta.runtime.fast.requantize` and the numpy code of the INT8 branch of
``fast._run_items`` state the semantics; this is one pass over the exact products to the same
bits (requantization with any shift and multiplier, per tensor, row or column, half-to-even or
stochastic rounding, accumulation onto the old INT8 output, the saturation count and the amax),
where numpy takes about ten int64 passes. tests/runtime/test_epilogue_native.py compares the
two on the edge cases and through the engine against C-simulation.

Built with ``-O3`` and ``-march=native`` where the compiler has it (integer arithmetic only, so
the vector width cannot change a bit), cached under ``$LORA_QTA_CACHE/fastepilogue`` per
compiler and instruction set. If no compiler is found or the build fails, the numpy code runs,
after one warning. ``LORA_QTA_FAST_EPILOGUE=numpy`` forces the numpy code.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from ..hw.reference import mix32
from .cxx import NativeLibrary

ENGINE_ENV = "LORA_QTA_FAST_EPILOGUE"
"""``numpy`` forces the numpy epilogue; ``native`` (or unset) uses the C++ one."""
SOURCE = "epilogue_native.cpp"
CXXFLAGS = ("-std=c++14", "-O3", "-Wall", "-Werror", "-shared", "-fPIC")
MODES = {"tensor": 0, "row": 1, "col": 2}
"""The C code's number of each scale mode (hls/README.md: one pair, one per row, one per column)."""


def _declare(lib: ctypes.CDLL) -> None:
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.qta_epilogue_i8.argtypes = [p, i32, i64, i64, i64, p, p, i32, i32, ctypes.c_uint32, i64, i32, p, i64, i64, p]
    lib.qta_epilogue_i8.restype = None


NATIVE = NativeLibrary(Path(__file__).with_name(SOURCE), CXXFLAGS, "fastepilogue", "libqta_epilogue.so",
                       "the fast engine's epilogue", ENGINE_ENV, "numpy", _declare)
"""The C++ epilogue: ``NATIVE.engine()`` reads ``$LORA_QTA_FAST_EPILOGUE``, ``NATIVE.build()``
compiles it, ``NATIVE.load()`` loads it (None, after one warning, when it cannot be)."""


def epilogue_i8(acc: np.ndarray, mult: np.ndarray, shift: np.ndarray, mode: str, stochastic: bool, seed: int,
                first_row: int, accumulate: bool, out: np.ndarray) -> tuple[int, int] | None:
    """Requantize the exact products ``acc`` (items x m x n, C-contiguous float32 holding
    integers of magnitude <= 2^24, or int32) into the INT8 view ``out`` (items x m x n, any strides with unit column
    stride; read first when ``accumulate``) with the (``mult``, ``shift``) int64 arrays of
    ``mode`` (one pair for ``tensor``, m for ``row``, n for ``col``; shifts already effective,
    0..62), rounding stochastically with the kernel's bits of ``seed`` when asked (``first_row``:
    the batch row of ``acc``'s first row). Returns (saturated outputs, largest |value| before
    saturation, uncapped), or None when the C code does not take the call (forced numpy,
    library unavailable, another dtype or layout): the caller runs the numpy code."""
    lib = NATIVE.active()
    if lib is None or acc.dtype not in (np.float32, np.int32) or not acc.flags.c_contiguous:
        return None
    if not acc.flags.aligned or out.dtype != np.int8 or out.strides[2] != 1 or not out.flags.writeable:
        return None
    items, m, n = out.shape
    want = {"tensor": 1, "row": m, "col": n}[mode]
    if acc.size != items * m * n or mult.shape != (want,) or shift.shape != (want,):
        return None
    # the C code's bounds (|product| <= 2^62, shifts of 0..62): anything else runs numpy
    if want and (mult.min() < -(2**31) or mult.max() >= 2**31 or shift.min() < 0 or shift.max() > 62):
        return None
    mult = np.ascontiguousarray(mult, dtype=np.int64)
    shift = np.ascontiguousarray(shift, dtype=np.int64)
    res = np.zeros(2, dtype=np.int64)
    lib.qta_epilogue_i8(acc.ctypes.data, acc.dtype == np.float32, items, m, n, mult.ctypes.data,
                         shift.ctypes.data, MODES[mode], stochastic, int(mix32(seed & 0xFFFFFFFF)), first_row,
                         accumulate, out.ctypes.data, out.strides[0], out.strides[1], res.ctypes.data)
    return int(res[0]), int(res[1])


__all__ = ["ENGINE_ENV", "MODES", "NATIVE", "epilogue_i8"]
