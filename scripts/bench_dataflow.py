#!/usr/bin/env python3
"""LoRA GEMM dataflow benchmark of SD1.5 and SDXL on every board configuration (modelled).

Cycles, PE utilization and roofline of every LoRA GEMM of one training step under WS only,
OS only, WS/OS per GEMM and WS/OS/partitioned per GEMM; totals, speedups, the 90% utilization
goal, a cycle-model check against the C-simulated kernel, a training-step (Amdahl) view and the
energy model. Writes markdown, JSON and PNGs to --out (default runs/bench/). The logic is
``lora_qta.bench``; ``--help`` lists the options.

    python scripts/bench_dataflow.py [--boards zcu104,kv260,pynq_z2] [--ranks 4,8,16,32,64,128]
"""

import sys

from lora_qta.bench import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
