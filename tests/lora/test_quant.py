"""The INT8 quantizers (``quantize_along``, behind the LoRA runtime's ``quantize`` and the whole-step
offload's ``quant_rows``) give exactly the values and scales of the plain formula
``clamp(round(x / s), -127, 127)``, ``s = max(max|x|, eps) / 127`` (or floor(x / s + u) with the
generator's uniform u), on every layout and at the edges, and refuse NaN and Inf."""

import math

import numpy as np
import pytest
import torch

from lora_qta.errors import DivergedError
from lora_qta.lora.offload import Offload
from lora_qta.lora.quant import EPS, QMAX, dequantize, quantize, quantize_along
from lora_qta.runtime.accelerator import Accelerator


def plain(x: torch.Tensor, dims, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The formula written out, pass by pass, with temporaries."""
    xf = x.float()
    if not xf.numel():  # nothing to reduce: the eps scale, one per dimension
        amax = xf.new_zeros([1] * xf.ndim)
    else:
        amax = xf.abs().amax() if dims is None else xf.abs().amax(dim=dims, keepdim=True)
    s = amax.clamp_min(EPS) / QMAX
    y = xf / s
    if generator is None:
        y = y.round()
    else:
        y = (y + torch.rand(y.shape, generator=generator, dtype=y.dtype)).floor()
    return y.clamp(-QMAX, QMAX).to(torch.int8).contiguous(), s


def cases() -> list[tuple[str, torch.Tensor, tuple[int, ...] | None]]:
    g = torch.Generator().manual_seed(3)
    scaled = torch.randn(16, 32, 8, 8, generator=g) * torch.logspace(-30, 30, 16).view(16, 1, 1, 1)
    rows = torch.randn(64, 40, generator=g)
    rows[3] = 0.0                                    # an all-zero row: the eps scale
    rows[5] = 1e-39                                  # subnormal values, below eps
    rows[7, :] = torch.tensor([2.5, -2.5] * 20)      # every value at +-amax
    halves = torch.arange(-127, 128, dtype=torch.float32)[None, :] / 2  # exact .5 ties
    # values at (k + 1/2) * s for a scale s that is not a power of two: x / s lands on or one ulp
    # beside the tie, where a quotient rounded otherwise (e.g. x * (1 / s)) rounds the other way
    s = torch.tensor([1.2345678, 0.1, 3.3, 7e-5], dtype=torch.float32)[:, None]
    k = torch.arange(-127, 127, dtype=torch.float32)[None, :]
    ties = torch.cat([(k + 0.5) * s, 127 * s], dim=1)  # the last column fixes amax = 127 s
    # rows of +-amax and its neighbours over every exponent: x / s lands a hair above 127 on some
    # (the quotient and s = amax / 127 both rounded), which must still round to 127 without a clamp
    mant = 1 + torch.rand(4096, generator=g)
    amax = mant * torch.exp2(torch.randint(-120, 120, (4096,), generator=g).float())
    edge = torch.stack([amax, -amax, torch.nextafter(amax, torch.zeros(1)), amax / 3], dim=1)
    return [
        ("rows", rows, (1,)), ("cols", rows, (0,)), ("tensor", rows, None), ("halves", halves, (1,)),
        ("ties", ties, (1,)), ("at amax, every exponent", edge, (1,)),
        ("conv NHWC view, per image", scaled.permute(0, 2, 3, 1), (1, 2, 3)),
        ("attention per row", torch.randn(12, 64, 8, generator=g), (2,)),
        ("attention per column", torch.softmax(torch.randn(12, 64, 64, generator=g), -1), (1,)),
        ("strided slice", torch.randn(30, 50, generator=g)[::3, 5:45], (1,)),
        ("empty", torch.zeros(0, 7), (1,)),
    ]


@pytest.mark.parametrize("name,x,dims", cases(), ids=[c[0] for c in cases()])
@pytest.mark.parametrize("stochastic", [False, True])
def test_values_and_scales_equal_the_plain_formula(name, x, dims, stochastic):
    g1 = torch.Generator().manual_seed(11) if stochastic else None
    g2 = torch.Generator().manual_seed(11) if stochastic else None
    q, s = quantize_along(x, dims, g1)
    rq, rs = plain(x, dims, g2)
    assert q.dtype == torch.int8 and q.is_contiguous() and q.shape == x.shape
    assert torch.equal(q, rq)
    assert s.shape == rs.shape and torch.equal(s, rs)
    if x.numel():
        assert int(q.abs().max()) <= QMAX


def test_lora_quantize_and_offload_rows_use_it():
    x = torch.randn(33, 17, generator=torch.Generator().manual_seed(0)) * 1e3
    for axis, dims in (("row", (1,)), ("col", (0,)), ("tensor", None)):
        out = quantize(x, axis)
        rq, rs = plain(x, dims)
        assert torch.equal(out.q, rq) and torch.equal(out.scale, rs)
    off = Offload(Accelerator("zcu104", "fast"))
    q, s = off.quant_rows("linear", x, (1,))
    assert torch.equal(q, plain(x, (1,))[0]) and off.stats["linear"].host_quant_elements == x.numel()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_inf_are_refused(bad):
    x = torch.ones(4, 6)
    x[2, 3] = bad
    with pytest.raises(DivergedError, match="diverged"):
        quantize_along(x, (1,))
    with pytest.raises(DivergedError, match=r"\(conv\)"):
        quantize_along(x, (0,), where="conv")
    with pytest.raises(DivergedError):
        quantize(x, "tensor")


def test_the_input_is_not_modified():
    x = torch.randn(8, 9, generator=torch.Generator().manual_seed(1))
    before = x.clone()
    quantize_along(x, (1,), torch.Generator().manual_seed(2))
    assert torch.equal(x, before)
    assert np.isfinite(x.numpy()).all()


def test_int32_outputs_dequantize_as_convert_then_scale():
    """run_int32: INT32 accumulators beyond 2**24 (rounded when converted to float32) times a
    per-row and a per-column scale equal ``acc.float() * row * col`` exactly."""
    off = Offload(Accelerator("zcu104", "fast"))
    rng = np.random.default_rng(4)
    a = rng.choice(np.array([-128, 127, 3], dtype=np.int8), (24, 2048))
    b = rng.choice(np.array([-128, 127, -5], dtype=np.int8), (2048, 40))
    a[3], b[:, 4], b[0, 4] = 127, 127, 126  # acc[3, 4] = 127 * (2048 * 127 - 1): odd, above 2**24
    row = torch.from_numpy(rng.uniform(1e-4, 3, (24, 1)).astype(np.float32))
    col = torch.from_numpy(rng.uniform(1e-4, 3, 40).astype(np.float32))
    got = off.run_int32("linear", lambda **ep: off.acc.gemm(a, b, **ep), (row, col), 24 * 2048 * 40)
    acc = torch.from_numpy(a.astype(np.int64) @ b.astype(np.int64)).to(torch.int32)
    assert int(acc[3, 4]) == 127 * (2048 * 127 - 1) and int(acc[3, 4].float()) != int(acc[3, 4])
    want = acc.float() * row * col
    assert got.dtype == torch.float32 and torch.equal(got, want)
    assert off.stats["linear"].calls == 1


def test_dequantize_equals_convert_then_scale_with_numbers_and_0d_scales():
    """The LoRA runtime's dequantization (a per-row scale, a 0-d per-tensor scale, the LoRA scaling
    as a Python number) equals ``acc.float() * row * t * s`` exactly, above 2**24 too."""
    g = torch.Generator().manual_seed(5)
    acc = torch.randint(-(2**31), 2**31 - 1, (33, 17), generator=g, dtype=torch.int64).to(torch.int32)
    row = torch.rand(33, 1, generator=g) * 3
    t = torch.tensor(0.0123, dtype=torch.float32)
    got = dequantize(acc, row, t, 0.37)
    assert got.dtype == torch.float32 and torch.equal(got, acc.float() * row * t * 0.37)
    assert torch.equal(dequantize(acc), acc.float())
    col = torch.rand(1, 17, generator=g)  # a scale that enlarges the result (33 x 1 -> 33 x 17)
    assert torch.equal(dequantize(acc[:, :1], col.double(), 0.37), acc[:, :1].float() * col * 0.37)
    accf = acc.float()  # a float32 accumulator is scaled in a copy, never in place
    before = accf.clone()
    assert torch.equal(dequantize(accf, row), before * row) and torch.equal(accf, before)


def test_balance_factors_leave_zero_and_non_finite_tokens_at_one():
    """c_t = 2^round(log2 sqrt(max|p_t| / max|q_t|)) per token; 1 where either maximum is zero or
    not finite (a zero gradient row, an Inf)."""
    from lora_qta.lora.quant import balance_factors

    g = torch.Generator().manual_seed(3)
    p, q = torch.randn(40, 8, generator=g) * 50, torch.randn(40, 64, generator=g) / 7
    p[3], q[5], p[7, 2], q[9, 1] = 0, 0, float("inf"), float("nan")
    c, key = balance_factors(p, q)
    pm, qm = p.abs().amax(1), q.abs().amax(1)
    for t in range(40):
        if t in (3, 5, 7, 9):
            assert c[t] == 1
        else:
            assert c[t] == 2.0 ** round(math.log2(math.sqrt(pm[t] / qm[t])))
    finite = torch.isfinite(pm * qm)
    assert torch.equal(key[finite], (pm * qm)[finite]) and not finite[7] and not finite[9]
