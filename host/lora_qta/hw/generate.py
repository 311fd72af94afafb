"""What is generated from ``hardware.toml``: the kernel's header, the Tcl variables of the build
flows, the register map of the README.

* :func:`header`: ``qta_config.h``, which the HLS kernel, its C-simulation entry points and the
  testbench include: sizes, limits, register offsets, bits, and from the argument list the
  kernel's parameter list (``QTA_TOP_PARAMS``), the matching argument list (``QTA_TOP_ARGS``),
  and its INTERFACE pragmas (``QTA_INTERFACE_PRAGMAS``);
* :func:`verilog_header`: ``qta_config.vh``, the parameters of the RTL PE array (``hls/rtl``);
* :func:`tcl`: ``set`` lines for the Vitis HLS and Vivado flows, with the part's resources as the
  budget of the csynth gate (``QTA_BUDGET``);
* :func:`register_table`: the register map as markdown (README).

Standard library only: ``python3 -m lora_qta.hw.generate header --board zcu104 -o qta_config.h``
runs on a build machine that has nothing else (``scripts/build_bitstream.sh`` does this).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import QtaError
from .config import BOARD_ENV, DEFAULT_BOARD, board_digest, config, resolve_board
from .resources import budget, estimate_resources, resource_markdown, resource_table

WHAT = {
    "header": "qta_config.h for the HLS kernel",
    "vh": "qta_config.vh for the RTL PE array (hls/rtl)",
    "tcl": "variables for the Tcl flows",
    "regmap": "register table (markdown)",
    "estimate": "resource estimate (PE array: yosys figures; rest: hand count)",
    "resources": "resource table of every board (markdown, README)",
    "parts": "resources per part of the design, every board (markdown, hls/README.md)",
    "digest": "configuration hash of the board's bitstream",
}


def _pragmas() -> list[str]:
    """The INTERFACE pragmas of the top function: an m_axi port per pointer, every argument on
    the s_axilite control bundle at its pinned offset, and the control protocol."""
    cfg = config()
    # latency: the schedule's DDR latency, so that the scheduled burst loops assume what the
    # cycle model charges per burst (review N7)
    out = [f"HLS INTERFACE mode=m_axi port={a.name} bundle={a.bundle} offset=slave depth={a.depth} "
           f"latency={cfg.schedule.ddr_latency} max_read_burst_length=64 max_write_burst_length=64 "
           f"num_read_outstanding=8 num_write_outstanding=8" for a in cfg.args if a.kind == "pointer"]
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
        "SCL_DEPTH": b.scale_fifo_depth,
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
        "// Generated from host/lora_qta/hw/hardware.toml by `lora-qta config header`. Do not edit.",
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
        "// Its interface: m_axi ports and s_axilite registers at the offsets of hardware.toml.",
        "#define QTA_INTERFACE_PRAGMAS \\",
        " \\\n".join(f'    _Pragma("{p}")' for p in _pragmas()),
        "#endif",
    ]
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
    lines = ["// Generated from host/lora_qta/hw/hardware.toml by `lora-qta config vh`. Do not edit.",
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
        "QTA_AXI_PORTS": b.axi_ports,
        "QTA_KERNEL_BASE_ADDRESS": f"0x{b.kernel_base_address:08X}",
        "QTA_ADDRESS_RANGE": cfg.address_range,
        "QTA_BITSTREAM_NAME": f"qta_{b.name}",
        "QTA_CONFIG_DIGEST": board_digest(b),
        # the csynth gate's budget (hls/tcl/csynth_gate.py): the part's resources less the fit
        # headroom (resources.FIT_PERCENT: 85% LUT/FF, 90% DSP/BRAM/URAM)
        "QTA_BUDGET": " ".join(f"{k} {v}" for k, v in budget(b.name).items()),
    }
    out = ["# Generated from host/lora_qta/hw/hardware.toml by `lora-qta config tcl`. Do not edit."]
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


def render(what: str, board_name: str | None = None) -> str:
    """The text of one generated file: ``what`` is a key of :data:`WHAT`."""
    if what == "header":
        return header(board_name)
    if what == "vh":
        return verilog_header(board_name)
    if what == "tcl":
        return tcl(board_name)
    if what == "regmap":
        return register_table()
    if what == "digest":
        return board_digest(config().board(board_name)) + "\n"
    if what == "resources":
        return resource_table()
    if what == "parts":
        return resource_markdown() + "\n"
    return "".join(f"{k} {v:.1f}\n" if isinstance(v, float) else f"{k} {v}\n"
                   for k, v in estimate_resources(board_name).items())


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``python -m lora_qta.hw.generate`` and of ``lora-qta config``."""
    p.add_argument("what", choices=list(WHAT), help="; ".join(f"{k}: {v}" for k, v in WHAT.items()))
    p.add_argument("--board", default=None,
                   help=f"board of hardware.toml (default ${BOARD_ENV} or {DEFAULT_BOARD})")
    p.add_argument("-o", "--output", type=Path, default=None, help="write to this file instead of standard output")


def write(what: str, board_name: str | None, output: Path | None) -> None:
    """Render ``what`` to ``output`` (its folder created), or to standard output."""
    text = render(what, resolve_board(board_name).name)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
    else:
        sys.stdout.write(text)


def main(argv: list[str] | None = None) -> int:
    """``python -m lora_qta.hw.generate {header,vh,tcl,regmap,estimate,resources,parts,digest} --board B [-o FILE]``."""
    p = argparse.ArgumentParser(prog="python -m lora_qta.hw.generate", description=__doc__.split("\n")[0])
    add_arguments(p)
    a = p.parse_args(argv)
    try:
        write(a.what, a.board, a.output)
    except QtaError as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
