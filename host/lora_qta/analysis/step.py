"""The training-step view of the dataflow study: where the time of one fine-tuning step of a
Stable Diffusion UNet goes on a board, with the LoRA GEMMs on the accelerator (an Amdahl view).

The accelerator's time is the cycle model at the board clock; the board's ARM cores run the
frozen base model and the FP32 LoRA GEMMs at the stated throughputs of hardware.toml's ``host``
tables; host-side quantization runs at this machine's measured rate divided by the stated
slowdown (:func:`measure_cpu`). All of it is modelled except that measured rate.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..hw.config import config
from .dataflow import evaluate, grouped
from .speed import best_time


def measure_cpu(size: int = 1 << 22, repeat: int = 3) -> dict:
    """This machine's throughputs (measured on this machine, x86): numpy per-tensor absmax
    quantization (abs, max, scale, round, clip, cast to INT8) and dequantization (INT32 to
    FP32 times a scale) in bytes of input per second, and torch FP32 GEMM in FLOP/s."""
    import torch

    rng = np.random.default_rng(0)
    x = rng.standard_normal(size, dtype=np.float32)
    acc = rng.integers(-2**20, 2**20, size, dtype=np.int32)

    def best(fn):
        return best_time(fn, repeat)

    def quant():
        s = float(np.abs(x).max()) / 127.0
        return np.clip(np.rint(x / s), -128, 127).astype(np.int8)

    t_q = best(quant)
    t_dq = best(lambda: acc.astype(np.float32) * np.float32(1e-3))
    a = torch.randn(1024, 1024)
    b = torch.randn(1024, 1024)
    t_mm = best(lambda: a @ b)
    return {"quant_bytes_per_s": x.nbytes / t_q, "dequant_bytes_per_s": acc.nbytes / t_dq,
            "fp32_gemm_flops": 2 * 1024**3 / t_mm, "torch_threads": torch.get_num_threads(),
            "label": "measured on this machine (x86)"}


def quantized_elements(layers, rank: int) -> tuple[int, int]:
    """(elements quantized FP32 -> INT8, elements dequantized INT32 -> FP32) by the host per step.

    Quantized: each distinct layer input X once (to_q, to_k, to_v of one attention share theirs),
    each layer's output gradient G, and the LoRA weights A and B. Dequantized: each layer's Y,
    dX, dA and dB (INT32 outputs); H and dH stay INT8 on the device.
    """
    xs = {}
    for l in layers:
        parent, _, leaf = l.name.rpartition(".")
        xs[(parent if leaf in ("to_q", "to_k", "to_v") else l.name, l.tokens, l.d_in)] = l.tokens * l.d_in
    q = sum(xs.values()) + sum(l.tokens * l.d_out + rank * (l.d_in + l.d_out) for l in layers)
    dq = sum(l.tokens * (l.d_in + l.d_out) + rank * (l.d_in + l.d_out) for l in layers)
    return q, dq


def step_view(boards: Sequence[str], ranks: Sequence[int] = (4, 16), model: str = "sd15",
              cpu: dict | None = None) -> dict:
    """One fine-tuning step of ``model`` (shapes only, batch 1): accelerator time of the LoRA
    GEMMs, host quantization time, the frozen base model's compute on the processor, and the
    Amdahl speedup of the whole step over running the LoRA GEMMs on the processor in FP32.

    Assumptions (all modelled): the base UNet's forward MACs come from the meta-model trace
    (conv, linear, attention matmuls); its backward computes input gradients only (frozen
    weights): the conv/linear MACs once more and the attention matmuls twice (both operands are
    activations), for every layer (an upper bound: layers before the first LoRA layer need
    none). FLOPs = 2 x MACs. The processor runs them and the FP32 LoRA GEMMs at its stated
    attained throughput (the same for narrow LoRA GEMMs: favourable to the processor; the
    stated assumptions per board are the ``host`` tables of ``hardware.toml``). Per
    LoRA layer the host quantizes X (once per distinct input), G, A, B (FP32 -> INT8) and
    dequantizes Y, dX, dA, dB (INT32 -> FP32) (:func:`quantized_elements`); H and dH stay INT8
    on the device. Nothing overlaps (serial step).
    """
    from . import shapes

    cpu = cpu or measure_cpu()
    procs = {name: {"cpu": b.host.cpu, "gflops": b.host.gflops, "elementwise_slowdown": b.host.elementwise_slowdown}
             for name, b in config().boards.items()}
    base = shapes.base_macs(model)
    bwd = base["conv"] + base["linear"] + 2 * base["attention"]
    base_flops = 2 * (base["total"] + bwd)
    layers = shapes.lora_layers(model)
    rows = []
    for bname in boards:
        board = config().board(bname)
        proc = procs[bname]
        flops = proc["gflops"] * 1e9
        q_rate = cpu["quant_bytes_per_s"] / proc["elementwise_slowdown"]
        dq_rate = cpu["dequant_bytes_per_s"] / proc["elementwise_slowdown"]
        for r in ranks:
            gemms = shapes.lora_gemms(layers, r)
            cycles = sum(evaluate(board, key)["auto"].cycles * cnt for _, key, cnt in grouped(gemms))
            lora_macs = sum(g.macs for g in gemms)
            q_elems, dq_elems = quantized_elements(layers, r)
            t_acc = cycles / (board.clock_mhz * 1e6)
            t_quant = 4 * q_elems / q_rate + 4 * dq_elems / dq_rate
            t_rest = base_flops / flops
            t_lora_cpu = 2 * lora_macs / flops
            step_cpu = t_rest + t_lora_cpu
            step_acc = t_rest + t_quant + t_acc
            frac = t_lora_cpu / step_cpu
            rows.append({
                "board": bname, "rank": r, "processor": proc["cpu"], "processor_gflops": proc["gflops"],
                "lora_macs": lora_macs, "accelerator_cycles": cycles, "t_accelerator_s": t_acc,
                "t_quantization_s": t_quant, "t_rest_s": t_rest, "t_lora_cpu_fp32_s": t_lora_cpu,
                "step_cpu_only_s": step_cpu, "step_with_accelerator_s": step_acc,
                "step_speedup": step_cpu / step_acc, "lora_part_speedup": t_lora_cpu / (t_acc + t_quant),
                "lora_fraction_of_cpu_step": frac, "amdahl_limit": 1 / (1 - frac),
                "gemm_only_speedup": t_lora_cpu / t_acc,
                "quantized_bytes": 4 * q_elems, "dequantized_bytes": 4 * dq_elems,
            })
    return {"model": model, "batch": 1, "base_forward_macs": base, "base_step_flops": base_flops,
            "cpu_measured": cpu, "processors": procs, "rows": rows,
            "label": "modelled (accelerator: cycle model at the board clock; processor: stated "
                     "throughputs; quantization: this machine's measured rate / a stated slowdown)"}
