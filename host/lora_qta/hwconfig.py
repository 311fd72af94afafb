"""The hardware configuration: one TOML file (``hardware.toml``) read here.

Every build of the accelerator is described once in ``hardware.toml``. This module
reads it into :class:`Config` / :class:`BoardConfig` and generates from it what other parts need:

* ``header(board)``: the C++ header the HLS kernel includes (``qta_config.h``): sizes, limits,
  schedule constants, bits, register offsets, and from the ordered argument table the kernel's
  parameter list (``QTA_TOP_PARAMS``), its argument list (``QTA_TOP_ARGS``) and its INTERFACE
  pragmas (``QTA_INTERFACE_PRAGMAS``);
* ``tcl(board)``: the Tcl variables of the Vitis HLS and Vivado flows, including the resource
  budget the csynth gate checks;
* ``register_table()``: the AXI-lite register map as a markdown table (README);
* ``resource_table(board)`` / ``estimate_resources(board)``: the hand count of what the kernel
  binds (hls/README.md explains every rule).

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

ARG_WORDS = {"pointer": 3, "scalar": 2, "scalar64": 3, "out32": 2, "out64": 3}
"""32-bit s_axilite words per argument kind (Vitis HLS layout: a 64-bit address, input or output
takes two data words and a reserved or ap_vld word, a 32-bit one a data word and one more)."""
ARG_TYPES = {"scalar": ("uint32_t", "int32_t"), "scalar64": ("uint64_t",), "out32": ("uint32_t",),
             "out64": ("uint64_t",)}
"""The C types each value kind may have (a pointer's ``type`` is its element type)."""
FIRST_ARG_OFFSET = 0x10
"""Vitis HLS puts the first argument after the four control registers."""


class UnknownBoardError(QtaError, ValueError):
    """A board name that ``hardware.toml`` does not describe."""


class ConfigError(QtaError, ValueError):
    """``hardware.toml`` is inconsistent (the message says which entry and how to fix it)."""


@dataclass(frozen=True)
class KernelArg:
    """One argument of the kernel's top function, as ``hardware.toml`` lists it."""

    name: str
    kind: str        # pointer, scalar, scalar64, out32 or out64 (see ARG_WORDS)
    type: str        # C type; for a pointer the element type
    offset: int      # s_axilite offset of its first word
    doc: str         # the register map's text
    bundle: str = ""  # m_axi bundle (pointers)
    depth: int = 0    # m_axi depth in elements for co-simulation (pointers)

    @property
    def is_input(self) -> bool:
        """Written by the host before ``ap_start`` (pointers and scalars)."""
        return self.kind in ("pointer", "scalar", "scalar64")

    @property
    def wide(self) -> bool:
        """Whether the value takes two data words (``name_1``, ``name_2`` in a ``.hwh``)."""
        return self.kind in ("pointer", "scalar64", "out64")

    @property
    def valid_offset(self) -> int | None:
        """Offset of an output's ap_vld word (bit 0: the value is valid), else None."""
        return {"out32": self.offset + 4, "out64": self.offset + 8}.get(self.kind)

    @property
    def c_param(self) -> str:
        """The parameter in the C prototype."""
        if self.kind in ("scalar", "scalar64"):
            return f"{self.type} {self.name}"
        return f"{self.type} *{self.name}"


@dataclass(frozen=True)
class Schedule:
    """Constants of the modelled cycle count (cycles); see hls/README.md, "Cycle model"."""

    call_overhead: int
    ddr_latency: int
    burst_overhead: int
    load_pipeline: int
    array_pipeline: int
    store_pipeline: int
    min_subarray: int


@dataclass(frozen=True)
class BoardConfig:
    """One hardware build: board, part, clock, PE array, ports, buffers and limits."""

    name: str
    description: str
    family: str
    part: str
    board_part: str
    clock_mhz: int
    array_rows: int
    array_cols: int
    macs_per_dsp: int
    axi_ports: int
    axi_data_width: int
    epilogue_rows: int
    tile_m_max: int
    tile_n_max: int
    tile_k_max: int
    a_depth: int
    a_side_depth: int
    b_depth: int
    b_side_depth: int
    acc_depth: int
    acc_side_depth: int
    max_m: int
    max_n: int
    max_k: int
    kernel_base_address: int
    dsp_total: int
    bram36_total: int
    uram_total: int
    lut_total: int
    ff_total: int

    @property
    def pes(self) -> int:
        """Number of processing elements (MACs per cycle at full use)."""
        return self.array_rows * self.array_cols

    @property
    def axi_bytes(self) -> int:
        """Bytes per AXI beat on one memory port."""
        return self.axi_data_width // 8

    @property
    def min_sub(self) -> int:
        """Smallest sub-array side (``schedule.min_subarray``)."""
        return config().schedule.min_subarray

    @property
    def epilogue_lanes(self) -> int:
        """Outputs requantized per cycle: ``epilogue_rows`` rows of ``min_subarray`` columns."""
        return self.epilogue_rows * self.min_sub

    @property
    def splits(self) -> tuple[int, ...]:
        """Partition exponents the array supports, from narrowest rows to narrowest columns.

        ``s > 0``: 2**s sub-arrays of R x C/2**s side by side, acting as an (R*2**s) x (C/2**s)
        logical array (independent row blocks of the output). ``s < 0``: 2**-s sub-arrays of
        R/2**-s x C stacked, acting as an (R/2**-s) x (C*2**-s) logical array (independent
        column blocks). ``s = 0`` is the whole array.
        """
        sub = self.min_sub
        lo = -int(math.log2(self.array_rows // sub))
        hi = int(math.log2(self.array_cols // sub))
        return tuple(range(lo, hi + 1))


@dataclass(frozen=True)
class Config:
    """The whole ``hardware.toml``: kernel identity and arguments, registers, bits, schedule
    constants, boards."""

    top: str
    vlnv: str
    address_range: int
    config_version: int
    args: tuple[KernelArg, ...]
    schedule: Schedule
    registers: dict[str, int]       # every register word the map names -> offset
    register_docs: dict[str, str]
    ctrl_bits: dict[str, int]
    flags: dict[str, int]
    flag_docs: dict[str, str]
    status: dict[str, int]
    boards: dict[str, BoardConfig]
    digest: str

    @property
    def inputs(self) -> tuple[KernelArg, ...]:
        """The arguments the host writes, in signature order."""
        return tuple(a for a in self.args if a.is_input)

    @property
    def outputs(self) -> tuple[KernelArg, ...]:
        """The arguments the kernel writes, in signature order."""
        return tuple(a for a in self.args if not a.is_input)

    def board(self, name: str | None = None) -> BoardConfig:
        """The configuration of ``name`` (default: ZCU104); a clear error for unknown boards."""
        key = (name or DEFAULT_BOARD).lower().replace("-", "_")
        if key not in self.boards:
            raise UnknownBoardError(
                f"unknown board {name!r}: hardware.toml describes {', '.join(sorted(self.boards))}"
            )
        return self.boards[key]


def _args(raw: list[dict[str, Any]]) -> tuple[KernelArg, ...]:
    """The kernel's arguments, checked against the Vitis HLS s_axilite layout."""
    args, offset = [], FIRST_ARG_OFFSET
    for entry in raw:
        arg = KernelArg(**entry)
        if arg.kind not in ARG_WORDS:
            raise ConfigError(f"hardware.toml argument {arg.name}: kind {arg.kind!r} is not one of "
                              f"{', '.join(ARG_WORDS)}")
        if arg.kind in ARG_TYPES and arg.type not in ARG_TYPES[arg.kind]:
            raise ConfigError(f"hardware.toml argument {arg.name}: a {arg.kind} is "
                              f"{' or '.join(ARG_TYPES[arg.kind])}, not {arg.type!r}")
        if arg.kind == "pointer" and not (arg.bundle and arg.depth):
            raise ConfigError(f"hardware.toml argument {arg.name}: a pointer needs its m_axi bundle and depth")
        if arg.offset != offset:
            raise ConfigError(f"hardware.toml argument {arg.name} is at 0x{arg.offset:02X}, but Vitis HLS "
                              f"lays it out at 0x{offset:02X} after the arguments before it; fix its offset")
        args.append(arg)
        offset += 4 * ARG_WORDS[arg.kind]
    return tuple(args)


def _register_map(control: dict[str, dict], args: tuple[KernelArg, ...]) -> tuple[dict, dict]:
    """(name -> offset, name -> doc) of every named register word: the control registers, each
    argument's first word and each output's ap_vld word (``<name>_ctrl``)."""
    offsets = {name: entry["offset"] for name, entry in control.items()}
    docs = {name: entry["doc"] for name, entry in control.items()}
    for a in args:
        offsets[a.name], docs[a.name] = a.offset, a.doc
        if a.valid_offset is not None:
            offsets[f"{a.name}_ctrl"], docs[f"{a.name}_ctrl"] = a.valid_offset, f"out: bit0 {a.name} valid"
    return offsets, docs


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
            raise ConfigError(f"hardware.toml board {name}: missing {sorted(missing)}, unknown {sorted(extra)}; "
                              "give every board table the same keys as the others")
        boards[name] = BoardConfig(name=name, **table)
    args = _args(kernel["args"])
    registers, register_docs = _register_map(raw["control"], args)
    cfg = Config(
        top=kernel["top"],
        vlnv=kernel["vlnv"],
        address_range=kernel["address_range"],
        config_version=kernel["config_version"],
        args=args,
        schedule=Schedule(**raw["schedule"]),
        registers=registers,
        register_docs=register_docs,
        ctrl_bits=dict(raw["ctrl_bits"]),
        flags={name: entry["bit"] for name, entry in raw["flags"].items()},
        flag_docs={name: entry["doc"] for name, entry in raw["flags"].items()},
        status=dict(raw["status"]),
        boards=boards,
        digest=hashlib.sha256(raw_bytes).hexdigest()[:16],
    )
    sub = cfg.schedule.min_subarray
    for b in boards.values():
        for side in (b.array_rows, b.array_cols):
            if side & (side - 1) or side < 2 * sub:
                raise ConfigError(f"board {b.name}: array sides must be powers of two >= 2 x min_subarray")
        if b.axi_ports != 4 or sub % b.axi_ports:
            raise ConfigError(f"board {b.name}: the kernel has four m_axi bundles (rd0..3/wr0..3) and "
                              "min_subarray must be a multiple of axi_ports")
        if b.axi_bytes & (b.axi_bytes - 1) or 4 * sub < b.axi_bytes or sub * 4 % b.axi_bytes:
            raise ConfigError(f"board {b.name}: a store word (min_subarray INT32) must hold whole beats")
        for t in (b.tile_m_max, b.tile_n_max, b.tile_k_max):
            if t % b.axi_bytes:
                raise ConfigError(f"board {b.name}: tile limits must be multiples of the beat ({b.axi_bytes})")
    return cfg


def board_digest(board: BoardConfig) -> str:
    """A hash of everything that makes a bitstream of ``board``: the board table, the kernel's
    arguments, registers, bits and schedule."""
    cfg = config()
    args = tuple((a.name, a.kind, a.type, a.offset, a.bundle, a.depth) for a in cfg.args)
    text = repr((board, cfg.top, cfg.vlnv, cfg.config_version, args, sorted(cfg.registers.items()),
                 sorted(cfg.ctrl_bits.items()), sorted(cfg.flags.items()), sorted(cfg.status.items()),
                 cfg.schedule))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- generators

def _pragmas() -> list[str]:
    """The INTERFACE pragmas of the top function: an m_axi port per pointer, every argument on
    the s_axilite control bundle at its pinned offset, and the control protocol."""
    cfg = config()
    out = [f"HLS INTERFACE mode=m_axi port={a.name} bundle={a.bundle} offset=slave depth={a.depth} "
           f"max_read_burst_length=64 max_write_burst_length=64 num_read_outstanding=8 "
           f"num_write_outstanding=8" for a in cfg.args if a.kind == "pointer"]
    out += [f"HLS INTERFACE mode=s_axilite port={a.name} offset=0x{a.offset:02X} bundle=control"
            for a in cfg.args]
    out.append("HLS INTERFACE mode=s_axilite port=return bundle=control")
    return out


def header(board_name: str | None = None) -> str:
    """The C++ header ``qta_config.h`` for one board."""
    cfg = config()
    b = cfg.board(board_name)
    s = cfg.schedule
    values = {
        "ROWS": b.array_rows, "COLS": b.array_cols, "AXI_PORTS": b.axi_ports,
        "AXI_BYTES": b.axi_bytes, "AXI_BITS": b.axi_data_width, "EPI_ROWS": b.epilogue_rows,
        "TILE_M_MAX": b.tile_m_max, "TILE_N_MAX": b.tile_n_max, "TILE_K_MAX": b.tile_k_max,
        "A_DEPTH": b.a_depth, "A_SIDE_DEPTH": b.a_side_depth, "B_DEPTH": b.b_depth,
        "B_SIDE_DEPTH": b.b_side_depth, "ACC_DEPTH": b.acc_depth, "ACC_SIDE_DEPTH": b.acc_side_depth,
        "MAX_M": b.max_m, "MAX_N": b.max_n, "MAX_K": b.max_k,
        "SPLIT_MIN": f"({min(b.splits)})", "SPLIT_MAX": f"({max(b.splits)})",
        "MIN_SUB": s.min_subarray, "CALL_OVERHEAD": s.call_overhead, "DDR_LATENCY": s.ddr_latency,
        "BURST_OVERHEAD": s.burst_overhead,
        "LOAD_PIPELINE": s.load_pipeline, "ARRAY_PIPELINE": s.array_pipeline,
        "STORE_PIPELINE": s.store_pipeline,
        "OPND_IMPL": "uram" if b.uram_total else "bram", "ACC_IMPL": "uram" if b.uram_total else "bram",
        "M_AXI_DEPTH": max(a.depth for a in cfg.args if a.kind == "pointer"),
    }
    lines = [
        "// Generated from host/lora_qta/hardware.toml by `lora-qta config header`. Do not edit.",
        f"// board {b.name}: {b.description}",
        "#ifndef QTA_CONFIG_H",
        "#define QTA_CONFIG_H",
        f'#define QTA_BOARD "{b.name}"',
        f'#define QTA_CONFIG_DIGEST "{board_digest(b)}"',
        f"#define QTA_CONFIG_VERSION {cfg.config_version}",
    ]
    lines += [f"#define QTA_{k} {v}" for k, v in values.items()]
    lines += [f"#define QTA_FLAG_{name.upper()} {bit}" for name, bit in cfg.flags.items()]
    lines += [f"#define QTA_STATUS_{name.upper()} {bit}" for name, bit in cfg.status.items()]
    lines += [f"#define QTA_REG_{name.upper()} 0x{off:02X}" for name, off in cfg.registers.items()]
    lines += [
        f"// The parameters of the top function {cfg.top} in signature order, and the same names as",
        "// the arguments of a call (for the C-simulation entry point that forwards to it).",
        f"#define QTA_TOP_PARAMS {', '.join(a.c_param for a in cfg.args)}",
        f"#define QTA_TOP_ARGS {', '.join(a.name for a in cfg.args)}",
        "// The C-simulation entry point takes one memory base for every pointer (unified",
        "// addressing) and the other arguments in signature order.",
        f"#define QTA_CSIM_PARAMS {', '.join(a.c_param for a in cfg.args if a.kind != 'pointer')}",
        "#define QTA_CSIM_POINTERS(mem) "
        + " ".join(f"{a.type} *{a.name} = mem;" for a in cfg.args if a.kind == "pointer"),
        "// Its interface: m_axi ports and s_axilite registers at the offsets of hardware.toml.",
        "#define QTA_INTERFACE_PRAGMAS \\",
        " \\\n".join(f'    _Pragma("{p}")' for p in _pragmas()),
        "#endif",
    ]
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
        "QTA_AXI_PORTS": b.axi_ports,
        "QTA_KERNEL_BASE_ADDRESS": f"0x{b.kernel_base_address:08X}",
        "QTA_ADDRESS_RANGE": cfg.address_range,
        "QTA_BITSTREAM_NAME": f"qta_{b.name}",
        "QTA_CONFIG_DIGEST": board_digest(b),
        # the csynth gate's budget: the part's resources (hls/tcl/csynth_gate.py)
        "QTA_BUDGET": f"DSP {b.dsp_total} BRAM_18K {2 * b.bram36_total} URAM {b.uram_total} "
                      f"LUT {b.lut_total} FF {b.ff_total}",
    }
    out = ["# Generated from host/lora_qta/hardware.toml by `lora-qta config tcl`. Do not edit."]
    out += [f"set {k} {{{v}}}" for k, v in values.items()]
    return "\n".join(out) + "\n"


def register_table() -> str:
    """The register map as a markdown table (what the README shows)."""
    cfg = config()
    rows = ["| offset | register | meaning |", "|---|---|---|"]
    for name, off in sorted(cfg.registers.items(), key=lambda kv: kv[1]):
        rows.append(f"| 0x{off:02X} | `{name}` | {cfg.register_docs[name]} |")
    rows += ["", "| flags bit | field | meaning |", "|---|---|---|"]
    for name, bit in cfg.flags.items():
        rows.append(f"| {bit} | `{name}` | {cfg.flag_docs[name]} |")
    return "\n".join(rows) + "\n"


# ------------------------------------------------------------------- resource hand count

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


def resource_table(board_name: str | None = None) -> list[dict[str, Any]]:
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


def resource_markdown() -> str:
    """The hand-count tables of every board as markdown (hls/README.md shows them)."""
    out = []
    for name in config().boards:
        b = config().board(name)
        rows = resource_table(name)
        est = estimate_resources(name)
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


def estimate_resources(board_name: str | None = None) -> dict[str, float]:
    """Totals of :func:`resource_table` with the share of the part (a hand count, not synthesis)."""
    b = config().board(board_name)
    rows = resource_table(board_name)
    tot = {k: sum(r[k] for r in rows) for k in ("dsp", "bram36", "uram", "lut", "ff")}
    out: dict[str, float] = {}
    for k, total in (("dsp", b.dsp_total), ("bram36", b.bram36_total), ("uram", b.uram_total),
                     ("lut", b.lut_total), ("ff", b.ff_total)):
        out[k] = tot[k]
        out[k + "_pct"] = 100.0 * tot[k] / total if total else 0.0
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m lora_qta.hwconfig {header,tcl,regmap,estimate,digest} --board B``."""
    p = argparse.ArgumentParser(prog="lora_qta.hwconfig", description=__doc__.split("\n")[0])
    p.add_argument("what", choices=["header", "tcl", "regmap", "estimate", "digest"],
                   help="header: qta_config.h for HLS; tcl: variables for the Tcl flows; "
                        "regmap: register table (markdown); estimate: resource hand count; digest: config hash")
    p.add_argument("--board", default=DEFAULT_BOARD, help=f"board name (default {DEFAULT_BOARD})")
    p.add_argument("-o", "--output", type=Path, help="write to this file instead of standard output")
    a = p.parse_args(argv)
    if a.what == "header":
        text = header(a.board)
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
