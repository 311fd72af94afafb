"""The diffusion models a fine-tuning run can start from, behind one small interface.

:class:`ModelBundle` is what the training loop needs of a model: its UNet, noise scheduler,
prompt encoder, image-to-latent encoder, a sampler for the before/after grid and the LoRA
saver. Two kinds exist:

* :class:`DigitsBundle`: the embedded default, the project's pretrained digits UNet
  (``lora_qta.training.digits``), pixel-space diffusion on 16x16 images, with a handful of examples
  of a digit class held out of pretraining as the new concept;
* :class:`StableDiffusionBundle`: a local diffusers Stable Diffusion folder (UNet, VAE, CLIP
  text encoder and tokenizer, scheduler) with a folder of instance images (DreamBooth-style).
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel

from ..errors import InstanceDataError, ModelFolderError
from .options import check_folder

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass
class TrainingData:
    """The examples of one run: images in model input space with their prompts."""

    images: torch.Tensor           # (N, C, H, W) in [-1, 1]
    prompts: list[str]
    prior_images: torch.Tensor | None = None   # class-preservation examples (DreamBooth prior)
    prior_prompts: list[str] | None = None


class ModelBundle:
    """What fine-tuning needs of a diffusion model (see module docstring)."""

    name: str
    unet: UNet2DConditionModel
    noise_scheduler: DDPMScheduler
    targets: tuple[str, ...]

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError

    def to_latents(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, prompts: Sequence[str], seed: int) -> np.ndarray:
        """Images (N, H, W) or (N, H, W, 3) in [0, 1] for ``prompts``."""
        raise NotImplementedError

    def save_lora(self, folder: Path, state: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def eval_prompts(self) -> list[str]:
        """Prompts of the before/after sample grid."""
        raise NotImplementedError

    def heldout_batch(self) -> tuple[torch.Tensor, list[str], str] | None:
        """Images (model input space), prompts and a description of the held-out set whose
        denoising loss the run tracks every ``--eval-every`` steps; None: no such set."""
        return None

    def concept_reading(self, images: np.ndarray) -> list[str] | None:
        """What an independent judge reads in generated images of the concept (captions), if any."""
        return None

    def concept_name(self) -> str:
        """The concept, for captions (e.g. ``digit 7``)."""
        return "the concept"

    def display(self, images: torch.Tensor) -> np.ndarray:
        """Training images (N, C, H, W) in [-1, 1] as a sample grid shows them."""
        x = ((images.detach().float() + 1) / 2).clamp(0, 1)
        return x[:, 0].numpy() if x.shape[1] == 1 else x.permute(0, 2, 3, 1).numpy()


LORA_FILE = "pytorch_lora_weights.safetensors"


def _sorted_sets(value):
    """``value`` with every set replaced by a sorted list (sets iterate in hash order)."""
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    if isinstance(value, dict):
        return {k: _sorted_sets(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_sorted_sets(v) for v in value]
    return value


def canonical_safetensors(path: Path) -> None:
    """Rewrite a safetensors file's header with its metadata keys sorted.

    The safetensors writer keeps ``__metadata__`` in a hash map, so its key order (and the
    file's bytes) changes from process to process; the tensors and their offsets do not."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", None)
    ordered = ({"__metadata__": dict(sorted(meta.items()))} if meta else {}) | header
    text = json.dumps(ordered, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n:])


def _save_unet_lora(pipeline_cls: Callable, folder: Path, unet: torch.nn.Module,
                    state: dict[str, torch.Tensor]) -> None:
    """Save a peft UNet LoRA state dict in the diffusers format (pytorch_lora_weights.safetensors),
    with the adapter's LoraConfig as metadata so that ``load_lora_weights`` restores alpha too.
    The same weights always give the same bytes (sets sorted, header keys in a fixed order)."""
    from diffusers.utils import convert_state_dict_to_diffusers

    pipeline_cls.save_lora_weights(str(folder), unet_lora_layers=convert_state_dict_to_diffusers(state),
                                   unet_lora_adapter_metadata=_sorted_sets(unet.peft_config["default"].to_dict()),
                                   safe_serialization=True)
    canonical_safetensors(Path(folder) / LORA_FILE)


@contextmanager
def quiet_loading(quiet: bool = True):
    """Without diffusers' "Loading pipeline components" bar (a local load takes well under a second;
    off a terminal the bar prints its last line twice)."""
    from diffusers.utils import logging as dlog

    was = dlog.is_progress_bar_enabled()
    if quiet:
        dlog.disable_progress_bar()
    try:
        yield
    finally:
        if quiet and was:
            dlog.enable_progress_bar()


class DigitsBundle(ModelBundle):
    """The embedded default: the shipped digits UNet; the concept is a held-out digit."""

    name = "digits"

    def __init__(self, folder: str | Path | None = None):
        from . import digits

        self.d = digits
        folder = Path(folder) if folder else digits.shipped_model_dir()
        if not (folder / "model_index.json").is_file():
            raise ModelFolderError(f"{folder} holds no digits pipeline (model_index.json missing); "
                                   "rebuild it with scripts/pretrain_base.py")
        try:
            with quiet_loading():
                self.pipe = digits.DigitsPipeline.from_pretrained(folder, local_files_only=True)
        except Exception as e:  # corrupt weights or configs
            raise ModelFolderError(f"cannot load the digits pipeline from {folder}: {e}") from e
        self.unet = self.pipe.unet
        self.noise_scheduler = self.pipe.scheduler
        self.text_encoder = self.pipe.text_encoder
        self.text_encoder.requires_grad_(False)
        self.targets = tuple(digits.LORA_TARGET_MODULES)

    def training_data(self, num_examples: int, prior_per_class: int, seed: int) -> TrainingData:
        """``num_examples`` training images of the held-out digit bound to the new token, plus
        ``prior_per_class`` real images of every known digit with their own prompts."""
        d = self.d
        images, _ = d.load_digits_dataset(classes=[d.HELD_OUT_CLASS], split="train")
        g = torch.Generator().manual_seed(seed)
        pick = torch.randperm(len(images), generator=g)[:num_examples]
        prior, prior_prompts = [], []
        for c in d.KNOWN_CLASSES:
            imgs, _ = d.load_digits_dataset(classes=[c], split="train")
            sel = torch.randperm(len(imgs), generator=g)[:prior_per_class]
            prior.append(imgs[sel])
            prior_prompts += [d.digit_prompt(c)] * len(sel)
        return TrainingData(images[pick], [d.concept_prompt()] * len(pick),
                            torch.cat(prior) if prior else None, prior_prompts or None)

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        with torch.no_grad():
            return self.text_encoder.encode(list(prompts))

    def to_latents(self, images: torch.Tensor) -> torch.Tensor:
        return images  # pixel-space diffusion

    def sample(self, prompts: Sequence[str], seed: int) -> np.ndarray:
        g = torch.Generator().manual_seed(seed)
        return self.pipe(list(prompts), generator=g)

    def save_lora(self, folder: Path, state: dict[str, torch.Tensor]) -> None:
        _save_unet_lora(type(self.pipe), folder, self.unet, state)

    def eval_prompts(self) -> list[str]:
        d = self.d
        return [d.concept_prompt()] * 8 + [d.digit_prompt(c) for c in d.KNOWN_CLASSES[:4]]

    def limits(self) -> dict[str, int]:
        """The most --num-examples and --prior-per-class the training split holds."""
        d = self.d
        return {"num_examples": len(d.load_digits_dataset(classes=[d.HELD_OUT_CLASS], split="train")[0]),
                "prior_per_class": min(len(d.load_digits_dataset(classes=[c], split="train")[0])
                                       for c in d.KNOWN_CLASSES)}

    def heldout_batch(self) -> tuple[torch.Tensor, list[str], str]:
        d = self.d
        images, _ = d.load_digits_dataset(classes=[d.HELD_OUT_CLASS], split="test")
        return (images, [d.concept_prompt()] * len(images),
                f"{len(images)} test-split images of digit {d.HELD_OUT_CLASS} with the new token")

    def concept_reading(self, images: np.ndarray) -> list[str]:
        d = self.d
        return [f"reads {int(c)}" for c in d.classify(images, d.train_digit_classifier())]

    def concept_name(self) -> str:
        return f"digit {self.d.HELD_OUT_CLASS}"


def load_instance_images(folder: Path, resolution: int) -> torch.Tensor:
    """RGB images of ``folder`` as (N, 3, R, R) in [-1, 1]; clear errors for empty folders,
    unreadable files, non-RGB modes and images smaller than the resolution."""
    from PIL import Image, UnidentifiedImageError

    check_folder("--instance-data-dir", folder, InstanceDataError, "instance data folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InstanceDataError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    out = []
    for p in files:
        try:
            img = Image.open(p)
            img.load()
        except Image.DecompressionBombError as e:
            raise InstanceDataError(f"{p} is too large to read safely ({e}); resize it to a few thousand "
                                    "pixels per side") from None
        except (UnidentifiedImageError, OSError) as e:
            raise InstanceDataError(f"cannot read image {p}: {e}") from e
        if img.mode not in ("RGB", "RGBA", "L"):
            raise InstanceDataError(f"{p} has mode {img.mode}; use RGB (or L/RGBA) images")
        if min(img.size) < resolution:
            raise InstanceDataError(f"{p} is {img.size[0]}x{img.size[1]}, smaller than the model's training "
                                    f"resolution {resolution}x{resolution} (set by its UNet and VAE): use images "
                                    f"at least {resolution} pixels on the shorter side")
        img = img.convert("RGB")
        side = min(img.size)
        left, top = (img.size[0] - side) // 2, (img.size[1] - side) // 2
        img = img.crop((left, top, left + side, top + side)).resize((resolution, resolution), Image.BICUBIC)
        arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
        out.append(torch.from_numpy(arr).permute(2, 0, 1))
    return torch.stack(out)


class StableDiffusionBundle(ModelBundle):
    """A local diffusers Stable Diffusion folder, DreamBooth-style instance images and prompt."""

    name = "stable-diffusion"
    REQUIRED = ("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
                "tokenizer", "scheduler/scheduler_config.json")

    def __init__(self, folder: str | Path):
        folder = Path(folder)  # checked before the pipeline's import, whose warnings would come first
        check_folder("--pretrained-model", folder, ModelFolderError, "pretrained model folder")
        missing = [r for r in self.REQUIRED if not (folder / r).exists()]
        if missing:
            raise ModelFolderError(f"{folder} is not a diffusers Stable Diffusion folder: missing "
                                   f"{', '.join(missing)}")
        from diffusers import StableDiffusionPipeline
        try:
            with quiet_loading(not sys.stderr.isatty()):
                self.pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, safety_checker=None,
                                                                    requires_safety_checker=False)
        except Exception as e:
            raise ModelFolderError(f"cannot load Stable Diffusion from {folder}: {e}") from e
        self.pipe.set_progress_bar_config(disable=True)
        self.unet = self.pipe.unet
        self.noise_scheduler = DDPMScheduler.from_config(self.pipe.scheduler.config)
        for m in (self.pipe.vae, self.pipe.text_encoder):
            m.requires_grad_(False)
        self.targets = ("to_q", "to_k", "to_v", "to_out.0")
        self.resolution = int(self.unet.config.sample_size) * 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)
        self.prompt = "a photo of sks"

    def training_data(self, instance_dir: Path, prompt: str) -> TrainingData:
        self.prompt = prompt
        images = load_instance_images(Path(instance_dir), self.resolution)
        return TrainingData(images, [prompt] * len(images))

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        tok = self.pipe.tokenizer(list(prompts), padding="max_length", truncation=True,
                                  max_length=self.pipe.tokenizer.model_max_length, return_tensors="pt")
        with torch.no_grad():
            return self.pipe.text_encoder(tok.input_ids)[0]

    def to_latents(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            dist = self.pipe.vae.encode(images).latent_dist
        return dist.mean * self.pipe.vae.config.scaling_factor

    def sample(self, prompts: Sequence[str], seed: int) -> np.ndarray:
        g = torch.Generator().manual_seed(seed)
        out = self.pipe(list(prompts), num_inference_steps=10, generator=g, output_type="np",
                        height=self.resolution, width=self.resolution)
        return out.images

    def save_lora(self, folder: Path, state: dict[str, torch.Tensor]) -> None:
        _save_unet_lora(type(self.pipe), folder, self.unet, state)

    def eval_prompts(self) -> list[str]:
        return [self.prompt] * 4


def describe(bundle: ModelBundle) -> dict:
    """A short JSON-able description of a bundle for the run report."""
    return {"model": bundle.name, "unet_parameters": sum(p.numel() for p in bundle.unet.parameters()),
            "unet_config": json.loads(json.dumps(dict(bundle.unet.config), default=str))}
