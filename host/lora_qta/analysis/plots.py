"""The figures of the analysis (PNG files, matplotlib's Agg backend): the dataflow study's
utilization, speedup and roofline plots, the whole step's time by component and utilization by
GEMM family, the energy bars, the power trace."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .dataflow import MODE_LABELS, MODES


def _pyplot() -> Any:
    """``matplotlib.pyplot`` drawing off screen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    """Lay out ``fig``, write it to ``path`` (its folder created) and close it."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


# ----------------------------------------------------------------------------- dataflow study

def _rank_axis(ax: Any, cfgs: list[dict], ylabel: str, title: str) -> None:
    """A log2 axis of the LoRA ranks of ``cfgs``, labelled, with a grid."""
    ranks = sorted({c["rank"] for c in cfgs})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ranks)
    ax.set_xticklabels([str(r) for r in ranks])
    ax.minorticks_off()
    ax.set_xlabel("LoRA rank")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)


def dataflow_plots(res: dict, out: Path) -> list[Path]:
    """``utilization.png``, ``speedup.png`` and ``roofline.png`` of the dataflow study in ``out``."""
    plt = _pyplot()
    cfgs = res["configs"]
    boards = list(dict.fromkeys(c["board"] for c in cfgs))
    models = list(dict.fromkeys(c["model"] for c in cfgs))
    styles = ["-", "--", ":", "-."]
    colors = {"ws": "#4c72b0", "os": "#dd8452", "adaptive": "#55a868", "auto": "#c44e52"}

    fig, axes = plt.subplots(1, len(boards), figsize=(5 * len(boards), 4), squeeze=False)
    for ax, b in zip(axes[0], boards):
        for mi, model in enumerate(models):
            sel = sorted((c for c in cfgs if c["board"] == b and c["model"] == model), key=lambda c: c["rank"])
            for mode in MODES:
                ax.plot([c["rank"] for c in sel], [100 * c["utilization"][mode] for c in sel],
                        styles[mi % 4], marker="o", ms=3, color=colors[mode], label=f"{model} {MODE_LABELS[mode]}")
        _rank_axis(ax, cfgs, "PE utilization of the step's LoRA GEMMs (%)", b)
    axes[0][0].legend(fontsize=6)
    fig.suptitle(f"PE utilization per dataflow vs rank - {res['label']}", fontsize=9)
    paths = [_save(fig, out / "utilization.png")]

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
        _rank_axis(ax, cfgs, "speedup (total cycles of the step)", b)
    axes[0][0].legend(fontsize=6)
    fig.suptitle(f"Adaptive dataflow speedup over fixed WS / OS - {res['label']}", fontsize=9)
    paths.append(_save(fig, out / "speedup.png"))

    fig, axes = plt.subplots(1, len(boards), figsize=(5 * len(boards), 4.2), squeeze=False)
    ranks = sorted({c["rank"] for c in cfgs})
    cmap = plt.get_cmap("viridis")
    for ax, b in zip(axes[0], boards):
        sel = [c for c in cfgs if c["board"] == b]
        pes, bpb = sel[0]["pes"], sel[0]["axi_bytes"] * sel[0].get("axi_ports", 1)  # rows striped over all ports
        xs_all = []
        for c in sel:
            col = cmap(ranks.index(c["rank"]) / max(1, len(ranks) - 1))
            xs = [g["macs"] / g["modes"]["auto"]["bytes_moved"] for g in c["gemms"]]
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
        ax.set_xlabel("arithmetic intensity (MACs per DDR byte; rows striped over all AXI ports)")
        ax.set_ylabel("attained MACs per cycle")
        ax.set_title(f"{b} (o {models[0]}" + (f", ^ {models[1]})" if len(models) > 1 else ")"), fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6)
    fig.suptitle(f"Roofline of the LoRA GEMMs (policy auto) - {res['label']}", fontsize=9)
    paths.append(_save(fig, out / "roofline.png"))
    return paths


# ----------------------------------------------------------------------------- energy

def energy_plot(rep: dict, path: Path) -> Path:
    """Stacked bars (arithmetic, SRAM, DDR) of INT8 / INT8 with every output INT8 / FP16 / FP32
    per model and rank."""
    plt = _pyplot()
    rows = [r for r in rep["rows"] if "skipped" not in r]
    groups = sorted({(r["board"], r["model"]) for r in rows}, key=lambda g: [x["model"] for x in rows].index(g[1]))
    fig, axes = plt.subplots(1, max(1, len(groups)), figsize=(6 * max(1, len(groups)), 4.4), squeeze=False)
    colors = {"arith_pj": "#4c72b0", "sram_pj": "#dd8452", "ddr_pj": "#55a868"}
    names = {"arith_pj": "arithmetic", "sram_pj": "on-chip SRAM", "ddr_pj": "DDR"}
    for ax, (bname, model) in zip(axes[0], groups):
        sel = [r for r in rows if r["board"] == bname and r["model"] == model]
        labels, x = [], 0
        for r in sel:
            for p in ("int8", "int8_all", "fp16", "fp32"):
                e = r["int8_all_outputs_int8"] if p == "int8_all" else r["energy"][p]
                bottom = 0.0
                for part in ("arith_pj", "sram_pj", "ddr_pj"):
                    ax.bar(x, e[part] / 1e6, bottom=bottom, color=colors[part],
                           label=names[part] if x == 0 else None)
                    bottom += e[part] / 1e6
                name = "INT8,\nall out\nINT8" if p == "int8_all" else p.upper()
                labels.append(f"{name}\nr={r['rank']}")
                x += 1
            x += 0.5
        ticks = [i + 0.5 * (i // 4) for i in range(len(labels))]
        ax.set_xticks(ticks)
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_ylabel("energy per LoRA training step (uJ)")
        ax.set_title(f"{model} on {bname}", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(f"LoRA GEMM energy per training step, batch 1 - {rep['label']}", fontsize=9)
    return _save(fig, path)


# ----------------------------------------------------------------------------- the whole step

SHORT_LABELS = {
    "arm_fp32": "ARM only, FP32", "lora_offload": "LoRA only (today)", "whole_dynamic": "all, dynamic (row)",
    "whole_dynamic8": "all, dynamic8 (row8)",
    "whole_serial": "all, delayed, serial", "whole_overlap": "all, delayed, overlap", "whole_adaptive": "WS/OS, no part.",
    "whole_ws": "fixed WS", "whole_ws_part": "WS + partitions", "whole_os": "fixed OS", "whole_os_part": "OS + partitions",
}
COMPONENT_COLORS = {"accelerator": "#c44e52", "gemm_fp32": "#4c72b0", "elementwise": "#8172b3",
                    "quantization": "#dd8452", "overhead": "#937860", "optimizer": "#55a868"}


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def step_plots(res: dict, out: Path) -> list[Path]:
    """``step.png``: stacked bars of each configuration's serial step time by component (one panel
    per board and model; the overlapped step time as a black tick; bars above the axis are cut and
    labelled), and ``step_utilization.png``: PE utilization per GEMM family and configuration."""
    from .report import COMPONENTS, step_components

    plt = _pyplot()
    pairs = list(dict.fromkeys((r["board"], r["model"]) for r in res["rows"]))
    ncol = min(3, len(pairs))
    nrow = -(-len(pairs) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(6.5 * ncol, 4.6 * nrow), squeeze=False)
    for ax, (b, m) in zip(axes.flat, pairs):
        rows = [r for r in res["rows"] if r["board"] == b and r["model"] == m]
        whole = [r["t_serial_s"] for r in rows if r["offload"] == "all"] or [r["t_serial_s"] for r in rows]
        top = 1.35 * max(whole)
        seen: set[str] = set()
        for x, r in enumerate(rows):
            bottom = 0.0
            for key, val in step_components(r).items():
                if val > 0:
                    ax.bar(x, val, bottom=bottom, color=COMPONENT_COLORS[key], width=0.7,
                           label=None if key in seen else COMPONENTS[key])
                    seen.add(key)
                    bottom += val
            if r["overlap"]:
                ax.plot([x - 0.4, x + 0.4], [r["t_step_s"]] * 2, "k-", lw=2)
            if bottom > top:
                ax.text(x, top * 0.97, f"{bottom:,.0f} s", ha="center", va="top", fontsize=7, rotation=90, color="w")
            ax.text(x, min(bottom, top) * 1.01 if bottom <= top else top * 1.01, f"{r['speedup_vs_arm']:.1f}x",
                    ha="center", va="bottom", fontsize=7)
        ax.set_ylim(0, top * 1.08)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([SHORT_LABELS.get(r["config"], r["config"]) for r in rows], fontsize=6, rotation=45,
                           ha="right", rotation_mode="anchor")
        ax.set_ylabel("seconds per step (serial parts; black: overlapped)")
        ax.set_title(f"{m} on {b}, rank {res['rank']} (x: speedup vs ARM only)", fontsize=9)
        handles, labels = ax.get_legend_handles_labels()
        uniq = dict(zip(labels, handles))
        ax.legend(uniq.values(), uniq.keys(), fontsize=6, loc="upper right")
    for ax in list(axes.flat)[len(pairs):]:
        ax.axis("off")
    fig.suptitle(_wrap(f"One LoRA training step by component - {res['label']}", 110), fontsize=8)
    paths = [_save(fig, out / "step.png")]

    fams = ("linear", "conv", "attention", "lora", "fused")
    colors = {"linear": "#4c72b0", "conv": "#dd8452", "attention": "#c44e52", "lora": "#55a868", "fused": "#8172b3"}
    fig, axes = plt.subplots(nrow, ncol, figsize=(6.5 * ncol, 4.2 * nrow), squeeze=False)
    for ax, (b, m) in zip(axes.flat, pairs):
        rows = [r for r in res["rows"] if r["board"] == b and r["model"] == m and r["families"]]
        width = 0.8 / len(fams)
        for fi, f in enumerate(fams):
            xs = [x + (fi - len(fams) / 2 + 0.5) * width for x in range(len(rows))]
            ys = [100 * r["families"].get(f, {}).get("utilization", 0.0) for r in rows]
            ax.bar(xs, ys, width=width, color=colors[f], label=f)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([SHORT_LABELS.get(r["config"], r["config"]) for r in rows], fontsize=6, rotation=45,
                           ha="right", rotation_mode="anchor")
        ax.set_ylim(0, 100)
        ax.set_ylabel("PE utilization (%)")
        ax.set_title(f"{m} on {b}: utilization per GEMM family", fontsize=9)
        ax.legend(fontsize=6, ncol=5)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(pairs):]:
        ax.axis("off")
    fig.suptitle(_wrap(f"PE utilization by GEMM family - {res['label']}", 110), fontsize=8)
    paths.append(_save(fig, out / "step_utilization.png"))
    return paths


# ----------------------------------------------------------------------------- power

def power_plot(frame: Any, rep: dict, path: Path) -> Path:
    """The recorded power trace with its phases shaded and the idle baseline (PNG)."""
    plt = _pyplot()
    power = frame[rep["sensors"]].astype(float).sum(axis=1)
    t = np.array([ts.timestamp() for ts in frame.index])
    t0 = t[0] if len(t) else 0.0
    fig, ax = plt.subplots(figsize=(9, 3.8))
    ax.plot(t - t0, power.values, "k-", lw=1, marker=".", ms=3)
    lo, hi = float(power.min()), float(power.max())
    ax.set_ylim(lo - 0.05 * (hi - lo + 1e-3), hi + 0.2 * (hi - lo + 1e-3))
    colors = ["#dddddd", "#a6cee3", "#b2df8a", "#fdbf6f", "#cab2d6"]
    for i, p in enumerate(rep["phases"]):
        c = colors[0] if p["reps"] == 0 else colors[1 + i % 4]
        ax.axvspan(p["t0"] - t0, p["t1"] - t0, color=c, alpha=0.6, lw=0)
        ax.text((p["t0"] + p["t1"]) / 2 - t0, 0.97, p["name"].split(" (")[0].strip(), ha="center", va="top",
                fontsize=8, transform=ax.get_xaxis_transform())
    ax.axhline(rep["idle_w"], color="grey", ls="--", lw=0.8, label=f"idle baseline {rep['idle_w']:.2f} W")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("power (W): " + " + ".join(rep["sensors"]))
    ax.set_title(f"{rep['board']}: power trace - {rep['label']}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)
