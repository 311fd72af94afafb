"""LoRA fused with its frozen base layer at run time (``lora-qta finetune --fuse-lora``).

An adapted linear layer computes ``Y = X . W^T + s . (X . A^T) . B^T``: the frozen weight W
(out x in) and lora_A = A (r x in) read the same input X. With ``--offload all`` (``row``
scheme) and ``--fuse-lora`` each such layer whose base is offloaded (:class:`Int8Linear`) runs

* **forward** ``[Y | H] = X_q . [W; A]^T`` as ONE accelerator call (N = out + r): X quantized
  once per token with a current scale (the base's ``row`` scheme), the stacked INT8 weight in one
  resident buffer (W's rows quantized per output channel and placed once for the run; A's r rows
  quantized per row, i.e. per output channel of H, and rewritten in place -- only those rows,
  :meth:`Accelerator.write_rows` -- whenever the optimizer has changed A), the INT32 output
  dequantized with the token's scale times the stacked row's scale and split into Y and H. H
  then feeds Y_lora = H . B^T on the LoRA runtime as before (:func:`~.layer.lora_up`).
* **input gradient** (where the layer has one; the cross-attention to_k/to_v do not)
  ``dX = [dY | dH] . [W; A]`` as ONE call over K = out + r, reading the SAME resident buffer
  (not transposed). A scale must be constant along K, and the stacked buffer's scales are per
  row, i.e. along K here: they are folded into the left operand, so the call runs on
  ``L = [dY . diag(s_W) | dH . diag(s_A)]`` quantized jointly per token (one scale per token over
  both parts), and ``dX = L_q . [W_q; A_q] x (token scale)``. This is an exact rewriting of
  ``dY . W + dH . A``; the quantization error sits in L instead of in a second, per-input-channel
  copy of W (which the unfused base layer keeps for its input gradient and a fused layer does not
  need: one resident copy of W per fused layer instead of two).
* the weight gradients dA, dB and dH = s . G . B stay the LoRA runtime's
  (:func:`~.layer.lora_grads`), unchanged.

What changes in the numerics against the unfused path (README, "Whole-step INT8 offload"): the
LoRA GEMM H = X . A^T sees the base's per-token quantized X instead of its SmoothQuant-scaled one
and A per row instead of per tensor; dX of the LoRA branch is rounded to nearest (the base's
scheme) instead of stochastically, jointly with dY. The base's forward is bit-identical to the
unfused one (same X_q, same W_q, same scales); its input gradient is not (the folding above).

The fused calls are counted as their own family ``fused`` in the offload report (the LoRA
family then holds four GEMMs per layer and step, the linear family the frozen layers that are
not adapted); A's rewrites (host -> device bytes, not kernel traffic) under ``fusion``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import AdapterError
from ..runtime.accelerator import Resident
from .layer import lora_grads, lora_up
from .offload import FamilyStats, Int8Linear, quantize_weight

if TYPE_CHECKING:
    from .layer import QtaLoraLinear
    from .offload import Offload

FAMILY = "fused"
"""The offload report's family of the fused calls."""


class FusedLinear:
    """One adapted linear layer whose frozen base and lora_A share one stacked INT8 weight
    ``[W; A]`` ((out + r) x in, per-row scales) and one accelerator call per direction."""

    def __init__(self, off: Offload, base: Int8Linear, layer: QtaLoraLinear, adapter: str):
        self.off, self.base, self.layer, self.adapter = off, base, layer, adapter
        self.name = base.name
        self.n, self.k = base.n, base.k
        self.r = int(layer.lora_A[adapter].weight.shape[0])
        self.host = torch.cat([base.wq_fwd, torch.zeros(self.r, self.k, dtype=torch.int8)]).contiguous()
        self.w: Any = self.host                      # the resident handle once placed
        self.scales = torch.cat([base.sw_fwd_t, torch.ones(self.r)])   # per row of [W; A]
        self._a_written: torch.Tensor | None = None  # the A whose INT8 rows the stacked buffer holds

    def active(self) -> bool:
        """Whether the base layer's INT8 path is installed (not suspended or uninstalled)."""
        return self.base.module.__dict__.get("forward") is self.base

    # -- the stacked weight ------------------------------------------------------------
    def place(self) -> None:
        """Make the stacked weight resident for the run (W's rows now, A's at the first forward);
        if it does not fit the accelerator's budget it stays on the per-call path (counted)."""
        self.w = self.off.make_resident(self.host, f"{self.name}.stacked")

    def free(self) -> None:
        """Release the resident stacked weight; the calls use the host copy afterwards."""
        if isinstance(self.w, Resident):
            self.off.acc.free(self.w)
            self.w = self.host

    def refresh(self, a: torch.Tensor) -> None:
        """Quantize A per row and write its r rows into the stacked weight (in place, only those
        rows) if A changed since they were last written (the optimizer step). Called at the
        forward: the backward of a step reads the rows its forward wrote, since A only changes
        between steps."""
        a = a.detach()
        if self._a_written is not None and torch.equal(self._a_written, a):
            return
        aq, sa = quantize_weight(a, 0)
        self.host[self.n:] = aq
        written = aq.numel()
        if isinstance(self.w, Resident):
            written = self.off.acc.write_rows(self.w, self.n, aq)
        self.scales = torch.cat([self.base.sw_fwd_t, torch.from_numpy(sa).float()])
        self._a_written = a.clone()
        self.off.fusion["a_rewrites"] += 1
        self.off.fusion["a_rewrite_bytes"] += written

    # -- the layer -----------------------------------------------------------------------
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """peft's LoRA Linear forward (base + s . B . A . x, biases on the host) with the fused calls."""
        lora = self.layer
        rt = lora.qta_runtime
        shape = x.shape
        scaling = float(lora.scaling[self.adapter])
        y_base, y_lora = _FusedFn.apply(x.reshape(-1, self.k).contiguous(), lora.lora_A[self.adapter].weight,
                                        lora.lora_B[self.adapter].weight, scaling, self, rt)
        result = y_base.reshape(*shape[:-1], self.n)
        if self.base.module.bias is not None:
            result = result + self.base.module.bias
        result = result.to(x.dtype)
        bias = lora.lora_B[self.adapter].bias  # peft's lora_bias: a vector add, on the host in fp32
        if bias is not None:
            y_lora = y_lora + bias * scaling
        return result + y_lora.reshape(*shape[:-1], -1).to(result.dtype)


class _FusedFn(torch.autograd.Function):
    """[Y | H] = X . [W; A]^T and Y_lora = s . H . B^T forward; dX = [dY | dH] . [W; A] (one call),
    dA, dB backward. Returns (Y_base, Y_lora) (biases are added by the caller)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float, fused: FusedLinear,
                rt: Any):
        off, acc, n = fused.off, fused.off.acc, fused.n
        fused.refresh(a)
        w, scales = fused.w, fused.scales
        xq, sx = off.quant_rows(FAMILY, x, (1,))
        out = off.run_int32(FAMILY, lambda **ep: acc.gemm(xq, w, trans_b=True, **ep), (sx, scales),
                            x.shape[0] * fused.k * (n + fused.r))
        y_base, h = out[:, :n], out[:, n:].contiguous()
        y_lora, bq = lora_up(rt, h, b)
        ctx.save_for_backward(x, h)
        ctx.fused, ctx.rt, ctx.scaling, ctx.bq, ctx.w, ctx.scales = fused, rt, scaling, bq, w, scales
        ctx.dtypes = a.dtype, b.dtype
        return y_base, y_lora * scaling

    @staticmethod
    def backward(ctx, g_base: torch.Tensor, g_lora: torch.Tensor):
        x, h = ctx.saved_tensors
        fused, rt, s = ctx.fused, ctx.rt, ctx.scaling
        off, n = fused.off, fused.n
        dh, da, db = lora_grads(rt, g_lora.contiguous(), x, h, ctx.bq, s, fused.layer.qta_layer_id)
        dx = None
        if ctx.needs_input_grad[0]:
            # the stacked rows' scales lie along K: folded into [dY | dH], quantized jointly per token
            joint = torch.cat([g_base.float() * ctx.scales[:n], dh * ctx.scales[n:]], dim=1)
            lq, sl = off.quant_rows(FAMILY, joint, (1,))
            w = ctx.w
            dx = off.run_int32(FAMILY, lambda **ep: off.acc.gemm(lq, w, **ep), (sl,),
                               joint.shape[0] * joint.shape[1] * fused.k).to(x.dtype)
        return dx, da.to(ctx.dtypes[0]), db.to(ctx.dtypes[1]), None, None, None


def fuse(unet: nn.Module, off: Offload) -> int:
    """Fuse every accelerated LoRA layer of ``unet`` whose base layer ``off`` put on the
    accelerator (call before :func:`~.offload.place_weights`); returns how many were fused.
    Raises :class:`AdapterError` for a layer the fused GEMM cannot express (LoRA dropout, more
    than one active adapter, a LoRA variant)."""
    from .layer import QtaLoraLinear

    off.stats.setdefault(FAMILY, FamilyStats())
    for name, m in unet.named_modules():
        if not isinstance(m, QtaLoraLinear):
            continue
        base = m.base_layer.__dict__.get("forward")
        if not isinstance(base, Int8Linear):
            continue
        adapters = [a for a in m.active_adapters if a in m.lora_A]
        if len(adapters) != 1:
            raise AdapterError(f"--fuse-lora stacks one adapter's lora_A under the base weight, but {name} has "
                               f"{len(adapters)} active adapters; activate one, or train without --fuse-lora")
        adapter = adapters[0]
        if adapter in m.lora_variant:
            raise AdapterError(f"--fuse-lora fuses plain LoRA only, and {name} uses a LoRA variant (e.g. DoRA); "
                               "train without --fuse-lora")
        if not isinstance(m.lora_dropout[adapter], nn.Identity):
            raise AdapterError(f"--fuse-lora needs the LoRA branch to read the base layer's input, but {name} "
                               "applies LoRA dropout to it; use lora_dropout=0, or train without --fuse-lora")
        f = FusedLinear(off, base, m, adapter)
        m.qta_fused = f
        off.fused.append(f)
    off.fusion["layers"] = len(off.fused)
    return len(off.fused)


def unfuse(off: Offload) -> None:
    """Give every fused layer back its unfused path (called by :func:`~.offload.uninstall` after
    :func:`~.offload.free_weights` has freed the stacked weights)."""
    for f in off.fused:
        f.layer.qta_fused = None


__all__ = ["FAMILY", "FusedLinear", "fuse", "unfuse"]
