"""The dependency locks (constraints/): consistent, admitted by pyproject.toml's ranges, and the
board lock installable on a PYNQ image's Python 3.10 aarch64 without replacing its pynq.

Offline and fast (no resolver, no network): the board lock is checked against the metadata
snapshot that `make check-board-lock` fetches from PyPI; the PC lock against the installed
environment, which `make install` builds from it.
"""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("check_locks", ROOT / "constraints" / "check_locks.py")
check_locks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_locks)

BOARD = check_locks.read_lock(ROOT / "constraints" / "py310-aarch64.txt")
SNAPSHOT = json.loads(check_locks.SNAPSHOT.read_text())
BOARD_REQUIRES = {n: m["requires_dist"] for n, m in SNAPSHOT.items()}


def test_board_lock_is_consistent_for_python310_aarch64():
    assert check_locks.check_set("py310-aarch64", BOARD, BOARD_REQUIRES) == []


def test_board_lock_wheels_install_on_the_board_and_match_the_snapshot():
    assert check_locks.check_snapshot(BOARD, SNAPSHOT) == []


def test_board_lock_leaves_the_image_pynq_alone():
    assert check_locks.check_image(BOARD) == []
    assert "pynq" not in BOARD
    assert BOARD["torch"] == "2.10.0"  # the newest aarch64 torch on PyPI that is a CPU build


def test_board_markers_are_evaluated_for_the_board():
    # tomli only below 3.11; torch's CUDA packages only on x86_64: neither the host's view
    assert "tomli" in BOARD
    assert not any(n.startswith(("nvidia-", "cuda-", "triton")) for n in BOARD)


def test_the_checker_finds_a_broken_lock():
    broken = dict(BOARD, numpy="2.0.0")
    del broken["tqdm"]
    problems = check_locks.check_set("py310-aarch64", broken, BOARD_REQUIRES)
    assert any("numpy" in p and "2.0.0" in p for p in problems)
    assert any("tqdm" in p and "does not pin" in p for p in problems)
    assert any("numpy<2.0" in p for p in check_locks.check_image(broken))
    stray = dict(BOARD, pynq="3.1.2")
    assert any("pynq" in p for p in check_locks.check_image(stray))


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="the PC lock is for Python 3.11")
def test_installed_environment_is_the_pc_lock_and_consistent():
    pins = check_locks.read_lock(ROOT / "constraints" / "py311.txt")
    requires, problems = check_locks.installed_requires(pins)
    if any("pynq" in p for p in problems) and "pynq" in pins:
        pytest.skip("another pynq than the lock's is installed (make test-pynq3)")
    assert problems == []
    assert check_locks.check_set("py311", pins, requires) == []
