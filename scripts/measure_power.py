#!/usr/bin/env python3
"""Power trace and energy per LoRA GEMM / training step with pynq.pmbus.DataRecorder.

On a PYNQ board it records the board's rail sensors (``pynq.get_rails()``) while it runs marked
phases (idle, a GEMM loop, training steps of the default model's LoRA GEMMs, idle) on the
accelerator; on a PC it runs the same DataRecorder code against emulated sensors whose power
comes from the energy model (labelled modelled). The logic is ``lora_qta.power``; ``--help``
lists the options.

    python scripts/measure_power.py [--board zcu104] [--sensors auto|board|emulated] [--out runs/power]
"""

import sys

from lora_qta.power import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
