"""The fast engine's C++ INT8 epilogue (lora_qta.runtime.epilogue_native) gives the bits of
hw/reference.py's Python-integer arithmetic and of the engine's numpy code (forced with
LORA_QTA_FAST_EPILOGUE=numpy): ties at every shift with either quotient parity and the values
beside them, shift 0, the largest multipliers and products, saturation on both sides, the amax
cap, per-tensor, per-row and per-column pairs, stochastic rounding at every shift, accumulation,
float32 and INT32 products, batches written through strided views (nothing else touched); the
engine takes it on its INT8 calls (equal to C-simulation), leaves other inputs to numpy, and
falls back to numpy after one warning without a compiler. (The property tests of
test_bitexact.py run both epilogues against C-simulation on random calls.)"""

from __future__ import annotations

import warnings
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from lora_qta.errors import OptionError
from lora_qta.hw.call import ConvGeometry, GemmCall
from lora_qta.hw.config import config
from lora_qta.hw.reference import AMAX_CAP, SHIFT_MAX, requantize, rounding_bits
from lora_qta.runtime import epilogue_native, fast
from lora_qta.runtime.image import MemoryImage
from lora_qta.runtime.planner import plan

ZCU = config().board("zcu104")
BEAT = ZCU.axi_bytes
MODES = ("tensor", "row", "col")
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def full(v: np.ndarray, mode: str, shape: tuple[int, int, int]) -> np.ndarray:
    """A mode's pairs (1, m or n values) broadcast to every output of an items x m x n batch."""
    return np.broadcast_to(v.reshape({"tensor": (1, 1, 1), "row": (1, -1, 1), "col": (1, 1, -1)}[mode]), shape)


def expected(acc, mult, shift, mode, stochastic, seed, item, old):
    """(INT8 outputs, saturated, amax) by hw/reference.py's arithmetic on Python integers; the
    batch's first item is number ``item`` (its random bits)."""
    items, m, n = acc.shape
    rows = (item * m + np.arange(items * m)).reshape(items, m, 1)
    bits = rounding_bits(seed, rows, np.arange(n).reshape(1, 1, n), n)
    q = requantize(acc.astype(np.int64), full(mult, mode, acc.shape), full(shift, mode, acc.shape), stochastic,
                   np.broadcast_to(bits, acc.shape))
    total = q + (old.astype(np.int64).astype(object) if old is not None else 0)
    flat = [int(v) for v in np.asarray(total, dtype=object).ravel()]
    out = np.array([min(max(v, -128), 127) for v in flat], dtype=np.int8).reshape(acc.shape)
    nsat = sum(v < -128 or v > 127 for v in flat)
    return out, nsat, min(max(abs(v) for v in flat), AMAX_CAP)


def strided(items: int, m: int, n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """(a random byte buffer, an items x m x n INT8 view into it with padded rows and items)."""
    ldc, item_bytes = n + 5, m * (n + 5) + 7
    buf = rng.integers(-128, 128, items * item_bytes + 3, dtype=np.int8)
    return buf, np.ndarray((items, m, n), np.int8, buf, 3, (item_bytes, ldc, 1))


def run_both(acc, mult, shift, mode, stochastic=False, seed=0, item=0, accumulate=False, rng=None):
    """Run the C++ epilogue and the numpy code on the same strided output; assert they agree
    (values, counts, every byte of the buffer) and with the reference; returns the C result."""
    rng = rng or np.random.default_rng(0)
    items, m, n = acc.shape
    buf, view = strided(items, m, n, rng)
    old = view.copy() if accumulate else None
    before = buf.copy()
    got = epilogue_native.epilogue_i8(acc, mult, shift, mode, stochastic, seed, item * m, accumulate, view)
    assert got is not None, "the C path must take this input"
    nbuf, nview = strided(items, m, n, np.random.default_rng(0))
    nbuf[...] = before
    call = SimpleNamespace(out_int8=True, scale_mode=mode, stochastic=stochastic, seed=seed, accumulate=accumulate)
    nsat, amax = fast._epilogue_numpy(call, acc.astype(np.int64), item, nview, mult, shift)
    assert (got[0], min(got[1], AMAX_CAP)) == (nsat, amax)
    assert np.array_equal(buf, nbuf), "the C++ and numpy epilogues wrote different bytes"
    inside = np.zeros(buf.shape, bool)
    np.ndarray(view.shape, bool, inside, 3, view.strides)[...] = True
    assert np.array_equal(buf[~inside], before[~inside]), "the epilogue wrote outside its output view"
    want, wsat, wamax = expected(acc, mult, shift, mode, stochastic, seed, item, old)
    assert np.array_equal(view, want) and (nsat, amax) == (wsat, wamax)
    return got


def test_the_c_library_is_built():
    """Every comparison here would compare numpy with itself if the build fell back silently."""
    assert epilogue_native.NATIVE.load() is not None


SPECIAL = [0, 1, -1, 2, -2, 127, -128, 2**24 - 1, -(2**24) + 1, INT32_MAX, -INT32_MAX, INT32_MIN]


@pytest.mark.parametrize("sh", range(SHIFT_MAX + 1))
def test_ties_at_every_shift_round_half_to_even(sh):
    """Products exactly on the half, (2q + 1) 2^(sh-1) for q of both signs and parities, made
    with a power-of-two multiplier 2^j (up to 2^30, and -2^31) times (2q + 1) 2^(sh-1-j), and
    the products one multiplier beside them; odd multipliers on the same values."""
    q = np.arange(-6, 7)
    cases = [(m, SPECIAL) for m in (1, -1, 3, INT32_MAX, INT32_MIN)]
    for j in sorted({min(max(sh - 1, 0), 30), max(sh - 1 - 30, 0), 31} if sh else set()):
        lost = sh - 1 - j
        if 0 <= lost <= 30:
            base = (2 * q + 1) << lost
            cases.append((INT32_MIN if j == 31 else 1 << j, [*base, *(base + 1), *(base - 1), *SPECIAL]))
    for mult, values in cases:
        acc = np.array([v for v in values if INT32_MIN <= v <= INT32_MAX], np.int64)
        pair = (np.array([mult], np.int64), np.array([sh], np.int64))
        run_both(acc.astype(np.int32).reshape(1, 1, -1), *pair, "tensor")
        run_both(acc[np.abs(acc) < 2**24].astype(np.float32).reshape(1, 1, -1), *pair, "tensor")


def test_shift_zero_largest_products_saturate_both_sides_and_cap_the_amax():
    acc = np.array([[[INT32_MAX, -INT32_MAX, 1, -1, 0, 127, -128, 128, -129]]], np.int32)
    for mult in (INT32_MIN, INT32_MAX, 1, -1):
        nsat, amax = run_both(acc, np.array([mult], np.int64), np.array([0], np.int64), "tensor")
        assert nsat == (8 if abs(mult) > 1 else 4) and amax == abs(INT32_MAX * mult)
    # the amax at the cap: 2^31 - 1 as it is, 2^31 capped (by the caller) to 2^31 - 1
    one = (np.array([1], np.int64), np.array([0], np.int64), "tensor")
    assert run_both(np.array([[[INT32_MAX]]], np.int32), *one) == (1, 2**31 - 1)
    assert run_both(np.array([[[INT32_MIN]]], np.int32), *one) == (1, 2**31)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stochastic", [False, True], ids=["nearest", "stochastic"])
@pytest.mark.parametrize("accumulate", [False, True], ids=["write", "accumulate"])
@pytest.mark.parametrize("dtype", [np.float32, np.int32], ids=["float32", "int32"])
@pytest.mark.parametrize("items,item", [(1, 0), (1, 5), (3, 0)])
def test_random_batches_in_every_mode(mode, stochastic, accumulate, dtype, items, item):
    """Products of every magnitude (up to 2^24 in float32, 2^31 in INT32), pairs over the whole
    INT32 multiplier range and every shift (a shift register's high bytes ignored, above 62
    clamped, as effective_shift does before), old outputs at random."""
    rng = np.random.default_rng([MODES.index(mode), stochastic, accumulate, items, item])
    m, n = 7, 45
    width = 24 if dtype == np.float32 else 31
    acc = (rng.integers(-(2**30), 2**30, (items, m, n)) >> rng.integers(0, 31, (items, m, n)))
    acc = np.clip(acc * 2, -(2**width) + 1, 2**width - 1).astype(dtype)
    cnt = {"tensor": 1, "row": m, "col": n}[mode]
    mult = rng.choice(np.array([INT32_MIN, INT32_MAX, 0, 1, -1, 12345]), cnt)
    mult = np.where(rng.random(cnt) < 0.5, rng.integers(INT32_MIN, INT32_MAX, cnt), mult).astype(np.int64)
    shift = rng.integers(0, SHIFT_MAX + 1, cnt).astype(np.int64)
    shift[: min(cnt, 2)] = [0, SHIFT_MAX][: min(cnt, 2)]
    run_both(acc, mult, shift, mode, stochastic, int(rng.integers(0, 2**32)), item, accumulate, rng)


@pytest.mark.parametrize("sh", range(SHIFT_MAX + 1))
def test_stochastic_rounding_at_every_shift(sh):
    """The random bits moved to each shift (right of the point up to 32, left of it above),
    on products of both signs with low bits that the noise carries or not."""
    rng = np.random.default_rng(sh)
    acc = rng.integers(-(2**30), 2**30, (2, 3, 40)).astype(np.int32)
    for mult in (INT32_MIN, INT32_MAX, int(rng.integers(1, 2**20)), -7):
        run_both(acc, np.array([mult], np.int64), np.array([sh], np.int64), "tensor", True, int(sh * 977), 1)


def test_through_the_engine_equals_csim_and_takes_the_c_path(monkeypatch):
    """INT8 calls of the engine (whole batch and item by item) use the C++ epilogue and leave the
    C-simulated kernel's image."""
    taken = []
    c_epilogue = epilogue_native.epilogue_i8

    def spy(*args):
        taken.append(c_epilogue(*args))
        return taken[-1]

    monkeypatch.setattr(fast.epilogue_native, "epilogue_i8", spy)
    rng = np.random.default_rng(3)
    cases = [("col", 1, False, False, None, 37), ("row", 3, True, True, None, 37), ("tensor", 2, True, False, None, 37),
             ("tensor", 1, False, True, None, 0),  # products far beyond the amax cap, saturated both sides
             ("col", 2, True, True, ConvGeometry(h=4, w=4, ho=4, wo=4, cin=BEAT, kh=3, kw=3, stride=1, pad=1), 37)]
    for mode, batch, stochastic, accumulate, geo, shift in cases:
        m, n, k = (16, 5, geo.k) if geo else (40, 24, 300)
        call = GemmCall(m, n, k, geo.cin if geo else 304, 32, 32, 1, 1, 1, out_int8=True, scale_mode=mode,
                        stochastic=stochastic, accumulate=accumulate, mult=-987654321, shift=shift, seed=11,
                        batch=batch, conv=geo)
        ext = call.extents(BEAT)
        call = plan(ZCU, replace(call, stride_a=-(-ext["a"] // BEAT) * BEAT, stride_b=0,
                                 stride_c=-(-ext["c"] // BEAT) * BEAT + BEAT)).call
        scales = np.stack([rng.integers(INT32_MIN, INT32_MAX, call.scale_count),
                           rng.integers(20, 300, call.scale_count)], 1) if call.scaled else None
        img = MemoryImage.build(ZCU, call, rng, scales=scales)
        c, f = img.copy(), img.copy()
        count = len(taken)
        out = c.run_csim(ZCU)
        assert out["status"] & 2 == 0 and out == f.run_fast(ZCU)
        assert shift or (out["amax"] == AMAX_CAP and out["sat_count"] > 0)
        assert np.array_equal(c.mem, f.mem)
        assert len(taken) == count + (batch if geo else 1) and all(t is not None for t in taken[count:])


@pytest.mark.parametrize("mult", [2**31, 2**32 + 3, -(2**31)])
def test_a_multiplier_beyond_int32_is_read_as_its_register_holds_it(mult):
    """The kernel sees the low 32 bits of a per-tensor multiplier as a signed value (review 4,
    finding 1): the fast engine (C++ epilogue) computes the same, without overflowing."""
    rng = np.random.default_rng(5)
    call = GemmCall(8, 8, 32, 32, 32, 32, 1, 1, 1, out_int8=True, scale_mode="tensor", mult=mult, shift=40, seed=3)
    call = plan(ZCU, replace(call, mult=1)).call
    call = replace(call, mult=mult)
    img = MemoryImage.build(ZCU, call, rng)
    c, f = img.copy(), img.copy()
    assert c.run_csim(ZCU) == f.run_fast(ZCU)
    assert np.array_equal(c.mem, f.mem)


def test_what_the_c_path_leaves_out_runs_numpy(monkeypatch):
    view = np.zeros((1, 2, 3), np.int8)
    one = (np.array([3], np.int64), np.array([4], np.int64), "tensor", False, 0, 0, False, view)
    monkeypatch.delenv(epilogue_native.ENGINE_ENV, raising=False)
    assert epilogue_native.epilogue_i8(np.ones((1, 2, 3), np.int32), *one) is not None
    assert epilogue_native.epilogue_i8(np.ones((1, 2, 3), np.int64), *one) is None        # another dtype
    assert epilogue_native.epilogue_i8(np.ones((1, 3, 2), np.int32).transpose(0, 2, 1), *one) is None
    for bad in ((np.array([2**31], np.int64), np.array([4], np.int64)), (np.array([3], np.int64), np.array([63], np.int64)),
                (np.array([3], np.int64), np.array([-1], np.int64))):   # beyond the C code's bounds
        assert epilogue_native.epilogue_i8(np.ones((1, 2, 3), np.int32), *bad, *one[2:]) is None
    frozen = np.zeros((1, 2, 3), np.int8)
    frozen.flags.writeable = False
    assert epilogue_native.epilogue_i8(np.ones((1, 2, 3), np.int32), *one[:-1], frozen) is None
    monkeypatch.setenv(epilogue_native.ENGINE_ENV, "numpy")
    assert epilogue_native.epilogue_i8(np.ones((1, 2, 3), np.int32), *one) is None
    monkeypatch.setenv(epilogue_native.ENGINE_ENV, "gpu")
    with pytest.raises(OptionError, match=epilogue_native.ENGINE_ENV):
        epilogue_native.epilogue_i8(np.ones((1, 2, 3), np.int32), *one)


def test_without_a_compiler_the_engine_requantizes_with_numpy_after_one_warning(monkeypatch, tmp_path):
    call = plan(ZCU, GemmCall(9, 20, 50, 64, 32, 32, 1, 1, 1, out_int8=True, mult=123456789, shift=30,
                              stochastic=True, seed=5)).call
    img = MemoryImage.build(ZCU, call, np.random.default_rng(8))
    native = img.copy()
    want = native.run_fast(ZCU)
    monkeypatch.delenv(epilogue_native.ENGINE_ENV, raising=False)
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("LORA_QTA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(epilogue_native.NATIVE, "lib", None)
    monkeypatch.setattr(epilogue_native.NATIVE, "failed", None)
    first = img.copy()
    with pytest.warns(RuntimeWarning, match="no-such-compiler"):
        assert first.run_fast(ZCU) == want
    second = img.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert second.run_fast(ZCU) == want
    assert np.array_equal(first.mem, native.mem) and np.array_equal(second.mem, native.mem)
