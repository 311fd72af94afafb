"""Every GEMM and every host operation of one LoRA training step, traced from the diffusers UNet.

:func:`trace_step` builds the UNet of :mod:`.shapes` on the ``meta`` device (no memory, no
weights), runs one training step on it, a forward pass, an MSE loss and ``loss.backward()``,
and records two things:

* **Module calls** (forward hooks): every ``nn.Linear`` (tokens, in, out), every
  ``nn.Conv2d`` (input and output geometry, kernel, stride, padding) and every diffusers
  ``Attention`` (query and key tokens, heads, head width), with whether the module's input and
  outputs *require a gradient*. From them :func:`step_gemms` derives the step's GEMMs.
* **Every ATen operator** of forward and backward (a ``TorchDispatchMode``), with its input and
  output element counts, attributed to the UNet block it belongs to (the module stack in the
  forward pass; in the backward pass the block whose forward op created the autograd node that
  runs). The non-GEMM operators are the host's element-wise work (:class:`HostOp`); the GEMM
  operators (``mm``, ``addmm``, ``bmm``, ``baddbmm``, ``convolution``, ``convolution_backward``)
  give an independent MAC count that :func:`check_macs` compares with the structural count.

**Which input gradients a LoRA step needs.** Only the LoRA parameters train, so a frozen layer
needs its input gradient only if its input depends on a LoRA parameter. The trace determines
this exactly instead of by execution order: the weights of the LoRA target linears stand in
for their adapters (``requires_grad=True`` on them, ``False`` on every other parameter; a target
layer's output depends on its adapter as it depends on that weight), and autograd marks every
tensor downstream of them as requiring a gradient. A layer's input gradient is needed iff its
input requires a gradient. This is stricter than "executed after the first LoRA layer"
(:func:`order_rule_extra` counts the difference): layers on paths that never meet an adapter,
the time-embedding MLP, every resnet's ``time_emb_proj``, and the cross-attention ``to_k`` /
``to_v`` (whose input is the frozen text encoder's output), need none, nor does anything before
the first adapted layer (``conv_in`` and the first resnet(s)). The stand-in weights' own
weight-gradient GEMMs are left out (the six LoRA GEMMs replace them, :mod:`lora_qta.lora.gemms`).

**The GEMMs** (:class:`StepGemm`, M x K x N, ``batch`` identical-shape items):

* ``nn.Linear``: forward ``Y = X.W^T`` (tokens, in, out); input gradient ``dX = dY.W``
  (tokens, out, in).
* ``nn.Conv2d`` as implicit GEMM over an NHWC map: forward M = N x Ho x Wo, K = Cin x kh x kw,
  N = Cout; input gradient: the convolution of dY with the flipped, transposed kernel, M = N x H x
  W, K = Cout x kh x kw, N = Cin, over dY dilated by the stride (input dilation 2 for the stride-2
  downsamplers). The array computes every product of the dilated map, zeros included, so for a
  stride-s convolution it does s^2 times the useful MACs (``useful_macs`` keeps the latter).
* Attention (diffusers ``Attention``, per head, as batched GEMMs over batch x heads): forward
  ``S = Q.K^T`` (Nq, d, Nk) and ``O = P.V`` (Nq, Nk, d); backward ``dP = dO.V^T`` (Nq, d, Nk),
  ``dV = P^T.dO`` (Nk, Nq, d), ``dQ = dS.K`` (Nq, Nk, d), ``dK = dS^T.Q`` (Nk, Nq, d), each where
  the gradient is needed. Softmax (and its backward) is host work.
* LoRA: the six GEMMs of every adapted layer (:func:`lora_qta.lora.gemms.layer_gemms`);
  ``dX = dH.A`` only where the layer's input gradient is needed.

Each GEMM names its operands (:class:`Operand`: which tensor, whether the host, another GEMM,
a frozen weight or a LoRA weight produces it, and along which axis its quantization scales may
vary) and where its output goes (host, another GEMM, the optimizer, or accumulated into another
GEMM's output): the host-work model (:mod:`.host`) counts the (de)quantization passes from that.

**Assumptions**: batch 1 (``batch`` multiplies tokens), eval-mode modules (dropout p = 0 is a
no-op), diffusers' explicit ``AttnProcessor`` (Q.K^T, softmax and P.V as separate operators),
no gradient checkpointing, VAE latents and text embeddings precomputed (the UNet step only), MSE
loss on the noise prediction.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, Sequence

from ..errors import OptionError
from ..hw.call import ceil_to
from ..lora.gemms import LORA_GEMMS
from . import shapes

FAMILIES = ("linear", "conv", "attention", "lora")
"""GEMM families of the step (a fused base+LoRA GEMM is reported as family ``fused``)."""

GEMM_OPS = ("mm", "addmm", "bmm", "baddbmm", "convolution", "convolution_backward")
"""ATen operators the trace counts as GEMMs (not host work)."""

VIEW_OPS = frozenset({
    "view", "_unsafe_view", "t", "transpose", "permute", "expand", "unsqueeze", "squeeze", "slice",
    "split", "split_with_sizes", "detach", "alias", "as_strided", "select", "unbind", "chunk",
    "reshape", "narrow", "empty", "empty_like", "empty_strided", "new_empty", "lift_fresh", "arange",
    "_reshape_alias", "unflatten", "flatten", "contiguous", "squeeze_", "unsqueeze_"})
"""ATen operators that move no data (views, shape changes, uninitialised allocations)."""


# ----------------------------------------------------------------------------- records

@dataclass(frozen=True)
class Operand:
    """One INT8 operand of a GEMM as the host-work model sees it.

    ``tensor`` names the tensor (operands of several GEMMs that are the same tensor share it);
    ``src`` is who produces it: ``host`` (an element-wise op on the ARM), ``fixed`` (host, with a
    fixed scale: softmax probabilities in [0, 1]), ``gemm`` (another GEMM's output), ``weight``
    (a frozen weight, quantized once per run) or ``lora`` (a LoRA weight, quantized each step);
    ``axis`` is the axis its scales may vary along (``token``, ``channel``; the other axis is
    summed); ``elements`` the size of the stored tensor; ``grad``: a gradient (stochastic
    rounding)."""

    tensor: str
    src: str
    axis: str
    elements: int
    grad: bool = False


@dataclass(frozen=True)
class ConvGeom:
    """Implicit-GEMM geometry of one convolution call as the loader addresses it: the NHWC input
    map (images x h x w x cin), kernel, stride, padding, input dilation and output size."""

    images: int
    h: int
    w: int
    cin: int
    kh: int
    kw: int
    stride: int
    pad: int
    dil: int
    ho: int
    wo: int


@dataclass(frozen=True)
class StepGemm:
    """One GEMM of the step: ``batch`` items of op(A) (M x K) . op(B) (K x N)."""

    family: str            # linear, conv, attention, lora (fused: see step.fuse)
    name: str              # module (or attention module) name
    op: str                # fwd, dgrad, qk, pv, dp, dv, dq, dk, or a LoRA GEMM key
    direction: str         # fwd or bwd
    block: str             # the UNet block (down_blocks.0.resnets.1, ...)
    m: int
    k: int
    n: int
    batch: int
    trans_a: bool
    trans_b: bool
    a: Operand
    b: Operand
    out: str               # host, gemm, optimizer or accumulate (into another GEMM's output)
    out_tensor: str
    out_int32: bool = False     # stays INT32 in every scheme (feeds softmax or the optimizer)
    accumulate: bool = False    # adds into an existing output (C += ...)
    conv: ConvGeom | None = None
    useful_macs: int = 0        # MACs that are not products with dilation zeros
    lora_layer: str = ""        # the adapted layer this GEMM belongs to (base or LoRA GEMM)
    extra_n: int = 0            # fused forward: the last extra_n output columns are H = X.A^T ...
    extra_out: str = ""         # ... the tensor they form (it feeds a GEMM)
    heads: int = 1              # attention: items per image (batch = images x heads)

    @property
    def macs(self) -> int:
        """MACs the array computes (zeros of a dilated input included)."""
        return self.batch * self.m * self.k * self.n

    @property
    def out_elements(self) -> int:
        """Elements of the output that go to ``out`` (without a fused H part)."""
        return self.batch * self.m * (self.n - self.extra_n)


@dataclass(frozen=True)
class HostOp:
    """ATen operators of one kind in one block and direction, summed: calls, elements read and
    written (tensor arguments and outputs, FP32 in the trace) and the element count that
    sets its arithmetic (the largest tensor involved)."""

    op: str
    block: str
    direction: str
    calls: int
    read: int
    written: int
    work: int


@dataclass(frozen=True)
class LinearCall:
    name: str
    tokens: int
    d_in: int
    d_out: int
    x_grad: bool
    y_grad: bool
    bias: bool
    block: str
    seq: int          # call index among the step's linear and convolution calls


@dataclass(frozen=True)
class ConvCall:
    name: str
    geom: ConvGeom
    cout: int
    x_grad: bool
    block: str
    seq: int


@dataclass(frozen=True)
class AttentionCall:
    name: str
    batch: int
    heads: int
    head_dim: int
    nq: int
    nk: int
    q_grad: bool
    k_grad: bool
    v_grad: bool
    self_attention: bool
    block: str


@dataclass(frozen=True)
class StepTrace:
    """What one meta-device training step recorded (see the module docstring)."""

    model: str
    resolution: int
    batch: int
    targets: tuple[str, ...]
    linears: tuple[LinearCall, ...]
    convs: tuple[ConvCall, ...]
    attentions: tuple[AttentionCall, ...]
    host_ops: tuple[HostOp, ...]
    aten_macs: dict          # {"fwd": MACs of the forward GEMM operators, "bwd": backward, "bwd_standin": ...}
    order: tuple[str, ...]   # blocks in forward execution order
    first_lora: str          # the first LoRA-adapted layer executed

    @property
    def targets_layers(self) -> list[LinearCall]:
        return [l for l in self.linears if shapes._matches(l.name, self.targets)]


# ----------------------------------------------------------------------------- tracing

def block_of(name: str) -> str:
    """The UNet block of a module path: ``down_blocks.1.attentions.0...`` ->
    ``down_blocks.1.attentions.0``; top-level modules are their own block."""
    parts = name.split(".")
    if parts[0] in ("down_blocks", "up_blocks") and len(parts) >= 4:
        return ".".join(parts[:4])
    if parts[0] == "mid_block" and len(parts) >= 3:
        return ".".join(parts[:3])
    return parts[0] if parts[0] else "unet"


def _numel(x: Any) -> int:
    import torch

    if isinstance(x, torch.Tensor):
        return int(x.numel())
    if isinstance(x, (list, tuple)):
        return sum(_numel(y) for y in x)
    return 0


def _gemm_macs(name: str, args: tuple, out: Any) -> int:
    """MACs of one ATen GEMM operator from its arguments."""
    if name == "mm":
        (m, k), n = args[0].shape, args[1].shape[1]
        return m * k * n
    if name == "addmm":
        (m, k), n = args[1].shape, args[2].shape[1]
        return m * k * n
    if name == "bmm":
        (b, m, k), n = args[0].shape, args[1].shape[2]
        return b * m * k * n
    if name == "baddbmm":
        (b, m, k), n = args[1].shape, args[2].shape[2]
        return b * m * k * n
    if name == "convolution":
        w = args[1]
        return int(out.numel()) * int(w.shape[1]) * int(w.shape[2]) * int(w.shape[3])
    if name == "convolution_backward":
        grad_out, _, w = args[0], args[1], args[2]
        mask = args[10]
        per = int(grad_out.numel()) * int(w.shape[1]) * int(w.shape[2]) * int(w.shape[3])
        return per * (int(bool(mask[0])) + int(bool(mask[1])))
    return 0  # not a GEMM operator


def trace_step(model: str = "sd15", resolution: int | None = None,
               targets: Sequence[str] = shapes.DEFAULT_TARGETS, batch: int = 1) -> StepTrace:
    """Run one LoRA training step of ``model`` on meta tensors, batch ``batch`` at
    ``resolution`` (the model's default if None), with LoRA on ``targets`` (see the module
    docstring). Cached."""
    return _trace(model, resolution or shapes.model_spec(model).resolution, tuple(targets), batch)


@lru_cache(maxsize=8)
def _trace(model: str, res: int, targets: tuple[str, ...], batch: int) -> StepTrace:
    import torch
    from diffusers.models.attention_processor import Attention, AttnProcessor
    from torch.utils._python_dispatch import TorchDispatchMode

    spec = shapes.model_spec(model)
    if res % spec.latent_factor:
        raise OptionError(f"resolution {res} is not a multiple of the latent factor "
                                 f"{spec.latent_factor}; round it to a multiple of {spec.latent_factor}")
    unet = shapes.build_meta_unet(model)
    unet.set_attn_processor(AttnProcessor())
    cfg = unet.config
    side = res // spec.latent_factor
    text_len = spec.text_tokens
    if model == "digits":
        from ..training import digits

        text_len = digits.MAX_LENGTH
    for p in unet.parameters():
        p.requires_grad_(False)
    for name, mod in unet.named_modules():
        if isinstance(mod, torch.nn.Linear) and shapes._matches(name, targets):
            mod.weight.requires_grad_(True)

    stack: list[str] = []
    linears: list[LinearCall] = []
    convs: list[ConvCall] = []
    attn_parts: dict[str, dict] = defaultdict(dict)
    attn_order: list[str] = []
    heads: dict[str, int] = {}
    order: list[str] = []
    node_block: dict[int, str] = {}
    host = defaultdict(lambda: [0, 0, 0, 0])
    aten = {"fwd": 0, "bwd": 0}
    phase = ["fwd"]

    def current_block() -> str:
        for name in reversed(stack):
            if name:
                return block_of(name)
        return "unet"

    def pre(name):
        def hook(mod, inp):
            stack.append(name)
            if name:
                b = block_of(name)
                if not order or order[-1] != b:
                    order.append(b)
        return hook

    def post(name):
        def hook(mod, inp, out):
            stack.pop()
            x = inp[0] if inp else None
            if isinstance(mod, torch.nn.Linear):
                tokens = int(x.numel() // x.shape[-1])
                linears.append(LinearCall(name, tokens, mod.in_features, mod.out_features, bool(x.requires_grad),
                                          bool(out.requires_grad), mod.bias is not None, block_of(name),
                                          len(linears) + len(convs)))
                parent, _, leaf = name.rpartition(".")
                if leaf in ("to_q", "to_k", "to_v") and parent in heads:
                    if parent not in attn_parts:
                        attn_order.append(parent)
                    attn_parts[parent][leaf] = (tokens, mod.out_features, bool(out.requires_grad), x)
            elif isinstance(mod, torch.nn.Conv2d):
                n, cin, h, w = x.shape
                _, cout, ho, wo = out.shape
                kh, kw = mod.kernel_size
                pad = mod.padding if isinstance(mod.padding, tuple) else (mod.padding, mod.padding)
                if mod.groups != 1 or mod.stride[0] != mod.stride[1] or pad[0] != pad[1] or kh != kw \
                        or mod.dilation != (1, 1):
                    raise OptionError(f"{name}: only square, ungrouped, undilated convolutions are modelled; "
                                      "this UNet has another kind")
                geom = ConvGeom(int(n), int(h), int(w), int(cin), kh, kw, mod.stride[0], int(pad[0]), 1, int(ho), int(wo))
                convs.append(ConvCall(name, geom, int(cout), bool(x.requires_grad), block_of(name),
                                      len(linears) + len(convs)))
        return hook

    hooks = []
    for name, mod in unet.named_modules():
        if isinstance(mod, Attention):
            heads[name] = mod.heads
        hooks.append(mod.register_forward_pre_hook(pre(name)))
        hooks.append(mod.register_forward_hook(post(name)))

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = func.overloadpacket.__name__
            if phase[0] == "fwd":
                # below autograd the sequence counter has already advanced past this op's node
                block = current_block()
                node_block.setdefault(torch._C._autograd._get_sequence_nr() - 1, block)
            else:
                node = torch._C._current_autograd_node()
                block = node_block.get(node._sequence_nr(), "unet") if node is not None else "unet"
            if name in GEMM_OPS:
                aten[phase[0]] += _gemm_macs(name, args, out)
            elif name not in VIEW_OPS:
                read = sum(_numel(a) for a in args) + sum(_numel(v) for v in (kwargs or {}).values())
                written = _numel(out)
                rec = host[(name, block, phase[0])]
                rec[0] += 1
                rec[1] += read
                rec[2] += written
                rec[3] += max(read, written)
            return out

    meta = torch.device("meta")
    try:
        sample = torch.empty(batch, cfg.in_channels, side, side, device=meta)
        text = torch.empty(batch, text_len, cfg.cross_attention_dim, device=meta)
        kwargs = {}
        if spec.sdxl_conditioning:
            pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
            kwargs["added_cond_kwargs"] = {"text_embeds": torch.empty(batch, pooled, device=meta),
                                           "time_ids": torch.empty(batch, 6, device=meta)}
        with Recorder():
            pred = unet(sample, torch.tensor(10, device=meta), encoder_hidden_states=text, **kwargs).sample
            stack.append("loss")
            loss = torch.nn.functional.mse_loss(pred, torch.empty_like(pred))
            stack.pop()
            phase[0] = "bwd"
            loss.backward()
    finally:
        for h in hooks:
            h.remove()

    # the stand-in weights' gradients (X^T.G per target linear) are not part of a LoRA step
    standin = sum(l.tokens * l.d_in * l.d_out for l in linears if shapes._matches(l.name, targets))
    aten["bwd_standin"] = standin

    attentions = []
    for name in attn_order:
        parts = attn_parts[name]
        if not {"to_q", "to_k", "to_v"} <= set(parts):
            continue
        (nq, inner, qg, xq), (nk, _, kg, xk), (_, _, vg, _) = parts["to_q"], parts["to_k"], parts["to_v"]
        b = int(xq.shape[0]) if xq.dim() == 3 else batch
        attentions.append(AttentionCall(name, b, heads[name], inner // heads[name], nq // b, nk // b,
                                        qg, kg, vg, xk is xq, block_of(name)))
    host_ops = tuple(HostOp(op, blk, d, *v) for (op, blk, d), v in host.items())
    first = next((l.name for l in linears if shapes._matches(l.name, targets)), "")
    return StepTrace(model, res, batch, tuple(targets), tuple(linears), tuple(convs), tuple(attentions),
                     host_ops, dict(aten), tuple(order), first)


# ----------------------------------------------------------------------------- GEMMs

def _attn_of(name: str) -> tuple[str, str]:
    parent, _, leaf = name.rpartition(".")
    if leaf == "0" and parent.endswith(".to_out"):
        return parent.rsplit(".", 1)[0], "to_out.0"
    return parent, leaf


def step_gemms(tr: StepTrace, rank: int, align: int = 1) -> list[StepGemm]:
    """The GEMMs of one training step of ``tr`` with LoRA rank ``rank``, forward then backward,
    operands and output destinations attached (see the module docstring).

    ``align`` > 1 lays the device's tensors out in whole beats of ``align`` bytes (kernel v2):
    a convolution's input channels are padded to it (``conv_in``'s 4 latent channels become 16
    on a 16-byte beat), and where an attention head's width is not a multiple of it (SD 1.5's 40
    at 4096 tokens) every head of Q, K, V and O starts on a beat: the projections write (read)
    zero-padded heads, so their N (K) grows to heads x the padded width. ``useful_macs`` keep the
    unpadded counts; ``macs`` are what the array computes."""
    attn = {a.name: a for a in tr.attentions}
    targets = tr.targets
    fwd: list[StepGemm] = []
    bwd: list[StepGemm] = []
    dgrad_seen: dict[str, int] = defaultdict(int)

    def inner(a: AttentionCall) -> int:
        return a.heads * ceil_to(a.head_dim, align)

    for l in tr.linears:
        parent, leaf = _attn_of(l.name)
        a = attn.get(parent)
        in_attn = a is not None and leaf in ("to_q", "to_k", "to_v", "to_out.0")
        useful = l.tokens * l.d_in * l.d_out
        if in_attn and leaf == "to_out.0":
            l = replace(l, d_in=inner(a))
        elif in_attn:
            l = replace(l, d_out=inner(a))
        # forward operand X and output Y
        if in_attn and leaf == "to_out.0":
            x = Operand(f"{parent}.o", "gemm", "token", l.tokens * l.d_in)
        elif in_attn and leaf in ("to_k", "to_v") and not a.self_attention:
            x = Operand("encoder_hidden_states", "host", "token", l.tokens * l.d_in)
        elif in_attn:
            x = Operand(f"{parent}.x", "host", "token", l.tokens * l.d_in)
        else:
            x = Operand(f"{l.name}.x", "host", "token", l.tokens * l.d_in)
        w = Operand(f"{l.name}.weight", "weight", "channel", l.d_in * l.d_out)
        if in_attn and leaf != "to_out.0":
            out, out_t = "gemm", f"{parent}.{leaf[-1]}"
        else:
            out, out_t = "host", f"{l.name}.y"
        lora = l.name if shapes._matches(l.name, targets) else ""
        fwd.append(StepGemm("linear", l.name, "fwd", "fwd", l.block, l.tokens, l.d_in, l.d_out, 1, False, True,
                            x, w, out, out_t, lora_layer=lora, useful_macs=useful))
        # input gradient
        if in_attn and leaf != "to_out.0":
            dy = Operand(f"{parent}.d{leaf[-1]}", "gemm", "token", l.tokens * l.d_out, True)
        elif in_attn:
            dy = Operand(f"{l.name}.dy", "host", "token", l.tokens * l.d_out, True)
        else:
            dy = Operand(f"{l.name}.dy", "host", "token", l.tokens * l.d_out, True)
        if in_attn and leaf == "to_out.0":
            dout, dout_t = "gemm", f"{parent}.do"
        elif in_attn:
            dout, dout_t = "host", f"{parent}.dx"
        else:
            dout, dout_t = "host", f"{l.name}.dx"
        if l.x_grad:
            acc = dgrad_seen[dout_t] > 0
            dgrad_seen[dout_t] += 1
            bwd.append(StepGemm("linear", l.name, "dgrad", "bwd", l.block, l.tokens, l.d_out, l.d_in, 1, False, False,
                                dy, w, dout, dout_t, accumulate=acc, lora_layer=lora, useful_macs=useful))
        if lora:
            orig = next(o for o in tr.linears if o.name == l.name)
            fwd_l, bwd_l = _lora_gemms(l, rank, x, dy, out_t, dout_t, orig)
            fwd += fwd_l
            bwd += bwd_l

    for c in tr.convs:
        g = c.geom
        x = Operand(f"{c.name}.x", "host", "token", g.images * g.h * g.w * g.cin)
        w = Operand(f"{c.name}.weight", "weight", "channel", g.cin * g.kh * g.kw * c.cout)
        m, useful = g.images * g.ho * g.wo, g.images * g.ho * g.wo * g.cin * g.kh * g.kw * c.cout
        gp = replace(g, cin=ceil_to(g.cin, align))
        fwd.append(StepGemm("conv", c.name, "fwd", "fwd", c.block, m, gp.cin * g.kh * g.kw, c.cout, 1, False, True,
                            x, w, "host", f"{c.name}.y", conv=gp, useful_macs=useful))
        if c.x_grad:
            dy = Operand(f"{c.name}.dy", "host", "token", g.images * g.ho * g.wo * c.cout, True)
            wt = Operand(f"{c.name}.weight_flipped", "weight", "channel", g.cin * g.kh * g.kw * c.cout)
            dg = ConvGeom(g.images, g.ho, g.wo, ceil_to(c.cout, align), g.kh, g.kw, 1, g.kh - 1 - g.pad, g.stride,
                          g.h, g.w)
            bwd.append(StepGemm("conv", c.name, "dgrad", "bwd", c.block, g.images * g.h * g.w, dg.cin * g.kh * g.kw,
                                g.cin, 1, False, False, dy, wt, "host", f"{c.name}.dx", conv=dg, useful_macs=useful))

    for a in tr.attentions:
        bh, nq, nk, d = a.batch * a.heads, a.nq, a.nk, a.head_dim
        q = Operand(f"{a.name}.q", "gemm", "token", a.batch * nq * a.heads * d)
        kk = Operand(f"{a.name}.k", "gemm", "token", a.batch * nk * a.heads * d)
        vv = Operand(f"{a.name}.v", "gemm", "channel", a.batch * nk * a.heads * d)
        p = Operand(f"{a.name}.p", "fixed", "token", bh * nq * nk)

        def g(op, direction, m, k, n, ta, tb, A, B, out, out_t, int32=False):
            return StepGemm("attention", a.name, op, direction, a.block, m, k, n, bh, ta, tb, A, B, out, out_t,
                            out_int32=int32, useful_macs=bh * m * k * n, heads=a.heads)
        fwd.append(g("qk", "fwd", nq, d, nk, False, True, q, kk, "host", f"{a.name}.s", True))
        fwd.append(g("pv", "fwd", nq, nk, d, False, False, p, vv, "gemm", f"{a.name}.o"))
        if not (a.q_grad or a.k_grad or a.v_grad):
            continue
        do_t = Operand(f"{a.name}.do", "gemm", "token", a.batch * nq * a.heads * d, True)
        do_c = replace(do_t, axis="channel")
        ds_t = Operand(f"{a.name}.ds", "host", "token", bh * nq * nk, True)
        ds_c = replace(ds_t, axis="channel")
        if a.q_grad or a.k_grad:
            bwd.append(g("dp", "bwd", nq, d, nk, False, True, do_t, replace(vv, axis="token"), "host",
                         f"{a.name}.dp", True))
        if a.v_grad:
            bwd.append(g("dv", "bwd", nk, nq, d, True, False, replace(p, axis="channel"), do_c, "gemm", f"{a.name}.dv"))
        if a.q_grad:
            bwd.append(g("dq", "bwd", nq, nk, d, False, False, ds_t, replace(kk, axis="channel"), "gemm",
                         f"{a.name}.dq"))
        if a.k_grad:
            bwd.append(g("dk", "bwd", nk, nq, d, True, False, ds_c, replace(q, axis="channel"), "gemm",
                         f"{a.name}.dk"))
    # the backward runs in reverse order of the forward
    return fwd + bwd[::-1]


def _lora_gemms(l: LinearCall, r: int, x: Operand, g: Operand, y_t: str, dx_t: str, orig: LinearCall
                ) -> tuple[list[StepGemm], list[StepGemm]]:
    """The six (or five, without an input gradient) GEMMs of one LoRA layer, with operands
    (``l`` with the device's padded widths, ``orig`` as traced, for the useful MACs)."""
    t, di, do = l.tokens, l.d_in, l.d_out
    la = Operand(f"{l.name}.lora_A", "lora", "channel", r * di)
    lb = Operand(f"{l.name}.lora_B", "lora", "channel", r * do)
    h = Operand(f"{l.name}.h", "gemm", "token", t * r)
    dh = Operand(f"{l.name}.dh", "gemm", "token", t * r, True)
    kinds = {k.key: k for k in LORA_GEMMS}
    ops = {
        "fwd_H=X.At": (x, la, "gemm", f"{l.name}.h", False),
        "fwd_Y=H.Bt": (h, lb, "accumulate", y_t, False),
        "bwd_dH=G.B": (g, lb, "gemm", f"{l.name}.dh", False),
        "bwd_dB=Gt.H": (replace(g, axis="channel"), replace(h, axis="channel"), "optimizer", f"{l.name}.dB", True),
        "bwd_dA=dHt.X": (replace(dh, axis="channel"), replace(x, axis="channel"), "optimizer", f"{l.name}.dA", True),
        "bwd_dX=dH.A": (dh, la, "accumulate", dx_t, False),
    }
    fwd, bwd = [], []
    for key, (a_op, b_op, out, out_t, int32) in ops.items():
        if key == "bwd_dX=dH.A" and not l.x_grad:
            continue
        kind = kinds[key]
        m, k, n = kind.shape(t, di, do, r)
        mu, ku, nu = kind.shape(t, orig.d_in, orig.d_out, r)
        gm = StepGemm("lora", l.name, key, kind.direction, l.block, m, k, n, 1, kind.trans_a, kind.trans_b,
                      a_op, b_op, out, out_t, out_int32=int32, accumulate=out == "accumulate",
                      lora_layer=l.name, useful_macs=mu * ku * nu)
        (fwd if kind.direction == "fwd" else bwd).append(gm)
    return fwd, bwd[::-1]


# ----------------------------------------------------------------------------- totals

def mac_totals(gemms: Sequence[StepGemm]) -> dict[str, dict[str, int]]:
    """Useful and array MACs by family and direction, and in total."""
    out: dict[str, dict[str, int]] = {}
    for g in gemms:
        for key in (f"{g.family}.{g.direction}", g.family, g.direction, "total"):
            d = out.setdefault(key, {"useful": 0, "array": 0, "gemms": 0, "calls": 0})
            d["useful"] += g.useful_macs
            d["array"] += g.macs
            d["gemms"] += g.batch
            d["calls"] += 1
    return out


def check_macs(tr: StepTrace, gemms: Sequence[StepGemm]) -> dict:
    """The structural MAC count against the ATen operators' own count: forward, and backward
    without the stand-in weight gradients (useful MACs: the CPU kernels skip dilation zeros)."""
    base = [g for g in gemms if g.family != "lora"]
    fwd = sum(g.useful_macs for g in base if g.direction == "fwd")
    bwd = sum(g.useful_macs for g in base if g.direction == "bwd")
    aten_bwd = tr.aten_macs["bwd"] - tr.aten_macs["bwd_standin"]
    return {"structural_fwd": fwd, "aten_fwd": tr.aten_macs["fwd"], "structural_bwd": bwd, "aten_bwd": aten_bwd,
            "equal": fwd == tr.aten_macs["fwd"] and bwd == aten_bwd}


def order_rule_extra(tr: StepTrace) -> dict:
    """Input-gradient MACs that the rule "every layer executed after the first LoRA layer" would
    add to the exact dependence rule, and what "every layer" would add (the upper bound)."""
    first = next((l.seq for l in tr.linears if l.name == tr.first_lora), 0)
    after = {"linear": 0, "conv": 0}
    every = {"linear": 0, "conv": 0}
    layers = [("linear", l.seq, l.x_grad, l.tokens * l.d_in * l.d_out) for l in tr.linears]
    layers += [("conv", c.seq, c.x_grad, c.geom.images * c.geom.ho * c.geom.wo * c.geom.cin * c.geom.kh
                * c.geom.kw * c.cout) for c in tr.convs]
    for fam, seq, needed, macs in layers:
        if not needed:
            every[fam] += macs
            if seq > first:
                after[fam] += macs
    return {"after_first_lora": after, "every_layer": every, "first_lora": tr.first_lora}


def inventory(model: str = "sd15", rank: int = 4, resolution: int | None = None) -> dict:
    """MAC totals of one step (useful and array MACs by family and direction), the check against
    the ATen count, the input-gradient rule's effect, and counts of layers and host operators."""
    tr = trace_step(model, resolution)
    gemms = step_gemms(tr, rank)
    host_elems = sum(h.read + h.written for h in tr.host_ops)
    return {
        "model": model, "resolution": tr.resolution, "batch": tr.batch, "rank": rank,
        "macs": mac_totals(gemms), "check": check_macs(tr, gemms), "input_gradient_rule": order_rule_extra(tr),
        "layers": {"linear": len(tr.linears), "conv": len(tr.convs), "attention": len(tr.attentions),
                   "lora": len(tr.targets_layers),
                   "linear_dgrad": sum(l.x_grad for l in tr.linears), "conv_dgrad": sum(c.x_grad for c in tr.convs)},
        "host_ops": len(tr.host_ops), "host_elements_fp32": host_elems,
        "calls": len(gemms),
    }
