"""The single hardware configuration: hardware.toml read, validated and hashed."""

from dataclasses import replace

import pytest

from lora_qta.errors import ConfigError, QtaError
from lora_qta.hw import config as config_module
from lora_qta.hw.config import board_digest, config

# Bytes each argument kind takes in the Vitis HLS s_axilite layout (a 64-bit address or output:
# two data words and a reserved or ap_vld word; a 32-bit one: a data word and one more).
VITIS_BYTES = {"pointer": 12, "scalar": 8, "scalar64": 12, "out32": 8, "out64": 12}


def test_register_offsets_follow_the_vitis_layout():
    """Recompute the Vitis HLS s_axilite layout from the argument kinds and compare."""
    off, expected = 0x10, {}
    for arg in config().args:
        expected[arg.name] = off
        if arg.kind == "out32":
            expected[arg.name + "_ctrl"] = off + 4
        if arg.kind == "out64":
            expected[arg.name + "_ctrl"] = off + 8
        off += VITIS_BYTES[arg.kind]
    regs = config().registers
    assert {k: regs[k] for k in expected} == expected
    assert (regs["ctrl"], regs["gie"], regs["ier"], regs["isr"]) == (0, 4, 8, 12)
    assert set(regs) == set(expected) | {"ctrl", "gie", "ier", "isr"}


def test_control_bits():
    cfg = config()
    assert [cfg.ctrl_mask(b) for b in ("ap_start", "ap_done", "ap_idle", "ap_ready")] == [1, 2, 4, 8]


@pytest.fixture
def edited_config(tmp_path, monkeypatch):
    """Load a copy of hardware.toml with one text replacement (the cache is restored after)."""
    def load(old: str, new: str):
        text = config_module.CONFIG_PATH.read_text()
        assert old in text
        path = tmp_path / "hardware.toml"
        path.write_text(text.replace(old, new, 1))
        monkeypatch.setattr(config_module, "CONFIG_PATH", path)
        config.cache_clear()
        return config()

    yield load
    config.cache_clear()


@pytest.mark.parametrize("old, new, message", [
    ('offset = 0xA8, doc = "columns', 'offset = 0xAC, doc = "columns',
     "argument n is at 0xAC, but Vitis HLS lays it out at 0xA8"),
    ('kind = "out64"', 'kind = "out128"', "kind 'out128' is not one of"),
    ('name = "m", kind = "scalar", type = "uint32_t"', 'name = "m", kind = "scalar", type = "uint16_t"',
     "a scalar is uint32_t or int32_t"),
    ("epilogue_rows = 1         # 1 row x 4 columns = 4", "#", "board pynq_z2: missing ['epilogue_rows']"),
    ('kind = "scalar64", type = "uint64_t", offset = 0x70', 'kind = "scalar64", type = "uint32_t", offset = 0x70',
     "a scalar64 is uint64_t"),
    ("axi_ports = 4             # S_AXI_HP0..3_FPD", "axi_ports = 2", "four m_axi bundles"),
    ("tile_k_max = 512\n", "tile_k_max = 500\n", "multiples of the beat"),
    ("idle_watts = 4.0\n", "", "board kv260 host: missing ['idle_watts']"),
    ("array_cols = 8\n", "array_cols = 12\n", "array_rows and array_cols must be powers of two"),
    ("array_cols = 8\n", "array_cols = 4\n", "array_rows and array_cols must be powers of two >= 2 x"),
])
def test_a_malformed_configuration_is_refused(edited_config, old, new, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        edited_config(old, new)


def test_three_boards_and_splits():
    assert {"zcu104", "kv260", "pynq_z2"} <= set(config().boards)
    b = config().board("zcu104")
    assert b.splits == (-3, -2, -1, 0, 1, 2)           # 32x16
    assert config().board("kv260").splits == (-2, -1, 0, 1, 2)  # 16x16
    assert config().board("pynq_z2").splits == (-1, 0, 1)       # 8x8


def test_unknown_board_is_a_clear_error():
    with pytest.raises(QtaError, match="unknown board 'nexys'.*zcu104"):
        config().board("nexys")


def test_digest_changes_with_the_board():
    digests = {board_digest(config().board(b)) for b in config().boards}
    assert len(digests) == len(config().boards)


def test_host_facts_are_stated_per_board_and_not_part_of_a_bitstream():
    """The processor and power assumptions of the analysis, formerly constants in its code."""
    zcu, kv, z2 = (config().board(b).host for b in ("zcu104", "kv260", "pynq_z2"))
    assert (zcu.cpu, kv.cpu, z2.cpu) == ("4x Cortex-A53 @ 1.2 GHz", "4x Cortex-A53 @ 1.333 GHz",
                                         "2x Cortex-A9 @ 650 MHz")
    assert (zcu.gflops, kv.gflops, z2.gflops) == (4 * 1.2 * 8 * 0.30, 4 * 1.333 * 8 * 0.30, 2 * 0.65 * 4 * 0.30)
    assert (zcu.stream_gbps, kv.stream_gbps, z2.stream_gbps) == (4.0, 4.0, 1.0)
    assert (zcu.ddr_mb, kv.ddr_mb, z2.ddr_mb) == (2048, 4096, 512) and zcu.l2_kb == 1024 and zcu.call_us > 0
    assert (zcu.idle_watts, kv.idle_watts, z2.idle_watts) == (12.0, 4.0, 2.0)
    assert (zcu.input_rail, zcu.input_volts, z2.input_rail, z2.input_volts) == ("12V", 12.0, "VIN", 5.0)
    board = config().board("zcu104")
    assert board_digest(replace(board, host=replace(zcu, idle_watts=99.0))) == board_digest(board)


def test_contract_version_2_arguments():
    cfg = config()
    assert cfg.config_version == 2
    names = [a.name for a in cfg.args]
    assert names[:8] == ["rd0", "rd1", "rd2", "rd3", "wr0", "wr1", "wr2", "wr3"]
    for want in ("a", "b", "c", "scales", "batch", "stride_a", "stride_b", "stride_c", "conv_in", "conv_out",
                 "conv_cin", "conv_win", "conv_dil", "status", "sat_count", "amax", "cycles_model",
                 "cycles_measured"):
        assert want in names
    kinds = {a.name: a.kind for a in cfg.args}
    assert {kinds[x] for x in ("a", "b", "c", "scales")} == {"scalar64"}
    assert kinds["cycles_model"] == kinds["cycles_measured"] == "out64"
    assert cfg.flags["conv"] == 13
    pointers = [a for a in cfg.args if a.kind == "pointer"]
    assert {a.type for a in pointers} == {"qta_beat_t", "const qta_beat_t"}
    assert [a.bundle for a in pointers] == [f"gmem{i}" for i in range(4)] * 2
    assert all(b.axi_ports == 4 and b.macs_per_dsp == 1 for b in cfg.boards.values())


def test_a_boards_cached_hash_follows_its_fields():
    """A board's hash (the key of the planner's and the engines' caches) is computed once and kept;
    a board replaced in a field (its host facts too) hashes as a fresh one with those fields,
    and a board equal in every field to the original hashes equal; pickling leaves the cached
    hash out (a string's hash differs between processes)."""
    import pickle

    board = config().board("zcu104")
    h = hash(board)
    assert board.__dict__["_hash"] == h
    faster = replace(board, clock_mhz=board.clock_mhz + 50)
    slower_calls = replace(board, host=replace(board.host, call_us=board.host.call_us * 10))
    assert faster != board and hash(faster) != h and slower_calls != board and hash(slower_calls) != h
    back = replace(faster, clock_mhz=board.clock_mhz)
    assert back == board and hash(back) == h and {board: 1}[back] == 1
    copy = pickle.loads(pickle.dumps(board))
    assert "_hash" not in copy.__dict__ and copy == board and hash(copy) == h
