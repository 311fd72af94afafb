"""The fast engine's shortcuts stay bit-exact with C-simulation and the numpy reference: one
float32 GEMM written straight to INT32 when K <= K_CHUNK (at the 2**24 bound of every partial
sum), the chunked path just above it, a 1x1 convolution read in place as a strided view of its
map (padded pixels, a partial last image), a 3x3 one as one PyTorch convolution over the padded
map, or from an im2col matrix built in float32 when K is longer; the float64 paths taken where
PyTorch's settings allow reduced-precision float32 math; and
the driver's one-block register write decodes to the same call in the emulated device."""

from dataclasses import replace

import numpy as np
import pytest

from lora_qta.errors import KernelArgumentError
from lora_qta.hw.call import ConvGeometry, GemmCall
from lora_qta.hw.config import config
from lora_qta.hw.reference import im2col as im2col_reference
from lora_qta.hw.reference import reference_call
from lora_qta.runtime import fast
from lora_qta.runtime.accelerator import Accelerator
from lora_qta.runtime.image import MemoryImage
from lora_qta.runtime.planner import plan

ZCU = config().board("zcu104")
BEAT = ZCU.axi_bytes


def _ceil_to(x: int, step: int) -> int:
    return -(-x // step) * step


def both_engines(call: GemmCall, fill: int | None = None, seed: int = 0) -> tuple[MemoryImage, dict]:
    """Run ``call`` (planned) on one image with C-simulation and the fast engine; assert that
    the images and output registers are identical; return the C-simulated image and outputs."""
    img = MemoryImage.build(ZCU, call, np.random.default_rng(seed))
    if fill is not None:
        ext = call.extents(BEAT)
        for name in ("a", "b"):
            img.mem[img.offsets[name]:img.offsets[name] + ext[name]] = fill
    c, f = img.copy(), img.copy()
    out_c, out_f = c.run_csim(ZCU), f.run_fast(ZCU)
    assert out_c["status"] & 2 == 0, f"the kernel rejected {call}"
    assert out_c == out_f
    assert np.array_equal(c.mem, f.mem)
    return c, out_c


@pytest.mark.parametrize("k", [fast.K_CHUNK, fast.K_CHUNK + 1])
@pytest.mark.parametrize("ta,tb", [(False, False), (True, True)])
def test_one_gemm_and_chunked_paths_at_the_float32_bound(k, ta, tb):
    """All operands -128: every product is 2**14, so at K = K_CHUNK the single float32 GEMM's
    sums reach exactly 2**24 (the last exact integer); one more K takes the chunked path."""
    m, n = 5, 3
    call = plan(ZCU, GemmCall(m, n, k, _ceil_to(m if ta else k, BEAT), _ceil_to(k if tb else n, BEAT),
                              _ceil_to(n * 4, BEAT) // 4, 1, 1, 1, trans_a=ta, trans_b=tb)).call
    img, out = both_engines(call, fill=0x80)
    assert (img.c(0) == k * 2**14).all() and out["amax"] == k * 2**14
    a = np.full((m, k), -128, np.int8)
    assert (fast.float_product(a, a.T[:, :n]) is None) == (k > fast.K_CHUNK)


@pytest.mark.parametrize("batch", [1, 3])
def test_float_product_equals_the_int64_product_on_strided_views(batch):
    rng = np.random.default_rng(batch)
    mem = rng.integers(-128, 128, (batch, 70, 300), dtype=np.int8)
    a = mem[:, :37, :250]                   # leading dimension 300 > K
    b = mem[:, 40:59, :250].transpose(0, 2, 1)  # transposed views (op(B) of trans_b)
    got = fast.float_product(a, b)
    assert got.dtype == fast.torch.float32
    assert np.array_equal(got.numpy().astype(np.int64), a.astype(np.int64) @ b.astype(np.int64))


@pytest.mark.parametrize("geo,m_cut", [
    (ConvGeometry(h=5, w=3, ho=5, wo=3, cin=2 * BEAT, kh=1, kw=1, stride=1, pad=0), 0),   # read in place
    (ConvGeometry(h=5, w=3, ho=5, wo=3, cin=BEAT, kh=1, kw=1, stride=1, pad=0), 7),       # partial last image
    (ConvGeometry(h=6, w=6, ho=3, wo=3, cin=BEAT, kh=1, kw=1, stride=2, pad=0), 0),       # 1x1 but strided
    (ConvGeometry(h=5, w=4, ho=5, wo=4, cin=BEAT, kh=3, kw=3, stride=1, pad=1), 0),       # im2col in float32
    (ConvGeometry(h=3, w=3, ho=6, wo=6, cin=BEAT, kh=3, kw=3, stride=1, pad=1, dil=2), 0),
])
@pytest.mark.parametrize("out8", [False, True])
def test_convolution_views_match_csim_and_reference(geo, m_cut, out8):
    """The map's pixels carry one spare beat (lda > cin), so an in-place view must skip it."""
    imgs = 2
    m = imgs * geo.pixels - m_cut
    n = 5
    eb = 1 if out8 else 4
    call = GemmCall(m=m, n=n, k=geo.k, lda=geo.cin + BEAT, ldb=_ceil_to(n, BEAT), ldc=_ceil_to(n * eb, BEAT) // eb,
                    tile_m=1, tile_n=1, tile_k=1, out_int8=out8, mult=3, shift=9, conv=geo)
    call = plan(ZCU, call).call
    img, out = both_engines(call, seed=m)
    # A and B are as they were (the kernel writes C only); C is not accumulated into
    ref = reference_call([img.a(0)], [img.b(0)], m=m, n=n, k=geo.k, out_int8=out8, mult=3, shift=9, conv=geo)
    assert np.array_equal(img.c(0), ref.c[0]) and out["amax"] == ref.amax and out["sat_count"] == ref.sat_count


def test_register_block_round_trips_every_argument():
    """The driver's packed block holds every input at its own offset, little-endian (as a
    register-by-register write would), and decodes back to the same values."""
    cfg = config()
    block = cfg.input_block
    values = {a.name: (0x1234_5678_9ABC_DE00 + i if a.data_bytes == 8 else 0x8765_4300 + i)
              for i, a in enumerate(cfg.inputs)}
    data = block.pack(values)
    regs = bytearray(cfg.address_range)
    regs[block.start:block.start + len(data)] = data
    for a in cfg.inputs:
        assert int.from_bytes(regs[a.offset:a.offset + a.data_bytes], "little") == values[a.name]
    assert block.unpack(regs) == values
    out = cfg.output_block
    vals = {name: 7 for name in out.names}
    out.pack_into(regs, vals)
    for a in cfg.outputs:
        assert int.from_bytes(regs[a.offset:a.offset + a.data_bytes], "little") == 7
        assert int.from_bytes(regs[a.valid_offset:a.valid_offset + 4], "little") == 7


def test_driver_refuses_a_value_its_register_cannot_hold():
    acc = Accelerator("zcu104", "fast")
    call = plan(ZCU, GemmCall(4, 4, 16, 16, 16, 4, 1, 1, 1)).call
    with pytest.raises(KernelArgumentError, match="stride_a=-16"):
        acc.ip.start(acc.memory_base, {"a": 0, "b": 64, "c": 128}, replace(call, stride_a=-16))
    with pytest.raises(KernelArgumentError, match=r"c=18446744073709551616"):
        acc.ip.start(acc.memory_base, {"a": 0, "b": 64, "c": 1 << 64}, call)


def test_buffers_host_views_sit_half_a_page_off_their_ddr_copies():
    """The emulated cache copy of a buffer starts at page offset HOST_SKEW, its DDR copy on a
    page boundary (no 4K aliasing between them in flush/invalidate), and both round-trip data."""
    from lora_qta.runtime.emulation import HOST_SKEW, PAGE

    acc = Accelerator("zcu104", "fast")
    for nbytes in (1, 5000, 1 << 20):
        buf = acc._buffer(f"t{nbytes}", nbytes)
        assert buf.ctypes.data % PAGE == HOST_SKEW and buf.device_address % PAGE == 0
        buf[:] = np.arange(buf.size, dtype=np.uint64).astype(np.uint8)
        buf.flush()
        ddr = acc.device.ddr.view(buf.device_address, buf.size, "test")
        assert np.array_equal(ddr, buf)


def test_a_single_item_call_writes_zero_batch_strides():
    """At batch 1 no batch stride is read: the registers hold 0 for all three (as a shared B
    does), so equal shapes from gemm() and batched_gemm() are one call to the planner's caches."""
    acc = Accelerator("zcu104", "fast")
    rng = np.random.default_rng(0)
    a, b = rng.integers(-9, 9, (20, 48), dtype=np.int8), rng.integers(-9, 9, (48, 24), dtype=np.int8)
    r1 = acc.gemm(a, b)
    regs = config().input_block.unpack(acc.device._regs)
    assert (regs["batch"], regs["stride_a"], regs["stride_b"], regs["stride_c"]) == (1, 0, 0, 0)
    r2 = acc.batched_gemm(a[None], b[None])
    assert config().input_block.unpack(acc.device._regs) == regs
    assert np.array_equal(r1.output, a.astype(np.int32) @ b.astype(np.int32)) and np.array_equal(r2.output[0], r1.output)


def test_kept_buffer_layouts_follow_a_grown_buffer():
    """The operand layouts the Accelerator keeps are views of its current buffers: after a larger
    call replaced a buffer, a layout seen before is a view of the new one, and results stay exact."""
    acc = Accelerator("zcu104", "fast")
    rng = np.random.default_rng(2)
    small = rng.integers(-9, 9, (20, 48), dtype=np.int8), rng.integers(-9, 9, (48, 24), dtype=np.int8)
    big = rng.integers(-9, 9, (600, 480), dtype=np.int8), rng.integers(-9, 9, (480, 96), dtype=np.int8)
    want = [a.astype(np.int32) @ b.astype(np.int32) for a, b in (small, big)]
    assert np.array_equal(acc.gemm(*small).output, want[0])
    before = acc._buffers["a"]
    assert np.array_equal(acc.gemm(*big).output, want[1])
    assert acc._buffers["a"] is not before
    assert np.array_equal(acc.gemm(*small).output, want[0])
    buf, view, _, _ = acc._padded("a", 1, 20, 48, np.int8)
    assert buf.base is acc._buffers["a"] and view.base is not None


@pytest.mark.parametrize("batch,m,k,n,views", [
    (None, 1024, 64, 8, False), (None, 9, 5, 1, True), (3, 20, 7, 8, True), (3, 20, 7, 8, False),
    (None, 8, 3, 8, False), (None, 1, 4, 1, True), (2, 40, 300, 5, True),
])
def test_narrow_products_are_exact_in_either_order(batch, m, k, n, views):
    """Products with n <= NARROW_N columns (a LoRA rank) run transposed: the same exact integers
    as the int64 product, on contiguous operands and on transposed strided views, batched with a
    shared B too; m <= n keeps the direct order."""
    assert n <= fast.NARROW_N
    rng = np.random.default_rng(m * n + k)
    shape = (m, k) if batch is None else (batch, m, k)
    a = rng.integers(-128, 128, shape, dtype=np.int8)
    b = rng.integers(-128, 128, (k, n), dtype=np.int8)
    if views:  # op(A) and op(B) as transposes of stored matrices with a longer leading dimension
        sa = np.zeros(shape[:-2] + (k, m + 3), np.int8)
        sa[..., :m] = np.swapaxes(a, -1, -2)
        sb = np.zeros((n, k + 5), np.int8)
        sb[:, :k] = b.T
        a, b = np.swapaxes(sa[..., :m], -1, -2), sb[:, :k].T
    got = fast.float_product(a, b)
    assert got.dtype == fast.torch.float32 and got.is_contiguous()
    assert np.array_equal(got.numpy().astype(np.int64), a.astype(np.int64) @ b.astype(np.int64))


@pytest.mark.parametrize("geo,m_cut", [
    (ConvGeometry(h=5, w=4, ho=5, wo=4, cin=BEAT, kh=3, kw=3, stride=1, pad=1), 0),
    (ConvGeometry(h=5, w=4, ho=5, wo=4, cin=2 * BEAT, kh=3, kw=3, stride=1, pad=1), 9),     # partial last image
    (ConvGeometry(h=7, w=6, ho=4, wo=3, cin=BEAT, kh=3, kw=3, stride=2, pad=1), 0),         # strided
    (ConvGeometry(h=3, w=3, ho=6, wo=6, cin=BEAT, kh=3, kw=3, stride=1, pad=1, dil=2), 0),  # input dilation
    (ConvGeometry(h=3, w=4, ho=5, wo=7, cin=BEAT, kh=3, kw=3, stride=1, pad=1, dil=2), 0),  # bottom/right cut
    (ConvGeometry(h=4, w=4, ho=2, wo=2, cin=BEAT, kh=3, kw=3, stride=1, pad=0), 0),         # map larger than read
    (ConvGeometry(h=1, w=1, ho=1, wo=1, cin=BEAT, kh=3, kw=3, stride=1, pad=1), 0),         # one pixel
    (ConvGeometry(h=6, w=6, ho=3, wo=3, cin=BEAT, kh=1, kw=1, stride=2, pad=0), 0),         # 1x1 but strided
    (ConvGeometry(h=3, w=3, ho=5, wo=5, cin=BEAT, kh=3, kw=3, stride=1, pad=1, dil=2), 0),  # dilated, natural size
    (ConvGeometry(h=3, w=3, ho=4, wo=4, cin=BEAT, kh=3, kw=3, stride=1, pad=1, dil=2), 0),  # dilated, cropped
    (ConvGeometry(h=3, w=3, ho=1, wo=1, cin=112, kh=3, kw=3, stride=1, pad=0), 0),          # K = 1008, no padding
    (ConvGeometry(h=4, w=4, ho=1, wo=1, cin=64, kh=4, kw=4, stride=1, pad=0), 0),           # K = 1024: 2**24
])
@pytest.mark.parametrize("trans_b", [False, True])
def test_float_conv_equals_the_reference_im2col_product(geo, m_cut, trans_b):
    """One PyTorch convolution over the padded map gives the integers of the reference im2col
    matrix times op(B) (int64), on a map whose pixels carry a spare beat and a weight view with a
    longer leading dimension; all operands -128 where every output reads the whole map, so the
    sums reach K * 2**14 (2**24 at K = 1024)."""
    imgs, n = 2, 5
    m = imgs * geo.pixels - m_cut
    rng = np.random.default_rng(geo.k + m)
    x = rng.integers(-128, 128, (imgs, geo.h, geo.w, geo.cin + BEAT), dtype=np.int8)
    w = rng.integers(-128, 128, (geo.k, n), dtype=np.int8)
    full = geo.pad == 0 and (geo.ho, geo.wo) == (1, 1)  # every output reads the whole map: sums of K * 2**14
    if full:
        x[...], w[...] = -128, -128
    store = np.zeros((n, geo.k + 7) if trans_b else (geo.k, n + 3), np.int8)
    if trans_b:
        store[:, :geo.k] = w.T
        wmat = store[:, :geo.k].T
    else:
        store[:, :n] = w
        wmat = store[:, :n]
    got = fast.float_conv(x, geo, wmat, m)
    assert got.dtype == fast.torch.float32 and got.is_contiguous() and got.shape == (m, n)
    want = im2col_reference(x, geo, m).astype(np.int64) @ w.astype(np.int64)
    assert np.array_equal(got.numpy().astype(np.int64), want)
    if full:
        assert (want == geo.k * 2**14).all()


def test_float_conv_leaves_long_k_and_in_place_maps_to_the_gemm_paths():
    x = np.zeros((1, 3, 3, 128), np.int8)
    long_k = ConvGeometry(h=3, w=3, ho=3, wo=3, cin=128, kh=3, kw=3, stride=1, pad=1)  # K = 1152
    in_place = ConvGeometry(h=3, w=3, ho=3, wo=3, cin=128, kh=1, kw=1, stride=1, pad=0)
    assert fast.float_conv(x, long_k, np.zeros((long_k.k, 4), np.int8), 9) is None
    assert fast.float_conv(x, in_place, np.zeros((in_place.k, 4), np.int8), 9) is None


@pytest.mark.parametrize("geo", [ConvGeometry(h=3, w=3, ho=3, wo=3, cin=128, kh=3, kw=3, stride=1, pad=1),  # K > 1024
                                 ConvGeometry(h=4, w=3, ho=4, wo=3, cin=BEAT, kh=3, kw=3, stride=1, pad=1)])
@pytest.mark.parametrize("out8", [False, True])
def test_convolutions_on_either_path_match_csim(geo, out8):
    """A convolution longer than K_CHUNK multiplies the im2col matrix in K chunks; a shorter one
    is one PyTorch convolution: both equal C-simulation on one memory image."""
    n, eb = 6, 1 if out8 else 4
    call = GemmCall(m=2 * geo.pixels, n=n, k=geo.k, lda=geo.cin, ldb=_ceil_to(geo.k, BEAT),
                    ldc=_ceil_to(n * eb, BEAT) // eb, tile_m=1, tile_n=1, tile_k=1, trans_b=True, out_int8=out8,
                    mult=5, shift=12, conv=geo)
    both_engines(plan(ZCU, call).call, seed=geo.k)


PRECISION_SETTINGS = {  # attribute path -> a reduced-precision value
    "matmul medium": None,  # torch.set_float32_matmul_precision("medium")
    "conv bf16": ("mkldnn", "conv"), "matmul bf16": ("mkldnn", "matmul"), "mkldnn bf16": ("mkldnn", None),
    "generic bf16": (None, None), "oneDNN off": None,
}


def _settings() -> list:
    """Every fp32_precision setting and oneDNN's switch, to restore exactly."""
    b = fast.torch.backends
    return [b.mkldnn.matmul.fp32_precision, b.mkldnn.conv.fp32_precision, b.mkldnn.fp32_precision,
            b.cuda.matmul.fp32_precision, b.fp32_precision, b.mkldnn.enabled]


def _restore(values: list) -> None:
    b = fast.torch.backends
    b.mkldnn.matmul.fp32_precision, b.mkldnn.conv.fp32_precision, b.mkldnn.fp32_precision = values[:3]
    b.cuda.matmul.fp32_precision, b.fp32_precision, b.mkldnn.enabled = values[3:]


@pytest.fixture
def reduced_precision(request):
    """One of PyTorch's settings that allow reduced-precision float32 math, restored afterwards."""
    torch, backends = fast.torch, fast.torch.backends
    before = _settings()
    name = request.param
    if name == "matmul medium":
        torch.set_float32_matmul_precision("medium")
    elif name == "oneDNN off":
        backends.mkldnn.enabled = False
    else:
        backend, op = PRECISION_SETTINGS[name]
        target = backends if backend is None else getattr(backends, backend)
        setattr(target if op is None else getattr(target, op), "fp32_precision", "bf16")
    yield name
    _restore(before)
    assert _settings() == before


MATMUL_REDUCED = {"matmul medium", "matmul bf16", "mkldnn bf16", "generic bf16"}


@pytest.mark.parametrize("reduced_precision", list(PRECISION_SETTINGS), indirect=True)
def test_reduced_precision_settings_take_the_float64_paths(reduced_precision):
    """A user's setting that lets PyTorch compute float32 products in bf16/TF32, at any level of
    the fp32_precision settings (or picks convolutions that may transform: oneDNN off), turns
    the affected float32 paths off; the engine still equals C-simulation (float64 products, or
    im2col + GEMM)."""
    assert fast.exact_float32() == (reduced_precision not in MATMUL_REDUCED)
    assert not fast.exact_float32(conv=True)
    geo = ConvGeometry(h=4, w=3, ho=4, wo=3, cin=BEAT, kh=3, kw=3, stride=1, pad=1)
    x = np.ones((1, 4, 3, BEAT), np.int8)
    assert fast.float_conv(x, geo, np.ones((geo.k, 2), np.int8), 12) is None
    a = np.ones((3, 4), np.int8)
    assert (fast.float_product(a, a.T) is None) == (reduced_precision in MATMUL_REDUCED)
    exact = fast.exact_matmul(a, a.T)  # float64 products give int64 (this CPU has no bf16 math to catch)
    assert exact.dtype == (np.int64 if reduced_precision in MATMUL_REDUCED else np.int32)
    assert np.array_equal(exact, np.full((3, 3), 4))
    test_convolutions_on_either_path_match_csim(geo, True)
    m, k, n = 7, 40, 3
    call = GemmCall(m, n, k, _ceil_to(k, BEAT), _ceil_to(n, BEAT), _ceil_to(n * 4, BEAT) // 4, 1, 1, 1)
    both_engines(plan(ZCU, call).call, seed=3)


@pytest.mark.parametrize("reduced_precision", list(PRECISION_SETTINGS), indirect=True)
def test_the_public_attributes_read_the_same_settings(reduced_precision, monkeypatch):
    """Without PyTorch's C getter the settings are read through torch.backends' attributes:
    the same verdicts."""
    want = (fast.exact_float32(), fast.exact_float32(conv=True))
    monkeypatch.setattr(fast, "PRECISION", fast.public_precision)
    assert (fast.exact_float32(), fast.exact_float32(conv=True)) == want


def test_a_pytorch_without_the_settings_is_asked_the_matmul_precision(monkeypatch):
    torch = fast.torch
    before = _settings()
    monkeypatch.setattr(fast, "SETTINGS", False)
    monkeypatch.setattr(fast, "PRECISION", lambda backend, op: "none")  # nothing to read
    try:
        torch.set_float32_matmul_precision("highest")
        assert fast.exact_float32()
        torch.set_float32_matmul_precision("medium")
        assert not fast.exact_float32()
        torch.set_float32_matmul_precision("highest")
        torch.backends.cuda.matmul.fp32_precision = "tf32"  # mixed with the new API: the getter raises
        with pytest.raises(RuntimeError):
            torch.get_float32_matmul_precision()
        assert not fast.exact_float32()
    finally:
        _restore(before)


def test_a_build_whose_convolution_is_not_exact_falls_back_to_im2col(monkeypatch):
    """The once-per-process probe: a convolution that does not give the exact sums turns the
    convolution path off, with a warning, and the engine still equals C-simulation."""
    exact = fast._conv2d
    monkeypatch.setattr(fast, "_conv2d", lambda *args: exact(*args) + 0.5)
    fast.conv_exact_here.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="does not give exact integer sums"):
            assert not fast.conv_exact_here()
        geo = ConvGeometry(h=4, w=3, ho=4, wo=3, cin=BEAT, kh=3, kw=3, stride=1, pad=1)
        assert not fast.exact_float32(conv=True) and fast.exact_float32()
        assert fast.float_conv(np.ones((1, 4, 3, BEAT), np.int8), geo, np.ones((geo.k, 2), np.int8), 12) is None
        test_convolutions_on_either_path_match_csim(geo, True)
    finally:
        monkeypatch.setattr(fast, "_conv2d", exact)
        fast.conv_exact_here.cache_clear()
    assert fast.conv_exact_here()


def test_default_settings_keep_the_float32_paths(monkeypatch):
    assert fast.exact_float32() and fast.exact_float32(conv=True)
    for name in ("ONEDNN_DEFAULT_FPMATH_MODE", "DNNL_DEFAULT_FPMATH_MODE"):  # oneDNN's default for every primitive
        for value, strict in (("STRICT", True), ("BF16", False)):
            monkeypatch.setenv(name, value)
            fast.fpmath_strict.cache_clear()  # read once per process, as oneDNN does
            assert fast.exact_float32() == strict and fast.exact_float32(conv=True) == strict
        monkeypatch.delenv(name)
    fast.fpmath_strict.cache_clear()
    assert fast.exact_float32(conv=True)
