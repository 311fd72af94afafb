"""Dataflow benchmark of the LoRA GEMMs of Stable Diffusion 1.5 and SDXL (cycle model).

For every board configuration, model and LoRA rank this runs every LoRA GEMM of one training
step (batch 1; shapes from :mod:`lora_qta.shapes`) through the planner under four policies:

* ``ws``: weight-stationary only, whole array (split 0);
* ``os``: output-stationary only, whole array (split 0);
* ``adaptive``: WS or OS chosen per GEMM by the cycle model, whole array (``auto``, split 0);
* ``auto``: per-GEMM choice including the partitioned sub-array modes (``dataflow="auto"``).

It reports cycles, PE utilization, the roofline bound (compute / memory) and the attained
fraction of the roofline per GEMM, totals per model/board/rank, speedups of the adaptive
policies over each fixed dataflow beside the CDM-QTA paper's reported 1.81x, the check of the
goal "at least 90% PE utilization on every compute-bound LoRA GEMM at every rank >= 4", a
C-simulation check of the cycle model on scaled-down shapes, a training-step (Amdahl) view of
one SD1.5 fine-tuning step and, unless disabled, the energy report of :mod:`lora_qta.energy`.

**Labels.** Cycle, utilization, time and energy figures are *modelled* (the planner's cycle
model, which equals the C-simulated kernel's counter; the Horowitz 45 nm energy table).
Throughputs of this machine's CPU are *measured on this machine*. Nothing here is a synthesis
or board result.

Output precision: the GEMMs whose result feeds another GEMM (H for Y, dH for dA and dX) write
INT8 through the requantizing epilogue, the others INT32 (:func:`lora_qta.shapes.lora_gemms`).
Identical (shape, layout) GEMMs are planned once (cache).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..hw.config import BoardConfig, config

MODES = {"ws": ("ws", 0), "os": ("os", 0), "adaptive": ("auto", 0), "auto": ("auto", None)}
MODE_LABELS = {
    "ws": "WS only (split 0)",
    "os": "OS only (split 0)",
    "adaptive": "WS/OS per GEMM (split 0)",
    "auto": "WS/OS/partitioned per GEMM (auto)",
}
PAPER_SPEEDUP = 1.81
"""CDM-QTA paper: up to 1.81x training speedup from its flexible dataflow over a fixed dataflow
(their 64x64 array; their figure)."""
UTILIZATION_GOAL = 0.90
MODELLED = "modelled (cycle model = C-simulated kernel counter)"


# ----------------------------------------------------------------------------- one GEMM

@dataclass(frozen=True)
class ModeResult:
    """The planner's figures of one GEMM under one policy (all modelled)."""

    dataflow: str
    split: int
    tiles: tuple[int, int, int]
    cycles: int
    utilization: float
    bound: str
    roofline_fraction: float
    compute_bound_cycles: float
    memory_bound_cycles: float
    bytes_moved: int
    busiest_port_bytes: int
    pe_cycles: int          # sum of the PE-array stage over steps (the array's own busy time)

    @property
    def mode(self) -> str:
        return self.dataflow + (f"{self.split:+d}" if self.split else "")


_CACHE: dict[tuple, dict[str, ModeResult]] = {}


def evaluate(board: BoardConfig, key: tuple) -> dict[str, ModeResult]:
    """The four policies for one GEMM ``key`` = (m, k, n, trans_a, trans_b, out_int8); cached."""
    from .energy import lora_call
    from ..runtime.planner import plan

    ck = (board.name, key)
    if ck not in _CACHE:
        call = lora_call(key)
        res = {}
        for name, (df, sp) in MODES.items():
            p = plan(board, call, dataflow=df, split=sp)
            r = p.report
            res[name] = ModeResult(
                p.call.dataflow, p.call.split, (p.call.tile_m, p.call.tile_n, p.call.tile_k), r.cycles,
                r.utilization, r.bound, r.roofline_fraction, r.compute_bound_cycles, r.memory_bound_cycles,
                r.bytes_moved, max(r.bytes_a, r.bytes_b, r.bytes_c + r.bytes_scales), r.compute_cycles)
        _CACHE[ck] = res
    return _CACHE[ck]


def auto_cycles(board: BoardConfig, key: tuple) -> int:
    """Cycles of one GEMM under policy auto (shares the cache of :func:`evaluate` when present)."""
    from .energy import lora_call
    from ..runtime.planner import plan

    ck = (board.name, key)
    if ck in _CACHE:
        return _CACHE[ck]["auto"].cycles
    return plan(board, lora_call(key)).report.cycles


# ----------------------------------------------------------------------------- sweep

def _grouped(gemms) -> list[tuple[str, tuple, int]]:
    """(gemm kind, key, count) in first-seen order."""
    counts: dict[tuple, int] = {}
    for g in gemms:
        counts[(g.gemm, g.key)] = counts.get((g.gemm, g.key), 0) + 1
    return [(kind, key, c) for (kind, key), c in counts.items()]


def run_dataflow(boards: Sequence[str], models: Sequence[str], ranks: Sequence[int],
                 resolution: int | None = None) -> dict:
    """The sweep: per board, model and rank, every distinct LoRA GEMM under the four policies."""
    from . import shapes

    configs = []
    for model in models:
        layers = shapes.lora_layers(model, resolution)
        for bname in boards:
            board = config().board(bname)
            for r in ranks:
                gemms = []
                for kind, key, cnt in _grouped(shapes.lora_gemms(layers, r)):
                    res = evaluate(board, key)
                    m, k, n, ta, tb, o8 = key
                    gemms.append({"gemm": kind, "m": m, "k": k, "n": n, "trans_a": ta, "trans_b": tb,
                                  "out_int8": o8, "count": cnt, "macs": m * k * n,
                                  "modes": {name: asdict(v) | {"mode": v.mode} for name, v in res.items()}})
                macs = sum(g["macs"] * g["count"] for g in gemms)
                totals = {name: sum(g["modes"][name]["cycles"] * g["count"] for g in gemms) for name in MODES}
                util = {name: macs / (totals[name] * board.pes) for name in MODES}
                speedup = {f"{a}_vs_{b}": totals[b] / totals[a] for a in ("adaptive", "auto") for b in ("ws", "os")}
                speedup["auto_vs_adaptive"] = totals["adaptive"] / totals["auto"]
                # the same step with every output requantized to INT8 (policy auto), for reference
                all8 = sum(auto_cycles(board, key) * cnt
                           for _, key, cnt in _grouped(shapes.lora_gemms(layers, r, int8_outputs="all")))
                configs.append({
                    "board": bname, "model": model, "rank": r, "pes": board.pes, "clock_mhz": board.clock_mhz,
                    "axi_bytes": board.axi_bytes, "layers": len(layers), "gemm_instances": 6 * len(layers),
                    "macs": macs, "cycles": totals, "utilization": util, "speedup": speedup,
                    "time_us": {name: c / board.clock_mhz for name, c in totals.items()},
                    "auto_cycles_all_outputs_int8": all8,
                    "goal": goal_check(gemms), "gemms": gemms,
                })
    return {"label": MODELLED, "modes": MODE_LABELS, "paper_speedup": PAPER_SPEEDUP, "configs": configs}


def goal_check(gemms: list[dict], mode: str = "auto") -> dict:
    """The utilization goal on compute-bound GEMMs, and where the memory roof binds."""
    comp = [g for g in gemms if g["modes"][mode]["bound"] == "compute"]
    mem = [g for g in gemms if g["modes"][mode]["bound"] == "memory"]
    fail = [g for g in comp if g["modes"][mode]["utilization"] < UTILIZATION_GOAL]
    ceil = [g["modes"][mode]["compute_bound_cycles"] / g["modes"][mode]["memory_bound_cycles"] for g in mem]
    return {
        "mode": mode, "goal": UTILIZATION_GOAL,
        "compute_bound": len(comp), "compute_bound_instances": sum(g["count"] for g in comp),
        "meeting": len(comp) - len(fail), "meeting_instances": sum(g["count"] for g in comp if g not in fail),
        "failing": [{"gemm": g["gemm"], "mkn": (g["m"], g["k"], g["n"]), "count": g["count"],
                     "mode": g["modes"][mode]["mode"], "utilization": g["modes"][mode]["utilization"],
                     "roofline_fraction": g["modes"][mode]["roofline_fraction"],
                     "memory_over_compute_bound": g["modes"][mode]["memory_bound_cycles"]
                     / g["modes"][mode]["compute_bound_cycles"]} for g in fail],
        "memory_bound": len(mem), "memory_bound_instances": sum(g["count"] for g in mem),
        # utilization the memory roof allows (compute bound / memory bound) for the memory-bound ones
        "memory_ceiling_min": min(ceil) if ceil else None, "memory_ceiling_max": max(ceil) if ceil else None,
        "memory_roofline_fraction_min": min((g["modes"][mode]["roofline_fraction"] for g in mem), default=None),
    }


# ----------------------------------------------------------------------------- C-simulation check

def scaled_layer(tokens: int, d_in: int, d_out: int, rank: int) -> tuple[int, int, int, int]:
    """A C-simulable stand-in of a layer: tokens / 16 clipped to 64..256 (text lengths < 64 and
    the 77 text tokens kept), features / 8 (at least 8), rank / 8 for r >= 32 (same d/r ratio),
    the rank itself below 32."""
    t = tokens if tokens <= 77 else min(256, max(64, tokens // 16))
    di, do = max(8, d_in // 8), max(8, d_out // 8)
    r = rank // 8 if rank >= 32 else rank
    return t, di, do, max(1, min(r, di, do))


def csim_check(boards: Sequence[str], models: Sequence[str], ranks: Sequence[int],
               modes: Sequence[str] = ("ws", "os", "adaptive", "auto"), limit: int | None = None) -> dict:
    """Run the C-simulated kernel on the planner's calls for scaled-down LoRA shapes and compare
    its cycle counter with the model. Returns counts and any mismatch."""
    from . import shapes
    from ..runtime import csim
    from .energy import lora_call
    from ..runtime.planner import plan

    rng = np.random.default_rng(0)
    bad_args = 1 << config().status["bad_args"]
    checked, mismatches, seen = 0, [], set()
    t0 = time.perf_counter()
    for bname in boards:
        board = config().board(bname)
        kernel = csim.load(board)
        for model in models:
            layer_shapes = sorted({(l.tokens, l.d_in, l.d_out) for l in shapes.lora_layers(model)})
            for r in ranks:
                for tokens, d_in, d_out in layer_shapes:
                    st = scaled_layer(tokens, d_in, d_out, r)
                    small = [shapes.LoraLayer("scaled", st[0], st[1], st[2])]
                    for g in shapes.lora_gemms(small, st[3]):
                        for mode in modes:
                            df, sp = MODES[mode]
                            p = plan(board, lora_call(g.key), dataflow=df, split=sp)
                            if (bname, p.call) in seen:
                                continue
                            if limit is not None and checked >= limit:
                                break
                            seen.add((bname, p.call))
                            a = rng.integers(-128, 128, p.call.stored_shape_a(), dtype=np.int8)
                            b = rng.integers(-128, 128, p.call.stored_shape_b(), dtype=np.int8)
                            c = np.zeros((g.m, g.n), np.int8 if g.out_int8 else np.int32)
                            pointers = {"a": csim.address(a), "b": csim.address(b), "c": csim.address(c)}
                            out = kernel.run(pointers, p.call.scalar_registers())
                            checked += 1
                            if out["status"] & bad_args or out["cycles"] != p.report.cycles:
                                mismatches.append({"board": bname, "call": repr(p.call), "status": out["status"],
                                                   "csim": out["cycles"], "model": p.report.cycles})
    return {"checked": checked, "mismatches": mismatches, "seconds": time.perf_counter() - t0,
            "label": "C-simulated kernel counter vs cycle model (both modelled; run on this machine)"}


# ----------------------------------------------------------------------------- training-step view

def best_time(fn, repeat: int) -> float:
    """Best wall time of ``repeat`` runs of ``fn`` (seconds), after one warm-up run."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


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
            cycles = sum(evaluate(board, key)["auto"].cycles * cnt for _, key, cnt in _grouped(gemms))
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


# ----------------------------------------------------------------------------- report

def _fmt_int(x: float) -> str:
    return f"{int(round(x)):,}"


def markdown(res: dict, detail_board: str | None = "zcu104", detail_ranks: Sequence[int] = (4, 16)) -> str:
    cfgs = res["configs"]
    L = ["# LoRA GEMM dataflow benchmark", "",
         f"All cycle, utilization and time figures are **{res['label']}**; batch 1, one training step "
         "(six GEMMs per LoRA layer; to_q, to_k, to_v, to_out.0 of every attention). Policies: "
         + "; ".join(f"`{k}` = {v}" for k, v in res["modes"].items()) + ".", "",
         "## Totals per board, model and rank", "",
         "| board | model | rank | GEMMs | WS cycles | OS cycles | WS/OS cycles | auto cycles | "
         "util WS | util OS | util WS/OS | util auto | WS/OS vs WS | WS/OS vs OS | auto vs WS | auto vs OS | "
         "auto time (us) | auto, every output INT8: cycles (gain) |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cfgs:
        cy, u, s = c["cycles"], c["utilization"], c["speedup"]
        L.append(f"| {c['board']} | {c['model']} | {c['rank']} | {c['gemm_instances']} | {_fmt_int(cy['ws'])} | "
                 f"{_fmt_int(cy['os'])} | {_fmt_int(cy['adaptive'])} | {_fmt_int(cy['auto'])} | {u['ws']:.1%} | "
                 f"{u['os']:.1%} | {u['adaptive']:.1%} | {u['auto']:.1%} | {s['adaptive_vs_ws']:.2f}x | "
                 f"{s['adaptive_vs_os']:.2f}x | {s['auto_vs_ws']:.2f}x | {s['auto_vs_os']:.2f}x | "
                 f"{c['time_us']['auto']:,.0f} | {_fmt_int(c['auto_cycles_all_outputs_int8'])} "
                 f"({cy['auto'] / c['auto_cycles_all_outputs_int8']:.2f}x) |")
    best = max(cfgs, key=lambda c: min(c["speedup"]["auto_vs_ws"], c["speedup"]["auto_vs_os"]))
    L += ["", f"Reference: the CDM-QTA paper reports up to **{res['paper_speedup']:.2f}x** training speedup from "
          "its flexible dataflow over a fixed dataflow on its 64x64 array (their figure). Ours, "
          f"{res['label']}: adaptive WS/OS (split 0) over WS only {_range(cfgs, 'adaptive_vs_ws')}, over OS only "
          f"{_range(cfgs, 'adaptive_vs_os')}; with the partitioned modes (auto) over WS only "
          f"{_range(cfgs, 'auto_vs_ws')}, over OS only {_range(cfgs, 'auto_vs_os')}. Largest speedup over the "
          f"better fixed dataflow: {min(best['speedup']['auto_vs_ws'], best['speedup']['auto_vs_os']):.2f}x "
          f"({best['board']}, {best['model']}, rank {best['rank']}).", "",
          "The last column is the same step with every GEMM output requantized to INT8 by the epilogue "
          "(fully quantized training): the INT32 outputs of Y = H.B^T and dX = dH.A (tokens x features, 4 bytes "
          "each, K = rank) dominate the store port at small ranks.", ""]

    L += ["## Goal: >= 90% PE utilization on every compute-bound LoRA GEMM (policy auto)", "",
          "Counts are distinct GEMM shapes (instances in the step in parentheses). The memory ceiling is "
          "the utilization the memory roof allows a memory-bound GEMM (compute bound / memory bound).", "",
          "| board | model | rank | compute-bound | meeting 90% | memory-bound | memory ceiling on util | "
          "min roofline fraction (memory-bound) |", "|---|---|---|---|---|---|---|---|"]
    for c in cfgs:
        g = c["goal"]
        ceil = (f"{g['memory_ceiling_min']:.1%} - {g['memory_ceiling_max']:.1%}" if g["memory_bound"] else "-")
        rf = f"{g['memory_roofline_fraction_min']:.1%}" if g["memory_bound"] else "-"
        L.append(f"| {c['board']} | {c['model']} | {c['rank']} | {g['compute_bound']} ({g['compute_bound_instances']}) | "
                 f"{g['meeting']} ({g['meeting_instances']}) | {g['memory_bound']} ({g['memory_bound_instances']}) | "
                 f"{ceil} | {rf} |")
    tot_c = sum(c["goal"]["compute_bound"] for c in cfgs)
    tot_m = sum(c["goal"]["meeting"] for c in cfgs)
    tot_mem = sum(c["goal"]["memory_bound"] for c in cfgs)
    L += ["", f"Over all configurations: {tot_m} of {tot_c} compute-bound distinct GEMMs meet the goal; "
          f"{tot_mem} distinct GEMMs are memory-bound (the memory roof, not the PE array, sets their limit).", ""]
    fails = [(c, f) for c in cfgs for f in c["goal"]["failing"]]
    if fails:
        L += ["Compute-bound GEMMs below 90% (policy auto):", "",
              "| board | model | rank | GEMM | M, K, N | count | mode | util | roofline fraction | "
              "memory / compute bound |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for c, f in fails[:60]:
            L.append(f"| {c['board']} | {c['model']} | {c['rank']} | {f['gemm']} | {f['mkn'][0]}, {f['mkn'][1]}, "
                     f"{f['mkn'][2]} | {f['count']} | {f['mode']} | {f['utilization']:.1%} | "
                     f"{f['roofline_fraction']:.1%} | {f['memory_over_compute_bound']:.2f} |")
        if len(fails) > 60:
            L.append(f"| ... {len(fails) - 60} more in dataflow.json | | | | | | | | | |")
        near = sum(1 for _, f in fails if f["memory_over_compute_bound"] >= 0.8)
        L += ["", f"{near} of these {len(fails)} sit near the ridge point (memory bound >= 0.8 x compute bound): "
              "both roofs bind, so the fill/store stages and pipeline ramp cannot hide behind the PE array."]
        L.append("")
    L += _memory_summary(cfgs)

    if detail_board:
        L += [f"## Per-GEMM detail ({detail_board}; ranks {', '.join(map(str, detail_ranks))})", "",
              "| model | rank | GEMM | M, K, N | out | count | WS | OS | WS/OS | auto (mode) | util auto | bound | "
              "roofline fraction |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for c in cfgs:
            if c["board"] != detail_board or c["rank"] not in detail_ranks:
                continue
            for g in c["gemms"]:
                md = g["modes"]
                L.append(f"| {c['model']} | {c['rank']} | {g['gemm']} | {g['m']}, {g['k']}, {g['n']} | "
                         f"{'INT8' if g['out_int8'] else 'INT32'} | {g['count']} | {_fmt_int(md['ws']['cycles'])} | "
                         f"{_fmt_int(md['os']['cycles'])} | {_fmt_int(md['adaptive']['cycles'])} | "
                         f"{_fmt_int(md['auto']['cycles'])} ({md['auto']['mode']}) | {md['auto']['utilization']:.1%} | "
                         f"{md['auto']['bound']} | {md['auto']['roofline_fraction']:.1%} |")
        L.append("")
    return "\n".join(L) + "\n"


def _range(cfgs: list[dict], key: str) -> str:
    vals = [c["speedup"][key] for c in cfgs]
    return f"{min(vals):.2f}x - {max(vals):.2f}x"


def _memory_summary(cfgs: list[dict]) -> list[str]:
    L = ["Where the memory roof sets the limit (policy auto, per board and model): the highest rank at "
         "which every GEMM is memory-bound, and the share of the step's cycles spent in memory-bound GEMMs "
         "per rank.", ""]
    for bname in dict.fromkeys(c["board"] for c in cfgs):
        for model in dict.fromkeys(c["model"] for c in cfgs):
            sel = [c for c in cfgs if c["board"] == bname and c["model"] == model]
            if not sel:
                continue
            all_mem = [str(c["rank"]) for c in sel if c["goal"]["compute_bound"] == 0]
            shares = []
            for c in sel:
                mem = sum(g["modes"]["auto"]["cycles"] * g["count"] for g in c["gemms"]
                          if g["modes"]["auto"]["bound"] == "memory")
                shares.append(f"r{c['rank']} {mem / c['cycles']['auto']:.0%}")
            L.append(f"- {bname}, {model}: every GEMM memory-bound at rank "
                     f"{', '.join(all_mem) if all_mem else '(none)'}; memory-bound share of the step's cycles "
                     f"{', '.join(shares)}.")
    L.append("")
    return L


def csim_markdown(chk: dict) -> str:
    ok = "all equal" if not chk["mismatches"] else f"{len(chk['mismatches'])} MISMATCHES"
    return (f"## Cycle model vs C-simulated kernel\n\n{chk['checked']} planned calls on scaled-down LoRA shapes "
            f"(tokens/16 clipped to 64..256, features/8, rank/8 for r >= 32) run on the C-simulated HLS kernel: "
            f"{ok} ({chk['seconds']:.1f} s on this machine).\n")


def step_markdown(sv: dict) -> str:
    cpu = sv["cpu_measured"]
    L = [f"## One {sv['model']} fine-tuning step (batch 1): where the time goes", "",
         f"All times **{sv['label']}**.", "",
         f"Base UNet forward: {sv['base_forward_macs']['total'] / 1e9:,.1f} GMAC (conv "
         f"{sv['base_forward_macs']['conv'] / 1e9:,.1f}, linear {sv['base_forward_macs']['linear'] / 1e9:,.1f}, "
         f"attention matmuls {sv['base_forward_macs']['attention'] / 1e9:,.1f}; meta-model trace); forward + "
         f"input-gradient backward {sv['base_step_flops'] / 1e12:,.2f} TFLOP.", "",
         f"This machine (measured on this machine, x86, {cpu['torch_threads']} threads): quantization "
         f"{cpu['quant_bytes_per_s'] / 1e9:.2f} GB/s of FP32 input, dequantization "
         f"{cpu['dequant_bytes_per_s'] / 1e9:.2f} GB/s of INT32 input, torch FP32 GEMM "
         f"{cpu['fp32_gemm_flops'] / 1e9:.1f} GFLOP/s. A board's ARM core is slower: element-wise rates are "
         "divided by the stated slowdown; the ARM FP32 throughput is a stated assumption (cores x clock x "
         "NEON FLOP/cycle x 30%):", ""]
    for b, p in sv["processors"].items():
        if any(r["board"] == b for r in sv["rows"]):
            L.append(f"- {b}: {p['cpu']}, {p['gflops']:.1f} GFLOP/s attained (assumed), element-wise "
                     f"{p['elementwise_slowdown']:g}x slower than this machine (assumed)")
    L += ["", "| board | rank | LoRA GEMMs on accelerator (ms) | quantization on ARM (ms) | rest of step on ARM (s) | "
          "LoRA GEMMs on ARM FP32 (ms) | step ARM only (s) | step with accelerator (s) | step speedup | "
          "LoRA GEMMs: ARM / accelerator | LoRA part incl. quantization | Amdahl limit |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sv["rows"]:
        L.append(f"| {r['board']} | {r['rank']} | {r['t_accelerator_s'] * 1e3:,.2f} | {r['t_quantization_s'] * 1e3:,.1f} | "
                 f"{r['t_rest_s']:,.1f} | {r['t_lora_cpu_fp32_s'] * 1e3:,.1f} | {r['step_cpu_only_s']:,.2f} | "
                 f"{r['step_with_accelerator_s']:,.2f} | {r['step_speedup']:.4f}x | {r['gemm_only_speedup']:.2f}x | "
                 f"{r['lora_part_speedup']:.2f}x | "
                 f"{r['amdahl_limit']:.4f}x |")
    L += ["", "Amdahl limit: the step speedup if the LoRA GEMMs took no time at all. The LoRA GEMMs are a small "
          "fraction of the step's arithmetic, so accelerating them alone cannot speed the whole step up much while "
          "the frozen base model runs on the ARM cores; and the host-side quantization/dequantization of their "
          "operands and results costs more time than the GEMMs save unless it moves off the ARM cores (into the "
          "kernel's epilogue / a quantizing DMA) or overlaps with the accelerator.", ""]
    return "\n".join(L) + "\n"


# ----------------------------------------------------------------------------- plots

def _rank_ticks(ax, cfgs) -> None:
    ranks = sorted({c["rank"] for c in cfgs})
    ax.set_xticks(ranks)
    ax.set_xticklabels([str(r) for r in ranks])
    ax.minorticks_off()


def plots(res: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfgs = res["configs"]
    boards = list(dict.fromkeys(c["board"] for c in cfgs))
    models = list(dict.fromkeys(c["model"] for c in cfgs))
    styles = ["-", "--", ":", "-."]
    colors = {"ws": "#4c72b0", "os": "#dd8452", "adaptive": "#55a868", "auto": "#c44e52"}
    paths = []

    fig, axes = plt.subplots(1, len(boards), figsize=(5 * len(boards), 4), squeeze=False)
    for ax, b in zip(axes[0], boards):
        for mi, model in enumerate(models):
            sel = sorted((c for c in cfgs if c["board"] == b and c["model"] == model), key=lambda c: c["rank"])
            for mode in MODES:
                ax.plot([c["rank"] for c in sel], [100 * c["utilization"][mode] for c in sel],
                        styles[mi % 4], marker="o", ms=3, color=colors[mode], label=f"{model} {MODE_LABELS[mode]}")
        ax.set_xscale("log", base=2)
        _rank_ticks(ax, cfgs)
        ax.set_xlabel("LoRA rank")
        ax.set_ylabel("PE utilization of the step's LoRA GEMMs (%)")
        ax.set_title(b)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6)
    fig.suptitle(f"PE utilization per dataflow vs rank - {res['label']}", fontsize=9)
    fig.tight_layout()
    paths.append(out / "utilization.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(boards), figsize=(5 * len(boards), 4), squeeze=False)
    for ax, b in zip(axes[0], boards):
        for mi, model in enumerate(models):
            sel = sorted((c for c in cfgs if c["board"] == b and c["model"] == model), key=lambda c: c["rank"])
            for key, col in (("adaptive_vs_ws", "#4c72b0"), ("adaptive_vs_os", "#dd8452"),
                             ("auto_vs_ws", "#55a868"), ("auto_vs_os", "#c44e52")):
                ax.plot([c["rank"] for c in sel], [c["speedup"][key] for c in sel], styles[mi % 4], marker="o",
                        ms=3, color=col, label=f"{model} {key.replace('_vs_', ' vs ')}")
        ax.axhline(res["paper_speedup"], color="k", lw=0.8, ls="--")
        ax.text(min(c["rank"] for c in cfgs), res["paper_speedup"] * 1.01, "CDM-QTA reported 1.81x (their array)", fontsize=7)
        ax.axhline(1.0, color="grey", lw=0.5)
        ax.set_xscale("log", base=2)
        _rank_ticks(ax, cfgs)
        ax.set_xlabel("LoRA rank")
        ax.set_ylabel("speedup (total cycles of the step)")
        ax.set_title(b)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6)
    fig.suptitle(f"Adaptive dataflow speedup over fixed WS / OS - {res['label']}", fontsize=9)
    fig.tight_layout()
    paths.append(out / "speedup.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(boards), figsize=(5 * len(boards), 4.2), squeeze=False)
    ranks = sorted({c["rank"] for c in cfgs})
    cmap = plt.get_cmap("viridis")
    for ax, b in zip(axes[0], boards):
        sel = [c for c in cfgs if c["board"] == b]
        pes, bpb = sel[0]["pes"], sel[0]["axi_bytes"]
        xs_all = []
        for c in sel:
            col = cmap(ranks.index(c["rank"]) / max(1, len(ranks) - 1))
            xs = [g["macs"] / g["modes"]["auto"]["busiest_port_bytes"] for g in c["gemms"]]
            ys = [g["macs"] / g["modes"]["auto"]["cycles"] for g in c["gemms"]]
            xs_all += xs
            ax.scatter(xs, ys, s=10, color=col, marker="o" if c["model"] == models[0] else "^",
                       label=f"r={c['rank']}" if c["model"] == models[0] else None)
        x = np.logspace(np.log10(min(xs_all) / 2), np.log10(max(xs_all) * 2), 100)
        ax.plot(x, np.minimum(pes, x * bpb), "k-", lw=1)
        ax.text(x[-1], pes * 1.1, f"compute roof {pes} MAC/cycle", fontsize=7, ha="right")
        ax.text(x[0] * 1.2, x[0] * bpb * 1.6, f"memory roof {bpb} B/cycle per port", fontsize=7, rotation=30)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("arithmetic intensity (MACs per byte on the busiest AXI port)")
        ax.set_ylabel("attained MACs per cycle")
        ax.set_title(f"{b} (o {models[0]}" + (f", ^ {models[1]})" if len(models) > 1 else ")"), fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6)
    fig.suptitle(f"Roofline of the LoRA GEMMs (policy auto) - {res['label']}", fontsize=9)
    fig.tight_layout()
    paths.append(out / "roofline.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


# ----------------------------------------------------------------------------- entry point

def _csv(s: str, conv=str) -> list:
    return [conv(x.strip()) for x in s.split(",") if x.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    """``lora-qta bench``: the LoRA GEMM dataflow benchmark (modelled), training-step view and energy."""
    p = argparse.ArgumentParser(prog="lora-qta bench", description=main.__doc__)
    p.add_argument("--boards", default=",".join(config().boards), help="comma-separated boards (default: all)")
    p.add_argument("--models", default="sd15,sdxl", help="comma-separated models: sd15, sdxl, digits")
    p.add_argument("--ranks", default="4,8,16,32,64,128", help="comma-separated LoRA ranks")
    p.add_argument("--resolution", type=int, default=None,
                   help="image side in pixels (default 512 for SD1.5, 1024 for SDXL)")
    p.add_argument("--out", type=Path, default=Path("runs/bench"), help="output folder (default runs/bench)")
    p.add_argument("--csim-ranks", default="4,16,64",
                   help="ranks whose scaled-down shapes are checked on the C-simulated kernel ('' to skip)")
    p.add_argument("--csim-limit", type=int, default=None, help="at most this many C-simulated calls")
    p.add_argument("--step-model", default="sd15", help="model of the training-step view ('' to skip)")
    p.add_argument("--step-ranks", default="4,16", help="ranks of the training-step view")
    p.add_argument("--energy-models", default="digits,sd15",
                   help="models of the energy report ('' to skip); digits = the project's default model")
    p.add_argument("--energy-ranks", default="4,16", help="ranks of the energy report")
    p.add_argument("--energy-boards", default="zcu104", help="boards of the energy report")
    p.add_argument("--detail-board", default="zcu104", help="board whose per-GEMM table goes into dataflow.md")
    p.add_argument("--detail-ranks", default="4,16", help="ranks of the per-GEMM table")
    p.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    a = p.parse_args(argv)

    t0 = time.perf_counter()
    boards, models, ranks = _csv(a.boards), _csv(a.models), _csv(a.ranks, int)
    a.out.mkdir(parents=True, exist_ok=True)
    res = run_dataflow(boards, models, ranks, a.resolution)
    text = markdown(res, a.detail_board if a.detail_board in boards else None, _csv(a.detail_ranks, int))
    if a.csim_ranks:
        chk = csim_check(boards, models, _csv(a.csim_ranks, int), limit=a.csim_limit)
        res["csim_check"] = chk
        text += "\n" + csim_markdown(chk)
        print(f"cycle model vs C-simulation: {chk['checked']} shapes checked, "
              f"{len(chk['mismatches'])} mismatches")
    if a.step_model:
        sv = step_view(boards, _csv(a.step_ranks, int), a.step_model)
        res["training_step"] = sv
        text += "\n" + step_markdown(sv)
    res["seconds"] = time.perf_counter() - t0
    (a.out / "dataflow.md").write_text(text)
    slim = {**res, "configs": res["configs"]}
    (a.out / "dataflow.json").write_text(json.dumps(slim, indent=1, default=_json_default))
    print(text)
    written = [a.out / "dataflow.md", a.out / "dataflow.json"]
    if not a.no_plots:
        written += plots(res, a.out)
    if a.energy_models:
        from . import energy

        rep = energy.energy_report(_csv(a.energy_boards), _csv(a.energy_models), _csv(a.energy_ranks, int))
        print(energy.energy_markdown(rep))
        written += energy.write_report(rep, a.out, plot=not a.no_plots)
    for path in written:
        print(f"wrote {path}")
    print(f"({time.perf_counter() - t0:.1f} s on this machine)")
    return 1 if res.get("csim_check", {}).get("mismatches") else 0


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serializable: {type(o)}")


if __name__ == "__main__":
    raise SystemExit(main())
