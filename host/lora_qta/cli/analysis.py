"""Report commands: ``bench`` (dataflow study, cycle-model check, the whole training step, energy),
``energy``, ``power``, ``speed`` and ``throughput``. Each runs the models of
:mod:`lora_qta.analysis`, prints their report and writes its files."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..analysis.energy import HOROWITZ_45NM
from ..errors import OptionError
from ..hw.config import DEFAULT_BOARD, config, resolve_board
from ..lora.schemes import SCHEMES, schemes_help
from ..training.config import FinetuneConfig
from .common import add_board, add_target, at_least, comma_list, nonempty, output_file, output_folder, positive

INTS = comma_list(int)
NAMES = comma_list()


def _print_written(paths: list[Path]) -> None:
    for path in paths:
        print(f"wrote {path}")


DETAIL_RANKS = (4, 16)
"""The ranks of dataflow.md's per-GEMM table unless --detail-ranks says otherwise."""


def _check_bench(a: argparse.Namespace) -> None:
    """Every option of ``bench`` before its first stage: a bad value in a later stage's option
    was found only after the dataflow sweep had run (minutes at the defaults) and was written."""
    from ..analysis.shapes import model_spec
    from ..errors import UnknownBoardError

    output_folder(a.out, "--out")
    lists = [("--boards", a.boards), ("--models", a.models), ("--ranks", a.ranks)]
    if a.step_models:
        lists.append(("--step-boards", a.step_boards if a.step_boards is not None else a.boards))
    if a.energy_models:
        lists += [("--energy-boards", a.energy_boards), ("--energy-ranks", a.energy_ranks)]
    if a.allreduce_model:
        lists.append(("--allreduce-boards", a.allreduce_boards))
    for option, values in lists:
        nonempty(option, values)
    for option, names in (("--boards", a.boards), ("--step-boards", a.step_boards or []),
                          ("--energy-boards", a.energy_boards if a.energy_models else [])):
        for name in names:
            try:
                config().board(name)
            except UnknownBoardError as e:
                raise OptionError(f"{option}: {e}") from None
    for option, names in (("--models", a.models), ("--step-models", a.step_models),
                          ("--energy-models", a.energy_models),
                          ("--allreduce-model", [a.allreduce_model] if a.allreduce_model else [])):
        for name in names:
            try:
                model_spec(name)
            except OptionError as e:
                raise OptionError(f"{option}: {e}") from None
    for option, values in (("--ranks", a.ranks), ("--csim-ranks", a.csim_ranks), ("--energy-ranks", a.energy_ranks),
                           ("--step-rank", [a.step_rank]), ("--allreduce-boards", a.allreduce_boards)):
        if values:
            at_least(option, min(values), 1)
    for option, value in (("--resolution", a.resolution), ("--csim-limit", a.csim_limit)):
        if value is not None:  # 0 was taken for the default (--resolution) or checked nothing (--csim-limit)
            at_least(option, value, 1)
    if a.detail_board is not None and a.detail_board not in a.boards:
        raise OptionError(f"--detail-board {a.detail_board} is not among --boards ({','.join(a.boards)}): "
                          "its per-GEMM table comes from their sweep")
    if a.detail_ranks is not None and set(a.detail_ranks) - set(a.ranks):
        raise OptionError(f"--detail-ranks {','.join(map(str, a.detail_ranks))}: only ranks of --ranks "
                          f"({','.join(map(str, a.ranks))}) are swept")


def cmd_bench(a: argparse.Namespace) -> int:
    from ..analysis import allreduce, dataflow, energy, plots, report, step

    _check_bench(a)
    t0 = time.perf_counter()
    res = dataflow.run_dataflow(a.boards, a.models, a.ranks, a.resolution)
    if a.csim_ranks:
        res["csim_check"] = dataflow.csim_check(a.boards, a.models, a.csim_ranks, limit=a.csim_limit)
    if a.allreduce_model:
        res["allreduce"] = allreduce.lora_allreduce(a.allreduce_model, a.ranks, a.allreduce_boards)
    res["seconds"] = time.perf_counter() - t0
    detail = a.detail_board or (DEFAULT_BOARD if DEFAULT_BOARD in a.boards else a.boards[0])
    ranks = a.detail_ranks or [r for r in DETAIL_RANKS if r in a.ranks] or a.ranks[:1]
    text, written = report.write_dataflow(res, a.out, detail, ranks)
    print(text)
    if not a.no_plots:
        written += plots.dataflow_plots(res, a.out)
    if a.step_models:
        boards = a.step_boards or a.boards
        whole = step.step_table(boards, a.step_models, a.step_rank)
        en = energy.whole_step_energy(boards, a.step_models, a.step_rank)
        whole["target_check"] = step.target_check(whole, en)
        text, files = report.write_step(whole, a.out, en)
        print(text)
        written += files
        if not a.no_plots:
            written += plots.step_plots(whole, a.out)
    if a.energy_models:
        rep = energy.energy_report(a.energy_boards, a.energy_models, a.energy_ranks)
        print(report.energy_markdown(rep))
        written += report.write_energy(rep, a.out)
        if not a.no_plots:
            written.append(plots.energy_plot(rep, a.out / "energy.png"))
    _print_written(written)
    print(f"({time.perf_counter() - t0:.1f} s on this machine)")
    return 1 if res.get("csim_check", {}).get("mismatches") else 0


def cmd_energy(a: argparse.Namespace) -> int:
    from ..analysis import energy, plots, report

    output_folder(a.out, "--out")
    for option, values in (("--boards", a.boards), ("--models", a.models), ("--ranks", a.ranks)):
        nonempty(option, values)
    at_least("--ranks", min(a.ranks), 1)
    positive("--dram-pj", a.dram_pj)
    rep = energy.energy_report(a.boards, a.models, a.ranks, energy.EnergyTable(dram_64bit=a.dram_pj))
    print(report.energy_markdown(rep))
    written = report.write_energy(rep, a.out)
    if not a.no_plot:
        written.append(plots.energy_plot(rep, a.out / "energy.png"))
    _print_written(written)
    return 0


def cmd_power(a: argparse.Namespace) -> int:
    from ..analysis import plots, power, report

    output_folder(a.out, "--out")  # before the recording, which the error would otherwise lose
    for option, value in (("--tokens", a.tokens), ("--features", a.features), ("--rank", a.rank)):
        at_least(option, value, 1)
    for option, value in (("--interval", a.interval), ("--idle-seconds", a.idle_seconds),
                          ("--phase-seconds", a.phase_seconds)):
        positive(option, value)
    rep, frame = power.measure(resolve_board(a.board).name, a.sensors, a.rails, a.interval, a.idle_seconds,
                               a.phase_seconds, a.tokens, a.features, a.rank, a.idle_watts, a.backend)
    print(report.power_markdown(rep))
    written = report.write_power(rep, frame, a.out)
    if not a.no_plot:
        written.append(plots.power_plot(frame, rep, a.out / "power.png"))
    _print_written(written)
    return 0


def _write_json(path: Path | None, figures: dict) -> None:
    """Write a benchmark's ``figures`` to ``path`` (checked earlier by ``output_file``), if given."""
    if path:
        import json

        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(figures, indent=2) + "\n")


def cmd_speed(a: argparse.Namespace) -> int:
    import torch

    from ..analysis import report, speed

    output_file(a.out, "--out")
    at_least("--threads", a.threads, 1)
    at_least("--steps", a.steps, 1)   # 0 divided by zero, -1 gave NaN figures (and invalid JSON)
    at_least("--warmup", a.warmup, 0)
    torch.set_num_threads(a.threads)
    r = speed.measure(a.steps, a.warmup, a.engine, a.batch_size, a.board, a.offload, a.fuse_lora,
                      a.offload_scheme)
    print(report.speed_summary(r), end="")
    _write_json(a.out, r)
    return 0


def cmd_throughput(a: argparse.Namespace) -> int:
    from ..analysis import report, speed

    output_file(a.out, "--out")
    at_least("--repeat", a.repeat, 1)
    board = resolve_board(a.board).name
    layers = speed.QUICK_LAYERS if a.quick else speed.THROUGHPUT_LAYERS
    rows = speed.throughput(board, a.repeat, layers)
    print(report.throughput_markdown(rows, board, a.repeat), end="")
    _write_json(a.out, {"note": "measured on this machine; seconds are the best of repeat runs, board_us modelled "
                                "(the kernel's cycle count at the board clock)",
                        "board": board, "repeat": a.repeat, "quick": a.quick, "gemms": rows})
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """The report subcommands."""
    s = sub.add_parser("bench", help="dataflow benchmark of SD1.5/SDXL LoRA GEMMs on every board, cycle-model "
                                     "check, the whole training step (ARM and accelerator) and energy (modelled)")
    s.add_argument("--boards", type=NAMES, default=list(config().boards), help="comma-separated boards (default: all)")
    s.add_argument("--models", type=NAMES, default=["sd15", "sdxl"], help="comma-separated models: sd15, sdxl, digits")
    s.add_argument("--ranks", type=INTS, default=[4, 8, 16, 32, 64, 128], help="comma-separated LoRA ranks")
    s.add_argument("--resolution", type=int, default=None,
                   help="image side in pixels (default 512 for SD1.5, 1024 for SDXL)")
    s.add_argument("--out", type=Path, default=Path("runs/bench"), help="output folder (default runs/bench)")
    s.add_argument("--csim-ranks", type=INTS, default=[4, 16, 64],
                   help="ranks whose scaled-down shapes are checked on the C-simulated kernel ('' to skip)")
    s.add_argument("--csim-limit", type=int, default=None, help="at most this many C-simulated calls")
    s.add_argument("--step-models", type=NAMES, default=["sd15", "sdxl"],
                   help="models of the whole-step model (every GEMM and host operation of a training step; "
                        "'' to skip)")
    s.add_argument("--step-boards", type=NAMES, default=None, help="boards of the whole-step model (default: --boards)")
    s.add_argument("--step-rank", type=int, default=4, help="LoRA rank of the whole-step model")
    s.add_argument("--allreduce-model", default="sd15",
                   help="model of the data-parallel all-reduce table: LoRA gradients over 1 GbE ('' to skip)")
    s.add_argument("--allreduce-boards", type=INTS, default=[2, 4, 8],
                   help="numbers of boards of the all-reduce table")
    s.add_argument("--energy-models", type=NAMES, default=["digits", "sd15"],
                   help="models of the energy report ('' to skip); digits = the project's embedded model")
    s.add_argument("--energy-ranks", type=INTS, default=[4, 16], help="ranks of the energy report")
    s.add_argument("--energy-boards", type=NAMES, default=[DEFAULT_BOARD], help="boards of the energy report")
    s.add_argument("--detail-board", default=None,
                   help=f"board of --boards whose per-GEMM table goes into dataflow.md (default {DEFAULT_BOARD} "
                        "if among --boards, else the first)")
    s.add_argument("--detail-ranks", type=INTS, default=None,
                   help=f"ranks of --ranks in the per-GEMM table (default those of "
                        f"{','.join(map(str, DETAIL_RANKS))} among --ranks, else the first)")
    s.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("energy", help="energy per LoRA training step, INT8 vs FP16/FP32 (modelled)")
    s.add_argument("--boards", type=NAMES, default=[DEFAULT_BOARD], help=f"comma-separated boards (default {DEFAULT_BOARD})")
    s.add_argument("--models", type=NAMES, default=["digits", "sd15"], help="comma-separated: digits, sd15, sdxl")
    s.add_argument("--ranks", type=INTS, default=[4, 16], help="comma-separated LoRA ranks")
    s.add_argument("--dram-pj", type=float, default=HOROWITZ_45NM.dram_64bit,
                   help="DRAM energy per 64-bit access in pJ (Horowitz: 1300-2600; default the midpoint)")
    s.add_argument("--out", type=Path, default=Path("runs/bench"), help="output folder (default runs/bench)")
    s.add_argument("--no-plot", action="store_true", help="skip the PNG")
    s.set_defaults(func=cmd_energy)

    s = sub.add_parser("power", help="record board power rails (or emulated sensors) over GEMM and training "
                                     "phases: energy per GEMM and per step, GOPS/W")
    add_target(s, backend_default="board on a board, else emulation")
    s.add_argument("--sensors", default="auto", choices=["auto", "board", "emulated"],
                   help="auto: the board's PYNQ rails if pynq.get_rails() finds any, else emulated sensors")
    s.add_argument("--rails", type=NAMES, default=None,
                   help="comma-separated rail names to sum (default: the input rail)")
    s.add_argument("--interval", type=float, default=0.05, help="sampling interval in seconds")
    s.add_argument("--idle-seconds", type=float, default=2.0, help="length of each idle phase")
    s.add_argument("--phase-seconds", type=float, default=3.0, help="length of each workload phase")
    s.add_argument("--tokens", type=int, default=1024, help="tokens of the GEMM-loop layer")
    s.add_argument("--features", type=int, default=320, help="in = out features of the GEMM-loop layer")
    s.add_argument("--rank", type=int, default=8, help="LoRA rank of both workloads")
    s.add_argument("--idle-watts", type=float, default=None,
                   help="idle draw of the emulated board in W (default: the board's assumed idle_watts "
                        "in hardware.toml)")
    s.add_argument("--out", type=Path, default=Path("runs/power"), help="output folder (default runs/power)")
    s.add_argument("--no-plot", action="store_true", help="skip the PNG")
    s.set_defaults(func=cmd_power)

    s = sub.add_parser("speed", help="one training step, int8 emulated vs fp32, measured side by side")
    s.add_argument("--steps", type=int, default=8, help="timed steps per variant (after the warm-up)")
    s.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    s.add_argument("--engine", default="fast", choices=["fast", "csim"], help="emulation engine of the int8 variant")
    s.add_argument("--batch-size", type=int, default=16, help="images per step, as finetune's")
    s.add_argument("--offload", default=FinetuneConfig.offload, choices=["lora", "all"],
                   help=f"all: also time the int8 whole-step variant (finetune --offload all: every GEMM on "
                        f"the emulated accelerator) beside fp32 and int8 LoRA-only; lora: fp32 and int8 LoRA-only "
                        f"only (default {FinetuneConfig.offload}, as finetune's)")
    s.add_argument("--offload-scheme", default=FinetuneConfig.offload_scheme, choices=SCHEMES,
                   help=f"with --offload all: the whole step's quantization scheme, as finetune's (default "
                        f"{FinetuneConfig.offload_scheme}; --fuse-lora needs row): {schemes_help()}")
    s.add_argument("--fuse-lora", action="store_true",
                   help="with --offload all: also time the whole step with --fuse-lora (each LoRA layer fused "
                        "with its base layer, as finetune --fuse-lora runs it) beside the unfused one")
    add_board(s)
    s.add_argument("--threads", type=int, default=1,
                   help="PyTorch CPU threads for both variants (1, as the default fine-tuning uses)")
    s.add_argument("--out", type=Path, default=None, help="also write the figures as JSON to this file")
    s.set_defaults(func=cmd_speed)

    s = sub.add_parser("throughput", help="emulation engines (fast, csim) against numpy float32 on the GEMMs "
                                          "of LoRA layers, measured")
    add_board(s)
    s.add_argument("--repeat", type=int, default=3, help="timed runs per measurement (the best is reported)")
    s.add_argument("--quick", action="store_true", help="smaller layers, for a fast smoke run")
    s.add_argument("--out", type=Path, default=None, help="also write the figures as JSON to this file")
    s.set_defaults(func=cmd_throughput)
