"""The energy model (Horowitz 45 nm table): SRAM interpolation, buffer access counts, the
ordering of precisions per GEMM and the step breakdown."""

from __future__ import annotations

import pytest

from lora_qta.analysis import energy, shapes
from lora_qta.hw.call import GemmCall
from lora_qta.hw.config import config
from lora_qta.lora.gemms import lora_call
from lora_qta.runtime.planner import plan

ZCU = config().board("zcu104")


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
    col_folds = -(-32 // ZCU.array_cols)   # 32x16 on ZCU104: A is streamed once per column fold
    assert acc == {"a_writes": 32 * 64, "b_writes": 64 * 32, "a_reads": 32 * 64 * col_folds, "b_reads": 64 * 32,
                   "acc_reads": 2 * 32 * 32, "acc_writes": 32 * 32, "outputs": 32 * 32}
    ws = energy.buffer_accesses(ZCU, call.updated(dataflow="ws"))
    assert ws["b_reads"] == 64 * 32 and ws["acc_writes"] == 32 * 32 * 2   # two K folds of 32 rows


@pytest.mark.parametrize("rank", [4, 16])
def test_energy_int8_below_fp16_below_fp32_per_gemm(rank):
    layer = shapes.LoraLayer("x", 4096, 320, 320)
    for policy in ("feeds", "all"):
        for g in shapes.lora_gemms([layer], rank, int8_outputs=policy):
            call = plan(ZCU, lora_call(g.key)).call
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
    g = lora_call((1024, 320, 8, False, True, True))
    call = plan(ZCU, g).call
    lo = energy.gemm_energy(ZCU, call, table=energy.EnergyTable(dram_64bit=1300))
    hi = energy.gemm_energy(ZCU, call, table=energy.EnergyTable(dram_64bit=2600))
    assert hi.ddr_pj == pytest.approx(2 * lo.ddr_pj) and hi.arith_pj == lo.arith_pj
