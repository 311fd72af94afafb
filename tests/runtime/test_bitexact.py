"""The contract between hardware and emulation: C-simulation == fast engine == numpy reference.

Property-based, on one memory image per call as unified addressing sees DDR (every board,
dataflow and split; transposes; INT32 and INT8 outputs with per-tensor, row and column scales,
nearest-even and stochastic rounding; accumulate; edge tiles; degenerate shapes with M, N or K =
1 in every layout; padded leading dimensions and batch strides; batches with shared and separate
B; convolution geometries with 1x1 and 3x3 windows, stride 1 and 2, padding, input dilation 2;
extreme operand values). The C-simulated kernel and the fast engine must leave byte-identical
images (outputs, the zero padding of the last beat of every row, every byte they must not touch)
and identical output registers (status, sat_count, amax, cycles_model), with the fast engine's
C++ INT8 epilogue and with its numpy one; the reference must agree with the outputs, and the
modelled cycle count must equal the planner's.
"""

import os
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lora_qta.hw.call import ConvGeometry, GemmCall
from lora_qta.hw.config import config
from lora_qta.hw.reference import mix32, reference_call
from lora_qta.runtime import csim, epilogue_native
from lora_qta.runtime.image import MemoryImage
from lora_qta.runtime.planner import fits, kernel_accepts, model_cycles, valid_modes

BOARDS = sorted(config().boards)
ZCU = config().board("zcu104")


def _ceil_to(x, step):
    return -(-x // step) * step


def legal_tiles(board, call, tiles):
    """Tiles for ``call``: each a multiple of the beat (or the whole dimension), shrunk by halves
    until the feeder banks and accumulators hold a step (beat-sized tiles always fit)."""
    beat = board.axi_bytes
    dims = (call.m, call.n, call.k)
    maxes = (board.tile_m_max, board.tile_n_max, board.tile_k_max)
    t = [min(x, mx) if x >= d else max(beat, x // beat * beat) for x, d, mx in zip(tiles, dims, maxes)]
    t = [min(x, mx // beat * beat) if x < d else x for x, d, mx in zip(t, dims, maxes)]
    while not fits(board, call.dataflow, call.split, *(min(x, d) for x, d in zip(t, dims))):
        i = int(np.argmax([min(x, d) for x, d in zip(t, dims)]))
        t[i] = max(beat, min(t[i], dims[i]) // 2 // beat * beat)
    return replace(call, tile_m=t[0], tile_n=t[1], tile_k=t[2])


def dims(draw, max_dim):
    """A dimension: often 1 (degenerate), else small, or around a tile edge."""
    return draw(st.one_of(st.just(1), st.integers(1, max_dim), st.integers(2, 40)))


@st.composite
def calls(draw, max_dim=72, conv_rate=0.2):
    board = config().board(draw(st.sampled_from(BOARDS)))
    beat = board.axi_bytes
    df, split = draw(st.sampled_from(valid_modes(board)))
    out8 = draw(st.booleans())
    conv = None
    if draw(st.floats(0, 1)) < conv_rate:
        kh = draw(st.sampled_from([1, 3]))
        stride = draw(st.sampled_from([1, 2]))
        dil = draw(st.sampled_from([1, 2])) if stride == 1 else 1
        pad = draw(st.integers(0, 1)) if kh == 3 else 0
        h, w = draw(st.integers(kh, 6)), draw(st.integers(kh, 6))
        ho = ConvGeometry.output_size(h, kh, stride, pad, dil) + (draw(st.integers(0, 1)) if dil == 2 else 0)
        wo = ConvGeometry.output_size(w, kh, stride, pad, dil) + (draw(st.integers(0, 1)) if dil == 2 else 0)
        conv = ConvGeometry(h=h, w=w, ho=ho, wo=wo, cin=beat * draw(st.integers(1, 3)), kh=kh, kw=kh,
                            stride=stride, pad=pad, dil=dil)
        m = draw(st.integers(1, 2 * conv.pixels))
        k = conv.k
        trans_a = False
        lda = _ceil_to(conv.cin, beat) + beat * draw(st.integers(0, 1))
    else:
        m, k = dims(draw, max_dim), dims(draw, max_dim)
        trans_a = draw(st.booleans())
        lda = _ceil_to(m if trans_a else k, beat) + beat * draw(st.integers(0, 2))
    n = dims(draw, max_dim)
    trans_b = draw(st.booleans())
    eb = 1 if out8 else 4
    call = GemmCall(
        m=m, n=n, k=k, lda=lda, ldb=_ceil_to(k if trans_b else n, beat) + beat * draw(st.integers(0, 2)),
        ldc=(_ceil_to(n * eb, beat) + beat * draw(st.integers(0, 1))) // eb, tile_m=1, tile_n=1, tile_k=1,
        trans_a=trans_a, trans_b=trans_b, dataflow=df, split=split, out_int8=out8,
        accumulate=draw(st.booleans()),
        scale_mode=draw(st.sampled_from(["tensor", "row", "col"])) if out8 else "tensor",
        stochastic=draw(st.booleans()) if out8 else False,
        mult=draw(st.one_of(st.integers(-(2**31), 2**31 - 1), st.integers(-4000, 4000))),
        shift=draw(st.integers(0, 62)), seed=draw(st.integers(0, 2**32 - 1)), conv=conv,
        batch=draw(st.sampled_from([1, 1, 2, 3])),
    )
    ext = call.extents(beat)
    share_b = draw(st.booleans())
    call = replace(call, stride_a=0 if conv is not None and call.batch == 1 else _ceil_to(ext["a"], beat) + beat,
                   stride_b=0 if share_b else _ceil_to(ext["b"], beat),
                   stride_c=_ceil_to(ext["c"], beat) + beat * draw(st.integers(0, 1)))
    big = max(call.m, call.n, call.k)
    tiles = (draw(st.integers(1, big + beat)), draw(st.integers(1, big + beat)), draw(st.integers(1, big + beat)))
    call = legal_tiles(board, call, tiles)
    assert kernel_accepts(board, call), call
    return board, call, draw(st.sampled_from(["random", "min", "max", "mixed"])), draw(st.integers(0, 2**31))


def image(board, call, extreme, seed):
    rng = np.random.default_rng(seed)
    img = MemoryImage.build(board, call, rng, gap=int(rng.integers(0, 3)),
                            scales=np.stack([rng.integers(-(2**31), 2**31 - 1, max(call.scale_count, 1)),
                                             rng.integers(0, 300, max(call.scale_count, 1))], 1)[:call.scale_count]
                            if call.scaled else None)
    ext = call.extents(board.axi_bytes)
    for name in ("a", "b"):
        o, e = img.offsets[name], ext[name]
        if extreme == "min":
            img.mem[o:o + e] = 0x80
        elif extreme == "max":
            img.mem[o:o + e] = 0x7F
        elif extreme == "mixed":
            img.mem[o:o + e] = rng.choice(np.array([0x80, 0x7F, 0, 0xFF, 1], dtype=np.uint8), e)
    if not call.out_int8:  # old INT32 values at the extremes, so that accumulation saturates
        for i in range(call.batch):
            c = img.c(i)
            c[...] = rng.choice(np.array([2**31 - 1, -(2**31), 0, 12345], dtype=np.int64), c.shape)
    return img


def reference(img):
    call = img.call
    return reference_call([img.a(i) for i in range(call.batch)], [img.b(i) for i in range(call.batch)],
                          m=call.m, n=call.n, k=call.k, trans_a=call.trans_a, trans_b=call.trans_b,
                          out_int8=call.out_int8, accumulate=call.accumulate,
                          c_in=[img.c(i).copy() for i in range(call.batch)], scale_mode=call.scale_mode,
                          mult=call.mult, shift=call.shift, scales=img.scales(), stochastic=call.stochastic,
                          seed=call.seed, conv=call.conv)


@contextmanager
def numpy_epilogue():
    """The fast engine with its numpy INT8 epilogue instead of the C++ one (restored after)."""
    old = os.environ.get(epilogue_native.ENGINE_ENV)
    os.environ[epilogue_native.ENGINE_ENV] = "numpy"
    try:
        yield
    finally:
        if old is None:
            del os.environ[epilogue_native.ENGINE_ENV]
        else:
            os.environ[epilogue_native.ENGINE_ENV] = old


def check(board, call, extreme, seed, with_reference=True):
    img = image(board, call, extreme, seed)
    img_csim, img_fast = img.copy(), img.copy()
    out_csim = img_csim.run_csim(board)
    out_fast = img_fast.run_fast(board)
    assert out_csim["status"] & 2 == 0, f"the kernel rejected {call}"
    assert out_csim == out_fast, f"C-simulation and the fast engine report differently for {call}"
    diff = np.nonzero(img_csim.mem != img_fast.mem)[0]
    assert diff.size == 0, f"C-simulation and the fast engine differ at bytes {diff[:8]} for {call}"
    if call.out_int8:  # the fast engine's numpy epilogue (the C++ one's statement and fallback) too
        img_numpy = img.copy()
        with numpy_epilogue():
            assert img_numpy.run_fast(board) == out_csim, f"the numpy epilogue reports differently for {call}"
        assert np.array_equal(img_numpy.mem, img_csim.mem), f"the numpy epilogue differs for {call}"
    assert out_csim["cycles_model"] == model_cycles(board, call).cycles
    assert out_csim["cycles_measured"] == 0  # C-simulation cannot measure cycles
    # every byte outside the output rows (and their beat padding) is untouched
    beat, eb = board.axi_bytes, call.out_bytes
    touched = np.zeros(img.mem.size, dtype=bool)
    for i in range(call.batch):
        for r in range(call.m):
            at = img.offsets["c"] + i * call.stride_c + r * call.ldc * eb
            touched[at:at + _ceil_to(call.n * eb, beat)] = True
    assert np.array_equal(img_csim.mem[~touched], img.mem[~touched]), "the kernel wrote outside its output rows"
    for i in range(call.batch):
        for r in range(call.m):
            at = img.offsets["c"] + i * call.stride_c + r * call.ldc * eb
            assert not img_csim.mem[at + call.n * eb:at + _ceil_to(call.n * eb, beat)].any()
    if with_reference:
        ref = reference(img)
        for i in range(call.batch):
            assert np.array_equal(img_csim.c(i), ref.c[i]), f"C-simulation differs from numpy for {call}, item {i}"
        assert out_csim["sat_count"] == ref.sat_count and out_csim["amax"] == ref.amax
        assert out_csim["status"] == (1 if ref.saturated else 0)


@given(calls())
def test_csim_fast_and_reference_agree(case):
    check(*case)


@settings(max_examples=40)
@given(calls(max_dim=300, conv_rate=0.3))
def test_differential_fuzz_fast_against_csim(case):
    """Larger shapes, more blocks and K chunks: the two engines only (no slow reference)."""
    check(*case, with_reference=False)


@pytest.mark.parametrize("board", BOARDS)
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 17, 33), (33, 1, 17), (17, 33, 1), (1, 1, 40), (40, 1, 1)])
def test_degenerate_shapes_in_every_layout(board, ta, tb, shape):
    """M, N or K = 1 with every transpose: 1 x K views and vectors in every position."""
    b = config().board(board)
    m, n, k = shape
    beat = b.axi_bytes
    for df, sp in (("os", 0), ("ws", 0), ("os", min(b.splits)), ("os", max(b.splits))):
        call = GemmCall(m=m, n=n, k=k, lda=_ceil_to(m if ta else k, beat), ldb=_ceil_to(k if tb else n, beat),
                        ldc=_ceil_to(4 * n, beat) // 4, tile_m=m, tile_n=n, tile_k=k, trans_a=ta, trans_b=tb,
                        dataflow=df, split=sp)
        check(b, legal_tiles(b, call, (m, n, k)), "random", m * 100 + n * 10 + k)


@pytest.mark.parametrize("board", BOARDS)
def test_int32_accumulator_limit_is_exact(board):
    """K at the configured maximum with all operands -128: the largest exact dot product."""
    b = config().board(board)
    k = b.max_k
    call = GemmCall(m=1, n=2, k=k, lda=_ceil_to(k, b.axi_bytes), ldb=b.axi_bytes, ldc=b.axi_bytes // 4,
                    tile_m=1, tile_n=2, tile_k=b.tile_k_max)
    call = legal_tiles(b, call, (1, 2, b.tile_k_max))
    img = MemoryImage.build(b, call, c_fill="zero")
    ext = call.extents(b.axi_bytes)
    img.mem[img.offsets["a"]:img.offsets["a"] + ext["a"]] = 0x80
    img.mem[img.offsets["b"]:img.offsets["b"] + ext["b"]] = 0x80
    out = img.copy()
    res = out.run_csim(b)
    assert out.c(0)[0, 0] == k * 16384 <= 2**31 - 1 and res["status"] == 0 and res["amax"] == k * 16384
    fast = img.copy()
    assert fast.run_fast(b) == res and np.array_equal(fast.mem, out.mem)


BAD = {
    "m": lambda b, c: replace(c, m=b.max_m + 1),
    "k": lambda b, c: replace(c, k=0),
    "batch": lambda b, c: replace(c, batch=0),
    "lda": lambda b, c: replace(c, lda=c.lda + 1),
    "ldc": lambda b, c: replace(c, ldc=c.n - 1),
    "tile_m": lambda b, c: replace(c, tile_m=b.tile_m_max + b.axi_bytes),
    "tile_k": lambda b, c: replace(c, tile_k=b.axi_bytes + 1) if c.k > b.axi_bytes + 1 else replace(c, tile_k=0),
    "split": lambda b, c: replace(c, split=max(b.splits) + 1),
    "shift": lambda b, c: replace(c, shift=63, out_int8=True),
    "stride": lambda b, c: replace(c, stride_c=c.stride_c + 4, batch=2),
    # review S11: accumulating batch items whose C overlap (here by one beat-aligned row short)
    "overlap": lambda b, c: replace(c, accumulate=True, batch=2,
                                    stride_c=max(0, (c.m - 1) * c.ldc * c.out_bytes // b.axi_bytes * b.axi_bytes)),
    "capacity": lambda b, c: replace(c, m=b.tile_m_max, n=b.tile_n_max, k=b.tile_k_max, tile_m=b.tile_m_max,
                                     tile_n=b.tile_n_max, tile_k=b.tile_k_max, dataflow="os", split=min(b.splits),
                                     lda=b.tile_k_max, ldb=b.tile_n_max, ldc=b.tile_n_max, trans_a=False,
                                     trans_b=False, conv=None),
    "conv_k": lambda b, c: replace(c, conv=ConvGeometry(h=3, w=3, ho=3, wo=3, cin=b.axi_bytes), trans_a=False,
                                   k=9 * b.axi_bytes + 1),
}


@given(calls(max_dim=20, conv_rate=0), st.sampled_from(sorted(BAD) + ["offset"]))
def test_bad_arguments_agree(case, field):
    """Both engines refuse the same invalid arguments with the same outputs, touching no memory."""
    board, call, extreme, seed = case
    img = MemoryImage.build(board, call, np.random.default_rng(seed))
    if field == "offset":
        img.offsets["a"] += 1
    else:
        img = MemoryImage(BAD[field](board, call), img.mem, img.offsets)
    assert field == "offset" or not kernel_accepts(board, img.call)
    img_csim, img_fast = img.copy(), img.copy()
    out_csim, out_fast = img_csim.run_csim(board), img_fast.run_fast(board)
    want = {"status": 1 << config().status["bad_args"], "sat_count": 0, "amax": 0,
            "cycles_model": config().schedule.call_overhead, "cycles_measured": 0}
    assert out_csim == out_fast == want
    assert np.array_equal(img_csim.mem, img.mem) and np.array_equal(img_fast.mem, img.mem)


@given(st.integers(0, 2**32 - 1))
def test_rounding_hash_matches_the_kernel(x):
    assert csim.load(ZCU).mix32(x) == int(mix32(x))
