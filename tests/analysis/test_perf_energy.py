"""Performance and energy: LoRA shapes of SD1.5 / SDXL from their diffusers configurations, the
dataflow benchmark, the cycle model against the C-simulated kernel, the energy model and the
power measurement on emulated sensors. No timing is asserted."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from lora_qta.analysis import dataflow as bench, energy, power, shapes
from lora_qta.hw.config import config
from lora_qta.hw.call import GemmCall
from lora_qta.runtime.planner import plan

ZCU = config().board("zcu104")
PNG = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------------- shapes

def _level(name: str) -> str:
    parts = name.split(".")
    return "mid" if parts[0] == "mid_block" else f"{parts[0]}.{parts[1]}"


def test_sd15_has_128_lora_linears_with_797184_params_at_rank_4():
    layers = shapes.lora_layers("sd15")
    assert len(layers) == 128
    assert shapes.lora_params(layers, 4) == 797_184
    assert Counter(l.name.rsplit(".", 1)[-1] if "to_out" not in l.name else "to_out.0" for l in layers) == \
        {"to_q": 32, "to_k": 32, "to_v": 32, "to_out.0": 32}


def test_sd15_token_counts_follow_the_block_structure():
    """Hooks on the meta forward pass give what the block structure says: latent 64x64 at 512x512,
    halved per level; cross-attention keys/values see the 77 text tokens of width 768."""
    expect = {"down_blocks.0": 4096, "down_blocks.1": 1024, "down_blocks.2": 256, "mid": 64,
              "up_blocks.1": 256, "up_blocks.2": 1024, "up_blocks.3": 4096}
    for l in shapes.lora_layers("sd15"):
        if ".attn2.to_k" in l.name or ".attn2.to_v" in l.name:
            assert (l.tokens, l.d_in) == (77, 768), l
        else:
            assert l.tokens == expect[_level(l.name)], l
            assert l.d_in == l.d_out


def test_sdxl_has_70_transformer_blocks_and_560_lora_linears():
    layers = shapes.lora_layers("sdxl")
    assert len(layers) == 560
    blocks = {l.name.rsplit(".attn", 1)[0] for l in layers}
    assert len(blocks) == 70
    expect = {"down_blocks.1": 4096, "down_blocks.2": 1024, "mid": 1024, "up_blocks.0": 1024, "up_blocks.1": 4096}
    for l in layers:
        if ".attn2.to_k" in l.name or ".attn2.to_v" in l.name:
            assert (l.tokens, l.d_in) == (77, 2048), l
        else:
            assert l.tokens == expect[_level(l.name)], l


def test_embedded_configs_build_the_published_unets():
    """Parameter counts of the published UNets (859.52 M for SD1.5, 2567.46 M for SDXL base),
    built on the meta device from the embedded configurations."""
    counts = {m: sum(p.numel() for p in shapes.build_meta_unet(m).parameters()) for m in ("sd15", "sdxl")}
    assert counts == {"sd15": 859_520_964, "sdxl": 2_567_463_684}


def test_targets_and_resolution_are_parameters():
    assert len(shapes.lora_layers("sd15", targets=("to_q",))) == 32
    assert len(shapes.lora_layers("sd15", targets=("to_q", "to_out.0"))) == 64
    assert max(l.tokens for l in shapes.lora_layers("sd15", resolution=256)) == 1024
    macs = shapes.base_macs("sd15")
    assert macs["total"] == macs["conv"] + macs["linear"] + macs["attention"] > 0


def test_lora_gemms_are_the_six_per_layer_with_int8_outputs_where_they_feed_a_gemm():
    layer = shapes.LoraLayer("x", 1024, 320, 640)
    gemms = shapes.lora_gemms([layer], 8)
    assert [g.gemm for g in gemms] == ["H = X.A^T", "Y = H.B^T", "dH = G.B", "dB = G^T.H", "dA = dH^T.X",
                                       "dX = dH.A"]
    assert [g.out_int8 for g in gemms] == [True, False, True, False, False, False]
    assert sum(g.macs for g in gemms) == 3 * 1024 * 8 * (320 + 640)   # each weight: fwd, grad, input grad
    assert all(g.out_int8 for g in shapes.lora_gemms([layer], 8, int8_outputs="all"))


def test_default_model_layers_come_from_the_digits_unet():
    try:
        from lora_qta.training import digits
    except ModuleNotFoundError as e:  # developed alongside; only its absence skips
        pytest.skip(f"lora_qta.digits is not there yet: {e}")
    layers = shapes.default_model_layers()
    assert layers and len(layers) % 8 == 0
    cross = [l for l in layers if ".attn2.to_k" in l.name]
    assert cross and all(l.tokens == digits.MAX_LENGTH and l.d_in == digits.CROSS_ATTENTION_DIM for l in cross)


# ----------------------------------------------------------------------------------- benchmark

@pytest.fixture(scope="module")
def small_bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    rc = bench.main(["--boards", "zcu104", "--models", "sd15", "--ranks", "4,64", "--out", str(out),
                     "--csim-ranks", "4", "--csim-limit", "24", "--step-ranks", "4",
                     "--energy-models", "sd15", "--energy-ranks", "4"])
    return rc, out


def test_bench_writes_tables_json_and_pngs(small_bench, capsys):
    rc, out = small_bench
    assert rc == 0
    for name in ("dataflow.md", "dataflow.json", "energy.md", "energy.json"):
        assert (out / name).stat().st_size > 0, name
    for name in ("utilization.png", "speedup.png", "roofline.png", "energy.png"):
        assert (out / name).read_bytes()[:8] == PNG, name
    md = (out / "dataflow.md").read_text()
    assert "modelled" in md and "1.81x" in md and "| zcu104 | sd15 | 64 |" in md
    assert "C-simulated" in md and "all equal" in md
    assert "modelled (Horowitz 45 nm table)" in (out / "energy.md").read_text()


def test_bench_adaptive_never_loses_and_figures_are_physical(small_bench):
    _, out = small_bench
    res = json.loads((out / "dataflow.json").read_text())
    assert {c["rank"] for c in res["configs"]} == {4, 64}
    for c in res["configs"]:
        assert c["gemm_instances"] == 6 * 128
        for g in c["gemms"]:
            md = g["modes"]
            assert md["adaptive"]["cycles"] <= min(md["ws"]["cycles"], md["os"]["cycles"]), g
            assert md["auto"]["cycles"] <= md["adaptive"]["cycles"], g
            assert md["ws"]["dataflow"] == "ws" and md["os"]["dataflow"] == "os"
            assert md["ws"]["split"] == md["os"]["split"] == md["adaptive"]["split"] == 0
            for m in md.values():
                assert 0 < m["utilization"] <= 1 and 0 < m["roofline_fraction"] <= 1
                assert m["cycles"] >= max(m["compute_bound_cycles"], m["memory_bound_cycles"])
        assert c["cycles"]["auto"] <= c["cycles"]["adaptive"] <= min(c["cycles"]["ws"], c["cycles"]["os"])
        goal = c["goal"]
        assert goal["meeting"] + len(goal["failing"]) == goal["compute_bound"]
        assert goal["compute_bound"] + goal["memory_bound"] == len(c["gemms"])
    assert res["csim_check"]["checked"] > 0 and res["csim_check"]["mismatches"] == []
    step = res["training_step"]["rows"][0]
    assert step["step_with_accelerator_s"] > step["t_rest_s"] > 0


def test_partitioned_modes_help_narrow_ranks():
    """At rank 4 the whole array idles most of a row or column: the partitioned modes cut the
    PE-array time of the rank-wide GEMMs and never lose on the step's total."""
    layers = shapes.lora_layers("sd15")
    for r in (4, 8):
        tot_auto = tot_adaptive = 0
        for g in shapes.lora_gemms(layers, r):
            ev = bench.evaluate(ZCU, g.key)
            tot_auto += ev["auto"].cycles
            tot_adaptive += ev["adaptive"].cycles
        assert tot_auto < tot_adaptive
    narrow = bench.evaluate(ZCU, (4096, 320, 4, False, True, True))        # H = X.A^T, N = r
    part = plan(ZCU, energy.lora_call((4096, 320, 4, False, True, True)), dataflow="partitioned").report
    assert part.compute_cycles < narrow["adaptive"].pe_cycles / 1.5
    assert narrow["auto"].split != 0


def test_cycle_model_equals_csim_on_scaled_lora_shapes():
    chk = bench.csim_check(["zcu104", "pynq_z2"], ["sd15"], [4, 64], modes=("ws", "os", "auto"), limit=40)
    assert chk["checked"] >= 40 and chk["mismatches"] == []


def test_scaled_layers_keep_the_ratios():
    assert bench.scaled_layer(4096, 320, 320, 64) == (256, 40, 40, 8)
    assert bench.scaled_layer(77, 768, 1280, 4) == (77, 96, 160, 4)


# ----------------------------------------------------------------------------------- energy

def test_sram_energy_hits_the_table_points_and_grows_with_size():
    t = energy.HOROWITZ_45NM
    assert t.sram_pj_per_byte(8 * 1024) == pytest.approx(10 / 8)
    assert t.sram_pj_per_byte(32 * 1024) == pytest.approx(20 / 8)
    assert t.sram_pj_per_byte(1024 * 1024) == pytest.approx(100 / 8)
    sizes = [2 ** i for i in range(10, 24)]
    vals = [t.sram_pj_per_byte(s) for s in sizes]
    assert all(a < b for a, b in zip(vals, vals[1:]))
    assert t.dram_pj_per_byte == 1950 / 8


def test_buffer_access_counts_of_one_fold():
    call = GemmCall(m=32, n=32, k=64, lda=64, ldb=32, ldc=32, tile_m=32, tile_n=32, tile_k=64, dataflow="os")
    acc = energy.buffer_accesses(ZCU, call)
    assert acc == {"a_writes": 32 * 64, "b_writes": 64 * 32, "a_reads": 32 * 64, "b_reads": 64 * 32,
                   "acc_reads": 2 * 32 * 32, "acc_writes": 32 * 32, "outputs": 32 * 32}
    ws = energy.buffer_accesses(ZCU, GemmCall(**{**call.__dict__, "dataflow": "ws"}))
    assert ws["b_reads"] == 64 * 32 and ws["acc_writes"] == 32 * 32 * 2   # two K folds of 32 rows


@pytest.mark.parametrize("rank", [4, 16])
def test_energy_int8_below_fp16_below_fp32_per_gemm(rank):
    layer = shapes.LoraLayer("x", 4096, 320, 320)
    for policy in ("feeds", "all"):
        for g in shapes.lora_gemms([layer], rank, int8_outputs=policy):
            call = plan(ZCU, energy.lora_call(g)).call
            e = {p: energy.gemm_energy(ZCU, call, p) for p in ("int8", "fp16", "fp32")}
            assert e["fp16"].total_pj < e["fp32"].total_pj, g
            assert e["int8"].total_pj < e["fp32"].total_pj, g
            assert e["int8"].arith_pj < e["fp16"].arith_pj < e["fp32"].arith_pj, g
            for p in e.values():
                assert p.total_pj == pytest.approx(p.arith_pj + p.sram_pj + p.ddr_pj)
            if g.out_int8:
                assert e["int8"].total_pj < e["fp16"].total_pj, g
            else:
                # INT32 outputs (4 bytes) against FP16's 2: an output-dominated GEMM (K = rank)
                # costs more in INT8 than on an FP16 array; that is why the report shows both policies
                if g.gemm in ("Y = H.B^T", "dX = dH.A"):
                    assert e["int8"].total_pj > e["fp16"].total_pj, g


def test_energy_ratio_components_add_up_to_the_total():
    layers = shapes.lora_layers("sd15")
    e = energy.step_energy(ZCU, shapes.lora_gemms(layers, 4))
    for other in ("fp16", "fp32"):
        b = energy.ratio_breakdown(e["int8"], e[other])
        assert b["arith_contribution"] + b["sram_contribution"] + b["ddr_contribution"] == pytest.approx(b["ratio"])
        assert b["memory_contribution"] == pytest.approx(b["sram_contribution"] + b["ddr_contribution"])
    assert e["int8"].total_pj < e["fp16"].total_pj < e["fp32"].total_pj
    assert e["int8"].macs == sum(g.macs for g in shapes.lora_gemms(layers, 4))


def test_dram_energy_is_a_parameter():
    g = energy.lora_call((1024, 320, 8, False, True, True))
    call = plan(ZCU, g).call
    lo = energy.gemm_energy(ZCU, call, table=energy.EnergyTable(dram_64bit=1300))
    hi = energy.gemm_energy(ZCU, call, table=energy.EnergyTable(dram_64bit=2600))
    assert hi.ddr_pj == pytest.approx(2 * lo.ddr_pj) and hi.arith_pj == lo.arith_pj


# ----------------------------------------------------------------------------------- power

def test_emulated_rails_work_with_pynqs_sensor_reader():
    from pynq.pmbus import MultiSensor, Rail

    src = power.PowerSource(12.0)
    rails = power.emulated_rails(ZCU, src)
    rail = rails["12V"]
    assert isinstance(rail, Rail)
    src.set(18.0)
    assert MultiSensor([rail.power, rail.voltage, rail.current]).get_values() == (18.0, 12.0, 1.5)
    assert power.select_power_sensors(rails) == [rail.power]
    with pytest.raises(ValueError):
        power.select_power_sensors(rails, ["VCCINT"])


def test_power_script_on_emulated_sensors(tmp_path, capsys):
    pytest.importorskip("pandas", reason="pynq.pmbus.DataRecorder needs pandas")
    rc = power.main(["--out", str(tmp_path), "--sensors", "emulated", "--idle-seconds", "0.3",
                     "--phase-seconds", "0.4", "--interval", "0.02", "--tokens", "256", "--features", "64",
                     "--rank", "4"])
    text = capsys.readouterr().out
    assert rc == 0
    assert (tmp_path / "power.png").read_bytes()[:8] == PNG
    assert "energy per GEMM" in text and power.EMULATED_LABEL in text and "modelled" in text
    rep = json.loads((tmp_path / "power.json").read_text())
    assert rep["emulated"] and rep["idle_w"] == pytest.approx(ZCU.host.idle_watts)
    loops = [p for p in rep["phases"] if p["reps"]]
    assert loops and all(p["energy_per_gemm_j"] > 0 and p["gops"] > 0 for p in loops)
    assert all(p["modelled_energy_per_gemm_j"] > 0 for p in loops)
    assert (tmp_path / "power_trace.csv").read_text().count("\n") > 10
