"""A first-order resource estimate of one build of the accelerator (not a synthesis result).

Standard library only; ``lora-qta config estimate`` and ``lora-qta info`` print it, and the
README's board table shows it.
"""

from __future__ import annotations

import math

from .config import config


def estimate_resources(board_name: str | None = None) -> dict[str, float]:
    """DSP, BRAM36, URAM and LUT counts of one build, and their share of the device (%).

    DSP: PEs / macs_per_dsp for the array, plus 12 DSP per epilogue lane (a 32x32 multiply of
    the requantizer, 4 DSP48, and the two 32x32 multiplies of the rounding hash, 8 DSP48).
    Memory: A and B buffers (INT8, ping-pong) and the INT32 accumulator (ping-pong) in
    BRAM36 (4.5 KiB usable each) or, where the board has it, the accumulator in URAM
    (36 KiB each). LUTs: ~40 per PE for operand muxes and partition routing, plus ~300 per lane.
    """
    b = config().board(board_name)
    dsp = math.ceil(b.pes / b.macs_per_dsp) + 12 * b.epilogue_lanes
    ab_bytes = 2 * (b.tile_m_max * b.tile_k_max + b.tile_k_max * b.tile_n_max)
    acc_bytes = 2 * b.tile_m_max * b.tile_n_max * 4
    bram = math.ceil(ab_bytes / 4608)
    uram = 0
    if b.uram_total:
        uram = math.ceil(acc_bytes / 36864)
    else:
        bram += math.ceil(acc_bytes / 4608)
    lut = 40 * b.pes + 300 * b.epilogue_lanes + 8000
    return {
        "dsp": dsp, "dsp_pct": 100.0 * dsp / b.dsp_total,
        "bram36": bram, "bram36_pct": 100.0 * bram / b.bram36_total,
        "uram": uram, "uram_pct": 100.0 * uram / b.uram_total if b.uram_total else 0.0,
        "lut": lut, "lut_pct": 100.0 * lut / b.lut_total,
    }
