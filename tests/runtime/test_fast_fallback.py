"""The fast engine's float64 path (used where PyTorch's INT8 GEMM is missing) is exact too."""

import numpy as np
import pytest

from lora_qta.runtime import fast
from lora_qta.hw.config import config
from lora_qta.hw.call import GemmCall
from lora_qta.runtime.planner import plan


@pytest.mark.parametrize("out8, accumulate", [(False, False), (False, True), (True, False)])
def test_float64_fallback_matches_int_mm(monkeypatch, out8, accumulate):
    board = config().board("zcu104")
    rng = np.random.default_rng(5)
    m, k, n = 37, 300, 19
    call = plan(board, GemmCall(m, n, k, k, n, n, 1, 1, 1, out_int8=out8, accumulate=accumulate,
                                mult=12345, shift=22)).call
    a = rng.integers(-128, 128, (m, k), dtype=np.int8)
    b = rng.integers(-128, 128, (k, n), dtype=np.int8)
    c0 = rng.integers(-100, 100, (m, n)).astype(np.int8 if out8 else np.int32)

    def run():
        c = c0.copy()
        st, cyc = fast.run(board, call, a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8),
                           c.reshape(-1).view(np.uint8), None)
        return c, st, cyc

    with_int_mm = run()
    monkeypatch.setattr(fast, "_int_mm", None)
    without = run()
    assert np.array_equal(with_int_mm[0], without[0]) and with_int_mm[1:] == without[1:]
