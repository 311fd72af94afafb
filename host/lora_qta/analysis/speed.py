"""Emulation speed: one fine-tuning step of the default model, int8 emulated vs fp32 PyTorch.

Both variants are built from the same shipped model and options and timed side by side in
one process, alternating step by step so that drift of the machine's load hits both alike.
The int8 step is split into accelerator (driver + emulated kernel), quantization and the
rest. All times are measured on this machine; nothing here is a board figure.

    lora-qta speed [--steps 8] [--engine fast|csim] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..lora.layer import QtaRuntime, attach_runtime
from ..training.models import DigitsBundle
from ..training.loop import FinetuneConfig, add_lora, train_step


def _variant(precision: str, cfg: FinetuneConfig, engine: str):
    bundle = DigitsBundle(cfg.pretrained_model)
    add_lora(bundle, FinetuneConfig(**{**cfg.__dict__, "precision": precision}))
    runtime = None
    if precision == "int8":
        from ..runtime.accelerator import Accelerator

        runtime = QtaRuntime(Accelerator(cfg.board, engine), seed=cfg.seed)
        attach_runtime(bundle.unet, runtime)
    params = [p for p in bundle.unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate)
    data = bundle.training_data(cfg.num_examples, cfg.prior_per_class, cfg.seed)
    return bundle, runtime, params, opt, data


def _step(variant, cfg: FinetuneConfig, step: int) -> float:
    bundle, runtime, params, opt, data = variant
    if runtime is not None:
        runtime.step = step
    t0 = time.perf_counter()
    train_step(bundle, cfg, data, params, opt, None, step)
    return time.perf_counter() - t0


def measure(steps: int = 8, warmup: int = 2, engine: str = "fast", batch_size: int = 16,
            board: str | None = None) -> dict:
    """Median step times of fp32 and int8 (emulated) and the int8 time split."""
    cfg = FinetuneConfig(batch_size=batch_size, board=board, samples=False)
    fp32 = _variant("fp32", cfg, engine)
    int8 = _variant("int8", cfg, engine)
    times = {"fp32": [], "int8": []}
    split = {"accelerator": [], "quantization": []}
    for i in range(warmup + steps):
        for name, var in (("fp32", fp32), ("int8", int8)):
            rt = var[1]
            a0, q0 = (rt.time_accelerator, rt.time_quantization) if rt else (0.0, 0.0)
            dt = _step(var, cfg, i)
            if i >= warmup:
                times[name].append(dt)
                if rt:
                    split["accelerator"].append(rt.time_accelerator - a0)
                    split["quantization"].append(rt.time_quantization - q0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    acc, qua = float(np.median(split["accelerator"])), float(np.median(split["quantization"]))
    gemms = sum(s.calls for s in int8[1].stats.values()) // (warmup + steps)
    return {
        "note": "measured on this machine, side by side in one process (median of alternating steps)",
        "engine": engine, "batch_size": batch_size, "steps": steps, "threads": torch.get_num_threads(),
        "fp32_step_s": med["fp32"], "int8_step_s": med["int8"], "ratio_int8_over_fp32": med["int8"] / med["fp32"],
        "int8_split_s": {"accelerator": acc, "quantization": qua, "rest": med["int8"] - acc - qua},
        "gemms_per_step": gemms, "lora_layers": attach_runtime(int8[0].unet, int8[1]), "target_ratio": 1.5,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lora-qta speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=8, help="timed steps per variant (after the warm-up)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    p.add_argument("--engine", default="fast", choices=["fast", "csim"],
                   help="emulation engine of the int8 variant")
    p.add_argument("--batch-size", type=int, default=16, help="images per step (the default run's)")
    p.add_argument("--board", default=None, help="board configuration to emulate")
    p.add_argument("--threads", type=int, default=1,
                   help="PyTorch CPU threads for both variants (1, as the default fine-tuning uses)")
    p.add_argument("--out", default=None, help="also write the figures as JSON to this file")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    r = measure(a.steps, a.warmup, a.engine, a.batch_size, a.board)
    print(f"One fine-tuning step of the default digits model, batch {r['batch_size']} "
          f"({r['note']}; {r['threads']} threads)")
    print(f"  fp32 PyTorch LoRA        {r['fp32_step_s'] * 1e3:8.1f} ms")
    print(f"  int8 on emulated accel.  {r['int8_step_s'] * 1e3:8.1f} ms  = {r['ratio_int8_over_fp32']:.2f}x fp32 "
          f"(target <= {r['target_ratio']}x)")
    s = r["int8_split_s"]
    print(f"    accelerator ({r['engine']}, {r['gemms_per_step']} GEMMs) {s['accelerator'] * 1e3:.1f} ms, "
          f"quantization {s['quantization'] * 1e3:.1f} ms, rest {s['rest'] * 1e3:.1f} ms")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
