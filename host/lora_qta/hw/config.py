"""The hardware configuration: ``hardware.toml`` read into typed, validated objects.

:func:`config` reads the file once into a :class:`Config`: the kernel's identity, its
arguments in signature order (:class:`KernelArg`, with their s_axilite offsets), the control
registers and the bits of ``ctrl``, the ``flags`` and ``status`` bits, the constants of the
cycle model, and one :class:`BoardConfig` per board with its :class:`HostFacts` (what the
analysis assumes of the board's processor and power). :func:`board_digest` hashes what makes
a bitstream. Standard library only.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
from dataclasses import dataclass, fields
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

from ..errors import BackendError, ConfigError, UnknownBoardError

try:  # Python 3.11+; the PYNQ 3.x board images run Python 3.10, which needs the tomli backport
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

CONFIG_PATH = Path(__file__).with_name("hardware.toml")
DEFAULT_BOARD = "zcu104"
BOARD_ENV = "LORA_QTA_BOARD"
"""The environment variable that names the board when ``--board`` is not given."""
BACKENDS = ("auto", "board", "emulation", "csim", "fast")
"""Where the accelerator runs (``--backend``): see :func:`requested_backend`."""
BACKEND_ENV = "LORA_QTA_BACKEND"
"""The environment variable that names the backend when none is given."""

ARG_WORDS = {"pointer": 3, "scalar": 2, "scalar64": 3, "out32": 2, "out64": 3}
"""32-bit s_axilite words per argument kind (Vitis HLS layout: a 64-bit address, input or output
takes two data words and a reserved or ap_vld word, a 32-bit one a data word and one more)."""
ARG_TYPES = {"scalar": ("uint32_t", "int32_t"), "scalar64": ("uint64_t",), "out32": ("uint32_t", "int32_t"),
             "out64": ("uint64_t", "int64_t")}
"""The C types each value kind may have (a pointer's ``type`` is its element type)."""
FIRST_ARG_OFFSET = 0x10
"""Vitis HLS puts the first argument after the four control registers."""


@dataclass(frozen=True)
class KernelArg:
    """One argument of the kernel's top function, as ``hardware.toml`` lists it."""

    name: str
    kind: str        # pointer, scalar, scalar64, out32 or out64 (see ARG_WORDS)
    type: str        # C type; for a pointer the element type
    offset: int      # s_axilite offset of its first word
    doc: str         # the register map's text
    bundle: str = ""  # m_axi bundle (pointers)
    depth: int = 0    # m_axi depth for co-simulation (pointers)

    @property
    def is_input(self) -> bool:
        """Written by the host before ``ap_start`` (pointers and scalars)."""
        return self.kind in ("pointer", "scalar", "scalar64")

    @property
    def wide(self) -> bool:
        """Whether the value takes two data words (``name_1``, ``name_2`` in a ``.hwh``)."""
        return self.kind in ("pointer", "scalar64", "out64")

    @property
    def data_bytes(self) -> int:
        """Bytes of the value in its data words."""
        return 8 if self.wide else 4

    @property
    def valid_offset(self) -> int | None:
        """Offset of an output's ap_vld word (bit 0: the value is valid), else None."""
        return {"out32": self.offset + 4, "out64": self.offset + 8}.get(self.kind)

    @property
    def hwh_name(self) -> str:
        """How an overlay's register map (from the ``.hwh``) names the first data word."""
        return f"{self.name}_1" if self.wide else self.name

    @property
    def c_param(self) -> str:
        """The parameter in the C prototype."""
        if self.kind in ("scalar", "scalar64"):
            return f"{self.type} {self.name}"
        return f"{self.type} *{self.name}"


@dataclass(frozen=True)
class RegisterBlock:
    """A run of register words read or written as one packed block (one ``struct`` pass instead of
    a Python loop over registers): ``names`` are its fields in address order, ``layout`` their
    little-endian packing from offset ``start`` (``I`` a 32-bit, ``Q`` a 64-bit value, ``x`` the
    bytes of words between fields, written as zero)."""

    start: int
    names: tuple[str, ...]
    layout: struct.Struct

    @classmethod
    def of(cls, fields_: list[tuple[int, int, str]]) -> "RegisterBlock":
        """The block of ``(offset, bytes, name)`` fields (sorted by offset, not overlapping)."""
        fmt, at = "<", fields_[0][0]
        for offset, nbytes, _ in fields_:
            if offset < at:
                raise ConfigError(f"hardware.toml: register fields overlap at 0x{offset:X}; fix the offsets")
            fmt += "x" * (offset - at) + ("Q" if nbytes == 8 else "I")
            at = offset + nbytes
        return cls(fields_[0][0], tuple(name for _, _, name in fields_), struct.Struct(fmt))

    @property
    def size(self) -> int:
        """Bytes from the first field's offset to the end of the last."""
        return self.layout.size

    def pack(self, values: dict[str, int]) -> bytes:
        """The block's bytes from ``values`` (one per field); ``struct.error`` if one does not fit
        its word or is negative."""
        return self.layout.pack(*[values[name] for name in self.names])

    def pack_into(self, regs: bytearray, values: dict[str, int]) -> None:
        """Write ``values`` into a register file ``regs`` (indexed by register offset)."""
        self.layout.pack_into(regs, self.start, *[values[name] for name in self.names])

    def unpack(self, regs: bytes | bytearray) -> dict[str, int]:
        """The fields' values from a register file ``regs`` (indexed by register offset)."""
        return dict(zip(self.names, self.layout.unpack_from(regs, self.start)))

    def decode(self, data: bytes) -> dict[str, int]:
        """The fields' values from the block's own :attr:`size` bytes (read from :attr:`start`)."""
        return dict(zip(self.names, self.layout.unpack(data)))


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
class HostFacts:
    """What the analysis assumes of a board's processor and power (stated assumptions, not
    measurements; not part of a bitstream)."""

    core: str                    # ARM core, e.g. Cortex-A53
    cores: int
    clock_mhz: int
    fp32_flops_per_cycle: int    # NEON FP32 FLOP per cycle and core
    attained_fraction: float     # of the peak FP32 throughput, for GEMMs
    stream_gbps: float           # DDR bandwidth of element-wise passes, read + written, all cores
    l2_kb: int                   # shared L2 cache
    ddr_mb: int                  # PS DDR capacity
    call_us: float               # ARM time to issue one accelerator call
    cache_gbps: float            # cache clean/invalidate by address, bytes per second / 1e9
    cache_line: int              # bytes per cache line
    idle_watts: float            # idle draw of the board's input rail
    input_rail: str              # name of the rail that feeds the whole board
    input_volts: float

    @property
    def cpu(self) -> str:
        """E.g. ``4x Cortex-A53 @ 1.2 GHz``."""
        clock = f"{self.clock_mhz / 1000:g} GHz" if self.clock_mhz >= 1000 else f"{self.clock_mhz} MHz"
        return f"{self.cores}x {self.core} @ {clock}"

    @property
    def gflops(self) -> float:
        """Attained FP32 GEMM throughput (GFLOP/s): cores x clock x FLOP/cycle x fraction."""
        return self.cores * (self.clock_mhz / 1000) * self.fp32_flops_per_cycle * self.attained_fraction


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
    host: HostFacts

    def __hash__(self) -> int:
        """The hash of the fields, computed once per board object: a board keys the planner's and
        the engines' caches, several lookups per accelerator call, and hashing its 31 fields
        (and the host facts' 14) each time cost about 2% of an emulated whole training step."""
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash(tuple(getattr(self, f.name) for f in fields(self)))
            object.__setattr__(self, "_hash", h)
        return h

    def __getstate__(self) -> dict[str, Any]:
        """The fields without the cached hash (a string's hash differs between processes)."""
        return {name: v for name, v in self.__dict__.items() if name != "_hash"}

    @property
    def pes(self) -> int:
        """Number of processing elements (MACs per cycle at full use)."""
        return self.array_rows * self.array_cols

    @property
    def axi_bytes(self) -> int:
        """Bytes per AXI beat on one memory port."""
        return self.axi_data_width // 8

    @property
    def scale_fifo_depth(self) -> int:
        """Depth in beats of the kernel's scale FIFO ``scl``: two of the largest per-row/column
        scale vectors a block carries (8 bytes per scale), so that block b+1's scales fit while the
        store still holds block b's (the fetcher writes a block's scales before its operands and
        the store reads them only after the array released the block: a shallower FIFO deadlocks,
        review 2 B1; one vector's depth would stall fetch, review 2 S1)."""
        return 2 * -(-max(self.tile_m_max, self.tile_n_max) * 8 // self.axi_bytes)

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
        sub = config().schedule.min_subarray
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

    @cached_property
    def inputs(self) -> tuple[KernelArg, ...]:
        """The arguments the host writes, in signature order."""
        return tuple(a for a in self.args if a.is_input)

    @cached_property
    def outputs(self) -> tuple[KernelArg, ...]:
        """The arguments the kernel writes, in signature order."""
        return tuple(a for a in self.args if not a.is_input)

    @cached_property
    def input_block(self) -> RegisterBlock:
        """Every input argument's data words, from the first input to the end of the last (the
        reserved words between them as zero): what the driver writes in one MMIO burst and the
        kernel decodes."""
        return RegisterBlock.of([(a.offset, a.data_bytes, a.name) for a in self.inputs])

    @cached_property
    def output_block(self) -> RegisterBlock:
        """Every output's data words and its ap_vld word (field ``<name>_ctrl``): what the kernel
        writes when it finishes."""
        words = []
        for a in self.outputs:
            words += [(a.offset, a.data_bytes, a.name), (a.valid_offset, 4, f"{a.name}_ctrl")]
        return RegisterBlock.of(sorted(words))

    def ctrl_mask(self, bit: str) -> int:
        """The mask of one bit of ``ctrl`` (``ap_start``, ``ap_done``, ``ap_idle``, ``ap_ready``)."""
        return 1 << self.ctrl_bits[bit]

    def board(self, name: str | None = None) -> BoardConfig:
        """The configuration of ``name`` (default: ZCU104); a clear error for unknown boards."""
        key = (name or DEFAULT_BOARD).lower().replace("-", "_")
        if key not in self.boards:
            raise UnknownBoardError(
                f"unknown board {name!r}: use one of {', '.join(sorted(self.boards))} (the boards of hardware.toml)"
            )
        return self.boards[key]


def requested_backend(backend: str | None = None) -> str:
    """The backend asked for: ``backend``, else the one :data:`BACKEND_ENV` names, else ``auto``;
    an unknown name is refused (naming the variable where it came from there). What ``auto``
    means on this machine is :func:`lora_qta.runtime.accelerator.resolve_backend`'s."""
    env = None if backend else os.environ.get(BACKEND_ENV)
    name = (backend or env or "auto").lower()
    if name not in BACKENDS:
        what = f"{BACKEND_ENV}={env!r} is not a backend" if env else f"unknown backend {name!r}"
        raise BackendError(f"{what}: use one of {', '.join(BACKENDS)}" + (f", or unset {BACKEND_ENV}" if env else ""))
    return name


def resolve_board(name: str | None = None) -> BoardConfig:
    """The board ``name`` names, else the one :data:`BOARD_ENV` names, else :data:`DEFAULT_BOARD`:
    what a ``--board`` whose default is ``$LORA_QTA_BOARD`` means (the accelerator, the run's
    identity and ``rtl sim`` resolve it here, so they cannot disagree). An unknown name in the
    variable is refused naming the variable."""
    if name:
        return config().board(name)
    env = os.environ.get(BOARD_ENV)
    if not env:
        return config().board()
    try:
        return config().board(env)
    except UnknownBoardError:
        raise UnknownBoardError(f"{BOARD_ENV}={env!r} is not a board: use one of {', '.join(sorted(config().boards))} "
                                f"(the boards of hardware.toml), or unset {BOARD_ENV}") from None


def _table(raw: dict[str, Any], cls: type, where: str, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The keys of ``raw`` checked against the fields of ``cls`` (ConfigError names the difference)."""
    want = {f.name for f in fields(cls)} - set(exclude)
    missing, extra = want - set(raw), set(raw) - want
    if missing or extra:
        raise ConfigError(f"hardware.toml {where}: missing {sorted(missing)}, unknown {sorted(extra)}; "
                          f"give it exactly the keys {sorted(want)}")
    return raw


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
    boards = {}
    for name, table in raw["boards"].items():
        host = HostFacts(**_table(table.get("host", {}), HostFacts, f"board {name} host"))
        hw = _table({k: v for k, v in table.items() if k != "host"}, BoardConfig, f"board {name}",
                    exclude=("name", "host"))
        boards[name] = BoardConfig(name=name, host=host, **hw)
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
                raise ConfigError(f"hardware.toml board {b.name}: array_rows and array_cols must be powers "
                                  f"of two >= 2 x schedule.min_subarray ({2 * sub}); fix them")
        if b.axi_ports != 4 or sub % b.axi_ports:
            raise ConfigError(f"hardware.toml board {b.name}: the kernel has four m_axi bundles (rd0..3/wr0..3) "
                              "and min_subarray must be a multiple of axi_ports; fix axi_ports")
        if b.axi_bytes & (b.axi_bytes - 1) or (4 * sub) % b.axi_bytes:
            raise ConfigError(f"hardware.toml board {b.name}: a store word (min_subarray INT32 outputs) must "
                              "hold whole AXI beats; fix axi_data_width")
        for t in (b.tile_m_max, b.tile_n_max, b.tile_k_max):
            if t % b.axi_bytes:
                raise ConfigError(f"hardware.toml board {b.name}: tile limits must be multiples of the beat "
                                  f"({b.axi_bytes} bytes); fix them")
    return cfg


def board_digest(board: BoardConfig) -> str:
    """A hash of everything that makes a bitstream of ``board``: the board's hardware table
    (not its host facts), the kernel's arguments, registers, bits and schedule."""
    cfg = config()
    hardware = tuple((f.name, getattr(board, f.name)) for f in fields(board) if f.name != "host")
    args = tuple((a.name, a.kind, a.type, a.offset, a.bundle, a.depth) for a in cfg.args)
    text = repr((hardware, cfg.top, cfg.vlnv, cfg.config_version, args, sorted(cfg.registers.items()),
                 sorted(cfg.ctrl_bits.items()), sorted(cfg.flags.items()), sorted(cfg.status.items()),
                 cfg.schedule))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
