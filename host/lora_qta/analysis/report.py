"""The analysis reports as text, and the files the report commands write.

Markdown of the dataflow study with its cycle-model check and training-step view, of the energy
model and of a power recording; the emulation-speed summaries; and the writers of the
``.md``/``.json``/``.csv`` files of ``lora-qta bench``, ``energy`` and ``power`` (their figures
are :mod:`.plots`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

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


def step_markdown(sv: dict) -> str:
    """The training-step view (:func:`~.step.step_view`) as markdown."""
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
          "cores (minutes at batch 1 in the training-step view) the exchange is small even at rank 128.", ""]
    return "\n".join(L) + "\n"


def write_dataflow(res: dict, out: Path, detail_board: str | None,
                   detail_ranks: Sequence[int]) -> tuple[str, list[Path]]:
    """``dataflow.md`` (the study, then its cycle-model check and training-step view when ``res``
    holds them) and ``dataflow.json`` in ``out``; returns (the markdown, the files)."""
    text = dataflow_markdown(res, detail_board, detail_ranks)
    if "csim_check" in res:
        text += "\n" + csim_markdown(res["csim_check"])
    if "training_step" in res:
        text += "\n" + step_markdown(res["training_step"])
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
              f"Table (pJ): {', '.join(f'{k} {v:g}' for k, v in rep['table_pj'].items())}; DRAM is the midpoint "
              "of 1300-2600 pJ per 64-bit access."]
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

def speed_summary(r: dict) -> str:
    """One training step, int8 emulated against fp32 (:func:`~.speed.measure`), as text."""
    s = r["int8_split_s"]
    return "\n".join([
        f"One fine-tuning step of the default digits model, batch {r['batch_size']} "
        f"({r['note']}; {r['threads']} threads)",
        f"  fp32 PyTorch LoRA        {r['fp32_step_s'] * 1e3:8.1f} ms",
        f"  int8 on emulated accel.  {r['int8_step_s'] * 1e3:8.1f} ms  = {r['ratio_int8_over_fp32']:.2f}x fp32 "
        f"(target <= {r['target_ratio']}x)",
        f"    accelerator ({r['engine']}, {r['gemms_per_step']} GEMMs) {s['accelerator'] * 1e3:.1f} ms, "
        f"quantization {s['quantization'] * 1e3:.1f} ms, rest {s['rest'] * 1e3:.1f} ms",
    ] + ([
        f"  int8 every GEMM (--offload all) {r['int8_all_step_s'] * 1e3:8.1f} ms  = "
        f"{r['ratio_int8_all_over_fp32']:.2f}x fp32 (target <= {r['target_ratio_all']}x)",
        f"    accelerator ({r['engine']}, {r['int8_all_gemms_per_step']} GEMMs) "
        f"{r['int8_all_split_s']['accelerator'] * 1e3:.1f} ms, host quantization "
        f"{r['int8_all_split_s']['quantization'] * 1e3:.1f} ms, rest {r['int8_all_split_s']['rest'] * 1e3:.1f} ms; "
        f"modelled board GEMM time {r['int8_all_modelled_board_s_per_step'] * 1e3:.1f} ms per step",
    ] if r.get("offload") == "all" else [])) + "\n"


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
