"""The accelerated LoRA layer: peft integration and INT8 gradients against fp32, per layer."""

import copy

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model

from lora_qta.runtime.accelerator import Accelerator
from lora_qta.lora.gemms import LORA_GEMMS
from lora_qta.lora.layer import (QtaLoraLinear, QtaRuntime, accelerated_lora_config,
                                 attach_runtime)
from lora_qta.lora.quant import quantize


class Block(torch.nn.Module):
    def __init__(self, d=96):
        super().__init__()
        self.to_q = torch.nn.Linear(d, d)
        self.to_v = torch.nn.Linear(d, 64)
        self.other = torch.nn.Linear(64, 8)

    def forward(self, x):
        return self.other(torch.tanh(self.to_v(torch.tanh(self.to_q(x)))))


def make_pair(rank=8, seed=0):
    torch.manual_seed(seed)
    base = Block()
    kw = dict(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=["to_q", "to_v"])
    ref = inject_adapter_in_model(LoraConfig(**kw), copy.deepcopy(base))
    q = inject_adapter_in_model(accelerated_lora_config(**kw), copy.deepcopy(base))
    q.load_state_dict(ref.state_dict())
    with torch.no_grad():  # non-zero B so every gradient path carries signal
        for (n1, p1), (n2, p2) in zip(ref.named_parameters(), q.named_parameters()):
            if "lora_B" in n1:
                p1.copy_(torch.randn_like(p1) * 0.05)
                p2.copy_(p1)
    return ref, q


def cosine(a, b):
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


def test_custom_module_replaces_peft_linear_with_same_keys():
    ref, q = make_pair()
    assert isinstance(q.to_q, QtaLoraLinear) and not isinstance(ref.to_q, QtaLoraLinear)
    assert set(ref.state_dict()) == set(q.state_dict())
    assert attach_runtime(q, None) == 2


@pytest.mark.parametrize("backend", ["fast", "csim"])
def test_int8_gradients_match_fp32_per_layer(backend):
    """Bounds: forward output cosine > 0.999 and relative error < 3%; LoRA gradients
    cosine > 0.99 and relative error < 15% (INT8 with stochastic rounding of gradients)."""
    ref, q = make_pair()
    rt = QtaRuntime(Accelerator("zcu104", backend), seed=1)
    attach_runtime(q, rt)
    x = torch.randn(4, 50, 96)
    target = torch.randn(4, 50, 8)
    outs = {}
    for name, model in (("fp32", ref), ("int8", q)):
        y = model(x)
        torch.nn.functional.mse_loss(y, target).backward()
        outs[name] = (y.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    y32, g32 = outs["fp32"]
    y8, g8 = outs["int8"]
    assert cosine(y32, y8) > 0.999 and ((y32 - y8).norm() / y32.norm()).item() < 0.03
    assert set(g32) == set(g8) and len(g32) == 4  # lora_A/B of two layers (dX of to_v reaches to_q)
    for n in g32:
        rel = ((g32[n] - g8[n]).norm() / g32[n].norm()).item()
        assert cosine(g32[n], g8[n]) > 0.99 and rel < 0.15, (n, cosine(g32[n], g8[n]), rel)
    rep = rt.report()
    # two layers; the first layer's dX is skipped because the input needs no gradient
    assert [rep[g.key]["gemms"] for g in LORA_GEMMS] == [2, 2, 2, 2, 2, 1]
    # the weight gradients run in up to two magnitude groups (one call each)
    assert [rep[g.key]["calls"] for g in LORA_GEMMS[:3]] == [2, 2, 2] and rep[LORA_GEMMS[5].key]["calls"] == 1
    assert all(2 <= rep[g.key]["calls"] <= 4 for g in LORA_GEMMS[3:5])
    assert all(0 < rep[g.key]["utilization"] <= 1 for g in LORA_GEMMS)


def test_stochastic_rounding_is_seeded_and_step_dependent():
    ref, q = make_pair()
    x = torch.randn(2, 30, 96)

    def grads(seed, step):
        q.zero_grad()
        rt = QtaRuntime(Accelerator("zcu104", "fast"), seed=seed)
        rt.step = step
        attach_runtime(q, rt)
        q(x).square().mean().backward()
        return torch.cat([p.grad.flatten() for n, p in q.named_parameters() if "lora" in n])

    assert torch.equal(grads(3, 0), grads(3, 0))
    assert not torch.equal(grads(3, 0), grads(3, 1))
    assert not torch.equal(grads(3, 0), grads(4, 0))


def test_zero_b_first_step_has_no_nan():
    """peft's gaussian init has B = 0: G.B = 0 must quantize with the epsilon scale."""
    torch.manual_seed(0)
    q = inject_adapter_in_model(accelerated_lora_config(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                                        target_modules=["to_q"]), Block())
    attach_runtime(q, QtaRuntime(Accelerator("zcu104", "fast")))
    q(torch.randn(2, 10, 96)).sum().backward()
    for n, p in q.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), n
    assert q.to_q.lora_B["default"].weight.grad.abs().sum() > 0


def test_quantizer_errors_and_scales():
    with pytest.raises(FloatingPointError):
        quantize(torch.tensor([[float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="2-D"):
        quantize(torch.zeros(3))
    q = quantize(torch.tensor([[1.0, -2.0], [0.0, 0.0]]), "row")
    assert q.q.tolist() == [[64, -127], [0, 0]] and q.scale.shape == (2, 1)


def test_lora_bias_is_supported():
    """Issue 9, item 12: QtaLoraLinear dropped lora_B's bias (peft's lora_bias=True) silently."""
    torch.manual_seed(0)
    base = Block()
    kw = dict(r=4, lora_alpha=8, init_lora_weights=True, target_modules=["to_q"], lora_bias=True)
    ref = inject_adapter_in_model(LoraConfig(**kw), copy.deepcopy(base))
    q = inject_adapter_in_model(accelerated_lora_config(**kw), copy.deepcopy(base))
    with torch.no_grad():
        ref.to_q.lora_B["default"].bias.fill_(0.5)
    q.load_state_dict(ref.state_dict())
    attach_runtime(q, QtaRuntime(Accelerator("zcu104", "fast")))
    x = torch.randn(2, 10, 96)
    y_ref, y_q = ref.to_q(x), q.to_q(x)
    assert torch.allclose(y_ref, y_q, atol=1e-3)  # B = 0 apart from the bias: the bias is the LoRA output
    y_q.sum().backward()
    y_ref.sum().backward()
    g_ref, g_q = ref.to_q.lora_B["default"].bias.grad, q.to_q.lora_B["default"].bias.grad
    assert g_q is not None and torch.allclose(g_q, g_ref)


def test_the_unfused_layer_is_exactly_its_six_quantized_gemms():
    """The unfused path (``QtaLoraFunction``, shared with --fuse-lora through ``lora_up`` and
    ``lora_grads``) against the six GEMMs written out here on the same quantizers, in integers:
    H on SmoothQuant-scaled X and per-tensor A, Y on per-token H and per-tensor B, dH and dX with
    the seeded stochastic rounding of G and dH, dA and dB from the runtime's token sums."""
    from lora_qta.lora.layer import QtaLoraFunction
    from lora_qta.lora.quant import smoothing_factors

    torch.manual_seed(5)
    x, a, b = torch.randn(30, 24) * torch.logspace(-1, 1, 24), torch.randn(4, 24) * 0.2, torch.randn(16, 4) * 0.1
    g, s, lid = torch.randn(30, 16), 0.5, 3
    rt = QtaRuntime(Accelerator("zcu104", "fast"), seed=2)
    rt.step = 7
    xr, ar, br = (t.clone().requires_grad_(True) for t in (x, a, b))
    y = QtaLoraFunction.apply(xr, ar, br, s, rt, lid)
    y.backward(g)

    def mm(p, q):
        return (p.q.long() @ q.q.long()).float()

    f = smoothing_factors(x.abs().amax(0), a.abs().amax(0), QtaRuntime.SMOOTH_ALPHA)
    xq, aq = quantize(x / f, "row"), quantize(a * f, "tensor")
    h = (xq.q.long() @ aq.q.long().T).float() * xq.scale * aq.scale
    hq, bq = quantize(h, "row"), quantize(b, "tensor")
    assert torch.equal(y.detach(), (hq.q.long() @ bq.q.long().T).float() * hq.scale * bq.scale * s)
    gq = quantize(g, "row", rt.generator(lid, 0))
    dh = mm(gq, bq) * gq.scale * bq.scale * s
    dhq, at = quantize(dh, "row", rt.generator(lid, 3)), quantize(a, "tensor")
    assert torch.equal(xr.grad, mm(dhq, at) * dhq.scale * at.scale)
    ref = QtaRuntime(Accelerator("zcu104", "fast"), seed=2)
    ref.step = 7
    assert torch.equal(br.grad, ref.token_sum(LORA_GEMMS[3], g, h, ref.generator(lid, 1)) * s)
    assert torch.equal(ar.grad, ref.token_sum(LORA_GEMMS[4], dh, x, ref.generator(lid, 2)))


def test_token_sum_balances_each_group_as_it_gathers_it():
    """token_sum applies the balancing factors to each magnitude group's rows as it gathers them:
    the same INT8 operands, scales and result as balancing every token first (balance_tokens) and
    gathering the groups of the balanced tensors, bit for bit, with stochastic rounding."""
    from lora_qta.lora.quant import balance_tokens, magnitude_groups

    g = torch.Generator().manual_seed(7)
    p = torch.randn(700, 24, generator=g) * torch.logspace(-4, 2, 700, dtype=torch.float32)[:, None]
    q = torch.randn(700, 8, generator=g) * torch.logspace(1, -3, 700, dtype=torch.float32)[:, None]
    rt = QtaRuntime(Accelerator("zcu104", "fast"), seed=3)
    got = rt.token_sum(LORA_GEMMS[3], p, q, torch.Generator().manual_seed(5))
    pb, qb, key = balance_tokens(p, q)
    groups = magnitude_groups(key, rt.GROUP_RATIO)
    assert len(groups) == 2
    gen = torch.Generator().manual_seed(5)
    want = torch.zeros(24, 8, dtype=torch.float64)
    for idx in groups:
        pq, qq = quantize(pb[idx], "col", gen), quantize(qb[idx], "col")
        acc = pq.q.long().T @ qq.q.long()
        want += acc.double() * pq.scale.T.double() * qq.scale.double()
    assert torch.equal(got, want.float())


def _two_groups(n: int, wide: int, rank: int, narrow_p: bool, seed: int = 7):
    """p, q of a token sum whose tokens fall into two magnitude groups (p the narrow side when
    ``narrow_p``: dA = dH^T.X; else q: dB = G^T.H)."""
    g = torch.Generator().manual_seed(seed)
    mag = torch.logspace(-4, 2, n, dtype=torch.float32)[:, None]
    pw, qw = (rank, wide) if narrow_p else (wide, rank)
    return torch.randn(n, pw, generator=g) * mag, torch.randn(n, qw, generator=g) * mag.flip(0) ** 0.5


def _groups_reference(rt, p, q, seed):
    """token_sum written out: one INT64 product per magnitude group, rescaled and added."""
    from lora_qta.lora.quant import balance_tokens, magnitude_groups

    pb, qb, key = balance_tokens(p, q)
    groups = magnitude_groups(key, rt.GROUP_RATIO)
    gen = torch.Generator().manual_seed(seed)
    want = torch.zeros(p.shape[1], q.shape[1], dtype=torch.float64)
    for idx in groups:
        pq, qq = quantize(pb[idx], "col", gen), quantize(qb[idx], "col")
        want += (pq.q.long().T @ qq.q.long()).double() * pq.scale.T.double() * qq.scale.double()
    return want.float(), len(groups)


@pytest.mark.parametrize("board,rank,calls", [("zcu104", 4, 1), ("zcu104", 16, 1), ("pynq_z2", 4, 1),
                                              ("pynq_z2", 16, 2)])
@pytest.mark.parametrize("kind", [3, 4])
def test_token_sum_groups_in_one_call_or_apart_give_the_same_bits(board, rank, calls, kind):
    """The two magnitude groups of dB (q = H the rank side) and dA (p = dH the rank side) run as
    ONE call with the rank side block-diagonal where the cycle model prefers it (ZCU104; PYNQ-Z2
    at rank 4) and one call per group where it does not (PYNQ-Z2 at rank 16, whose array the
    doubled rank no longer fits): the same bits either way, as the sum written out per group.
    The figures count the calls made and only the useful MACs (not the zero blocks)."""
    kind = LORA_GEMMS[kind]
    narrow_p = kind is LORA_GEMMS[4]
    p, q = _two_groups(2048, 320, rank, narrow_p)
    rt = QtaRuntime(Accelerator(board, "fast"), seed=3)
    got = rt.token_sum(kind, p, q, torch.Generator().manual_seed(5))
    want, groups = _groups_reference(rt, p, q, 5)
    assert groups == 2
    assert torch.equal(got, want)
    st = rt.stats[kind.key]
    assert (st.gemms, st.calls) == (1, calls)
    assert st.macs == 2048 * rank * 320


def test_one_call_follows_the_kernels_cycle_counter():
    """The decision (made on the planner's model of densely stored operands) agrees with the
    emulated kernel's own modelled cycle counter on the calls it compares, on both sides of the
    choice; it charges the issue time of the ONE call saved (the board's call_us): a call time
    just below the cycle difference keeps two calls, just above it takes one; and it is made per
    board (a board with other host facts is decided anew)."""
    import dataclasses

    import numpy as np

    cases = [("zcu104", 320, 4, True), ("pynq_z2", 320, 16, False)]
    kind = LORA_GEMMS[4]  # dA = dH^T.X: p = dH (tokens x rank), q = X (tokens x wide)
    for board, wide, rank, expect in cases:
        acc = Accelerator(board, "fast")
        rt = QtaRuntime(acc)
        assert rt.one_call(kind, 2048, (rank, wide), 2) is expect
        rng = np.random.default_rng(0)
        x = torch.from_numpy(rng.integers(-128, 128, (2048, wide), dtype=np.int8))
        dh = torch.from_numpy(rng.integers(-128, 128, (2048, 2 * rank), dtype=np.int8))
        apart = sum(acc.gemm(dh[t0:t0 + 1024, :rank].contiguous(), x[t0:t0 + 1024], trans_a=True, k_bucket=4).cycles
                    for t0 in (0, 1024))
        one = acc.gemm(dh, x, trans_a=True, k_bucket=4).cycles
        issue = acc.board.host.call_us * acc.board.clock_mhz
        assert (one <= apart + issue) is expect
    board = acc.board  # PYNQ-Z2, rank 16: one call costs more cycles than two
    assert one > apart
    for factor, expect in ((0.75, False), (1.25, True)):
        call_us = factor * (one - apart) / board.clock_mhz
        rt.acc.board = dataclasses.replace(board, host=dataclasses.replace(board.host, call_us=call_us))
        assert rt.one_call(kind, 2048, (16, 320), 2) is expect, factor


def test_token_sum_beyond_the_limits_runs_in_pieces_as_before():
    """Under limits the single call would exceed (the doubled rank side wider than max_n, or
    more tokens than max_k), the token sum takes one call per group, cut into pieces by the
    accelerator or by K, and still equals the sum written out per group; nothing raises."""
    from dataclasses import replace

    for board_limits, narrow_p in (({"max_m": 5, "max_n": 4, "max_k": 7}, False),
                                   ({"max_m": 4, "max_n": 5, "max_k": 7}, True),
                                   ({"max_k": 64}, True)):
        p, q = _two_groups(130, 5, 3, narrow_p, seed=11)
        rt = QtaRuntime(Accelerator("zcu104", "fast"), seed=3)
        rt.acc.board = replace(rt.acc.board, **board_limits)
        got = rt.token_sum(LORA_GEMMS[4 if narrow_p else 3], p, q, torch.Generator().manual_seed(5))
        want, groups = _groups_reference(rt, p, q, 5)
        assert groups == 2 and torch.equal(got, want)
        st = rt.stats[LORA_GEMMS[4 if narrow_p else 3].key]
        assert st.gemms == 1 and st.calls > 2


def test_token_sum_with_equal_widths_or_no_groups():
    """Equal widths (p's side is laid out block-diagonally) and one group over all tokens
    (wgrad_groups False: no balancing, one call) both equal the product written out."""
    p, q = _two_groups(500, 8, 8, True, seed=2)
    rt = QtaRuntime(Accelerator("zcu104", "fast"), seed=3)
    got = rt.token_sum(LORA_GEMMS[4], p, q, torch.Generator().manual_seed(5))
    want, _ = _groups_reference(rt, p, q, 5)
    assert torch.equal(got, want) and rt.stats[LORA_GEMMS[4].key].calls == 1
    flat = QtaRuntime(Accelerator("zcu104", "fast"), seed=3, wgrad_groups=False)
    got = flat.token_sum(LORA_GEMMS[4], p, q, torch.Generator().manual_seed(5))
    pq, qq = quantize(p, "col", torch.Generator().manual_seed(5)), quantize(q, "col")
    want = ((pq.q.long().T @ qq.q.long()).double() * pq.scale.T.double() * qq.scale.double()).float()
    assert torch.equal(got, want) and flat.stats[LORA_GEMMS[4].key].calls == 1
