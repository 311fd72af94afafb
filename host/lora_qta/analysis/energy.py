"""Energy model of the PE-array accelerator: Horowitz's 45 nm operation energies applied to the
counted MACs, on-chip buffer accesses and DDR traffic of each planned GEMM.

**Every figure of this module is modelled (Horowitz 45 nm table)**, not measured: the per-
operation energies of M. Horowitz, "Computing's energy problem (and what we can do about it)",
ISSCC 2014 (45 nm, 0.9 V), in pJ:

=================  =====  ==================  =====
INT8 add           0.03   FP16 add            0.4
INT32 add          0.1    FP16 mult           1.1
INT8 mult          0.2    FP32 add            0.9
INT32 mult         3.1    FP32 mult           3.7
SRAM 64 bit, 8 KB  10     SRAM 64 bit, 32 KB  20
SRAM 64 bit, 1 MB  100    DRAM 64 bit         1300-2600
=================  =====  ==================  =====

DRAM uses the midpoint 1950 pJ per 64-bit access (``EnergyTable.dram_64bit``, a parameter).
A MAC costs one multiply and one accumulate add: INT8 with 32-bit accumulation 0.2 + 0.1,
FP16 1.1 + 0.4 (FP16 accumulation, as this table's FP16 MAC), FP32 3.7 + 0.9.

**What is counted per GEMM** (from the planner's call: tiles, dataflow, partition; the
same steps as :func:`lora_qta.planner.model_cycles`; per step (block, K chunk) with clipped
tile mt x nt x kt on the logical LR x LC array):

* arithmetic: ``m·n·k`` MACs; the INT8 epilogue of INT8-output GEMMs adds one INT32 multiply
  and one INT32 add (rounding) per output element;
* tile-buffer writes by the fill stage: mt·kt (A) and kt·nt (B) elements per step;
* PE operand reads from the tile buffers, once per fold (an operand entering the array edge
  is passed PE to PE in registers, which the table has no entry for and which are not counted):
  OS: A mt·kt·⌈nt/LC⌉, B kt·nt·⌈mt/LR⌉; WS: B kt·nt (weights loaded once), A mt·kt·⌈nt/LC⌉;
* accumulator buffer: one read and one write of every partial output element per fold:
  OS mt·nt per step (the K chunk is summed inside the PEs), WS mt·nt·⌈kt/LR⌉ per step;
  plus one read per output element by the store stage;
* DDR: the call's traffic from the cycle report (A, B, C, scales).

SRAM energy per byte is the 64-bit access energy / 8, for a buffer of the capacity of one
ping-pong half (A: tile_m_max·tile_k_max, B: tile_k_max·tile_n_max operands, accumulator:
tile_m_max·tile_n_max accumulators, in bytes of the precision), interpolated log-log between
the table's 8 KB / 32 KB / 1 MB points (extrapolated along the nearest segment).

**Other precisions** ("the same array computing in FP16 / FP32"): the same plan (tiles,
dataflow, element counts); operands take 2 or 4 bytes, so DDR bytes of A, B and C and SRAM
bytes scale with the width, the buffers are that much larger (higher energy per access) and
the accumulator holds FP16 or FP32. The INT8 array's accumulators are INT32 (4 bytes).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..hw.config import BoardConfig, config
from ..hw.call import GemmCall
from ..runtime.planner import array_shape, step_tiles

LABEL = "modelled (Horowitz 45 nm table)"
PAPER_ENERGY_EFFICIENCY = 5.50
"""CDM-QTA paper: reported energy-efficiency gain over its baseline (their measurement)."""


@dataclass(frozen=True)
class EnergyTable:
    """Per-operation energies in pJ (Horowitz, ISSCC 2014, 45 nm, 0.9 V)."""

    int8_add: float = 0.03
    int32_add: float = 0.1
    int8_mult: float = 0.2
    int32_mult: float = 3.1
    fp16_add: float = 0.4
    fp16_mult: float = 1.1
    fp32_add: float = 0.9
    fp32_mult: float = 3.7
    sram_8k: float = 10.0      # 64-bit access of an 8 KB SRAM
    sram_32k: float = 20.0     # 64-bit access of a 32 KB SRAM
    sram_1m: float = 100.0     # 64-bit access of a 1 MB SRAM
    dram_64bit: float = 1950.0  # midpoint of the table's 1300-2600 pJ

    def sram_pj_per_byte(self, capacity_bytes: float) -> float:
        """Energy per byte accessed in an SRAM of ``capacity_bytes`` (log-log interpolation)."""
        xs = np.log([8 * 1024, 32 * 1024, 1024 * 1024])
        ys = np.log([self.sram_8k, self.sram_32k, self.sram_1m])
        x = math.log(max(capacity_bytes, 1.0))
        i = 0 if x < xs[1] else 1          # segment (extrapolate beyond the ends)
        slope = (ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i])
        return float(math.exp(ys[i] + slope * (x - xs[i]))) / 8.0

    @property
    def dram_pj_per_byte(self) -> float:
        return self.dram_64bit / 8.0


HOROWITZ_45NM = EnergyTable()


@dataclass(frozen=True)
class Precision:
    """How the array computes: operand and accumulator widths, MAC energy."""

    name: str
    operand_bytes: int
    acc_bytes: int

    def mac_pj(self, t: EnergyTable) -> float:
        return {"int8": t.int8_mult + t.int32_add, "fp16": t.fp16_mult + t.fp16_add,
                "fp32": t.fp32_mult + t.fp32_add}[self.name]


PRECISIONS = {"int8": Precision("int8", 1, 4), "fp16": Precision("fp16", 2, 2), "fp32": Precision("fp32", 4, 4)}


@dataclass
class GemmEnergy:
    """Modelled energy of one GEMM (pJ) and what it is made of."""

    precision: str
    macs: int
    arith_pj: float
    sram_pj: float
    ddr_pj: float
    sram_bytes: int
    ddr_bytes: int
    accesses: dict = field(default_factory=dict)

    @property
    def memory_pj(self) -> float:
        return self.sram_pj + self.ddr_pj

    @property
    def total_pj(self) -> float:
        return self.arith_pj + self.sram_pj + self.ddr_pj

    def __add__(self, other: "GemmEnergy") -> "GemmEnergy":
        acc = {k: self.accesses.get(k, 0) + other.accesses.get(k, 0)
               for k in set(self.accesses) | set(other.accesses)}
        return GemmEnergy(self.precision, self.macs + other.macs, self.arith_pj + other.arith_pj,
                          self.sram_pj + other.sram_pj, self.ddr_pj + other.ddr_pj,
                          self.sram_bytes + other.sram_bytes, self.ddr_bytes + other.ddr_bytes, acc)

    def scaled(self, factor: float) -> "GemmEnergy":
        return GemmEnergy(self.precision, int(self.macs * factor), self.arith_pj * factor,
                          self.sram_pj * factor, self.ddr_pj * factor, int(self.sram_bytes * factor),
                          int(self.ddr_bytes * factor), {k: int(v * factor) for k, v in self.accesses.items()})

    def as_dict(self) -> dict:
        return {"precision": self.precision, "macs": self.macs, "arith_pj": self.arith_pj,
                "sram_pj": self.sram_pj, "ddr_pj": self.ddr_pj, "total_pj": self.total_pj,
                "sram_bytes": self.sram_bytes, "ddr_bytes": self.ddr_bytes, "accesses": dict(self.accesses)}


def _ceil(a, b):
    return -(-np.asarray(a) // np.asarray(b))


def buffer_accesses(board: BoardConfig, call: GemmCall) -> dict[str, int]:
    """Element counts of the on-chip buffer accesses of ``call`` (see the module docstring)."""
    mt, nt, kt, last = step_tiles(call)
    lr, lc, _, _ = array_shape(board, call.split)
    if call.dataflow == "os":
        a_reads = mt * kt * _ceil(nt, lc)
        b_reads = kt * nt * _ceil(mt, lr)
        acc_rw = mt * nt
    else:
        a_reads = mt * kt * _ceil(nt, lc)
        b_reads = kt * nt
        acc_rw = mt * nt * _ceil(kt, lr)
    return {
        "a_writes": int((mt * kt).sum()), "b_writes": int((kt * nt).sum()),
        "a_reads": int(a_reads.sum()), "b_reads": int(b_reads.sum()),
        "acc_reads": int(acc_rw.sum() + (mt * nt * last).sum()), "acc_writes": int(acc_rw.sum()),
        "outputs": int((mt * nt * last).sum()),
    }


def gemm_energy(board: BoardConfig, call: GemmCall, precision: str = "int8",
                table: EnergyTable = HOROWITZ_45NM) -> GemmEnergy:
    """Modelled energy of ``call`` (a planned call: tiles, dataflow and split set) on ``board``
    computed in ``precision`` ("int8", "fp16" or "fp32")."""
    from ..runtime.planner import model_cycles

    p = PRECISIONS[precision]
    rep = model_cycles(board, call)
    acc = buffer_accesses(board, call)
    w, wa = p.operand_bytes, p.acc_bytes
    e_a = table.sram_pj_per_byte(board.tile_m_max * board.tile_k_max * w)
    e_b = table.sram_pj_per_byte(board.tile_k_max * board.tile_n_max * w)
    e_acc = table.sram_pj_per_byte(board.tile_m_max * board.tile_n_max * wa)
    a_bytes = (acc["a_writes"] + acc["a_reads"]) * w
    b_bytes = (acc["b_writes"] + acc["b_reads"]) * w
    acc_bytes = (acc["acc_reads"] + acc["acc_writes"]) * wa
    sram_pj = a_bytes * e_a + b_bytes * e_b + acc_bytes * e_acc

    arith = call.macs * p.mac_pj(table)
    if precision == "int8":
        if call.out_int8:
            arith += acc["outputs"] * (table.int32_mult + table.int32_add)
        ddr = rep.bytes_moved
    else:
        out_elems = rep.bytes_c // call.out_bytes
        ddr = (rep.bytes_a + rep.bytes_b) * w + out_elems * w
    return GemmEnergy(precision, call.macs, arith, sram_pj, ddr * table.dram_pj_per_byte,
                      a_bytes + b_bytes + acc_bytes, ddr, acc)


def lora_call(g) -> GemmCall:
    """The kernel call of a :class:`lora_qta.shapes.LoraGemm` (or a (m, k, n, ta, tb, out8)
    tuple) with operands laid out as training keeps them (tiles left to the planner)."""
    if isinstance(g, tuple):
        m, k, n, ta, tb, o8 = g
    else:
        m, k, n, ta, tb, o8 = g.key
    return GemmCall(m=m, n=n, k=k, lda=m if ta else k, ldb=k if tb else n, ldc=n, tile_m=1, tile_n=1,
                    tile_k=1, trans_a=ta, trans_b=tb, out_int8=o8,
                    shift=16 if o8 else 0)


def step_energy(board: BoardConfig, gemms: Sequence, precisions: Iterable[str] = ("int8", "fp16", "fp32"),
                dataflow: str = "auto", table: EnergyTable = HOROWITZ_45NM,
                by_gemm: dict | None = None) -> dict[str, GemmEnergy]:
    """Summed modelled energy of ``gemms`` (LoraGemm list, e.g. one training step's) per precision,
    each GEMM planned with ``dataflow``; identical shapes are computed once. If ``by_gemm`` is a
    dict it receives the same sums per GEMM kind (``LoraGemm.gemm``, e.g. "Y = H.B^T")."""
    from ..runtime.planner import plan

    counts: dict[tuple, int] = {}
    for g in gemms:
        key = (g.gemm, g.key)
        counts[key] = counts.get(key, 0) + 1
    out: dict[str, GemmEnergy] = {}
    cache: dict[tuple, GemmEnergy] = {}
    for (kind, key), cnt in counts.items():
        call = plan(board, lora_call(key), dataflow=dataflow).call
        for prec in precisions:
            if (key, prec) not in cache:
                cache[key, prec] = gemm_energy(board, call, prec, table)
            e = cache[key, prec].scaled(cnt) if cnt != 1 else cache[key, prec]
            out[prec] = out[prec] + e if prec in out else e
            if by_gemm is not None:
                d = by_gemm.setdefault(kind, {})
                d[prec] = d[prec] + e if prec in d else e
    return out


def ratio_breakdown(base: GemmEnergy, other: GemmEnergy) -> dict[str, float]:
    """``other / base`` energy, split into contributions that add up to it (arithmetic, SRAM,
    DDR parts of ``other`` over the total of ``base``), and the per-part ratios."""
    tot = base.total_pj
    return {
        "ratio": other.total_pj / tot,
        "arith_contribution": other.arith_pj / tot,
        "sram_contribution": other.sram_pj / tot,
        "ddr_contribution": other.ddr_pj / tot,
        "memory_contribution": other.memory_pj / tot,
        "arith_ratio": other.arith_pj / base.arith_pj,
        "memory_ratio": other.memory_pj / base.memory_pj,
        "sram_ratio": other.sram_pj / base.sram_pj,
        "ddr_ratio": other.ddr_pj / base.ddr_pj,
    }


# ----------------------------------------------------------------------------- report

def energy_report(boards: Sequence[str] = ("zcu104",), models: Sequence[str] = ("digits", "sd15"),
                  ranks: Sequence[int] = (4, 16), table: EnergyTable = HOROWITZ_45NM) -> dict:
    """Energy per LoRA training step (batch 1) for each board, model and rank, per precision."""
    from . import shapes

    rows = []
    for bname in boards:
        board = config().board(bname)
        for model in models:
            try:
                layers = shapes.lora_layers(model)
            except ImportError as e:  # the default model's module may be missing
                rows.append({"board": bname, "model": model, "skipped": str(e)})
                continue
            for r in ranks:
                kinds: dict = {}
                e = step_energy(board, shapes.lora_gemms(layers, r), table=table, by_gemm=kinds)
                e_all8 = step_energy(board, shapes.lora_gemms(layers, r, int8_outputs="all"),
                                     precisions=("int8",), table=table)["int8"]
                rows.append({
                    "board": bname, "model": model, "rank": r, "layers": len(layers),
                    "energy": {p: v.as_dict() for p, v in e.items()},
                    "int8_all_outputs_int8": e_all8.as_dict(),
                    "by_gemm": {k: {p: v.total_pj for p, v in d.items()} for k, d in kinds.items()},
                    "fp32_vs_int8": ratio_breakdown(e["int8"], e["fp32"]),
                    "fp16_vs_int8": ratio_breakdown(e["int8"], e["fp16"]),
                    "fp32_vs_int8_all_outputs_int8": ratio_breakdown(e_all8, e["fp32"]),
                    "fp16_vs_int8_all_outputs_int8": ratio_breakdown(e_all8, e["fp16"]),
                })
    return {"label": LABEL, "table_pj": asdict(table), "paper_energy_efficiency": PAPER_ENERGY_EFFICIENCY,
            "rows": rows}


def _uj(pj: float) -> str:
    return f"{pj / 1e6:,.1f}"


def energy_markdown(rep: dict) -> str:
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


def energy_plot(rep: dict, path: Path) -> Path:
    """Stacked bars (arithmetic, SRAM, DDR) of INT8 / INT8 with every output INT8 / FP16 / FP32
    per model and rank."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(rep: dict, out: Path, plot: bool = True) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "energy.md", out / "energy.json"]
    paths[0].write_text(energy_markdown(rep))
    paths[1].write_text(json.dumps(rep, indent=1))
    if plot:
        paths.append(energy_plot(rep, out / "energy.png"))
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """``lora-qta energy``: modelled energy per LoRA training step, INT8 vs FP16 vs FP32."""
    p = argparse.ArgumentParser(prog="lora-qta energy", description=main.__doc__)
    p.add_argument("--boards", default="zcu104", help="comma-separated boards (default zcu104)")
    p.add_argument("--models", default="digits,sd15", help="comma-separated: digits, sd15, sdxl")
    p.add_argument("--ranks", default="4,16", help="comma-separated LoRA ranks")
    p.add_argument("--dram-pj", type=float, default=HOROWITZ_45NM.dram_64bit,
                   help="DRAM energy per 64-bit access in pJ (Horowitz: 1300-2600; default the midpoint)")
    p.add_argument("--out", type=Path, default=Path("runs/bench"), help="output folder")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    a = p.parse_args(argv)
    table = EnergyTable(dram_64bit=a.dram_pj)
    rep = energy_report([b.strip() for b in a.boards.split(",")], [m.strip() for m in a.models.split(",")],
                        [int(r) for r in a.ranks.split(",")], table)
    text = energy_markdown(rep)
    print(text)
    for path in write_report(rep, a.out, plot=not a.no_plot):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
