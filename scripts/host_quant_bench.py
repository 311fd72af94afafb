"""The host quantizer's two engines on the calls of real training steps (a measurement, not a test).

``python scripts/host_quant_bench.py [STEPS] [REPEATS]``: records every ``quantize_along`` call
of STEPS int8 whole-step (``--offload all``) training steps of the digits default (after one
warm-up step), then replays them, REPEATS times alternating the torch code
(``LORA_QTA_HOST_QUANT=torch``) and the fused C++ one, each call timed on its own (wall time,
``time.perf_counter``). Prints per size class of the input (float32 bytes) and rounding the calls
per step and the mean over those calls of each call's median microseconds with each engine,
and the total per step (stochastic calls include drawing their uniform numbers, ``torch.rand``).
"""

import os
import sys
import time
from collections import defaultdict

import numpy as np
import torch

from lora_qta.analysis import speed
from lora_qta.lora import offload, quant
from lora_qta.lora.quant_native import ENGINE_ENV
from lora_qta.training.config import FinetuneConfig

CLASSES = ((64 << 10, "< 64 KB"), (1 << 20, "64 KB - 1 MB"), (4 << 20, "1 - 4 MB"), (float("inf"), ">= 4 MB"))


def record(steps: int) -> list[tuple[torch.Tensor, tuple[int, ...] | None, bool]]:
    """(input copy in its layout, dims, stochastic) of each quantize_along call of ``steps`` steps."""
    calls = []
    original = quant.quantize_along

    def spy(x, dims, generator=None, where=""):
        calls.append((x.detach().clone(), dims, generator is not None))
        return original(x, dims, generator, where)

    cfg = FinetuneConfig(samples=False)
    variant = speed._variant("int8", cfg, "fast", "all")
    speed._step(variant, cfg, 0)
    quant.quantize_along = offload.quantize_along = spy
    try:
        for i in range(steps):
            speed._step(variant, cfg, 1 + i)
    finally:
        quant.quantize_along = offload.quantize_along = original
    return calls


def main(steps: int = 2, repeats: int = 5) -> None:
    torch.set_num_threads(1)
    calls = record(steps)
    times = {eng: defaultdict(list) for eng in ("torch", "native")}
    for _ in range(repeats):
        for eng in times:
            os.environ[ENGINE_ENV] = eng
            gens = [torch.Generator().manual_seed(i) if st else None for i, (_, _, st) in enumerate(calls)]
            for i, (x, dims, _) in enumerate(calls):
                t0 = time.perf_counter()
                quant.quantize_along(x, dims, gens[i])
                times[eng][i].append(time.perf_counter() - t0)
    print(f"load: {os.getloadavg()}; {len(calls) / steps:.0f} calls per step, median of {repeats} runs each")
    print(f"{'input size':>14} {'rounding':>10} {'calls/step':>10} {'torch us':>9} {'C++ us':>8} {'speed-up':>8}")
    total = {eng: 0.0 for eng in times}
    for bound, label in CLASSES:
        low = max([b for b, _ in CLASSES if b < bound], default=0)
        for stochastic in (False, True):
            idx = [i for i, (x, _, st) in enumerate(calls) if low <= x.numel() * 4 < bound and st == stochastic]
            if not idx:
                continue
            med = {eng: [float(np.median(times[eng][i])) for i in idx] for eng in times}
            for eng in times:
                total[eng] += sum(med[eng]) / steps
            t, n = np.mean(med["torch"]) * 1e6, np.mean(med["native"]) * 1e6
            kind = "stochastic" if stochastic else "nearest"
            print(f"{label:>14} {kind:>10} {len(idx) / steps:>10.0f} {t:>9.1f} {n:>8.1f} {t / n:>7.1f}x")
    print(f"per step: torch {total['torch'] * 1e3:.1f} ms, C++ {total['native'] * 1e3:.1f} ms")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
