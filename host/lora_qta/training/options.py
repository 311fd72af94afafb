"""The checks of ``finetune``'s option values that need no model: :func:`check_options`.

Kept apart from :mod:`.loop` (which imports PyTorch, diffusers and peft) so that the command
line refuses a bad value at once instead of after those imports; the checks that depend on the
model (target modules, the rank's upper bound, the digits split's size) are
:func:`.loop.validate`'s."""

from __future__ import annotations

import math

from ..errors import LimitError, OptionError
from ..lora.schemes import SCHEMES
from .config import FinetuneConfig
from .rundir import RunFolder


def _positive_number(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise LimitError(f"{name} must be a positive number, not {value}")


def check_options(cfg: FinetuneConfig, writer: bool = True) -> None:
    """Refuse bad option values before anything is loaded or written. ``writer``: this process
    writes --output-dir (False on data-parallel ranks other than 0, which never use it)."""
    if cfg.precision not in ("fp32", "int8"):
        raise LimitError(f"--precision must be fp32 or int8, not {cfg.precision!r}")
    if cfg.offload not in ("lora", "all"):
        raise LimitError(f"--offload must be lora or all, not {cfg.offload!r}")
    if cfg.offload_scheme not in SCHEMES:
        raise LimitError(f"--offload-scheme must be one of {', '.join(SCHEMES)}, not {cfg.offload_scheme!r}")
    if cfg.fuse_lora and (cfg.precision != "int8" or cfg.offload != "all" or cfg.offload_scheme != "row"):
        raise LimitError("--fuse-lora fuses each LoRA layer with its base layer on the accelerator: it needs "
                         "--precision int8 --offload all --offload-scheme row (given: --precision "
                         f"{cfg.precision} --offload {cfg.offload} --offload-scheme {cfg.offload_scheme})")
    if cfg.lr_schedule not in ("constant", "linear", "cosine"):
        raise LimitError(f"--lr-schedule must be constant, linear or cosine, not {cfg.lr_schedule!r}")
    if cfg.prediction_type not in ("epsilon", "v_prediction"):
        raise LimitError(f"--prediction-type must be epsilon or v_prediction, not {cfg.prediction_type!r}")
    for name in ("steps", "batch_size", "checkpoint_every", "num_examples", "rank"):
        if getattr(cfg, name) < 1:
            raise LimitError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(cfg, name)}")
    for name in ("warmup_steps", "prior_per_class", "eval_every"):
        if getattr(cfg, name) < 0:
            raise LimitError(f"--{name.replace('_', '-')} must be 0 or more, not {getattr(cfg, name)}")
    _positive_number("--learning-rate", cfg.learning_rate)
    _positive_number("--alpha", cfg.alpha)
    _positive_number("--max-grad-norm", cfg.max_grad_norm)
    if cfg.threads is not None and cfg.threads < 1:
        raise LimitError(f"--threads must be a positive integer, not {cfg.threads}")
    if cfg.resume and cfg.overwrite:
        raise OptionError("--resume and --overwrite contradict each other: --resume continues the run in "
                          "--output-dir, --overwrite replaces it")
    if cfg.precision == "int8":  # a mistyped engine variable fails here, not at the first INT8 call
        from ..lora.quant_native import NATIVE as host_quantizer
        from ..runtime.epilogue_native import NATIVE as fast_epilogue

        host_quantizer.engine()
        fast_epilogue.engine()
    if writer:
        RunFolder(cfg.output_dir).check_usable()
