"""Every command is reachable as ``lora-qta <command>`` and explains each of its options."""

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


@pytest.mark.parametrize("argv, fused", [([], False), (["--fuse-lora"], True)])
def test_fuse_lora_reaches_the_run_config(monkeypatch, argv, fused):
    """``finetune --fuse-lora`` sets FinetuneConfig.fuse_lora (default off)."""
    from lora_qta.cli import main
    from lora_qta.training import loop

    seen = []
    monkeypatch.setattr(loop, "finetune", lambda cfg: seen.append(cfg) or {"interrupted": True})
    assert main(["finetune", "--offload", "all", *argv]) == 130
    assert seen[0].fuse_lora is fused and seen[0].offload == "all"


@pytest.mark.parametrize("command, argv, offload", [
    ("run", [], "all"), ("finetune", [], "all"), ("finetune", ["--offload", "lora"], "lora"),
    ("finetune", ["--precision", "fp32"], "all"),  # fp32 offloads nothing: the field is not read
])
def test_offload_reaches_the_run_config_with_the_whole_step_as_default(monkeypatch, command, argv, offload):
    """``run`` and ``finetune`` offload every GEMM unless told ``--offload lora``."""
    from lora_qta.cli import main
    from lora_qta.training import loop

    seen = []
    monkeypatch.setattr(loop, "finetune", lambda cfg: seen.append(cfg) or {"interrupted": True})
    assert main([command, *argv]) == 130
    assert seen[0].offload == offload


def test_offload_scheme_choices_are_the_offloads_schemes():
    """The command line (which does not import PyTorch) offers exactly the schemes the offload knows."""
    from lora_qta.lora.offload import SCHEMES

    for command in ("run", "finetune"):
        sub = build_parser()._subparsers._group_actions[0].choices[command]
        opt = next(a for a in sub._actions if a.dest == "offload_scheme")
        assert tuple(opt.choices) == SCHEMES, command
