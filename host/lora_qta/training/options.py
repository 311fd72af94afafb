"""The checks of ``finetune``'s options that need no model: :func:`check_options` (the values)
and :func:`check_setup` (what they name on this machine: the accelerator, the model and image
folders, the run folder).

Kept apart from :mod:`.loop` (which imports PyTorch, diffusers and peft) so that the command
line refuses a bad value at once instead of after those imports; the checks that depend on the
model (target modules, the rank's upper bound, the digits split's size) are
:func:`.loop.validate`'s."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..errors import InstanceDataError, LimitError, ModelFolderError, OptionError
from ..lora.schemes import SCHEMES
from .config import FinetuneConfig
from .rundir import RunFolder


def _positive_number(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        kind = "finite" if isinstance(value, (int, float)) and math.isinf(value) else "positive"
        raise LimitError(f"{name} must be a {kind} number, not {value}")


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


def check_setup(cfg: FinetuneConfig) -> None:
    """What a lone process (not a data-parallel launch, whose ranks refuse these together, see
    :mod:`.distributed`) can refuse before loading the model: the accelerator asked for (an
    unknown board, ``--backend board`` on a PC), the model and image folders, the options of
    the other kind of model, and the run folder (occupied, or no checkpoint to ``--resume``)."""
    if cfg.precision == "int8":
        from ..hw.config import requested_backend, resolve_board

        board = resolve_board(cfg.board)
        if requested_backend(cfg.backend) == "board":
            from ..runtime.accelerator import board_bitstream

            board_bitstream(board)
    check_folder("--pretrained-model", cfg.pretrained_model, ModelFolderError, "pretrained model folder")
    kind = model_kind(cfg.pretrained_model)
    if kind == "digits":
        refuse_stable_diffusion_options(cfg)
    elif kind == "sd":
        require_instance_data(cfg)
    check_folder("--instance-data-dir", cfg.instance_data_dir, InstanceDataError, "instance data folder")
    RunFolder(cfg.output_dir).check(cfg.resume, cfg.overwrite)


def require_instance_data(cfg: FinetuneConfig) -> None:
    """A Stable Diffusion run learns from ``--instance-data-dir``: refuse one without it."""
    if not cfg.instance_data_dir:
        raise LimitError("--pretrained-model with a Stable Diffusion folder needs --instance-data-dir")


def model_kind(pretrained_model: str | Path | None) -> str | None:
    """What ``--pretrained-model`` names: ``digits`` (none given: the embedded model; or a folder
    whose ``model_index.json`` names the digits pipeline), ``sd`` (a Stable Diffusion folder's
    index), or None when the folder has no readable index (its loader says what is wrong)."""
    if pretrained_model is None:
        return "digits"
    try:
        text = (Path(pretrained_model) / "model_index.json").read_text()
        json.loads(text)
    except (OSError, ValueError):
        return None
    return "digits" if "DigitsPipeline" in text else "sd"


def refuse_stable_diffusion_options(cfg: FinetuneConfig) -> None:
    """Refuse the options of a Stable Diffusion run in a run of the digits model."""
    given = [opt for opt, v in (("--instance-data-dir", cfg.instance_data_dir), ("--prompt", cfg.prompt)) if v]
    if given:
        raise OptionError(f"{' and '.join(given)} {'apply' if len(given) > 1 else 'applies'} to a Stable "
                          "Diffusion model (--pretrained-model PATH): the digits model learns the held-out "
                          "digit 7 for the token <sks> from --num-examples of its own training images")


def check_folder(option: str, path: str | Path | None, error: type[Exception], what: str) -> None:
    """Refuse an ``option`` naming a folder that is missing or is a file (``error``, saying ``what``)."""
    if path is None:
        return
    p = Path(path)
    if not p.exists():
        raise error(f"{what} {p} does not exist ({option})")
    if not p.is_dir():
        raise error(f"{what} {p} is a file, not a folder ({option})")
