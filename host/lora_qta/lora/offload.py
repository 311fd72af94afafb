"""Whole-step INT8 offload (``--offload all``): every GEMM of a training step on the accelerator.

:func:`install` rewires a diffusers ``UNet2DConditionModel`` (the digits UNet or Stable
Diffusion's) so that, besides the six LoRA GEMMs of :class:`~lora_qta.lora.layer.QtaLoraLinear`,
the frozen base model's GEMMs run INT8 on the accelerator (board or emulation):

* **frozen nn.Linear** (incl. the base layer of every LoRA-adapted layer): forward
  ``Y = X . W^T`` and input gradient ``dX = dY . W``; no weight gradient (the base is frozen).
* **frozen nn.Conv2d**: forward as :meth:`Accelerator.conv2d` on the NHWC INT8 map (implicit
  GEMM, no im2col on the host); input gradient as a convolution of dY with the flipped,
  transposed weights (padding ``k - 1 - p``; a stride-2 convolution reads dY with input
  dilation 2, ``out_size`` = the input's size). Convolutions the kernel cannot run (groups != 1,
  kernel dilation, stride > 2, non-square kernel/stride/padding, padding modes other than zeros,
  string padding) stay fp32 in PyTorch and every such call is counted (``fallback_calls`` and
  the reasons in the report) -- never silently.
* **attention matmuls** (:class:`Int8AttnProcessor`, set with ``unet.set_attn_processor``):
  ``S = Q.K^T`` and ``O = P.V`` forward, ``dP = dO.V^T``, ``dV = P^T.dO``, ``dQ = dS.K``,
  ``dK = dS^T.Q`` backward, each one :meth:`Accelerator.batched_gemm` over (batch x heads).
  Softmax and its backward (``dS = P * (dP - rowsum(dP * P))``) stay fp32 on the host.

Quantization (all symmetric INT8, |q| <= 127), in one of four schemes (:data:`SCHEMES`,
``--offload-scheme``; their one-line summaries: :data:`~lora_qta.lora.schemes.SCHEME_DOCS`):

* **row**: every host-quantized operand gets *current* scales along the one
  legal axis of its GEMM -- constant along the summed dimension, one per row of op(A) or
  column of op(B): per token for a Linear's X and dY, per image for a convolution's X and dY
  (every tap an output pixel reads comes from its own image), and for attention per token /
  per row or column of P and dS / per channel as :class:`_AttnRowFn` tabulates (an operand two
  GEMMs sum over different dimensions is quantized twice). The weights' per-channel scales are
  the other axis, so the output takes two scales: it is written INT32 and dequantized on the
  host (``acc x row scale x column scale``). No history, no saturation, no recompute: the scale
  comes from the tensor itself (an amax reduction and a quantization on the host, counted in
  ``host_quant_*``). Why: the samples of a batch sit at different diffusion timesteps, so their
  activations and gradients differ by orders of magnitude; one per-tensor scale leaves the
  small ones a few levels (measured: README, "Whole-step INT8 offload").
* **row8**: the operands as ``row`` (current per-row scales on the host), and the Linear and
  Conv2d outputs INT8 from the epilogue: the output ``y[i, j] = sx[i] * sw[j] * acc[i, j]`` is
  written as the *row-normalized* ``z[i, j] = sw[j] * acc[i, j]`` (the row scale taken out), with
  per-column fixed-point multipliers ``sw[j] / s_z`` and a delayed per-tensor scale ``s_z`` of
  ``z`` -- the ``tensor`` scheme's output handling below (amax history per output site, the
  kernel's amax, saturation recompute, INT32 calibration call) -- and the host dequantizes
  ``y = q * sx[i] * s_z``. Dividing by the input's own row scale gives every row of ``z`` the
  range of a unit-scaled input, so one delayed scale fits samples whose magnitudes differ by
  orders; it needs no kernel change (the epilogue's per-column mode). The attention matmuls keep
  ``row``'s INT32 outputs: their per-(batch x head) column scales do not fit the one scale vector
  of a batched call.
* **row8c**: ``row8`` with a delayed scale per output channel: ``s_z`` becomes a vector
  ``s_z[j]`` (each output site keeps an amax history of :data:`COLUMN_HISTORY` vectors, one
  amax per channel; no channel's scale below the largest's / :data:`COLUMN_RANGE`), folded into
  the same per-column multipliers ``sw[j] / s_z[j]``, so the kernel is unchanged. The kernel
  reports one amax per call, so the per-channel amax is reduced on the host from the INT8
  output it dequantizes (a channel at the INT8 limit of a call with saturations takes the
  kernel's amax, an upper bound); recompute, calibration and attention as ``row8``. Measured
  (README): a third to a half of ``row8``'s extra LoRA-gradient error over ``row`` removed, and
  no concept accuracy lost to fp32 on 15 seeds, where ``row8`` lost about 5.6 pp; the default.
* **tensor**: delayed per-tensor scales and INT8 outputs, as follows.

* **weights** (every scheme) are quantized ONCE at :func:`install`, per output channel for the forward and per
  input channel for the input gradient (a scale must be constant along the summed dimension,
  and the input gradient sums over the output channels) -- two INT8 copies per layer, placed
  in device memory once for the run (:func:`place_weights`, :meth:`Accelerator.resident`: a
  ``pynq.allocate``'d buffer on a board, emulated DDR here) and read in place by every call;
  :func:`uninstall` frees them. Copies beyond the accelerator's ``resident_limit`` and
  convolution weights whose channels are padded per call stay on the per-call upload path
  (counted in the report's ``weights``).
* **host-quantized operands** (``tensor`` scheme; the activations X entering a Linear/Conv, the gradients dY, Q,
  K, V, the probabilities P, dO and dS): per-tensor scales with *delayed scaling* -- every site
  (a tensor role of one layer, e.g. ``down_blocks.0.resnets.0.conv1.x``) keeps an amax history
  of :data:`HISTORY` entries (as NVIDIA Transformer Engine does for FP8) and quantizes with
  ``max(history) / 127``. This is a HOST pass (the ARM's work: one streaming pass whose scale is
  known before the data is read; the amax of the tensor for the history is reduced in the same
  pass here with a torch reduction). Elements and time are counted (``host_quant_*``). If more
  than :data:`SAT_THRESHOLD` of the tensor's elements would saturate, it is requantized with a
  fresh scale from its own amax (counted in ``host_recomputes``); saturations at or below the
  threshold are counted in ``host_saturated``. A site's first use (empty history) takes the
  fresh scale.
* **GEMM outputs** (``tensor`` scheme; ``row8``'s Linear/Conv outputs as above): the epilogue writes INT8 with per-column (Linear/Conv: per output channel
  of the weight scale) or per-tensor (attention O, dV, dQ, dK) fixed-point scales that fold the
  operand scales and the output site's delayed scale ``max(history) / 127``. The kernel's
  reported amax (max |value| before saturation, in output units) updates the history -- no
  extra pass. When ``sat_count / elements`` exceeds :data:`SAT_THRESHOLD`, the call is
  recomputed with the fresh scale ``amax * scale / 127`` (counted in ``recomputes``; after
  :data:`MAX_RECOMPUTES` it runs with INT32 output, counted too); saturations at or below the
  threshold are counted in ``saturated``. An output site's first call (empty history) runs with
  INT32 output (``calibration_calls``) and seeds the history from the dequantized result. The
  attention scores S and dP (inputs of softmax and its backward) are always INT32 outputs.
* dequantization (``q * scale``), bias, softmax, group norm, SiLU, loss and AdamW are fp32 on
  the host. Rounding is round-half-to-even everywhere (the epilogue's ``nearest_even``).

Per-family accounting (:meth:`Offload.report`): calls, modelled cycles, bytes, MACs and
utilization for ``linear``, ``conv``, ``attention`` and ``lora`` (the LoRA runtime's six GEMMs),
and ``fused`` with ``fuse_lora`` (:mod:`.fused`: a LoRA layer and its base layer in one call per
direction), plus fallbacks and recomputes; the training loop writes it into report.json under
``offload``.
"""

from __future__ import annotations

import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, DeviceMemoryError, DivergedError, LimitError
from ..runtime.accelerator import Accelerator, GemmResult, Resident, fixed_point_scale
from .quant import dequantize, quantize_along
from .quant_native import dequantize_rows_cols
from .schemes import COLUMN_SCHEMES, DELAYED_SCHEMES, ROW_SCHEMES, SCHEMES

QMAX = 127
HISTORY = 16
"""Entries of an amax history (Transformer Engine's default for FP8 delayed scaling)."""
COLUMN_HISTORY = 4
"""Entries of a per-channel amax history (``row8c``): 1, 2 and 4 entries gave about the same
LoRA-gradient error in the ablation, 16 a higher one (README, "Where row8's extra error comes from")."""
COLUMN_RANGE = 256.0
"""A per-channel output scale is at least the largest channel's divided by this."""
SAT_THRESHOLD = 1e-3
"""A quantization (host) or INT8 output (epilogue) with more than this fraction of its elements
saturated is recomputed with a fresh scale; fewer are counted as saturated."""
MAX_RECOMPUTES = 2
"""Recomputes of one call with fresher scales before it falls back to an INT32 output."""
FAMILIES = ("linear", "conv", "attention", "lora")
DIRECTIONS = ("fwd", "bwd")
"""The forward GEMMs of a family and its input-gradient (backward) GEMMs."""
OFFLOAD_MODES = ("lora", "all")
EPS = 1e-12


def default_history(scheme: str) -> int:
    """The amax history length of ``scheme``: :data:`COLUMN_HISTORY` for the per-channel output
    scales of :data:`COLUMN_SCHEMES`, else :data:`HISTORY`."""
    return COLUMN_HISTORY if scheme in COLUMN_SCHEMES else HISTORY


class AmaxHistory:
    """The last ``length`` amax values of one quantized tensor site: floats (a per-tensor scale)
    or float64 vectors (``row8c``'s output sites: one amax per output channel)."""

    def __init__(self, length: int = HISTORY):
        self.values: deque[float | np.ndarray] = deque(maxlen=length)

    def scale(self) -> float | np.ndarray | None:
        """``max(history) / 127``, or None while the history is empty (or all zero). For vector
        entries the maximum is per channel, and no channel's scale falls below the largest
        channel's divided by :data:`COLUMN_RANGE` (a channel that was zero or nearly so keeps a
        multiplier in the epilogue's range)."""
        if self.values and isinstance(self.values[0], np.ndarray):
            m = np.max(np.stack(tuple(self.values)), axis=0)
            top = float(m.max()) if m.size else 0.0
            return np.maximum(m, top / COLUMN_RANGE) / QMAX if top > 0 else None
        m = max(self.values, default=0.0)
        return m / QMAX if m > 0 else None

    def push(self, amax: float | np.ndarray | list[float]) -> None:
        """Append one amax: a number, or a vector (one per channel; a list from a checkpoint)."""
        self.values.append(np.array(amax, dtype=np.float64) if np.ndim(amax) else float(amax))

    def saved(self) -> list[float | list[float]]:
        """The entries as JSON-able Python floats (exact through JSON), for :meth:`Offload.state`."""
        return [v.tolist() if isinstance(v, np.ndarray) else v for v in self.values]


@dataclass
class FamilyStats:
    """What one GEMM family did on the accelerator and on the host."""

    calls: int = 0
    cycles: int = 0
    cycles_model: int = 0
    macs: int = 0
    bytes_moved: int = 0
    wall_s: float = 0.0
    recomputes: int = 0
    int32_after_recompute: int = 0
    calibration_calls: int = 0
    saturated: int = 0
    host_quant_elements: int = 0
    host_quant_s: float = 0.0
    host_recomputes: int = 0
    host_saturated: int = 0
    fallback_calls: int = 0
    fallback_macs: int = 0
    fallback_reasons: dict[str, int] = field(default_factory=dict)
    dataflows: dict[str, int] = field(default_factory=dict)

    def add(self, r: GemmResult, macs: int) -> None:
        self.calls += 1
        self.cycles += r.cycles
        self.cycles_model += r.cycles_model
        self.macs += macs
        self.bytes_moved += r.bytes_moved
        self.wall_s += r.wall_s
        key = r.dataflow + (f"{r.split:+d}" if r.split else "")
        self.dataflows[key] = self.dataflows.get(key, 0) + 1

    def as_dict(self, pes: int) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items()}
        d["utilization"] = round(self.macs / (self.cycles * pes), 4) if self.cycles else 0.0
        return d


Launch = Callable[..., GemmResult]
"""``launch(out=..., mult=..., shift=..., scale_mode=...)`` runs one accelerator call."""


class Offload:
    """The state of a whole-step offload: accelerator, amax histories, per-family figures."""

    def __init__(self, acc: Accelerator, threshold: float = SAT_THRESHOLD, history: int | None = None,
                 host_fp32: frozenset[str] = frozenset(), scheme: str = SCHEMES[0]):
        if scheme not in SCHEMES:
            raise LimitError(f"the offload's quantization scheme must be one of {', '.join(SCHEMES)}, not {scheme!r}")
        self.acc = acc
        self.scheme = scheme
        self.per_channel = scheme in COLUMN_SCHEMES
        """Whether the INT8 Linear/Conv outputs take a delayed scale per output channel (``row8c``)."""
        history = default_history(scheme) if history is None else history
        self.host_fp32 = frozenset(host_fp32)
        """``family.direction`` keys (e.g. ``attention.bwd``) computed in fp32 on the host instead
        (an ablation for measurements: ``scripts/offload_ablation.py``; empty in training)."""
        self.threshold = threshold
        self.history_length = history
        self.sites: dict[str, AmaxHistory] = {}
        self.stats: dict[str, FamilyStats] = {f: FamilyStats() for f in FAMILIES if f != "lora"}
        self.lora_runtime = None            # a QtaRuntime, reported as family "lora"
        self.wrapped: dict[str, int] = {"linear": 0, "conv": 0, "conv_fallback": 0, "attention": 0}
        # frozen INT8 weight copies: resident or per call, and the bytes placed for the run (kept
        # after the run frees them, so the report written at the end still says what was resident)
        self.weights: dict[str, int] = {"resident": 0, "per_call": 0, "resident_bytes": 0}
        self._restore: list[nn.Module] = []
        self._processors: dict[str, Any] | None = None
        self.fused: list[Any] = []          # --fuse-lora: FusedLinear layers (lora/fused.py)
        self.fusion: dict[str, int] = {"layers": 0, "a_rewrites": 0, "a_rewrite_bytes": 0}

    def make_resident(self, host: torch.Tensor, name: str) -> Any:
        """The resident handle of the INT8 weight ``host`` (:meth:`Accelerator.resident`), or
        ``host`` itself when it does not fit the accelerator's budget (the per-call path); counted
        in :attr:`weights` either way."""
        try:
            before = self.acc.resident_bytes
            handle = self.acc.resident(host, name)
        except DeviceMemoryError:
            self.weights["per_call"] += 1
            return host
        self.weights["resident"] += 1
        self.weights["resident_bytes"] += self.acc.resident_bytes - before
        return handle

    def fp32(self, family: str, direction: str) -> bool:
        """Whether the ablation keeps this family's GEMMs of ``direction`` fp32 on the host."""
        return f"{family}.{direction}" in self.host_fp32

    def site(self, name: str) -> AmaxHistory:
        h = self.sites.get(name)
        if h is None:
            h = self.sites[name] = AmaxHistory(self.history_length)
        return h

    # -- host quantization of an operand -------------------------------------------------
    def quant_input(self, family: str, site: str, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(INT8 tensor, scale) of ``x`` with the site's delayed per-tensor scale (a HOST pass;
        see the module docstring), recomputed with a fresh scale above the saturation threshold."""
        t0 = time.perf_counter()
        st = self.stats[family]
        hist = self.site(site)
        xf = x.detach().float()
        amax = float(xf.abs().max()) if xf.numel() else 0.0
        if not np.isfinite(amax):
            raise DivergedError(f"NaN or Inf reached the INT8 quantizer at {site}: the training diverged; "
                                "lower the learning rate")
        fresh = max(amax, EPS) / QMAX
        s = hist.scale() or fresh
        y = (xf / s).round_()
        sat = int((y.abs() > QMAX).sum())
        if sat > self.threshold * y.numel():
            st.host_recomputes += 1
            s = fresh
            y = (xf / s).round_()
            sat = int((y.abs() > QMAX).sum())
        st.host_saturated += sat
        hist.push(amax)
        q = y.clamp_(-QMAX, QMAX).to(torch.int8).contiguous()
        st.host_quant_elements += q.numel()
        st.host_quant_s += time.perf_counter() - t0
        return q, s

    def quant_rows(self, family: str, x: torch.Tensor, dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """(INT8 tensor, scales) of ``x`` with current scaling along ``dims`` (the dimensions a
        GEMM sums over: the scale is ``amax / 127`` over them, one per remaining index, kept as
        size-1 dimensions for broadcasting; :func:`~lora_qta.lora.quant.quantize_along`). A HOST
        pass: the amax reduction and the quantization read each row twice (a row stays in cache);
        counted in ``host_quant_*``."""
        t0 = time.perf_counter()
        st = self.stats[family]
        q, s = quantize_along(x, dims, where=family)
        st.host_quant_elements += q.numel()
        st.host_quant_s += time.perf_counter() - t0
        return q, s

    def run_int32(self, family: str, launch: Launch, scales: tuple[torch.Tensor, ...], macs: int) -> torch.Tensor:
        """The dequantized float output of one GEMM with an INT32 output: the accumulator times
        each of ``scales`` (float32, broadcast: e.g. per row of op(A) and per column of op(B)),
        in float32 (:func:`~lora_qta.lora.quant.dequantize`: fewer passes, the same values)."""
        r = launch(out="int32")
        self.stats[family].add(r, macs)
        return dequantize(_tensor(r.output), *scales)

    # -- one accelerator call with a delayed-scaled INT8 output ----------------------------
    def run(self, family: str, site: str | None, launch: Launch, base: float | np.ndarray, macs: int,
            scale_mode: str = "tensor", rows: torch.Tensor | None = None) -> torch.Tensor:
        """The dequantized float output of one GEMM whose INT32 accumulator times ``base`` (the
        product of the operands' scales: a float, or a per-column vector with ``scale_mode``
        ``col``) is the real value, times ``rows`` if given (the per-row input scales of the
        ``row8`` schemes, broadcast: ``base`` then holds only the column scales and the site's
        history the row-normalized output's amax). ``site`` None: INT32 output; else INT8 output
        with the site's delayed scale (see the module docstring): per output channel under
        ``row8c`` (:attr:`per_channel`, with ``rows``), else per tensor."""
        st = self.stats[family]
        base_np = np.asarray(base, dtype=np.float64)
        base_t = torch.from_numpy(base_np.astype(np.float32)) if base_np.ndim else float(base_np)
        hist = self.site(site) if site is not None else None
        channels = self.per_channel and rows is not None and scale_mode == "col"
        s_out = hist.scale() if hist is not None else None
        if hist is not None and s_out is None:
            st.calibration_calls += 1
        tries = 0
        while s_out is not None:
            mult, shift = fixed_point_scale(base_np / s_out)
            if base_np.ndim == 0 and np.ndim(s_out) == 0:
                mult, shift = int(mult), int(shift)
            r = launch(out="int8", mult=mult, shift=shift, scale_mode=scale_mode)
            st.add(r, macs)
            elements = int(np.prod(r.output.shape))
            if r.sat_count <= self.threshold * elements:
                st.saturated += r.sat_count
                q = _tensor(r.output)
                if channels:     # the host's amax per channel, from the INT8 output it dequantizes
                    cols = torch.from_numpy(s_out.astype(np.float32))
                    fused = dequantize_rows_cols(q, rows, cols)  # one C pass: the output and its amax
                    if fused is None:
                        hist.push(_channel_amax_int8(q, r.amax, r.sat_count) * s_out)
                        return dequantize(q, rows, cols)
                    hist.push(_channel_bound(fused[1].astype(np.float64), r.amax, r.sat_count) * s_out)
                    return fused[0]
                hist.push(r.amax * s_out)        # the kernel's amax: no pass over the data
                return dequantize(q, rows, s_out) if rows is not None else dequantize(q, s_out)
            st.recomputes += 1
            tries += 1
            if tries > MAX_RECOMPUTES:
                st.int32_after_recompute += 1
                break
            s_out = r.amax * s_out / QMAX         # fresh scale from the amax the kernel saw
        r = launch(out="int32")
        st.add(r, macs)
        y = dequantize(_tensor(r.output), base_t)
        if hist is not None:
            if channels:
                hist.push(y.reshape(-1, y.shape[-1]).abs().amax(0).double().numpy() if y.numel()
                          else np.zeros(y.shape[-1]))
            else:
                hist.push(float(y.abs().max()) if y.numel() else 0.0)
        return y if rows is None else y.mul_(rows)

    def fallback(self, family: str, reason: str, macs: int) -> None:
        st = self.stats[family]
        st.fallback_calls += 1
        st.fallback_macs += macs
        st.fallback_reasons[reason] = st.fallback_reasons.get(reason, 0) + 1

    # -- checkpoints ---------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """What a resumed run needs to continue bit-identically, JSON-able: every site's amax
        history (the delayed scales of the ``tensor`` scheme; Python floats round-trip exactly
        through JSON) and the per-family figures (recompute, calibration and saturation counters
        included)."""
        return {"scheme": self.scheme, "fuse_lora": bool(self.fused), "fusion": dict(self.fusion),
                "history_length": self.history_length, "threshold": self.threshold,
                "sites": {name: h.saved() for name, h in self.sites.items()},
                "stats": {fam: {k: (dict(v) if isinstance(v, dict) else v) for k, v in st.__dict__.items()}
                          for fam, st in self.stats.items()}}

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state` (the amax histories replace any this offload holds)."""
        if state.get("scheme", "tensor") != self.scheme:
            raise CheckpointError(f"the checkpoint's offload used the {state.get('scheme', 'tensor')!r} scheme, this "
                                  f"run {self.scheme!r}")
        if bool(state.get("fuse_lora", False)) != bool(self.fused):
            raise CheckpointError(f"the checkpoint's offload ran {'with' if state.get('fuse_lora') else 'without'} "
                                  f"--fuse-lora, this run {'with' if self.fused else 'without'}")
        if int(state["history_length"]) != self.history_length:
            raise CheckpointError(f"the checkpoint's amax histories hold {state['history_length']} entries, "
                                  f"this offload {self.history_length}")
        self.fusion.update({k: int(v) for k, v in state.get("fusion", {}).items() if k != "layers"})
        self.sites = {}
        for name, values in state["sites"].items():
            kinds = {len(v) if isinstance(v, list) else None for v in values}
            if len(kinds) > 1 or (self.per_channel and name.endswith((".y", ".dx")) and None in kinds):
                raise CheckpointError(f"the checkpoint's amax history of {name} mixes entries "
                                      f"({sorted(map(str, kinds))}): every entry must be one number, or under "
                                      "row8c one amax per output channel; resume from another checkpoint")
            h = self.site(name)
            for v in values:
                h.push(v)
        for fam, figures in state["stats"].items():
            if fam in self.stats:
                known = FamilyStats().__dict__
                self.stats[fam] = FamilyStats(**{k: (dict(v) if isinstance(v, dict) else v)
                                                 for k, v in figures.items() if k in known})

    # -- the report ----------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        """Per-family figures (cycles: the kernel's counter, modelled under emulation)."""
        pes, clock = self.acc.board.pes, self.acc.board.clock_mhz
        fam = {k: v.as_dict(pes) for k, v in self.stats.items()}
        lora = FamilyStats()
        if self.lora_runtime is not None:
            for s in self.lora_runtime.stats.values():
                lora.calls += s.calls
                lora.cycles += s.cycles
                lora.cycles_model += s.cycles
                lora.macs += s.macs
                lora.bytes_moved += s.bytes_moved
                for d, n in s.dataflows.items():
                    lora.dataflows[d] = lora.dataflows.get(d, 0) + n
        fam["lora"] = lora.as_dict(pes)
        cycles = sum(f["cycles"] for f in fam.values())
        return {
            "mode": "all", "scheme": self.scheme, "board": self.acc.board.name, "backend": self.acc.backend,
            "note": "cycles are the kernel's counter: modelled under emulation; host_quant_* is host "
                    "(ARM) work measured on this machine",
            "threshold_saturation_rate": self.threshold, "amax_history": self.history_length,
            "wrapped_layers": dict(self.wrapped), "sites": len(self.sites),
            "weights": dict(self.weights), "fuse_lora": bool(self.fused),
            **({"fusion": dict(self.fusion)} if self.fused else {}),
            "families": fam, "total_cycles": cycles, "total_macs": sum(f["macs"] for f in fam.values()),
            "modelled_board_time_s": cycles / (clock * 1e6),
            "fallback_calls": sum(f["fallback_calls"] for f in fam.values()),
            "recomputes": sum(f["recomputes"] + f["host_recomputes"] for f in fam.values()),
        }


def _tensor(x: Any) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))


def _channel_amax_int8(q: torch.Tensor, kernel_amax: float, saturated: int) -> np.ndarray:
    """Per output channel (last axis) max |q| of an INT8 output, float64. When the kernel
    counted saturated elements, a channel at the INT8 limit takes the kernel's amax (the largest
    value before saturation over every channel, in each channel's own units: an upper bound of
    the channel's). The INT8 output cannot tell a channel that saturated from one that rounded to
    the limit, so such a channel's scale may be larger than it needs for the next
    :data:`COLUMN_HISTORY` calls (a per-column amax reported by the kernel would avoid it)."""
    q2 = q.reshape(-1, q.shape[-1]).numpy()
    if not q2.shape[0]:
        return np.zeros(q2.shape[1])
    # numpy reduces along the rows with the channels vectorized: 5-10x faster here than torch's
    # aminmax over dim 0 on INT8 (measured on this machine, one thread)
    return _channel_bound(np.maximum(q2.max(0).astype(np.float64), -q2.min(0).astype(np.float64)),
                          kernel_amax, saturated)


def _channel_bound(m: np.ndarray, kernel_amax: float, saturated: int) -> np.ndarray:
    """The per-channel max |q| ``m`` (float64) of an INT8 output, with a channel at the INT8
    limit raised to the kernel's amax when the call saturated (see :func:`_channel_amax_int8`)."""
    return np.where(m >= QMAX, max(float(kernel_amax), float(QMAX)), m) if saturated else m


def quantize_weight(w2d: torch.Tensor, axis: int) -> tuple[torch.Tensor, np.ndarray]:
    """Per-channel INT8 weights: scale = amax / 127 over every dimension but ``axis`` (0: rows,
    1: columns of the 2-D ``w2d``); returns (INT8 tensor, float64 scales)."""
    w = w2d.detach().float()
    amax = w.abs().amax(dim=1 - axis, keepdim=True).clamp_min(EPS)
    s = amax / QMAX
    q = (w / s).round_().clamp_(-QMAX, QMAX).to(torch.int8).contiguous()
    return q, s.flatten().double().numpy()


# ------------------------------------------------------------------------------ Linear
class _LinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: "Int8Linear") -> torch.Tensor:
        ctx.layer = layer
        return layer.forward_int8(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        return (ctx.layer.backward_int8(g.contiguous()) if ctx.needs_input_grad[0] else None), None


class Int8Linear:
    """The INT8 path of one frozen ``nn.Linear`` (installed as the module's ``forward``)."""

    def __init__(self, off: Offload, name: str, module: nn.Linear):
        self.off, self.name, self.module = off, name, module
        w = module.weight
        self.n, self.k = w.shape
        self.wq_fwd, self.sw_fwd = quantize_weight(w, 0)   # per output channel (rows of W)
        self.wq_bwd, self.sw_bwd = quantize_weight(w, 1)   # per input channel (columns of W)
        self.w_fwd: Any = self.wq_fwd                      # what the calls pass: resident handles
        self.w_bwd: Any = self.wq_bwd                      # once place_weights() placed them
        self.sw_fwd_t, self.sw_bwd_t = torch.from_numpy(self.sw_fwd).float(), torch.from_numpy(self.sw_bwd).float()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = _LinearFn.apply(x.reshape(-1, self.k), self).reshape(*shape[:-1], self.n)
        if self.module.bias is not None:
            y = y + self.module.bias
        return y.to(x.dtype)

    def forward_int8(self, x2d: torch.Tensor) -> torch.Tensor:
        off, acc = self.off, self.off.acc
        if off.fp32("linear", "fwd"):
            return x2d.float() @ self.module.weight.float().t()
        macs = x2d.shape[0] * self.k * self.n
        if off.scheme in ROW_SCHEMES:  # per token x per output channel
            xq, sxr = off.quant_rows("linear", x2d, (1,))
            launch = lambda **ep: acc.gemm(xq, self.w_fwd, trans_b=True, **ep)  # noqa: E731
            if off.scheme == "row":  # INT32 out, dequantized on the host
                return off.run_int32("linear", launch, (sxr, self.sw_fwd_t), macs)
            return off.run("linear", f"{self.name}.y", launch, self.sw_fwd, macs, "col", rows=sxr)
        xq, sx = off.quant_input("linear", f"{self.name}.x", x2d)
        launch = lambda **ep: acc.gemm(xq, self.w_fwd, trans_b=True, **ep)  # noqa: E731
        return off.run("linear", f"{self.name}.y", launch, sx * self.sw_fwd, xq.shape[0] * self.k * self.n, "col")

    def backward_int8(self, g: torch.Tensor) -> torch.Tensor:
        off, acc = self.off, self.off.acc
        if off.fp32("linear", "bwd"):
            return g.float() @ self.module.weight.float()
        macs = g.shape[0] * self.k * self.n
        if off.scheme in ROW_SCHEMES:  # per token x per input channel
            gq, sgr = off.quant_rows("linear", g, (1,))
            launch = lambda **ep: acc.gemm(gq, self.w_bwd, **ep)  # noqa: E731
            if off.scheme == "row":
                return off.run_int32("linear", launch, (sgr, self.sw_bwd_t), macs)
            return off.run("linear", f"{self.name}.dx", launch, self.sw_bwd, macs, "col", rows=sgr)
        gq, sg = off.quant_input("linear", f"{self.name}.dy", g)
        launch = lambda **ep: acc.gemm(gq, self.w_bwd, **ep)  # noqa: E731
        return off.run("linear", f"{self.name}.dx", launch, sg * self.sw_bwd, gq.shape[0] * self.k * self.n, "col")


# ------------------------------------------------------------------------------ Conv2d
def conv_unsupported(m: nn.Conv2d) -> str | None:
    """Why the accelerator cannot run this convolution (None: it can)."""
    if m.groups != 1:
        return "groups != 1"
    if isinstance(m.padding, str):
        return f"padding={m.padding!r}"
    if m.padding_mode != "zeros":
        return f"padding_mode={m.padding_mode!r}"
    if tuple(m.dilation) != (1, 1):
        return "kernel dilation != 1"
    kh, kw = m.kernel_size
    if kh != kw or m.padding[0] != m.padding[1] or m.stride[0] != m.stride[1]:
        return "non-square kernel, stride or padding"
    if m.stride[0] not in (1, 2):
        return f"stride {m.stride[0]} (the input gradient needs input dilation 1 or 2)"
    if m.padding[0] > kh - 1:
        return "padding larger than kernel - 1"
    return None


class _ConvFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: "Int8Conv2d") -> torch.Tensor:
        ctx.layer, ctx.hw = layer, tuple(x.shape[2:])
        return layer.forward_int8(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        return (ctx.layer.backward_int8(g, ctx.hw) if ctx.needs_input_grad[0] else None), None


class Int8Conv2d:
    """The INT8 path of one frozen ``nn.Conv2d`` (NCHW in and out; NHWC INT8 on the accelerator)."""

    def __init__(self, off: Offload, name: str, module: nn.Conv2d):
        self.off, self.name, self.module = off, name, module
        w = module.weight.detach()                               # cout, cin, kh, kw
        self.cout, self.cin, self.kh, self.kw = w.shape
        self.stride, self.pad = module.stride[0], module.padding[0]
        # forward: cout x (ky, kx, ci) (trans_w), per output channel
        self.wq_fwd, self.sw_fwd = quantize_weight(w.permute(0, 2, 3, 1).reshape(self.cout, -1), 0)
        # input gradient: flipped, transposed weights, cin x (ky, kx, co), per input channel
        wt = w.flip(2, 3).permute(1, 2, 3, 0).reshape(self.cin, -1)
        self.wq_bwd, self.sw_bwd = quantize_weight(wt, 0)
        self.w_fwd: Any = self.wq_fwd                      # resident handles once placed
        self.w_bwd: Any = self.wq_bwd
        self.sw_fwd_t, self.sw_bwd_t = torch.from_numpy(self.sw_fwd).float(), torch.from_numpy(self.sw_bwd).float()

    def macs(self, imgs: int, ho: int, wo: int) -> int:
        return imgs * ho * wo * self.kh * self.kw * self.cin * self.cout

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = _ConvFn.apply(x, self)
        if self.module.bias is not None:
            y = y + self.module.bias.view(1, -1, 1, 1)
        return y.to(x.dtype)

    def forward_int8(self, x: torch.Tensor) -> torch.Tensor:
        off, acc = self.off, self.off.acc
        if off.fp32("conv", "fwd"):
            return nn.functional.conv2d(x.float(), self.module.weight.float(), None, self.stride, self.pad)
        if off.scheme in ROW_SCHEMES:  # per image (constant over the taps an output pixel reads)
            xq, sx_img = off.quant_rows("conv", x.permute(0, 2, 3, 1), (1, 2, 3))
        else:
            xq, sx = off.quant_input("conv", f"{self.name}.x", x.permute(0, 2, 3, 1))

        def launch(**ep):
            return acc.conv2d(xq, self.w_fwd, kernel_size=(self.kh, self.kw), stride=self.stride,
                              padding=self.pad, trans_w=True, **ep)

        imgs, h, w, _ = xq.shape
        ho = (h + 2 * self.pad - self.kh) // self.stride + 1
        wo = (w + 2 * self.pad - self.kw) // self.stride + 1
        if off.scheme == "row":
            y = off.run_int32("conv", launch, (sx_img, self.sw_fwd_t), self.macs(imgs, ho, wo))
        elif off.scheme in ROW_SCHEMES:  # row8, row8c
            y = off.run("conv", f"{self.name}.y", launch, self.sw_fwd, self.macs(imgs, ho, wo), "col", rows=sx_img)
        else:
            y = off.run("conv", f"{self.name}.y", launch, sx * self.sw_fwd, self.macs(imgs, ho, wo), "col")
        return y.permute(0, 3, 1, 2).contiguous()

    def backward_int8(self, g: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        off, acc = self.off, self.off.acc
        if off.fp32("conv", "bwd"):
            return torch.nn.grad.conv2d_input((g.shape[0], self.cin, *hw), self.module.weight.float(), g.float(),
                                              self.stride, self.pad)
        if off.scheme in ROW_SCHEMES:
            gq, sg_img = off.quant_rows("conv", g.permute(0, 2, 3, 1), (1, 2, 3))
        else:
            gq, sg = off.quant_input("conv", f"{self.name}.dy", g.permute(0, 2, 3, 1))

        def launch(**ep):
            return acc.conv2d(gq, self.w_bwd, kernel_size=(self.kh, self.kw), stride=1,
                              padding=self.kh - 1 - self.pad, dilation=self.stride, out_size=hw, trans_w=True, **ep)

        if off.scheme == "row":
            dx = off.run_int32("conv", launch, (sg_img, self.sw_bwd_t), self.macs(gq.shape[0], *hw))
        elif off.scheme in ROW_SCHEMES:
            dx = off.run("conv", f"{self.name}.dx", launch, self.sw_bwd, self.macs(gq.shape[0], *hw), "col",
                         rows=sg_img)
        else:
            dx = off.run("conv", f"{self.name}.dx", launch, sg * self.sw_bwd, self.macs(gq.shape[0], *hw), "col")
        return dx.permute(0, 3, 1, 2).contiguous()


class _Fallback:
    """An unsupported frozen layer kept fp32 in PyTorch; every call is counted."""

    def __init__(self, off: Offload, family: str, reason: str, module: nn.Module, original: Callable):
        self.off, self.family, self.reason, self.module, self.original = off, family, reason, module, original

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        y = self.original(x, *args, **kwargs)
        m = self.module
        macs = 0
        if isinstance(m, nn.Conv2d):
            macs = y.numel() * m.weight[0].numel()
        self.off.fallback(self.family, self.reason, macs)
        return y


# ------------------------------------------------------------------------------ attention
class _AttnFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, scale: float, off: Offload, name: str):
        acc = off.acc
        bh, lq, d = q.shape
        lk = k.shape[1]
        qq, sq = off.quant_input("attention", f"{name}.q", q)
        kq, sk = off.quant_input("attention", f"{name}.k", k)
        vq, sv = off.quant_input("attention", f"{name}.v", v)
        exact = off.fp32("attention", "fwd")  # the ablation: S and O in fp32 on the host
        if exact:
            s = q.float() @ k.float().transpose(1, 2) * scale
        else:
            s = off.run("attention", None, lambda **ep: acc.batched_gemm(qq, kq, trans_b=True, **ep), sq * sk,
                        bh * lq * lk * d) * scale
        if mask is not None:
            s = s + mask
        p = s.softmax(dim=-1)
        pq, sp = off.quant_input("attention", f"{name}.p", p)
        if exact:
            o = p @ v.float()
        else:
            o = off.run("attention", f"{name}.o", lambda **ep: acc.batched_gemm(pq, vq, **ep), sp * sv,
                        bh * lq * lk * d)
        ctx.save_for_backward(p, q, k, v)
        ctx.ops = (qq, sq, kq, sk, vq, sv, pq, sp)
        ctx.scale, ctx.off, ctx.name = scale, off, name
        return o.to(q.dtype)

    @staticmethod
    def backward(ctx, do):
        p, q, k, v = ctx.saved_tensors
        qq, sq, kq, sk, vq, sv, pq, sp = ctx.ops
        off, name, acc = ctx.off, ctx.name, ctx.off.acc
        bh, lq, d = qq.shape
        lk = kq.shape[1]
        macs = bh * lq * lk * d
        if off.fp32("attention", "bwd"):  # the ablation: every backward matmul fp32 on the host
            do = do.float()
            dp, dv = do @ v.float().transpose(1, 2), p.transpose(1, 2) @ do
            ds = p * (dp - (dp * p).sum(dim=-1, keepdim=True)) * ctx.scale
            return ds @ k.float(), ds.transpose(1, 2) @ q.float(), dv, None, None, None, None
        gq, sg = off.quant_input("attention", f"{name}.do", do.contiguous())
        dp = off.run("attention", None, lambda **ep: acc.batched_gemm(gq, vq, trans_b=True, **ep), sg * sv, macs)
        dv = off.run("attention", f"{name}.dv", lambda **ep: acc.batched_gemm(pq, gq, trans_a=True, **ep),
                     sp * sg, macs)
        ds = p * (dp - (dp * p).sum(dim=-1, keepdim=True)) * ctx.scale
        dsq, sds = off.quant_input("attention", f"{name}.ds", ds)
        dq = dk = None
        if ctx.needs_input_grad[0]:
            dq = off.run("attention", f"{name}.dq", lambda **ep: acc.batched_gemm(dsq, kq, **ep), sds * sk, macs)
        if ctx.needs_input_grad[1]:
            dk = off.run("attention", f"{name}.dk", lambda **ep: acc.batched_gemm(dsq, qq, trans_a=True, **ep),
                         sds * sq, macs)
        return dq, dk, dv, None, None, None, None


class _AttnRowFn(torch.autograd.Function):
    """Attention with the ``row`` scheme: every operand quantized with current scales along the
    dimension its GEMM does NOT sum over (an operand used by two GEMMs summing over different
    dimensions is quantized twice, counted), INT32 outputs dequantized with both scales:

    ====================  ==========================  ============================
    GEMM                  op(A) scale (per row)        op(B) scale (per column)
    ====================  ==========================  ============================
    S  = Q . K^T          Q per query token            K per key token
    O  = P . V            P per query (row of P)       V per channel
    dP = dO . V^T         dO per query token           V per key token
    dV = P^T . dO         P per key (column of P)      dO per channel
    dQ = dS . K           dS per query (row)           K per channel
    dK = dS^T . Q         dS per key (column)          Q per channel
    ====================  ==========================  ============================

    (every scale also per batch x head item). Softmax and its backward stay fp32 on the host."""

    @staticmethod
    def forward(ctx, q, k, v, mask, scale: float, off: Offload, name: str):
        acc, fam = off.acc, "attention"
        bh, lq, d = q.shape
        lk = k.shape[1]
        macs = bh * lq * lk * d
        exact = off.fp32(fam, "fwd")  # the ablation: S and O in fp32 on the host
        if exact:
            s = q.float() @ k.float().transpose(1, 2) * scale
        else:
            qq, sq = off.quant_rows(fam, q, (2,))
            kq, sk = off.quant_rows(fam, k, (2,))
            s = off.run_int32(fam, lambda **ep: acc.batched_gemm(qq, kq, trans_b=True, **ep),
                              (sq, sk.transpose(1, 2)), macs) * scale
        if mask is not None:
            s = s + mask
        p = s.softmax(dim=-1)
        if exact:
            o = p @ v.float()
        else:
            pq, sp = off.quant_rows(fam, p, (2,))
            vq, sv = off.quant_rows(fam, v, (1,))
            o = off.run_int32(fam, lambda **ep: acc.batched_gemm(pq, vq, **ep), (sp, sv), macs)
        ctx.save_for_backward(p, q, k, v)
        ctx.scale, ctx.off = scale, off
        return o.to(q.dtype)

    @staticmethod
    def backward(ctx, do):
        p, q, k, v = ctx.saved_tensors
        off, acc, fam = ctx.off, ctx.off.acc, "attention"
        bh, lq, d = q.shape
        macs = bh * lq * k.shape[1] * d
        do = do.float()
        if off.fp32(fam, "bwd"):  # the ablation: every backward matmul fp32 on the host
            dp, dv = do @ v.float().transpose(1, 2), p.transpose(1, 2) @ do
            ds = p * (dp - (dp * p).sum(dim=-1, keepdim=True)) * ctx.scale
            return ds @ k.float(), ds.transpose(1, 2) @ q.float(), dv, None, None, None, None
        dor, s_dor = off.quant_rows(fam, do, (2,))
        vr, s_vr = off.quant_rows(fam, v, (2,))
        dp = off.run_int32(fam, lambda **ep: acc.batched_gemm(dor, vr, trans_b=True, **ep),
                           (s_dor, s_vr.transpose(1, 2)), macs)
        pc, s_pc = off.quant_rows(fam, p, (1,))
        doc, s_doc = off.quant_rows(fam, do, (1,))
        dv = off.run_int32(fam, lambda **ep: acc.batched_gemm(pc, doc, trans_a=True, **ep),
                           (s_pc.transpose(1, 2), s_doc), macs)
        ds = p * (dp - (dp * p).sum(dim=-1, keepdim=True)) * ctx.scale
        dq = dk = None
        if ctx.needs_input_grad[0]:
            dsr, s_dsr = off.quant_rows(fam, ds, (2,))
            kc, s_kc = off.quant_rows(fam, k, (1,))
            dq = off.run_int32(fam, lambda **ep: acc.batched_gemm(dsr, kc, **ep), (s_dsr, s_kc), macs)
        if ctx.needs_input_grad[1]:
            dsc, s_dsc = off.quant_rows(fam, ds, (1,))
            qc, s_qc = off.quant_rows(fam, q, (1,))
            dk = off.run_int32(fam, lambda **ep: acc.batched_gemm(dsc, qc, trans_a=True, **ep),
                               (s_dsc.transpose(1, 2), s_qc), macs)
        return dq, dk, dv, None, None, None, None


def attention_int8(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, off: Offload, name: str,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(scale . Q.K^T + mask) . V with the matmuls INT8 on the accelerator; (B*heads, L, d)."""
    fn = _AttnRowFn if off.scheme in ROW_SCHEMES else _AttnFn
    return fn.apply(q.contiguous(), k.contiguous(), v.contiguous(), mask, float(scale), off, name)


class Int8AttnProcessor:
    """diffusers' ``AttnProcessor`` with the attention matmuls on the accelerator (the
    projections to_q/to_k/to_v/to_out are Linear layers, INT8 through their own path)."""

    def __init__(self, off: Offload, name: str):
        self.off, self.name = off, name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (hidden_states.shape if encoder_hidden_states is None
                                          else encoder_hidden_states.shape)
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        query = attn.head_to_batch_dim(query)
        key = attn.head_to_batch_dim(key)
        value = attn.head_to_batch_dim(value)
        if getattr(attn, "norm_q", None) is not None:
            query = attn.norm_q(query)
        if getattr(attn, "norm_k", None) is not None:
            key = attn.norm_k(key)
        hidden_states = attention_int8(query, key, value, attn.scale, self.off, self.name, attention_mask)
        hidden_states = attn.batch_to_head_dim(hidden_states)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


# ------------------------------------------------------------------------------ install
def _is_lora_part(name: str) -> bool:
    return any(p.startswith("lora_") for p in name.split("."))


def install(unet: nn.Module, acc: Accelerator, lora_runtime: Any = None, threshold: float = SAT_THRESHOLD,
            history: int | None = None, families: tuple[str, ...] = ("linear", "conv", "attention"),
            host_fp32: frozenset[str] = frozenset(), scheme: str = SCHEMES[0], fuse_lora: bool = False) -> Offload:
    """Put every frozen Linear and Conv2d of ``unet`` and its attention matmuls on ``acc``.

    Layers are rewired by setting an instance ``forward`` (module names and state-dict keys do
    not change); :func:`uninstall` restores them. Call after the adapter is added (its LoRA
    layers are trainable and skipped; a LoRA layer's frozen ``base_layer`` is wrapped).
    ``families``: which frozen families to put on the accelerator (the others stay fp32 in
    PyTorch); ``host_fp32``: see :attr:`Offload.host_fp32`; ``scheme``: one of :data:`SCHEMES`;
    ``history``: the amax histories' length (None: the scheme's, :func:`default_history`);
    ``fuse_lora``: fuse every LoRA layer with its offloaded base layer (:mod:`.fused`, ``row``
    scheme only)."""
    if fuse_lora and scheme != "row":
        raise LimitError(f"--fuse-lora needs the row offload scheme (per-token X shared by the base and "
                         f"lora_A), not {scheme!r}")
    off = Offload(acc, threshold, history, host_fp32, scheme)
    off.lora_runtime = lora_runtime
    for name, m in unet.named_modules():
        if _is_lora_part(name) or "forward" in m.__dict__:
            continue
        if type(m) is nn.Linear and not m.weight.requires_grad and "linear" in families:
            m.forward = Int8Linear(off, name, m)
            off.wrapped["linear"] += 1
        elif type(m) is nn.Conv2d and not m.weight.requires_grad and "conv" in families:
            reason = conv_unsupported(m)
            if reason is None:
                m.forward = Int8Conv2d(off, name, m)
                off.wrapped["conv"] += 1
            else:
                m.forward = _Fallback(off, "conv", reason, m, m.forward)
                off.wrapped["conv_fallback"] += 1
        else:
            continue
        off._restore.append(m)
    if "attention" in families and hasattr(unet, "set_attn_processor") and hasattr(unet, "attn_processors"):
        off._processors = dict(unet.attn_processors)
        unet.set_attn_processor({n: Int8AttnProcessor(off, n.removesuffix(".processor")) for n in off._processors})
        off.wrapped["attention"] = len(off._processors)
    if fuse_lora:
        from .fused import fuse

        fuse(unet, off)
    place_weights(off)
    return off


def _int8_layers(off: Offload) -> list["Int8Linear | Int8Conv2d"]:
    layers = [m.__dict__.get("forward") for m in off._restore]
    return [x for x in layers if isinstance(x, (Int8Linear, Int8Conv2d))]


def place_weights(off: Offload) -> None:
    """Make the frozen INT8 weights resident in device memory for the run
    (:meth:`Accelerator.resident`: placed once, read in place by every call instead of being
    copied in per call). Weights that do not fit the accelerator's ``resident_limit``, and
    convolution weights whose input channels are not a multiple of the beat (padded per call),
    stay on the per-call path; both are counted (``weights_resident``, ``weights_per_call``)."""
    beat = off.acc.board.axi_bytes
    fused = {id(f.base) for f in off.fused}   # their base weights live in the stacked [W; A]
    for f in off.fused:
        f.place()
    for layer in _int8_layers(off):
        if id(layer) in fused:
            continue
        for attr, channels in (("w_fwd", getattr(layer, "cin", beat)), ("w_bwd", getattr(layer, "cout", beat))):
            held = getattr(layer, attr)
            if channels % beat:
                off.weights["per_call"] += 1
                continue
            setattr(layer, attr, off.make_resident(held, f"{layer.name}.{attr}"))


def free_weights(off: Offload) -> None:
    """Release the resident weights (:func:`place_weights`); the layers use their host copies."""
    for f in off.fused:
        f.free()
    for layer in _int8_layers(off):
        for attr, host in (("w_fwd", layer.wq_fwd), ("w_bwd", layer.wq_bwd)):
            held = getattr(layer, attr)
            if isinstance(held, Resident):
                off.acc.free(held)
                setattr(layer, attr, host)


def uninstall(unet: nn.Module, off: Offload) -> None:
    """Restore the fp32 PyTorch layers and attention processors and free the resident weights
    (the figures stay in ``off``)."""
    free_weights(off)
    if off.fused:
        from .fused import unfuse

        unfuse(off)
    for m in off._restore:
        m.__dict__.pop("forward", None)
    off._restore.clear()
    if off._processors is not None:
        unet.set_attn_processor(off._processors)
        off._processors = None


@contextmanager
def suspended(unet: nn.Module, off: Offload) -> Iterator[None]:
    """The fp32 PyTorch layers and attention processors for the duration (the held-out
    evaluation during training): no accelerator call, amax history or figure is touched, and
    the INT8 wrappers come back unchanged afterwards."""
    saved = [(m, m.__dict__.pop("forward")) for m in off._restore if "forward" in m.__dict__]
    int8_procs = None
    if off._processors is not None:
        int8_procs = dict(unet.attn_processors)
        unet.set_attn_processor(dict(off._processors))
    try:
        yield
    finally:
        for m, fwd in saved:
            m.forward = fwd
        if int8_procs is not None:
            unet.set_attn_processor(int8_procs)


__all__ = ["AmaxHistory", "FamilyStats", "Offload", "Int8Linear", "Int8Conv2d", "Int8AttnProcessor",
           "attention_int8", "conv_unsupported", "install", "uninstall", "suspended", "quantize_weight", "HISTORY",
           "COLUMN_HISTORY", "default_history",
           "place_weights", "free_weights",
           "SAT_THRESHOLD", "OFFLOAD_MODES", "FAMILIES", "LimitError", "PlanError"]


def offload_report(lora_runtime: Any) -> dict[str, Any]:
    """The ``offload`` section of a run's report.json: the whole-step figures when ``--offload
    all`` installed an :class:`Offload` (as ``lora_runtime.offload``), else the LoRA family only."""
    off = getattr(lora_runtime, "offload", None)
    if off is not None:
        return off.report()
    rep = Offload(lora_runtime.acc)
    rep.lora_runtime = lora_runtime
    out = rep.report()
    out["mode"] = "lora"
    out["families"] = {"lora": out["families"]["lora"]}
    del out["wrapped_layers"], out["sites"], out["weights"]
    return out
