"""The training variants ``lora-qta evaluate`` compares, as overrides of :class:`FinetuneConfig`
(standard library only: the command line lists them without importing PyTorch).

A variant exists in this build only if every option it overrides is a field of
:class:`FinetuneConfig`: ``int8-all`` (the whole training step on the accelerator) needs the
``offload`` option, and is not offered until that option exists. Adding a variant is one entry
of :data:`VARIANTS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from ..errors import OptionError
from .config import FinetuneConfig

REFERENCE = "fp32"
"""The variant every difference is taken to."""

DEFAULT_VARIANTS = ("fp32", "int8-all-row8c")
"""What ``lora-qta evaluate`` compares unless told: the reference and the default fine-tuning
(``finetune``'s int8 with every GEMM of the step offloaded, its default scheme ``row8c``)."""


@dataclass(frozen=True)
class Variant:
    name: str
    help: str
    overrides: dict[str, Any]
    """Options of the variant; every key must be a FinetuneConfig field for the variant to exist."""
    pins: dict[str, Any] = field(default_factory=dict)
    """Options set only where the field exists (so that a later default cannot change the variant)."""


VARIANTS: tuple[Variant, ...] = (
    Variant("fp32", "plain peft LoRA in PyTorch fp32 (the reference every difference is taken to)",
            {"precision": "fp32"}),
    Variant("int8", "the six LoRA GEMMs of every adapted layer INT8 on the accelerator (board or emulation), "
                    "the rest of the step in PyTorch", {"precision": "int8"}, pins={"offload": "lora"}),
    Variant("int8-all", "the whole training step offloaded to the accelerator with the row offload scheme "
                        "(INT32 outputs; --offload-scheme row)",
            {"precision": "int8", "offload": "all"}, pins={"offload_scheme": "row"}),
    Variant("int8-all-row8", "the whole training step offloaded with the row8 offload scheme: per-row input "
                             "scales as row, INT8 outputs from the epilogue with a delayed scale per tensor",
            {"precision": "int8", "offload": "all", "offload_scheme": "row8"}),
    Variant("int8-all-fused", "int8-all with each LoRA layer fused with its base layer (--fuse-lora)",
            {"precision": "int8", "offload": "all", "fuse_lora": True}, pins={"offload_scheme": "row"}),
    Variant("int8-all-row8c", "the whole training step offloaded with the row8c offload scheme, finetune's "
                              "default: int8-all-row8 with a delayed output scale per output channel",
            {"precision": "int8", "offload": "all", "offload_scheme": "row8c"}),
)


def _config_fields() -> set[str]:
    return {f.name for f in fields(FinetuneConfig)}


def missing_options(variant: Variant) -> list[str]:
    """The options ``variant`` overrides that this build's FinetuneConfig lacks."""
    have = _config_fields()
    return [k for k in variant.overrides if k not in have]


def available_variants() -> dict[str, Variant]:
    """The variants this build can train, by name, in table order."""
    return {v.name: v for v in VARIANTS if not missing_options(v)}


def parse_variants(text: str | list[str]) -> list[str]:
    """``"fp32,int8"`` -> ``["fp32", "int8"]``, refusing unknown, unavailable or repeated names
    and a list without the fp32 reference."""
    names = [x.strip() for x in text.split(",")] if isinstance(text, str) else list(text)
    names = [n for n in names if n]
    known = {v.name: v for v in VARIANTS}
    avail = available_variants()
    for n in names:
        if n not in known:
            raise OptionError(f"unknown variant {n!r} in --variants; choose from {', '.join(avail)}")
        if n not in avail:
            raise OptionError(f"variant {n!r} ({known[n].help}) is not available in this build: it needs the "
                              f"fine-tuning option(s) {', '.join(missing_options(known[n]))} (FinetuneConfig), "
                              f"which this version lacks; choose from {', '.join(avail)}")
    if len(set(names)) != len(names):
        raise OptionError(f"--variants names a variant twice: {','.join(names)}")
    if REFERENCE not in names:
        raise OptionError(f"--variants must include {REFERENCE}: every difference is taken to it (paired per seed)")
    return [REFERENCE] + [n for n in names if n != REFERENCE]


def variant_config(name: str, base: FinetuneConfig) -> FinetuneConfig:
    """``base`` with the options of variant ``name``."""
    return replace(base, **variant_options(name))


def variant_options(name: str) -> dict[str, Any]:
    """The options variant ``name`` sets in this build (its overrides and the pins whose field
    exists), as evaluate.json records them: e.g. ``int8`` is ``precision int8, offload lora``."""
    v = available_variants()[name]
    have = _config_fields()
    return {**v.overrides, **{k: x for k, x in v.pins.items() if k in have}}


def variants_help() -> str:
    """One line per variant for ``--help``, saying which are not in this build."""
    avail = available_variants()
    parts = []
    for v in VARIANTS:
        extra = "" if v.name in avail else f" [not in this build: needs FinetuneConfig.{', '.join(missing_options(v))}]"
        parts.append(f"{v.name}: {v.help}{extra}")
    return "; ".join(parts)


__all__ = ["DEFAULT_VARIANTS", "REFERENCE", "VARIANTS", "Variant", "available_variants", "missing_options", "parse_variants",
           "variant_config", "variant_options", "variants_help"]
