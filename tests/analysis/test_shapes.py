"""LoRA shapes of SD1.5 / SDXL, derived from their diffusers configurations on the meta device."""

from __future__ import annotations

from collections import Counter

import pytest

from lora_qta.analysis import shapes


def _level(name: str) -> str:
    parts = name.split(".")
    return "mid" if parts[0] == "mid_block" else f"{parts[0]}.{parts[1]}"


def test_sd15_has_128_lora_linears_with_797184_params_at_rank_4():
    layers = shapes.lora_layers("sd15")
    assert len(layers) == 128
    assert shapes.lora_params(layers, 4) == 797_184
    assert Counter(l.name.rsplit(".", 1)[-1] if "to_out" not in l.name else "to_out.0" for l in layers) == \
        {"to_q": 32, "to_k": 32, "to_v": 32, "to_out.0": 32}


def test_sd15_token_counts_follow_the_block_structure():
    """Hooks on the meta forward pass give what the block structure says: latent 64x64 at 512x512,
    halved per level; cross-attention keys/values see the 77 text tokens of width 768."""
    expect = {"down_blocks.0": 4096, "down_blocks.1": 1024, "down_blocks.2": 256, "mid": 64,
              "up_blocks.1": 256, "up_blocks.2": 1024, "up_blocks.3": 4096}
    for l in shapes.lora_layers("sd15"):
        if ".attn2.to_k" in l.name or ".attn2.to_v" in l.name:
            assert (l.tokens, l.d_in) == (77, 768), l
        else:
            assert l.tokens == expect[_level(l.name)], l
            assert l.d_in == l.d_out


def test_sdxl_has_70_transformer_blocks_and_560_lora_linears():
    layers = shapes.lora_layers("sdxl")
    assert len(layers) == 560
    blocks = {l.name.rsplit(".attn", 1)[0] for l in layers}
    assert len(blocks) == 70
    expect = {"down_blocks.1": 4096, "down_blocks.2": 1024, "mid": 1024, "up_blocks.0": 1024, "up_blocks.1": 4096}
    for l in layers:
        if ".attn2.to_k" in l.name or ".attn2.to_v" in l.name:
            assert (l.tokens, l.d_in) == (77, 2048), l
        else:
            assert l.tokens == expect[_level(l.name)], l


def test_embedded_configs_build_the_published_unets():
    """Parameter counts of the published UNets (859.52 M for SD1.5, 2567.46 M for SDXL base),
    built on the meta device from the embedded configurations."""
    counts = {m: sum(p.numel() for p in shapes.build_meta_unet(m).parameters()) for m in ("sd15", "sdxl")}
    assert counts == {"sd15": 859_520_964, "sdxl": 2_567_463_684}


def test_targets_and_resolution_are_parameters():
    assert len(shapes.lora_layers("sd15", targets=("to_q",))) == 32
    assert len(shapes.lora_layers("sd15", targets=("to_q", "to_out.0"))) == 64
    assert max(l.tokens for l in shapes.lora_layers("sd15", resolution=256)) == 1024
    macs = shapes.base_macs("sd15")
    assert macs["total"] == macs["conv"] + macs["linear"] + macs["attention"] > 0


def test_lora_gemms_are_the_six_per_layer_with_int8_outputs_where_they_feed_a_gemm():
    layer = shapes.LoraLayer("x", 1024, 320, 640)
    gemms = shapes.lora_gemms([layer], 8)
    assert [g.gemm for g in gemms] == ["H = X.A^T", "Y = H.B^T", "dH = G.B", "dB = G^T.H", "dA = dH^T.X",
                                       "dX = dH.A"]
    assert [g.out_int8 for g in gemms] == [True, False, True, False, False, False]
    assert sum(g.macs for g in gemms) == 3 * 1024 * 8 * (320 + 640)   # each weight: fwd, grad, input grad
    assert all(g.out_int8 for g in shapes.lora_gemms([layer], 8, int8_outputs="all"))


def test_default_model_layers_come_from_the_digits_unet():
    try:
        from lora_qta.training import digits
    except ModuleNotFoundError as e:  # developed alongside; only its absence skips
        pytest.skip(f"lora_qta.training.digits is not there yet: {e}")
    layers = shapes.default_model_layers()
    assert layers and len(layers) % 8 == 0
    cross = [l for l in layers if ".attn2.to_k" in l.name]
    assert cross and all(l.tokens == digits.MAX_LENGTH and l.d_in == digits.CROSS_ATTENTION_DIM for l in cross)
