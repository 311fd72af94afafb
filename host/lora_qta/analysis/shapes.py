"""LoRA GEMM shapes of real diffusion UNets, derived from their diffusers configurations.

Nothing is downloaded and no weight is allocated: the UNet configurations of Stable Diffusion
1.5 and SDXL base are embedded below as Python data (the published ``unet/config.json`` of
``runwayml/stable-diffusion-v1-5`` and ``stabilityai/stable-diffusion-xl-base-1.0``, keys that
matter for the architecture; the others keep diffusers' defaults), the model is built with
``UNet2DConditionModel.from_config`` under ``accelerate.init_empty_weights()`` (parameters on
the ``meta`` device) and a forward pass is run on meta tensors.

**How token counts are obtained:** forward hooks on the LoRA target linears record the shape
of each input during that meta-device forward pass (a meta forward computes shapes only and
takes well under a second), so the token count of every layer is what the real model feeds it
at the given resolution: SD1.5 at 512x512 (latent 64x64) gives 4096 / 1024 / 256 / 64 tokens
at the four block levels, SDXL at 1024x1024 (latent 128x128, no attention at the first level)
4096 / 1024; the cross-attention ``to_k`` / ``to_v`` see the 77 text tokens with
``in_features = cross_attention_dim`` (768 / 2048). The tests cross-check these against the
block structure.

The same pass counts the frozen base model's multiply-accumulates (convolutions, linears and
the two attention matmuls Q.K^T and P.V) for the training-step view of :mod:`lora_qta.analysis.step`.

Public API: :func:`lora_layers`, :func:`lora_gemms`, :func:`base_macs`,
:func:`default_model_layers`, :func:`build_meta_unet`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Sequence

from ..errors import OptionError
from ..lora.gemms import LoraGemm, layer_gemms

DEFAULT_TARGETS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
"""The standard LoRA targets of diffusion UNets (peft ``target_modules`` suffixes)."""

# ------------------------------------------------------------------------- UNet configurations

SD15_UNET_CONFIG: dict[str, Any] = {
    # unet/config.json of runwayml/stable-diffusion-v1-5 (architecture keys)
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                         "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}

SDXL_UNET_CONFIG: dict[str, Any] = {
    # unet/config.json of stabilityai/stable-diffusion-xl-base-1.0 (architecture keys)
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "class_embed_type": None,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": 2048,
    "cross_attention_norm": None,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "sample_size": 128,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "upcast_attention": None,
    "use_linear_projection": True,
}


@dataclass(frozen=True)
class ModelSpec:
    """What a forward pass of one UNet needs besides its configuration."""

    name: str
    resolution: int          # default image side in pixels
    latent_factor: int       # pixels per latent position (VAE downsampling; 1: pixel-space model)
    text_tokens: int         # length of the text-encoder sequence (cross-attention keys)
    sdxl_conditioning: bool  # SDXL's added text_embeds / time_ids


MODELS: dict[str, ModelSpec] = {
    "sd15": ModelSpec("Stable Diffusion 1.5", 512, 8, 77, False),
    "sdxl": ModelSpec("SDXL base 1.0", 1024, 8, 77, True),
    "digits": ModelSpec("project default (digits UNet)", 16, 1, 8, False),
}
"""Models by key; ``digits`` is the project's embedded default (:mod:`lora_qta.training.digits`)."""


# ------------------------------------------------------------------------- data types

@dataclass(frozen=True)
class LoraLayer:
    """One LoRA-adapted linear: module name, tokens per sample, in and out features."""

    name: str
    tokens: int
    d_in: int
    d_out: int

    def params(self, rank: int) -> int:
        """LoRA parameters of this layer at ``rank`` (A: r x in, B: out x r)."""
        return rank * (self.d_in + self.d_out)


# ------------------------------------------------------------------------- meta model

def model_spec(model: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``model``; a clear error for an unknown one."""
    if model not in MODELS:
        raise OptionError(f"unknown model {model!r}: use one of {', '.join(MODELS)}")
    return MODELS[model]


def _config_of(model: str) -> dict[str, Any]:
    model_spec(model)  # refuses an unknown model
    if model == "sd15":
        return copy.deepcopy(SD15_UNET_CONFIG)
    if model == "sdxl":
        return copy.deepcopy(SDXL_UNET_CONFIG)
    return dict(_digits_unet_config())


def _digits_unet_config() -> dict[str, Any]:
    """The configuration of the project's default UNet (``lora_qta.training.digits.build_unet``)."""
    from accelerate import init_empty_weights

    from ..training import digits  # imported lazily: it is developed alongside this module

    with init_empty_weights():
        unet = digits.build_unet()
    return dict(unet.config)


def build_meta_unet(model: str = "sd15"):
    """``UNet2DConditionModel.from_config`` of ``model`` with all parameters on ``meta``."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    cfg = _config_of(model)
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(cfg)
    return unet.eval()


def _matches(name: str, targets: Iterable[str]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


@dataclass(frozen=True)
class Trace:
    """What one meta-device forward pass recorded."""

    model: str
    resolution: int
    layers: tuple[LoraLayer, ...]
    macs: dict[str, int]   # forward MACs of the base model by kind: conv, linear, attention


@lru_cache(maxsize=16)
def trace(model: str = "sd15", resolution: int | None = None,
          targets: tuple[str, ...] = DEFAULT_TARGETS) -> Trace:
    """Run ``model`` once on meta tensors at ``resolution`` (pixels, batch 1) and record the
    LoRA target linears (in forward order) and the base model's forward MACs."""
    import torch

    spec = model_spec(model)
    res = resolution or spec.resolution
    if res % spec.latent_factor:
        raise OptionError(f"resolution {res} is not a multiple of the latent factor {spec.latent_factor}; "
                          f"round it to a multiple of {spec.latent_factor}")
    unet = build_meta_unet(model)
    cfg = unet.config
    side = res // spec.latent_factor
    text_len = spec.text_tokens
    if model == "digits":
        from ..training import digits

        text_len = digits.MAX_LENGTH

    layers: list[LoraLayer] = []
    macs = {"conv": 0, "linear": 0, "attention": 0}
    q_tokens: dict[str, int] = {}
    hooks = []

    def lin_hook(name):
        def hook(mod, inp, out):
            x = inp[0]
            tokens = int(x.numel() // x.shape[-1])
            macs["linear"] += tokens * mod.in_features * mod.out_features
            parent, _, leaf = name.rpartition(".")
            if leaf == "to_q":
                q_tokens[parent] = tokens
            elif leaf == "to_k" and parent in q_tokens:
                # Q.K^T and P.V of this attention: Nq x Nk x inner, twice
                macs["attention"] += 2 * q_tokens[parent] * tokens * mod.out_features
            if _matches(name, targets):
                layers.append(LoraLayer(name, tokens, mod.in_features, mod.out_features))
        return hook

    def conv_hook(mod, inp, out):
        kh, kw = mod.kernel_size
        macs["conv"] += int(out.numel()) * (mod.in_channels // mod.groups) * kh * kw

    for name, mod in unet.named_modules():
        if isinstance(mod, torch.nn.Linear):
            hooks.append(mod.register_forward_hook(lin_hook(name)))
        elif isinstance(mod, torch.nn.Conv2d):
            hooks.append(mod.register_forward_hook(conv_hook))
    try:
        meta = torch.device("meta")
        sample = torch.empty(1, cfg.in_channels, side, side, device=meta)
        text = torch.empty(1, text_len, cfg.cross_attention_dim, device=meta)
        kwargs = {}
        if spec.sdxl_conditioning:
            pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
            kwargs["added_cond_kwargs"] = {"text_embeds": torch.empty(1, pooled, device=meta),
                                           "time_ids": torch.empty(1, 6, device=meta)}
        with torch.no_grad():
            unet(sample, torch.tensor(10, device=meta), encoder_hidden_states=text, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    return Trace(model, res, tuple(layers), dict(macs))


# ------------------------------------------------------------------------- public API

def lora_layers(model: str = "sd15", resolution: int | None = None,
                targets: Sequence[str] = DEFAULT_TARGETS) -> list[LoraLayer]:
    """The LoRA-adapted linears of ``model`` ("sd15", "sdxl" or "digits") with their token
    counts at ``resolution`` (pixels; default 512 for SD1.5, 1024 for SDXL, 16 for digits),
    batch 1, in forward order. ``targets`` are module-name suffixes as in peft."""
    return list(trace(model, resolution, tuple(targets)).layers)


def lora_gemms(layers: Sequence[LoraLayer], rank: int, int8_outputs: str = "feeds") -> list[LoraGemm]:
    """The six GEMMs (:data:`~lora_qta.lora.gemms.LORA_GEMMS`) of every layer at ``rank``;
    ``int8_outputs`` as in :func:`~lora_qta.lora.gemms.layer_gemms`."""
    return [g for layer in layers
            for g in layer_gemms(layer.tokens, layer.d_in, layer.d_out, rank, int8_outputs, layer.name)]


def lora_params(layers: Sequence[LoraLayer], rank: int) -> int:
    """Trainable LoRA parameters of ``layers`` at ``rank``."""
    return sum(layer.params(rank) for layer in layers)


def base_macs(model: str = "sd15", resolution: int | None = None) -> dict[str, int]:
    """Forward MACs of the frozen base UNet by kind (conv, linear, attention) and in total,
    batch 1, from the meta-device forward pass (norms, activations and other element-wise
    operations are not counted)."""
    macs = dict(trace(model, resolution).macs)
    macs["total"] = sum(macs.values())
    return macs


def default_model_layers(targets: Sequence[str] = DEFAULT_TARGETS) -> list[LoraLayer]:
    """The LoRA layers of the project's default model (``lora_qta.training.digits.build_unet()``, 16x16
    images, text length ``digits.MAX_LENGTH``). Imports :mod:`lora_qta.training.digits` lazily."""
    return lora_layers("digits", None, targets)


def summary(model: str, rank: int = 4, resolution: int | None = None) -> dict[str, Any]:
    """Counts for a quick look: layers, LoRA parameters, distinct shapes, token levels."""
    layers = lora_layers(model, resolution)
    return {
        "model": model, "resolution": resolution or model_spec(model).resolution,
        "lora_linears": len(layers), "lora_params": lora_params(layers, rank), "rank": rank,
        "distinct_shapes": len({(l.tokens, l.d_in, l.d_out) for l in layers}),
        "token_counts": sorted({l.tokens for l in layers}, reverse=True),
    }
