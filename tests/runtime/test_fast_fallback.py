"""The fast engine's GEMM is exact: float32 GEMMs over K chunks of at most 1024 summed in INT32
(and the float64 path used where PyTorch is missing) equal the int64 product, also where every
partial sum reaches the 2**24 bound of float32, across chunk boundaries, on strided views, and
through the whole engine on a memory image."""

import numpy as np
import pytest

from lora_qta.hw.call import GemmCall
from lora_qta.hw.config import config
from lora_qta.runtime import fast
from lora_qta.runtime.image import MemoryImage
from lora_qta.runtime.planner import plan


def reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a.astype(np.int64) @ b.astype(np.int64)


@pytest.mark.parametrize("k", [1, 7, fast.K_CHUNK - 1, fast.K_CHUNK, fast.K_CHUNK + 1, 3 * fast.K_CHUNK + 5])
def test_chunked_float32_product_is_exact_at_the_bounds(k):
    rng = np.random.default_rng(k)
    # the extremes: (-128) * (-128) = 2**14 in every product of row 0 / column 0, so a chunk of
    # K_CHUNK of them sums to exactly 2**24; the rest random, with the other extreme mixed in
    a = rng.integers(-128, 128, (5, k), dtype=np.int8)
    b = rng.integers(-128, 128, (k, 6), dtype=np.int8)
    a[0], b[:, 0] = -128, -128
    a[1], b[:, 1] = 127, -128
    out = fast.exact_matmul(a, b)
    assert out.dtype == np.int32
    assert np.array_equal(out, reference(a, b))
    assert out[0, 0] == k * 2**14


def test_chunked_product_reads_strided_and_transposed_views():
    rng = np.random.default_rng(1)
    mem = rng.integers(-128, 128, (300, 2600), dtype=np.int8)
    a = mem[:37, :2500:1]            # leading dimension 2600 > K
    b = mem[100:119, :2500].T        # a transposed view (op(B) of trans_b)
    assert np.array_equal(fast.exact_matmul(a, b), reference(a, b))


@pytest.mark.parametrize("out8, accumulate, ta, tb", [(False, False, False, False), (False, True, True, False),
                                                      (True, False, False, True), (True, True, True, True)])
def test_float64_fallback_matches_the_float32_path(monkeypatch, out8, accumulate, ta, tb):
    board = config().board("zcu104")
    m, k, n = 37, 1300, 19
    # leading dimensions padded to the 16-byte beat: strided views, as the Accelerator uploads them
    call = plan(board, GemmCall(m, n, k, 48 if ta else 1312, 1312 if tb else 32, 32, 1, 1, 1, trans_a=ta,
                                trans_b=tb, out_int8=out8, accumulate=accumulate, mult=12345, shift=22)).call
    img = MemoryImage.build(board, call, np.random.default_rng(5))

    def run():
        i = img.copy()
        outputs = i.run_fast(board)
        return i.mem, outputs

    with_torch = run()
    monkeypatch.setattr(fast, "torch", None)
    without = run()
    assert np.array_equal(with_torch[0], without[0]) and with_torch[1] == without[1]
    assert with_torch[1]["status"] & 2 == 0
