"""Self-checks of the accelerator: random INT8 operands, and GEMMs run on the accelerator and
compared bit for bit with the numpy reference (``lora-qta gemm`` and ``lora-qta demo``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputShapeError
from ..hw.reference import reference_gemm
from .accelerator import Accelerator, GemmResult, fixed_point_scale


def random_operands(rng: np.random.Generator, m: int, k: int, n: int, trans_a: bool = False,
                    trans_b: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Uniform INT8 operands of an (m x k) . (k x n) GEMM, stored transposed where asked."""
    if min(m, k, n) < 1:
        raise InputShapeError(f"GEMM dimensions must be at least 1, got M={m}, K={k}, N={n}")
    a = rng.integers(-128, 128, (k, m) if trans_a else (m, k), dtype=np.int8)
    b = rng.integers(-128, 128, (n, k) if trans_b else (k, n), dtype=np.int8)
    return a, b


@dataclass(frozen=True)
class CheckedGemm:
    """A GEMM's result and whether it (output and saturation flag) equals the numpy reference."""

    result: GemmResult
    exact: bool


def checked_gemm(acc: Accelerator, a: np.ndarray, b: np.ndarray, *, trans_a: bool = False,
                 trans_b: bool = False, dataflow: str = "auto", split: int | None = None, out: str = "int32",
                 mult: int = 1, shift: int = 0, rounding: str = "nearest_even", seed: int = 0) -> CheckedGemm:
    """``acc.gemm`` with these arguments (per-tensor scale), checked against the reference."""
    r = acc.gemm(a, b, trans_a=trans_a, trans_b=trans_b, dataflow=dataflow, split=split, out=out, mult=mult,
                 shift=shift, rounding=rounding, seed=seed)
    ref, ref_saturated = reference_gemm(a, b, trans_a=trans_a, trans_b=trans_b, out_int8=out == "int8",
                                        mult=mult, shift=shift, stochastic=rounding == "stochastic", seed=seed)
    return CheckedGemm(r, bool(np.array_equal(r.output, ref) and r.saturated == ref_saturated))


def checked_random_gemm(acc: Accelerator, m: int, k: int, n: int, *, trans_a: bool = False,
                        trans_b: bool = False, dataflow: str = "auto", split: int | None = None,
                        out: str = "int32", rounding: str = "nearest_even", seed: int = 0) -> CheckedGemm:
    """:func:`checked_gemm` on random operands drawn with ``seed``; an INT8 output is scaled so
    that a random product of K terms stays well inside INT8."""
    a, b = random_operands(np.random.default_rng(seed), m, k, n, trans_a, trans_b)
    mult, shift = 1, 0
    if out == "int8":
        mult, shift = (int(x) for x in fixed_point_scale(127.0 / (127 * 127 * np.sqrt(k) * 3)))
    return checked_gemm(acc, a, b, trans_a=trans_a, trans_b=trans_b, dataflow=dataflow, split=split, out=out,
                        mult=mult, shift=shift, rounding=rounding, seed=seed)
