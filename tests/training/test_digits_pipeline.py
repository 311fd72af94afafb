"""The embedded default model (lora_qta.training.digits): the shipped pretrained pipeline, the
diffusers LoRA save/load round trip, fusing and unloading adapters."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lora_qta.training import digits


# -------------------------------------------------------------------------- shipped model


@pytest.fixture(scope="module")
def shipped():
    assert (digits.shipped_model_dir() / "model_index.json").is_file(), "shipped model missing"
    return digits.load_shipped_pipeline()


def test_shipped_model_is_small_and_complete():
    folder = digits.shipped_model_dir()
    for sub in ("unet", "scheduler", "text_encoder"):
        assert (folder / sub).is_dir(), sub
    weights = sum(p.stat().st_size for p in folder.rglob("*.safetensors"))
    assert 0 < weights < 8_000_000
    report = json.loads((folder / "pretrain_report.json").read_text())
    assert report["held_out_class"] == digits.HELD_OUT_CLASS


def test_shipped_model_generates_deterministically(shipped, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    prompts = ["a photo of digit 0", "a photo of digit 3", "a photo of <sks>"]
    a = shipped(prompts, num_inference_steps=8, generator=torch.Generator().manual_seed(1))
    b = shipped(prompts, num_inference_steps=8, generator=torch.Generator().manual_seed(1))
    c = shipped(prompts, num_inference_steps=8, generator=torch.Generator().manual_seed(2))
    assert isinstance(a, np.ndarray) and a.shape == (3, 16, 16) and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    single = shipped("a photo of digit 0", num_inference_steps=4, guidance_scale=1.0,
                     generator=torch.Generator().manual_seed(1))
    assert single.shape == (1, 16, 16)


def test_shipped_model_draws_the_prompted_digits(shipped):
    classes = [0, 1, 3, 6]
    prompts = [digits.digit_prompt(c) for c in classes for _ in range(3)]
    images = shipped(prompts, num_inference_steps=20, generator=torch.Generator().manual_seed(0))
    predicted = digits.classify(images)
    assert (predicted == np.repeat(classes, 3)).mean() >= 0.75


def test_shipped_pipeline_save_load_round_trip(shipped, tmp_path):
    shipped.save_pretrained(tmp_path)
    back = digits.DigitsPipeline.from_pretrained(tmp_path, local_files_only=True)
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert np.array_equal(back("a photo of digit 5", num_inference_steps=5, generator=gen()),
                          shipped("a photo of digit 5", num_inference_steps=5, generator=gen()))
    assert isinstance(back.text_encoder, digits.TokenEncoder)


# ---------------------------------------------------------------------- LoRA save / load


def _unet_inputs(pipe):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1, 16, 16, generator=gen)
    t = torch.tensor([10, 400, 900])
    context = pipe.text_encoder.encode(["a photo of <sks>", "a photo of digit 2", ""])
    return x, t, context


@pytest.mark.parametrize("rank,alpha", [(4, 4), (4, 8)])
def test_lora_round_trip_through_load_lora_weights(tmp_path, rank, alpha):
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    folder = digits.shipped_model_dir()
    trained = digits.DigitsPipeline.from_pretrained(folder, local_files_only=True)
    x, t, context = _unet_inputs(trained)
    with torch.no_grad():
        base_out = trained.unet(x, t, encoder_hidden_states=context).sample

    config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                        target_modules=list(digits.LORA_TARGET_MODULES))
    trained.unet.add_adapter(config)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in trained.unet.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
        peft_out = trained.unet(x, t, encoder_hidden_states=context).sample
    assert not torch.allclose(peft_out, base_out, atol=1e-4)

    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(trained.unet))
    assert len(state) == 2 * 4 * 8  # A and B of 4 projections x 2 attentions x 4 transformer blocks
    StableDiffusionPipeline.save_lora_weights(
        tmp_path, unet_lora_layers=state, unet_lora_adapter_metadata=config.to_dict()
    )
    assert (tmp_path / "pytorch_lora_weights.safetensors").is_file()

    fresh = digits.DigitsPipeline.from_pretrained(folder, local_files_only=True)
    with torch.no_grad():
        assert torch.equal(fresh.unet(x, t, encoder_hidden_states=context).sample, base_out)
    fresh.load_lora_weights(tmp_path)
    with torch.no_grad():
        loaded_out = fresh.unet(x, t, encoder_hidden_states=context).sample
    assert not torch.allclose(loaded_out, base_out, atol=1e-4)
    torch.testing.assert_close(loaded_out, peft_out, rtol=1e-5, atol=1e-6)


def _shipped_with_adapter(lora_b: float) -> digits.DigitsPipeline:
    """The shipped pipeline with a rank-2 LoRA on its targets whose B matrices hold ``lora_b``
    (peft initialises B to zero, which would leave the UNet unchanged)."""
    from peft import LoraConfig

    pipe = digits.DigitsPipeline.from_pretrained(digits.shipped_model_dir(), local_files_only=True)
    pipe.unet.add_adapter(LoraConfig(r=2, lora_alpha=2, init_lora_weights="gaussian",
                                     target_modules=list(digits.LORA_TARGET_MODULES)))
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if "lora_B" in name:
                param.fill_(lora_b)
    return pipe


def test_load_lora_weights_accepts_the_peft_key_format(tmp_path):
    """Keys like 'unet.<module>.lora_A.weight' (no diffusers conversion) load as well."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder = digits.shipped_model_dir()
    trained = _shipped_with_adapter(lora_b=0.01)
    state = {f"unet.{k}": v.contiguous() for k, v in get_peft_model_state_dict(trained.unet).items()}
    assert any(k.endswith("attn1.to_q.lora_A.weight") for k in state)
    save_file(state, str(tmp_path / "pytorch_lora_weights.safetensors"))

    x, t, context = _unet_inputs(trained)
    fresh = digits.DigitsPipeline.from_pretrained(folder, local_files_only=True)
    fresh.load_lora_weights(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(fresh.unet(x, t, encoder_hidden_states=context).sample,
                                   trained.unet(x, t, encoder_hidden_states=context).sample)


def test_lora_fuse_scale_unload_and_text_encoder_keys(tmp_path):
    from peft.utils import get_peft_model_state_dict

    folder = digits.shipped_model_dir()
    donor = _shipped_with_adapter(lora_b=0.02)
    state = {f"unet.{k}": v for k, v in get_peft_model_state_dict(donor.unet).items()}

    pipe = digits.DigitsPipeline.from_pretrained(folder, local_files_only=True)
    x, t, context = _unet_inputs(pipe)

    def out():
        with torch.no_grad():
            return pipe.unet(x, t, encoder_hidden_states=context).sample

    base = out()
    pipe.load_lora_weights(state, adapter_name="sks")
    with_lora = out()
    assert not torch.allclose(with_lora, base, atol=1e-4)
    pipe.set_adapters(["sks"], [0.0])
    torch.testing.assert_close(out(), base)
    pipe.set_adapters(["sks"], [1.0])
    pipe.fuse_lora()
    torch.testing.assert_close(out(), with_lora, rtol=1e-4, atol=1e-5)
    pipe.unfuse_lora()
    pipe.unload_lora_weights()
    torch.testing.assert_close(out(), base, rtol=1e-4, atol=1e-5)

    with pytest.raises(ValueError, match="UNet only"):
        pipe.load_lora_weights({"text_encoder.token_embedding.lora_A.weight": torch.zeros(2, 2)})
