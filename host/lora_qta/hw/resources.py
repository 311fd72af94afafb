"""Resources of one build of the accelerator: the PE array from yosys, the rest a first-order estimate.

* **PE array** (``hls/rtl``, the array and its fold sequencer): cell counts of yosys
  ``synth_xilinx`` read from ``pe_array_yosys.json`` beside this file, which ``lora-qta rtl sweep``
  writes (never typed by hand). The board's own array where that size was synthesized, else the
  sweep's linear per-PE fit for the board's family. Pre-place-and-route, no timing: Vivado's
  counts will differ (it may, for one, fold the accumulators into the DSP48s).
* **The rest** (operand and accumulator buffers, loader, epilogue, AXI): a first-order estimate.
  DSP: 12 per epilogue lane (a 32x32 multiply of the requantizer, 4 DSP48, and the two 32x32
  multiplies of the rounding hash, 8 DSP48). Memory: A and B buffers (INT8, ping-pong) and the
  INT32 accumulator (ping-pong) in BRAM36 (4.5 KiB usable each) or, where the board has it, the
  accumulator in URAM (36 KiB each). LUTs: ~300 per epilogue lane plus ~8000 for loader, store,
  control and AXI.

Beside it, the hand count of what kernel v2 binds, part by part with how each figure was
obtained (:func:`hand_count_table`, :func:`hand_count_markdown` for hls/README.md, which a test
checks; :func:`hand_count_totals`). Its ``pe_array`` row is the one the yosys figures above
replace; the csynth gate of the HLS flow is the check that counts.

Standard library only; ``lora-qta config estimate`` and ``lora-qta info`` print it, and the
README's board table shows it.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import UnknownBoardError
from .config import config

YOSYS_JSON = Path(__file__).with_name("pe_array_yosys.json")
FAMILY = {"zynq_us": "xcup", "zynq7": "xc7"}   # hardware.toml family -> synth_xilinx family


@lru_cache(maxsize=1)
def _sweep() -> dict:
    return json.loads(YOSYS_JSON.read_text())


def pe_array_figures(board_name: str | None = None) -> dict:
    """LUT, FF, CARRY and DSP of the board's PE array from the committed yosys sweep, with the
    label saying where they come from."""
    b = config().board(board_name)
    sweep = _sweep()
    tool = sweep["tool_version"] if isinstance(sweep["tool_version"], str) else sweep["tool_version"][0]
    label = f"{tool.split(' (')[0].lower()}, pre-place-and-route, no timing ({sweep['date']})"
    row = sweep["boards"].get(b.name)
    if row and (row["rows"], row["cols"]) == (b.array_rows, b.array_cols):
        how = f"{row['rows']}x{row['cols']} {row['how']}"
        vals = {k: row[k] for k in ("lut", "ff", "carry", "dsp")}
    else:   # a board or an array size the sweep did not see: the family's per-PE fit
        fam = FAMILY.get(b.family)
        if fam not in sweep["fits"]:
            raise UnknownBoardError(f"board {b.name}: no yosys figures for family {b.family}; run "
                                    "`lora-qta rtl sweep` to synthesize its array")
        fit = sweep["fits"][fam]
        vals = {k: round(fit[k]["per_pe"] * b.pes + fit[k]["fixed"]) for k in ("lut", "ff", "carry", "dsp")}
        how = f"{b.array_rows}x{b.array_cols} from the {fam} per-PE fit"
    return {**vals, "label": f"{label}, {how}"}


def estimate_resources(board_name: str | None = None) -> dict[str, float | str]:
    """DSP, BRAM36, URAM, LUT and FF of one build and their share of the device (%), with the
    PE array's part (yosys) and the rest (estimate) beside the totals."""
    b = config().board(board_name)
    pe = pe_array_figures(b.name)
    rest_dsp = 12 * b.epilogue_lanes
    rest_lut = 300 * b.epilogue_lanes + 8000
    dsp = pe["dsp"] + rest_dsp
    lut = pe["lut"] + rest_lut
    ab_bytes = 2 * (b.tile_m_max * b.tile_k_max + b.tile_k_max * b.tile_n_max)
    acc_bytes = 2 * b.tile_m_max * b.tile_n_max * 4
    bram = math.ceil(ab_bytes / 4608)
    uram = 0
    if b.uram_total:
        uram = math.ceil(acc_bytes / 36864)
    else:
        bram += math.ceil(acc_bytes / 4608)
    return {
        "dsp": dsp, "dsp_pct": 100.0 * dsp / b.dsp_total,
        "bram36": bram, "bram36_pct": 100.0 * bram / b.bram36_total,
        "uram": uram, "uram_pct": 100.0 * uram / b.uram_total if b.uram_total else 0.0,
        "lut": lut, "lut_pct": 100.0 * lut / b.lut_total,
        "pe_array_dsp": pe["dsp"], "pe_array_lut": pe["lut"], "pe_array_ff": pe["ff"], "pe_array_carry": pe["carry"],
        "pe_array_source": pe["label"],
        "rest_dsp": rest_dsp, "rest_lut": rest_lut,
        "rest_source": "first-order estimate (buffers, loader, epilogue, AXI; formula in lora_qta.hw.resources)",
    }


def resource_table() -> str:
    """Every board's resources as a markdown table (what the README shows)."""
    rows = ["| board | PE array: LUT / FF / DSP (yosys) | rest: LUT / DSP (estimate) | DSP | LUT | BRAM36 | URAM |",
            "|---|---|---|---|---|---|---|"]
    for name in config().boards:
        e = estimate_resources(name)
        uram = f"{e['uram']} ({e['uram_pct']:.0f}%)" if e["uram"] else "0"
        rows.append(f"| {name} | {e['pe_array_lut']:,} / {e['pe_array_ff']:,} / {e['pe_array_dsp']} "
                    f"| {e['rest_lut']:,} / {e['rest_dsp']} | {e['dsp']} ({e['dsp_pct']:.0f}%) "
                    f"| {e['lut'] / 1000:.0f}k ({e['lut_pct']:.0f}%) | {e['bram36']} ({e['bram36_pct']:.0f}%) | {uram} |")
    e = estimate_resources(next(iter(config().boards)))
    rows += ["", f"PE array: {e['pe_array_source'].rsplit(', ', 1)[0]}. Rest: {e['rest_source']}."]
    return "\n".join(rows) + "\n"


# --------------------------------------------------------------- kernel v2 hand count
# BRAM36 aspect ratios (width, depth) in simple-dual-port mode, and the URAM288 (72 x 4096).
_BRAM36 = ((1, 32768), (2, 16384), (4, 8192), (9, 4096), (18, 2048), (36, 1024), (72, 512))


def _bram36(width: int, depth: int) -> int:
    """BRAM36 blocks of one width x depth memory, best aspect ratio."""
    return min(math.ceil(width / w) * math.ceil(depth / d) for w, d in _BRAM36)


def _uram(width: int, depth: int) -> int:
    return math.ceil(width / 72) * math.ceil(depth / 4096)


def _lutram(width: int, depth: int, read_ports: int = 1) -> int:
    """LUTs of a simple-dual-port LUTRAM: RAM32M16 (8 LUT6 = 32 deep x 14 bits) up to 32 deep,
    else RAM64M8 (8 LUT6 = 64 deep x 7 bits) per 64 entries; every extra read port replicates it."""
    if depth <= 32:
        return math.ceil(width / 14) * 8 * read_ports
    return math.ceil(width / 7) * 8 * math.ceil(depth / 64) * read_ports


def hand_count_table(board_name: str | None = None) -> list[dict[str, Any]]:
    """The hand count of what the kernel binds on ``board`` (not a synthesis result), one row per
    part of the design with ``how`` each figure was obtained. The ``pe_array`` row is the one the
    RTL work (issue 12) replaces with yosys figures."""
    b = config().board(board_name)
    s = config().schedule
    r, c, sub, bb = b.array_rows, b.array_cols, s.min_subarray, b.axi_bytes
    nba, nbb = c // sub, r // sub
    uram = b.uram_total > 0
    rows: list[dict[str, Any]] = []

    def add(part: str, how: str, dsp=0, bram36=0, uram_=0, lut=0, ff=0):
        rows.append({"part": part, "dsp": dsp, "bram36": bram36, "uram": uram_, "lut": lut, "ff": ff,
                     "how": how})

    add("pe_array", f"{r}x{c} PEs, one INT8 MAC per DSP48 (no WP486 packing); per PE 33 LUT "
        "(yosys figure of a systolic OS PE with split muxes, hls-architecture.md) + 8 LUT OS/WS mode "
        "muxes; FF: a 8 + b/weight 8 + accumulator 32 + drain register 32 + partial sum 32",
        dsp=b.pes // b.macs_per_dsp, lut=41 * b.pes, ff=112 * b.pes)
    # feeders: skew histories (LUTRAM, depth = side, one byte lane each) and WS tap de-skew SRLs
    add("feeders", f"A: {nba} boundary feeders x {r} lanes, B: {nbb} x {c} lanes, each a {max(r, c)}-deep "
        f"byte history in LUTRAM (one write, one read at the lane's skew); WS de-skew of {nbb} tap "
        f"rows x {c} INT32 columns in SRL32 (1 LUT per bit)",
        lut=_lutram(8, max(r, c)) * (nba * r + nbb * c) + nbb * c * 32, ff=8 * (nba * r + nbb * c))
    slots = 2
    a_prim = (_uram(8 * r, b.a_depth) if uram else 0, 0 if uram else _bram36(8 * r, b.a_depth))
    b_prim = (_uram(8 * c, b.b_depth) if uram else 0, 0 if uram else _bram36(8 * c, b.b_depth))
    add("operand_banks", f"2 slots x (A bank 0: {b.a_depth} x {8 * r} bit in "
        f"{'URAM' if uram else 'BRAM'}, B bank 0: {b.b_depth} x {8 * c} bit; side banks paired two "
        f"per dual-port BRAM: {(nba - 1 + 1) // 2} x {2 * b.a_side_depth} x {8 * r} bit (A), "
        f"{(nbb - 1 + 1) // 2} x {2 * b.b_side_depth} x {8 * c} bit (B))",
        uram_=slots * (a_prim[0] + b_prim[0]),
        bram36=slots * (a_prim[1] + b_prim[1] + (nba // 2) * _bram36(8 * r, 2 * b.a_side_depth)
                        + (nbb // 2) * _bram36(8 * c, 2 * b.b_side_depth)))
    acc_prim = (_uram(64, b.acc_depth) if uram else 0, 0 if uram else _bram36(64, b.acc_depth))
    add("accumulators", f"2 slots x (bottom tap row: {c // 2} pair banks of {b.acc_depth} x 64 bit in "
        f"{'URAM' if uram else 'BRAM'}; {nbb - 1} other tap rows x {c // 2} pair banks of "
        f"{b.acc_side_depth} x 64 bit in LUTRAM with {b.epilogue_rows} read port(s))",
        uram_=slots * (c // 2) * acc_prim[0], bram36=slots * (c // 2) * acc_prim[1],
        lut=slots * (nbb - 1) * (c // 2) * _lutram(64, b.acc_side_depth, b.epilogue_rows))
    seg = max(b.tile_k_max, b.tile_m_max, b.tile_n_max)
    trows = max(r, c) // b.axi_ports
    add("loader", f"per port 2 row buffers of {trows} rows x {seg // bb} beats ({8 * bb}-bit words) in "
        f"BRAM, a {trows}-beat prefetch register for the transposed emit; word assembly, lane "
        "replication, bank-address counters",
        bram36=b.axi_ports * 2 * _bram36(8 * bb, trows * seg // bb), lut=3000 + 600 * b.axi_ports,
        ff=4000 + b.axi_ports * 2 * trows * 8 * bb)
    lanes = b.epilogue_rows * sub
    add("epilogue", f"{lanes} lanes: 32x32 signed multiply (4 DSP), hash mix32 two 32-bit constant "
        "multiplies (3 DSP each), one 64-bit shifter, rounding, saturation, amax; accumulator "
        "read mux over tap rows and column groups",
        dsp=10 * lanes, lut=700 * lanes + 64 * 4 * nbb * (c // 4) // 4, ff=600 * lanes)
    add("fetch_write", f"{b.axi_ports} fetch + {b.axi_ports} write processes: per fetcher one shared 32x32 "
        "multiplier for the conv pixel address (4 DSP) and 64-bit address adders (2 DSP), burst counters",
        dsp=6 * b.axi_ports, lut=800 * 2 * b.axi_ports, ff=900 * 2 * b.axi_ports)
    fifo_bits = b.axi_ports * (64 * b.axi_data_width + 32 * 128) + 4 * 128 * 32
    add("fifos", "beat FIFOs (depth 64) per port, store-word FIFOs (depth 32), descriptor and count "
        "FIFOs (depth 4-64) in BRAM18/SRL", bram36=math.ceil(fifo_bits / 36864) + b.axi_ports,
        lut=2000)
    add("axi_control", f"{b.axi_ports} m_axi adapters (read + write channels, 64-beat bursts), "
        "s_axilite with the register map, descriptor/model/counter processes",
        lut=3500 * b.axi_ports + 3000, ff=4000 * b.axi_ports + 3000, bram36=b.axi_ports)
    return rows


def hand_count_markdown() -> str:
    """The hand-count tables of every board as markdown (hls/README.md shows them)."""
    out = []
    for name in config().boards:
        b = config().board(name)
        rows = hand_count_table(name)
        est = hand_count_totals(name)
        out += [f"**{name}** ({b.part}, {b.array_rows}x{b.array_cols} PEs @ {b.clock_mhz} MHz)", "",
                "| part | DSP | BRAM36 | URAM | LUT | FF | how the figure was obtained |",
                "|---|---:|---:|---:|---:|---:|---|"]
        for r in rows:
            out.append(f"| {r['part']} | {r['dsp']} | {r['bram36']} | {r['uram']} | {r['lut']} | {r['ff']} | {r['how']} |")
        out.append(f"| **total** | {est['dsp']:.0f} ({est['dsp_pct']:.0f}%) | {est['bram36']:.0f} ({est['bram36_pct']:.0f}%) | "
                   f"{est['uram']:.0f} ({est['uram_pct']:.0f}%) | {est['lut']:.0f} ({est['lut_pct']:.0f}%) | "
                   f"{est['ff']:.0f} ({est['ff_pct']:.0f}%) | of {b.dsp_total} DSP, {b.bram36_total} BRAM36, "
                   f"{b.uram_total} URAM, {b.lut_total} LUT, {b.ff_total} FF |")
        out.append("")
    return "\n".join(out)


def hand_count_totals(board_name: str | None = None) -> dict[str, float]:
    """Totals of :func:`hand_count_table` with the share of the part (a hand count, not synthesis)."""
    b = config().board(board_name)
    rows = hand_count_table(board_name)
    tot = {k: sum(r[k] for r in rows) for k in ("dsp", "bram36", "uram", "lut", "ff")}
    out: dict[str, float] = {}
    for k, total in (("dsp", b.dsp_total), ("bram36", b.bram36_total), ("uram", b.uram_total),
                     ("lut", b.lut_total), ("ff", b.ff_total)):
        out[k] = tot[k]
        out[k + "_pct"] = 100.0 * tot[k] / total if total else 0.0
    return out
