"""The ``lora-qta`` command line. ``lora-qta <command> --help`` explains each option."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from . import hwconfig
from .hwconfig import DEFAULT_BOARD, config


def _add_target(p: argparse.ArgumentParser) -> None:
    p.add_argument("--board", default=None,
                   help=f"board configuration from hardware.toml ({', '.join(config().boards)}); "
                        f"default $LORA_QTA_BOARD or {DEFAULT_BOARD}")
    p.add_argument("--backend", default=None, choices=["auto", "board", "emulation", "csim", "fast"],
                   help="auto: the board if one is found with its bitstream, else emulation; "
                        "board: PYNQ overlay; emulation/fast: emulated device with the vectorized "
                        "bit-exact engine; csim: emulated device running the HLS C++ compiled with g++ "
                        "(default $LORA_QTA_BACKEND or auto)")


def _table(rows: list[dict], cols: Sequence[str]) -> str:
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    line = "  ".join(c.ljust(widths[c]) for c in cols)
    sep = "  ".join("-" * widths[c] for c in cols)
    body = ["  ".join(str(r[c]).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join([line, sep, *body])


def cmd_info(args: argparse.Namespace) -> int:
    from .accelerator import Accelerator

    acc = Accelerator(args.board, args.backend)
    info = acc.info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for k, v in info.items():
        print(f"{k:20s} {v}")
    est = hwconfig.estimate_resources(acc.board.name)
    print("resource estimate    " + ", ".join(
        f"{k} {v}" + (f" ({est[k + '_pct']:.0f}%)" if k + "_pct" in est else "")
        for k, v in est.items() if not k.endswith("_pct")) + "  (first-order estimate, not synthesized)")
    print("\nregister map (from hardware.toml)\n")
    print(hwconfig.register_table())
    return 0


def _random_operands(rng: np.random.Generator, m: int, k: int, n: int, trans_a: bool, trans_b: bool):
    a = rng.integers(-128, 128, (k, m) if trans_a else (m, k), dtype=np.int8)
    b = rng.integers(-128, 128, (n, k) if trans_b else (k, n), dtype=np.int8)
    return a, b


def cmd_gemm(args: argparse.Namespace) -> int:
    from .accelerator import Accelerator, fixed_point_scale
    from .reference import reference_gemm

    acc = Accelerator(args.board, args.backend)
    rng = np.random.default_rng(args.seed)
    a, b = _random_operands(rng, args.M, args.K, args.N, args.trans_a, args.trans_b)
    kwargs = {}
    if args.out == "int8":
        mult, shift = fixed_point_scale(127.0 / (127 * 127 * np.sqrt(args.K) * 3))
        kwargs = dict(out="int8", mult=int(mult), shift=int(shift), rounding=args.rounding, seed=args.seed)
    r = acc.gemm(a, b, trans_a=args.trans_a, trans_b=args.trans_b, dataflow=args.dataflow,
                 split=args.split, **kwargs)
    ref, ref_sat = reference_gemm(a, b, trans_a=args.trans_a, trans_b=args.trans_b,
                                  out_int8=args.out == "int8", mult=kwargs.get("mult", 1),
                                  shift=kwargs.get("shift", 0), stochastic=args.rounding == "stochastic",
                                  seed=args.seed)
    exact = np.array_equal(r.output, ref) and r.saturated == ref_sat
    mode = r.dataflow.upper() + (f" partitioned (split {r.split:+d})" if r.split else "")
    print(f"GEMM {args.M}x{args.K}x{args.N} on {acc.board.name} [{acc.backend}]: "
          f"{'bit-exact with numpy' if exact else 'MISMATCH with numpy'}")
    print(f"  dataflow     {mode}, tiles m/n/k = {r.tiles}")
    print(f"  cycles       {r.cycles:,} (kernel cycle counter; {'modelled schedule' if acc.backend != 'board' else 'board'})")
    print(f"  utilization  {r.utilization:.1%} of {acc.board.pes} PEs; {r.bound}-bound, "
          f"{r.roofline_fraction:.1%} of the roofline")
    print(f"  DDR traffic  {r.bytes_moved:,} bytes; time at {acc.board.clock_mhz} MHz "
          f"{r.cycles / acc.board.clock_mhz:.1f} us (modelled); host wall {r.wall_s * 1e3:.2f} ms (measured)")
    if r.saturated:
        print("  status       saturated outputs")
    return 0 if exact else 1


def lora_layer_gemms(tokens: int, d_in: int, d_out: int, rank: int) -> list[tuple[str, int, int, int, bool, bool]]:
    """The six GEMMs of one LoRA linear layer as (name, M, K, N, trans_a, trans_b), with the
    operands laid out as training keeps them (X: tokens x in, A: r x in, B: out x r)."""
    return [
        ("fwd  H = X.A^T", tokens, d_in, rank, False, True),
        ("fwd  Y = H.B^T", tokens, rank, d_out, False, True),
        ("bwd dH = G.B", tokens, d_out, rank, False, False),
        ("bwd dB = G^T.H", d_out, tokens, rank, True, False),
        ("bwd dA = dH^T.X", rank, tokens, d_in, True, False),
        ("bwd dX = dH.A", tokens, rank, d_in, False, False),
    ]


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the six GEMMs of one LoRA layer on the emulated accelerator and check them."""
    from .accelerator import Accelerator
    from .reference import reference_gemm

    acc = Accelerator(args.board, args.backend)
    rng = np.random.default_rng(args.seed)
    rows, ok = [], True
    t0 = time.perf_counter()
    for name, m, k, n, ta, tb in lora_layer_gemms(args.tokens, args.features, args.features, args.rank):
        a, b = _random_operands(rng, m, k, n, ta, tb)
        for df in ("ws", "os", "auto"):
            try:
                r = acc.gemm(a, b, trans_a=ta, trans_b=tb, dataflow=df)
            except Exception as e:  # a forced mode may not exist for this shape
                rows.append({"GEMM": name, "M,K,N": f"{m},{k},{n}", "dataflow": df, "chosen": "-",
                             "cycles": str(e)[:30], "util": "-", "bound": "-", "exact": "-"})
                continue
            exact = np.array_equal(r.output, reference_gemm(a, b, trans_a=ta, trans_b=tb)[0])
            ok &= exact
            rows.append({"GEMM": name, "M,K,N": f"{m},{k},{n}", "dataflow": df,
                         "chosen": r.dataflow + (f"{r.split:+d}" if r.split else ""),
                         "cycles": f"{r.cycles:,}", "util": f"{r.utilization:.1%}", "bound": r.bound,
                         "exact": "yes" if exact else "NO"})
    print(f"One LoRA layer (tokens {args.tokens}, features {args.features}, rank {args.rank}) on "
          f"{acc.board.name}, {acc.board.array_rows}x{acc.board.array_cols} PEs, backend {acc.backend}")
    print("cycles: the kernel's cycle counter (modelled schedule under emulation)\n")
    print(_table(rows, ["GEMM", "M,K,N", "dataflow", "chosen", "cycles", "util", "bound", "exact"]))
    print(f"\n{'all outputs bit-exact with the numpy reference' if ok else 'MISMATCHES found'} "
          f"({time.perf_counter() - t0:.1f} s on this machine)")
    return 0 if ok else 1


def cmd_csim(args: argparse.Namespace) -> int:
    from . import csim

    board = config().board(args.board)
    proc = csim.run_testbench(board)
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    return proc.returncode


def cmd_config(args: argparse.Namespace) -> int:
    argv = [args.what, "--board", args.board or DEFAULT_BOARD]
    if args.output:
        argv += ["-o", args.output]
    return hwconfig.main(argv)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lora-qta", description=(
        "INT8 LoRA training acceleration on PYNQ FPGAs, with a bit-exact emulation of the accelerator."))
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("info", help="configuration, backend found and register map")
    _add_target(s)
    s.add_argument("--json", action="store_true", help="print the configuration as JSON only")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("gemm", help="run one random GEMM, check it against numpy, print its figures")
    s.add_argument("M", type=int, help="rows of op(A) and of the output")
    s.add_argument("K", type=int, help="inner (summed) dimension")
    s.add_argument("N", type=int, help="columns of op(B) and of the output")
    s.add_argument("--dataflow", default="auto", choices=["auto", "ws", "os", "partitioned"],
                   help="auto: the planner picks the fastest by its cycle model; ws: weight-stationary; "
                        "os: output-stationary; partitioned: the best split of the array into sub-arrays")
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
    _add_target(s)
    s.set_defaults(func=cmd_gemm)

    s = sub.add_parser("demo", help="the six GEMMs of one LoRA layer in WS, OS and auto, checked")
    s.add_argument("--tokens", type=int, default=1024, help="tokens per sample (M of the forward GEMMs)")
    s.add_argument("--features", type=int, default=320, help="in = out features of the adapted layer")
    s.add_argument("--rank", type=int, default=8, help="LoRA rank r (narrow dimension of four of the six GEMMs)")
    s.add_argument("--seed", type=int, default=0, help="seed of the random operands")
    _add_target(s)
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("csim", help="build and run the kernel's C++ testbench with g++")
    s.add_argument("--board", default=DEFAULT_BOARD, help="board configuration to compile")
    s.set_defaults(func=cmd_csim)

    s = sub.add_parser("config", help="generate the HLS header, Tcl variables, register map or estimate")
    s.add_argument("what", choices=["header", "vh", "tcl", "regmap", "estimate", "digest"],
                   help="header: qta_config.h; vh: qta_config.vh (RTL array); tcl: Tcl variables; regmap: markdown register table; "
                        "estimate: resource estimate; digest: configuration hash")
    s.add_argument("--board", default=None, help="board configuration")
    s.add_argument("-o", "--output", default=None, help="write to this file")
    s.set_defaults(func=cmd_config)

    s = sub.add_parser("finetune", help="LoRA fine-tuning with the LoRA GEMMs on the accelerator")
    _add_finetune_options(s)
    s.set_defaults(func=cmd_finetune)

    s = sub.add_parser("run", help="the main job: fine-tune the embedded digits model (int8, emulated) "
                                   "with the default options; same options as finetune")
    _add_finetune_options(s)
    s.set_defaults(func=cmd_finetune)

    for name, text in (("bench", "dataflow benchmark of SD1.5/SDXL LoRA GEMMs on every board (modelled); "
                                 "lora-qta bench --help"),
                       ("energy", "energy per LoRA training step, INT8 vs FP16/FP32 (modelled); "
                                  "lora-qta energy --help"),
                       ("power", "record board power rails (or emulated sensors) over GEMM and training "
                                 "phases; lora-qta power --help"),
                       ("speed", "one training step, int8 emulated vs fp32, measured side by side; "
                                 "lora-qta speed --help")):
        s = sub.add_parser(name, help=text, add_help=False)
        s.add_argument("args", nargs=argparse.REMAINDER,
                       help=f"options of lora_qta.{name} (see lora-qta {name} --help)")

    s = sub.add_parser("evaluate", help="fp32 vs int8 LoRA quality on real data (digits), side by side")
    s.add_argument("--output-dir", default="runs/evaluate", help="folder of the two runs and evaluate.json")
    s.add_argument("--steps", type=int, default=None,
                   help="fine-tuning steps of each precision (default: the finetune default)")
    s.add_argument("--samples-per-class", type=int, default=40,
                   help="images generated per prompt for the classifier-based accuracies")
    s.add_argument("--seed", type=int, default=0, help="seed shared by both runs and the evaluation")
    s.add_argument("--seeds", type=int, default=1,
                   help="train and measure both precisions with this many seeds (seed, seed+1, ...) and "
                        "report mean and standard deviation")
    s.add_argument("--no-reuse", action="store_true",
                   help="retrain even if the output folder already holds finished runs with these steps")
    _add_target(s)
    s.set_defaults(func=cmd_evaluate)
    return p


def _add_finetune_options(s: argparse.ArgumentParser) -> None:
    from .train import FinetuneConfig

    d = FinetuneConfig()
    s.add_argument("--output-dir", default=d.output_dir,
                   help="run folder: adapter/, samples.png, loss.png, report.json, checkpoints/")
    s.add_argument("--precision", default=d.precision, choices=["fp32", "int8"],
                   help="fp32: plain peft LoRA in PyTorch (the reference); int8: the six LoRA GEMMs of "
                        "every adapted layer run INT8 on the accelerator (board or emulation)")
    s.add_argument("--pretrained-model", default=None,
                   help="local diffusers Stable Diffusion folder (unet, vae, text_encoder, tokenizer, "
                        "scheduler); default: the embedded digits model")
    s.add_argument("--instance-data-dir", default=None,
                   help="folder of images of the new concept (with --pretrained-model)")
    s.add_argument("--prompt", default=d.prompt, help="prompt of the instance images (with --pretrained-model)")
    s.add_argument("--steps", type=int, default=d.steps, help="optimizer steps")
    s.add_argument("--batch-size", type=int, default=d.batch_size, help="images per step")
    s.add_argument("--learning-rate", type=float, default=d.learning_rate, help="AdamW peak learning rate")
    s.add_argument("--lr-schedule", default=d.lr_schedule, choices=["constant", "linear", "cosine"],
                   help="decay after the warm-up")
    s.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="linear learning-rate warm-up steps")
    s.add_argument("--max-grad-norm", type=float, default=d.max_grad_norm, help="gradient clipping norm")
    s.add_argument("--rank", type=int, default=d.rank, help="LoRA rank r")
    s.add_argument("--alpha", type=float, default=d.alpha, help="LoRA alpha (scaling alpha / r)")
    s.add_argument("--target-modules", nargs="+", default=d.target_modules,
                   help="UNet linear layers to adapt (module name suffixes)")
    s.add_argument("--prediction-type", default=d.prediction_type, choices=["epsilon", "v_prediction"],
                   help="the UNet's training target")
    s.add_argument("--num-examples", type=int, default=d.num_examples,
                   help="digits model: images of the held-out digit to learn the new token from")
    s.add_argument("--prior-per-class", type=int, default=d.prior_per_class,
                   help="digits model: real images per known digit mixed in to preserve them (0: none)")
    s.add_argument("--seed", type=int, default=d.seed, help="seed of data order, noise and stochastic rounding")
    s.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                   help="write a checkpoint every N steps (and on Ctrl-C)")
    s.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output-dir")
    s.add_argument("--no-samples", action="store_true", help="skip the before/after sample grid")
    s.add_argument("--threads", type=int, default=None,
                   help="PyTorch CPU threads (default: 1 for the small embedded digits model, whose "
                        "ops are too small to gain from more and lose badly to thread contention on a "
                        "busy machine; PyTorch's choice for Stable Diffusion)")
    _add_target(s)


def cmd_finetune(args: argparse.Namespace) -> int:
    from .train import FinetuneConfig, finetune

    cfg = FinetuneConfig(
        output_dir=args.output_dir, precision=args.precision, board=args.board, backend=args.backend,
        pretrained_model=args.pretrained_model, instance_data_dir=args.instance_data_dir, prompt=args.prompt,
        steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
        lr_schedule=args.lr_schedule, warmup_steps=args.warmup_steps, max_grad_norm=args.max_grad_norm,
        rank=args.rank, alpha=args.alpha, target_modules=list(args.target_modules),
        prediction_type=args.prediction_type, num_examples=args.num_examples,
        prior_per_class=args.prior_per_class, seed=args.seed, checkpoint_every=args.checkpoint_every,
        resume=args.resume, samples=not args.no_samples, threads=args.threads)
    rep = finetune(cfg)
    if rep.get("interrupted"):
        return 130
    out = Path(cfg.output_dir)
    t = rep["time_s"]
    print(f"\nfinished {rep['steps']} steps of {cfg.precision} LoRA (rank {cfg.rank}) on {rep['model']}; "
          f"final loss {rep['final_loss']:.4f}")
    print(f"time (measured on this machine): total {t['total_measured']:.1f} s, accelerator "
          f"{t['accelerator_measured']:.1f} s, quantization {t['quantization_measured']:.1f} s, "
          f"rest {t['rest_measured']:.1f} s")
    if "accelerator" in rep:
        a = rep["accelerator"]
        rows = [{"GEMM": k, "calls": v["calls"], "cycles": f"{v['cycles']:,}", "util": f"{v['utilization']:.1%}",
                 "MB moved": f"{v['bytes_moved'] / 1e6:.1f}",
                 "dataflow": ", ".join(f"{d} x{n}" for d, n in sorted(v["dataflows"].items()))}
                for k, v in a["per_gemm"].items()]
        print(f"accelerator {a['board']} ({a['backend']}): cycles from the kernel counter, modelled; "
              f"{a['modelled_board_time_s']:.3f} s of LoRA GEMMs at {a['clock_mhz']} MHz (modelled)\n")
        print(_table(rows, ["GEMM", "calls", "cycles", "util", "MB moved", "dataflow"]))
    print(f"\noutputs in {out}/: adapter/ (diffusers LoRA, loads with pipeline.load_lora_weights), "
          "samples.png, loss.png, report.json, checkpoints/")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate, format_table

    from .train import FinetuneConfig

    res = evaluate(args.output_dir, steps=args.steps or FinetuneConfig.steps, per_class=args.samples_per_class, seed=args.seed,
                   board=args.board, backend=args.backend, reuse=not args.no_reuse, seeds=args.seeds)
    print(format_table(res))
    print(f"\nwritten: {args.output_dir}/evaluate.json, {args.output_dir}/concept_samples.png")
    return 0


DELEGATED = ("bench", "energy", "power", "speed")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:  # these modules parse their own options
        return importlib.import_module(f"lora_qta.{argv[0]}").main(argv[1:])
    args = build_parser().parse_args(argv)
    from .errors import QtaError

    try:
        return args.func(args)
    except QtaError as e:
        print(f"lora-qta: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
