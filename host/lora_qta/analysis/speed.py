"""Emulation speed, measured on this machine (nothing here is a board figure).

* :func:`throughput`: the emulation engines (``fast`` and ``csim``) through the whole driver
  path (``Accelerator.gemm``: planner, pynq buffers, flush/invalidate, MMIO, kernel) on the six
  GEMMs of LoRA layers, beside numpy float32 matmuls of the same shapes;
* :func:`measure`: one fine-tuning step of the default model, int8 on the emulated accelerator
  against fp32 PyTorch. Both variants are built from the same shipped model and options and
  timed side by side in one process, alternating step by step so that drift of the machine's
  load hits both alike; the int8 step is split into accelerator (driver + emulated kernel),
  quantization and the rest. With ``offload`` ``all`` the whole-step variant joins the
  alternation (in the ``offload_scheme`` asked for, ``finetune --offload-scheme``), and with
  ``fuse_lora`` its fused variant too (``finetune --offload all --fuse-lora``). Beside each
  variant's median step, the median of its per-step ratios to the fp32 step run beside it, with
  a distribution-free interval (:func:`median_interval`): how well this run resolves the ratio
  (a second run on a shared machine can still land elsewhere: the interval covers one run's
  step-to-step spread, not the machine's drift between runs).
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Any, Callable, Sequence

import numpy as np

from ..hw.config import resolve_board
from ..lora.gemms import layer_gemms
from ..runtime.accelerator import Accelerator
from ..runtime.check import random_operands
from ..training.config import FinetuneConfig
from ..training.evalstats import CONFIDENCE

THROUGHPUT_LAYERS = ((4096, 320, 8), (1024, 640, 16), (4096, 320, 64))
"""(tokens, features, rank) of the LoRA layers :func:`throughput` runs (the README's figures)."""
QUICK_LAYERS = ((1024, 320, 8), (1024, 320, 32))
"""Smaller layers, for a fast smoke run."""


def best_time(fn: Callable[[], Any], repeat: int) -> float:
    """Best wall time of ``repeat`` runs of ``fn`` (seconds), after one warm-up run."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def throughput(board: str = "zcu104", repeat: int = 3,
               layers: tuple[tuple[int, int, int], ...] = THROUGHPUT_LAYERS) -> list[dict[str, Any]]:
    """Per GEMM of each layer: best wall time (s) of numpy float32, the ``fast`` and the ``csim``
    engine, and the GEMM's modelled board time (us, the kernel's cycle count at the clock)."""
    engines = {name: Accelerator(board, name) for name in ("fast", "csim")}
    clock_mhz = engines["fast"].board.clock_mhz
    rng = np.random.default_rng(0)
    rows = []
    for tokens, features, rank in layers:
        for g in layer_gemms(tokens, features, features, rank, int8_outputs="none"):
            ta, tb = g.trans_a, g.trans_b
            a, b = random_operands(rng, g.m, g.k, g.n, ta, tb)
            af, bf = a.astype(np.float32), b.astype(np.float32)
            row = {"gemm": g.kind.title, "m": g.m, "k": g.k, "n": g.n,
                   "fp32": best_time(lambda: (af.T if ta else af) @ (bf.T if tb else bf), repeat)}
            for name, acc in engines.items():
                row[name] = best_time(lambda: acc.gemm(a, b, trans_a=ta, trans_b=tb), repeat)
            row["board_us"] = engines["fast"].gemm(a, b, trans_a=ta, trans_b=tb).cycles / clock_mhz
            rows.append(row)
    return rows


def _variant(precision: str, cfg: FinetuneConfig, engine: str, offload: str = "lora", fuse_lora: bool = False):
    """(bundle, runtime, trainable parameters, optimizer, data) of one variant; an ``offload``
    ``all`` variant quantizes with ``cfg.offload_scheme``."""
    from torch.optim import AdamW

    from ..lora.layer import QtaRuntime, attach_runtime
    from ..training.loop import add_lora
    from ..training.models import DigitsBundle

    bundle = DigitsBundle(cfg.pretrained_model)
    add_lora(bundle, FinetuneConfig(**{**cfg.__dict__, "precision": precision}))
    runtime = None
    if precision == "int8":
        runtime = QtaRuntime(Accelerator(cfg.board, engine), seed=cfg.seed)
        attach_runtime(bundle.unet, runtime)
        if offload == "all":
            from ..lora.offload import install

            runtime.offload = install(bundle.unet, runtime.acc, runtime, scheme=cfg.offload_scheme,
                                      fuse_lora=fuse_lora)
    params = [p for p in bundle.unet.parameters() if p.requires_grad]
    opt = AdamW(params, lr=cfg.learning_rate)
    data = bundle.training_data(cfg.num_examples, cfg.prior_per_class, cfg.seed)
    return bundle, runtime, params, opt, data


def median_interval(x: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, float | int] | None:
    """The median of ``x`` and a distribution-free interval for it: the order statistics
    x_(k) and x_(n+1-k) (1-based, sorted) for the largest k whose coverage, 1 - 2 P(B <= k - 1)
    with B ~ Binomial(n, 1/2), is at least ``confidence`` (the sign-test interval; no assumption
    on the distribution of the values, which for step times is skewed by the machine's load).
    None when ``x`` has too few values for that confidence (6 for 95%)."""
    v = sorted(float(t) for t in x)
    n = len(v)
    k, cdf = 0, 0.0  # cdf = P(B <= k - 1)
    while k < n // 2:
        pk = math.comb(n, k) / 2**n  # P(B = k)
        if 1 - 2 * (cdf + pk) < confidence:
            break
        cdf += pk
        k += 1
    if k == 0:
        return None
    return {"median": float(np.median(v)), "low": v[k - 1], "high": v[n - k], "coverage": 1 - 2 * cdf, "n": n}


def kernel_seconds(runtime) -> float:
    """Seconds the emulated kernel of ``runtime``'s accelerator has computed so far
    (:attr:`~lora_qta.runtime.accelerator.Accelerator.kernel_seconds`; 0 on a board)."""
    return runtime.acc.kernel_seconds if runtime is not None else 0.0


def _step(variant, cfg: FinetuneConfig, step: int) -> tuple[float, float]:
    """(wall, CPU) seconds of one training step (CPU: this process's, all threads)."""
    from ..training.loop import train_step

    bundle, runtime, params, opt, data = variant
    if runtime is not None:
        runtime.step = step
    t0, c0 = time.perf_counter(), time.process_time()
    train_step(bundle, cfg, data, params, opt, None, step)
    return time.perf_counter() - t0, time.process_time() - c0


def _whole_step(name: str, variant, splits: dict, med: dict, runs: int) -> dict:
    """The figures of a whole-step variant (``int8_all`` or ``int8_fused``): its median step,
    ratio to fp32, split, calls and modelled board time per step, and the quantization scheme
    it ran (its offload report's)."""
    rt = variant[1]
    a, q = float(np.median(splits[name]["accelerator"])), float(np.median(splits[name]["quantization"]))
    off = rt.offload.report()
    return {f"{name}_step_s": med[name], f"ratio_{name}_over_fp32": med[name] / med["fp32"],
            f"{name}_split_s": {"accelerator": a, "quantization": q, "rest": med[name] - a - q},
            f"{name}_gemms_per_step": sum(f["calls"] for f in off["families"].values()) // runs,
            f"{name}_modelled_board_s_per_step": off["modelled_board_time_s"] / runs, f"{name}_scheme": off["scheme"]}


def measure(steps: int = 8, warmup: int = 2, engine: str = "fast", batch_size: int = 16,
            board: str | None = None, offload: str = FinetuneConfig.offload, fuse_lora: bool = False,
            offload_scheme: str = FinetuneConfig.offload_scheme) -> dict:
    """Median step times of fp32 and int8 (emulated) and the int8 time split; with ``offload``
    ``all`` also the int8 whole-step variant (every GEMM on the emulated accelerator,
    ``lora-qta finetune --offload all``, quantized with ``offload_scheme``, one of
    :data:`~lora_qta.lora.schemes.SCHEMES`), and with ``fuse_lora`` its fused variant
    (``--fuse-lora``, refused without ``offload`` ``all`` as finetune refuses it), timed in the
    same alternation. The whole-step split's accelerator time is the driver + emulated kernel
    wall time of every call."""
    import torch

    from ..lora.layer import attach_runtime
    from ..training.options import check_options

    cfg = FinetuneConfig(batch_size=batch_size, board=board, samples=False, offload_scheme=offload_scheme)
    check_options(replace(cfg, precision="int8", offload=offload, fuse_lora=fuse_lora), writer=False)
    fp32 = _variant("fp32", cfg, engine)
    int8 = _variant("int8", cfg, engine)
    variants = [("fp32", fp32), ("int8", int8)]
    if offload == "all":
        variants.append(("int8_all", _variant("int8", cfg, engine, "all")))
    if fuse_lora:
        variants.append(("int8_fused", _variant("int8", cfg, engine, "all", fuse_lora=True)))
    times = {name: [] for name, _ in variants}
    cpu = {name: [] for name, _ in variants}
    splits = {name: {"accelerator": [], "quantization": []} for name, _ in variants[1:]}
    kernel = {name: [] for name, _ in variants[1:]}
    for i in range(warmup + steps):
        for name, var in variants:
            rt = var[1]
            a0, q0 = rt.measured_times() if rt else (0.0, 0.0)
            k0 = kernel_seconds(rt)
            dt, dc = _step(var, cfg, i)
            if i >= warmup:
                times[name].append(dt)
                cpu[name].append(dc)
                if rt:
                    a1, q1 = rt.measured_times()
                    splits[name]["accelerator"].append(a1 - a0)
                    splits[name]["quantization"].append(q1 - q0)
                    kernel[name].append(kernel_seconds(rt) - k0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    # each step's ratio to the fp32 step run beside it: the machine's drift cancels in the pair
    paired = {f"ratio_{name}_over_fp32_paired": median_interval(np.array(times[name]) / np.array(times["fp32"]))
              for name, _ in variants[1:]}
    split = splits["int8"]
    acc, qua = float(np.median(split["accelerator"])), float(np.median(split["quantization"]))
    gemms = sum(s.gemms for s in int8[1].stats.values()) // (warmup + steps)
    extra: dict = {}
    for name, var in variants[2:]:
        extra.update(_whole_step(name, var, splits, med, warmup + steps))
    if offload == "all":
        extra["target_ratio_all"] = 2.0
    return {
        "note": "measured on this machine, side by side in one process (median of alternating steps)",
        "engine": engine, "board": resolve_board(board).name, "batch_size": batch_size, "steps": steps,
        "threads": torch.get_num_threads(),
        "fp32_step_s": med["fp32"], "int8_step_s": med["int8"], "ratio_int8_over_fp32": med["int8"] / med["fp32"],
        "int8_split_s": {"accelerator": acc, "quantization": qua, "rest": med["int8"] - acc - qua},
        "gemms_per_step": gemms, "lora_layers": attach_runtime(int8[0].unet, int8[1]), "target_ratio": 1.5,
        # the scheme of the whole-step variant, which --offload lora does not time
        "offload": offload, "offload_scheme": offload_scheme if offload == "all" else None, "fuse_lora": fuse_lora,
        **extra, **paired,
        # CPU time of the process per step (median): on a machine shared with other jobs it
        # varies less with their load than the wall time (waiting for a core is not counted)
        "cpu_step_s": {k: float(np.median(v)) for k, v in cpu.items()},
        # of the accelerator time, the emulated kernel's own work (the engine computing the
        # calls' results and modelled cycles), median per step; the rest of the accelerator
        # time is the driver, buffers, register traffic, completion polling and planner
        "kernel_step_s": {k: float(np.median(v)) for k, v in kernel.items()},
    }
