"""Hardware-side commands: ``info``, ``gemm``, ``demo``, ``calltime``, ``csim``, ``config``. None of them needs
PyTorch: this module and what its commands import stay clear of the training stack."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..analysis.calltime import SHAPE
from ..errors import OptionError
from ..hw import generate
from ..hw.config import resolve_board
from .common import add_board, add_target, at_least, comma_list, output_file, table


def cmd_info(args: argparse.Namespace) -> int:
    from ..hw.resources import estimate_resources
    from ..runtime.accelerator import Accelerator

    acc = Accelerator(args.board, args.backend)
    info = acc.info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for k, v in info.items():
        print(f"{k:20s} {v}")
    est = estimate_resources(acc.board.name)
    print(f"resources            DSP {est['dsp']} ({est['dsp_pct']:.0f}%), LUT {est['lut']} ({est['lut_pct']:.0f}%), "
          f"FF {est['ff']} ({est['ff_pct']:.0f}%), BRAM36 {est['bram36']} ({est['bram36_pct']:.0f}%), "
          f"URAM {est['uram']} ({est['uram_pct']:.0f}%)  (not synthesized)")
    print(f"  PE array           DSP {est['pe_array_dsp']}, LUT {est['pe_array_lut']}, FF {est['pe_array_ff']}: "
          f"{est['pe_array_source']}")
    print(f"  rest               DSP {est['rest_dsp']}, LUT {est['rest_lut']}, FF {est['rest_ff']}: {est['rest_source']}")
    notebooks = ("pynq get-notebooks lora-qta -p DIR" if acc.backend == "board"
                 else "pynq get-notebooks lora-qta -p DIR --ignore-overlays   (no FPGA here: PYNQ needs the flag)")
    print(f"{'notebooks':20s} {notebooks}")
    print("\nregister map (from hardware.toml)\n")
    print(generate.register_table())
    return 0


def cmd_gemm(args: argparse.Namespace) -> int:
    from ..runtime.accelerator import Accelerator
    from ..runtime.check import checked_random_gemm

    at_least("--seed", args.seed, 0)
    if args.rounding != "nearest_even" and args.out != "int8":
        raise OptionError(f"--rounding {args.rounding} is the INT8 epilogue's: it needs --out int8 "
                          f"(--out {args.out} is not rounded)")
    acc = Accelerator(args.board, args.backend)
    checked = checked_random_gemm(acc, args.M, args.K, args.N, trans_a=args.trans_a, trans_b=args.trans_b,
                                  dataflow=args.dataflow, split=args.split, out=args.out, rounding=args.rounding,
                                  seed=args.seed)
    r = checked.result
    mode = r.dataflow.upper() + (f" partitioned (split {r.split:+d})" if r.split else "")
    print(f"GEMM {args.M}x{args.K}x{args.N} on {acc.board.name} [{acc.backend}]: "
          f"{'bit-exact with numpy' if checked.exact else 'MISMATCH with numpy'}")
    print(f"  dataflow     {mode}, tiles m/n/k = {r.tiles}")
    if r.calls > 1:
        print(f"  calls        {r.calls} kernel calls (a dimension exceeds the configured limits "
              f"{acc.board.max_m}/{acc.board.max_n}/{acc.board.max_k}; summed exactly on the host)")
    measured = f"{r.cycles_measured:,}" if r.cycles_measured is not None else "unavailable (emulated)"
    print(f"  cycles       modelled {r.cycles_model:,} (the kernel's trip counts); measured {measured}")
    print(f"  utilization  {r.utilization:.1%} of {acc.board.pes} PEs; {r.bound}-bound, "
          f"{r.roofline_fraction:.1%} of the roofline over {acc.board.axi_ports} AXI ports")
    print(f"  DDR traffic  {r.bytes_moved:,} bytes; time at {acc.board.clock_mhz} MHz "
          f"{r.cycles / acc.board.clock_mhz:.1f} us; host wall {r.wall_s * 1e3:.2f} ms (measured)")
    print(f"  outputs      amax {r.amax:,}, {r.sat_count:,} saturated")
    return 0 if checked.exact else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from ..lora.gemms import check_layer
    from ..runtime.accelerator import Accelerator

    for opt in ("tokens", "features", "rank"):
        at_least(f"--{opt}", getattr(args, opt), 1)
    at_least("--seed", args.seed, 0)
    acc = Accelerator(args.board, args.backend)
    t0 = time.perf_counter()
    checks = check_layer(acc, args.tokens, args.features, args.rank, args.seed)
    rows = []
    for c in checks:
        g, r = c.gemm, c.result
        row = {"GEMM": g.kind.title, "M,K,N": f"{g.m},{g.k},{g.n}", "dataflow": c.dataflow}
        if r is None:
            row.update({"chosen": "-", "cycles": c.refused[:30], "util": "-", "bound": "-", "exact": "-"})
        else:
            row.update({"chosen": r.dataflow + (f"{r.split:+d}" if r.split else ""), "cycles": f"{r.cycles:,}",
                        "util": f"{r.utilization:.1%}", "bound": r.bound, "exact": "yes" if c.exact else "NO"})
        rows.append(row)
    ok = all(c.exact for c in checks if c.result is not None)
    print(f"One LoRA layer (tokens {args.tokens}, features {args.features}, rank {args.rank}) on "
          f"{acc.board.name}, {acc.board.array_rows}x{acc.board.array_cols} PEs, backend {acc.backend}")
    print("cycles: the kernel's measured counter on a board, its modelled count under emulation\n")
    print(table(rows, ["GEMM", "M,K,N", "dataflow", "chosen", "cycles", "util", "bound", "exact"]))
    print(f"\n{'all outputs bit-exact with the numpy reference' if ok else 'MISMATCHES found'} "
          f"({time.perf_counter() - t0:.1f} s on this machine)")
    return 0 if ok else 1


def cmd_calltime(args: argparse.Namespace) -> int:
    from ..analysis import calltime, report
    from ..runtime.accelerator import Accelerator

    output_file(args.out, "--out")
    acc = Accelerator(args.board, args.backend)
    r = calltime.measure(acc, args.calls, args.warmup, args.shape)
    print(report.calltime_summary(r), end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(r, indent=2))
    return 0


def cmd_csim(args: argparse.Namespace) -> int:
    from ..runtime import csim

    proc = csim.run_testbench(resolve_board(args.board))
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    return proc.returncode


def cmd_config(args: argparse.Namespace) -> int:
    output_file(args.output, "-o/--output")
    generate.write(args.what, args.board, args.output)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """The hardware-side subcommands."""
    s = sub.add_parser("info", help="configuration, backend found and register map")
    add_target(s)
    s.add_argument("--json", action="store_true", help="print the configuration as JSON only")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("gemm", help="run one random GEMM, check it against numpy, print its figures")
    s.add_argument("M", type=int, help="rows of op(A) and of the output")
    s.add_argument("K", type=int, help="inner (summed) dimension")
    s.add_argument("N", type=int, help="columns of op(B) and of the output")
    s.add_argument("--dataflow", default="auto", choices=["auto", "ws", "os", "partitioned"],
                   help="auto: the planner picks the fastest by its cycle model; ws: weight-stationary, "
                        "os: output-stationary, each with the planner's best split of the array into sub-arrays "
                        "unless --split is given (--split 0: the whole array); partitioned: the best split in "
                        "either dataflow")
    s.add_argument("--split", type=int, default=None,
                   help="force the partition exponent s (s>0: 2^s sub-arrays side by side, OS only; "
                        "s<0: 2^-s stacked; 0: whole array)")
    s.add_argument("--trans-a", action="store_true", help="A is stored transposed (K x M)")
    s.add_argument("--trans-b", action="store_true", help="B is stored transposed (N x K)")
    s.add_argument("--out", default="int32", choices=["int32", "int8"],
                   help="int32 accumulators, or INT8 requantized by the epilogue")
    s.add_argument("--rounding", default="nearest_even", choices=["nearest_even", "stochastic"],
                   help="rounding of the INT8 epilogue")
    s.add_argument("--seed", type=int, default=0, help="seed of the random operands and of stochastic rounding")
    add_target(s)
    s.set_defaults(func=cmd_gemm)

    s = sub.add_parser("demo", help="the six GEMMs of one LoRA layer in WS, OS and auto, checked")
    s.add_argument("--tokens", type=int, default=1024, help="tokens per sample (M of the forward GEMMs)")
    s.add_argument("--features", type=int, default=320, help="in = out features of the adapted layer")
    s.add_argument("--rank", type=int, default=8, help="LoRA rank r (narrow dimension of four of the six GEMMs)")
    s.add_argument("--seed", type=int, default=0, help="seed of the random operands")
    add_target(s)
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("calltime", help="host time per accelerator call (driver alone and the whole call path), "
                                        "measured on the board or the emulation: the step model's call_us")
    s.add_argument("--calls", type=int, default=200, help="timed calls per loop (the median is reported)")
    s.add_argument("--warmup", type=int, default=20, help="untimed calls per loop first")
    s.add_argument("--shape", type=comma_list(int), default=list(SHAPE),
                   help="M,K,N of the GEMM (INT32 output), within the board's limits (default "
                        f"{','.join(map(str, SHAPE))}: one tile, so the kernel's own part is small)")
    s.add_argument("--out", type=Path, default=None, help="also write the figures as JSON to this file")
    add_target(s)
    s.set_defaults(func=cmd_calltime)

    s = sub.add_parser("csim", help="build and run the kernel's C++ testbench with g++")
    add_board(s)
    s.set_defaults(func=cmd_csim)

    s = sub.add_parser("config", help="generate the HLS header, Tcl variables, register map or estimate")
    generate.add_arguments(s)
    s.set_defaults(func=cmd_config)
