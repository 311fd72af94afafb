"""What the command groups share: the ``--board`` / ``--backend`` options, comma-separated list
arguments, the defaults shown in every option's help and plain-text tables."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Callable, Sequence

from ..errors import OptionError
from ..hw.config import BACKENDS, DEFAULT_BOARD, config
from ..paths import file_in_the_way

BACKEND_HELP = ("auto: the board if one is found with its bitstream, else emulation; board: PYNQ overlay; "
                "emulation/fast: emulated device with the vectorized bit-exact engine; csim: emulated device "
                "running the HLS C++ compiled with g++")


def add_board(p: argparse.ArgumentParser, default: str | None = None) -> None:
    """``--board``: a board of hardware.toml (``default`` None: ``$LORA_QTA_BOARD`` or the default board)."""
    fallback = default or f"$LORA_QTA_BOARD or {DEFAULT_BOARD}"
    p.add_argument("--board", default=default,
                   help=f"board configuration from hardware.toml ({', '.join(config().boards)}); default {fallback}")


def add_target(p: argparse.ArgumentParser, board_default: str | None = None,
               backend_default: str = "$LORA_QTA_BACKEND or auto") -> None:
    """``--board`` and ``--backend``: where the accelerator runs."""
    add_board(p, board_default)
    p.add_argument("--backend", default=None, choices=BACKENDS, help=f"{BACKEND_HELP} (default {backend_default})")


def comma_list(convert: Callable[[str], object] = str) -> Callable[[str], list]:
    """An argparse type: ``a,b,c`` -> ``[convert(a), convert(b), convert(c)]`` (empty items dropped)."""
    def parse(text: str) -> list:
        return [convert(x.strip()) for x in text.split(",") if x.strip()]

    parse.__name__ = f"comma-separated {getattr(convert, '__name__', 'value')} list"
    return parse


def at_least(option: str, value: int, low: int) -> None:
    """Refuse ``value`` of ``option`` below ``low``, naming the option (not a GEMM dimension or a
    Python error deep inside the command)."""
    if value < low:
        raise OptionError(f"{option} must be at least {low}, not {value}")


def nonempty(option: str, values: Sequence) -> None:
    """Refuse a list option that names nothing (``--ranks ''``), naming the option."""
    if not values:
        raise OptionError(f"{option} names nothing: give at least one value")


def positive(option: str, value: float) -> None:
    """Refuse a ``value`` of ``option`` that is not a positive finite number."""
    if not (math.isfinite(value) and value > 0):
        raise OptionError(f"{option} must be a {'finite' if math.isinf(value) else 'positive'} number, not {value}")


def output_file(path: Path | None, option: str) -> None:
    """Refuse ``path`` as the file ``option`` writes before any work is done: a folder, or a file
    under a path whose existing part is a file, would fail only once the results are in."""
    if path is None:
        return
    if path.is_dir():
        raise OptionError(f"{option} {path} is a folder: give the file to write (e.g. {path}/<name>)")
    _no_file_above(path.absolute().parent, path, option)


def output_folder(path: Path, option: str) -> None:
    """Refuse ``path`` as the folder ``option`` writes into before any work is done, if it or a
    folder above it is a file."""
    if path.exists() and not path.is_dir():
        raise OptionError(f"{option} {path} is a file: give a folder (the command writes several files into it)")
    _no_file_above(path, path, option)


def _no_file_above(folder: Path, path: Path, option: str) -> None:
    """Refuse ``path`` of ``option`` when a file stands where ``folder`` (its folder) must be."""
    blocking = file_in_the_way(folder)
    if blocking is not None:
        raise OptionError(f"{option} {path}: {blocking} is a file, not a folder")


def show_defaults(parser: argparse.ArgumentParser) -> None:
    """Append ``(default X)`` to the help of every option of ``parser`` and its subcommands that
    has a value by default and whose help does not already say what its default is (a flag,
    off by default, and an option without a default value say nothing)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases share a parser
                show_defaults(sub)
            continue
        default = action.default
        if (not action.option_strings or action.help in (None, argparse.SUPPRESS) or "default" in action.help
                or default is None or default is False or default == argparse.SUPPRESS):
            continue
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        action.help += f" (default {shown})".replace("%", "%%")


def table(rows: list[dict], cols: Sequence[str]) -> str:
    """``rows`` as an aligned plain-text table of the columns ``cols``."""
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    line = "  ".join(c.ljust(widths[c]) for c in cols)
    sep = "  ".join("-" * widths[c] for c in cols)
    body = ["  ".join(str(r[c]).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join([line, sep, *body])
