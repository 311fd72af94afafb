"""Synthesis sweep of the RTL PE array with yosys: per-size table, fits, board extrapolation, plot.

    python scripts/bench_rtl.py [--sizes 4x4,8x8,16x8,16x16] [--families xcup,xc7] [--out hls/rtl/results]

Writes OUT/pe_array_yosys.json (what `lora-qta config estimate` reads), OUT/pe_array_yosys.md and
OUT/pe_array_yosys.png (LUT, FF and DSP per PE against array size). Each synthesis is cached
(lora_qta.rtl.cache_dir()), so a rerun after a change of sizes only runs the new ones.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from lora_qta import rtl

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SIZES = "4x4,8x8,16x8,16x16"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), constrained_layout=True)
    for ax, key in zip(axes, ("lut", "ff", "dsp")):
        for fam in sorted(report["fits"]):
            rs = sorted((r for r in report["results"] if r["family"] == fam), key=lambda r: r["pes"])
            ax.plot([r["pes"] for r in rs], [r["per_pe"][key] for r in rs], "o-", label=f"{fam} (yosys)")
            fit = report["fits"][fam][key]
            for name, b in report["boards"].items():
                if b["family"] == fam:
                    ax.plot([b["pes"]], [b["per_pe"][key]], "x", ms=9,
                            label=f"{name} {b['rows']}x{b['cols']} ({b['how']})")
            ax.axhline(fit["per_pe"], ls=":", lw=0.8, color="grey")
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default=DEFAULT_SIZES, help=f"RxC list (default {DEFAULT_SIZES})")
    p.add_argument("--families", default="xcup,xc7", help="synth_xilinx families (default xcup,xc7)")
    p.add_argument("--out", type=Path, default=ROOT / "hls" / "rtl" / "results", help="output folder")
    a = p.parse_args(argv)
    sizes = [tuple(int(x) for x in s.split("x")) for s in a.sizes.split(",")]
    results = []
    for fam in a.families.split(","):
        for r, c in sizes:
            t0 = time.perf_counter()
            res = rtl.synth(fam, r, c)
            print(f"{fam} {r}x{c}: LUT {res['lut']} FF {res['ff']} CARRY {res['carry']} DSP {res['dsp']} "
                  f"(yosys {res['seconds']:.0f} s{', cached' if time.perf_counter() - t0 < 1 else ''})", flush=True)
            results.append(res)
    report = rtl.sweep_report(results)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "pe_array_yosys.json").write_text(json.dumps(report, indent=1) + "\n")
    (a.out / "pe_array_yosys.md").write_text(rtl.sweep_markdown(report))
    plot(report, a.out / "pe_array_yosys.png")
    print(rtl.sweep_markdown(report))
    print(f"wrote {a.out}/pe_array_yosys.{{json,md,png}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
