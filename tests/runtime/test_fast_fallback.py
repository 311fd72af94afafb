"""The fast engine's float64 path (used where PyTorch's INT8 GEMM is missing) is exact too."""

import numpy as np
import pytest

from lora_qta.hw.call import GemmCall
from lora_qta.hw.config import config
from lora_qta.runtime import fast
from lora_qta.runtime.image import MemoryImage
from lora_qta.runtime.planner import plan


@pytest.mark.parametrize("out8, accumulate, ta, tb", [(False, False, False, False), (False, True, True, False),
                                                      (True, False, False, True), (True, True, True, True)])
def test_float64_fallback_matches_int_mm(monkeypatch, out8, accumulate, ta, tb):
    board = config().board("zcu104")
    m, k, n = 37, 300, 19
    # leading dimensions padded to the 16-byte beat: strided views, as the Accelerator uploads them
    call = plan(board, GemmCall(m, n, k, 48 if ta else 304, 304 if tb else 32, 32, 1, 1, 1, trans_a=ta,
                                trans_b=tb, out_int8=out8, accumulate=accumulate, mult=12345, shift=22)).call
    img = MemoryImage.build(board, call, np.random.default_rng(5))

    def run():
        i = img.copy()
        outputs = i.run_fast(board)
        return i.mem, outputs

    with_int_mm = run()
    monkeypatch.setattr(fast, "_int_mm", None)
    without = run()
    assert np.array_equal(with_int_mm[0], without[0]) and with_int_mm[1] == without[1]
    assert with_int_mm[1]["status"] & 2 == 0
