"""The hardware configuration: one TOML file (``hardware.toml``) read here.

Every build of the accelerator is described once in ``hardware.toml``. This module
reads it into :class:`BoardConfig` and generates from it what other parts need:

* ``header(board)``: the C++ header the HLS kernel includes (``qta_config.h``);
* ``verilog_header(board)``: the Verilog header of the RTL PE array (``qta_config.vh``);
* ``tcl(board)``: the Tcl variables of the Vitis HLS and Vivado flows;
* ``register_table()``: the AXI-lite register map as a markdown table (README);
* ``estimate_resources(board)``: a documented resource *estimate* per board.

It depends on the standard library only, so build machines can run
``python3 -m lora_qta.hwconfig header --board zcu104`` without the rest of the package.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import QtaError

try:  # Python 3.11+; the PYNQ 3.x board images run Python 3.10, which needs the tomli backport
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

CONFIG_PATH = Path(__file__).with_name("hardware.toml")
DEFAULT_BOARD = "zcu104"


class UnknownBoardError(QtaError, ValueError):
    """A board name that ``hardware.toml`` does not describe."""


@dataclass(frozen=True)
class Schedule:
    """Constants of the cycle model (cycles); see README, "Cycle model"."""

    call_overhead: int
    step_overhead: int
    pipeline_depth: int
    ddr_latency: int
    min_subarray: int


@dataclass(frozen=True)
class BoardConfig:
    """One hardware build: board, part, clock, PE array, buffers and limits."""

    name: str
    description: str
    family: str
    part: str
    board_part: str
    clock_mhz: int
    array_rows: int
    array_cols: int
    macs_per_dsp: int
    axi_data_width: int
    epilogue_lanes: int
    tile_m_max: int
    tile_n_max: int
    tile_k_max: int
    max_m: int
    max_n: int
    max_k: int
    kernel_base_address: int
    dsp_total: int
    bram36_total: int
    uram_total: int
    lut_total: int

    @property
    def pes(self) -> int:
        """Number of processing elements (MACs per cycle at full use)."""
        return self.array_rows * self.array_cols

    @property
    def axi_bytes(self) -> int:
        """Bytes per AXI beat on one memory port."""
        return self.axi_data_width // 8

    @property
    def splits(self) -> tuple[int, ...]:
        """Partition exponents the array supports, from narrowest rows to narrowest columns.

        ``s > 0``: 2**s sub-arrays of R x C/2**s side by side, acting as an (R*2**s) x (C/2**s)
        logical array (independent row blocks of the output). ``s < 0``: 2**-s sub-arrays of
        R/2**-s x C stacked, acting as an (R/2**-s) x (C*2**-s) logical array (independent
        column blocks). ``s = 0`` is the whole array.
        """
        sub = config().schedule.min_subarray
        lo = -int(math.log2(self.array_rows // sub))
        hi = int(math.log2(self.array_cols // sub))
        return tuple(range(lo, hi + 1))


@dataclass(frozen=True)
class Config:
    """The whole ``hardware.toml``: kernel identity, schedule constants, registers, boards."""

    top: str
    vlnv: str
    address_range: int
    config_version: int
    schedule: Schedule
    registers: dict[str, int]
    flags: dict[str, int]
    status: dict[str, int]
    boards: dict[str, BoardConfig]
    digest: str

    def board(self, name: str | None = None) -> BoardConfig:
        """The configuration of ``name`` (default: ZCU104); a clear error for unknown boards."""
        key = (name or DEFAULT_BOARD).lower().replace("-", "_")
        if key not in self.boards:
            raise UnknownBoardError(
                f"unknown board {name!r}: hardware.toml describes {', '.join(sorted(self.boards))}"
            )
        return self.boards[key]


@lru_cache(maxsize=1)
def config() -> Config:
    """Read and validate ``hardware.toml`` once."""
    raw_bytes = CONFIG_PATH.read_bytes()
    raw: dict[str, Any] = tomllib.loads(raw_bytes.decode())
    kernel = raw["kernel"]
    board_fields = {f.name for f in fields(BoardConfig)} - {"name"}
    boards = {}
    for name, table in raw["boards"].items():
        missing = board_fields - set(table)
        extra = set(table) - board_fields
        if missing or extra:
            raise ValueError(f"hardware.toml board {name}: missing {sorted(missing)}, unknown {sorted(extra)}")
        boards[name] = BoardConfig(name=name, **table)
    cfg = Config(
        top=kernel["top"],
        vlnv=kernel["vlnv"],
        address_range=kernel["address_range"],
        config_version=kernel["config_version"],
        schedule=Schedule(**raw["schedule"]),
        registers=dict(raw["registers"]),
        flags=dict(raw["flags"]),
        status=dict(raw["status"]),
        boards=boards,
        digest=hashlib.sha256(raw_bytes).hexdigest()[:16],
    )
    for b in boards.values():
        for side in (b.array_rows, b.array_cols):
            if side & (side - 1) or side < cfg.schedule.min_subarray:
                raise ValueError(f"board {b.name}: array sides must be powers of two >= min_subarray")
    return cfg


def board_digest(board: BoardConfig) -> str:
    """A hash of everything that makes a bitstream of ``board``: the board table, registers, flags."""
    cfg = config()
    text = repr((board, cfg.top, cfg.vlnv, cfg.config_version, sorted(cfg.registers.items()),
                 sorted(cfg.flags.items()), sorted(cfg.status.items()), cfg.schedule))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- generators

def header(board_name: str | None = None) -> str:
    """The C++ header ``qta_config.h`` for one board: sizes, limits, register offsets."""
    cfg = config()
    b = cfg.board(board_name)
    s = cfg.schedule
    lines = [
        "// Generated from host/lora_qta/hardware.toml by `lora-qta config header`. Do not edit.",
        f"// board {b.name}: {b.description}",
        "#ifndef QTA_CONFIG_H",
        "#define QTA_CONFIG_H",
        f'#define QTA_BOARD "{b.name}"',
        f'#define QTA_CONFIG_DIGEST "{board_digest(b)}"',
        f"#define QTA_ROWS {b.array_rows}",
        f"#define QTA_COLS {b.array_cols}",
        f"#define QTA_AXI_BYTES {b.axi_bytes}",
        f"#define QTA_AXI_BITS {b.axi_data_width}",
        f"#define QTA_EPI_LANES {b.epilogue_lanes}",
        f"#define QTA_ACC_IMPL {'uram' if b.uram_total else 'bram'}",
        f"#define QTA_TILE_M_MAX {b.tile_m_max}",
        f"#define QTA_TILE_N_MAX {b.tile_n_max}",
        f"#define QTA_TILE_K_MAX {b.tile_k_max}",
        f"#define QTA_MAX_M {b.max_m}",
        f"#define QTA_MAX_N {b.max_n}",
        f"#define QTA_MAX_K {b.max_k}",
        f"#define QTA_SPLIT_MIN ({min(b.splits)})",
        f"#define QTA_SPLIT_MAX ({max(b.splits)})",
        f"#define QTA_MIN_SUB {s.min_subarray}",
        f"#define QTA_CALL_OVERHEAD {s.call_overhead}",
        f"#define QTA_STEP_OVERHEAD {s.step_overhead}",
        f"#define QTA_PIPELINE_DEPTH {s.pipeline_depth}",
        f"#define QTA_DDR_LATENCY {s.ddr_latency}",
    ]
    for name, bit in cfg.flags.items():
        lines.append(f"#define QTA_FLAG_{name.upper()} {bit}")
    for name, bit in cfg.status.items():
        lines.append(f"#define QTA_STATUS_{name.upper()} {bit}")
    for name, off in cfg.registers.items():
        lines.append(f"#define QTA_REG_{name.upper()} 0x{off:02X}")
    # Pinned s_axilite offsets, as pragmas usable inside the kernel body.
    args = ["a", "b", "c", "scales", "m", "n", "k", "lda", "ldb", "ldc", "tile_m", "tile_n",
            "tile_k", "flags", "mult", "shift", "seed", "status", "cycles"]
    pragmas = [f'_Pragma("HLS INTERFACE mode=s_axilite port={a} offset=0x{cfg.registers[a]:02X} bundle=control")'
               for a in args]
    lines.append("#define QTA_AXILITE_PRAGMAS \\")
    lines.extend(f"    {p} \\" for p in pragmas)
    lines.append('    _Pragma("HLS INTERFACE mode=s_axilite port=return bundle=control")')
    lines.append("#endif")
    return "\n".join(lines) + "\n"


# The RTL PE array's parameters (hls/rtl/qta_array.v): `define name -> value of a board.
_VH_DEFINES = {
    "QTA_ROWS": lambda b, s: b.array_rows,
    "QTA_COLS": lambda b, s: b.array_cols,
    "QTA_MIN_SUB": lambda b, s: s.min_subarray,
    "QTA_OPERAND_BITS": lambda b, s: 8,
    "QTA_ACC_BITS": lambda b, s: 32,
    "QTA_DIM_BITS": lambda b, s: max(b.tile_m_max, b.tile_n_max, b.tile_k_max).bit_length(),
    "QTA_SPLIT_MIN": lambda b, s: f"({min(b.splits)})",
    "QTA_SPLIT_MAX": lambda b, s: f"({max(b.splits)})",
}


def verilog_header(board_name: str | None = None) -> str:
    """The Verilog header ``qta_config.vh`` of the RTL PE array (hls/rtl) for one board."""
    cfg = config()
    b = cfg.board(board_name)
    lines = ["// Generated from host/lora_qta/hardware.toml by `lora-qta config vh`. Do not edit.",
             f"// board {b.name}: {b.description}", "`ifndef QTA_CONFIG_VH", "`define QTA_CONFIG_VH",
             f'`define QTA_BOARD "{b.name}"']
    lines += [f"`define {k} {f(b, cfg.schedule)}" for k, f in _VH_DEFINES.items()]
    lines.append("`endif")
    return "\n".join(lines) + "\n"


def tcl(board_name: str | None = None) -> str:
    """Tcl ``set`` lines for the Vitis HLS and Vivado flows of one board."""
    cfg = config()
    b = cfg.board(board_name)
    values = {
        "QTA_BOARD": b.name,
        "QTA_FAMILY": b.family,
        "QTA_PART": b.part,
        "QTA_BOARD_PART": b.board_part,
        "QTA_CLOCK_MHZ": b.clock_mhz,
        "QTA_CLOCK_PERIOD_NS": f"{1000.0 / b.clock_mhz:.3f}",
        "QTA_TOP": cfg.top,
        "QTA_VLNV": cfg.vlnv,
        "QTA_AXI_DATA_WIDTH": b.axi_data_width,
        "QTA_KERNEL_BASE_ADDRESS": f"0x{b.kernel_base_address:08X}",
        "QTA_ADDRESS_RANGE": cfg.address_range,
        "QTA_BITSTREAM_NAME": f"qta_{b.name}",
        "QTA_CONFIG_DIGEST": board_digest(b),
    }
    out = ["# Generated from host/lora_qta/hardware.toml by `lora-qta config tcl`. Do not edit."]
    out += [f"set {k} {{{v}}}" for k, v in values.items()]
    return "\n".join(out) + "\n"


_REG_DOC = {
    "ctrl": "bit0 ap_start, bit1 ap_done (clear on read), bit2 ap_idle, bit3 ap_ready",
    "gie": "global interrupt enable", "ier": "interrupt enable (bit0 done)", "isr": "interrupt status",
    "a": "address of A (64-bit, INT8)", "b": "address of B (64-bit, INT8)",
    "c": "address of C (64-bit, INT32 or INT8)", "scales": "address of per-row/column (mult, shift) pairs",
    "m": "rows of op(A) and C", "n": "columns of op(B) and C", "k": "inner dimension",
    "lda": "leading dimension of A as stored", "ldb": "leading dimension of B as stored",
    "ldc": "leading dimension of C", "tile_m": "block rows (planner)", "tile_n": "block columns (planner)",
    "tile_k": "K chunk (planner)", "flags": "mode bits (table below)", "mult": "per-tensor requant multiplier",
    "shift": "per-tensor requant right shift", "seed": "stochastic rounding seed",
    "status": "out: bit0 saturated, bit1 bad arguments", "status_ctrl": "out: bit0 status valid",
    "cycles": "out: cycle counter (64-bit, low word first)", "cycles_ctrl": "out: bit0 cycles valid",
}


_FLAG_DOC = {
    "trans_a": "op(A) = A^T", "trans_b": "op(B) = B^T", "dataflow": "0 weight-stationary, 1 output-stationary",
    "split_lsb": "4-bit signed partition exponent s (bits 4..7)", "out_int8": "1: requantized INT8 output",
    "accumulate": "1: add the existing C", "scale_mode_lsb": "0 per tensor, 1 per row, 2 per column (bits 10..11)",
    "stochastic": "1: stochastic rounding, 0: nearest even",
}


def register_table() -> str:
    """The register map as a markdown table (what the README shows)."""
    cfg = config()
    rows = ["| offset | register | meaning |", "|---|---|---|"]
    for name, off in sorted(cfg.registers.items(), key=lambda kv: kv[1]):
        rows.append(f"| 0x{off:02X} | `{name}` | {_REG_DOC.get(name, '')} |")
    rows += ["", "| flags bit | field | meaning |", "|---|---|---|"]
    for name, bit in cfg.flags.items():
        rows.append(f"| {bit} | `{name}` | {_FLAG_DOC.get(name, '')} |")
    return "\n".join(rows) + "\n"


def estimate_resources(board_name: str | None = None) -> dict[str, float]:
    """A first-order resource estimate of one build (not a synthesis result).

    DSP: PEs / macs_per_dsp for the array, plus 12 DSP per epilogue lane (a 32x32 multiply of
    the requantizer, 4 DSP48, and the two 32x32 multiplies of the rounding hash, 8 DSP48).
    Memory: A and B buffers (INT8, ping-pong) and the INT32 accumulator (ping-pong) in
    BRAM36 (4.5 KiB usable each) or, where the board has it, the accumulator in URAM
    (36 KiB each). LUTs: ~40 per PE for operand muxes and partition routing, plus ~300 per lane.
    """
    b = config().board(board_name)
    dsp = math.ceil(b.pes / b.macs_per_dsp) + 12 * b.epilogue_lanes
    ab_bytes = 2 * (b.tile_m_max * b.tile_k_max + b.tile_k_max * b.tile_n_max)
    acc_bytes = 2 * b.tile_m_max * b.tile_n_max * 4
    bram = math.ceil(ab_bytes / 4608)
    uram = 0
    if b.uram_total:
        uram = math.ceil(acc_bytes / 36864)
    else:
        bram += math.ceil(acc_bytes / 4608)
    lut = 40 * b.pes + 300 * b.epilogue_lanes + 8000
    return {
        "dsp": dsp, "dsp_pct": 100.0 * dsp / b.dsp_total,
        "bram36": bram, "bram36_pct": 100.0 * bram / b.bram36_total,
        "uram": uram, "uram_pct": 100.0 * uram / b.uram_total if b.uram_total else 0.0,
        "lut": lut, "lut_pct": 100.0 * lut / b.lut_total,
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m lora_qta.hwconfig {header,tcl,regmap,estimate} --board B``."""
    p = argparse.ArgumentParser(prog="lora_qta.hwconfig", description=__doc__.split("\n")[0])
    p.add_argument("what", choices=["header", "vh", "tcl", "regmap", "estimate", "digest"],
                   help="header: qta_config.h for HLS; vh: qta_config.vh for the RTL array; tcl: variables for the Tcl flows; "
                        "regmap: register table (markdown); estimate: resource estimate; digest: config hash")
    p.add_argument("--board", default=DEFAULT_BOARD, help=f"board name (default {DEFAULT_BOARD})")
    p.add_argument("-o", "--output", type=Path, help="write to this file instead of standard output")
    a = p.parse_args(argv)
    if a.what == "header":
        text = header(a.board)
    elif a.what == "vh":
        text = verilog_header(a.board)
    elif a.what == "tcl":
        text = tcl(a.board)
    elif a.what == "regmap":
        text = register_table()
    elif a.what == "digest":
        text = board_digest(config().board(a.board)) + "\n"
    else:
        text = "".join(f"{k} {v:.1f}\n" if isinstance(v, float) else f"{k} {v}\n"
                       for k, v in estimate_resources(a.board).items())
    if a.output:
        a.output.parent.mkdir(parents=True, exist_ok=True)
        a.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
