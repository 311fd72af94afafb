"""LoRA fused with its base layer (lora/fused.py, ``--fuse-lora``): each fused call against the
same math done unfused on the same quantized operands (INT32 outputs exact), the layer's
output and gradients against an independent reference, A's in-place rewrite, the accounting
(fewer calls and bytes than unfused) and the refusals."""

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model

from lora_qta.errors import AdapterError, InputShapeError, LimitError
from lora_qta.lora import offload
from lora_qta.lora.fused import FAMILY, FusedLinear
from lora_qta.lora.layer import QtaRuntime, accelerated_lora_config, attach_runtime, lora_grads
from lora_qta.lora.quant import quantize
from lora_qta.runtime.accelerator import Accelerator

QMAX = 127
D_IN, D_OUT, RANK = 48, 40, 4


class Block(torch.nn.Module):
    """to_q (adapted, has an input gradient), to_k (adapted, reads a constant: no input gradient)
    and out (frozen, not adapted)."""

    def __init__(self):
        super().__init__()
        self.to_q = torch.nn.Linear(D_IN, D_OUT)
        self.to_k = torch.nn.Linear(D_IN, D_OUT, bias=False)
        self.out = torch.nn.Linear(D_OUT, 16)

    def forward(self, x, ctx):
        return self.out(torch.tanh(self.to_q(x)) * self.to_k(ctx))


def make_net(seed=0, dropout=0.0, backend="fast"):
    torch.manual_seed(seed)
    net = Block()
    cfg = accelerated_lora_config(r=RANK, lora_alpha=2 * RANK, init_lora_weights="gaussian",
                                  target_modules=["to_q", "to_k"], lora_dropout=dropout)
    net = inject_adapter_in_model(cfg, net)
    for name, p in net.named_parameters():
        p.requires_grad_("lora_" in name)
        if "lora_B" in name:  # non-zero B: every gradient path carries signal
            with torch.no_grad():
                p.copy_(torch.randn_like(p) * 0.1)
    acc = Accelerator("zcu104", backend)
    rt = QtaRuntime(acc, seed=3)
    attach_runtime(net, rt)
    return net, acc, rt


def inputs(seed=1):
    torch.manual_seed(seed)
    scale = torch.logspace(-2, 1, 12).view(2, 6, 1)  # tokens of very different magnitude
    return torch.randn(2, 6, D_IN) * scale, torch.randn(2, 6, D_IN), torch.randn(2, 6, 16)


def step(net, x, ctx, g):
    xr = x.clone().requires_grad_(True)
    y = net(xr, ctx)
    y.backward(g)
    return y.detach(), xr.grad


def ref_rows(x):
    x = x.detach().float()
    s = x.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / QMAX
    return (x / s).round().clamp(-QMAX, QMAX).to(torch.int64), s


def ref_weight_rows(w):
    s = w.detach().abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / QMAX
    return (w.detach() / s).round().clamp(-QMAX, QMAX).to(torch.int64), s.flatten().double().float()


def test_the_fused_calls_equal_the_unfused_gemms_on_the_same_quantized_operands():
    """[Y | H] = X.[W; A]^T and dX = [dY | dH].[W; A] read the resident stacked buffer; their INT32
    outputs are exactly the two separate GEMMs' (X.W^T next to X.A^T; dY.W + dH.A)."""
    net, acc, rt = make_net()
    off = offload.install(net, acc, rt, scheme="row", fuse_lora=True)
    x, ctx, g = inputs()
    step(net, x, ctx, g)                                       # places A's rows
    f = net.to_q.qta_fused
    a = net.to_q.lora_A["default"].weight
    wq, _ = ref_weight_rows(net.to_q.base_layer.weight)
    aq, _ = ref_weight_rows(a)
    xq, _ = ref_rows(x.reshape(-1, D_IN))
    x8 = xq.to(torch.int8)
    fused = acc.gemm(x8, f.w, trans_b=True).output
    w8, a8 = wq.to(torch.int8), aq.to(torch.int8)
    sep = torch.cat([acc.gemm(x8, w8, trans_b=True).output, acc.gemm(x8, a8, trans_b=True).output], dim=1)
    assert fused.dtype == torch.int32 and torch.equal(fused, sep)
    assert torch.equal(fused.long(), xq @ torch.cat([wq, aq]).T)
    l8 = torch.randint(-127, 128, (12, D_OUT + RANK), dtype=torch.int8)
    dx = acc.gemm(l8, f.w).output
    assert torch.equal(dx, acc.gemm(l8[:, :D_OUT].contiguous(), w8).output
                       + acc.gemm(l8[:, D_OUT:].contiguous(), a8).output)
    offload.uninstall(net, off)
    assert acc.resident_bytes == 0 and net.to_q.qta_fused is None


@pytest.mark.parametrize("backend", ["fast", "csim"])
def test_the_fused_layer_equals_the_reference_of_its_math(backend):
    """Output, input gradient and LoRA gradients of a fused layer against an independent
    reference: the base forward is the unfused row scheme's exactly (same X_q, same W_q); H is
    X_q.A_q^T with A per row; dX = L_q.[W_q; A_q] x (token scale) with L = [dY.diag(s_W) |
    dH.diag(s_A)] quantized jointly per token; dA and dB are the LoRA runtime's own."""
    net, acc, rt = make_net(backend=backend)
    offload.install(net, acc, rt, scheme="row", fuse_lora=True)
    x, ctx, g = inputs()
    lin = net.to_q
    w, a, b = lin.base_layer.weight, lin.lora_A["default"].weight, lin.lora_B["default"].weight
    s = float(lin.scaling["default"])
    # the gradient reaching to_q's output, and to_q's output itself, from a plain fp32 autograd of the rest
    xr = x.clone().requires_grad_(True)
    yq = net.to_q(xr)
    yq.retain_grad()
    y = net.out(torch.tanh(yq) * net.to_k(ctx))
    y.backward(g)
    g_q = yq.grad.reshape(-1, D_OUT)

    x2 = x.reshape(-1, D_IN)
    xq, sx = ref_rows(x2)
    wq, sw = ref_weight_rows(w)
    aq, sa = ref_weight_rows(a)
    y_base = (xq @ wq.T).float() * sx * sw
    h = (xq @ aq.T).float() * sx * sa
    hq, bq = quantize(h, "row"), quantize(b, "tensor")
    y_lora = (hq.q.long() @ bq.q.long().T).float() * hq.scale * bq.scale * s
    want = (y_base.reshape(2, 6, D_OUT) + lin.base_layer.bias) + y_lora.reshape(2, 6, D_OUT)
    assert torch.equal(yq.detach(), want)

    ref_rt = QtaRuntime(Accelerator("zcu104", "fast"), seed=3)   # the same seed: the same rounding streams
    dh, da, db = lora_grads(ref_rt, g_q.contiguous(), x2, h, bq, s, lin.qta_layer_id)
    assert torch.equal(a.grad, da) and torch.equal(b.grad, db)
    lq, sl = ref_rows(torch.cat([g_q * sw, dh * sa], dim=1))
    dx = (lq @ torch.cat([wq, aq])).float() * sl
    assert torch.equal(xr.grad, dx.reshape(2, 6, D_IN))
    st = net.to_q.qta_fused.off.stats[FAMILY]
    # to_q: forward and input gradient; to_k: forward only (its input is a constant)
    assert st.calls == 3 and rt.stats["fwd_H=X.At"].gemms == 0 and rt.stats["bwd_dX=dH.A"].gemms == 0


def test_a_is_rewritten_in_place_only_after_it_changed():
    net, acc, rt = make_net()
    off = offload.install(net, acc, rt, scheme="row", fuse_lora=True)
    f: FusedLinear = net.to_q.qta_fused
    handle, placed = f.w, acc.resident_bytes
    x, ctx, g = inputs()
    w_rows = handle.buffer(acc)[:D_OUT * handle.ld].copy()
    step(net, x, ctx, g)
    assert off.fusion["a_rewrites"] == 2                      # to_q and to_k, at their first forward
    step(net, x, ctx, g)
    assert off.fusion["a_rewrites"] == 2                      # A unchanged: nothing written
    a = net.to_q.lora_A["default"].weight
    with torch.no_grad():
        a.mul_(1.5).add_(0.01)                                 # what an optimizer step does
    step(net, x, ctx, g)
    assert off.fusion["a_rewrites"] == 3
    assert off.fusion["a_rewrite_bytes"] == 3 * RANK * handle.ld   # A's rows only, padded to the beat
    assert f.w is handle and acc.resident_bytes == placed      # the same buffer, nothing placed again
    rows = torch.from_numpy(handle.buffer(acc).view("int8").reshape(-1, handle.ld)[:, :D_IN].copy())
    assert torch.equal(rows[D_OUT:].long(), ref_weight_rows(a)[0])
    assert (handle.buffer(acc)[:D_OUT * handle.ld] == w_rows).all()   # W's rows untouched
    with pytest.raises(InputShapeError, match="do not fit"):
        acc.write_rows(handle, D_OUT + 1, torch.zeros(RANK, D_IN, dtype=torch.int8))


def test_fusion_makes_fewer_calls_and_moves_fewer_bytes_and_places_one_copy_of_w():
    x, ctx, g = inputs()
    figures = {}
    for fuse in (False, True):
        net, acc, rt = make_net()
        off = offload.install(net, acc, rt, scheme="row", fuse_lora=fuse)
        step(net, x, ctx, g)
        fam = off.report()["families"]
        figures[fuse] = (sum(fam[k]["calls"] for k in ("linear", "lora", FAMILY) if k in fam),
                         sum(fam[k]["bytes_moved"] for k in ("linear", "lora", FAMILY) if k in fam),
                         off.weights["resident_bytes"], off.report()["fuse_lora"])
    assert figures[True][0] < figures[False][0] and figures[True][1] < figures[False][1]
    assert figures[True][2] < figures[False][2]  # [W; A] once, not W per output and per input channel
    assert figures[True][3] is True and figures[False][3] is False


def test_fused_results_are_the_same_resident_or_per_call():
    x, ctx, g = inputs()
    outs = []
    for resident in (True, False):
        net, acc, rt = make_net()
        off = offload.install(net, acc, rt, scheme="row", fuse_lora=True)
        if not resident:
            offload.free_weights(off)
            assert acc.resident_bytes == 0
        outs.append(step(net, x, ctx, g) + (net.to_q.lora_A["default"].weight.grad,))
    assert all(torch.equal(p, q) for p, q in zip(*outs))


def test_fusion_refuses_what_it_cannot_express():
    net, acc, rt = make_net()
    with pytest.raises(LimitError, match="--fuse-lora needs the row offload scheme"):
        offload.install(net, acc, rt, scheme="tensor", fuse_lora=True)
    net, acc, rt = make_net(dropout=0.1)
    with pytest.raises(AdapterError, match="LoRA dropout"):
        offload.install(net, acc, rt, scheme="row", fuse_lora=True)
    net, acc, rt = make_net()
    inject_adapter_in_model(accelerated_lora_config(r=RANK, lora_alpha=RANK, target_modules=["to_q"]), net,
                            adapter_name="second")
    net.to_q.set_adapter(["default", "second"])
    with pytest.raises(AdapterError, match="2 active adapters"):
        offload.install(net, acc, rt, scheme="row", fuse_lora=True)


def test_suspended_and_uninstalled_fused_layers_run_the_plain_path():
    """Under :func:`offload.suspended` (held-out evaluation) a fused layer is fp32 PyTorch, and
    after uninstall it is the unfused LoRA layer again."""
    net, acc, rt = make_net()
    off = offload.install(net, acc, rt, scheme="row", fuse_lora=True)
    x, ctx, _ = inputs()
    attach_runtime(net, None)
    with offload.suspended(net, off):
        y = net(x, ctx)
    plain = inject_adapter_in_model(LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=["to_q", "to_k"]),
                                    Block())
    plain.load_state_dict(net.state_dict())
    assert torch.equal(y, plain(x, ctx)) and off.stats[FAMILY].calls == 0
    attach_runtime(net, rt)
    offload.uninstall(net, off)
    net(x, ctx)
    assert off.stats[FAMILY].calls == 0 and rt.stats["fwd_H=X.At"].gemms == 2
