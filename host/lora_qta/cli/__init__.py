"""The ``lora-qta`` command line: parsing and dispatch only.

One module per command group: :mod:`.hardware` (info, gemm, demo, calltime, csim, config; none needs
PyTorch), :mod:`.training` (finetune, run, evaluate), :mod:`.analysis` (bench, energy, power,
speed, throughput) and :mod:`.rtl` (rtl sim, synth, sweep: the RTL PE array with open tools); :mod:`.common` holds the shared ``--board`` / ``--backend`` options.
``lora-qta <command> --help`` explains each option. Every :class:`~lora_qta.errors.QtaError`
is printed as one line ``lora-qta: error: ...`` with exit status 2, and so is a dependency that
this Python cannot import (the training commands need PyTorch, diffusers and peft; a board image
may lack them).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from ..errors import QtaError
from . import analysis, hardware, rtl, training
from .common import show_defaults


NOTEBOOKS_HINT = ("notebooks: `pynq get-notebooks lora-qta -p DIR` on a board; on a PC add --ignore-overlays "
                  "(PYNQ finds no FPGA there and stops with 'No device found in the system')")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command (building it does not import PyTorch)."""
    p = argparse.ArgumentParser(prog="lora-qta", description=(
        "INT8 LoRA training acceleration on PYNQ FPGAs, with a bit-exact emulation of the accelerator."),
        epilog=NOTEBOOKS_HINT)
    sub = p.add_subparsers(dest="command", required=True)
    hardware.add_commands(sub)
    training.add_commands(sub)
    analysis.add_commands(sub)
    rtl.add_commands(sub)
    show_defaults(p)
    return p


def missing_dependency(command: str, module: str) -> str:
    """What to do when ``command`` cannot import ``module``: name the distribution that provides it."""
    from importlib.metadata import packages_distributions

    top = module.split(".")[0]
    dist = (packages_distributions().get(top) or [top])[0]
    return (f"`lora-qta {command}` needs the Python package {dist} (module {top}), which this Python cannot "
            f"import: install the project with its dependencies (`make install` on a PC; on a ZCU104 or KV260 "
            f"the board lock, README 'Installing and supported versions'). A PYNQ-Z2 has no wheels of "
            f"torch: run this command on a PC or a ZCU104/KV260 (notebooks/README.md)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except QtaError as e:
        print(f"lora-qta: error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        if not e.name or e.name.split(".")[0] == __package__.split(".")[0]:
            raise  # the package's own modules: a broken installation, not a missing dependency
        print(f"lora-qta: error: {missing_dependency(args.command, e.name)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`lora-qta info | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's final flush goes nowhere
        return 1
