"""Tests of the embedded default model (lora_qta.digits): data, tokenizer, text encoder, the
shipped pretrained pipeline, the diffusers LoRA save/load round trip and the digit classifier."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lora_qta.training import digits


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The UNet calls here are tiny: one thread avoids OpenMP spin contention with other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------- data


def test_split_is_deterministic_disjoint_and_complete():
    train, test = digits.split_indices()
    train2, test2 = digits.split_indices()
    assert np.array_equal(train, train2) and np.array_equal(test, test2)
    assert len(np.intersect1d(train, test)) == 0
    assert np.array_equal(np.union1d(train, test), np.arange(1797))
    other_train, _ = digits.split_indices(seed=1)
    assert not np.array_equal(train, other_train)


def test_split_keeps_every_class_about_80_20():
    _, train_labels = digits.load_digits_dataset(split="train")
    _, test_labels = digits.load_digits_dataset(split="test")
    for c in range(10):
        n_train = int((train_labels == c).sum())
        n_test = int((test_labels == c).sum())
        assert n_test > 0
        assert 0.75 < n_train / (n_train + n_test) < 0.85


def test_dataset_shape_range_and_class_filter():
    images, labels = digits.load_digits_dataset()
    assert images.shape == (1797, 1, 16, 16) and images.dtype == torch.float32
    assert labels.shape == (1797,) and labels.dtype == torch.int64
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert images.min() == -1.0 and images.max() > 0.9  # background and ink both present
    assert set(labels.tolist()) == set(range(10))

    known, known_labels = digits.load_digits_dataset(classes=digits.KNOWN_CLASSES, split="train")
    assert digits.HELD_OUT_CLASS not in set(known_labels.tolist())
    assert set(known_labels.tolist()) == set(digits.KNOWN_CLASSES)
    _, all_train = digits.load_digits_dataset(split="train")
    expected = int((all_train != digits.HELD_OUT_CLASS).sum())
    assert len(known) == expected  # only the held-out class is dropped

    with pytest.raises(ValueError, match="split"):
        digits.load_digits_dataset(split="validation")


def test_upsampling_preserves_the_8x8_image():
    from sklearn.datasets import load_digits

    raw = load_digits().images[:5]
    up = digits.upsample_digits(raw)
    assert up.shape == (5, 1, 16, 16)
    down = torch.nn.functional.avg_pool2d(up, 2)[:, 0].flatten()
    scaled = torch.as_tensor(raw, dtype=torch.float32).flatten() / 8 - 1
    assert torch.corrcoef(torch.stack([down, scaled]))[0, 1] > 0.9  # the same picture, blurred
    assert abs(down.mean() - scaled.mean()) < 0.05  # bilinear x2 keeps the mean (up to the border)


# ------------------------------------------------------------------------------- tokenizer


def test_tokenize_known_words_numerals_and_padding():
    ids = digits.tokenize(["a photo of digit 3", "a photo of digit three", "a photo of <sks>", ""])
    assert ids.shape == (4, digits.MAX_LENGTH) and ids.dtype == torch.int64
    vocab = {w: i for i, w in enumerate(digits.VOCAB)}
    assert ids[0, :5].tolist() == [vocab["a"], vocab["photo"], vocab["of"], vocab["digit"], vocab["three"]]
    assert torch.equal(ids[0], ids[1])
    assert ids[2, 3].item() == vocab["<sks>"]
    assert ids[0, 5:].eq(0).all() and ids[2, 4:].eq(0).all()
    assert ids[3].eq(0).all()  # the empty (unconditional) prompt is all padding
    assert digits.tokenize("A Photo of Digit 5").tolist() == digits.tokenize(["a photo of digit five"]).tolist()


def test_tokenize_unknown_word_names_it():
    with pytest.raises(ValueError, match="'cat'"):
        digits.tokenize(["a photo of digit 3", "a photo of cat"])
    with pytest.raises(ValueError, match="'<pad>'"):
        digits.tokenize("a photo of <pad>")
    with pytest.raises(ValueError, match="max_length"):
        digits.tokenize("a photo of digit one two three four five")


def test_vocabulary_has_reserved_tokens():
    for token in ("a", "photo", "of", "digit", *digits.DIGIT_WORDS, *digits.RESERVED_TOKENS):
        assert token in digits.VOCAB
    assert digits.NEW_TOKEN == "<sks>" and digits.VOCAB[0] == digits.PAD_TOKEN
    assert digits.HELD_OUT_CLASS not in digits.KNOWN_CLASSES and len(digits.KNOWN_CLASSES) == 9


# ---------------------------------------------------------------------------- text encoder


def test_token_encoder_shapes_and_save_load(tmp_path):
    torch.manual_seed(0)
    enc = digits.TokenEncoder()
    out = enc.encode(["a photo of digit 3", "a photo of <sks>", ""])
    assert out.shape == (3, digits.MAX_LENGTH, digits.CROSS_ATTENTION_DIM)
    assert torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1])
    assert enc.token_id(digits.NEW_TOKEN) == digits.VOCAB.index(digits.NEW_TOKEN)
    with pytest.raises(ValueError):
        enc(torch.zeros(2, digits.MAX_LENGTH + 1, dtype=torch.int64))

    enc.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["vocab"] == list(digits.VOCAB) and config["embed_dim"] == digits.CROSS_ATTENTION_DIM
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    back = digits.TokenEncoder.from_pretrained(tmp_path)
    assert torch.equal(back.encode(["a photo of <sks>"]), enc.encode(["a photo of <sks>"]))


def test_unet_has_lora_targets_and_is_small():
    unet = digits.build_unet()
    names = [n for n, _ in unet.named_modules()]
    for target in digits.LORA_TARGET_MODULES:
        hits = [n for n in names if n.endswith("attn2." + target)]
        assert len(hits) >= 3, target
    assert sum(p.numel() for p in unet.parameters()) < 2_000_000
    assert unet.config.cross_attention_dim == digits.CROSS_ATTENTION_DIM


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


def test_load_lora_weights_accepts_the_peft_key_format(tmp_path):
    """Keys like 'unet.<module>.lora_A.weight' (no diffusers conversion) load as well."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder = digits.shipped_model_dir()
    trained = digits.DigitsPipeline.from_pretrained(folder, local_files_only=True)
    trained.unet.add_adapter(LoraConfig(r=2, lora_alpha=2, init_lora_weights="gaussian",
                                        target_modules=list(digits.LORA_TARGET_MODULES)))
    with torch.no_grad():
        for name, param in trained.unet.named_parameters():
            if "lora_B" in name:
                param.fill_(0.01)
    state = {f"unet.{k}": v.contiguous() for k, v in get_peft_model_state_dict(trained.unet).items()}
    assert any(k.endswith("attn1.to_q.lora_A.weight") for k in state)
    save_file(state, str(tmp_path / "pytorch_lora_weights.safetensors"))

    x, t, context = _unet_inputs(trained)
    fresh = digits.DigitsPipeline.from_pretrained(folder, local_files_only=True)
    fresh.load_lora_weights(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(fresh.unet(x, t, encoder_hidden_states=context).sample,
                                   trained.unet(x, t, encoder_hidden_states=context).sample)


# ----------------------------------------------------------------------------- classifier


def test_classifier_is_accurate_on_held_out_real_digits():
    images, labels = digits.load_digits_dataset(split="test")
    predicted = digits.classify((images + 1) / 2)
    assert predicted.shape == labels.shape
    assert (predicted == labels.numpy()).mean() > 0.9
    held = labels.numpy() == digits.HELD_OUT_CLASS
    assert (predicted[held] == digits.HELD_OUT_CLASS).mean() > 0.9


def test_classify_rejects_model_space_images():
    images, _ = digits.load_digits_dataset(split="test")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        digits.classify(images[:4])
    with pytest.raises(ValueError, match="16, 16"):
        digits.classify(np.zeros((2, 8, 8)))


def test_lora_fuse_scale_unload_and_text_encoder_keys(tmp_path):
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    folder = digits.shipped_model_dir()
    donor = digits.DigitsPipeline.from_pretrained(folder, local_files_only=True)
    donor.unet.add_adapter(LoraConfig(r=2, lora_alpha=2, init_lora_weights="gaussian",
                                      target_modules=list(digits.LORA_TARGET_MODULES)))
    with torch.no_grad():
        for name, param in donor.unet.named_parameters():
            if "lora_B" in name:
                param.fill_(0.02)
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
