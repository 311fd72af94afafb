"""The single hardware configuration and what is generated from it."""

import re

import pytest

from lora_qta import hwconfig
from lora_qta.errors import QtaError
from lora_qta.hwconfig import ARG_WORDS, config

WORDS = {"pointer": 3, "scalar": 2, "scalar64": 3, "out32": 2, "out64": 3}


def test_contract_version_is_2():
    assert config().config_version == 2


def test_register_offsets_follow_the_vitis_layout():
    """Recompute the Vitis HLS s_axilite layout from the argument kinds and compare."""
    assert ARG_WORDS == WORDS
    off = 0x10
    for a in config().args:
        assert a.offset == off, a.name
        if a.kind == "out32":
            assert config().registers[a.name + "_ctrl"] == off + 4
        if a.kind == "out64":
            assert config().registers[a.name + "_ctrl"] == off + 8
        off += 4 * WORDS[a.kind]
    regs = config().registers
    assert (regs["ctrl"], regs["gie"], regs["ier"], regs["isr"]) == (0, 4, 8, 12)
    assert off <= config().address_range


def test_v2_arguments():
    names = [a.name for a in config().args]
    assert names[:8] == ["rd0", "rd1", "rd2", "rd3", "wr0", "wr1", "wr2", "wr3"]
    for want in ("a", "b", "c", "scales", "batch", "stride_a", "stride_b", "stride_c", "conv_in", "conv_out",
                 "conv_cin", "conv_win", "conv_dil", "status", "sat_count", "amax", "cycles_model",
                 "cycles_measured"):
        assert want in names
    kinds = {a.name: a.kind for a in config().args}
    assert {kinds[x] for x in ("a", "b", "c", "scales")} == {"scalar64"}
    assert kinds["cycles_model"] == kinds["cycles_measured"] == "out64"
    assert config().flags["conv"] == 13


def test_bad_offset_is_a_clear_error():
    from lora_qta.hwconfig import ConfigError, _args

    raw = [{"name": "x", "kind": "scalar", "type": "uint32_t", "offset": 0x14, "doc": "x"}]
    with pytest.raises(ConfigError, match="lays it out at 0x10"):
        _args(raw)


@pytest.mark.parametrize("board", sorted(config().boards))
def test_header_defines_the_prototype_pragmas_and_sizes(board):
    h = hwconfig.header(board)
    b = config().board(board)
    for name, off in config().registers.items():
        assert f"#define QTA_REG_{name.upper()} 0x{off:02X}" in h
    assert f"#define QTA_ROWS {b.array_rows}" in h and f"#define QTA_COLS {b.array_cols}" in h
    params = re.search(r"#define QTA_TOP_PARAMS (.*)", h).group(1)
    assert [p.split()[-1].lstrip("*") for p in params.split(", ")] == [a.name for a in config().args]
    for a in config().args:
        assert f"port={a.name} offset=0x{a.offset:02X} bundle=control" in h
        if a.kind == "pointer":
            assert f"mode=m_axi port={a.name} bundle={a.bundle} offset=slave depth={a.depth}" in h
    for key in ("A_DEPTH", "A_SIDE_DEPTH", "B_DEPTH", "B_SIDE_DEPTH", "ACC_DEPTH", "ACC_SIDE_DEPTH",
                "AXI_PORTS", "EPI_ROWS", "BURST_OVERHEAD", "LOAD_PIPELINE", "ARRAY_PIPELINE", "STORE_PIPELINE"):
        assert f"#define QTA_{key} " in h


def test_kernel_uses_the_generated_prototype():
    src = (hwconfig.Path(__file__).resolve().parents[1] / "hls" / "src" / "qta_gemm.h").read_text()
    assert "void qta_gemm(QTA_TOP_PARAMS);" in src
    cpp = (hwconfig.Path(__file__).resolve().parents[1] / "hls" / "src" / "qta_gemm.cpp").read_text()
    assert "void qta_gemm(QTA_TOP_PARAMS) {" in cpp and "QTA_INTERFACE_PRAGMAS" in cpp


@pytest.mark.parametrize("board", sorted(config().boards))
def test_tcl_sets_part_clock_and_budget(board):
    t = hwconfig.tcl(board)
    b = config().board(board)
    assert f"set QTA_PART {{{b.part}}}" in t
    assert f"set QTA_CLOCK_PERIOD_NS {{{1000 / b.clock_mhz:.3f}}}" in t
    assert f"DSP {b.dsp_total} BRAM_18K {2 * b.bram36_total} URAM {b.uram_total}" in t


@pytest.mark.parametrize("board", sorted(config().boards))
def test_hand_count_fits_the_board(board):
    est = hwconfig.estimate_resources(board)
    for key in ("dsp_pct", "bram36_pct", "uram_pct", "lut_pct", "ff_pct"):
        assert 0 <= est[key] < 100, (key, est)
    rows = hwconfig.resource_table(board)
    assert rows[0]["part"] == "pe_array" and all(r["how"] for r in rows)
    b = config().board(board)
    assert rows[0]["dsp"] == b.pes  # one MAC per DSP: no packing is claimed


def test_three_boards_and_splits():
    assert {"zcu104", "kv260", "pynq_z2"} <= set(config().boards)
    b = config().board("zcu104")
    assert b.splits == (-3, -2, -1, 0, 1, 2, 3)
    assert config().board("pynq_z2").splits == (-2, -1, 0, 1)
    assert all(b.axi_ports == 4 for b in config().boards.values())


def test_unknown_board_is_a_clear_error():
    with pytest.raises(QtaError, match="unknown board 'nexys'.*zcu104"):
        config().board("nexys")


def test_digest_changes_with_the_board():
    digests = {hwconfig.board_digest(config().board(b)) for b in config().boards}
    assert len(digests) == len(config().boards)


def test_hls_readme_resource_tables_are_current():
    text = (hwconfig.Path(__file__).resolve().parents[1] / "hls" / "README.md").read_text()
    start = text.index("-->", text.index("<!-- resources:begin")) + 3
    end = text.index("<!-- resources:end -->")
    assert text[start:end].strip() == hwconfig.resource_markdown().strip(), \
        "hls/README.md resource tables are stale: regenerate from lora_qta.hwconfig.resource_markdown()"
