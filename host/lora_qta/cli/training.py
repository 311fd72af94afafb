"""Training commands: ``finetune``, ``run`` (the main job, finetune with its defaults) and
``evaluate``. The training stack (PyTorch, diffusers, peft) is imported when one of them runs,
not when the parser is built."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields
from pathlib import Path

from ..lora.schemes import SCHEMES, schemes_help
from ..training.config import FinetuneConfig
from ..training.options import check_options, check_setup
from ..training.variants import DEFAULT_VARIANTS
from .common import add_target, at_least, comma_list, table


def _add_finetune_options(s: argparse.ArgumentParser) -> None:
    """The options of ``finetune`` and ``run``, with the defaults of :class:`FinetuneConfig`."""
    d = FinetuneConfig()
    s.add_argument("--output-dir", default=d.output_dir,
                   help="run folder: adapter/, samples.png, loss.png, report.json, checkpoints/; one run per "
                        "folder: a folder holding files is refused unless --resume or --overwrite is given, and "
                        "a folder another process is writing to is refused (lock file .lock)")
    s.add_argument("--precision", default=d.precision, choices=["fp32", "int8"],
                   help="fp32: plain peft LoRA in PyTorch (the reference); int8: GEMMs run INT8 on the "
                        "accelerator (board or emulation), which ones --offload says (every GEMM of the "
                        "step unless --offload lora)")
    s.add_argument("--offload", default=None, choices=["lora", "all"],
                   help=f"with --precision int8, which GEMMs run INT8 on the accelerator (default {d.offload}; "
                        "refused with --precision fp32, which runs none): lora = the six "
                        "LoRA GEMMs of every adapted layer (the frozen base model stays fp32 PyTorch); "
                        "all = every GEMM of the step: also the frozen Linear and Conv2d layers (forward "
                        "and input gradient; convolutions as implicit GEMM on NHWC INT8) and the "
                        "attention matmuls (Q.K^T, P.V and their backward), quantized as --offload-scheme "
                        "says; softmax, norms, SiLU, loss and AdamW stay fp32 on the host. "
                        "report.json's 'offload' gives calls, cycles, bytes, MACs and utilization per "
                        "family (linear, conv, attention, lora), fallbacks and recomputes")
    s.add_argument("--offload-scheme", default=None, choices=SCHEMES,
                   help=f"how --offload all quantizes the frozen layers' and attention's operands (default "
                        f"{d.offload_scheme}; refused where nothing is offloaded that it quantizes: --precision "
                        f"fp32, --offload lora): {schemes_help()}")
    s.add_argument("--fuse-lora", action="store_true",
                   help="with --offload all (row scheme): run each adapted layer's base GEMM and its LoRA "
                        "GEMM as one accelerator call: forward [Y | H] = X.[W; A]^T (X quantized once per "
                        "token, W and A stacked in one resident buffer, A's rows rewritten after each "
                        "optimizer step) and input gradient dX = [dY | dH].[W; A]; fewer calls and bytes "
                        "(report.json: offload family 'fused'); the LoRA GEMM H = X.A^T then uses the base's "
                        "per-token X instead of SmoothQuant (README, 'Whole-step INT8 offload'). Default off")
    s.add_argument("--pretrained-model", default=None,
                   help="local diffusers Stable Diffusion folder (unet, vae, text_encoder, tokenizer, "
                        "scheduler); default: the embedded digits model")
    s.add_argument("--instance-data-dir", default=None,
                   help="folder of images of the new concept (with a Stable Diffusion --pretrained-model; the "
                        "digits model refuses it and learns from --num-examples images of the digit 7)")
    s.add_argument("--prompt", default=None,
                   help="prompt of the instance images (with --pretrained-model; default 'a photo of sks'); the "
                        "digits model refuses it (its token is <sks>)")
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
    s.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in --output-dir; every option that defines the run "
                        "must match it, except --learning-rate, which may be changed (e.g. lowered after a "
                        "divergence) and is recorded as an override")
    s.add_argument("--overwrite", action="store_true",
                   help="replace the run in --output-dir (removes its checkpoints and outputs)")
    s.add_argument("--eval-every", type=int, default=d.eval_every,
                   help="digits model: measure the held-out loss of the new concept every N steps (shown in "
                        "loss.png and report.json; 0: never)")
    s.add_argument("--no-samples", action="store_true", help="skip the before/after sample grid")
    s.add_argument("--threads", type=int, default=None,
                   help="PyTorch CPU threads (default: 1 for the small embedded digits model, whose "
                        "ops are too small to gain from more and lose badly to thread contention on a "
                        "busy machine; PyTorch's choice for Stable Diffusion)")
    add_target(s)


def _data_parallel() -> bool:
    """Whether this process is a rank of a data-parallel launch (torchrun's WORLD_SIZE above 1;
    an unreadable value counts as one: finetune refuses it, naming the variable)."""
    try:
        return int(os.environ.get("WORLD_SIZE") or 1) > 1
    except ValueError:
        return True


def cmd_finetune(args: argparse.Namespace) -> int:
    from ..errors import LimitError

    if args.precision != "int8":  # options of the accelerator, which an fp32 run does not use
        given = [f"--{k.replace('_', '-')} {getattr(args, k)}" for k in ("offload", "offload_scheme", "board", "backend")
                 if getattr(args, k) is not None]
        if given:
            raise LimitError(f"{', '.join(given)}: options of an int8 run's accelerator; --precision "
                             f"{args.precision} runs none: drop them or use --precision int8")
    elif args.offload == "lora" and args.offload_scheme is not None:
        raise LimitError(f"--offload-scheme {args.offload_scheme} quantizes the frozen layers and attention of "
                         "--offload all; --offload lora runs only the LoRA GEMMs on the accelerator: drop one")
    values = {f.name: getattr(args, f.name) for f in fields(FinetuneConfig) if f.name in vars(args)}
    for name in ("offload", "offload_scheme"):
        if values[name] is None:  # the config's default
            del values[name]
    cfg = FinetuneConfig(**values, samples=not args.no_samples)
    # the option values and, in a lone process, the accelerator asked for, the folders and the
    # run folder, before the training stack's imports (10-15 s here); the ranks of a
    # data-parallel launch refuse the latter together, in finetune
    check_options(cfg, writer=False)
    if not _data_parallel():
        check_setup(cfg)
    from ..training.loop import finetune

    rep = finetune(cfg)
    if rep.get("interrupted"):
        if rep.get("writer", True):
            print(f"\ninterrupted: checkpoint saved at step {rep['step']}; continue with the same command and "
                  "--resume")
        return 130
    if rep.get("writer") is False:  # a data-parallel rank other than 0: rank 0 reports
        return 0
    t = rep["time_s"]
    whole = cfg.precision == "int8" and cfg.offload == "all"
    what = f"{cfg.precision} LoRA" + (" (every GEMM offloaded)" if whole else "") \
        + (", fused with the base layers" if cfg.fuse_lora else "")
    print(f"\nfinished {rep['steps']} steps of {what} (rank {cfg.rank}) on {rep['model']}; "
          f"final loss {rep['final_loss']:.4f}")
    print(f"time (measured on this machine): total {t['total_measured']:.1f} s, accelerator "
          f"{t['accelerator_measured']:.1f} s, quantization {t['quantization_measured']:.1f} s, "
          f"rest {t['rest_measured']:.1f} s")
    if rep.get("heldout_loss"):
        h = rep["heldout_loss"]
        print(f"held-out loss of the new concept: {h['values'][0]:.4f} at step {h['steps'][0]} -> "
              f"{h['values'][-1]:.4f} at step {h['steps'][-1]} ({h['metric']})")
    if rep.get("concept_samples"):
        c = rep["concept_samples"]
        print(f"samples.png: {c['read_as_concept']} of {c['shown']} samples of the new token read as the concept "
              f"({c['judge']})")
    if rep.get("accelerator"):
        a = rep["accelerator"]
        modelled = a["backend"] != "board"
        rows = [{"GEMM": k, "GEMMs": v["gemms"], "calls": v["calls"], "cycles": f"{v['cycles']:,}", "util": f"{v['utilization']:.1%}",
                 "MB moved (modelled)": f"{v['bytes_moved'] / 1e6:.1f}",
                 "dataflow": ", ".join(f"{d} x{n}" for d, n in sorted(v["dataflows"].items()))}
                for k, v in a["per_gemm"].items()]
        how = "modelled (emulation)" if modelled else "measured (board)"
        print(f"accelerator {a['board']} ({a['backend']}): cycles and utilization {how}, DDR traffic modelled; "
              f"{a['modelled_board_time_s']:.3f} s of LoRA GEMMs at {a['clock_mhz']} MHz ({how})\n")
        print(table(rows, ["GEMM", "GEMMs", "calls", "cycles", "util", "MB moved (modelled)", "dataflow"]))
    off = rep.get("offload")
    if off and off.get("mode") == "all":
        rows = [{"family": k, "calls": v["calls"], "cycles": f"{v['cycles']:,}", "GMAC": f"{v['macs'] / 1e9:.2f}",
                 "util": f"{v['utilization']:.1%}", "MB moved": f"{v['bytes_moved'] / 1e6:.1f}",
                 "recomputes": v["recomputes"] + v["host_recomputes"], "fallbacks": v["fallback_calls"]}
                for k, v in off["families"].items()]
        print(f"\n--offload all: every GEMM family on {off['board']} ({off['backend']}); "
              f"{off['modelled_board_time_s']:.3f} s of GEMMs (modelled)\n")
        print(table(rows, ["family", "calls", "cycles", "GMAC", "util", "MB moved", "recomputes", "fallbacks"]))
    print(f"\noutputs in {Path(cfg.output_dir)}/: {', '.join(written_outputs(Path(cfg.output_dir)))}")
    return 0


OUTPUTS = (("adapter", "adapter/ (diffusers LoRA, loads with pipeline.load_lora_weights)"),
           ("samples.png", "samples.png"), ("loss.png", "loss.png"), ("report.json", "report.json"),
           ("checkpoints", "checkpoints/"))
"""A run folder's outputs as the summary lists them (name in the folder, text)."""


def written_outputs(run: Path) -> list[str]:
    """The outputs of :data:`OUTPUTS` that ``run`` holds (``--no-samples`` writes no samples.png)."""
    return [text for name, text in OUTPUTS if (run / name).exists()]


def evaluate_seeds(args: argparse.Namespace) -> list[int]:
    """The training seeds of ``evaluate``: --seeds LIST, or --num-seeds N from --seed."""
    if args.seeds is not None:
        return args.seeds
    n = 3 if args.num_seeds is None else args.num_seeds
    at_least("--num-seeds", n, 1)
    first = 0 if args.seed is None else args.seed
    return list(range(first, first + n))


EVALUATE_RUN_OPTIONS = ("variants", "seeds", "num_seeds", "seed", "steps", "samples_per_class", "concept_samples",
                        "board", "backend")
"""The evaluate options that define new runs: left unset (None) they take their defaults, and
--combine, which trains and measures nothing, refuses them."""


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..errors import OptionError
    from ..training.evaluate import (DEFAULT_CONCEPT_SAMPLES, DEFAULT_SAMPLES_PER_CLASS, combine, evaluate,
                                     format_table)
    from ..training.variants import parse_variants

    if args.combine is not None:
        given = [f"--{k.replace('_', '-')}" for k in EVALUATE_RUN_OPTIONS if getattr(args, k) is not None]
        if given or args.no_reuse:
            raise OptionError(f"--combine pools finished evaluations and trains nothing: leave out "
                              f"{', '.join(given + (['--no-reuse'] if args.no_reuse else []))}")
        res = combine(args.combine, args.output_dir)
        print(format_table(res))
        print(f"\nwritten: {args.output_dir}/evaluate.json, evaluate_diffs.png (paired differences per seed over "
              f"the {len(res['seeds'])} pooled seeds; the sample images stay in the combined folders)")
        return 0
    # before anything is loaded; an empty or zero value is refused, not taken for the default
    names = parse_variants(list(DEFAULT_VARIANTS) if args.variants is None else args.variants)
    if args.threads < 1:
        raise OptionError(f"--threads must be a positive integer, not {args.threads}")
    try:
        res = evaluate(args.output_dir, variants=names, seeds=evaluate_seeds(args),
                       steps=FinetuneConfig.steps if args.steps is None else args.steps,
                       samples_per_class=DEFAULT_SAMPLES_PER_CLASS if args.samples_per_class is None
                       else args.samples_per_class,
                       concept_samples=DEFAULT_CONCEPT_SAMPLES if args.concept_samples is None else args.concept_samples,
                       board=args.board, backend=args.backend, reuse=not args.no_reuse, threads=args.threads,
                       log=lambda text: print(text, file=sys.stderr, flush=True))
    except KeyboardInterrupt:
        print(f"\nevaluate: interrupted; the finished runs and every measurement made so far are kept in "
              f"{args.output_dir}: the same command again resumes from them (a run stopped in its training "
              "continues from its checkpoint)", file=sys.stderr)
        return 130
    print(format_table(res))
    print(f"\nwritten: {args.output_dir}/evaluate.json, evaluate_diffs.png (paired differences per seed), "
          f"concept_samples.png; runs in {args.output_dir}/runs/<variant>/seed<s>/ (each with its cached "
          "measurement, measure.json)")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """The training subcommands."""
    s = sub.add_parser("finetune", help="LoRA fine-tuning with every GEMM of the step INT8 on the accelerator "
                                        "(--offload lora: the LoRA GEMMs only; --precision fp32: none)")
    _add_finetune_options(s)
    s.set_defaults(func=cmd_finetune)

    s = sub.add_parser("run", help="the main job: fine-tune the embedded digits model (int8, emulated) "
                                   "with the default options; same options as finetune")
    _add_finetune_options(s)
    s.set_defaults(func=cmd_finetune)

    from ..training.variants import variants_help

    s = sub.add_parser("evaluate", help="LoRA quality of fp32 vs int8 (and other variants) on real data (digits), "
                                        "paired per training seed, with 95%% confidence intervals")
    s.add_argument("--output-dir", default="runs/evaluate",
                   help="folder of evaluate.json, evaluate_diffs.png, concept_samples.png and the runs "
                        "(runs/<variant>/seed<s>/, one run per folder, each with its measurement, measure.json; "
                        "the base model's is base_measure.seed<s>.json): the same command again resumes a killed "
                        "evaluation, reusing runs and measurements that match exactly")
    s.add_argument("--variants", default=None,
                   help="comma-separated variants to train and compare, fp32 included (default "
                        f"{','.join(DEFAULT_VARIANTS)}: the reference and the default fine-tuning): "
                        + variants_help())
    seeds = s.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=comma_list(int), default=None,
                       help="training seeds, comma-separated (default 0,1,2); each variant is trained and "
                            "sampled with each seed, so differences to fp32 are paired per seed; 2+ seeds for a "
                            "confidence interval, 3+ for the target verdict")
    seeds.add_argument("--num-seeds", type=int, default=None,
                       help="instead of --seeds: this many seeds from --seed (--seed, --seed+1, ...; default 3)")
    s.add_argument("--seed", type=int, default=None, help="first seed of --num-seeds (default 0)")
    s.add_argument("--steps", type=int, default=None,
                   help="fine-tuning steps of each run (default: the finetune default)")
    s.add_argument("--samples-per-class", type=int, default=None,
                   help="images generated per known digit for the known-digit accuracy (default 20)")
    s.add_argument("--concept-samples", type=int, default=None,
                   help="images generated for the new token per run (default 100; concept accuracy and "
                        "probability; the binomial sampling error of the accuracy is about 50/sqrt(N) pp at most)")
    s.add_argument("--no-reuse", action="store_true",
                   help="retrain and measure again even if a run folder already holds a finished run with "
                        "these options and its measurement (reuse needs every option that defines a run or a "
                        "measurement to match, the seed included; the report lists what was reused)")
    s.add_argument("--threads", type=int, default=1,
                   help="PyTorch CPU threads (default 1: the digits model's ops are too small to gain from more "
                        "and lose badly to thread contention on a busy machine)")
    s.add_argument("--combine", type=comma_list(str), default=None, metavar="DIR,DIR[,...]",
                   help="pool finished evaluations with disjoint seeds (e.g. seeds split over processes or "
                        "machines; folders written by evaluate, or their evaluate.json) into --output-dir: the "
                        "statistics over every seed, nothing trained or measured again; refused if their "
                        "variants, steps, samples or run options differ or a seed repeats")
    add_target(s)
    s.set_defaults(func=cmd_evaluate)
