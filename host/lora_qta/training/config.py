"""The options of a fine-tuning run (``lora-qta finetune`` / ``run``), standard library only so
that the command line shows their defaults without importing PyTorch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class FinetuneConfig:
    """Options of ``lora-qta finetune`` (see its --help)."""

    output_dir: str = "runs/default"
    precision: str = "int8"
    offload: str = "lora"
    board: str | None = None
    backend: str | None = None
    pretrained_model: str | None = None
    instance_data_dir: str | None = None
    prompt: str = "a photo of sks"
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
    resume: bool = False
    samples: bool = True
    threads: int | None = None

    def identity(self) -> dict[str, Any]:
        """The fields a resumed run must share with the run that wrote the checkpoint."""
        keep = ("precision", "pretrained_model", "instance_data_dir", "prompt", "batch_size", "learning_rate",
                "lr_schedule", "warmup_steps", "max_grad_norm", "rank", "alpha", "target_modules",
                "prediction_type", "num_examples", "prior_per_class", "seed", "board")
        ident = {k: getattr(self, k) for k in keep}
        if self.offload != "lora":  # only when set, so checkpoints written before the option still resume
            ident["offload"] = self.offload
        return ident
