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

Standard library only; ``lora-qta config estimate`` and ``lora-qta info`` print it, and the
README's board table shows it.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

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
