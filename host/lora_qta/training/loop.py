"""LoRA fine-tuning of a diffusers UNet with its LoRA GEMMs on the accelerator: one loop.

``precision="fp32"`` is plain peft LoRA in PyTorch (the reference); ``precision="int8"``
makes every LoRA linear a :class:`~lora_qta.lora.layer.QtaLoraLinear`, so the six GEMMs of
each adapted layer run INT8 on the accelerator (board or emulation) in forward and backward.

All randomness of a step (batch choice, noise, timesteps, stochastic rounding) is drawn from
generators seeded by (seed, step), so a run resumed from a checkpoint ends with the same
adapter weights as an uninterrupted one. Checkpoints (:mod:`.checkpoint`) are written every N
steps and on Ctrl-C; a NaN/Inf loss stops the run and keeps the last good checkpoint. The
outputs of a run (adapter, sample grid, loss curve, report) are written at its end.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import LoraConfig
from tqdm.auto import tqdm

from ..errors import CheckpointError, DivergedError, LimitError
from ..lora.layer import QtaRuntime, accelerated_lora_config, attach_runtime
from .checkpoint import CHECKPOINTS, latest_checkpoint, load_checkpoint, lora_state, save_checkpoint
from .config import FinetuneConfig
from .models import DigitsBundle, ModelBundle, StableDiffusionBundle


def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """Generator of one random stream of one step (resume-safe)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 101 + stream) % (2**63))


def lr_lambda(cfg: FinetuneConfig):
    """Learning-rate multiplier per step: linear warm-up then constant, linear or cosine decay."""
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        if cfg.lr_schedule == "constant":
            return 1.0
        if cfg.lr_schedule == "linear":
            return max(0.0, 1.0 - frac)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))
    return f


def load_bundle(cfg: FinetuneConfig) -> ModelBundle:
    """The model of the run: the embedded digits model, or a local Stable Diffusion folder."""
    if cfg.pretrained_model is None:
        return DigitsBundle()
    path = Path(cfg.pretrained_model)
    if (path / "model_index.json").is_file() and "DigitsPipeline" in (path / "model_index.json").read_text():
        return DigitsBundle(path)
    return StableDiffusionBundle(path)


def validate(cfg: FinetuneConfig, bundle: ModelBundle) -> None:
    """Refuse bad options before any training starts."""
    from ..hw.config import config

    if cfg.precision not in ("fp32", "int8"):
        raise LimitError(f"--precision must be fp32 or int8, not {cfg.precision!r}")
    if cfg.offload not in ("lora", "all"):
        raise LimitError(f"--offload must be lora or all, not {cfg.offload!r}")
    if cfg.offload == "all" and cfg.precision != "int8":
        raise LimitError("--offload all runs every GEMM INT8 on the accelerator: it needs --precision int8")
    if cfg.lr_schedule not in ("constant", "linear", "cosine"):
        raise LimitError(f"--lr-schedule must be constant, linear or cosine, not {cfg.lr_schedule!r}")
    if cfg.prediction_type not in ("epsilon", "v_prediction"):
        raise LimitError(f"--prediction-type must be epsilon or v_prediction, not {cfg.prediction_type!r}")
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.checkpoint_every < 1:
        raise LimitError("--steps, --batch-size and --checkpoint-every must be positive")
    names = {n.rsplit(".", 1)[-1] for n, _ in bundle.unet.named_modules()}
    names |= {".".join(n.split(".")[-2:]) for n, _ in bundle.unet.named_modules()}
    unknown = [t for t in cfg.target_modules if t not in names]
    if unknown:
        raise LimitError(f"unknown target module(s) {unknown}: the UNet has e.g. to_q, to_k, to_v, to_out.0, "
                         "proj_in, proj_out, ff.net.2")
    linears = [m for n, m in bundle.unet.named_modules()
               if isinstance(m, torch.nn.Linear) and any(n == t or n.endswith("." + t) for t in cfg.target_modules)]
    if not linears:
        raise LimitError(f"target modules {cfg.target_modules} match no nn.Linear of the UNet")
    narrowest = min(min(m.in_features, m.out_features) for m in linears)
    board = config().board(cfg.board)
    limit = min(narrowest, board.max_n, board.max_m)
    if not 1 <= cfg.rank <= limit:
        raise LimitError(f"rank {cfg.rank} is not supported: it must be 1..{limit} (the narrowest targeted "
                         f"layer has {narrowest} features; the {board.name} accelerator takes dimensions up "
                         f"to {board.max_n})")


def add_lora(bundle: ModelBundle, cfg: FinetuneConfig) -> None:
    """Attach the adapter: stock peft LoRA (fp32) or the accelerated layer (int8)."""
    kw = dict(r=cfg.rank, lora_alpha=cfg.alpha, init_lora_weights="gaussian", target_modules=cfg.target_modules)
    lora_cfg = LoraConfig(**kw) if cfg.precision == "fp32" else accelerated_lora_config(**kw)
    bundle.unet.requires_grad_(False)
    torch.manual_seed(cfg.seed)  # the gaussian init of lora_A
    bundle.unet.add_adapter(lora_cfg)


# -------------------------------------------------------------------------- the loop

def training_batch(data, bundle: ModelBundle, cfg: FinetuneConfig, step: int) -> tuple[torch.Tensor, list[str]]:
    """Half instance examples, half prior-preservation examples (when there are any)."""
    g = step_generator(cfg.seed, step, 0)
    n_inst = cfg.batch_size if data.prior_images is None else max(1, cfg.batch_size // 2)
    idx = torch.randint(len(data.images), (n_inst,), generator=g)
    images, prompts = [data.images[idx]], [data.prompts[i] for i in idx.tolist()]
    if data.prior_images is not None:
        pidx = torch.randint(len(data.prior_images), (cfg.batch_size - n_inst,), generator=g)
        images.append(data.prior_images[pidx])
        prompts += [data.prior_prompts[i] for i in pidx.tolist()]
    return torch.cat(images), prompts


def loss_of_step(bundle: ModelBundle, cfg: FinetuneConfig, x0: torch.Tensor, context: torch.Tensor,
                 step: int) -> torch.Tensor:
    """The diffusers noise-prediction (or v-prediction) loss of one batch."""
    sched = bundle.noise_scheduler
    g = step_generator(cfg.seed, step, 1)
    noise = torch.randn(x0.shape, generator=g)
    t = torch.randint(0, sched.config.num_train_timesteps, (x0.shape[0],), generator=g)
    noisy = sched.add_noise(x0, noise, t)
    target = noise if cfg.prediction_type == "epsilon" else sched.get_velocity(x0, noise, t)
    pred = bundle.unet(noisy, t, encoder_hidden_states=context).sample
    return torch.nn.functional.mse_loss(pred.float(), target.float())


def train_step(bundle: ModelBundle, cfg: FinetuneConfig, data, params: list[torch.nn.Parameter],
               optimizer: torch.optim.Optimizer, scheduler, step: int) -> torch.Tensor:
    """One optimizer step (batch, loss, backward, clipping, AdamW, LR schedule); returns the loss.

    Raises :class:`DivergedError` before touching the weights if the loss is NaN or Inf.
    ``scheduler`` may be None (the speed benchmark keeps the learning rate fixed).
    """
    x0, prompts = training_batch(data, bundle, cfg, step)
    loss = loss_of_step(bundle, cfg, x0, bundle.encode_prompts(prompts), step)
    if not torch.isfinite(loss):
        raise DivergedError(f"loss became {loss.item()} at step {step}")
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def grid_png(rows: list[tuple[str, np.ndarray]], path: Path, captions: list[str] | None = None) -> None:
    """A labelled grid of sample rows (PNG); ``captions`` name the columns (e.g. the prompts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncol = max(len(imgs) for _, imgs in rows)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(1.2 * ncol + 1.5, 1.4 * len(rows)), squeeze=False)
    for r, (label, imgs) in enumerate(rows):
        for c in range(ncol):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(imgs):
                ax.imshow(imgs[c], cmap="gray" if imgs[c].ndim == 2 else None, vmin=0, vmax=1)
            if captions and c < len(captions):
                ax.set_title(captions[c], fontsize=6)
        axes[r][0].text(-0.15, 0.5, label, fontsize=7, ha="right", va="center", transform=axes[r][0].transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def loss_png(losses: list[float], path: Path, title: str) -> None:
    """The loss curve with a moving average (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(losses, lw=0.8, alpha=0.5, label="loss")
    if len(losses) >= 10:
        k = 10
        ax.plot(range(k - 1, len(losses)), np.convolve(losses, np.ones(k) / k, mode="valid"), label="mean of 10")
    ax.set_xlabel("step")
    ax.set_ylabel("MSE")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def finetune(cfg: FinetuneConfig, bundle: ModelBundle | None = None, stop_after: int | None = None) -> dict[str, Any]:
    """Run (or resume) a fine-tuning; returns the run report (also written to report.json).

    ``stop_after`` ends the run early after that many steps as if interrupted (tests use it
    to exercise resume).
    """
    from ..runtime.accelerator import Accelerator

    run = Path(cfg.output_dir)
    bundle = bundle or load_bundle(cfg)
    validate(cfg, bundle)
    if cfg.pretrained_model is not None and isinstance(bundle, StableDiffusionBundle):
        if not cfg.instance_data_dir:
            raise LimitError("--pretrained-model with a Stable Diffusion folder needs --instance-data-dir")
        data = bundle.training_data(Path(cfg.instance_data_dir), cfg.prompt)
    else:
        data = bundle.training_data(cfg.num_examples, cfg.prior_per_class, cfg.seed)
    if cfg.resume and latest_checkpoint(run) is None:
        raise CheckpointError(f"--resume given but {run / CHECKPOINTS} holds no checkpoint")
    run.mkdir(parents=True, exist_ok=True)

    threads = cfg.threads or (1 if isinstance(bundle, DigitsBundle) else None)
    if threads:
        torch.set_num_threads(threads)
    before = None
    if cfg.samples and not cfg.resume:
        before = bundle.sample(bundle.eval_prompts(), cfg.seed)
        np.save(run / "samples_before.npy", before)

    add_lora(bundle, cfg)
    runtime = None
    if cfg.precision == "int8":
        runtime = QtaRuntime(Accelerator(cfg.board, cfg.backend), seed=cfg.seed)
        n_layers = attach_runtime(bundle.unet, runtime)
        if cfg.offload == "all":  # the frozen base model's GEMMs too (lora/offload.py)
            from ..lora.offload import install

            runtime.offload = install(bundle.unet, runtime.acc, runtime)
    else:
        n_layers = sum(1 for m in bundle.unet.modules() if hasattr(m, "lora_A"))
    params = [p for p in bundle.unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))

    start, history = 0, {"loss": [], "time_step": [], "time_accelerator": 0.0, "time_quantization": 0.0}
    if cfg.resume:
        start, history = load_checkpoint(latest_checkpoint(run), bundle, optimizer, scheduler, cfg)
    latents = bundle.to_latents(data.images)
    prior_latents = bundle.to_latents(data.prior_images) if data.prior_images is not None else None
    lat_data = type(data)(latents, data.prompts, prior_latents, data.prior_prompts)

    interrupted = {"flag": False}
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.__setitem__("flag", True))
    end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
    bar = tqdm(range(start, end), initial=start, total=cfg.steps, desc=f"finetune {cfg.precision}",
               unit="step", dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 15.0)
    try:
        for step in bar:
            t0 = time.perf_counter()
            if runtime is not None:
                runtime.step = step
                acc0, q0 = runtime.time_accelerator, runtime.time_quantization
            try:
                loss = train_step(bundle, cfg, lat_data, params, optimizer, scheduler, step)
            except DivergedError as e:
                last = latest_checkpoint(run)
                raise DivergedError(f"{e}; stopped. The last good checkpoint is "
                                    f"{last or 'none (no checkpoint written yet)'}; lower --learning-rate "
                                    "and resume from it") from None
            dt = time.perf_counter() - t0
            history["loss"].append(float(loss.item()))
            history["time_step"].append(dt)
            if runtime is not None:
                history["time_accelerator"] += runtime.time_accelerator - acc0
                history["time_quantization"] += runtime.time_quantization - q0
            bar.set_postfix(loss=f"{loss.item():.4f}", steps_per_s=f"{1 / dt:.2f}", refresh=False)
            done = step + 1
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                save_checkpoint(run, done, bundle, optimizer, scheduler, cfg, history)
            if interrupted["flag"]:
                save_checkpoint(run, done, bundle, optimizer, scheduler, cfg, history)
                bar.close()
                print(f"\ninterrupted: checkpoint saved at step {done}; continue with --resume")
                return {"interrupted": True, "step": done}
    finally:
        signal.signal(signal.SIGINT, previous)
        bar.close()
    if end < cfg.steps:  # stop_after
        save_checkpoint(run, end, bundle, optimizer, scheduler, cfg, history)
        return {"interrupted": True, "step": end}
    return write_outputs(run, cfg, bundle, runtime, history, before, n_layers)


def write_outputs(run: Path, cfg: FinetuneConfig, bundle: ModelBundle, runtime: QtaRuntime | None,
                  history: dict[str, Any], before: np.ndarray | None, n_layers: int) -> dict[str, Any]:
    """Adapter (diffusers format), sample grid, loss curve and report.json."""
    adapter = run / "adapter"
    adapter.mkdir(parents=True, exist_ok=True)
    bundle.save_lora(adapter, lora_state(bundle.unet))
    if runtime is not None:
        attach_runtime(bundle.unet, None)  # sample with the trained adapter in PyTorch
        if getattr(runtime, "offload", None) is not None:
            from ..lora.offload import uninstall

            uninstall(bundle.unet, runtime.offload)
    if cfg.samples:
        prompts = bundle.eval_prompts()
        if before is None and (run / "samples_before.npy").is_file():
            before = np.load(run / "samples_before.npy")
        after = bundle.sample(prompts, cfg.seed)
        rows = []
        if before is not None:
            rows.append(("before", before))
        rows.append((f"after\n({cfg.precision} LoRA)", after))
        grid_png(rows, run / "samples.png", captions=[p.replace("a photo of ", "") for p in prompts])
    loss_png(history["loss"], run / "loss.png", f"LoRA fine-tuning, {cfg.precision}, rank {cfg.rank}")
    total = float(sum(history["time_step"]))
    report: dict[str, Any] = {
        "config": asdict(cfg), "model": bundle.name, "lora_layers": n_layers, "steps": len(history["loss"]),
        "final_loss": history["loss"][-1] if history["loss"] else None,
        "mean_loss_last_20": float(np.mean(history["loss"][-20:])) if history["loss"] else None,
        "time_s": {"total_measured": total, "accelerator_measured": history["time_accelerator"],
                   "quantization_measured": history["time_quantization"],
                   "rest_measured": total - history["time_accelerator"] - history["time_quantization"]},
        "steps_per_s_measured": len(history["time_step"]) / total if total else None,
    }
    if runtime is not None:
        b = runtime.acc.board
        gemms = runtime.report()
        cycles = sum(v["cycles"] for v in gemms.values())
        report["accelerator"] = {
            "board": b.name, "backend": runtime.acc.backend, "pes": b.pes, "clock_mhz": b.clock_mhz,
            "note": "cycles are the kernel's cycle counter: a modelled schedule under emulation",
            "per_gemm": gemms, "total_cycles": cycles,
            "modelled_board_time_s": cycles / (b.clock_mhz * 1e6),
        }
    if runtime is not None:
        from ..lora.offload import offload_report

        report["offload"] = offload_report(runtime)
    (run / "report.json").write_text(json.dumps(report, indent=2, default=str))
    return report
