"""Checkpoints of a fine-tuning run: adapter, optimizer and schedule state, written atomically.

A checkpoint ``<run>/checkpoints/step_NNNNNN/`` holds the adapter's weights
(``lora.safetensors``), the optimizer and learning-rate schedule (``optimizer.pt``, read back
with ``torch.load(weights_only=True)``, so a checkpoint cannot run code) and ``state.json``:
the step, the identity of the run (every option that defines its result, see
:meth:`~lora_qta.training.config.FinetuneConfig.identity`), the learning-rate overrides of
resumed runs, and the history (losses, times, held-out metric, accelerator counters). All
randomness of a step derives from (seed, step), so a resumed run without overrides ends with
the same adapter as an uninterrupted one. Checkpoints are ordered by their step number; a
checkpoint with non-finite weights is refused.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError, DivergedError
from .config import RESUME_OVERRIDES, canonical_identity
from .models import ModelBundle
from .rundir import CHECKPOINTS, checkpoints



def lora_state(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's weights (peft names), as contiguous CPU tensors."""
    return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(unet).items()}


def non_finite(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the tensors of ``state`` holding NaN or Inf."""
    return [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]


def save_checkpoint(run: Path, step: int, bundle: ModelBundle, optimizer, scheduler, state: dict[str, Any],
                    keep: int = 2) -> Path:
    """Write checkpoint ``step`` atomically (temp folder, then rename) with ``state`` (identity,
    overrides, history) in state.json; keep the ``keep`` newest by step number."""
    weights = lora_state(bundle.unet)
    bad = non_finite(weights)
    if bad:  # never write a checkpoint that cannot be resumed
        raise DivergedError(f"the adapter's weights became non-finite ({bad[0]}, ...) by step {step}")
    root = run / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp_step_{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(weights, str(tmp / "lora.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, **state}))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for _, old in checkpoints(run)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def identity_diff(saved: dict[str, Any], wanted: dict[str, Any], allowed: tuple[str, ...] = ()) -> dict[str, Any]:
    """Options whose values differ: name -> (saved, wanted), leaving out ``allowed``; compared in
    :func:`~.config.canonical_identity` form, shown as given."""
    a, b = canonical_identity(saved), canonical_identity(wanted)
    keys = {k for k in (set(a) | set(b)) - set(allowed) if a.get(k) != b.get(k)}
    return {k: (saved.get(k), wanted.get(k)) for k in sorted(keys)}


def load_checkpoint(path: Path, bundle: ModelBundle, optimizer, scheduler, identity: dict[str, Any]) -> dict[str, Any]:
    """Restore adapter, optimizer and LR schedule from ``path`` after checking that it belongs to
    a run with ``identity`` (up to :data:`RESUME_OVERRIDES`); returns its state.json."""
    def unreadable(e: Exception) -> CheckpointError:
        return CheckpointError(f"checkpoint {path} is unreadable ({e}); delete it to resume from an "
                               "earlier one, or start again with --overwrite")

    try:
        state = json.loads((path / "state.json").read_text())
        saved = state["identity"]
    except Exception as e:
        raise unreadable(e) from e
    diff = identity_diff(saved, identity, RESUME_OVERRIDES)
    if diff:
        shown = ", ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in diff.items())
        raise CheckpointError(f"checkpoint {path} belongs to a run with other options ({shown}); resume with "
                              "the same options (only --learning-rate may change), or start a new run with "
                              "--overwrite or another --output-dir")
    try:
        weights = load_file(str(path / "lora.safetensors"))
        opt = torch.load(path / "optimizer.pt", weights_only=True)
    except Exception as e:
        raise unreadable(e) from e
    bad = non_finite(weights)
    if bad:
        raise CheckpointError(f"checkpoint {path} holds non-finite weights ({bad[0]}, ...): the run had diverged; "
                              "delete it to resume from an earlier checkpoint, or start again with --overwrite "
                              "and a lower --learning-rate")
    result = set_peft_model_state_dict(bundle.unet, weights)
    if getattr(result, "unexpected_keys", None):
        raise CheckpointError(f"checkpoint {path} holds weights this adapter does not have")
    try:
        optimizer.load_state_dict(opt["optimizer"])
        scheduler.load_state_dict(opt["scheduler"])
    except Exception as e:
        raise unreadable(e) from e
    return state
