"""The single hardware configuration and what is generated from it."""

import re

import pytest

from lora_qta.hw import config as hwconfig
from lora_qta.errors import QtaError
from lora_qta.hw.config import config

# The kernel's signature order and each argument's kind (what Vitis HLS lays out).
SIGNATURE = [("a", "ptr"), ("b", "ptr"), ("c", "ptr"), ("scales", "ptr"), ("m", "u32"), ("n", "u32"),
             ("k", "u32"), ("lda", "u32"), ("ldb", "u32"), ("ldc", "u32"), ("tile_m", "u32"),
             ("tile_n", "u32"), ("tile_k", "u32"), ("flags", "u32"), ("mult", "u32"), ("shift", "u32"),
             ("seed", "u32"), ("status", "out32"), ("cycles", "out64")]


def test_register_offsets_follow_the_vitis_layout():
    """Recompute the Vitis HLS s_axilite layout from the signature and compare."""
    off, expected = 0x10, {}
    for name, kind in SIGNATURE:
        expected[name] = off
        if kind == "out32":
            expected[name + "_ctrl"] = off + 4
        if kind == "out64":
            expected[name + "_ctrl"] = off + 8
        off += {"ptr": 12, "u32": 8, "out32": 8, "out64": 12}[kind]
    regs = config().registers
    assert {k: regs[k] for k in expected} == expected
    assert (regs["ctrl"], regs["gie"], regs["ier"], regs["isr"]) == (0, 4, 8, 12)


def test_kernel_signature_matches_the_configuration():
    src = (hwconfig.Path(__file__).resolve().parents[2] / "hls" / "src" / "qta_gemm.h").read_text()
    sig = re.search(r"void qta_gemm\((.*?)\);", src, re.S).group(1)
    names = [re.findall(r"(\w+)\s*$", p.strip())[0] for p in sig.split(",")]
    assert names == [n for n, _ in SIGNATURE]


@pytest.mark.parametrize("board", sorted(config().boards))
def test_header_defines_every_register_and_size(board):
    h = hwconfig.header(board)
    b = config().board(board)
    for name, off in config().registers.items():
        assert f"#define QTA_REG_{name.upper()} 0x{off:02X}" in h
    assert f"#define QTA_ROWS {b.array_rows}" in h and f"#define QTA_COLS {b.array_cols}" in h
    for name in ("m", "n", "k", "flags", "cycles", "status"):
        assert f"port={name} offset=0x{config().registers[name]:02X}" in h


@pytest.mark.parametrize("board", sorted(config().boards))
def test_tcl_sets_part_and_clock(board):
    t = hwconfig.tcl(board)
    b = config().board(board)
    assert f"set QTA_PART {{{b.part}}}" in t
    assert f"set QTA_CLOCK_PERIOD_NS {{{1000 / b.clock_mhz:.3f}}}" in t


@pytest.mark.parametrize("board", sorted(config().boards))
def test_estimate_fits_the_board(board):
    est = hwconfig.estimate_resources(board)
    for key in ("dsp_pct", "bram36_pct", "uram_pct", "lut_pct"):
        assert 0 <= est[key] < 100, (key, est)


def test_three_boards_and_splits():
    assert {"zcu104", "kv260", "pynq_z2"} <= set(config().boards)
    b = config().board("zcu104")
    assert b.splits == (-3, -2, -1, 0, 1, 2, 3)
    assert config().board("pynq_z2").splits == (-2, -1, 0, 1)


def test_unknown_board_is_a_clear_error():
    with pytest.raises(QtaError, match="unknown board 'nexys'.*zcu104"):
        config().board("nexys")


def test_digest_changes_with_the_board():
    digests = {hwconfig.board_digest(config().board(b)) for b in config().boards}
    assert len(digests) == len(config().boards)
