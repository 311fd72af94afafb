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

from dataclasses import dataclass

import torch

from ..errors import DivergedError, InputShapeError, OptionError

QMAX = 127
EPS = 1e-12


@dataclass
class Quantized:
    """An INT8 tensor and the float scale(s) that dequantize it: ``x ~= q * scale``.

    ``scale`` is a 0-d tensor (per tensor), (rows, 1) (per row) or (1, cols) (per column).
    """

    q: torch.Tensor
    scale: torch.Tensor


def absmax_scale(x: torch.Tensor, axis: str) -> torch.Tensor:
    """The absmax scale of a 2-D tensor: ``axis`` is ``tensor``, ``row`` or ``col``."""
    a = x.detach().abs()
    if axis == "tensor":
        m = a.amax()
    elif axis == "row":
        m = a.amax(dim=1, keepdim=True)
    elif axis == "col":
        m = a.amax(dim=0, keepdim=True)
    else:
        raise OptionError(f"unknown quantization axis {axis!r}: use tensor, row or col")
    return torch.clamp(m.float(), min=EPS) / QMAX


def quantize(x: torch.Tensor, axis: str = "tensor", generator: torch.Generator | None = None) -> Quantized:
    """Quantize a 2-D float tensor to INT8; stochastic rounding when ``generator`` is given.

    Raises :class:`~lora_qta.errors.DivergedError` (a ``FloatingPointError``) on NaN or Inf
    input (a diverged training step).
    """
    if x.dim() != 2:
        raise InputShapeError(f"quantize takes 2-D tensors, got shape {tuple(x.shape)}; reshape to "
                              "(rows, columns) first")
    xf = x.detach().float()
    scale = absmax_scale(xf, axis)
    if not torch.isfinite(scale).all():
        raise DivergedError("NaN or Inf reached the INT8 quantizer: the training diverged; "
                            "lower the learning rate")
    y = xf / scale  # a new tensor: the in-place steps below never touch x
    if generator is None:
        y.round_()
    else:
        y.add_(torch.rand(y.shape, generator=generator, dtype=y.dtype)).floor_()
    return Quantized(y.clamp_(-QMAX, QMAX).to(torch.int8), scale)


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


def balance_tokens(p: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows (tokens) t of ``p`` divided and of ``q`` multiplied by c_t = 2^round(log2 sqrt(max|p_t| /
    max|q_t|)): p^T.q is unchanged, and both operands carry the square root of the token's magnitude.

    Returns (p', q', key) with key_t = max|p_t| * max|q_t|, the token's magnitude product.
    """
    pm = p.detach().abs().amax(1).float()
    qm = q.detach().abs().amax(1).float()
    ok = (pm > 0) & (qm > 0) & torch.isfinite(pm) & torch.isfinite(qm)
    c = torch.ones_like(pm)
    c[ok] = pow2(torch.sqrt(pm[ok] / qm[ok]))
    return p / c[:, None], q * c[:, None], pm * qm


def magnitude_groups(key: torch.Tensor, ratio: float = 16.0) -> list[torch.Tensor]:
    """Token indices in two groups: key >= max(key) / ``ratio`` (the high group) and the rest;
    empty groups are left out (one group when every token is within the ratio)."""
    high = key >= key.max() / ratio
    groups = [torch.nonzero(high).flatten(), torch.nonzero(~high).flatten()]
    return [g for g in groups if len(g)]
