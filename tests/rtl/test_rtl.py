"""The RTL PE array (hls/rtl): cycle-accurate Verilator + cocotb simulation against the numpy
reference and the contract's fold formulas, a Verilator lint, and a small yosys synthesis.

Small arrays keep the builds short (4x4 and 8x8, and the PYNQ-Z2 array, 8x8 with its own
counter widths); every dataflow, every legal split, and tile shapes that are 1, not multiples
of the sub-array, exact multiples, and larger than the logical array (several folds).
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from lora_qta import rtl
from lora_qta.rtl.synth import ESTIMATE_JSON
from lora_qta.hw.config import config

SHAPES = {
    "4x4": rtl.ArrayShape(4, 4, config().schedule.min_subarray),
    "8x8": rtl.ArrayShape(8, 8, config().schedule.min_subarray),
    "pynq_z2": rtl.board_shape("pynq_z2"),   # 8x8 (hardware.toml), min_sub 4, its own tile counter widths
}


def _tile_shapes(shape: rtl.ArrayShape, dataflow: str, split: int) -> list[tuple[int, int, int]]:
    """(M, K, N) covering the edge cases of the fold loop on this logical array."""
    lr, lc, sr, _ = rtl.geometry(shape, split)
    rows = lr if dataflow == "os" else sr      # the dimension folded over besides N
    return [
        (1, 1, 1),
        (3, 5, 2),                                  # smaller than the sub-array
        (lr, sr, lc) if dataflow == "os" else (5, sr, lc),   # exact logical array
        (lr + 3, 2 * sr + 1, 2 * lc + 1) if dataflow == "os" else (lr + 3, 2 * rows + 1, 2 * lc + 1),
        (2 * lr - 1, 7, lc + 1),                    # several folds, not multiples
    ]


def _cases(shape: rtl.ArrayShape, seed: int):
    rng = np.random.default_rng(seed)
    cases = []
    for df in ("os", "ws"):
        for s in shape.splits(df):
            for m, k, n in _tile_shapes(shape, df, s):
                a = rng.integers(-128, 128, (m, k), dtype=np.int8)
                b = rng.integers(-128, 128, (k, n), dtype=np.int8)
                cases.append((df, s, a, b))
    # extremes: every product +2^14 and long K (the INT32 accumulator must not wrap)
    k = 3 * shape.rows + 1
    cases.append(("os", 0, np.full((shape.rows, k), -128, np.int8), np.full((k, shape.cols), -128, np.int8)))
    cases.append(("ws", 0, np.full((5, k), -128, np.int8), np.full((k, shape.cols), 127, np.int8)))
    return cases


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_rtl_array_is_bit_exact_and_cycle_exact(name):
    shape = SHAPES[name]
    cases = _cases(shape, seed=len(name))
    results = rtl.sim_steps(shape, cases)
    assert len(results) == len(cases)
    for (df, s, a, b), r in zip(cases, results):
        what = f"{shape.label} {df} s={s} M,K,N={a.shape[0]},{a.shape[1]},{b.shape[1]}"
        ref = a.astype(np.int64) @ b.astype(np.int64)
        np.testing.assert_array_equal(r.c, ref, err_msg=what)
        # the array sequenced the contract's folds, in order, each as long as its formula
        assert r.folds == rtl.step_folds(shape, df, s, a.shape[0], b.shape[1], a.shape[1]), what
        assert r.fold_cycles == r.model_fold_cycles, what
        _, _, sr, _ = rtl.geometry(shape, s)
        assert r.drain_cycles == (sr if df == "os" else 0), what
        assert r.cycles == sum(r.fold_cycles) + r.drain_cycles == r.model_cycles, what
        # every output arrived at its tap exactly once per fold that computes it, nothing else did
        per_output = 1 if df == "os" else -(-a.shape[1] // sr)
        assert (r.deliveries == per_output).all() and r.stray == 0, what


def test_sim_tile_on_a_board_array():
    rng = np.random.default_rng(7)
    a = rng.integers(-128, 128, (19, 9), dtype=np.int8)
    b = rng.integers(-128, 128, (9, 11), dtype=np.int8)
    c, cycles, per_fold, model = rtl.sim_tile("ws", -1, a, b, board="pynq_z2")
    assert c.dtype == np.int32
    np.testing.assert_array_equal(c, a.astype(np.int64) @ b.astype(np.int64))
    # PYNQ-Z2 (8x8) at s=-1: two 4x8 sub-arrays stacked, K folds of SR = 4 rows, logical width 16
    bd = config().board("pynq_z2")
    sr, sc = bd.array_rows // 2, bd.array_cols
    assert per_fold == [2 * sr + sc + 19 - 2] * -(-9 // sr)
    assert cycles == model == sum(per_fold)


def test_contract_formulas():
    s = rtl.ArrayShape(16, 8, 4)
    assert s.splits("os") == (-2, -1, 0, 1) and s.splits("ws") == (-2, -1, 0)
    assert rtl.geometry(s, 1) == (32, 4, 16, 4) and rtl.geometry(s, -2) == (4, 32, 4, 8)
    assert rtl.fold_cycles("os", 16, 4, 10, 99) == 10 + 16 + 4 - 2
    assert rtl.fold_cycles("ws", 4, 8, 99, 10) == 2 * 4 + 8 + 10 - 2
    per, total = rtl.model_step(s, "os", 1, 33, 5, 10)
    assert per == [28] * 4 and total == 4 * 28 + 16
    with pytest.raises(ValueError):
        rtl.step_folds(s, "ws", 1, 4, 4, 4)


def test_the_contract_takes_its_cycle_formulas_from_the_planner():
    """One fold-cycle formula exists: the RTL contract uses the planner's, so the Verilator cycle
    checks above and the planner == kernel cycles_model tests check the same arithmetic. On
    every board and mode, a step's array cycles are the contract's plus the array process's
    pipeline depth."""
    from lora_qta.hw.call import GemmCall
    from lora_qta.runtime import planner

    assert rtl.fold_cycles is planner.fold_cycles
    pipe = config().schedule.array_pipeline
    for name in config().boards:
        b = config().board(name)
        shape = rtl.board_shape(name)
        for df, s in planner.valid_modes(b):
            assert rtl.geometry(shape, s) == planner.array_shape(b, s)
            for mt, nt, kt in ((1, 1, 1), (33, 17, 40), (b.array_rows * 2 + 3, b.array_cols + 5, 96)):
                call = GemmCall(m=mt, n=nt, k=kt, lda=kt, ldb=nt, ldc=nt, tile_m=mt, tile_n=nt, tile_k=kt,
                                dataflow=df, split=s)
                _, p = planner.step_costs(b, call, mt, nt, kt, 0, True, True)
                per, total = rtl.model_step(shape, df, s, mt, nt, kt)
                drain = rtl.geometry(shape, s)[2] if df == "os" else 0
                assert int(p) == total + pipe and total == sum(per) + drain, (name, df, s, mt, nt, kt)


@pytest.mark.parametrize("name", ["8x8", "pynq_z2"])
def test_verilator_lint_is_clean(name):
    rtl.lint(SHAPES[name])   # -Wall; raises on any warning


def test_yosys_synthesizes_a_small_array(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_QTA_CACHE", str(tmp_path))   # a fresh cache: this run synthesizes
    r = rtl.synth("xcup", 4, 4)
    again = rtl.synth("xcup", 4, 4)                        # read back, and says so
    assert not r["cached"] and again["cached"]
    assert {**again, "cached": False} == r
    assert r["tool_version"].startswith("Yosys ")
    assert r["dsp"] == 16                         # one DSP48E2 per PE (INT8 x INT8)
    assert r["ff"] >= 16 * (8 + 8 + 32 + 32)      # A, B, accumulator and output register per PE
    assert r["lut"] > 0 and r["carry"] > 0
    assert r["per_pe"]["dsp"] == 1.0


def test_one_cycle_less_per_fold_is_wrong():
    """The fold formulas are the minimum for this array, not just enough: the same RTL with
    folds one cycle shorter (test-only parameter FOLD_TRIM=1) loses results of full tiles."""
    shape = SHAPES["4x4"]
    rng = np.random.default_rng(3)
    cases = [("os", 0, rng.integers(-128, 128, (4, 9), dtype=np.int8), rng.integers(-128, 128, (9, 4), dtype=np.int8)),
             ("ws", 0, rng.integers(-128, 128, (6, 4), dtype=np.int8), rng.integers(-128, 128, (4, 4), dtype=np.int8))]
    for (df, s, a, b), r in zip(cases, rtl.sim_steps(shape, cases, fold_trim=1)):
        assert r.fold_cycles == [x - 1 for x in r.model_fold_cycles], df
        wrong = r.deliveries.min() == 0 or r.stray or not np.array_equal(r.c, a.astype(np.int64) @ b.astype(np.int64))
        assert wrong, f"{df}: a fold one cycle shorter than the contract still gave the right tile"


def test_committed_synthesis_figures_are_of_these_sources():
    """The yosys figures that the resource estimate reads were produced from the RTL as it is
    (`lora-qta rtl sweep` rewrites them after a change of hls/rtl/*.v)."""
    report = json.loads(ESTIMATE_JSON.read_text())
    assert report["rtl_sources"] == rtl.sources_digest(), "rerun `lora-qta rtl sweep` after changing hls/rtl"
    assert report["label"] == "yosys, pre-place-and-route, no timing"
    assert report["tool_version"].startswith("Yosys ")
    fam = {"zynq_us": "xcup", "zynq7": "xc7"}
    for name, b in config().boards.items():
        # the board's array as synthesized for that board, or a size of the sweep for its family,
        # or (no such size) the family's per-PE fit: what lora_qta.hw.resources reads (review B6
        # moved the boards to 32x16, 16x16 and 8x8; the sweep's board rows are of 32x32/16x8)
        row = report["boards"].get(name)
        sized = [x for x in report["results"] if x["family"] == fam[b.family]
                 and (x["rows"], x["cols"]) == (b.array_rows, b.array_cols)]
        if row and (row["rows"], row["cols"]) == (b.array_rows, b.array_cols):
            assert row["dsp"] == b.pes                          # one DSP48 per INT8 MAC
        elif sized:
            assert sized[0]["dsp"] == b.pes
        else:
            assert report["fits"][fam[b.family]]["dsp"]["per_pe"] == 1.0


def test_cli_rtl_sim_and_synth(tmp_path):
    rng = np.random.default_rng(11)
    a = rng.integers(-128, 128, (9, 21), dtype=np.int8)
    b = rng.integers(-128, 128, (21, 5), dtype=np.int8)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    p = _cli("rtl", "sim", "--dataflow", "os", "--split", "1", "--a", str(tmp_path / "a.npy"),
             "--b", str(tmp_path / "b.npy"), "--out", str(tmp_path / "c.npy"), "--board", "pynq_z2")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    # PYNQ-Z2 (8x8) at s=1: two 8x4 sub-arrays side by side (logical 16x4); N=5 needs two column folds
    r = config().board("pynq_z2").array_rows
    assert out["bit_exact"] and out["cycles"] == out["model_cycles"] == 2 * (21 + r + 4 - 2) + r
    np.testing.assert_array_equal(np.load(tmp_path / "c.npy"), a.astype(np.int64) @ b.astype(np.int64))
    p = _cli("rtl", "synth", "--family", "xcup", "--rows", "4", "--cols", "4")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["dsp"] == 16 and out["per_pe"]["dsp"] == 1.0 and out["tool_version"].startswith("Yosys ")
    p = _cli("rtl", "sim", "--dataflow", "ws", "--split", "1", "--a", str(tmp_path / "a.npy"),
             "--b", str(tmp_path / "b.npy"), "--out", str(tmp_path / "c.npy"), "--board", "pynq_z2")
    assert p.returncode == 2 and p.stderr.startswith("lora-qta: error:") and "Traceback" not in p.stderr


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "lora_qta.cli", *args], capture_output=True, text=True)


def test_a_simulator_built_by_another_environment_is_not_reused(tmp_path, monkeypatch):
    # the executable loads cocotb's VPI library from the environment that built it (rpath): a
    # build left in the shared cache by another virtualenv (since deleted) must not be run
    from lora_qta.rtl import sim, tools

    monkeypatch.setenv("LORA_QTA_CACHE", str(tmp_path))
    shape = SHAPES["4x4"]
    mine = tools._cocotb_paths()
    other = {**mine, "libs": str(tmp_path / "deleted-venv" / "lib")}
    assert sim.sim_key(shape, 0, other) != sim.sim_key(shape, 0, mine)
    stale = tools.cache_dir() / f"sim-{shape.label}-{sim.sim_key(shape, 0, other)}"
    stale.mkdir(parents=True)
    (stale / tools.TOP).write_text("built against another environment's cocotb")

    class Building(Exception):
        pass

    def building(*args, **kwargs):
        raise Building

    monkeypatch.setattr(sim, "_run", building)
    monkeypatch.setattr(sim, "_cocotb_paths", lambda: other)
    assert sim.build_sim(shape) == stale  # the other environment finds its own build
    monkeypatch.setattr(sim, "_cocotb_paths", lambda: mine)
    with pytest.raises(Building):  # this one builds its own
        sim.build_sim(shape)
