#!/usr/bin/env python3
"""Pretrain the embedded default model: the tiny text-conditioned digits UNet and its TokenEncoder.

Trains on the train split of every digit class except ``HELD_OUT_CLASS`` with the usual
noise-prediction MSE loss (DDPM, uniform timesteps), AdamW and a warm-up + cosine learning-rate
schedule, dropping the prompt (-> all-padding tokens) with probability ``--cond-drop`` so that
classifier-free guidance works.  Writes the pipeline (``DigitsPipeline.save_pretrained``) to
``--output``, and beside it ``pretrain_report.json`` (run figures, and the accuracy of a digit
classifier on generated samples of each class) and ``samples.png`` (a grid of samples).

It imports the installed package (``make install``, or ``pip install -e .``).

Example (the committed model):  .venv/bin/python scripts/pretrain_base.py
Quick smoke run:               .venv/bin/python scripts/pretrain_base.py --steps 20 --output /tmp/digits
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

# Let idle OpenMP threads sleep instead of spinning: on a 2-core machine shared with other jobs,
# spinning threads of two processes starve each other (a step measured 3x slower).  Must be set
# before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lora_qta.training import digits


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", type=Path, default=digits.shipped_model_dir(),
                   help="folder to write the pipeline, report and samples to (default: %(default)s)")
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="images per step (default: %(default)s)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate (default: %(default)s)")
    p.add_argument("--weight-decay", type=float, default=1e-4,
                   help="AdamW weight decay of the UNet (the token embeddings get none, so the "
                        "reserved tokens stay exactly at their initialisation) (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=100, help="linear warm-up steps before the cosine decay (default: %(default)s)")
    p.add_argument("--cond-drop", type=float, default=0.1,
                   help="probability of training a sample with the empty prompt, for classifier-free guidance (default: %(default)s)")
    p.add_argument("--ema-decay", type=float, default=0.995,
                   help="decay of the exponential moving average of the weights that is saved; 0 saves the raw weights (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, batches, noise and sampling (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    p.add_argument("--eval-per-class", type=int, default=20,
                   help="generated samples per class for the classifier check (default: %(default)s)")
    p.add_argument("--inference-steps", type=int, default=digits.DEFAULT_INFERENCE_STEPS,
                   help="DDIM steps for the evaluation samples (default: %(default)s)")
    p.add_argument("--guidance-scale", type=float, default=digits.DEFAULT_GUIDANCE_SCALE,
                   help="classifier-free guidance scale for the evaluation samples (default: %(default)s)")
    p.add_argument("--log-every", type=int, default=10, help="steps between progress-bar loss updates (default: %(default)s)")
    return p.parse_args(argv)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(pipe: digits.DigitsPipeline, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW; no weight decay on the text encoder, so never-seen tokens keep their init exactly."""
    groups = [
        {"params": list(pipe.unet.parameters()), "weight_decay": weight_decay},
        {"params": list(pipe.text_encoder.parameters()), "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr)


def train(args: argparse.Namespace, pipe: digits.DigitsPipeline) -> dict:
    """The pretraining loop; leaves the (EMA) weights in ``pipe``; returns loss figures."""
    images, labels = digits.load_digits_dataset(classes=digits.KNOWN_CLASSES, split="train")
    prompts = [digits.digit_prompt(int(c)) for c in range(digits.NUM_CLASSES)]
    token_table = pipe.text_encoder.tokenize(prompts)  # (10, L) ids of each class prompt
    empty_ids = pipe.text_encoder.tokenize("")[0]
    scheduler = pipe.scheduler
    alphas_cumprod = scheduler.alphas_cumprod
    n_timesteps = scheduler.config.num_train_timesteps

    modules = torch.nn.ModuleDict({"unet": pipe.unet, "text_encoder": pipe.text_encoder})
    ema = None
    if args.ema_decay > 0:
        ema = {k: v.detach().clone() for k, v in modules.state_dict().items()}
    opt = make_optimizer(pipe, args.lr, args.weight_decay)
    gen = torch.Generator().manual_seed(args.seed)
    modules.train()

    losses: list[float] = []
    perm = torch.randperm(len(images), generator=gen)
    cursor = 0
    bar = tqdm(range(args.steps), desc="pretrain", unit="step", dynamic_ncols=True)
    for step in bar:
        if cursor + args.batch_size > len(perm):
            perm, cursor = torch.randperm(len(images), generator=gen), 0
        idx = perm[cursor : cursor + args.batch_size]
        cursor += args.batch_size
        x0 = images[idx]
        ids = token_table[labels[idx]].clone()
        drop = torch.rand(len(idx), generator=gen) < args.cond_drop
        ids[drop] = empty_ids
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, n_timesteps, (len(idx),), generator=gen)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise

        for g in opt.param_groups:
            g["lr"] = args.lr * lr_factor(step, args.warmup, args.steps)
        pred = pipe.unet(xt, t, encoder_hidden_states=pipe.text_encoder(ids)).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(modules.parameters(), 1.0)
        opt.step()
        if ema is not None:
            # Warm-up of the decay (as in diffusers' EMAModel) so early steps don't dominate.
            decay = min(args.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for k, v in modules.state_dict().items():
                    if v.dtype.is_floating_point:
                        ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
                    else:
                        ema[k].copy_(v)
        losses.append(loss.item())
        if step % args.log_every == 0 or step == args.steps - 1:
            bar.set_postfix(loss=f"{np.mean(losses[-args.log_every:]):.4f}", lr=f"{opt.param_groups[0]['lr']:.2e}")
    bar.close()
    if ema is not None:
        modules.load_state_dict(ema)
    modules.eval()
    return {
        "final_loss": losses[-1],
        "mean_last_100_loss": float(np.mean(losses[-100:])),
        "mean_first_100_loss": float(np.mean(losses[:100])),
        "train_images": len(images),
    }


def evaluate(args: argparse.Namespace, pipe: digits.DigitsPipeline) -> tuple[dict, np.ndarray]:
    """Generate ``--eval-per-class`` samples per class and classify them; returns figures, samples."""
    clf = digits.train_digit_classifier()
    test_x, test_y = digits.load_digits_dataset(split="test")
    real_acc = float((digits.classify((test_x + 1) / 2, clf) == test_y.numpy()).mean())
    n = args.eval_per_class
    prompts = [digits.digit_prompt(c) for c in range(digits.NUM_CLASSES) for _ in range(n)]
    gen = torch.Generator().manual_seed(args.seed + 1)
    samples = pipe(prompts, num_inference_steps=args.inference_steps, generator=gen,
                   guidance_scale=args.guidance_scale)
    pred = digits.classify(samples, clf).reshape(digits.NUM_CLASSES, n)
    per_class = {str(c): float((pred[c] == c).mean()) for c in range(digits.NUM_CLASSES)}
    known = [per_class[str(c)] for c in digits.KNOWN_CLASSES]
    held = pred[digits.HELD_OUT_CLASS]
    figures = {
        "classifier": "sklearn SVC (RBF) on 16x16 pixels, train split of all 10 classes",
        "classifier_accuracy_real_test_split": real_acc,
        "samples_per_class": n,
        "inference_steps": args.inference_steps,
        "guidance_scale": args.guidance_scale,
        "generated_accuracy_per_class": per_class,
        "generated_accuracy_known_mean": float(np.mean(known)),
        "held_out_prompt": digits.digit_prompt(digits.HELD_OUT_CLASS),
        "held_out_prompt_classified_as": {str(c): int((held == c).sum()) for c in range(digits.NUM_CLASSES)},
        "new_token_prompt": digits.concept_prompt(),
    }
    sks = pipe([digits.concept_prompt()] * n, num_inference_steps=args.inference_steps,
               generator=torch.Generator().manual_seed(args.seed + 2), guidance_scale=args.guidance_scale)
    sks_pred = digits.classify(sks, clf)
    figures["new_token_prompt_classified_as"] = {str(c): int((sks_pred == c).sum()) for c in range(digits.NUM_CLASSES)}
    return figures, samples.reshape(digits.NUM_CLASSES, n, digits.IMAGE_SIZE, digits.IMAGE_SIZE)


def save_grid(samples: np.ndarray, per_class: dict, path: Path, columns: int = 10) -> None:
    """A PNG grid: one row per class (the held-out one marked), ``columns`` samples per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = samples.shape[0]
    cols = min(columns, samples.shape[1])
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.8, rows * 0.85), squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.imshow(samples[r, c], cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        label = f"{r}" + (" (held out)" if r == digits.HELD_OUT_CLASS else "")
        axes[r][0].set_ylabel(f"{label}\n{per_class[str(r)]:.0%}", rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle('prompt "a photo of digit <d>"; classifier accuracy per row', fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def file_sizes(folder: Path) -> dict:
    """Bytes of every weight/config file of the saved pipeline, by relative path."""
    return {
        str(p.relative_to(folder)): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix in (".json", ".safetensors") and p.name != "pretrain_report.json"
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    pipe = digits.build_pipeline(seed=args.seed)

    t0 = time.perf_counter()
    loss_figures = train(args, pipe)
    train_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    eval_figures, samples = evaluate(args, pipe)
    eval_seconds = time.perf_counter() - t0

    args.output.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(args.output)
    save_grid(samples, eval_figures["generated_accuracy_per_class"], args.output / "samples.png")

    import diffusers
    import sklearn

    sizes = file_sizes(args.output)
    report = {
        "held_out_class": digits.HELD_OUT_CLASS,
        "known_classes": list(digits.KNOWN_CLASSES),
        "new_token": digits.NEW_TOKEN,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "warmup_steps": args.warmup,
        "lr_schedule": "linear warm-up, cosine decay to 0",
        "cond_drop": args.cond_drop,
        "ema_decay": args.ema_decay,
        "seed": args.seed,
        "threads": args.threads,
        **loss_figures,
        "train_wall_seconds": round(train_seconds, 1),
        "eval_wall_seconds": round(eval_seconds, 1),
        "total_wall_seconds": round(time.perf_counter() - t_start, 1),
        "parameters_unet": sum(p.numel() for p in pipe.unet.parameters()),
        "parameters_text_encoder": sum(p.numel() for p in pipe.text_encoder.parameters()),
        "file_bytes": sizes,
        "total_file_bytes": sum(sizes.values()),
        **eval_figures,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            # Other work on the machine slows the run: the 1/5/15-min load averages at start and end.
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "load_average_start": [round(x, 2) for x in load_before],
            "load_average_end": [round(x, 2) for x in os.getloadavg()],
        },
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                     "scikit-learn": sklearn.__version__, "numpy": np.__version__},
    }
    report["parameters_total"] = report["parameters_unet"] + report["parameters_text_encoder"]
    (args.output / "pretrain_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in (
        "train_wall_seconds", "final_loss", "mean_last_100_loss", "parameters_total", "total_file_bytes",
        "generated_accuracy_per_class", "held_out_prompt_classified_as")}, indent=1))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
