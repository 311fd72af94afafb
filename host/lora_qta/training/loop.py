"""LoRA fine-tuning of a diffusers UNet with its LoRA GEMMs on the accelerator: one loop.

``precision="fp32"`` is plain peft LoRA in PyTorch (the reference); ``precision="int8"``
makes every LoRA linear a :class:`~lora_qta.lora.layer.QtaLoraLinear`, so the six GEMMs of
each adapted layer run INT8 on the accelerator (board or emulation) in forward and backward.

All randomness of a step (batch choice, noise, timesteps, stochastic rounding) is drawn from
generators seeded by (seed, step), so a run resumed from a checkpoint ends with the same
adapter weights as an uninterrupted one (unless ``--learning-rate`` was overridden on resume).
One run per output folder, one process at a time (:mod:`.rundir`). Checkpoints
(:mod:`.checkpoint`) are written every N steps and on Ctrl-C; a NaN/Inf loss, gradient or
quantizer input stops the run before the weights change and names the last good checkpoint.
The outputs of a run (adapter, sample grid, loss curve, report) are written at its end.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the same loop runs data parallel through the explicit
``dist`` hooks of :mod:`.distributed`: each process computes its rows of the global batch, the
LoRA gradients are all-reduced before clipping (a divergence on any rank stops every rank), and
rank 0 alone takes the run folder's lock and writes.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import LoraConfig

from ..errors import CheckpointError, DivergedError, LimitError, QtaError
from ..lora.layer import QtaRuntime, accelerated_lora_config, attach_runtime
from ..lora.schemes import DELAYED_SCHEMES
from .checkpoint import identity_diff, load_checkpoint, lora_state, non_finite, save_checkpoint
from .config import DEFAULT_SD_PROMPT, FinetuneConfig
from .distributed import DataParallel
from .models import DigitsBundle, ModelBundle, StableDiffusionBundle
from .options import (check_options, check_setup, model_kind, refuse_stable_diffusion_options,
                      require_instance_data)
from .rundir import CHECKPOINTS, RunFolder, latest_checkpoint


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
    if model_kind(cfg.pretrained_model) == "digits":
        return DigitsBundle(Path(cfg.pretrained_model) if cfg.pretrained_model else None)
    return StableDiffusionBundle(Path(cfg.pretrained_model))


def run_target(cfg: FinetuneConfig) -> dict[str, Any] | None:
    """The resolved accelerator of an int8 run (board, backend, the LoRA layer's numerics), part
    of the run's identity; None for fp32 (no accelerator)."""
    if cfg.precision != "int8":
        return None
    from ..hw.config import resolve_board
    from ..runtime.accelerator import resolve_backend

    board = resolve_board(cfg.board)
    target = {"board": board.name, "backend": resolve_backend(board, cfg.backend),
              "numerics": {"smooth_alpha": QtaRuntime.SMOOTH_ALPHA, "wgrad_groups": True,
                           "group_ratio": QtaRuntime.GROUP_RATIO}}
    if cfg.offload == "all":  # the whole-step offload's quantization scheme defines the result too
        from ..lora.offload import MAX_RECOMPUTES, SAT_THRESHOLD, default_history

        target["offload_numerics"] = {"scheme": cfg.offload_scheme}
        if cfg.fuse_lora:  # only when set: identities of unfused runs stay as they were
            target["offload_numerics"]["fuse_lora"] = True
        if cfg.offload_scheme in DELAYED_SCHEMES:  # delayed scaling (row8, row8c: of their INT8 outputs)
            target["offload_numerics"].update(amax_history=default_history(cfg.offload_scheme),
                                              saturation_threshold=SAT_THRESHOLD, max_recomputes=MAX_RECOMPUTES)
    return target


def validate(cfg: FinetuneConfig, bundle: ModelBundle, writer: bool = True) -> None:
    """Refuse bad options before any training starts (:func:`check_options` plus what depends on
    the model)."""
    from ..hw.config import resolve_board

    check_options(cfg, writer)
    if isinstance(bundle, DigitsBundle):
        refuse_stable_diffusion_options(cfg)
        limits = bundle.limits()
        for name, most in limits.items():
            if getattr(cfg, name) > most:
                raise LimitError(f"--{name.replace('_', '-')} {getattr(cfg, name)} is more than the digits "
                                 f"training split holds ({most})")
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
    if not 1 <= cfg.rank <= narrowest:
        raise LimitError(f"rank {cfg.rank} is not supported: it must be 1..{narrowest} (the narrowest targeted "
                         f"layer has {narrowest} features); lower --rank")
    resolve_board(cfg.board)  # an unknown --board or $LORA_QTA_BOARD fails here, before training


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (MemAvailable), if the system says."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


@torch.no_grad()
def activation_bytes_per_image(bundle: ModelBundle, data) -> int:
    """Bytes of the UNet's layer outputs for one training image (measured with one forward pass):
    a lower bound of what training keeps for the backward pass per image of a batch."""
    x0 = bundle.to_latents(data.images[:1])
    ctx = bundle.encode_prompts(data.prompts[:1])
    total = 0

    def count(_module, _inputs, output):
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * output.element_size()

    hooks = [m.register_forward_hook(count) for m in bundle.unet.modules() if not any(m.children())]
    try:
        bundle.unet(x0, torch.tensor([0]), encoder_hidden_states=ctx)
    finally:
        for h in hooks:
            h.remove()
    return total


def check_memory(cfg: FinetuneConfig, bundle: ModelBundle, data, world: int = 1) -> None:
    """The limit that remains for a batch (the accelerator splits what exceeds its own): memory.
    Refuse a --batch-size whose activations alone exceed the memory available. ``world``: the
    data-parallel processes sharing the global batch (each computes at most ceil(B / world)
    rows)."""
    avail = available_memory()
    if avail is None:
        return
    per = activation_bytes_per_image(bundle, data)
    rows = -(-cfg.batch_size // world)
    need = per * rows
    if need > avail:
        split = "" if world == 1 else f" ({rows} rows of the global batch on this process of {world})"
        raise LimitError(f"--batch-size {cfg.batch_size}{split} needs at least {need / 1e9:.1f} GB for the UNet's "
                         f"activations ({per / 1e6:.1f} MB per image, measured), more than the {avail / 1e9:.1f} GB "
                         f"of memory available; lower --batch-size (at most about {max(1, avail // per) * world})")


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
                 step: int, part: slice = slice(None)) -> torch.Tensor:
    """The diffusers noise-prediction (or v-prediction) loss of one batch.

    ``part``: the rows of the global batch ``x0`` this process computes (data parallel; the
    noise and timesteps are drawn for the whole batch first); ``context`` holds those rows only.
    """
    sched = bundle.noise_scheduler
    g = step_generator(cfg.seed, step, 1)
    noise = torch.randn(x0.shape, generator=g)
    t = torch.randint(0, sched.config.num_train_timesteps, (x0.shape[0],), generator=g)
    x0, noise, t = x0[part], noise[part], t[part]
    noisy = sched.add_noise(x0, noise, t)
    target = noise if cfg.prediction_type == "epsilon" else sched.get_velocity(x0, noise, t)
    pred = bundle.unet(noisy, t, encoder_hidden_states=context).sample
    return torch.nn.functional.mse_loss(pred.float(), target.float())


def train_step(bundle: ModelBundle, cfg: FinetuneConfig, data, params: list[torch.nn.Parameter],
               optimizer: torch.optim.Optimizer, scheduler, step: int,
               dist: DataParallel | None = None) -> torch.Tensor:
    """One optimizer step (batch, loss, backward, clipping, AdamW, LR schedule); returns the loss.

    Raises :class:`DivergedError` before touching the weights if the loss or the gradient norm
    is NaN or Inf (or a NaN/Inf reaches an INT8 quantizer). ``scheduler`` may be None (the speed
    benchmark keeps the learning rate fixed). With ``dist`` this process computes its rows of the
    global batch, with its loss weighted by their share, and the LoRA gradients of every rank are
    summed before clipping; a NaN/Inf loss or quantizer input on any rank raises
    :class:`DivergedError` on every rank (carried by the all-reduce), and so does a non-finite
    norm of the summed gradients (the same on every rank).
    """
    x0, prompts = training_batch(data, bundle, cfg, step)
    part = slice(None) if dist is None else dist.rows(len(prompts))
    loss, failure = None, None
    try:
        loss = loss_of_step(bundle, cfg, x0, bundle.encode_prompts(prompts[part]), step, part)
        if not torch.isfinite(loss):
            raise DivergedError(f"the loss became {loss.item()}")
        if dist is not None:
            loss = loss * dist.share(len(prompts))  # summed over the ranks: the global batch's mean
        loss.backward()
    except DivergedError as e:
        if dist is None:
            raise
        failure = e  # the other ranks learn of it in the all-reduce
    if dist is not None:
        loss = dist.all_reduce_gradients(params, loss, step, failure)
    norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
    if not torch.isfinite(norm):
        optimizer.zero_grad(set_to_none=True)
        raise DivergedError(f"the gradient norm became {norm.item()}")
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


@torch.no_grad()
def heldout_loss(bundle: ModelBundle, batch: tuple[torch.Tensor, list[str], str], seed: int,
                 repeats: int = 4) -> float:
    """Noise-prediction MSE of ``bundle``'s UNet on a held-out batch at fixed noise and timesteps
    (the same for every evaluation of a run, independent of the training streams)."""
    images, prompts, _ = batch
    x0 = bundle.to_latents(images)
    ctx = bundle.encode_prompts(prompts)
    sched = bundle.noise_scheduler
    total, count = 0.0, 0
    for r in range(repeats):
        g = step_generator(seed, 10_000 + r, 7)
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, sched.config.num_train_timesteps, (x0.shape[0],), generator=g)
        pred = bundle.unet(sched.add_noise(x0, noise, t), t, encoder_hidden_states=ctx).sample
        total += torch.nn.functional.mse_loss(pred.float(), noise, reduction="sum").item()
        count += noise.numel()
    return total / count


def grid_png(rows: list[tuple], path: Path, captions: list[str] | None = None) -> None:
    """A labelled grid of sample rows (PNG): each row is (label, images) or (label, images, notes)
    with one note under each image; ``captions`` name the columns (e.g. the prompts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncol = max(len(row[1]) for row in rows)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(1.2 * ncol + 1.5, 1.55 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        label, imgs = row[0], row[1]
        notes = row[2] if len(row) > 2 else None
        for c in range(ncol):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(imgs):
                ax.imshow(imgs[c], cmap="gray" if imgs[c].ndim == 2 else None, vmin=0, vmax=1)
            if captions and c < len(captions) and r == 0:
                ax.set_title(captions[c], fontsize=6)
            if notes and c < len(notes) and notes[c]:
                ax.text(0.5, -0.08, notes[c], fontsize=6, ha="center", va="top", transform=ax.transAxes)
        axes[r][0].text(-0.15, 0.5, label, fontsize=7, ha="right", va="center", transform=axes[r][0].transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def smoothed(values: list[float], span: int) -> np.ndarray:
    """Exponential moving average with the given span (bias-corrected from the first value)."""
    a = 2.0 / (span + 1)
    out, m, w = [], 0.0, 0.0
    for v in values:
        m = (1 - a) * m + a * v
        w = (1 - a) * w + a
        out.append(m / w)
    return np.array(out)


def loss_png(losses: list[float], path: Path, title: str, heldout: list | None = None,
             heldout_label: str = "") -> None:
    """The training loss (every step and smoothed) and, when measured, the held-out loss of the
    new concept at fixed noise, which shows learning where the per-step loss is noise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if heldout else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 3.3), squeeze=False)
    ax = axes[0][0]
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, lw=0.6, alpha=0.35, label="loss of each step (new noise and timesteps)")
    if len(losses) >= 2:
        span = max(5, len(losses) // 10)
        ax.plot(steps, smoothed(losses, span), lw=1.6, label=f"smoothed (EMA, span {span})")
    ax.set_xlabel("step")
    ax.set_ylabel("MSE")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    if heldout:
        ax = axes[0][1]
        hs, hv = zip(*heldout)
        ax.plot(hs, hv, marker="o", ms=3)
        ax.set_xlabel("step")
        ax.set_ylabel("MSE")
        ax.set_title("held-out loss of the new concept (fixed noise)", fontsize=9)
        ax.text(0.02, 0.03, heldout_label, fontsize=6, transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


class Progress:
    """A tqdm bar on a terminal; elsewhere (logs, pipes, CI) a plain line every ``every`` steps or
    30 s, so that the output grows line by line instead of one carriage-return line.
    ``disable``: print nothing (data-parallel ranks other than 0; rank 0 shows the progress)."""

    def __init__(self, start: int, total: int, desc: str, stream=None, disable: bool = False):
        self.stream = stream or sys.stderr
        self.start, self.total, self.desc = start, total, desc
        self.disable = disable
        self.tty = self.stream.isatty()
        self.every = max(1, total // 20)
        self.last_print = time.monotonic()
        self.t0 = time.monotonic()
        self.bar = None
        if disable:
            pass
        elif self.tty:
            from tqdm.auto import tqdm

            self.bar = tqdm(initial=start, total=total, desc=desc, unit="step", dynamic_ncols=True,
                            file=self.stream, mininterval=0.5)
        else:
            print(f"{desc}: steps {start}..{total}", file=self.stream, flush=True)

    def update(self, done: int, loss: float, dt: float) -> None:
        if self.disable:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", steps_per_s=f"{1 / dt:.2f}", refresh=False)
            return
        now = time.monotonic()
        if done % self.every == 0 or done == self.total or now - self.last_print >= 30:
            rate = (done - self.start) / max(now - self.t0, 1e-9)
            print(f"{self.desc}: step {done}/{self.total}, loss {loss:.4f}, {rate:.2f} steps/s",
                  file=self.stream, flush=True)
            self.last_print = now

    def note(self, text: str) -> None:
        if self.disable:
            return
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _divergence_message(e: DivergedError, step: int, cfg: FinetuneConfig, last: Path | str | None) -> str:
    """The one-line message of a divergence at ``step`` (0-based), ``last`` the last good
    checkpoint (None: none written yet)."""
    if last is None:
        advice = (f"No checkpoint was written yet: start again with a lower --learning-rate (e.g. "
                  f"{cfg.learning_rate / 10:g}) and --overwrite")
    else:
        advice = (f"The last good checkpoint is {last}; continue from it with the same command plus --resume "
                  f"--learning-rate {cfg.learning_rate / 10:g} (or another lower rate: recorded as an override in "
                  "the checkpoints and report.json)")
    return f"training diverged at step {step + 1}: {e}; stopped before changing the weights. {advice}"


def _apply_learning_rate(optimizer, scheduler, lr: float) -> None:
    """Change the peak learning rate of a restored optimizer and schedule (resume override)."""
    for group, lam in zip(optimizer.param_groups, scheduler.lr_lambdas):
        group["initial_lr"] = lr
        group["lr"] = lr * lam(scheduler.last_epoch)
    scheduler.base_lrs = [lr] * len(optimizer.param_groups)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


def finetune(cfg: FinetuneConfig, bundle: ModelBundle | None = None, stop_after: int | None = None) -> dict[str, Any]:
    """Run (or resume) a fine-tuning; returns the run report (also written to report.json).

    ``stop_after`` ends the run early after that many steps as if interrupted (tests use it
    to exercise resume). Under ``torchrun`` (``WORLD_SIZE`` > 1) the run is data parallel
    (:mod:`.distributed`); ranks other than 0 neither lock nor write their --output-dir and
    return ``{"rank": r, "writer": False, "steps": n}``.
    """
    dist = DataParallel.from_environment()
    if dist is None:
        return _finetune(cfg, bundle, stop_after, None)
    return dist.run(lambda: _finetune(cfg, bundle, stop_after, dist))


def _finetune(cfg: FinetuneConfig, bundle: ModelBundle | None, stop_after: int | None,
              dist: DataParallel | None) -> dict[str, Any]:
    from ..runtime.accelerator import Accelerator

    run = Path(cfg.output_dir)
    writer = dist is None or dist.rank == 0  # rank 0 alone locks and writes the run folder
    check_options(cfg, writer)
    if dist is None:  # data-parallel ranks refuse the target and the run folder together, below
        check_setup(cfg)
    bundle = bundle or load_bundle(cfg)
    validate(cfg, bundle, writer)
    if isinstance(bundle, StableDiffusionBundle):
        require_instance_data(cfg)
        data = bundle.training_data(Path(cfg.instance_data_dir), cfg.prompt or DEFAULT_SD_PROMPT)
    else:
        data = bundle.training_data(cfg.num_examples, cfg.prior_per_class, cfg.seed)
    accelerator = None if dist is None else dist.agree(cfg, bundle, data, lambda: Accelerator(cfg.board, cfg.backend))
    identity = cfg.identity(run_target(cfg))
    folder = RunFolder(run) if writer else None

    def claim() -> None:
        """The writer's run folder: one run per folder (resume or overwrite), one process at a time."""
        folder.check(cfg.resume, cfg.overwrite)  # before the lock creates the folder
        folder.lock()
        try:
            folder.prepare(cfg.resume, cfg.overwrite)
        except BaseException:
            folder.unlock()
            raise

    if dist is None:
        check_memory(cfg, bundle, data)
        claim()
    else:  # a refusal on one rank stops every rank with it (no rank waits for one that gave up)
        dist.together("memory check", lambda: check_memory(cfg, bundle, data, dist.world))
        dist.together("run folder", claim if writer else None)
    try:
        resume_from = None
        if cfg.resume:  # rank 0 holds the lock: its newest checkpoint cannot change under it
            resume_from = latest_checkpoint(run) if dist is None else dist.checkpoint_from_rank0(run)
            if resume_from is None:
                raise CheckpointError(f"--resume given but {run / CHECKPOINTS} holds no checkpoint")
        return _train(cfg, run, bundle, data, identity, stop_after, dist, accelerator, resume_from)
    finally:
        if folder is not None:
            folder.unlock()


def _train(cfg: FinetuneConfig, run: Path, bundle: ModelBundle, data, identity: dict[str, Any],
           stop_after: int | None, dist: DataParallel | None = None, accelerator=None,
           resume_from: Path | None = None) -> dict[str, Any]:
    from ..runtime.accelerator import Accelerator

    writer = dist is None or dist.rank == 0
    threads = cfg.threads or (1 if isinstance(bundle, DigitsBundle) else None)
    if threads:
        torch.set_num_threads(threads)
    add_lora(bundle, cfg)
    runtime = None
    if cfg.precision == "int8":
        runtime = QtaRuntime(accelerator or Accelerator(cfg.board, cfg.backend), seed=cfg.seed,
                             stream=0 if dist is None else dist.rank)
        n_layers = attach_runtime(bundle.unet, runtime)
        if cfg.offload == "all":  # the frozen base model's GEMMs too (lora/offload.py)
            from ..lora.offload import install

            runtime.offload = install(bundle.unet, runtime.acc, runtime, scheme=cfg.offload_scheme,
                                      fuse_lora=cfg.fuse_lora)
    else:
        n_layers = sum(1 for m in bundle.unet.modules() if hasattr(m, "lora_A"))
    params = [p for p in bundle.unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))

    start, overrides = 0, []
    history: dict[str, Any] = {"loss": [], "time_step": [], "time_accelerator": 0.0, "time_quantization": 0.0,
                               "heldout": [], "accelerator": None}
    if cfg.resume:
        state = load_checkpoint(resume_from, bundle, optimizer, scheduler, identity)
        start, history, overrides = int(state["step"]), state["history"], state.get("overrides", [])
        was = state["identity"]["learning_rate"]
        if cfg.learning_rate != was:
            _apply_learning_rate(optimizer, scheduler, cfg.learning_rate)
            overrides.append({"step": start, "learning_rate": cfg.learning_rate, "was": was})
        if runtime is not None and history.get("accelerator"):
            runtime.load_state(history["accelerator"])
        if getattr(runtime, "offload", None) is not None:
            if not history.get("offload"):
                raise CheckpointError(f"{resume_from} holds no whole-step offload state (amax histories): it "
                                      "cannot continue an --offload all run bit-identically")
            ranks = history.get("offload_ranks")  # a data-parallel run's: every rank's own histories
            own = ranks is not None and dist is not None and len(ranks) == dist.world
            runtime.offload.load_state(ranks[dist.rank] if own else history["offload"])
    latents = bundle.to_latents(data.images)
    prior_latents = bundle.to_latents(data.prior_images) if data.prior_images is not None else None
    lat_data = type(data)(latents, data.prompts, prior_latents, data.prior_prompts)
    heldout = bundle.heldout_batch() if cfg.eval_every and writer else None  # for rank 0's report

    def evaluate_heldout(step: int) -> None:
        if heldout is None or any(s == step for s, _ in history["heldout"]):
            return
        if runtime is not None:
            attach_runtime(bundle.unet, None)  # the adapter's weights in PyTorch: no accelerator figures
        off = getattr(runtime, "offload", None)
        if off is not None:  # --offload all: the frozen layers in fp32 too, amax histories untouched
            from ..lora.offload import suspended

            with suspended(bundle.unet, off):
                history["heldout"].append([step, heldout_loss(bundle, heldout, cfg.seed)])
        else:
            history["heldout"].append([step, heldout_loss(bundle, heldout, cfg.seed)])
        if runtime is not None:
            attach_runtime(bundle.unet, runtime)

    def checkpoint(step: int) -> None:
        if dist is not None:
            bad = non_finite(lora_state(bundle.unet))  # checked on every rank (the replicas are equal)
            if bad:
                raise DivergedError(f"the adapter's weights became non-finite ({bad[0]}, ...) by step {step}")
            dist.check_replicas(params, step)
        off = getattr(runtime, "offload", None)
        # each rank's amax histories (its own rows' delayed scales) and figures, so that every
        # rank of a resumed data-parallel run continues from its own state
        ranks = dist.gather_to_rank0("whole-step offload state", off.state()) \
            if off is not None and dist is not None else None
        if not writer:
            return
        if runtime is not None:
            history["accelerator"] = runtime.state()
        if off is not None:  # amax histories: a resume continues bit-identically
            history["offload"] = off.state()
            if ranks is not None:
                history["offload_ranks"] = ranks
        save_checkpoint(run, step, bundle, optimizer, scheduler,
                        {"identity": identity, "overrides": overrides, "history": history})

    def last_good() -> Path | str | None:
        if writer:
            return latest_checkpoint(run)
        if dist.last_checkpoint is None:
            return None
        return f"{Path(dist.output_dir) / CHECKPOINTS / f'step_{dist.last_checkpoint:06d}'} on rank 0"

    evaluate_heldout(start)
    interrupted = {"flag": False}
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.__setitem__("flag", True))
    if dist is not None:
        dist.start(params, interrupted, runtime)
    end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
    progress = Progress(start, cfg.steps, f"finetune {cfg.numerics()}", disable=not writer)
    try:
        for step in range(start, end):
            t0 = time.perf_counter()
            if runtime is not None:
                runtime.step = step
                acc0, q0 = runtime.measured_times()
            try:
                loss = train_step(bundle, cfg, lat_data, params, optimizer, scheduler, step, dist)
            except DivergedError as e:
                raise DivergedError(_divergence_message(e, step, cfg, last_good())) from None
            except (MemoryError, RuntimeError) as e:
                if isinstance(e, QtaError) or (not isinstance(e, MemoryError) and "allocate" not in str(e)):
                    raise
                raise LimitError(f"step {step + 1} ran out of memory at --batch-size {cfg.batch_size} ({e}); "
                                 "lower --batch-size") from None
            dt = time.perf_counter() - t0
            history["loss"].append(float(loss.item()))
            history["time_step"].append(dt)
            if runtime is not None:
                acc1, q1 = runtime.measured_times()
                history["time_accelerator"] += acc1 - acc0
                history["time_quantization"] += q1 - q0
            done = step + 1
            progress.update(done, float(loss.item()), dt)
            if cfg.eval_every and (done % cfg.eval_every == 0 or done == cfg.steps):
                evaluate_heldout(done)
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                checkpoint(done)
            if (interrupted["flag"] if dist is None else dist.stop):
                checkpoint(done)
                progress.close()
                # the caller says how to continue (finetune: --resume; evaluate: the same command)
                return {"interrupted": True, "step": done, "writer": writer}
    finally:
        signal.signal(signal.SIGINT, previous)
        progress.close()
    if end < cfg.steps:  # stop_after
        checkpoint(end)
        return {"interrupted": True, "step": end}
    distributed = None if dist is None else dist.finish(cfg, runtime, params)
    if not writer:
        return {"rank": dist.rank, "writer": False, "steps": len(history["loss"])}
    return write_outputs(run, cfg, bundle, runtime, history, n_layers, identity, overrides, data, heldout,
                         distributed)


def finished_run(cfg: FinetuneConfig) -> bool:
    """Whether ``cfg.output_dir`` holds a finished run with every option that defines ``cfg``'s
    result (its report's identity), so that its adapter can be reused."""
    run = Path(cfg.output_dir)
    try:
        report = json.loads((run / "report.json").read_text())
    except (OSError, ValueError):
        return False
    return ((run / "adapter" / "pytorch_lora_weights.safetensors").is_file()
            and isinstance(report.get("identity"), dict)
            and not identity_diff(report["identity"], cfg.identity(run_target(cfg))) and not report.get("overrides"))


FIGURES_EMULATED = {
    "gemms": "counted: GEMMs of each kind (one per adapted layer and step)",
    "calls": "counted: kernel calls (a weight-gradient GEMM runs as up to two magnitude groups)",
    "macs": "counted",
    "cycles": "modelled: the emulated kernel's cycle counter follows the planner's schedule model",
    "bytes_moved": "modelled: the planner's DDR traffic of each call",
    "utilization": "modelled: MACs / (modelled cycles x PEs)",
    "modelled_board_time_s": "modelled: cycles at the board clock",
}
FIGURES_BOARD = {**FIGURES_EMULATED,
                 "cycles": "measured: the kernel's cycle counter on the board",
                 "utilization": "from measured cycles: MACs / (cycles x PEs)",
                 "modelled_board_time_s": "from measured cycles at the board clock"}


def write_outputs(run: Path, cfg: FinetuneConfig, bundle: ModelBundle, runtime: QtaRuntime | None,
                  history: dict[str, Any], n_layers: int, identity: dict[str, Any], overrides: list,
                  data=None, heldout=None, distributed: dict[str, Any] | None = None) -> dict[str, Any]:
    """Adapter (diffusers format), sample grid, loss curve and report.json (with the
    ``distributed`` section of a data-parallel run)."""
    state = lora_state(bundle.unet)
    bad = non_finite(state)
    if bad:
        raise DivergedError(f"the adapter's weights are non-finite ({bad[0]}, ...); not written")
    adapter = run / "adapter"
    adapter.mkdir(parents=True, exist_ok=True)
    bundle.save_lora(adapter, state)
    if runtime is not None:
        attach_runtime(bundle.unet, None)  # sample with the trained adapter in PyTorch
        if getattr(runtime, "offload", None) is not None:
            from ..lora.offload import uninstall

            uninstall(bundle.unet, runtime.offload)
    target = identity.get("target")
    report: dict[str, Any] = {
        "identity": identity,
        # an fp32 run has no accelerator: no board, backend or offload (the fields' defaults are not its)
        "config": {**asdict(cfg), "board": target["board"] if target else None,
                   "backend": target["backend"] if target else None,
                   "offload": cfg.offload if cfg.precision == "int8" else None,
                   "fuse_lora": cfg.fuse_lora if cfg.precision == "int8" else None},
        "overrides": overrides, "model": bundle.name, "lora_layers": n_layers, "steps": len(history["loss"]),
        "final_loss": history["loss"][-1] if history["loss"] else None,
        "mean_loss_last_20": float(np.mean(history["loss"][-20:])) if history["loss"] else None,
    }
    if heldout is not None and history.get("heldout"):
        report["heldout_loss"] = {"metric": f"noise-prediction MSE at fixed noise and timesteps on {heldout[2]}",
                                  "steps": [s for s, _ in history["heldout"]],
                                  "values": [v for _, v in history["heldout"]]}
    if cfg.samples:
        prompts = bundle.eval_prompts()
        bundle.unet.disable_adapters()  # the base model, exactly (peft's adapter switch)
        before = bundle.sample(prompts, cfg.seed)
        bundle.unet.enable_adapters()
        after = bundle.sample(prompts, cfg.seed)
        n_concept = sum(p == prompts[0] for p in prompts)
        reading = bundle.concept_reading(after[:n_concept])
        rows = []
        if data is not None:
            rows.append(("training\nexamples", bundle.display(data.images[:n_concept])))
        rows.append(("before\n(base model)", before, bundle.concept_reading(before[:n_concept])))
        rows.append((f"after\n({cfg.precision} LoRA)", after, reading))
        grid_png(rows, run / "samples.png", captions=[p.replace("a photo of ", "") for p in prompts])
        if reading is not None:
            want = f"reads {bundle.concept_name().split()[-1]}"
            report["concept_samples"] = {
                "shown": n_concept, "read_as_concept": sum(r == want for r in reading),
                "judge": f"digit classifier (scikit-learn SVC on the digits' training split): {bundle.concept_name()}",
                "readings": reading}
    loss_png(history["loss"], run / "loss.png", f"LoRA fine-tuning, {cfg.precision}, rank {cfg.rank}",
             history.get("heldout") or None, heldout[2] if heldout is not None else "")
    total = float(sum(history["time_step"]))
    report["time_s"] = {"total_measured": total, "accelerator_measured": history["time_accelerator"],
                        "quantization_measured": history["time_quantization"],
                        "rest_measured": total - history["time_accelerator"] - history["time_quantization"]}
    report["steps_per_s_measured"] = len(history["time_step"]) / total if total else None
    report["world_size"] = 1 if distributed is None else distributed["world_size"]
    if distributed is not None:
        report["distributed"] = distributed
    if runtime is not None:
        b = runtime.acc.board
        gemms = runtime.report()
        cycles = sum(v["cycles"] for v in gemms.values())
        on_board = runtime.acc.backend == "board"
        report["accelerator"] = {
            "board": b.name, "backend": runtime.acc.backend, "engine": runtime.acc.info()["engine"],
            "pes": b.pes, "clock_mhz": b.clock_mhz,
            "figures": FIGURES_BOARD if on_board else FIGURES_EMULATED,
            "counted_over_steps": [0, len(history["loss"])],
            "per_gemm": gemms, "total_cycles": cycles,
            "modelled_board_time_s": cycles / (b.clock_mhz * 1e6),
        }
        if distributed is not None:
            report["accelerator"]["counted_on"] = ("rank 0's accelerator only (its rows of every global batch); each "
                                                   "rank's figures of this launch are in distributed.per_rank")
        from ..lora.offload import offload_report

        report["offload"] = offload_report(runtime)
    else:
        report["accelerator"] = None
    (run / "report.json").write_text(json.dumps(report, indent=2, default=str))
    return report
