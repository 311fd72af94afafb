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

Two exact rescalings bound the INT8 error (:mod:`.quant`; README "Quantization"):

* H = X.A^T runs as (X / s).(A * s)^T with per-channel SmoothQuant factors s (powers of two,
  from this batch's channel maxima of X and A), so outlier channels of X do not coarsen the
  per-token scales (``QtaRuntime.smooth_alpha``; None turns it off);
* dB = G^T.H and dA = dH^T.X (sums over tokens) balance each token's magnitude between the two
  operands (a power of two per token) and split the tokens into two magnitude groups, each
  quantized with its own per-channel scales, the INT32 results rescaled and added in fp32 on
  the host (``QtaRuntime.wgrad_groups``; False gives one per-channel scale over all tokens).
  Both groups run as one accelerator call, the narrower operand (the rank side) block-diagonal,
  where the cycle model says that costs no more than a call per group (``QtaRuntime.one_call``).
  Calls longer than the kernel's K limit are cut and summed exactly in int64.

:class:`QtaLoraLinear` subclasses peft's ``lora.Linear`` (same parameters and state-dict
keys, so the adapter saves in the standard diffusers format) and is registered for
``nn.Linear`` targets through ``LoraConfig._register_custom_module``. peft's ``lora_bias``
(a bias on lora_B) is supported: the six GEMMs run on the accelerator, the bias vector is added
(times the scaling, as peft does) on the host in fp32, and its gradient comes from autograd.
"""

from __future__ import annotations

import time
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from peft import LoraConfig
from peft.tuners.lora.layer import Linear as PeftLoraLinear

from ..errors import AdapterError
from ..runtime import planner
from ..runtime.accelerator import Accelerator
from .gemms import LORA_GEMMS, LoraGemmKind, lora_call
from .quant import Quantized, balance_factors, dequantize, magnitude_groups, quantize, smoothing_factors

H_XAT, Y_HBT, DH_GB, DB_GTH, DA_DHTX, DX_DHA = LORA_GEMMS


def groups_call_shape(widths: tuple[int, int], groups: int) -> tuple[bool, int, int]:
    """How one call runs ``groups`` magnitude groups of a token sum p^T . q (``widths``: the
    columns of p and q; :meth:`QtaRuntime._groups_call`): (whether p is the narrower operand,
    laid out block-diagonally, ``groups`` times as wide; the call's M; its N)."""
    pw, qw = widths
    narrow_p = pw <= qw
    return (narrow_p, pw * groups, qw) if narrow_p else (narrow_p, pw, qw * groups)


@dataclass
class GemmStats:
    """Accumulated accelerator figures of one GEMM kind."""

    gemms: int = 0   # GEMMs of this kind (one per layer and step)
    calls: int = 0   # kernel calls (more when a GEMM runs in magnitude groups or pieces)
    cycles: int = 0
    macs: int = 0
    bytes_moved: int = 0
    dataflows: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def utilization(self, pes: int) -> float:
        """MACs over cycles x PEs, over all calls."""
        return self.macs / (self.cycles * pes) if self.cycles else 0.0


class QtaRuntime:
    """What the accelerated LoRA layers share: the accelerator, the seed and step counter
    for stochastic rounding, and the per-GEMM-kind figures and time split of a run.

    ``smooth_alpha`` and ``wgrad_groups`` select the exact rescalings of the module docstring
    (SmoothQuant for H = X.A^T, balanced magnitude groups for dB and dA). ``stream`` tells the
    stochastic-rounding streams of data-parallel ranks apart (the rank; 0 is the single-process
    stream)."""

    SMOOTH_ALPHA = 0.5
    GROUP_RATIO = 16.0
    K_BUCKETS = 4
    """Plan buckets per octave of K for the weight-gradient GEMMs (their K, a token group, changes
    every step); README "Emulation speed" gives the modelled cost against a search per K."""

    def __init__(self, accelerator: Accelerator, seed: int = 0, smooth_alpha: float | None = SMOOTH_ALPHA,
                 wgrad_groups: bool = True, stream: int = 0):
        self.acc = accelerator
        self.seed = seed
        self.smooth_alpha = smooth_alpha
        self.wgrad_groups = wgrad_groups
        self.stream = stream
        self.step = 0
        self.stats: dict[str, GemmStats] = {kind.key: GemmStats() for kind in LORA_GEMMS}
        self._one_call: dict[tuple, bool] = {}  # token sums' decisions by board and shape (one_call)
        self.time_accelerator = 0.0
        self.time_quantization = 0.0
        self.offload: Any = None
        """The whole-step offload (:class:`~lora_qta.lora.offload.Offload`) when ``--offload all``
        installed one: the frozen layers' and attention's calls, timed and counted there."""

    def measured_times(self) -> tuple[float, float]:
        """(accelerator, quantization) seconds measured so far: the LoRA layers' accelerator
        calls and quantization and, with the whole-step offload, its calls and host quantization."""
        a, q = self.time_accelerator, self.time_quantization
        if self.offload is not None:
            a += sum(s.wall_s for s in self.offload.stats.values())
            q += sum(s.host_quant_s for s in self.offload.stats.values())
        return a, q

    def generator(self, layer_id: int, kind: int) -> torch.Generator:
        """The stochastic-rounding generator of one GEMM operand in this step."""
        g = torch.Generator()
        key = f"{self.seed}/{self.step}/{layer_id}/{kind}" + (f"/rank{self.stream}" if self.stream else "")
        g.manual_seed(zlib.crc32(key.encode()))
        return g

    def quant(self, x: torch.Tensor, axis: str, generator: torch.Generator | None = None,
              out: torch.Tensor | None = None) -> Quantized:
        t0 = time.perf_counter()
        done = quantize(x, axis, generator, out=out)
        self.time_quantization += time.perf_counter() - t0
        return done

    def gemm(self, kind: LoraGemmKind, a: torch.Tensor, b: torch.Tensor, part: bool = False,
             macs: int | None = None) -> torch.Tensor:
        """INT32 result of one INT8 GEMM on the accelerator (operands laid out as ``kind``
        says), recording its figures; ``part``: a further call of a GEMM already counted;
        ``macs``: the useful MACs when the call also multiplies known zeros (:meth:`token_sum`)."""
        t0 = time.perf_counter()
        # the weight gradients' K is a token group whose size changes every step: plan per K bucket
        r = self.acc.gemm(a, b, trans_a=kind.trans_a, trans_b=kind.trans_b,
                          k_bucket=self.K_BUCKETS if kind in (DB_GTH, DA_DHTX) else None)
        self.time_accelerator += time.perf_counter() - t0
        st = self.stats[kind.key]
        st.gemms += not part
        st.calls += r.calls
        st.cycles += r.cycles
        st.bytes_moved += r.bytes_moved
        m, k = (a.shape[1], a.shape[0]) if kind.trans_a else a.shape
        st.macs += m * k * (b.shape[0] if kind.trans_b else b.shape[1]) if macs is None else macs
        st.dataflows[r.dataflow + (f"{r.split:+d}" if r.split else "")] += 1
        return r.output

    def smoothed(self, x: torch.Tensor, a: torch.Tensor) -> tuple[Quantized, Quantized]:
        """INT8 operands of H = X.A^T: per-token X / s and per-tensor A * s (s: SmoothQuant
        factors of this batch, or 1 when ``smooth_alpha`` is None)."""
        t0 = time.perf_counter()
        if self.smooth_alpha is not None:
            s = smoothing_factors(x.detach().abs().amax(0), a.detach().abs().amax(0), self.smooth_alpha)
            x, a = x / s, a * s
        out = quantize(x, "row"), quantize(a, "tensor")
        self.time_quantization += time.perf_counter() - t0
        return out

    def token_sum(self, kind: LoraGemmKind, p: torch.Tensor, q: torch.Tensor,
                  generator: torch.Generator | None) -> torch.Tensor:
        """p^T . q summed over the tokens (rows) on the accelerator: the weight-gradient GEMMs
        (``kind`` dB or dA; ``p`` the gradient, rounded stochastically with ``generator``).

        With ``wgrad_groups``: tokens balanced and split into magnitude groups, one set of
        per-channel scales per group, the groups' INT32 results rescaled and added in fp32
        (float64 here); otherwise one per-channel scale over all tokens. The groups run as one
        accelerator call (:meth:`_groups_call`) where the cycle model says it costs no more
        than one call per group (:meth:`one_call`), else one call per group. Either way the
        groups are quantized in the same order (the same stochastic-rounding stream) to the
        same INT8 values and scales: the same result, bit for bit.
        """
        t0 = time.perf_counter()
        if self.wgrad_groups:  # balanced as each group's rows are gathered: (p / c)[idx] = p[idx] / c[idx]
            c, key = balance_factors(p, q)
            groups = magnitude_groups(key, self.GROUP_RATIO)
        else:
            groups = [None]
        tokens, widths = p.shape[0], (p.shape[1], q.shape[1])
        one = len(groups) > 1 and self.one_call(kind, tokens, widths, len(groups))
        narrow_p = groups_call_shape(widths, len(groups))[0]  # the operand one call lays out block-diagonally
        # one call: the wider operand's groups quantized straight into the rows of one buffer
        wide = torch.from_numpy(np.empty((tokens, widths[1 if narrow_p else 0]), dtype=np.int8)) if one else None
        self.time_quantization += time.perf_counter() - t0
        parts, row = [], 0  # quantized in group order: the same stochastic-rounding stream whatever the calls
        for idx in groups:
            t0 = time.perf_counter()
            if idx is None:
                pg, qg = p, q
            else:
                cg = c[idx, None]
                pg, qg = p[idx] / cg, q[idx] * cg
            self.time_quantization += time.perf_counter() - t0
            into = wide[row:row + pg.shape[0]] if one else None
            parts.append((self.quant(pg, "col", generator, out=None if narrow_p else into),
                          self.quant(qg, "col", out=into if narrow_p else None)))
            row += pg.shape[0]
        if one:
            accs = self._groups_call(kind, parts, wide, narrow_p)
        else:
            accs, part = [], False
            max_k = self.acc.board.max_k
            for pq, qq in parts:
                acc = torch.zeros(widths, dtype=torch.int64)
                for k0 in range(0, pq.q.shape[0], max_k):  # within the kernel's K: exact INT32 per call
                    acc += self.gemm(kind, pq.q[k0:k0 + max_k], qq.q[k0:k0 + max_k], part).long()
                    part = True
                accs.append(acc)
        out = torch.zeros(widths, dtype=torch.float64)
        for (pq, qq), acc in zip(parts, accs):
            out += acc.double() * pq.scale.T.double() * qq.scale.double()
        return out.float()

    def one_call(self, kind: LoraGemmKind, tokens: int, widths: tuple[int, int], groups: int) -> bool:
        """Whether ``groups`` magnitude groups of a token sum (``tokens`` in all; ``widths`` the
        columns of p and q) run as one call (:meth:`_groups_call`): when the kernel's cycle model
        gives that call at most the cycles of one call per group plus the saved calls' issue
        time (the board's ``call_us``), and every call compared lies within the board's limits
        (otherwise the per-group path, which cuts such GEMMs into pieces). Decided once per
        board and shape, with the tokens split evenly (the group sizes change every step; the
        modelled choice hardly changes with the split: README "Quantization accuracy"). The
        narrower operand (the rank side of a layer wider than its rank) grows ``groups`` times
        wider: on a board whose array that widening no longer fits, one call per group wins."""
        board = self.acc.board
        key = (board, kind.key, tokens, widths, groups)
        found = self._one_call.get(key)
        if found is None:
            pw, qw = widths
            _, m, n = groups_call_shape(widths, groups)
            if tokens > board.max_k or max(m, pw) > board.max_m or max(n, qw) > board.max_n:
                found = self._one_call[key] = False
                return found

            def cycles(m: int, k: int, n: int) -> int:
                call = lora_call((m, k, n, kind.trans_a, kind.trans_b, False))
                return planner.plan(board, call, k_bucket=self.K_BUCKETS).report.cycles

            sizes = [tokens // groups + (i < tokens % groups) for i in range(groups)]
            apart = sum(cycles(pw, t, qw) for t in sizes if t)
            issue = (groups - 1) * board.host.call_us * board.clock_mhz
            found = self._one_call[key] = cycles(m, tokens, n) <= apart + issue
        return found

    def _groups_call(self, kind: LoraGemmKind, parts: list[tuple[Quantized, Quantized]], wide: torch.Tensor,
                     narrow_p: bool) -> list[torch.Tensor]:
        """Every group's INT32 p_g^T . q_g (int64) from ONE accelerator call: ``wide``, the wider
        operand's groups stacked along the tokens (quantized into it by :meth:`token_sum`), and
        the narrower one's r columns (p's when ``narrow_p``) placed block-diagonally, group g's
        tokens in columns g*r..(g+1)*r and zeros elsewhere, so block g of the result sums over
        group g's tokens only. Exact: the zeros add nothing and K (all tokens) stays within the
        kernel's limit; the same integers as one call per group."""
        t0 = time.perf_counter()
        r = parts[0][0 if narrow_p else 1].q.shape[1]
        block = torch.zeros(wide.shape[0], r * len(parts), dtype=torch.int8)
        row = 0
        for g, (pq, qq) in enumerate(parts):
            narrow = (pq if narrow_p else qq).q
            block[row:row + narrow.shape[0], g * r:(g + 1) * r] = narrow
            row += narrow.shape[0]
        self.time_quantization += time.perf_counter() - t0  # operand preparation on the host
        a, b = (block, wide) if narrow_p else (wide, block)
        res = self.gemm(kind, a, b, macs=wide.shape[0] * r * wide.shape[1]).long()
        return [res[g * r:(g + 1) * r] if narrow_p else res[:, g * r:(g + 1) * r] for g in range(len(parts))]

    def state(self) -> dict[str, Any]:
        """The accumulated figures, JSON-able, for a checkpoint (a resumed run continues them)."""
        return {kind: {"gemms": st.gemms, "calls": st.calls, "cycles": st.cycles, "macs": st.macs,
                       "bytes_moved": st.bytes_moved, "dataflows": dict(st.dataflows)}
                for kind, st in self.stats.items()}

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue the figures of :meth:`state`."""
        for kind, v in state.items():
            if kind in self.stats:
                st = self.stats[kind]
                st.gemms, st.calls, st.cycles = int(v["gemms"]), int(v["calls"]), int(v["cycles"])
                st.macs, st.bytes_moved = int(v["macs"]), int(v["bytes_moved"])
                st.dataflows = defaultdict(int, {k: int(n) for k, n in v["dataflows"].items()})

    def report(self, since: dict[str, Any] | None = None) -> dict[str, Any]:
        """Per-GEMM-kind figures (cycles are the kernel's counter: modelled under emulation);
        ``since``: a :meth:`state` taken earlier, to count only what came after it."""
        pes = self.acc.board.pes
        out = {}
        for kind, s in self.stats.items():
            b = (since or {}).get(kind)
            if b:
                flows = {k: n - int(b["dataflows"].get(k, 0)) for k, n in s.dataflows.items()}
                s = GemmStats(s.gemms - int(b["gemms"]), s.calls - int(b["calls"]), s.cycles - int(b["cycles"]),
                              s.macs - int(b["macs"]), s.bytes_moved - int(b["bytes_moved"]),
                              defaultdict(int, {k: n for k, n in flows.items() if n}))
            out[kind] = {"gemms": s.gemms, "calls": s.calls, "cycles": s.cycles, "macs": s.macs,
                         "bytes_moved": s.bytes_moved, "utilization": round(s.utilization(pes), 4),
                         "dataflows": dict(s.dataflows)}
        return out


def lora_up(rt: QtaRuntime, h: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, Quantized]:
    """Y = H . B^T on the accelerator (H per token, B per tensor); returns Y (before the
    scaling) and B's INT8 copy, which serves dH = G . B in the backward pass too."""
    hq = rt.quant(h, "row")
    bq = rt.quant(b, "tensor")
    return dequantize(rt.gemm(Y_HBT, hq.q, bq.q), hq.scale, bq.scale), bq


def lora_grads(rt: QtaRuntime, g: torch.Tensor, x: torch.Tensor, h: torch.Tensor, bq: Quantized, s: float,
               lid: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dH, dA and dB of one LoRA layer from the output gradient ``g`` (its input ``x``, its
    H = X.A^T and B's INT8 copy ``bq``; ``s`` the scaling): three GEMMs on the accelerator."""
    # dH = s . G . B           (sums over out-features: per-token scales for G)
    gq_row = rt.quant(g, "row", rt.generator(lid, 0))
    dh = dequantize(rt.gemm(DH_GB, gq_row.q, bq.q), gq_row.scale, bq.scale, s)
    # dB = s . G^T . H         (sums over tokens: balanced magnitude groups, per-channel scales)
    db = rt.token_sum(DB_GTH, g, h, rt.generator(lid, 1)) * s
    # dA = dH^T . X            (sums over tokens: the same)
    da = rt.token_sum(DA_DHTX, dh, x, rt.generator(lid, 2))
    return dh, da, db


class QtaLoraFunction(torch.autograd.Function):
    """The six INT8 GEMMs of one LoRA layer; inputs are 2-D (tokens x features)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float,
                runtime: QtaRuntime, layer_id: int) -> torch.Tensor:
        rt = runtime
        xq, asq = rt.smoothed(x, a)
        h = dequantize(rt.gemm(H_XAT, xq.q, asq.q), xq.scale, asq.scale)
        y, bq = lora_up(rt, h, b)
        ctx.save_for_backward(x, a, b, h)
        ctx.scaling, ctx.rt, ctx.layer_id = scaling, rt, layer_id
        ctx.bq = bq  # B's INT8 copy serves dH = G.B too
        return (y * scaling).to(x.dtype)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, a, b, h = ctx.saved_tensors
        rt, s, lid = ctx.rt, ctx.scaling, ctx.layer_id
        dh, da, db = lora_grads(rt, g.contiguous(), x, h, ctx.bq, s, lid)
        # dX = dH . A              (sums over the rank: per-token scales for dH)
        dx = None
        if ctx.needs_input_grad[0]:
            dhq_row = rt.quant(dh, "row", rt.generator(lid, 3))
            aq = rt.quant(a, "tensor")
            dx = dequantize(rt.gemm(DX_DHA, dhq_row.q, aq.q), dhq_row.scale, aq.scale).to(x.dtype)
        return dx, da.to(a.dtype), db.to(b.dtype), None, None, None


class QtaLoraLinear(PeftLoraLinear):
    """peft's LoRA Linear with its LoRA branch on the accelerator (when a runtime is attached)."""

    qta_runtime: QtaRuntime | None = None
    qta_layer_id: int = 0
    qta_fused: Any = None
    """The :class:`~lora_qta.lora.fused.FusedLinear` of ``--fuse-lora`` (None: unfused)."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        rt = self.qta_runtime
        if rt is None or self.disable_adapters or self.merged or kwargs.get("adapter_names") is not None:
            return super().forward(x, *args, **kwargs)
        if self.qta_fused is not None and self.qta_fused.active():  # --fuse-lora: one GEMM with the base
            return self.qta_fused(x)
        result = self.base_layer(x, *args, **kwargs)
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            if name in self.lora_variant:
                raise AdapterError("lora-qta accelerates plain LoRA only (no DoRA or other variants): "
                                   "use a plain LoraConfig, or precision fp32 for the variant")
            dropout = self.lora_dropout[name]
            xd = dropout(x).reshape(-1, x.shape[-1]).contiguous()
            scaling = float(self.scaling[name])
            y = QtaLoraFunction.apply(xd, self.lora_A[name].weight, self.lora_B[name].weight,
                                      scaling, rt, self.qta_layer_id)
            bias = self.lora_B[name].bias  # peft's lora_bias: a vector add, on the host in fp32
            if bias is not None:
                y = y + bias * scaling
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
