"""The contract between hardware and emulation: C-simulation == fast engine == numpy reference.

Property-based: random shapes (edge tiles included), tiles, dataflows, partitions,
transposes, epilogues, rounding modes and extreme operand values. Outputs, status bits and
cycle counts must agree exactly; the cycle count must also equal the planner's model.
"""

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lora_qta.runtime import csim, fast
from lora_qta.hw.config import config
from lora_qta.hw.call import GemmCall
from lora_qta.runtime.planner import model_cycles, valid_modes
from lora_qta.hw.reference import mix32, reference_gemm

BOARDS = sorted(config().boards)


@st.composite
def gemm_cases(draw, max_dim=72):
    board = config().board(draw(st.sampled_from(BOARDS)))
    m, n, k = (draw(st.integers(1, max_dim)) for _ in range(3))
    df, split = draw(st.sampled_from(valid_modes(board)))
    out8 = draw(st.booleans())
    call = GemmCall(
        m=m, n=n, k=k, lda=0, ldb=0, ldc=n + draw(st.integers(0, 3)),
        tile_m=draw(st.integers(1, board.tile_m_max)), tile_n=draw(st.integers(1, board.tile_n_max)),
        tile_k=draw(st.integers(1, board.tile_k_max)),
        trans_a=draw(st.booleans()), trans_b=draw(st.booleans()), dataflow=df, split=split,
        out_int8=out8, accumulate=draw(st.booleans()),
        scale_mode=draw(st.sampled_from(["tensor", "row", "col"])) if out8 else "tensor",
        stochastic=draw(st.booleans()) if out8 else False,
        mult=draw(st.one_of(st.integers(-(2**31), 2**31 - 1), st.integers(-4000, 4000))),
        shift=draw(st.integers(0, 62)), seed=draw(st.integers(0, 2**32 - 1)),
    )
    ra, ca = call.stored_shape_a()
    rb, cb = call.stored_shape_b()
    call = replace(call, lda=ca + draw(st.integers(0, 5)), ldb=cb + draw(st.integers(0, 5)))
    extreme = draw(st.sampled_from(["random", "min", "max", "mixed"]))
    seed = draw(st.integers(0, 2**31))
    return board, call, extreme, seed


def make_memory(call: GemmCall, extreme: str, seed: int):
    rng = np.random.default_rng(seed)
    ra, _ = call.stored_shape_a()
    rb, _ = call.stored_shape_b()

    def ints(shape):
        if extreme == "min":
            return np.full(shape, -128, dtype=np.int8)
        if extreme == "max":
            return np.full(shape, 127, dtype=np.int8)
        if extreme == "mixed":
            return rng.choice(np.array([-128, 127, 0, -1, 1], dtype=np.int8), size=shape)
        return rng.integers(-128, 128, shape, dtype=np.int8)

    a = ints((ra, call.lda))
    b = ints((rb, call.ldb))
    cdt = np.int8 if call.out_int8 else np.int32
    if call.out_int8:
        c = rng.integers(-128, 128, (call.m, call.ldc)).astype(cdt)
    else:
        c = rng.choice(np.array([2**31 - 1, -(2**31), 0, 12345], dtype=np.int64), (call.m, call.ldc)).astype(cdt)
    cnt = max(call.m, call.n)
    scales = np.stack([rng.integers(-(2**31), 2**31 - 1, cnt), rng.integers(0, 63, cnt)], 1).astype(np.int32)
    return a, b, c, scales


def run_csim(board, call, a, b, c, scales):
    c = c.copy()
    pointers = {"a": csim.address(a), "b": csim.address(b), "c": csim.address(c), "scales": csim.address(scales)}
    out = csim.load(board).run(pointers, call.scalar_registers())
    return c, out["status"], out["cycles"]


def run_fast(board, call, a, b, c, scales):
    c = c.copy()
    status, cycles = fast.run(board, call, a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8),
                              c.reshape(-1).view(np.uint8), scales.reshape(-1).view(np.uint8))
    return c, status, cycles


def run_reference(call, a, b, c, scales):
    ra, ca = call.stored_shape_a()
    rb, cb = call.stored_shape_b()
    out, sat = reference_gemm(
        a[:, :ca], b[:, :cb], trans_a=call.trans_a, trans_b=call.trans_b, out_int8=call.out_int8,
        accumulate=call.accumulate, c_in=c[:, :call.n], scale_mode=call.scale_mode, mult=call.mult,
        shift=call.shift, scales=scales, stochastic=call.stochastic, seed=call.seed)
    full = c.copy()
    full[:, :call.n] = out
    return full, sat


@given(gemm_cases())
def test_csim_fast_and_reference_agree(case):
    board, call, extreme, seed = case
    a, b, c, scales = make_memory(call, extreme, seed)
    c_csim, st_csim, cyc_csim = run_csim(board, call, a, b, c, scales)
    c_fast, st_fast, cyc_fast = run_fast(board, call, a, b, c, scales)
    c_ref, sat_ref = run_reference(call, a, b, c, scales)
    assert np.array_equal(c_csim, c_ref), f"C-simulation differs from numpy for {call}"
    assert np.array_equal(c_fast, c_ref), f"fast engine differs from numpy for {call}"
    assert st_csim == st_fast == (1 if sat_ref else 0)
    assert cyc_csim == cyc_fast == model_cycles(board, call).cycles


@pytest.mark.parametrize("board", BOARDS)
def test_int32_accumulator_limit_is_exact(board):
    """K at the configured maximum with all operands -128: the largest exact dot product."""
    b = config().board(board)
    k = b.max_k
    call = GemmCall(m=1, n=2, k=k, lda=k, ldb=2, ldc=2, tile_m=1, tile_n=2, tile_k=b.tile_k_max)
    a = np.full((1, k), -128, dtype=np.int8)
    bm = np.full((k, 2), -128, dtype=np.int8)
    c = np.zeros((1, 2), dtype=np.int32)
    scales = np.zeros((2, 2), dtype=np.int32)
    out, status, _ = run_csim(b, call, a, bm, c, scales)
    assert out[0, 0] == k * 16384 <= 2**31 - 1 and status == 0
    out_f, status_f, _ = run_fast(b, call, a, bm, c, scales)
    assert np.array_equal(out, out_f) and status_f == 0


@given(gemm_cases(max_dim=20), st.sampled_from(["m", "k", "lda", "ldc", "tile_m", "split", "shift"]))
def test_bad_arguments_agree(case, field):
    """Both engines refuse the same invalid register values with the same status and cycles."""
    board, call, extreme, seed = case
    bad = {"m": board.max_m + 1, "k": 0, "lda": 0, "ldc": call.n - 1, "tile_m": board.tile_m_max + 1,
           "split": max(board.splits) + 1, "shift": 63}[field]
    call = replace(call, **{field: bad})
    if field == "shift" and not call.out_int8:
        call = replace(call, out_int8=True)
    a, b, c, scales = make_memory(replace(call, m=max(1, min(call.m, 20)), k=max(1, min(call.k, 20)),
                                          lda=max(call.lda, 20), ldc=max(call.ldc, 20)), extreme, seed)
    _, st_csim, cyc_csim = run_csim(board, call, a, b, c, scales)
    _, st_fast, cyc_fast = run_fast(board, call, a, b, c, scales)
    bad_bit = 1 << config().status["bad_args"]
    assert st_csim == st_fast == bad_bit
    assert cyc_csim == cyc_fast == config().schedule.call_overhead


@given(st.integers(0, 2**32 - 1))
def test_rounding_hash_matches_the_kernel(x):
    assert csim.load(config().board("zcu104")).mix32(x) == int(mix32(x))
