"""INT8 symmetric quantizers with dynamic absmax scales, for fully quantized LoRA training.

``q = clamp(round(x / s), -127, 127)`` with ``s = max(|x|) / 127`` taken per tensor, per row
(token) or per column (channel). A scale must be constant along the dimension a GEMM sums
over, so the INT32 result can be rescaled exactly: per-row scales suit the left operand of
X.W, per-column scales the right one, and per-token scales are *not* valid for the weight
gradient GEMMs, which sum over tokens. All-zero slices (peft's gaussian init starts with
B = 0) get the scale ``eps`` instead of dividing by zero. Gradients use stochastic rounding
from a seeded generator, so a run is reproducible.
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
