"""The whole-step GEMM inventory traced from the diffusers UNet on the meta device: MAC totals
against independent figures, shapes of known layers, which input gradients a LoRA step needs,
and the fused GEMMs' shapes."""

from __future__ import annotations

import pytest

from lora_qta.analysis import inventory as inv
from lora_qta.analysis import step


@pytest.fixture(scope="module")
def sd15():
    tr = inv.trace_step("sd15")
    return tr, inv.step_gemms(tr, 4)


def _one(gemms, name, op):
    found = [g for g in gemms if g.name == name and g.op == op]
    assert len(found) == 1, (name, op, len(found))
    return found[0]


def test_sd15_macs_match_the_independent_figures(sd15):
    """fqt.md / issue 13: 401.6 GMAC forward (conv ~55%, linear ~29%, attention ~16%), about 856 GMAC
    with the frozen layers' input gradients and the attention backward, 1.7 GMAC of LoRA at rank 4;
    the ATen operators of the traced step count the same MACs as the structural inventory."""
    tr, gemms = sd15
    m = inv.mac_totals(gemms)
    fwd = m["fwd"]["useful"] - m["lora.fwd"]["useful"]
    assert fwd == 401_636_720_640
    assert [round(m[f"{f}.fwd"]["useful"] / fwd, 2) for f in ("conv", "linear", "attention")] == [0.55, 0.29, 0.16]
    base = m["total"]["useful"] - m["lora"]["useful"]
    assert 855e9 < base < 856e9
    assert 1.68e9 < m["lora"]["useful"] < 1.70e9
    # the dilated input gradients of the three stride-2 downsamplers: 4x their useful MACs on the array
    assert m["conv.bwd"]["array"] - m["conv.bwd"]["useful"] == 3 * 3 * 32 * 32 * 9 * 320 * 320
    check = inv.check_macs(tr, gemms)
    assert check["equal"], check


def test_sd15_known_layer_shapes(sd15):
    _, gemms = sd15
    g = _one(gemms, "conv_in", "fwd")
    assert (g.m, g.k, g.n, g.conv.stride, g.conv.pad) == (64 * 64, 4 * 9, 320, 1, 1)
    down = _one(gemms, "down_blocks.0.downsamplers.0.conv", "dgrad")
    assert (down.m, down.k, down.n) == (64 * 64, 320 * 9, 320)
    assert (down.conv.dil, down.conv.h, down.conv.ho, down.conv.pad) == (2, 32, 64, 1)
    assert down.macs == 4 * down.useful_macs
    attn = "down_blocks.0.attentions.0.transformer_blocks.0"
    qk = _one(gemms, f"{attn}.attn1", "qk")
    assert (qk.batch, qk.m, qk.k, qk.n, qk.trans_b, qk.out, qk.out_int32) == (8, 4096, 40, 4096, True, "host", True)
    pv = _one(gemms, f"{attn}.attn2", "pv")
    assert (pv.batch, pv.m, pv.k, pv.n) == (8, 4096, 77, 40)
    dv = _one(gemms, f"{attn}.attn2", "dv")
    assert (dv.m, dv.k, dv.n, dv.trans_a) == (77, 4096, 40, True)
    ff = _one(gemms, f"{attn}.ff.net.0.proj", "fwd")
    assert (ff.m, ff.k, ff.n) == (4096, 320, 2 * 1280)
    h = _one(gemms, f"{attn}.attn1.to_q", "fwd_H=X.At")
    assert (h.m, h.k, h.n, h.out) == (4096, 320, 4, "gemm")


def test_input_gradients_only_where_an_adapter_is_upstream(sd15):
    """No input gradient before the first adapted layer, for the time embedding, nor for the
    cross-attention keys and values (their input is the frozen text encoder's output)."""
    tr, gemms = sd15
    dgrad = {g.name for g in gemms if g.op == "dgrad"}
    first = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    assert tr.first_lora == first and first not in dgrad
    assert "conv_in" not in dgrad and "down_blocks.0.resnets.0.conv1" not in dgrad
    assert not any(n.startswith("time_embedding") or n.endswith("time_emb_proj") for n in dgrad)
    assert not any(n.endswith(("attn2.to_k", "attn2.to_v")) for n in dgrad)
    assert "up_blocks.3.resnets.2.conv2" in dgrad and "down_blocks.0.attentions.0.proj_out" in dgrad
    # LoRA's dX = dH.A exactly where the base layer has an input gradient
    lora_dx = {g.name for g in gemms if g.op == "bwd_dX=dH.A"}
    assert lora_dx == {l.name for l in tr.targets_layers} & dgrad
    rule = inv.order_rule_extra(tr)
    assert rule["after_first_lora"]["linear"] > 0 and rule["every_layer"]["conv"] > rule["after_first_lora"]["conv"]


def test_fused_gemms_stack_the_weights(sd15):
    """[Y | H] = X.[W; A]^T has N = out + r and reads the same X; dX = [dY | dH].[W; A] has K = out + r;
    each does the MACs of the two GEMMs it replaces."""
    _, gemms = sd15
    layer = "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0"
    idx = step.pair_index(gemms)
    for which in ("fwd", "dgrad"):
        i, j = idx[(layer, which)]
        f = step.fused_gemm(gemms[i], gemms[j], which)
        base, lora = gemms[i], gemms[j]
        assert f.useful_macs == base.useful_macs + lora.useful_macs == f.macs
        assert (f.m, f.a) == (base.m, base.a)
        if which == "fwd":
            assert (f.k, f.n, f.extra_n, f.extra_out) == (base.k, base.n + 4, 4, lora.out_tensor)
            assert f.out_elements == base.out_elements
        else:
            assert (f.k, f.n) == (base.k + 4, base.n)
    fused = step.fuse(gemms, [(layer, "fwd"), (layer, "dgrad")])
    assert len(fused) == len(gemms) - 2
    assert sum(g.useful_macs for g in fused) == sum(g.useful_macs for g in gemms)
    # no input-gradient fusion with per-token scales
    assert {w for _, w in step.fusable(gemms, "dynamic")} == {"fwd"}
