"""The options of a fine-tuning run (``lora-qta finetune`` / ``run``), standard library only so
that the command line shows their defaults without importing PyTorch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..lora.schemes import SCHEMES

DEFAULT_SD_PROMPT = "a photo of sks"

RESUME_OVERRIDES = ("learning_rate",)
"""Options a resumed run may change (recorded in the checkpoint and the report): a lower
learning rate is the advice after a divergence."""


@dataclass
class FinetuneConfig:
    """Options of ``lora-qta finetune`` (see its --help)."""

    output_dir: str = "runs/default"
    precision: str = "int8"
    offload: str = "all"  # int8 runs: every GEMM of the step (lora: the LoRA GEMMs only); fp32: none
    offload_scheme: str = SCHEMES[0]
    fuse_lora: bool = False
    board: str | None = None
    backend: str | None = None
    pretrained_model: str | None = None
    instance_data_dir: str | None = None
    prompt: str | None = None  # Stable Diffusion only; default DEFAULT_SD_PROMPT there
    steps: int = 300
    batch_size: int = 16
    learning_rate: float = 2e-2
    lr_schedule: str = "cosine"
    warmup_steps: int = 10
    max_grad_norm: float = 1.0
    rank: int = 8
    alpha: float = 8.0
    target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    prediction_type: str = "epsilon"
    num_examples: int = 8
    prior_per_class: int = 8
    seed: int = 0
    checkpoint_every: int = 50
    eval_every: int = 25
    resume: bool = False
    overwrite: bool = False
    samples: bool = True
    threads: int | None = None

    def numerics(self) -> str:
        """What this run trains in, in a few words (the progress line's label): ``fp32``,
        ``int8 LoRA GEMMs`` or ``int8 all GEMMs, <scheme>`` (``, fused LoRA`` with --fuse-lora)."""
        if self.precision != "int8":
            return self.precision
        if self.offload == "lora":
            return "int8 LoRA GEMMs"
        return f"int8 all GEMMs, {self.offload_scheme}" + (", fused LoRA" if self.fuse_lora else "")

    def identity(self, target: dict[str, Any] | None = None) -> dict[str, Any]:
        """Everything that defines the run's result: a resumed run must match it (except the
        :data:`RESUME_OVERRIDES`), and ``evaluate`` reuses a finished run only when it matches.

        ``target``: the resolved accelerator of an int8 run (board, backend and the layer's
        numerics, see :func:`lora_qta.training.loop.run_target`); fp32 runs have none. ``offload``
        joins it for int8 runs other than LoRA-only (``--offload all`` trains other numerics; an
        fp32 run offloads nothing, whatever the field says).
        """
        keep = ("precision", "pretrained_model", "instance_data_dir", "prompt", "steps", "batch_size",
                "learning_rate", "lr_schedule", "warmup_steps", "max_grad_norm", "rank", "alpha",
                "target_modules", "prediction_type", "num_examples", "prior_per_class", "seed")
        out = {k: getattr(self, k) for k in keep}
        out["target_modules"] = list(self.target_modules)
        out["target"] = target
        if self.precision == "int8" and self.offload != "lora":  # identities of LoRA-only runs stay as they were
            out["offload"] = self.offload  # its scheme (and --fuse-lora) in target["offload_numerics"]
        return out


def canonical_identity(identity: dict[str, Any]) -> dict[str, Any]:
    """``identity`` with the spellings of one run made one: the target modules as a set (peft
    adapts the same layers in any order) and a Stable Diffusion run's prompt given or left to
    :data:`DEFAULT_SD_PROMPT`. Identities are compared in this form, and stored as given (the
    identities of earlier runs' checkpoints and reports keep matching)."""
    out = dict(identity)
    if isinstance(out.get("target_modules"), list):
        out["target_modules"] = sorted(out["target_modules"])
    if out.get("pretrained_model") is not None and out.get("prompt") is None:
        out["prompt"] = DEFAULT_SD_PROMPT
    return out

