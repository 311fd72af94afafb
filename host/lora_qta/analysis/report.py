"""The analysis reports as text, and the files the report commands write.

Markdown of the dataflow study with its cycle-model check, of the whole training step
(inventory, configurations, fusion, energy, targets), of the energy model and of a power
recording; the emulation-speed summaries; and the writers of the
``.md``/``.json``/``.csv`` files of ``lora-qta bench``, ``energy`` and ``power`` (their figures
are :mod:`.plots`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .energy import EnergyTable
from .power import EMULATED_LABEL

# ----------------------------------------------------------------------------- dataflow study

def _fmt_int(x: float) -> str:
    return f"{int(round(x)):,}"


def dataflow_markdown(res: dict, detail_board: str | None = "zcu104", detail_ranks: Sequence[int] = (4, 16)) -> str:
    """The dataflow study (:func:`~.dataflow.run_dataflow`) as markdown; a per-GEMM table for
    ``detail_board`` at ``detail_ranks`` (none when ``detail_board`` is None)."""
    cfgs = res["configs"]
    L = ["# LoRA GEMM dataflow benchmark", "",
         f"All cycle, utilization and time figures are **{res['label']}**; batch 1, one training step "
         "(six GEMMs per LoRA layer; to_q, to_k, to_v, to_out.0 of every attention). Policies: "
         + "; ".join(f"`{k}` = {v}" for k, v in res["modes"].items()) + ".", "",
         "Image side: " + ", ".join(f"{m} {px} px" for m, px in dict.fromkeys(
             (c["model"], c.get("resolution")) for c in cfgs) if px) + ".", "",
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
    """The cycle-model check (:func:`~.dataflow.csim_check`) as markdown."""
    ok = "all equal" if not chk["mismatches"] else f"{len(chk['mismatches'])} MISMATCHES"
    return (f"## Cycle model vs C-simulated kernel\n\n{chk['checked']} planned calls on scaled-down LoRA shapes "
            f"(tokens/16 clipped to 64..256, features/8, rank/8 for r >= 32) run on the C-simulated HLS kernel: "
            f"{ok} ({chk['seconds']:.1f} s on this machine).\n")


COMPONENTS = {
    "accelerator": "accelerator",
    "gemm_fp32": "ARM GEMMs (FP32)",
    "elementwise": "ARM element-wise (FP32)",
    "quantization": "ARM (de)quantization",
    "overhead": "ARM driver + cache maintenance",
    "optimizer": "ARM AdamW",
}
"""Parts of a step's serial time, in the order of the tables and the stacked bars."""


def step_components(row: dict) -> dict[str, float]:
    """Seconds of each part of :data:`COMPONENTS` for one configuration row (serial time; the
    INT8 reads the delayed scheme saves on the ARM come off the element-wise part)."""
    h = {k: v["seconds"] for k, v in row["host"].items()}
    deq = h.get("dequantize", 0.0)
    return {
        "accelerator": row["t_accelerator_s"],
        "gemm_fp32": h.get("gemm_fp32", 0.0),
        "elementwise": h.get("elementwise", 0.0) + min(deq, 0.0),
        "quantization": h.get("quantize", 0.0) + max(deq, 0.0) + h.get("lora_add", 0.0),
        "overhead": h.get("driver", 0.0) + h.get("cache", 0.0),
        "optimizer": h.get("optimizer", 0.0),
    }


def _num(x: float) -> str:
    """``x`` with three significant digits below 100, without decimals above."""
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}" if x else "0"


def _gmac(x: float) -> str:
    return _num(x / 1e9)


def inventory_markdown(invs: dict) -> str:
    """MAC totals of the traced steps (:func:`~.inventory.inventory`), with the ATen check."""
    L = ["## The step's GEMMs (traced from the diffusers UNet on the meta device, batch 1)", "",
         "GMAC per step. Useful MACs exclude the zeros of the dilated dY in the input gradient of a stride-2 "
         "convolution, which the array computes (the array column).", "",
         "| model | rank | conv fwd | linear fwd | attention fwd | forward | conv dX | linear dX | attention bwd | "
         "LoRA (6 GEMMs/layer) | step, useful | step, array | GEMM calls | ATen check |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for model, r in invs.items():
        m = r["macs"]

        def u(key):
            return m.get(key, {"useful": 0})["useful"]
        fwd = sum(u(f"{f}.fwd") for f in ("conv", "linear", "attention"))
        ok = "equal" if r["check"]["equal"] else "DIFFERENT"
        L.append(f"| {model} | {r['rank']} | {_gmac(u('conv.fwd'))} | {_gmac(u('linear.fwd'))} | "
                 f"{_gmac(u('attention.fwd'))} | {_gmac(fwd)} | {_gmac(u('conv.bwd'))} | {_gmac(u('linear.bwd'))} | "
                 f"{_gmac(u('attention.bwd'))} | {_gmac(m['lora']['useful'])} | {_gmac(m['total']['useful'])} | "
                 f"{_gmac(m['total']['array'])} | {r['calls']:,} | {ok} |")
    L += ["", "Input gradients: only where the layer's input depends on a LoRA parameter (autograd's requires_grad "
          "on the meta step, with the target linears' weights standing in for their adapters). What looser rules "
          "would add (GMAC of input gradients):", "",
          "| model | first LoRA layer | every layer executed after it: linear, conv | every layer: linear, conv |",
          "|---|---|---|---|"]
    for model, r in invs.items():
        g = r["input_gradient_rule"]
        L.append(f"| {model} | `{g['first_lora']}` | {_gmac(g['after_first_lora']['linear'])}, "
                 f"{_gmac(g['after_first_lora']['conv'])} | {_gmac(g['every_layer']['linear'])}, "
                 f"{_gmac(g['every_layer']['conv'])} |")
    return "\n".join(L) + "\n"


def allreduce_markdown(ar: dict) -> str:
    """The all-reduce of the LoRA gradients over N boards (:func:`~.allreduce.lora_allreduce`)
    as markdown: bytes each board sends per step and the time, per LoRA rank."""
    boards = ar["boards"]
    L = [f"## Data parallel: all-reduce of the LoRA gradients, {ar['model_name']} ({ar['lora_linears']} LoRA "
         f"linears), over {ar['link']['name']}", "",
         f"All figures **{ar['label']}**: {ar['assumptions']}.", "",
         "| LoRA rank | LoRA parameters | fp32 gradient (MB) | "
         + " | ".join(f"{n} boards: MB sent per board per step | {n} boards: ms" for n in boards) + " |",
         "|---|---|---|" + "---|---|" * len(boards)]
    for r in ar["ranks"]:
        rows = {row["boards"]: row for row in ar["rows"] if row["rank"] == r}
        first = rows[boards[0]]
        L.append(f"| {r} | {first['lora_params']:,} | {first['gradient_bytes'] / 1e6:.2f} | "
                 + " | ".join(f"{rows[n]['bytes_sent_per_board'] / 1e6:.2f} | {rows[n]['seconds'] * 1e3:.1f}"
                              for n in boards) + " |")
    L += ["", "A board sends 2(N-1)/N times the gradient per step, so the traffic per board stays below twice the "
          "gradient however many boards join; the time grows by one latency per round. Against a Stable Diffusion step on a board's ARM "
          "cores (minutes at batch 1 in the whole-step model) the exchange is small even at rank 128.", ""]
    return "\n".join(L) + "\n"


def step_markdown(res: dict, energy: dict | None = None) -> str:
    """The whole-step model (:func:`~.step.step_table`) as markdown, with the whole-step energy
    (:func:`~.energy.whole_step_energy`) when given."""
    L = [f"# One LoRA training step on the board, batch 1, rank {res['rank']}", "",
         f"All figures **{res['label']}**. Every ARM throughput is a stated assumption (hardware.toml, "
         "`host` tables), none is measured:", ""]
    for b, h in res["host_facts"].items():
        L.append(f"- {b}: {h['cpu']}; FP32 {h['gflops']:.2f} GFLOP/s attained (GEMMs and element-wise arithmetic); "
                 f"element-wise DDR streaming {h['stream_gbps']:g} GB/s (read + written); L2 {h['l2_kb']} KB; "
                 f"{h['call_us']:g} us per accelerator call; exp/erf {h['transcendental_flops']} FLOP per element; "
                 f"PS DDR {h['ddr_mb']} MB")
    L += ["", "Kernel modes in the cycle model (kernel v2, the planner whose count the kernel's equals): "
          "convolutions as implicit GEMMs over their NHWC maps, attention as batched GEMMs over the heads.", "",
          "Configurations: the ARM alone in FP32; the LoRA GEMMs on the accelerator (today, dynamic host "
          "quantization); every GEMM on the accelerator with dynamic host quantization (INT32 outputs: "
          "`--offload-scheme row`; or INT8 outputs of the Linear/Conv GEMMs, rows rescaled on the host: `row8`) or "
          "delayed scaling in the epilogue, serial or with the ARM overlapping the accelerator per block "
          f"({res['tiles']} token tiles), under the planner's adaptive policy and fixed dataflows. Whole-step "
          "configurations fuse a LoRA layer with its frozen layer where that saves cycles.", ""]
    L += [step_summary_markdown(res), ""]
    L += [inventory_markdown(res["inventory"])]
    for (b, m) in dict.fromkeys((r["board"], r["model"]) for r in res["rows"]):
        rows = [r for r in res["rows"] if r["board"] == b and r["model"] == m]
        L += [f"## {m} on {b}", "",
              "| configuration | accelerator Mcycles | accelerator s | ARM s | "
              "of which element-wise / (de)quant. / driver+cache | serial s | "
              "overlapped s | step s | vs ARM only | util | util linear / conv / attention / LoRA / fused | "
              "device GB | ARM GB | calls |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            c = step_components(r)
            fam = r["families"]
            util = " / ".join(f"{fam[f]['utilization']:.0%}" if f in fam else "-"
                              for f in ("linear", "conv", "attention", "lora", "fused"))
            over = _num(r["t_overlapped_s"]) if r["overlap"] else "-"
            L.append(f"| {r['label']} | {_num(r['accelerator_cycles'] / 1e6)} | {_num(r['t_accelerator_s'])} | "
                     f"{_num(r['t_host_s'])} | "
                     f"{_num(c['elementwise'])} / {_num(c['quantization'])} / {_num(c['overhead'])} | "
                     f"{_num(r['t_serial_s'])} | {over} | **{_num(r['t_step_s'])}** | {r['speedup_vs_arm']:.2f}x | "
                     f"{r['utilization']:.0%} | {util} | {_num(r['device_bytes'] / 1e9)} | "
                     f"{_num(r['host']['total']['bytes'] / 1e9)} | {r['accelerator_calls']:,} |")
        rat = next((x for x in res["ratios"] if x["board"] == b and x["model"] == m), None)
        if rat:
            L += ["", "Adaptive policy (auto) against fixed dataflows, step time (overlapped) and accelerator time: "
                  + "; ".join(f"{k}: {rat[f'auto_vs_{k}_step']:.2f}x step, {rat[f'auto_vs_{k}_accelerator']:.2f}x "
                              "accelerator" for k in ("ws", "ws_part", "os", "os_part", "adaptive")
                              if f"auto_vs_{k}_step" in rat) + "."]
        L.append("")
    L += _host_ops_markdown(res)
    L += ["## LoRA fused with its frozen layer", "",
          "[Y | H] = X.[W; A]^T reads X once (N = out + r); dX = [dY | dH].[W; A] sums over K = out + r in one GEMM. "
          "Cycles and device DDR bytes of the GEMMs concerned, summed over the adapted layers (delayed scaling, "
          "policy auto):", "",
          "| board | model | pass | pairs | separate cycles | fused cycles | saved | separate MB | fused MB | saved | "
          "fused where it saves cycles |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for f in res["fusion"]:
        for w in ("fwd", "dgrad"):
            d = f[w]
            if not d["pairs"]:
                continue
            L.append(f"| {f['board']} | {f['model']} | {'forward' if w == 'fwd' else 'input gradient'} | {d['pairs']} | "
                     f"{d['separate_cycles']:,} | {d['fused_cycles']:,} | "
                     f"{1 - d['fused_cycles'] / d['separate_cycles']:.1%} | {_num(d['separate_bytes'] / 1e6)} | "
                     f"{_num(d['fused_bytes'] / 1e6)} | {1 - d['fused_bytes'] / d['separate_bytes']:.1%} | "
                     f"{d['best_fused_pairs']} of {d['pairs']} |")
    if res.get("sensitivity"):
        sv = res["sensitivity"]
        L += ["", f"## How the speedups depend on the stated assumptions ({sv['model']} on {sv['board']})", "",
              "| assumption changed | ARM only s | whole step, serial s | speedup | whole step, overlapped s | speedup |",
              "|---|---|---|---|---|---|"]
        for r in sv["rows"]:
            L.append(f"| {r['assumption']} | {_num(r['arm_s'])} | {_num(r['whole_serial_s'])} | "
                     f"{r['whole_serial_speedup']:.1f}x | {_num(r['whole_overlap_s'])} | "
                     f"{r['whole_overlap_speedup']:.1f}x |")
    L += ["", "Frozen weights against the PS DDR (INT8 on the device, convolution weights twice: the flipped copy "
          "for the input gradient; FP32 for the ARM alone):", "",
          "| board | model | INT8 weights GB | FP32 weights GB | PS DDR GB |", "|---|---|---|---|---|"]
    for f in res["fusion"]:
        L.append(f"| {f['board']} | {f['model']} | {_num(f['weights_int8_bytes'] / 1e9)} | "
                 f"{_num(f['weights_fp32_bytes'] / 1e9)} | {f['ddr_bytes'] / 1e9:.2f} |")
    L.append("")
    if energy:
        L += [step_energy_markdown(energy)]
    if res.get("target_check"):
        L += [targets_markdown(res["target_check"])]
    return "\n".join(L) + "\n"


SUMMARY_CONFIGS = {
    "arm_fp32": "ARM only, FP32", "lora_offload": "LoRA-only offload",
    "whole_dynamic": "whole step, row (dynamic), overlapped", "whole_dynamic8": "whole step, row8 (dynamic8), overlapped",
    "whole_serial": "whole step, delayed, serial", "whole_overlap": "whole step, delayed, overlapped",
    "whole_ws": "fixed WS (delayed, overlapped)", "whole_os": "fixed OS (delayed, overlapped)",
}
"""The configurations of the summary table (:func:`step_summary_markdown`) and their headers."""


def step_summary_markdown(res: dict) -> str:
    """One row per model and board: the step time (s) of each configuration of
    :data:`SUMMARY_CONFIGS` with its speedup over the ARM alone, and the adaptive policy over
    fixed WS / OS (step time)."""
    L = ["| model | board | " + " | ".join(SUMMARY_CONFIGS.values()) + " | auto vs WS / OS |",
         "|---|---|" + "---|" * len(SUMMARY_CONFIGS) + "---|"]
    names = {"sd15": "SD 1.5", "sdxl": "SDXL"}
    for (b, m) in dict.fromkeys((r["board"], r["model"]) for r in res["rows"]):
        sel = {r["config"]: r for r in res["rows"] if r["board"] == b and r["model"] == m}
        cells = []
        for key in SUMMARY_CONFIGS:
            r = sel.get(key)
            cells.append("-" if r is None else f"{_num(r['t_step_s'])} s" +
                         ("" if key == "arm_fp32" else f" ({r['speedup_vs_arm']:.1f}x)"))
        rat = next((x for x in res["ratios"] if x["board"] == b and x["model"] == m), {})
        vs = " / ".join(f"{rat[k]:.2f}x" if k in rat else "-" for k in ("auto_vs_ws_step", "auto_vs_os_step"))
        L.append(f"| {names.get(m, m)} | {b} | {' | '.join(cells)} | {vs} |")
    return "\n".join(L)


def _host_ops_markdown(res: dict, top: int = 12) -> list[str]:
    """The ARM's element-wise work per ATen operator (the ARM-only row of the first board of each
    model; the same operators run in every configuration)."""
    L = []
    for model in dict.fromkeys(r["model"] for r in res["rows"]):
        row = next((r for r in res["rows"] if r["model"] == model and r.get("elementwise_ops")), None)
        if row is None:
            continue
        ops = sorted(row["elementwise_ops"].items(), key=lambda kv: -kv[1]["seconds"])
        tot = sum(v["seconds"] for v in row["elementwise_ops"].values())
        L += [f"## The ARM's element-wise work per operator ({model}, {row['board']}, FP32, traced)", "",
              "| operator | calls | elements read + written (M) | GB | GFLOP | s | share |", "|---|---|---|---|---|---|---|"]
        for name, v in ops[:top]:
            L.append(f"| `{name}` | {int(v['calls']):,} | {_num(v['elements'] / 1e6)} | {_num(v['bytes'] / 1e9)} | "
                     f"{_num(v['flops'] / 1e9)} | {_num(v['seconds'])} | {v['seconds'] / tot:.0%} |")
        rest = ops[top:]
        if rest:
            L.append(f"| {len(rest)} more | {int(sum(v['calls'] for _, v in rest)):,} | "
                     f"{_num(sum(v['elements'] for _, v in rest) / 1e6)} | {_num(sum(v['bytes'] for _, v in rest) / 1e9)} | "
                     f"{_num(sum(v['flops'] for _, v in rest) / 1e9)} | {_num(sum(v['seconds'] for _, v in rest))} | "
                     f"{sum(v['seconds'] for _, v in rest) / tot:.0%} |")
        L.append("")
    return L


def step_energy_markdown(rep: dict) -> str:
    """The whole-step energy (:func:`~.energy.whole_step_energy`) as markdown."""
    L = ["## Energy per step, every GEMM on the accelerator", "", f"All figures **{rep['label']}**. J per step.", "",
         "| board | model | variant | array arith | array SRAM | array DDR | ARM DDR | ARM arith | "
         "of which (de)quant. + cache | total | / INT8 delayed | FP32 / this |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rep["rows"]:
        for key, v in row["variants"].items():
            a, h = v["accelerator"], v["host"]
            j = [_num(x / 1e12) for x in (a["arith_pj"], a["sram_pj"], a["ddr_pj"], h["ddr_pj"], h["arith_pj"],
                                           v["host_quantization"]["total_pj"], v["total_pj"])]
            L.append(f"| {row['board']} | {row['model']} | {v['label']} | {' | '.join(j)} | "
                     f"{v['ratio_vs_int8_delayed']:.2f}x | {v['fp32_vs_this']:.2f}x |")
        L.append(f"| {row['board']} | {row['model']} | accelerator alone (delayed): FP32 / INT8 "
                 f"{row['accelerator_only_fp32_vs_int8']:.2f}x, FP16 / INT8 {row['accelerator_only_fp16_vs_int8']:.2f}x "
                 "| | | | | | | | | |")
    t = rep["table_pj"]
    L += ["", f"The FP16/FP32 rows are the same array and schedule computing in that precision, with the ARM handing "
          "over and reading FP16/FP32 tensors (no quantization). CDM-QTA reports "
          f"{rep['paper_energy_efficiency']:.2f}x energy efficiency over its baseline (their figure).", "",
          f"Per-operation energies (pJ, Horowitz ISSCC 2014, 45 nm): {', '.join(f'{k} {v:g}' for k, v in t.items())}; "
          f"DDR {t['dram_64bit'] / 8:g} pJ per byte for the array's and the ARM's traffic alike; the ARM "
          f"{rep['arm_instruction_pj']:g} pJ per instruction, {rep['arm_instruction_pj'] / 4:g} pJ per element-wise "
          "FLOP (one lane of a 4-lane FP32 NEON instruction). Static power is not counted.", ""]
    return "\n".join(L)


def targets_markdown(t: dict) -> str:
    """Issue 13's targets, met or not."""
    L = ["## Targets (issue 13), modelled", "", "| target | modelled | met |", "|---|---|---|"]
    for row in t["rows"]:
        L.append(f"| {row['target']} | {row['value']} | {'yes' if row['met'] else 'no'} |")
    return "\n".join(L) + "\n"


def write_step(res: dict, out: Path, energy: dict | None = None) -> tuple[str, list[Path]]:
    """``step.md`` and ``step.json`` (the whole-step model, with its energy) in ``out``."""
    text = step_markdown(res, energy)
    out.mkdir(parents=True, exist_ok=True)
    (out / "step.md").write_text(text)
    (out / "step.json").write_text(json.dumps({**res, "energy": energy}, indent=1, default=_json_default))
    return text, [out / "step.md", out / "step.json"]


def write_dataflow(res: dict, out: Path, detail_board: str | None,
                   detail_ranks: Sequence[int]) -> tuple[str, list[Path]]:
    """``dataflow.md`` (the study, then its cycle-model check when ``res`` holds it) and
    ``dataflow.json`` in ``out``; returns (the markdown, the files)."""
    text = dataflow_markdown(res, detail_board, detail_ranks)
    if "csim_check" in res:
        text += "\n" + csim_markdown(res["csim_check"])
    if "allreduce" in res:
        text += "\n" + allreduce_markdown(res["allreduce"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "dataflow.md").write_text(text)
    (out / "dataflow.json").write_text(json.dumps(res, indent=1, default=_json_default))
    return text, [out / "dataflow.md", out / "dataflow.json"]


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serializable: {type(o)}")


# ----------------------------------------------------------------------------- energy

def _uj(pj: float) -> str:
    return f"{pj / 1e6:,.1f}"


def energy_markdown(rep: dict) -> str:
    """The energy report (:func:`~.energy.energy_report`) as markdown."""
    lines = [f"# Energy per LoRA training step (batch 1), {rep['label']}", "",
             "Each GEMM planned by the planner (dataflow auto); the FP16/FP32 rows are the same array "
             "and schedule computing in that precision. Energies in uJ.", "",
             "| board | model | rank | precision | arithmetic | SRAM | DDR | total | total / INT8 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rep["rows"]:
        if "skipped" in row:
            lines.append(f"| {row['board']} | {row['model']} | - | skipped: {row['skipped']} | | | | | |")
            continue
        base = row["energy"]["int8"]["total_pj"]
        for p, e in row["energy"].items():
            lines.append(f"| {row['board']} | {row['model']} | {row['rank']} | {p.upper()} | {_uj(e['arith_pj'])} | "
                         f"{_uj(e['sram_pj'])} | {_uj(e['ddr_pj'])} | {_uj(e['total_pj'])} | "
                         f"{e['total_pj'] / base:.2f}x |")
    lines += ["", "Per GEMM kind (whole step, total uJ). With INT32 outputs (4 bytes) a GEMM whose output "
              "dominates its DDR traffic (small K = rank: Y, dX) can cost more in INT8 than an FP16 array "
              "writing 2-byte outputs; the last column requantizes every output to INT8 (fully quantized).", "",
              "| board | model | rank | GEMM | INT8 | FP16 | FP32 | INT8 < FP16 |", "|---|---|---|---|---|---|---|---|"]
    for row in rep["rows"]:
        if "skipped" in row:
            continue
        for kind, d in row["by_gemm"].items():
            lines.append(f"| {row['board']} | {row['model']} | {row['rank']} | {kind} | {_uj(d['int8'])} | "
                         f"{_uj(d['fp16'])} | {_uj(d['fp32'])} | {'yes' if d['int8'] < d['fp16'] else 'no'} |")
        a8 = row["int8_all_outputs_int8"]
        lines.append(f"| {row['board']} | {row['model']} | {row['rank']} | step, every output INT8 | "
                     f"{_uj(a8['total_pj'])} | {_uj(row['energy']['fp16']['total_pj'])} | "
                     f"{_uj(row['energy']['fp32']['total_pj'])} | "
                     f"{'yes' if a8['total_pj'] < row['energy']['fp16']['total_pj'] else 'no'} |")
    lines += ["", "Energy ratio FP32 (and FP16) / INT8 split into contributions that add up to the ratio "
              "(part of the float energy / INT8 total), and per-part ratios:", "",
              "| board | model | rank | vs | ratio | = arith + SRAM + DDR | arith ratio | memory ratio |",
              "|---|---|---|---|---|---|---|---|"]
    for row in rep["rows"]:
        if "skipped" in row:
            continue
        for key, name in (("fp32_vs_int8", "FP32"), ("fp16_vs_int8", "FP16"),
                          ("fp32_vs_int8_all_outputs_int8", "FP32 vs INT8 every output INT8"),
                          ("fp16_vs_int8_all_outputs_int8", "FP16 vs INT8 every output INT8")):
            b = row[key]
            lines.append(f"| {row['board']} | {row['model']} | {row['rank']} | {name} | {b['ratio']:.2f}x | "
                         f"{b['arith_contribution']:.2f} + {b['sram_contribution']:.2f} + {b['ddr_contribution']:.2f} | "
                         f"{b['arith_ratio']:.1f}x | {b['memory_ratio']:.2f}x |")
    lines += ["", f"Reference: the CDM-QTA paper reports {rep['paper_energy_efficiency']:.2f}x energy efficiency "
              "over its baseline (their figure, a different baseline and technology); ours above are "
              f"{rep['label']}.", "",
              f"Table (pJ): {', '.join(f'{k} {v:g}' for k, v in rep['table_pj'].items())}; DRAM "
              + ("is the midpoint of 1300-2600 pJ per 64-bit access."
                 if rep['table_pj'].get('dram_64bit') == EnergyTable().dram_64bit else
                 f"{rep['table_pj'].get('dram_64bit'):g} pJ per 64-bit access as given (--dram-pj; the table's "
                 "range is 1300-2600 pJ).")]
    return "\n".join(lines) + "\n"


def write_energy(rep: dict, out: Path) -> list[Path]:
    """``energy.md`` and ``energy.json`` of an energy report in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "energy.md", out / "energy.json"]
    paths[0].write_text(energy_markdown(rep))
    paths[1].write_text(json.dumps(rep, indent=1))
    return paths


# ----------------------------------------------------------------------------- power

def power_markdown(rep: dict) -> str:
    """A power recording (:func:`~.power.measure`) as markdown."""
    L = [f"# Power and energy of LoRA GEMMs on {rep['board']} - {rep['label']}", "",
         f"Sensors: {', '.join(rep['sensors'])}; interval {rep['interval']} s; idle baseline "
         f"{rep['idle_w']:.3f} W (mean of the idle phases){' (assumed idle draw of the emulated board)' if rep['emulated'] else ''}.", "",
         "| phase | reps x GEMMs | seconds | mean W | above idle W | energy per GEMM (uJ) | energy per rep (uJ) | "
         "GOPS | GOPS/W (above idle) | GOPS/W (total) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for p in rep["phases"]:
        if p["reps"] == 0:
            L.append(f"| {p['name']} | - | {p['seconds']:.2f} | {p['mean_w']:.3f} | - | - | - | - | - | - |")
            continue
        L.append(f"| {p['name']} | {p['reps']} x {p['gemms_per_rep']} | {p['seconds']:.2f} | {p['mean_w']:.3f} | "
                 f"{p['dynamic_w']:.3f} | {p['energy_per_gemm_j'] * 1e6:,.2f} | {p['energy_per_rep_j'] * 1e6:,.1f} | "
                 f"{p['gops']:,.1f} | {p['gops_per_w_dynamic']:,.1f} | {p['gops_per_w_total']:,.2f} |")
    L += ["", "Energy model for the same GEMMs (modelled (Horowitz 45 nm table), dynamic only): "
          + "; ".join(f"{p['name']}: {p['modelled_energy_per_gemm_j'] * 1e6:,.2f} uJ per GEMM"
                      for p in rep["phases"] if p["reps"]) + ".", ""]
    if rep["emulated"]:
        L.append("All power figures above are " + EMULATED_LABEL + ": they restate the energy model through "
                 "the DataRecorder path and are not measurements.")
    return "\n".join(L) + "\n"


def write_power(rep: dict, frame: Any, out: Path) -> list[Path]:
    """``power.md``, ``power.json`` and the recorded trace ``power_trace.csv`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "power.md").write_text(power_markdown(rep))
    (out / "power.json").write_text(json.dumps(rep, indent=1))
    frame.to_csv(out / "power_trace.csv")
    return [out / "power.md", out / "power.json", out / "power_trace.csv"]


# ----------------------------------------------------------------------------- emulation speed

def _paired(r: dict, name: str) -> str:
    """The per-step paired ratio of variant ``name`` to fp32 with its interval, as text."""
    p = r.get(f"ratio_{name}_over_fp32_paired")
    if p is None:
        return "; paired per step: too few steps for an interval (6 or more)"
    return (f"; paired per step {p['median']:.2f}x [{p['low']:.2f}, {p['high']:.2f}] "
            f"({100 * p['coverage']:.0f}% interval of the median, {p['n']} steps)")


def _whole_step_lines(r: dict, name: str, label: str) -> list[str]:
    """The lines of a whole-step variant of :func:`speed_summary` (``int8_all``, ``int8_fused``)."""
    sp = r[f"{name}_split_s"]
    return [
        f"  {label} {r[f'{name}_step_s'] * 1e3:8.1f} ms  = {r[f'ratio_{name}_over_fp32']:.2f}x fp32 "
        f"(target <= {r['target_ratio_all']}x){_paired(r, name)}",
        f"    accelerator ({r['engine']}, {r[f'{name}_gemms_per_step']} GEMMs) {sp['accelerator'] * 1e3:.1f} ms, "
        f"host quantization {sp['quantization'] * 1e3:.1f} ms, rest {sp['rest'] * 1e3:.1f} ms; modelled "
        f"{r.get('board', 'board')} GEMM time {r[f'{name}_modelled_board_s_per_step'] * 1e3:.1f} ms per step",
        _kernel_line(r, name),
    ]


def _kernel_line(r: dict, name: str) -> str:
    """How much of a variant's accelerator time the emulated kernel's own work took."""
    k, acc = r["kernel_step_s"][name], r[f"{name}_split_s"]["accelerator"]
    return (f"      of the accelerator time, the emulated kernel's work {k * 1e3:.1f} ms ({k / r['fp32_step_s']:.2f}x "
            f"the fp32 step); driver, buffers, registers, polling and planner {(acc - k) * 1e3:.1f} ms")


def speed_summary(r: dict) -> str:
    """One training step, int8 emulated against fp32 (:func:`~.speed.measure`), as text."""
    s = r["int8_split_s"]
    return "\n".join([
        f"One fine-tuning step of the default digits model, batch {r['batch_size']} "
        f"({r['note']}; {r['threads']} thread{'s' if r['threads'] != 1 else ''})",
        f"  fp32 PyTorch LoRA        {r['fp32_step_s'] * 1e3:8.1f} ms",
        f"  int8 on emulated accel.  {r['int8_step_s'] * 1e3:8.1f} ms  = {r['ratio_int8_over_fp32']:.2f}x fp32 "
        f"(target <= {r['target_ratio']}x){_paired(r, 'int8')}",
        f"    accelerator ({r['engine']}, {r['gemms_per_step']} GEMMs) {s['accelerator'] * 1e3:.1f} ms, "
        f"quantization {s['quantization'] * 1e3:.1f} ms, rest {s['rest'] * 1e3:.1f} ms",
        _kernel_line(r, "int8"),
    ] + [line for name, label in (("int8_all", f"int8 every GEMM (--offload all, {r['offload_scheme']} scheme)"),
                                  ("int8_fused", "  the same, --fuse-lora"))
         if f"{name}_step_s" in r for line in _whole_step_lines(r, name, label)] + [
        "  CPU time per step (this process, median): " + ", ".join(
            f"{name} {t * 1e3:.1f} ms" + (f" ({t / r['cpu_step_s']['fp32']:.2f}x)" if name != "fp32" else "")
            for name, t in r["cpu_step_s"].items()),
    ]) + "\n"


def calltime_summary(r: dict) -> str:
    """The host time per accelerator call (:func:`~.calltime.measure`) as text, with what to do
    with it."""
    m, k, n = r["shape"]
    lines = [f"Host time per accelerator call, {m}x{k}x{n} GEMM on {r['board']} [{r['backend']}], measured "
             f"{r['measured']}; {r['calls']} calls per loop after {r['warmup']} of warm-up",
             f"kernel time: {r['kernel_time']}", "",
             f"  {'loop (median per call, us)':40s} {'wall':>10s} {'kernel':>10s} {'host':>10s} {'done':>10s}"
             "   host 10-90%"]
    labels = {"driver": "driver (flush, run_call, invalidate)", "gemm": "whole call path (Accelerator.gemm)"}
    for name, label in labels.items():
        x = r[name]
        lines.append(f"  {label:40s} {x['wall_us']['median']:10.1f} {x['kernel_us']['median']:10.1f} "
                     f"{x['host_us']['median']:10.1f} {x['done_us']['median']:10.1f}   "
                     f"{x['host_us']['p10']:.1f}-{x['host_us']['p90']:.1f}")
    lines.append("  (done: ap_start to ap_done as the host saw it, beyond the kernel's time)")
    drv, whole = r["driver"]["host_us"]["median"], r["gemm"]["host_us"]["median"]
    lines += ["", f"hardware.toml states call_us = {r['stated_call_us']:g} us for {r['board']} (register traffic and "
              f"cache maintenance bookkeeping: the driver loop); measured here: {drv:.1f} us (driver), {whole:.1f} us "
              f"(whole call path, {whole / r['stated_call_us']:.1f}x the stated figure; the step model's sensitivity "
              "rows run x10 and x50)"]
    poll = max(r[x]["done_us"]["median"] for x in labels)
    first, cap = r["poll_sleep_us"]
    if r["backend"] == "board" and poll > first:  # beyond the first sleep: most calls slept
        lines.append(f"note: ap_done came {poll:.1f} us (median) after the kernel's own time: the completion poll's "
                     f"sleeps ({first:g} us doubling to {cap:g} us) are in the host's part")
    if r["backend"] == "board":
        lines.append(f"to model this board with it: set call_us = {drv:.0f} under [boards.{r['board']}.host] in "
                     f"hardware.toml, then rerun `lora-qta bench` (the kernel's time assumes the configured "
                     f"{r['clock_mhz']} MHz clock)")
    else:
        lines.append("these are not board figures: run `lora-qta calltime --backend board` on the board to measure "
                     "its ARM cores")
    return "\n".join(lines) + "\n"


def throughput_markdown(rows: list[dict], board: str, repeat: int) -> str:
    """The engines' throughput on LoRA GEMMs (:func:`~.speed.throughput`) as a markdown table."""
    L = [f"Emulation throughput, board {board}, best of {repeat} (measured on this machine)", "",
         "| GEMM | M x K x N | numpy fp32 ms | fast ms | csim ms | fast / fp32 | csim / fast | modelled board us |",
         "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        L.append(f"| {r['gemm']} | {r['m']}x{r['k']}x{r['n']} | {r['fp32'] * 1e3:.2f} | {r['fast'] * 1e3:.2f} | "
                 f"{r['csim'] * 1e3:.1f} | {r['fast'] / r['fp32']:.1f}x | {r['csim'] / r['fast']:.0f}x | "
                 f"{r['board_us']:.0f} |")
    tot = {key: sum(r[key] for r in rows) for key in ("fp32", "fast", "csim")}
    L += [f"| **all** | | {tot['fp32'] * 1e3:.1f} | {tot['fast'] * 1e3:.1f} | {tot['csim'] * 1e3:.0f} | "
          f"{tot['fast'] / tot['fp32']:.1f}x | {tot['csim'] / tot['fast']:.0f}x | |", "",
          "ms: host wall time per GEMM on this machine; modelled board us: the kernel's cycle count "
          "at the board clock (cycle model, not a board measurement)."]
    return "\n".join(L) + "\n"
