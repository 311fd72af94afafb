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
same steps as :func:`lora_qta.runtime.planner.model_cycles`; per step (block, K chunk) with clipped
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

:func:`energy_report` sums this per LoRA training step for boards, models and ranks; its
markdown is :func:`lora_qta.analysis.report.energy_markdown`, its figure
:func:`lora_qta.analysis.plots.energy_plot`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import numpy as np

from ..hw.config import BoardConfig, config
from ..hw.call import GemmCall
from ..lora.gemms import lora_call
from ..runtime.planner import array_shape, model_cycles, plan, step_tiles
from . import shapes

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


def step_energy(board: BoardConfig, gemms: Sequence, precisions: Iterable[str] = ("int8", "fp16", "fp32"),
                dataflow: str = "auto", table: EnergyTable = HOROWITZ_45NM,
                by_gemm: dict | None = None) -> dict[str, GemmEnergy]:
    """Summed modelled energy of ``gemms`` (:class:`~lora_qta.lora.gemms.LoraGemm` list, e.g. one
    training step's) per precision,
    each GEMM planned with ``dataflow``; identical shapes are computed once. If ``by_gemm`` is a
    dict it receives the same sums per GEMM kind (``LoraGemm.gemm``, e.g. "Y = H.B^T")."""
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


def energy_report(boards: Sequence[str] = ("zcu104",), models: Sequence[str] = ("digits", "sd15"),
                  ranks: Sequence[int] = (4, 16), table: EnergyTable = HOROWITZ_45NM) -> dict:
    """Energy per LoRA training step (batch 1) for each board, model and rank, per precision."""
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


# ----------------------------------------------------------------------------- the whole step

ARM_INSTRUCTION_PJ = 70.0
"""Energy of one instruction of a simple in-order RISC core in 45 nm (Horowitz, ISSCC 2014: about
70 pJ, of which the arithmetic is a few pJ; the rest is instruction fetch, decode, register file
and control). Applied to the ARM cores' work: an element-wise FLOP-equivalent costs one lane of a
4-lane FP32 NEON instruction (70 / 4 = 17.5 pJ); a driver call costs one instruction per cycle
of its ``call_us``; cache maintenance one instruction per line."""
ARM_FP32_LANES = 4

WHOLE_STEP_VARIANTS = {
    "int8_delayed": ("delayed", "int8", "INT8, delayed scaling in the epilogue"),
    "int8_dynamic": ("dynamic", "int8", "INT8, dynamic host quantization (row)"),
    "int8_dynamic8": ("dynamic8", "int8", "INT8, dynamic host quantization, INT8 Linear/Conv outputs (row8)"),
    "fp16": ("fp16", "fp16", "the same array in FP16"),
    "fp32": ("fp32", "fp32", "the same array in FP32"),
}
"""Whole-step variants of :func:`whole_step_energy`: (host scheme, array precision, label)."""


def host_energy(board: BoardConfig, items, table: EnergyTable = HOROWITZ_45NM) -> dict[str, float]:
    """Modelled energy (pJ) of ARM work items (:class:`lora_qta.analysis.host.HostWork`): their
    DDR bytes at the table's DRAM energy (negative bytes: traffic saved against the FP32 trace)
    and their arithmetic at :data:`ARM_INSTRUCTION_PJ` per instruction (element-wise FLOP at
    one lane of a 4-lane instruction)."""
    ddr = arith = 0.0
    per_flop = ARM_INSTRUCTION_PJ / ARM_FP32_LANES
    for it in items:
        ddr += it.bytes * table.dram_pj_per_byte
        arith += it.flops * per_flop + it.instructions * ARM_INSTRUCTION_PJ
    return {"ddr_pj": ddr, "arith_pj": arith, "total_pj": ddr + arith}


def whole_step_energy(boards: Sequence[str] = ("zcu104",), models: Sequence[str] = ("sd15",), rank: int = 4,
                      table: EnergyTable = HOROWITZ_45NM) -> dict:
    """Energy of one whole training step with every GEMM on the accelerator (policy auto,
    fusion where it saves cycles), per variant (:data:`WHOLE_STEP_VARIANTS`): the accelerator's
    GEMMs (arithmetic, SRAM, DDR as :func:`gemm_energy`, the FP variants on the INT8 variant's
    plan) plus the ARM's work (element-wise, (de)quantization, cache maintenance, driver, AdamW
    as :mod:`lora_qta.analysis.host` counts it) at :func:`host_energy`."""
    from . import host as hostmodel
    from . import inventory as inv
    from . import step as stepmodel

    rows = []
    for model in models:
        tr = inv.trace_step(model)
        params = sum(l.d_in * rank + l.d_out * rank for l in tr.targets_layers)
        for bname in boards:
            board = config().board(bname)
            base = inv.step_gemms(tr, rank, board.axi_bytes)
            out = {}
            for variant, (scheme, prec, label) in WHOLE_STEP_VARIANTS.items():
                plan_scheme = scheme if prec == "int8" else "delayed"
                gemms = stepmodel.choose_fusion(board, base, plan_scheme, "auto", "best")
                acc: GemmEnergy | None = None
                calls = {}
                cache: dict = {}
                for i, g in enumerate(gemms):
                    call, n = stepmodel.device_call(board, g, plan_scheme)
                    calls[i] = n
                    if call not in cache:
                        planned = stepmodel.best_plan(board, call, "auto").call
                        cache[call] = gemm_energy(board, planned, prec, table)
                    e = cache[call].scaled(n) if n != 1 else cache[call]
                    acc = e if acc is None else acc + e
                items = hostmodel.elementwise_work(board, tr.host_ops)
                items += hostmodel.boundary_work(board, gemms, set(range(len(gemms))), scheme, calls)
                items.append(hostmodel.optimizer_work(board, params))
                h = host_energy(board, items, table)
                quant = host_energy(board, [it for it in items if it.what in ("quantize", "dequantize", "cache")],
                                    table)
                out[variant] = {"label": label, "accelerator": acc.as_dict(), "host": h, "host_quantization": quant,
                                "total_pj": acc.total_pj + h["total_pj"]}
            base_pj, fp32_pj = out["int8_delayed"]["total_pj"], out["fp32"]["total_pj"]
            for v in out.values():
                v["ratio_vs_int8_delayed"] = v["total_pj"] / base_pj
                v["fp32_vs_this"] = fp32_pj / v["total_pj"]
            acc8 = out["int8_delayed"]["accelerator"]["total_pj"]
            rows.append({"board": bname, "model": model, "rank": rank, "variants": out,
                         "accelerator_only_fp32_vs_int8": out["fp32"]["accelerator"]["total_pj"] / acc8,
                         "accelerator_only_fp16_vs_int8": out["fp16"]["accelerator"]["total_pj"] / acc8})
    return {"label": LABEL + "; ARM: " + f"{ARM_INSTRUCTION_PJ:g} pJ per instruction (Horowitz 2014), "
            f"{ARM_INSTRUCTION_PJ / ARM_FP32_LANES:g} pJ per element-wise FLOP-equivalent",
            "table_pj": asdict(table), "arm_instruction_pj": ARM_INSTRUCTION_PJ,
            "paper_energy_efficiency": PAPER_ENERGY_EFFICIENCY, "rows": rows}
