"""Offline quality of fp32 vs int8 LoRA fine-tuning of the default digits model.

Both precisions are fine-tuned with the same options and seeds; each adapter is then loaded
into a fresh stock pipeline with ``pipeline.load_lora_weights`` and measured on real data:

* concept accuracy: the share of images generated for the new token that a digit classifier
  (trained on scikit-learn's digits, :func:`lora_qta.training.digits.train_digit_classifier`) reads as
  the held-out digit;
* preserved accuracy: the same for prompts of the digits the base model already knew;
* held-out denoising loss: the noise-prediction MSE on test-split images (new concept with its
  token, known digits with their prompts) at fixed, seeded noise and timesteps.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import FinetuneConfig
from .loop import finetune, finished_run, grid_png, step_generator

TARGET_ACCURACY_PP = 2.0
TARGET_LOSS_PCT = 2.0


def heldout_loss(pipe, seed: int, repeats: int = 4) -> float:
    """Mean noise-prediction MSE on the test split at fixed noise and timesteps."""
    from . import digits as d

    images, labels = d.load_digits_dataset(split="test")
    prompts = [d.concept_prompt() if int(c) == d.HELD_OUT_CLASS else d.digit_prompt(int(c)) for c in labels]
    sched = pipe.scheduler
    total, count = 0.0, 0
    with torch.no_grad():
        ctx = pipe.text_encoder.encode(prompts)
        for r in range(repeats):
            g = step_generator(seed, 10_000 + r, 7)
            noise = torch.randn(images.shape, generator=g)
            t = torch.randint(0, sched.config.num_train_timesteps, (len(images),), generator=g)
            pred = pipe.unet(sched.add_noise(images, noise, t), t, encoder_hidden_states=ctx).sample
            total += torch.nn.functional.mse_loss(pred, noise, reduction="sum").item()
            count += noise.numel()
    return total / count


def sample_accuracy(pipe, classifier, per_class: int, seed: int) -> dict[str, Any]:
    """Concept accuracy (new token -> held-out digit) and accuracy on the known digits."""
    from . import digits as d

    out: dict[str, Any] = {}
    g = torch.Generator().manual_seed(seed)
    concept = pipe([d.concept_prompt()] * per_class, generator=g)
    out["concept_accuracy"] = float(np.mean(d.classify(concept, classifier) == d.HELD_OUT_CLASS))
    per = {}
    for c in d.KNOWN_CLASSES:
        imgs = pipe([d.digit_prompt(c)] * per_class, generator=g)
        per[str(c)] = float(np.mean(d.classify(imgs, classifier) == c))
    out["known_accuracy"] = float(np.mean(list(per.values())))
    out["known_accuracy_per_class"] = per
    out["concept_samples"] = concept[:8]
    return out


def evaluate(output_dir: str = "runs/evaluate", steps: int = FinetuneConfig.steps, per_class: int = 40, seed: int = 0,
             board: str | None = None, backend: str | None = None, reuse: bool = True,
             seeds: int = 1) -> dict[str, Any]:
    """Fine-tune fp32 and int8 with the same seeds, measure both, write evaluate.json/.png.

    With ``seeds`` > 1 both precisions are trained and sampled once per seed (``seed`` ..
    ``seed + seeds - 1``) and the table reports means and standard deviations over seeds.
    """
    from . import digits as d

    root = Path(output_dir)
    classifier = d.train_digit_classifier()
    rows: dict[str, dict[str, Any]] = {}
    base = d.load_shipped_pipeline()
    rows["base (no LoRA)"] = {**sample_accuracy(base, classifier, per_class, seed),
                              "heldout_loss": heldout_loss(base, seed)}
    grid = [("base model", rows["base (no LoRA)"].pop("concept_samples"))]
    metrics = ("concept_accuracy", "known_accuracy", "heldout_loss")
    for precision in ("fp32", "int8"):
        per_seed = []
        for s in range(seed, seed + seeds):
            run = root / precision if seeds == 1 else root / f"seed{s}" / precision
            cfg = FinetuneConfig(output_dir=str(run), precision=precision, steps=steps, seed=s, board=board,
                                 backend=backend, samples=False)
            if not (reuse and finished_run(cfg)):  # every option that defines the run must match
                finetune(replace(cfg, overwrite=True))
            pipe = d.load_shipped_pipeline()
            pipe.load_lora_weights(str(run / "adapter"))
            res = sample_accuracy(pipe, classifier, per_class, s)
            samples = res.pop("concept_samples")
            if s == seed:
                grid.append((f"{precision} LoRA", samples))
            per_seed.append({**res, "heldout_loss": heldout_loss(pipe, s), "seed": s})
        row = {m: float(np.mean([r[m] for r in per_seed])) for m in metrics}
        row.update({f"{m}_std": float(np.std([r[m] for r in per_seed])) for m in metrics})
        row["per_seed"] = per_seed
        rows[precision] = row
    f, q = rows["fp32"], rows["int8"]
    summary = {
        "concept_accuracy_diff_pp": 100 * (q["concept_accuracy"] - f["concept_accuracy"]),
        "known_accuracy_diff_pp": 100 * (q["known_accuracy"] - f["known_accuracy"]),
        "heldout_loss_diff_pct": 100 * (q["heldout_loss"] - f["heldout_loss"]) / f["heldout_loss"],
    }
    # the targets bound how much int8 may lose against fp32 (being better is no failure)
    summary["within_targets"] = (summary["concept_accuracy_diff_pp"] >= -TARGET_ACCURACY_PP
                                 and summary["heldout_loss_diff_pct"] <= TARGET_LOSS_PCT)
    result = {"steps": steps, "samples_per_class": per_class, "seed": seed, "seeds": seeds,
              "note": "measured on this machine; int8 ran on the emulated accelerator (bit-exact with the kernel)",
              "rows": rows, "summary": summary}
    root.mkdir(parents=True, exist_ok=True)
    (root / "evaluate.json").write_text(json.dumps(result, indent=2))
    grid_png(grid, root / "concept_samples.png", captions=["<sks>"] * 8)
    return result


def format_table(result: dict[str, Any]) -> str:
    """The fp32 vs int8 table printed by ``lora-qta evaluate``."""
    r = result["rows"]
    seeds = result.get("seeds", 1)

    def cell(prec: str, m: str, pct: bool) -> str:
        v, sd = r[prec][m], r[prec].get(m + "_std")
        text = f"{v:.1%}" if pct else f"{v:.4f}"
        if seeds > 1 and sd is not None:
            text += f" ± {sd * 100:.1f}" if pct else f" ± {sd:.4f}"
        return text

    lines = ["| metric | base (no LoRA) | fp32 LoRA | int8 LoRA (accelerator) | int8 - fp32 |",
             "|---|---|---|---|---|"]
    s = result["summary"]
    lines.append(f"| concept accuracy (new token -> digit 7) | {r['base (no LoRA)']['concept_accuracy']:.1%} | "
                 f"{cell('fp32', 'concept_accuracy', True)} | {cell('int8', 'concept_accuracy', True)} | "
                 f"{s['concept_accuracy_diff_pp']:+.1f} pp |")
    lines.append(f"| accuracy on known digits | {r['base (no LoRA)']['known_accuracy']:.1%} | "
                 f"{cell('fp32', 'known_accuracy', True)} | {cell('int8', 'known_accuracy', True)} | "
                 f"{s['known_accuracy_diff_pp']:+.1f} pp |")
    lines.append(f"| held-out denoising loss | {r['base (no LoRA)']['heldout_loss']:.4f} | "
                 f"{cell('fp32', 'heldout_loss', False)} | {cell('int8', 'heldout_loss', False)} | "
                 f"{s['heldout_loss_diff_pct']:+.2f} % |")
    lines.append("")
    lines.append(f"targets: int8 at most {TARGET_ACCURACY_PP:.0f} pp below fp32 on concept accuracy and at most "
                 f"{TARGET_LOSS_PCT:.0f}% above it on held-out loss: {'met' if s['within_targets'] else 'NOT met'} "
                 f"({result['samples_per_class']} samples per prompt, {result['steps']} steps, "
                 f"{seeds} training seed(s) from {result['seed']}, mean ± std over seeds; "
                 "measured on this machine)")
    return "\n".join(lines)


__all__ = ["evaluate", "format_table", "heldout_loss", "sample_accuracy"]
