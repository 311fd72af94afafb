"""A peft LoRA layer whose six GEMMs run in INT8 on the accelerator (board or emulated).

For one adapted linear layer with input X (tokens x in), lora_A = A (r x in),
lora_B = B (out x r) and s = alpha / r, the six GEMMs of :data:`~lora_qta.lora.gemms.LORA_GEMMS`
with the scaling in place::

    forward    H  = X . A^T        Y = s . H . B^T
    backward   dH = s . G . B      dB = s . G^T . H      dA = dH^T . X      dX = dH . A

Each GEMM's operands are quantized to INT8 with absmax scales constant along its summed
dimension (per token for left operands that are summed over features, per channel for the
two weight-gradient GEMMs that sum over tokens), the GEMM runs on the accelerator with
INT32 output, and the result is rescaled to float. Gradients (G, dH) are rounded
stochastically from a generator seeded by (seed, step, layer, GEMM), so runs reproduce
exactly, also across a resume. The frozen base layer stays in PyTorch.

:class:`QtaLoraLinear` subclasses peft's ``lora.Linear`` (same parameters and state-dict
keys, so the adapter saves in the standard diffusers format) and is registered for
``nn.Linear`` targets through ``LoraConfig._register_custom_module``.
"""

from __future__ import annotations

import time
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
from peft import LoraConfig
from peft.tuners.lora.layer import Linear as PeftLoraLinear

from ..errors import AdapterError
from ..runtime.accelerator import Accelerator
from .gemms import LORA_GEMMS, LoraGemmKind
from .quant import Quantized, quantize

H_XAT, Y_HBT, DH_GB, DB_GTH, DA_DHTX, DX_DHA = LORA_GEMMS


@dataclass
class GemmStats:
    """Accumulated accelerator figures of one GEMM kind."""

    calls: int = 0
    cycles: int = 0
    macs: int = 0
    bytes_moved: int = 0
    dataflows: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def utilization(self, pes: int) -> float:
        """MACs over cycles x PEs, over all calls."""
        return self.macs / (self.cycles * pes) if self.cycles else 0.0


class QtaRuntime:
    """What the accelerated LoRA layers share: the accelerator, the seed and step counter
    for stochastic rounding, and the per-GEMM-kind figures and time split of a run."""

    def __init__(self, accelerator: Accelerator, seed: int = 0):
        self.acc = accelerator
        self.seed = seed
        self.step = 0
        self.stats: dict[str, GemmStats] = {kind.key: GemmStats() for kind in LORA_GEMMS}
        self.time_accelerator = 0.0
        self.time_quantization = 0.0

    def generator(self, layer_id: int, kind: int) -> torch.Generator:
        """The stochastic-rounding generator of one GEMM operand in this step."""
        g = torch.Generator()
        g.manual_seed(zlib.crc32(f"{self.seed}/{self.step}/{layer_id}/{kind}".encode()))
        return g

    def quant(self, x: torch.Tensor, axis: str, generator: torch.Generator | None = None) -> Quantized:
        t0 = time.perf_counter()
        out = quantize(x, axis, generator)
        self.time_quantization += time.perf_counter() - t0
        return out

    def gemm(self, kind: LoraGemmKind, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """INT32 result of one INT8 GEMM on the accelerator (operands laid out as ``kind``
        says), recording its figures."""
        t0 = time.perf_counter()
        r = self.acc.gemm(a, b, trans_a=kind.trans_a, trans_b=kind.trans_b)
        self.time_accelerator += time.perf_counter() - t0
        st = self.stats[kind.key]
        st.calls += 1
        st.cycles += r.cycles
        st.bytes_moved += r.bytes_moved
        m, k = (a.shape[1], a.shape[0]) if kind.trans_a else a.shape
        st.macs += m * k * (b.shape[0] if kind.trans_b else b.shape[1])
        st.dataflows[r.dataflow + (f"{r.split:+d}" if r.split else "")] += 1
        return r.output

    def report(self) -> dict[str, Any]:
        """Per-GEMM-kind figures (cycles are the kernel's counter: modelled under emulation)."""
        pes = self.acc.board.pes
        return {
            kind: {"calls": s.calls, "cycles": s.cycles, "macs": s.macs, "bytes_moved": s.bytes_moved,
                   "utilization": round(s.utilization(pes), 4), "dataflows": dict(s.dataflows)}
            for kind, s in self.stats.items()
        }


class QtaLoraFunction(torch.autograd.Function):
    """The six INT8 GEMMs of one LoRA layer; inputs are 2-D (tokens x features)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float,
                runtime: QtaRuntime, layer_id: int) -> torch.Tensor:
        rt = runtime
        xq = rt.quant(x, "row")
        aq = rt.quant(a, "tensor")
        h = rt.gemm(H_XAT, xq.q, aq.q).float() * xq.scale * aq.scale
        hq = rt.quant(h, "row")
        bq = rt.quant(b, "tensor")
        y = rt.gemm(Y_HBT, hq.q, bq.q).float() * hq.scale * bq.scale
        ctx.save_for_backward(x, a, b, h)
        ctx.scaling, ctx.rt, ctx.layer_id = scaling, rt, layer_id
        ctx.aq, ctx.bq = aq, bq  # the weights' INT8 copies serve the backward GEMMs too
        return (y * scaling).to(x.dtype)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, a, b, h = ctx.saved_tensors
        rt, s, lid = ctx.rt, ctx.scaling, ctx.layer_id
        g = g.contiguous()
        # dH = s . G . B           (sums over out-features: per-token scales for G)
        gq_row = rt.quant(g, "row", rt.generator(lid, 0))
        bq = ctx.bq
        dh = rt.gemm(DH_GB, gq_row.q, bq.q).float() * gq_row.scale * bq.scale * s
        # dB = s . G^T . H         (sums over tokens: per-channel scales for G and H)
        gq_col = rt.quant(g, "col", rt.generator(lid, 1))
        hq_col = rt.quant(h, "col")
        db = rt.gemm(DB_GTH, gq_col.q, hq_col.q).float() * gq_col.scale.T * hq_col.scale * s
        # dA = dH^T . X            (sums over tokens: per-channel scales)
        dhq_col = rt.quant(dh, "col", rt.generator(lid, 2))
        xq_col = rt.quant(x, "col")
        da = rt.gemm(DA_DHTX, dhq_col.q, xq_col.q).float() * dhq_col.scale.T * xq_col.scale
        # dX = dH . A              (sums over the rank: per-token scales for dH)
        dx = None
        if ctx.needs_input_grad[0]:
            dhq_row = rt.quant(dh, "row", rt.generator(lid, 3))
            aq = ctx.aq
            dx = (rt.gemm(DX_DHA, dhq_row.q, aq.q).float()
                  * dhq_row.scale * aq.scale).to(x.dtype)
        return dx, da.to(a.dtype), db.to(b.dtype), None, None, None


class QtaLoraLinear(PeftLoraLinear):
    """peft's LoRA Linear with its LoRA branch on the accelerator (when a runtime is attached)."""

    qta_runtime: QtaRuntime | None = None
    qta_layer_id: int = 0

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        rt = self.qta_runtime
        if rt is None or self.disable_adapters or self.merged or kwargs.get("adapter_names") is not None:
            return super().forward(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            if name in self.lora_variant:
                raise AdapterError("lora-qta accelerates plain LoRA only (no DoRA or other variants): "
                                   "use a plain LoraConfig, or precision fp32 for the variant")
            dropout = self.lora_dropout[name]
            xd = dropout(x).reshape(-1, x.shape[-1]).contiguous()
            y = QtaLoraFunction.apply(xd, self.lora_A[name].weight, self.lora_B[name].weight,
                                      float(self.scaling[name]), rt, self.qta_layer_id)
            result = result + y.reshape(*x.shape[:-1], -1).to(result.dtype)
        return result


def accelerated_lora_config(**kwargs: Any) -> LoraConfig:
    """A ``LoraConfig`` whose ``nn.Linear`` targets become :class:`QtaLoraLinear`."""
    cfg = LoraConfig(**kwargs)
    cfg._register_custom_module({torch.nn.Linear: QtaLoraLinear})
    return cfg


def attach_runtime(model: torch.nn.Module, runtime: QtaRuntime | None) -> int:
    """Point every :class:`QtaLoraLinear` of ``model`` at ``runtime`` (None detaches);
    returns how many layers were found."""
    n = 0
    for module in model.modules():
        if isinstance(module, QtaLoraLinear):
            module.qta_runtime = runtime
            module.qta_layer_id = n
            n += 1
    return n
