"""The fused C++ host quantizer (lora_qta.lora.quant_native) gives the bits of quantize_along's
torch code (forced with LORA_QTA_HOST_QUANT=torch) on every input it takes -- shapes with
dimensions of 1, permuted views, rows and columns of zeros, rounding ties, huge, tiny and
subnormal values, negative zero, both roundings -- refuses NaN and Inf alike, leaves the rest to
the torch code, and a short training run writes the same adapter bytes either way."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from lora_qta.errors import DivergedError, OptionError
from lora_qta.lora import quant_native
from lora_qta.lora.quant import quantize_along

SEED = 7


def both(monkeypatch, x, dims, stochastic: bool, where: str = ""):
    """(C result, torch result) of quantize_along on ``x``; the C path must have been taken."""
    gens = [torch.Generator().manual_seed(SEED) if stochastic else None for _ in range(2)]
    monkeypatch.delenv(quant_native.ENGINE_ENV, raising=False)
    assert quant_native.plan(x.float(), dims) is not None, "the C path must take this input"
    native = quantize_along(x, dims, gens[0], where)
    monkeypatch.setenv(quant_native.ENGINE_ENV, "torch")
    assert quant_native.plan(x.float(), dims) is None
    reference = quantize_along(x, dims, gens[1], where)
    if stochastic:  # the generators were drawn from alike
        assert torch.equal(gens[0].get_state(), gens[1].get_state())
    return native, reference


def assert_same(native, reference):
    (q, s), (rq, rs) = native, reference
    assert q.dtype == rq.dtype == torch.int8 and q.is_contiguous() and q.shape == rq.shape
    assert torch.equal(q, rq), f"{int((q != rq).sum())} of {q.numel()} values differ"
    assert s.dtype == rs.dtype == torch.float32 and s.shape == rs.shape
    # bit patterns: equal floats of another sign of zero or NaN payload would pass torch.equal
    assert torch.equal(s.contiguous().view(torch.int32), rs.contiguous().view(torch.int32))


def shaped_cases() -> list[tuple[str, torch.Tensor, tuple[int, ...] | None]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for shape in [(1, 1), (1, 9), (9, 1), (5, 7), (33, 130), (3, 1, 4), (1, 6, 1), (2, 3, 4, 5), (1, 1, 1, 1),
                  (4097, 3), (3, 4097), (7,), (1,)]:
        x = torch.randn(*shape, generator=g) * 10 ** torch.randint(-6, 6, (1,), generator=g).float()
        nd = len(shape)
        variants = {None, (0,), (nd - 1,), tuple(range(1, nd)), tuple(range(nd - 1))}
        if nd == 3:
            variants |= {(1,), (0, 2)}
        if nd == 4:
            variants |= {(1,), (1, 2), (2, 3), (1, 2, 3)}
        for dims in sorted((v for v in variants if v != ()), key=str):
            out.append((f"{shape} dims={dims}", x, dims))
    return out


def edge_cases() -> list[tuple[str, torch.Tensor, tuple[int, ...] | None]]:
    g = torch.Generator().manual_seed(2)
    m = torch.randn(40, 64, generator=g)
    m[3] = 0.0                                        # an all-zero row
    m[:, 5] = 0.0                                     # an all-zero column
    m[7] = -0.0                                       # negative zeros
    m[9, :32] = 1e-42                                 # subnormals beside normal values
    m[11] = torch.tensor([1e-40, -3e-39] * 32)        # a row of subnormals only
    m[:, 17] *= 1e25
    m[13] = 3e38 * torch.sign(m[13])                  # near the float32 maximum
    m[15] *= 1e-30
    s = torch.tensor([1.2345678, 0.1, 3.3, 7e-5, 1e-20, 1e20], dtype=torch.float32)[:, None]
    k = torch.arange(-127, 127, dtype=torch.float32)[None, :]
    ties = torch.cat([(k + 0.5) * s, 127 * s], dim=1)  # (k + 1/2) * s: on or one ulp beside a tie
    mant = 1 + torch.rand(2048, generator=g)
    amax = mant * torch.exp2(torch.randint(-140, 127, (2048,), generator=g).float())
    edge = torch.stack([amax, -amax, torch.nextafter(amax, torch.zeros(1)), amax / 3], dim=1)
    out = []
    for dims in ((1,), (0,), None):
        out += [(f"edges dims={dims}", m, dims), (f"ties dims={dims}", ties, dims),
                (f"at amax dims={dims}", edge, dims), (f"transposed edges dims={dims}", m.t(), dims)]
    out.append(("at amax, columns", edge.t().contiguous(), (0,)))
    return out


def layout_cases() -> list[tuple[str, torch.Tensor, tuple[int, ...] | None]]:
    """The offload's calls: NHWC views of NCHW maps per image, attention per row and per column,
    and other dense permutations."""
    g = torch.Generator().manual_seed(3)
    maps = torch.randn(6, 12, 5, 7, generator=g) * torch.logspace(-20, 20, 6).view(6, 1, 1, 1)
    att = torch.randn(8, 33, 16, generator=g)
    return [
        ("NHWC view per image", maps.permute(0, 2, 3, 1), (1, 2, 3)),
        ("NHWC view, 8 x 8 tiles", torch.randn(3, 64, 16, 16, generator=g).permute(0, 2, 3, 1), (1, 2, 3)),
        ("NCDHW as NDHWC", torch.randn(2, 24, 3, 4, 5, generator=g).permute(0, 2, 3, 4, 1), (1, 2, 3, 4)),
        ("NHWC view per tensor", maps.permute(0, 2, 3, 1), None),
        ("attention per row", att, (2,)),
        ("attention per column", att, (1,)),
        ("attention transposed per row", att.transpose(1, 2), (2,)),
        ("attention transposed per column", att.transpose(1, 2), (1,)),
        ("negative dims", att, (-1,)),
        ("a 1-sized middle dimension", torch.randn(4, 1, 9, generator=g), (2,)),
        ("a contiguous slice at an offset", torch.randn(10, 8, generator=g)[3:7], (1,)),
        ("an NHWC slice at an offset", torch.randn(4, 8, 3, 3, generator=g)[1:3].permute(0, 2, 3, 1), (1, 2, 3)),
        ("float64 input", torch.randn(9, 11, dtype=torch.float64, generator=g), (1,)),
        ("bfloat16 input", torch.randn(9, 11, generator=g).to(torch.bfloat16), (0,)),
    ]


ALL = shaped_cases() + edge_cases() + layout_cases()


@pytest.mark.parametrize("stochastic", [False, True], ids=["nearest", "stochastic"])
@pytest.mark.parametrize("name,x,dims", ALL, ids=[c[0] for c in ALL])
def test_c_path_equals_the_torch_code(monkeypatch, name, x, dims, stochastic):
    before = x.clone()
    assert_same(*both(monkeypatch, x, dims, stochastic))
    assert torch.equal(x, before)


def test_the_c_library_is_built():
    """Every comparison above would compare torch with itself if the build fell back silently."""
    assert quant_native.NATIVE.load() is not None


@pytest.mark.parametrize("name,x,dims", [
    ("empty", torch.zeros(0, 5), (1,)),
    ("0-d", torch.tensor(2.5), None),
    ("strided slice", torch.randn(30, 50)[::3, 5:45], (1,)),
    ("reduced, kept, reduced", torch.randn(4, 5, 6), (0, 2)),
    ("kept, reduced, kept, reduced", torch.randn(2, 3, 4, 5), (1, 3)),
    ("NHWC view per image and row", torch.randn(2, 3, 4, 5).permute(0, 2, 3, 1), (2, 3)),
    ("a broadcast (overlapping) view", torch.randn(5, 1).expand(5, 8), (1,)),
], ids=lambda v: v if isinstance(v, str) else "")
def test_what_the_c_path_leaves_out_runs_the_torch_code(monkeypatch, name, x, dims):
    monkeypatch.delenv(quant_native.ENGINE_ENV, raising=False)
    assert quant_native.plan(x.float(), dims) is None
    for stochastic in (False, True):
        gens = [torch.Generator().manual_seed(SEED) if stochastic else None for _ in range(2)]
        a = quantize_along(x, dims, gens[0])
        monkeypatch.setenv(quant_native.ENGINE_ENV, "torch")
        b = quantize_along(x, dims, gens[1])
        monkeypatch.delenv(quant_native.ENGINE_ENV)
        assert_same(a, b)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dims", [(1,), (0,), None], ids=str)
@pytest.mark.parametrize("stochastic", [False, True], ids=["nearest", "stochastic"])
def test_nan_and_inf_raise_the_same_error(monkeypatch, bad, dims, stochastic):
    x = torch.ones(5, 6)
    x[4, 5] = bad
    messages = []
    for eng in ("native", "torch"):
        monkeypatch.setenv(quant_native.ENGINE_ENV, eng)
        g = torch.Generator().manual_seed(SEED) if stochastic else None
        state = g.get_state() if g is not None else None
        with pytest.raises(DivergedError) as e:
            quantize_along(x, dims, g, where="conv")
        messages.append(str(e.value))
        if g is not None:  # not drawn from: the error comes before the random numbers
            assert torch.equal(g.get_state(), state)
    assert messages[0] == messages[1] and "(conv)" in messages[0] and "diverged" in messages[0]


def test_an_unknown_engine_is_refused(monkeypatch):
    monkeypatch.setenv(quant_native.ENGINE_ENV, "gpu")
    with pytest.raises(OptionError, match=quant_native.ENGINE_ENV):
        quantize_along(torch.ones(2, 2), (1,))


def test_without_a_compiler_training_quantizes_with_torch_after_one_warning(monkeypatch, tmp_path):
    monkeypatch.delenv(quant_native.ENGINE_ENV, raising=False)
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("LORA_QTA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(quant_native.NATIVE, "lib", None)
    monkeypatch.setattr(quant_native.NATIVE, "failed", None)
    x = torch.randn(6, 9, generator=torch.Generator().manual_seed(4))
    with pytest.warns(RuntimeWarning, match="no-such-compiler"):
        first = quantize_along(x, (1,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = quantize_along(x, (1,))
    assert quant_native.plan(x, (1,)) is None
    monkeypatch.setenv(quant_native.ENGINE_ENV, "torch")
    assert_same(first, quantize_along(x, (1,)))
    assert_same(second, first)


def test_a_short_training_run_writes_the_same_adapter_bytes(monkeypatch, tmp_path):
    """Two INT8 steps with every GEMM offloaded (NHWC views, attention rows and columns,
    stochastic gradients): the adapter file is byte-identical with the C path and the torch code."""
    from lora_qta.training import digits
    from lora_qta.training.config import FinetuneConfig
    from lora_qta.training.loop import finetune

    model = tmp_path / "model"
    digits.build_pipeline(0).save_pretrained(model)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        files = {}
        for eng in ("native", "torch"):
            monkeypatch.setenv(quant_native.ENGINE_ENV, eng)
            run = tmp_path / eng
            finetune(FinetuneConfig(output_dir=str(run), precision="int8", offload="all", pretrained_model=str(model),
                                    steps=2, batch_size=4, checkpoint_every=2, eval_every=2, num_examples=2,
                                    prior_per_class=1, samples=False))
            files[eng] = (run / "adapter" / "pytorch_lora_weights.safetensors").read_bytes()
    finally:
        torch.set_num_threads(threads)
    assert files["native"] == files["torch"]


def test_stochastic_sums_that_land_on_an_integer(monkeypatch):
    """floor(y + u) where the float32 sum y + u is exactly an integer (u rounds away at the ulp of
    y, 2**-17 between 64 and 128): the C floor must keep it. s = 127 / 127 = 1, so y = x."""
    g = torch.Generator().manual_seed(5)
    whole = torch.randint(-127, 127, (2048, 1024), generator=g).float()
    x = whole + torch.randint(0, 128, (2048, 1024), generator=g).float() / 128  # 7 fraction bits
    x[:, 0] = 127.0
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(SEED))
    assert int(((x + u) == (x + u).floor()).sum()) > 3  # the case occurs
    assert_same(*both(monkeypatch, x, None, True))
    assert_same(*both(monkeypatch, x, (1,), True))


def test_stochastic_sums_beyond_qmax_are_clamped(monkeypatch):
    """Rows of +-amax where x / s is a hair beyond 127 (s = amax / 127 and the quotient both
    rounded): with u close to 1, floor(x / s + u) reaches +-128 on some, and is clamped to 127."""
    g = torch.Generator().manual_seed(6)
    amax = (1 + torch.rand(1 << 22, generator=g)) * torch.exp2(torch.randint(-60, 60, (1 << 22,), generator=g).float())
    amax = amax[amax / (amax / 127) > 127][: 1 << 20]
    x = torch.stack([amax, -amax], dim=1)
    y = x / (amax / 127)[:, None]
    z = y + torch.rand(x.shape, generator=torch.Generator().manual_seed(SEED))
    assert int((z.floor() >= 128).sum()) > 0 and int((z.floor() < -127).sum()) > 0  # the case occurs
    assert_same(*both(monkeypatch, x, (1,), True))


def test_a_compiler_without_march_native_builds_a_portable_library_with_the_same_bits(monkeypatch, tmp_path):
    """The build for a compiler that refuses -march=native (baseline instruction set: other
    vector widths, rounding without SSE4.1) gives the same values too, in another cache entry."""
    native_path = quant_native.NATIVE.build()
    wrapper = tmp_path / "cxx"
    wrapper.write_text('#!/bin/sh\nfor a in "$@"; do [ "$a" = -march=native ] && exit 1; done\nexec g++ "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("CXX", str(wrapper))
    monkeypatch.setenv("LORA_QTA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(quant_native.NATIVE, "lib", None)
    monkeypatch.setattr(quant_native.NATIVE, "failed", None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert quant_native.NATIVE.load() is not None
    portable = quant_native.NATIVE.build()
    assert portable.is_relative_to(tmp_path / "cache") and portable.parent.name != native_path.parent.name
    for name, x, dims in edge_cases() + layout_cases()[:6]:
        for stochastic in (False, True):
            assert_same(*both(monkeypatch, x, dims, stochastic))
    test_stochastic_sums_that_land_on_an_integer(monkeypatch)
    test_stochastic_sums_beyond_qmax_are_clamped(monkeypatch)


@pytest.mark.parametrize("shape,rows_shape", [
    ((333, 17), (333, 1)),          # a Linear output: a scale per token
    ((2, 3, 4, 9), (2, 1, 1, 1)),   # an NHWC conv output: a scale per image
    ((2, 3, 4, 9), (2, 3, 1, 1)),   # a scale per image row: two leading dimensions kept
    ((5, 7), (1, 1)),               # one scale for every row
    ((6, 1), (6, 1)), ((1, 1), (1, 1)), ((0, 4), (0, 1)), ((3, 0), (3, 1)),
])
def test_fused_dequantization_equals_the_two_products_and_the_channel_amax(monkeypatch, shape, rows_shape):
    """The C pass of an INT8 output gives dequantize(q, rows, cols)'s bits (the products rounded
    in that order: random float scales make the other order differ) and max |q| per channel,
    -128 included; the torch engine and operands it leaves out give None."""
    from lora_qta.lora.quant import dequantize

    monkeypatch.delenv(quant_native.ENGINE_ENV, raising=False)
    g = torch.Generator().manual_seed(sum(shape))
    q = torch.randint(-128, 128, shape, generator=g, dtype=torch.int8)
    if q.numel():
        q.view(-1)[0] = -128
    rows = torch.rand(rows_shape, generator=g) * 3 + 1e-3
    cols = torch.rand(shape[-1], generator=g) * 1e-2
    y, colmax = quant_native.dequantize_rows_cols(q, rows, cols)
    ref = dequantize(q, rows, cols)
    assert y.dtype == torch.float32 and y.shape == q.shape
    assert torch.equal(y.view(torch.int32), ref.view(torch.int32))
    q2 = q.reshape(math.prod(shape[:-1]), shape[-1]).to(torch.int32)
    want = q2.abs().amax(0).numpy() if q2.shape[0] else torch.zeros(shape[-1], dtype=torch.int32).numpy()
    assert colmax.dtype == "int32" and (colmax == want).all()
    if q.numel():
        assert colmax[0] == 128
    bad = [(q.to(torch.int32), rows, cols), (q, rows.double(), cols), (q, rows, torch.ones(shape[-1] + 1))]
    if q.dim() == 2 and shape[0] > 1:  # fewer row scales than rows: never read past them
        bad.append((q, torch.ones(shape[0] - 1, 1) if shape[0] > 2 else torch.ones(1, 1, 1), cols))
    if q.dim() == 4:  # leading dimensions that do not match the output's
        bad += [(q, torch.ones(1, shape[1], 1, 1), cols), (q, torch.ones(shape[0], 1, 1), cols)]
    if shape[-1] > 1:  # a scale per column where the rows' go
        bad.append((q, torch.ones((1,) * (q.dim() - 1) + (shape[-1],)), cols))
    if q.dim() == 2 and min(shape) > 1:  # a transposed (non-contiguous) output
        bad.append((q.t(), torch.ones(1, 1), torch.ones(shape[0])))
    for args in bad:
        assert quant_native.dequantize_rows_cols(*args) is None
    monkeypatch.setenv(quant_native.ENGINE_ENV, "torch")
    assert quant_native.dequantize_rows_cols(q, rows, cols) is None


@pytest.mark.parametrize("engine", ["native", "torch"])
@pytest.mark.parametrize("stochastic", [False, True], ids=["nearest", "stochastic"])
@pytest.mark.parametrize("dims,permuted", [((0,), False), ((1,), False), ((0,), True)], ids=["col", "row", "perm"])
def test_out_receives_the_same_values_in_rows_of_a_larger_buffer(monkeypatch, engine, stochastic, dims, permuted):
    """``out=`` (the LoRA weight gradients quantize each token group into the rows of one operand):
    the values land in the given rows of a larger buffer, the rows around them untouched, the
    returned tensor IS that slice, and values and scales equal a plain call, with either engine
    and for a permuted input (written through a copy)."""
    from lora_qta.errors import InputShapeError

    if engine == "torch":
        monkeypatch.setenv(quant_native.ENGINE_ENV, "torch")
    else:
        monkeypatch.delenv(quant_native.ENGINE_ENV, raising=False)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(24, 37, generator=g) * torch.logspace(-3, 3, 37)
    if permuted:
        x = torch.randn(37, 24, generator=g).T
    gens = [torch.Generator().manual_seed(SEED) if stochastic else None for _ in range(2)]
    buf = torch.full((40, 37), 99, dtype=torch.int8)
    q, s = quantize_along(x, dims, gens[0], out=buf[10:34])
    rq, rs = quantize_along(x, dims, gens[1])
    assert q.data_ptr() == buf[10:34].data_ptr() and torch.equal(q, rq) and torch.equal(s, rs)
    assert torch.equal(buf[:10], torch.full((10, 37), 99, dtype=torch.int8)) and bool((buf[34:] == 99).all())
    for bad in (torch.zeros(24, 37, dtype=torch.int16), torch.zeros(24, 36, dtype=torch.int8),
                torch.zeros(37, 24, dtype=torch.int8).T):
        with pytest.raises(InputShapeError, match="out must be"):
            quantize_along(x, dims, out=bad)
