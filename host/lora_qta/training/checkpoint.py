"""Checkpoints of a fine-tuning run: adapter, optimizer and schedule state, written atomically.

A checkpoint ``<run>/checkpoints/step_NNNNNN/`` holds the adapter's weights
(``lora.safetensors``), the optimizer and learning-rate schedule (``optimizer.pt``) and
``state.json`` (step, the options a resumed run must share, the loss history). All randomness
of a step derives from (seed, step), so a resumed run ends with the same adapter as an
uninterrupted one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from .config import FinetuneConfig
from .models import ModelBundle

CHECKPOINTS = "checkpoints"


def lora_state(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's weights (peft names), as contiguous CPU tensors."""
    return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(unet).items()}


def save_checkpoint(run: Path, step: int, bundle: ModelBundle, optimizer, scheduler, cfg: FinetuneConfig,
                    history: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint ``step`` atomically (temp folder, then rename); keep the last ``keep``."""
    root = run / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp_step_{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(lora_state(bundle.unet), str(tmp / "lora.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, "config": cfg.identity(), "history": history}))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in sorted(root.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run: Path) -> Path | None:
    """The newest complete checkpoint of a run folder, if any."""
    found = sorted((run / CHECKPOINTS).glob("step_*"))
    return found[-1] if found else None


def load_checkpoint(path: Path, bundle: ModelBundle, optimizer, scheduler, cfg: FinetuneConfig) -> tuple[int, dict]:
    """Restore adapter, optimizer and LR schedule; returns (step, history)."""
    def unreadable(e: Exception) -> CheckpointError:
        return CheckpointError(f"checkpoint {path} is unreadable ({e}); delete it to resume from an "
                               "earlier one, or start without --resume")

    try:
        state = json.loads((path / "state.json").read_text())
    except Exception as e:
        raise unreadable(e) from e
    if state.get("config") != cfg.identity():
        diff = {k: (state.get("config", {}).get(k), v) for k, v in cfg.identity().items()
                if state.get("config", {}).get(k) != v}
        raise CheckpointError(f"checkpoint {path} was written with other options {diff}; resume with the "
                              "same options or use another --output-dir")
    try:
        weights = load_file(str(path / "lora.safetensors"))
        opt = torch.load(path / "optimizer.pt", weights_only=False)
    except Exception as e:
        raise unreadable(e) from e
    result = set_peft_model_state_dict(bundle.unet, weights)
    if getattr(result, "unexpected_keys", None):
        raise CheckpointError(f"checkpoint {path} holds weights this adapter does not have")
    optimizer.load_state_dict(opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])
    return int(state["step"]), state["history"]
