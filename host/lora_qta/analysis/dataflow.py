"""The dataflow study of the LoRA GEMMs of Stable Diffusion 1.5 and SDXL (cycle model).

For every board configuration, model and LoRA rank, :func:`run_dataflow` runs every LoRA GEMM
of one training step (batch 1; shapes from :mod:`lora_qta.analysis.shapes`) through the
planner under four policies:

* ``ws``: weight-stationary only, whole array (split 0);
* ``os``: output-stationary only, whole array (split 0);
* ``adaptive``: WS or OS chosen per GEMM by the cycle model, whole array (``auto``, split 0);
* ``auto``: per-GEMM choice including the partitioned sub-array modes (``dataflow="auto"``).

It gives cycles, PE utilization, the roofline bound (compute / memory) and the attained
fraction of the roofline per GEMM, totals per model/board/rank, speedups of the adaptive
policies over each fixed dataflow (beside the CDM-QTA paper's reported 1.81x) and the check of
the goal "at least 90% PE utilization on every compute-bound LoRA GEMM" (:func:`goal_check`).
:func:`csim_check` runs the planned calls of scaled-down shapes on the C-simulated kernel and
compares its cycle counter with the model. The training-step view is :mod:`.step`, the
markdown :mod:`.report`, the figures :mod:`.plots` (``lora-qta bench`` runs them all).

**Labels.** Cycle, utilization and time figures are *modelled* (the planner's cycle model,
which equals the C-simulated kernel's counter). Nothing here is a synthesis or board result.

Output precision: the GEMMs whose result feeds another GEMM (H for Y, dH for dA and dX) write
INT8 through the requantizing epilogue, the others INT32 (:func:`lora_qta.lora.gemms.layer_gemms`).
Identical (shape, layout) GEMMs are planned once (cache).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from ..hw.config import BoardConfig, config
from ..lora.gemms import GemmKey, LoraGemm, lora_call
from ..runtime.image import MemoryImage
from ..runtime.planner import plan
from . import shapes

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
    busiest_operand_bytes: int  # the largest operand's traffic (v1 gave each operand its own port)
    pe_cycles: int          # sum of the PE-array stage over steps (the array's own busy time)

    @property
    def mode(self) -> str:
        return self.dataflow + (f"{self.split:+d}" if self.split else "")


_CACHE: dict[tuple, dict[str, ModeResult]] = {}


def evaluate(board: BoardConfig, key: GemmKey) -> dict[str, ModeResult]:
    """The four policies for one GEMM ``key`` = (m, k, n, trans_a, trans_b, out_int8); cached."""
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
                r.bytes_moved, max(r.bytes_a, r.bytes_b, r.bytes_c + r.bytes_scales), r.array_cycles)
        _CACHE[ck] = res
    return _CACHE[ck]


def auto_cycles(board: BoardConfig, key: GemmKey) -> int:
    """Cycles of one GEMM under policy auto (shares the cache of :func:`evaluate` when present)."""
    ck = (board.name, key)
    if ck in _CACHE:
        return _CACHE[ck]["auto"].cycles
    return plan(board, lora_call(key)).report.cycles


# ----------------------------------------------------------------------------- sweep

def grouped(gemms: Sequence[LoraGemm]) -> list[tuple[str, GemmKey, int]]:
    """(GEMM label, key, count) of the distinct GEMMs of ``gemms``, in first-seen order."""
    counts: dict[tuple, int] = {}
    for g in gemms:
        counts[(g.gemm, g.key)] = counts.get((g.gemm, g.key), 0) + 1
    return [(kind, key, c) for (kind, key), c in counts.items()]


def run_dataflow(boards: Sequence[str], models: Sequence[str], ranks: Sequence[int],
                 resolution: int | None = None) -> dict:
    """The sweep: per board, model and rank, every distinct LoRA GEMM under the four policies."""
    configs = []
    for model in models:
        layers = shapes.lora_layers(model, resolution)
        for bname in boards:
            board = config().board(bname)
            for r in ranks:
                gemms = []
                for kind, key, cnt in grouped(shapes.lora_gemms(layers, r)):
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
                           for _, key, cnt in grouped(shapes.lora_gemms(layers, r, int8_outputs="all")))
                configs.append({
                    "board": bname, "model": model, "resolution": resolution or shapes.model_spec(model).resolution,
                    "rank": r, "pes": board.pes, "clock_mhz": board.clock_mhz,
                    "axi_bytes": board.axi_bytes, "axi_ports": board.axi_ports, "layers": len(layers), "gemm_instances": 6 * len(layers),
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
    rng = np.random.default_rng(0)
    bad_args = 1 << config().status["bad_args"]
    checked, mismatches, seen = 0, [], set()
    t0 = time.perf_counter()
    for bname in boards:
        board = config().board(bname)
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
                            img = MemoryImage.build(board, p.call, rng, c_fill="zero")
                            out = img.run_csim(board)
                            checked += 1
                            if out["status"] & bad_args or out["cycles_model"] != p.report.cycles:
                                mismatches.append({"board": bname, "call": repr(p.call), "status": out["status"],
                                                   "csim": out["cycles_model"], "model": p.report.cycles})
    return {"checked": checked, "mismatches": mismatches, "seconds": time.perf_counter() - t0,
            "label": "C-simulated kernel counter vs cycle model (both modelled; run on this machine)"}
