"""The ARM host's share of a training step: element-wise work, (de)quantization passes,
cache maintenance, driver calls and the optimizer, timed with a board's stated throughputs.

**Every figure is modelled** from the traced step (:mod:`.inventory`) and the ``host`` table of
``hardware.toml`` (stated assumptions, not measurements): ``stream_gbps`` (the DDR bandwidth
the ARM cores attain on element-wise passes, bytes read + written), the attained FP32 rate
``gflops`` (cores x clock x NEON FLOP/cycle x attained fraction), ``l2_kb`` and ``call_us``.

A host pass over B bytes with F FLOP-equivalents takes ``max(B / stream, F / gflops)``. Every
element-wise operator of the traced step is one pass (bytes: its FP32 tensor arguments and
outputs; arithmetic: :data:`OP_FLOPS` per output element; group norm and its backward read their
input twice when it does not fit the L2 cache: statistics, then normalization). Transcendental
functions (exp, erf, sigmoid) cost :data:`TRANSCENDENTAL` FLOP-equivalents per element (a
vectorized polynomial with range reduction, as NEON math libraries compute them). Views and
uninitialised allocations are free.

**Quantization boundaries** (:func:`boundary_work`): where a GEMM runs on the accelerator its
operands must be in the device format and its outputs come back in it. What that costs the host
depends on the scheme (:data:`SCHEMES`):

* ``dynamic``: host quantization with dynamic absmax scales (today's LoRA path): every output is
  INT32; per distinct (tensor, scale axis) the host runs an absmax pass and a quantize pass
  (read 4 + 4 bytes, write 1 per element; 3 FLOP, +5 for stochastic rounding of gradients), from
  the host's FP32 tensor or the INT32 output of the producing GEMM; an operand summed over tokens
  (weight-gradient-like GEMMs, attention dV and dK) needs per-channel scales, so a tensor used
  both ways is quantized twice; every output the host reads is dequantized once (read 4, write 4).
  Softmax probabilities have a fixed scale (one quantize pass, no absmax).
* ``dynamic8``: ``--offload-scheme row8`` (and ``row8c``: its per-channel output amax is a
  max reduction inside the dequantization pass below, the same bytes, below the model's
  resolution in FLOP): host input quantization as ``dynamic`` (current
  per-row scales, an absmax pass and a quantize pass per distinct (tensor, scale axis)), but a
  frozen Linear/Conv GEMM (and a fused one, :func:`int8_output`) writes INT8 from the epilogue:
  its row-normalized output ``sw[j] . acc[i, j]`` with per-column multipliers ``sw[j] / s_z``
  (``s_z`` a delayed per-tensor scale), the row factor ``sx[i]`` left to the host. So a host pass
  that reads such an output reads 1 byte per element instead of 4 (a quantize pass from it: read
  1 + 1, write 1; its dequantization ``q . sx[i] . s_z``: read 1, write 4), and its cache
  maintenance covers 1 byte per element. Attention GEMMs (their per-(image x head) column scales
  do not fit one scale vector per batched call), LoRA GEMMs and every ``out_int32`` output stay
  INT32 as in ``dynamic``. The first call of an output site (INT32, calibration) and saturation
  recomputes are not modelled (nor are they in ``delayed``).
* ``delayed``: delayed scaling in the epilogue (the issue-13 design): the epilogue writes INT8
  with per-tensor / per-channel scales from the previous step and reports the amax, so a GEMM's
  INT8 output feeds the next GEMM with no host pass; the host pass that produces an operand also
  writes its INT8 copy (+1 byte per element; its amax is computed on the fly), and a host pass
  that consumes a GEMM's INT8 output reads 1 byte instead of 4 (time: minus the 3 bytes at the
  stream bandwidth, as element-wise passes on these cores are memory-bound). Scores Q.K^T and
  dO.V^T (into softmax and its backward) and the LoRA weight gradients stay INT32.
* ``fp16`` / ``fp32``: the same array computing in FP16 / FP32 (for the energy comparison): the
  host converts to FP16 inline (+2 bytes written per operand element, -2 read per output
  element) or hands its FP32 tensors over as they are.

In every accelerator scheme the buffers the host writes for the device are cleaned from its
caches (every device copy: a tensor quantized along two axes has two) and the outputs it reads
invalidated (in the per-row schemes also a GEMM's output the host requantizes for the next
GEMM), by address, one instruction per cache line, at the stated ``cache_gbps`` (no DDR traffic
of its own: the data has been written back by eviction).
Each accelerator call costs ``call_us`` of ARM time (driver). A GEMM output that is
accumulated into another GEMM's output (LoRA's Y and dX into the frozen layer's) is added on
the device with delayed scaling (one scale for both), at no host cost; in the per-row schemes
the two outputs' scales differ per row, so the host dequantizes it and adds it (as the run-time
does), and so it does wherever the two are not both on the accelerator (read 8, write 4 bytes
per element for the add). AdamW on the LoRA parameters in FP32 (with
gradient clipping): 32 bytes and 17 FLOP per parameter.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Iterable, Sequence

from ..errors import OptionError
from ..hw.config import BoardConfig
from .inventory import HostOp, StepGemm

TRANSCENDENTAL = 10
"""FLOP-equivalents per element of exp / erf / sigmoid / tanh (assumed)."""

OP_FLOPS = {
    "add": 1, "sub": 1, "mul": 1, "div": 1, "neg": 1, "pow": 1, "mean": 1, "sum": 1, "rsub": 1,
    "clone": 0, "copy_": 0, "cat": 0, "_to_copy": 0, "zeros": 0, "zero_": 0, "fill_": 0, "ones_like": 0,
    "zeros_like": 0, "new_zeros": 0, "slice_backward": 0, "select_backward": 0, "upsample_nearest2d": 0,
    "upsample_nearest2d_backward": 1,
    "silu": TRANSCENDENTAL + 2, "silu_backward": TRANSCENDENTAL + 4, "sigmoid": TRANSCENDENTAL + 1,
    "gelu": TRANSCENDENTAL + 3, "gelu_backward": TRANSCENDENTAL + 5,
    "exp": TRANSCENDENTAL, "sin": TRANSCENDENTAL, "cos": TRANSCENDENTAL,
    "_softmax": TRANSCENDENTAL + 4, "_softmax_backward_data": 4,
    "native_group_norm": 6, "native_group_norm_backward": 8,
    "native_layer_norm": 6, "native_layer_norm_backward": 8,
    "mse_loss": 3, "mse_loss_backward": 3,
}
"""FLOP-equivalents per output element of each ATen operator (1 if not listed)."""

TWO_PASS_OPS = ("native_group_norm", "native_group_norm_backward")
"""Operators that read their input twice when it does not fit the L2 cache."""

STOCHASTIC_FLOPS = 5
"""Extra FLOP-equivalents per element for stochastic rounding (a counter-based hash)."""

ADAMW_BYTES, ADAMW_FLOPS = 32, 17
"""Per LoRA parameter: AdamW reads p, g, m, v and writes p, m, v (FP32), plus the gradient-norm
read for clipping; about 17 FLOP."""

SCHEMES = {
    "dynamic": "host quantization, dynamic absmax scales per token/channel, INT32 outputs (today's LoRA path)",
    "dynamic8": "host quantization as dynamic; Linear/Conv outputs INT8 (row-normalized, per-column multipliers, "
                "delayed scale), rows rescaled on the host; attention and LoRA outputs INT32 "
                "(--offload-scheme row8, row8c)",
    "delayed": "delayed scaling in the epilogue: INT8 outputs with the previous step's scales, amax reported",
    "fp16": "the same array in FP16 (no quantization; host converts inline)",
    "fp32": "the same array in FP32 (no quantization)",
}
OPERAND_BYTES = {"dynamic": 1, "dynamic8": 1, "delayed": 1, "fp16": 2, "fp32": 4}
ROW_SCALED = ("dynamic", "dynamic8")
"""Schemes whose host-quantized operands take current per-row scales: a tensor summed along
both axes is quantized twice, every GEMM-to-GEMM operand passes through the host."""
INT8_FAMILIES = ("linear", "conv", "fused")
"""GEMM families whose outputs ``dynamic8`` writes INT8 (the frozen layers' GEMMs)."""


@dataclass(frozen=True)
class HostWork:
    """One item of host work: what, where (block, direction), bytes, FLOP and modelled time."""

    what: str          # elementwise, quantize, dequantize, cache, driver, optimizer, lora_add, gemm_fp32
    block: str
    direction: str
    bytes: float       # DDR bytes read + written (negative: bytes saved against the FP32 trace)
    flops: float
    seconds: float
    instructions: float = 0.0   # scalar instructions besides the FLOP (driver, cache maintenance)
    detail: str = ""            # the ATen operator of an element-wise item
    elements: float = 0.0       # elements read + written (element-wise items)
    calls: int = 0              # operator calls (element-wise items)


def rates(board: BoardConfig) -> tuple[float, float]:
    """(stream bytes/s, FP32 FLOP/s) of the board's ARM cores (stated assumptions)."""
    return board.host.stream_gbps * 1e9, board.host.gflops * 1e9


def _pass(board: BoardConfig, what: str, block: str, direction: str, nbytes: float, flops: float) -> HostWork:
    bw, fl = rates(board)
    secs = nbytes / bw if nbytes < 0 else max(nbytes / bw, flops / fl)
    return HostWork(what, block, direction, nbytes, flops, secs)


def elementwise_work(board: BoardConfig, ops: Iterable[HostOp]) -> list[HostWork]:
    """The traced element-wise operators as FP32 host passes."""
    l2 = board.host.l2_kb * 1024
    out = []
    for op in ops:
        nbytes = 4.0 * (op.read + op.written)
        if op.op in TWO_PASS_OPS and 4 * op.read / max(op.calls, 1) > l2:
            nbytes += 4.0 * op.read
        flops = OP_FLOPS.get(op.op, 1) * float(op.work)
        out.append(replace(_pass(board, "elementwise", op.block, op.direction, nbytes, flops), detail=op.op,
                           elements=float(op.read + op.written), calls=op.calls))
    return out


def arm_gemm_work(board: BoardConfig, gemms: Iterable[StepGemm]) -> list[HostWork]:
    """GEMMs computed on the ARM in FP32 at the stated attained rate (2 FLOP per useful MAC; the
    same rate for every shape, which favours the ARM on narrow LoRA GEMMs)."""
    _, fl = rates(board)
    return [HostWork("gemm_fp32", g.block, g.direction, 0.0, 2.0 * g.useful_macs, 2.0 * g.useful_macs / fl)
            for g in gemms]


def optimizer_work(board: BoardConfig, params: int) -> HostWork:
    """AdamW with gradient clipping on ``params`` FP32 LoRA parameters."""
    return _pass(board, "optimizer", "optimizer", "bwd", ADAMW_BYTES * params, ADAMW_FLOPS * params)


def boundary_work(board: BoardConfig, gemms: Sequence[StepGemm], offloaded: set[int], scheme: str,
                  calls: dict[int, int] | None = None) -> list[HostWork]:
    """Host work at the edges of the offloaded GEMMs (indices ``offloaded`` into ``gemms``)
    under ``scheme`` (see the module docstring): quantization and dequantization passes, cache
    maintenance, driver calls (``calls[i]`` accelerator calls for GEMM i, default 1) and the host
    adds of accumulations whose target is not on the device."""
    if scheme not in SCHEMES:
        raise OptionError(f"unknown scheme {scheme!r}: use one of {', '.join(SCHEMES)}")
    ob_in = OPERAND_BYTES[scheme]
    producer: dict[str, int] = {}
    consumers: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(gemms):
        if g.out != "accumulate":
            producer.setdefault(g.out_tensor, i)
        if g.extra_out:
            producer[g.extra_out] = i
        for x in (g.a, g.b):
            consumers[x.tensor].append(i)
    items: list[HostWork] = []
    seen_in: set[tuple] = set()
    seen_out: set[str] = set()
    read_back: set[str] = set()

    def add(what, g, nbytes, flops):
        items.append(_pass(board, what, g.block, g.direction, nbytes, flops))

    for i in sorted(offloaded):
        g = gemms[i]
        secs = (calls or {}).get(i, 1) * board.host.call_us * 1e-6
        items.append(HostWork("driver", g.block, g.direction, 0.0, 0.0, secs, secs * board.host.clock_mhz * 1e6))
        for x in (g.a, g.b):
            src = x.src
            if src == "weight":
                continue
            if src == "gemm" and producer.get(x.tensor) not in offloaded:
                src = "host"
            if src == "gemm" and scheme not in ROW_SCALED:
                continue
            # per-token and per-channel scales are two quantizations of a tensor in the per-row
            # schemes; a fixed or per-tensor scale (softmax probabilities, LoRA weights) is one
            key = (x.tensor, x.axis if scheme in ROW_SCALED and src not in ("fixed", "lora") else "")
            if key in seen_in:
                continue
            seen_in.add(key)
            e = float(x.elements)
            sr = STOCHASTIC_FLOPS * e if x.grad else 0.0
            rb = _out_bytes(gemms[producer[x.tensor]], scheme) if src == "gemm" else 4   # bytes read per element
            if scheme in ROW_SCALED:
                if src == "fixed":
                    add("quantize", g, 5 * e, 2 * e)
                else:                    # absmax pass + quantize pass (from FP32, INT32 or INT8)
                    add("quantize", g, (2 * rb + 1) * e, 3 * e + sr)
            elif scheme == "delayed":
                add("quantize", g, 1 * e if src != "lora" else 5 * e, 2 * e + sr)
            elif scheme == "fp16":
                add("quantize", g, 2 * e if src != "lora" else 6 * e, 1 * e)
            items.append(_cache(board, g, ob_in * e))          # the device copy the host writes
            if src == "gemm" and x.tensor not in read_back:    # the producer's output the host reads
                read_back.add(x.tensor)
                items.append(_cache(board, g, rb * e))
        # the output
        out = g.out
        e = float(g.out_elements)
        if out == "gemm" and any(j not in offloaded for j in consumers.get(g.out_tensor, [])):
            out = "host"
        if out == "accumulate":
            if producer.get(g.out_tensor) in offloaded and scheme not in ROW_SCALED:
                continue               # added on the device: both outputs carry one scale
            out = "host_add"           # its own output, though its tensor is the target's
        elif g.out_tensor in seen_out:
            continue
        else:
            seen_out.add(g.out_tensor)
        if out == "gemm":
            continue
        ob = _out_bytes(g, scheme)
        if out in ("host", "host_add"):
            if scheme in ROW_SCALED:   # read the output, write FP32
                add("dequantize", g, (ob + 4) * e, e)
            elif scheme in ("delayed", "fp16"):
                add("dequantize", g, -(4 - ob) * e, e)
            items.append(_cache(board, g, ob * e))
            if out == "host_add":
                add("lora_add", g, 12 * e, e)
        elif out == "optimizer":
            if scheme != "fp32":
                add("dequantize", g, (ob + 4) * e, e)
            items.append(_cache(board, g, ob * e))
    return items


def _cache(board: BoardConfig, g: StepGemm, nbytes: float) -> HostWork:
    """Cache maintenance of a device buffer of ``nbytes``: one instruction per line."""
    h = board.host
    return HostWork("cache", g.block, g.direction, 0.0, 0.0, nbytes / (h.cache_gbps * 1e9), nbytes / h.cache_line)


def int8_output(g: StepGemm, scheme: str) -> bool:
    """Whether the epilogue writes ``g``'s output INT8 under ``scheme`` (the INT8 schemes; never
    an ``out_int32`` output; in ``dynamic8`` only the frozen layers' GEMMs, :data:`INT8_FAMILIES`)."""
    if g.out_int32:
        return False
    if scheme == "delayed":
        return True
    return scheme == "dynamic8" and g.family in INT8_FAMILIES


def _out_bytes(g: StepGemm, scheme: str) -> int:
    """Bytes per output element the device writes for ``g`` under ``scheme``."""
    if int8_output(g, scheme):
        return 1
    return 2 if scheme == "fp16" else 4


def lora_add_work(board: BoardConfig, gemms: Sequence[StepGemm], on_arm: Iterable[int]) -> list[HostWork]:
    """The host adds of LoRA outputs (Y into the layer's output, dX into its input gradient) for
    accumulating GEMMs computed on the ARM."""
    out = []
    for i in on_arm:
        g = gemms[i]
        if g.out == "accumulate":
            e = float(g.out_elements)
            out.append(_pass(board, "lora_add", g.block, g.direction, 12 * e, e))
    return out


def summarize(items: Iterable[HostWork]) -> dict[str, dict[str, float]]:
    """Seconds, bytes and FLOP per kind of host work, and in total."""
    out: dict[str, dict[str, float]] = {}
    for it in items:
        for key in (it.what, "total"):
            d = out.setdefault(key, {"seconds": 0.0, "bytes": 0.0, "flops": 0.0})
            d["seconds"] += it.seconds
            d["bytes"] += it.bytes
            d["flops"] += it.flops
    return out


def by_operator(items: Iterable[HostWork]) -> dict[str, dict[str, float]]:
    """Element-wise items summed per ATen operator and direction ("_softmax fwd"): calls,
    elements read + written, bytes, FLOP and seconds."""
    out: dict[str, dict[str, float]] = {}
    for it in items:
        if it.what != "elementwise":
            continue
        d = out.setdefault(f"{it.detail} {it.direction}", dict.fromkeys(("calls", "elements", "bytes", "flops",
                                                                          "seconds"), 0.0))
        d["calls"] += it.calls
        d["elements"] += it.elements
        d["bytes"] += it.bytes
        d["flops"] += it.flops
        d["seconds"] += it.seconds
    return out
