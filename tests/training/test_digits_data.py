"""The embedded default model's data side (lora_qta.training.digits): the digits split and
images, the tokenizer and text encoder, the UNet's shape, and the digit classifier."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lora_qta.training import digits


# ----------------------------------------------------------------------------------- data


def test_split_is_deterministic_disjoint_and_complete():
    train, test = digits.split_indices()
    train2, test2 = digits.split_indices()
    assert np.array_equal(train, train2) and np.array_equal(test, test2)
    assert len(np.intersect1d(train, test)) == 0
    assert np.array_equal(np.union1d(train, test), np.arange(1797))
    other_train, _ = digits.split_indices(seed=1)
    assert not np.array_equal(train, other_train)


def test_the_digits_are_read_once_and_every_caller_gets_its_own_copy():
    """scikit-learn's CSV is parsed once per process; the cached arrays cannot be written, and a
    caller that changes what it got does not change what the next caller gets."""
    from sklearn.datasets import load_digits

    images, labels = digits._sklearn_digits()
    assert digits._sklearn_digits()[0] is images
    ref = load_digits()
    assert np.array_equal(images, ref.images) and np.array_equal(labels, ref.target)
    with pytest.raises(ValueError, match="read-only"):
        images[0, 0, 0] = 1
    first, _ = digits.load_digits_dataset(split="test")
    first += 100
    again, _ = digits.load_digits_dataset(split="test")
    assert float(again.max()) <= 1.0


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
