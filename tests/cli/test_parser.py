"""Every command is reachable as ``lora-qta <command>`` and explains each of its options."""

import argparse
import subprocess
import sys

import pytest

from lora_qta.cli import build_parser

COMMANDS = ["info", "gemm", "demo", "calltime", "csim", "config", "run", "finetune", "evaluate", "bench", "energy",
            "power", "speed", "throughput", "rtl"]


def test_the_parser_has_every_command():
    assert sorted(build_parser()._subparsers._group_actions[0].choices) == sorted(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_help(command):
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    for action in sub._actions:
        if action.dest != "help":
            assert action.help and len(action.help) > 10, (command, action.dest)


def _parsers(parser):
    """(name, parser) of every command and subcommand under ``parser``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                yield from ((f"{name} {n}", p) for n, p in _parsers(sub))


def test_every_option_with_a_default_value_says_it():
    """`finetune --help` listed --steps, --rank, --learning-rate... without their defaults."""
    checked = 0
    for name, sub in _parsers(build_parser()):
        for action in sub._actions:
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
                assert "default" in action.help, (name, action.dest, action.default)
                checked += 1
    assert checked > 50


def test_finetune_help_shows_the_run_configs_defaults():
    from lora_qta.training.config import FinetuneConfig

    d = FinetuneConfig()
    text = " ".join(build_parser()._subparsers._group_actions[0].choices["finetune"].format_help().split())
    for shown in (f"optimizer steps (default {d.steps})", f"LoRA rank r (default {d.rank})",
                  f"images per step (default {d.batch_size})", f"peak learning rate (default {d.learning_rate})",
                  f"(default {' '.join(d.target_modules)})", f"(default {d.precision})"):
        assert shown in text, shown


def test_every_help_text_renders():
    """argparse formats help strings with %: a bare "95%" in a command's help broke
    `lora-qta --help` (TypeError). The top-level help and every command's help must render."""
    parser = build_parser()
    assert "evaluate" in parser.format_help()
    for command, sub in parser._subparsers._group_actions[0].choices.items():
        assert sub.format_help(), command


@pytest.mark.parametrize("command", ["bench", "energy", "power", "speed"])
def test_report_commands_explain_their_options(command):
    p = subprocess.run([sys.executable, "-m", "lora_qta.cli", command, "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "--out" in p.stdout


@pytest.mark.parametrize("argv, fused", [([], False), (["--fuse-lora", "--offload-scheme", "row"], True)])
def test_fuse_lora_reaches_the_run_config(monkeypatch, tmp_path, argv, fused):
    """``finetune --fuse-lora`` sets FinetuneConfig.fuse_lora (default off)."""
    from lora_qta.cli import main
    from lora_qta.training import loop

    seen = []
    monkeypatch.chdir(tmp_path)  # the default --output-dir, runs/default, checked before finetune
    monkeypatch.setattr(loop, "finetune", lambda cfg: seen.append(cfg) or {"interrupted": True, "step": 0})
    assert main(["finetune", "--offload", "all", *argv]) == 130
    assert seen[0].fuse_lora is fused and seen[0].offload == "all"


@pytest.mark.parametrize("command, argv, offload", [
    ("run", [], "all"), ("finetune", [], "all"), ("finetune", ["--offload", "lora"], "lora"),
    ("finetune", ["--precision", "fp32"], "all"),  # fp32 offloads nothing: the field is not read
])
def test_offload_reaches_the_run_config_with_the_whole_step_as_default(monkeypatch, tmp_path, command, argv, offload):
    """``run`` and ``finetune`` offload every GEMM unless told ``--offload lora``."""
    from lora_qta.cli import main
    from lora_qta.training import loop

    seen = []
    monkeypatch.chdir(tmp_path)  # the default --output-dir, runs/default, checked before finetune
    monkeypatch.setattr(loop, "finetune", lambda cfg: seen.append(cfg) or {"interrupted": True, "step": 0})
    assert main([command, *argv]) == 130
    assert seen[0].offload == offload


def test_offload_scheme_choices_are_the_offloads_schemes():
    """The command line (which does not import PyTorch) offers exactly the schemes the offload knows."""
    from lora_qta.lora.offload import SCHEMES

    for command in ("run", "finetune"):
        sub = build_parser()._subparsers._group_actions[0].choices[command]
        opt = next(a for a in sub._actions if a.dest == "offload_scheme")
        assert tuple(opt.choices) == SCHEMES, command
