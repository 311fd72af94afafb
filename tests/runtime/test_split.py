"""GEMMs beyond the configured M, N and K limits run as several kernel calls (issue 9, item 4):
the user never meets the limit, and the result is the one a kernel without limits would give."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lora_qta.hw.config import config
from lora_qta.hw.reference import reference_gemm
from lora_qta.runtime.accelerator import Accelerator, fixed_point_scale
from lora_qta.errors import SaturationError

BOARD = config().board("zcu104")


@pytest.fixture(scope="module")
def fast():
    return Accelerator("zcu104", "fast")


def test_m_beyond_the_limit(fast):
    m = BOARD.max_m + 1
    rng = np.random.default_rng(0)
    a = rng.integers(-128, 128, (3, m), dtype=np.int8)  # stored K x M (trans_a)
    b = rng.integers(-128, 128, (3, 2), dtype=np.int8)
    r = fast.gemm(torch.from_numpy(a), b, trans_a=True)
    assert isinstance(r.output, torch.Tensor) and r.calls == 2
    assert np.array_equal(r.output.numpy(), a.T.astype(np.int64) @ b.astype(np.int64))


def test_n_beyond_the_limit(fast):
    n = BOARD.max_n + 3
    rng = np.random.default_rng(1)
    a = rng.integers(-128, 128, (2, 4), dtype=np.int8)
    b = rng.integers(-128, 128, (n, 4), dtype=np.int8)
    r = fast.gemm(a, b, trans_b=True)
    assert r.calls == 2 and np.array_equal(r.output, a.astype(np.int64) @ b.T.astype(np.int64))


def test_k_beyond_the_limit_is_summed_exactly(fast):
    """K = max_k + 1 with every operand -128: the dot product 2^31 no longer fits INT32."""
    k = BOARD.max_k + 1
    a = np.full((1, k), -128, np.int8)
    b = np.full((k, 2), -128, np.int8)
    r = fast.gemm(a, b)
    assert r.calls == 2 and r.saturated and (r.output == 2**31 - 1).all()
    with pytest.raises(SaturationError):
        fast.gemm(a, b, strict=True)
    # an INT8 output requantizes the exact sum, although it exceeds INT32: 2^31 * 2^-25 = 64
    r8 = fast.gemm(a, b, out="int8", mult=1, shift=25)
    assert not r8.saturated and (r8.output == 64).all()
    b[0, 1] = 0  # one product fewer: 2^31 - 2^14 fits INT32
    r = fast.gemm(a, b)
    assert r.output[0, 0] == 2**31 - 1 and r.output[0, 1] == 2**31 - 16384 and r.saturated


@st.composite
def split_cases(draw):
    m, k, n = (draw(st.integers(1, 13)) for _ in range(3))
    ta, tb = draw(st.booleans()), draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    a = rng.integers(-128, 128, (k, m) if ta else (m, k), dtype=np.int8)
    b = rng.integers(-128, 128, (n, k) if tb else (k, n), dtype=np.int8)
    kw, ref = dict(trans_a=ta, trans_b=tb), dict(trans_a=ta, trans_b=tb)
    if draw(st.booleans()):
        mode = draw(st.sampled_from(["tensor", "row", "col"]))
        stoch, seed = draw(st.booleans()), draw(st.integers(0, 2**32 - 1))
        cnt = {"tensor": 1, "row": m, "col": n}[mode]
        mult, shift = fixed_point_scale(rng.uniform(1e-4, 0.05, cnt))
        kw.update(out="int8", scale_mode=mode, rounding="stochastic" if stoch else "nearest_even", seed=seed)
        ref.update(out_int8=True, scale_mode=mode, stochastic=stoch, seed=seed)
        if mode == "tensor":
            kw.update(mult=int(mult[0]), shift=int(shift[0]))
            ref.update(mult=int(mult[0]), shift=int(shift[0]))
        else:
            kw.update(mult=mult, shift=shift)
            ref.update(scales=np.stack([mult, shift], 1))
        c = rng.integers(-128, 128, (m, n)).astype(np.int8)
    else:
        c = rng.choice(np.array([2**31 - 1, -(2**31), 0, 99]), (m, n)).astype(np.int32)
    if draw(st.booleans()):
        kw["c"] = c
        ref.update(accumulate=True, c_in=c)
    return a, b, kw, ref


@settings(max_examples=80)
@given(split_cases(), st.sampled_from(["fast", "csim"]))
def test_split_calls_equal_one_unlimited_call(case, backend):
    """With limits of 5 x 4 x 7 every epilogue (INT8 per tensor/row/column, stochastic rounding
    at global indices, accumulate, saturation) matches the reference of the whole GEMM."""
    a, b, kw, ref = case
    acc = Accelerator("zcu104", backend)
    acc.board = replace(acc.board, max_m=5, max_n=4, max_k=7)
    r = acc.gemm(a, b, **kw)
    want, sat = reference_gemm(a, b, **ref)
    assert np.array_equal(r.output, want) and r.saturated == sat
    m, n = want.shape
    k = a.shape[0] if kw["trans_a"] else a.shape[1]
    assert r.calls == -(-m // 5) * -(-n // 4) * -(-k // 7)
