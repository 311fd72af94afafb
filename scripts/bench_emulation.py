#!/usr/bin/env python3
"""Emulation throughput on LoRA-shaped GEMMs: csim and fast engines beside numpy float32.

Measured on this machine, side by side in one run: each engine runs the same GEMMs through
the full driver path (``Accelerator.gemm``: planning, pynq buffers, flush/invalidate, MMIO,
kernel), numpy float32 ``matmul`` of the same shapes is the yardstick. Prints a markdown
table; a benchmark, not a test (no assertions on time).

    python scripts/bench_emulation.py [--repeat 3] [--board zcu104] [--quick]
"""

from __future__ import annotations

import argparse

import numpy as np

from lora_qta.accelerator import Accelerator
from lora_qta.bench import best_time
from lora_qta.cli import lora_layer_gemms


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=3, help="timed runs per measurement (best is reported)")
    p.add_argument("--board", default="zcu104", help="board configuration to emulate")
    p.add_argument("--quick", action="store_true", help="smaller shapes (for a fast smoke run)")
    args = p.parse_args()

    layers = [(1024, 320, 8), (1024, 320, 32)] if args.quick else [(4096, 320, 8), (1024, 640, 16), (4096, 320, 64)]
    engines = {name: Accelerator(args.board, name) for name in ("fast", "csim")}
    rng = np.random.default_rng(0)
    print(f"Emulation throughput, board {args.board}, best of {args.repeat} (measured on this machine)\n")
    print("| GEMM | M x K x N | numpy fp32 ms | fast ms | csim ms | fast / fp32 | csim / fast | modelled board us |")
    print("|---|---|---|---|---|---|---|---|")
    totals = {"fp32": 0.0, "fast": 0.0, "csim": 0.0}
    for tokens, d, r in layers:
        for name, m, k, n, ta, tb in lora_layer_gemms(tokens, d, d, r):
            a = rng.integers(-128, 128, (k, m) if ta else (m, k), dtype=np.int8)
            b = rng.integers(-128, 128, (n, k) if tb else (k, n), dtype=np.int8)
            af, bf = a.astype(np.float32), b.astype(np.float32)
            t = {"fp32": best_time(lambda: (af.T if ta else af) @ (bf.T if tb else bf), args.repeat)}
            res = None
            for eng, acc in engines.items():
                t[eng] = best_time(lambda: acc.gemm(a, b, trans_a=ta, trans_b=tb), args.repeat)
                res = acc.gemm(a, b, trans_a=ta, trans_b=tb)
            for key in totals:
                totals[key] += t[key]
            board_us = res.cycles / engines["fast"].board.clock_mhz
            print(f"| {name} | {m}x{k}x{n} | {t['fp32'] * 1e3:.2f} | {t['fast'] * 1e3:.2f} | {t['csim'] * 1e3:.1f} | "
                  f"{t['fast'] / t['fp32']:.1f}x | {t['csim'] / t['fast']:.0f}x | {board_us:.0f} |")
    print(f"| **all** | | {totals['fp32'] * 1e3:.1f} | {totals['fast'] * 1e3:.1f} | {totals['csim'] * 1e3:.0f} | "
          f"{totals['fast'] / totals['fp32']:.1f}x | {totals['csim'] / totals['fast']:.0f}x | |")
    print("\nms: host wall time per GEMM on this machine; modelled board us: the kernel's cycle count "
          "at the board clock (cycle model, not a board measurement).")


if __name__ == "__main__":
    main()
