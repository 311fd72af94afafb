"""The planner: its cycle model equals the kernel's counter, utilization and roofline are sane,
and the dataflow choice does what the design promises on LoRA shapes."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lora_qta.runtime import csim
from lora_qta.errors import LimitError, PlanError
from lora_qta.hw.config import config
from lora_qta.hw.call import GemmCall
from lora_qta.lora.gemms import layer_gemms, lora_call
from lora_qta.runtime.planner import model_cycles, plan

ZCU = config().board("zcu104")


@pytest.mark.parametrize("board", sorted(config().boards))
@pytest.mark.parametrize("rank", [4, 16])
def test_planned_cycles_equal_the_csim_counter_on_lora_shapes(board, rank):
    b = config().board(board)
    kernel = csim.load(b)
    rng = np.random.default_rng(rank)
    for g in layer_gemms(tokens=96, d_in=40, d_out=72, rank=rank, int8_outputs="none"):
        for df in ("auto", "ws", "os"):
            p = plan(b, lora_call(g.key), dataflow=df)
            ra, ca = p.call.stored_shape_a()
            rb, cb = p.call.stored_shape_b()
            a = rng.integers(-128, 128, (ra, ca), dtype=np.int8)
            bb = rng.integers(-128, 128, (rb, cb), dtype=np.int8)
            c = np.zeros((g.m, g.n), np.int32)
            out = kernel.run({"a": csim.address(a), "b": csim.address(bb), "c": csim.address(c)},
                             p.call.scalar_registers())
            assert out == {"status": 0, "cycles": p.report.cycles}, (p.call, out, p.report.cycles)


@given(st.integers(1, 3000), st.integers(1, 3000), st.integers(1, 3000), st.booleans(), st.booleans(),
       st.sampled_from(["auto", "ws", "os", "partitioned"]), st.booleans())
def test_utilization_and_roofline_are_physical(m, k, n, ta, tb, df, out8):
    p = plan(ZCU, lora_call((m, k, n, ta, tb, out8)), dataflow=df)
    rep = p.report
    assert 0 < rep.utilization <= 1
    assert 0 < rep.roofline_fraction <= 1
    assert rep.cycles >= rep.compute_bound_cycles and rep.cycles >= rep.memory_bound_cycles


@given(st.integers(1, 600), st.integers(1, 600), st.integers(1, 600))
def test_auto_is_never_worse_than_a_forced_dataflow(m, k, n):
    call = lora_call((m, k, n, False, False, False))
    auto = plan(ZCU, call).report.cycles
    for df in ("ws", "os", "partitioned"):
        assert auto <= plan(ZCU, call, dataflow=df).report.cycles


def test_token_streaming_dataflows_win_as_in_the_literature():
    """Stream the token dimension: WS for forward/input-gradient GEMMs with a large K, OS for the
    weight-gradient GEMM that sums over tokens (SCALE-Sim result, shared/dataflow.md)."""
    big = GemmCall(m=8192, n=64, k=1024, lda=1024, ldb=64, ldc=64, tile_m=1, tile_n=1, tile_k=1, out_int8=True)
    assert plan(ZCU, big, dataflow="ws", split=0).report.compute_cycles < \
        plan(ZCU, big, dataflow="os", split=0).report.compute_cycles * 1.5
    dB = lora_call((1280, 4096, 64, True, False, False))
    assert plan(ZCU, dB, dataflow="os", split=0).report.compute_cycles < \
        plan(ZCU, dB, dataflow="ws", split=0).report.compute_cycles


@pytest.mark.parametrize("rank", [4, 8, 16])
def test_partitioning_beats_the_whole_array_for_narrow_ranks(rank):
    """With rank < array width the unpartitioned PE array idles; sub-arrays fill it."""
    for m, k, n, ta, tb in [(4096, 320, rank, False, True), (1280, 4096, rank, True, False),
                            (rank, 4096, 1280, True, False)]:
        call = lora_call((m, k, n, ta, tb, True))
        whole = min(plan(ZCU, call, dataflow=df, split=0).report.compute_cycles for df in ("ws", "os"))
        part = plan(ZCU, call, dataflow="partitioned").report.compute_cycles
        assert part < whole / 1.5, (m, k, n, part, whole)


def test_errors():
    with pytest.raises(PlanError, match="split 2 is not available for dataflow 'ws'"):
        plan(ZCU, lora_call((64, 64, 64, False, False, False)), dataflow="ws", split=2)
    with pytest.raises(PlanError, match="unknown dataflow 'is'"):
        plan(ZCU, lora_call((64, 64, 64, False, False, False)), dataflow="is")
    with pytest.raises(LimitError, match="M = 70000"):
        plan(ZCU, lora_call((70000, 64, 64, False, False, False)))


def test_model_is_linear_in_uniform_steps():
    """A sanity check of the closed form: doubling M with whole tiles doubles the steady state."""
    base = GemmCall(m=512, n=64, k=256, lda=256, ldb=64, ldc=64, tile_m=256, tile_n=64, tile_k=256)
    one = model_cycles(ZCU, base).cycles
    two = model_cycles(ZCU, GemmCall(**{**base.__dict__, "m": 1024})).cycles
    steady = two - one
    assert steady > 0 and model_cycles(ZCU, GemmCall(**{**base.__dict__, "m": 1536})).cycles - two == steady
