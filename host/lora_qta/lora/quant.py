"""INT8 symmetric quantizers with dynamic absmax scales, for fully quantized LoRA training.

``q = clamp(round(x / s), -127, 127)`` with ``s = max(|x|) / 127`` taken per tensor, per row
(token) or per column (channel). A scale must be constant along the dimension a GEMM sums
over, so the INT32 result can be rescaled exactly: per-row scales suit the left operand of
X.W, per-column scales the right one, and per-token scales are *not* valid for the weight
gradient GEMMs, which sum over tokens. All-zero slices (peft's gaussian init starts with
B = 0) get the scale ``eps`` instead of dividing by zero. Gradients use stochastic rounding
from a seeded generator, so a run is reproducible.

Two exact rescalings keep the INT8 error bounded where one absmax scale per slice is not enough
(README, "Quantization"; measurements in tests/lora/test_numerics.py):

* :func:`smoothing_factors` (SmoothQuant): X.A^T = (X / s).(A * s)^T with a per-channel power of
  two s, which moves outlier channels of the activations X into the weights before the per-token
  quantization of X;
* :func:`balance_tokens` and :func:`magnitude_groups` for GEMMs that sum over tokens (the weight
  gradients): a per-token power of two moved between the two operands halves the spread of
  per-token magnitudes, and tokens of similar magnitude are quantized (and summed on the
  accelerator) as a group with their own per-channel scales.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import InputShapeError, OptionError
from . import quant_native

QMAX = 127
EPS = 1e-12


@dataclass
class Quantized:
    """An INT8 tensor and the float scale(s) that dequantize it: ``x ~= q * scale``.

    ``scale`` is a 0-d tensor (per tensor), (rows, 1) (per row) or (1, cols) (per column).
    """

    q: torch.Tensor
    scale: torch.Tensor


AXES = {"tensor": None, "row": (1,), "col": (0,)}
"""The dimensions of a 2-D tensor one absmax scale spans, per quantization axis (None: all, a
0-d scale)."""


def quantize_along(x: torch.Tensor, dims: tuple[int, ...] | None, generator: torch.Generator | None = None,
                   where: str = "", out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(INT8 tensor, scales) of ``x`` (any rank and layout) with absmax scales over ``dims`` (one
    per remaining index, kept as size-1 dimensions; None: one 0-d scale for the whole tensor):
    ``q = clamp(round(x / s), -127, 127)``, ``s = max(max|x|, eps) / 127``, rounding half to
    even, or stochastic (floor(x / s + u), u uniform from ``generator``). ``q`` is C-contiguous.

    The code below states the semantics. The tensors the training quantizes (float32 on the CPU,
    dense, the scales over a row-major split of the dimensions in memory order) take a faster
    route to the same values: one fused C++ call (:mod:`.quant_native`, built with g++ at first
    use; without a working compiler this code runs after one warning, and
    ``LORA_QTA_HOST_QUANT=torch`` forces it). Here one float32 buffer in the layout of ``x``
    serves every pass (|x| for the reduction, then x / s rounded and clamped in place), so each
    runs as a contiguous vectorized loop even for a permuted ``x`` (an NHWC view of an NCHW map),
    which is transposed once, at the end, as INT8 (one byte per element). Raises
    :class:`~lora_qta.errors.DivergedError` on NaN or Inf (a diverged step; ``where`` names the
    quantizer). ``out``: a C-contiguous INT8 tensor of ``x``'s shape (e.g. rows of a larger
    operand) that receives ``q`` and is returned as it."""
    if out is not None and (out.dtype != torch.int8 or tuple(out.shape) != tuple(x.shape) or not out.is_contiguous()):
        raise InputShapeError(f"out must be a C-contiguous int8 tensor of shape {tuple(x.shape)}, got "
                              f"{out.dtype} {tuple(out.shape)}{'' if out.is_contiguous() else ' (not contiguous)'}")
    xf = x.detach().float()
    done = quant_native.quantize(xf, dims, generator, where, EPS, QMAX, out)
    if done is not None:
        return done
    y = torch.empty_like(xf)  # the layout of x (a dense permuted view keeps its strides)
    if not xf.numel():
        amax = xf.new_zeros([1] * xf.ndim if dims is not None else [])
    else:
        torch.abs(xf, out=y)
        amax = y.amax() if dims is None else y.amax(dim=dims, keepdim=True)
    # the largest |x| is finite iff no NaN or Inf is anywhere (max propagates NaN); one small
    # reduction and a Python check: torch.isfinite(...).all() costs 25-80 us per call here
    if not math.isfinite(float(amax.max())):
        raise quant_native.diverged(where)
    scale = amax.clamp_min(EPS) / QMAX
    torch.div(xf, scale, out=y)  # the same correctly rounded float32 quotient as xf / scale
    if generator is None:
        # no clamp pass needed: with s = fl(m / 127) >= (m / 127)(1 - u) (u = 2**-24, m >= |x|),
        # |fl(x / s)| <= 127 (1 + u) / (1 - u) < 127.00002, which rounds to at most 127
        y.round_()
    else:  # floor(x / s + u) reaches 128 when x / s is a hair above 127: clamped
        y.add_(torch.rand(y.shape, generator=generator, dtype=y.dtype)).floor_().clamp_(-QMAX, QMAX)
    if out is not None:
        return out.copy_(y), scale
    return y.to(torch.int8).contiguous(), scale


def _fits_into(shape: torch.Size, target: torch.Size) -> bool:
    """Whether a tensor of ``shape`` broadcasts to ``target`` without enlarging it (then a
    product in place keeps ``target``): the check of ``torch.broadcast_shapes(target, shape) ==
    target``, without its Python reference implementation (30-90 us per call here)."""
    if len(shape) > len(target):
        return False
    return all(s == 1 or s == t for s, t in zip(reversed(shape), reversed(target)))


def dequantize(acc: torch.Tensor, *scales: torch.Tensor | float) -> torch.Tensor:
    """float32 ``acc.float() * scales[0] * scales[1] ...`` of an INT32 accumulator, the same
    values without a temporary per product: the accumulator is converted once (a copy, as
    ``.float()`` makes it), then scaled in place by each scale that does not enlarge it (the
    first, a tensor per row, per column or 0-d, as float32; the others tensors or numbers). A
    mixed INT32 x float32 product in one pass ran 1.2-1.7x slower here than the conversion and a
    float32 product in place (measured on this machine, one thread)."""
    y = acc.to(torch.float32, copy=True)
    for i, sc in enumerate(scales):
        if isinstance(sc, torch.Tensor):
            sc = sc.to(torch.float32) if i == 0 else sc
            if not _fits_into(sc.shape, y.shape):
                y = y * sc  # a scale that enlarges the result: not in place
                continue
        y.mul_(sc)
    return y


def quantize(x: torch.Tensor, axis: str = "tensor", generator: torch.Generator | None = None,
             out: torch.Tensor | None = None) -> Quantized:
    """Quantize a 2-D float tensor to INT8 (:func:`quantize_along` with the scale of ``axis``:
    ``tensor``, ``row`` or ``col``); stochastic rounding when ``generator`` is given; ``out``
    receives the INT8 values (:func:`quantize_along`).

    Raises :class:`~lora_qta.errors.DivergedError` (a ``FloatingPointError``) on NaN or Inf
    input (a diverged training step).
    """
    if x.dim() != 2:
        raise InputShapeError(f"quantize takes 2-D tensors, got shape {tuple(x.shape)}; reshape to "
                              "(rows, columns) first")
    if axis not in AXES:
        raise OptionError(f"unknown quantization axis {axis!r}: use tensor, row or col")
    return Quantized(*quantize_along(x, AXES[axis], generator, out=out))


def pow2(x: torch.Tensor) -> torch.Tensor:
    """The power of two nearest to each (positive) value in log2: multiplying by it is exact."""
    return torch.exp2(torch.round(torch.log2(x)))


def smoothing_factors(x_absmax: torch.Tensor, a_absmax: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """Per-channel SmoothQuant factors s_j = 2^round(log2(max|X_j|^alpha / max|A_j|^(1 - alpha))).

    ``x_absmax``: the activations' per-channel absolute maxima; ``a_absmax``: the weight's
    per-input-channel absolute maxima. Channels where either is zero (or not finite) keep 1.
    """
    xm, am = x_absmax.detach().float(), a_absmax.detach().float()
    ok = (xm > 0) & (am > 0) & torch.isfinite(xm) & torch.isfinite(am)
    s = torch.ones_like(xm)
    s[ok] = pow2(xm[ok] ** alpha / am[ok] ** (1.0 - alpha))
    return s


def balance_factors(p: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(c, key) of :func:`balance_tokens`: c_t = 2^round(log2 sqrt(max|p_t| / max|q_t|)) per row
    (token) t (1 where either maximum is zero or not finite) and key_t = max|p_t| * max|q_t|."""
    pm = p.detach().abs().amax(1).float()
    qm = q.detach().abs().amax(1).float()
    ok = (pm > 0) & (qm > 0) & torch.isfinite(pm) & torch.isfinite(qm)
    # every token's factor computed, the others' replaced by 1: no gather and scatter of the
    # valid ones (the same values for them)
    return torch.where(ok, pow2(torch.sqrt(pm / qm)), 1.0), pm * qm


def balance_tokens(p: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows (tokens) t of ``p`` divided and of ``q`` multiplied by c_t = 2^round(log2 sqrt(max|p_t| /
    max|q_t|)): p^T.q is unchanged, and both operands carry the square root of the token's magnitude.

    Returns (p', q', key) with key_t = max|p_t| * max|q_t|, the token's magnitude product
    (:func:`balance_factors`; the LoRA runtime applies c to each magnitude group's rows as it
    gathers them, the same values without a pass over all tokens first).
    """
    c, key = balance_factors(p, q)
    return p / c[:, None], q * c[:, None], key


def magnitude_groups(key: torch.Tensor, ratio: float = 16.0) -> list[torch.Tensor]:
    """Token indices in two groups: key >= max(key) / ``ratio`` (the high group) and the rest;
    empty groups are left out (one group when every token is within the ratio)."""
    high = key >= key.max() / ratio
    groups = [torch.nonzero(high).flatten(), torch.nonzero(~high).flatten()]
    return [g for g in groups if len(g)]
