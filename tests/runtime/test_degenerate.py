"""Degenerate GEMMs through the public API: 1 in any of M, K and N, every transpose and every
operand layout ``Accelerator.gemm`` accepts, on the fast engine and the C-simulated kernel; and
a differential fuzz of the fast engine against the C-simulation over the whole call interface.

Issue 9, item 1: the fast engine handed ``torch._int_mm`` 1 x K views whose row stride was 1
(a transposed K x 1 operand). oneDNN's INT8 GEMM takes the leading dimension from that stride
on some CPUs and silently leaves the output unwritten (pytorch/pytorch#195066), so ``--rank 1``
training diverged on such machines. :func:`oneDNN_like_int_mm` models that behaviour so the
test fails on any machine when a non-canonical stride reaches ``_int_mm``.
"""

import itertools
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lora_qta.errors import PlanError
from lora_qta.runtime.accelerator import Accelerator, fixed_point_scale

DIMS = st.one_of(st.just(1), st.sampled_from([2, 3, 17, 33, 64]), st.integers(1, 80))
LAYOUTS = ("numpy", "numpy-odd-strides", "numpy-view", "torch", "torch-odd-strides", "torch-transposed-view")


@pytest.fixture(scope="module")
def accs():
    return {name: Accelerator("zcu104", name) for name in ("fast", "csim")}


def in_layout(arr: np.ndarray, layout: str):
    """The same INT8 values as ``arr``, laid out as ``layout`` (every one is accepted by the API)."""
    rows, cols = arr.shape
    if layout == "numpy":
        return arr.copy()
    if layout == "numpy-odd-strides":  # the stride of a size-1 dimension is free: 0 here
        base = arr.copy()
        strides = (0 if rows == 1 else cols, 0 if cols == 1 else 1)
        return np.lib.stride_tricks.as_strided(base, (rows, cols), strides)
    if layout == "numpy-view":  # rows of a larger buffer, at an offset
        big = np.zeros((rows + 3, cols), dtype=np.int8)
        big[2:2 + rows] = arr
        return big[2:2 + rows]
    t = torch.from_numpy(arr.copy())
    if layout == "torch":
        return t
    if layout == "torch-odd-strides":
        return t.as_strided((rows, cols), (1 if rows == 1 else cols, 1 if cols == 1 else 1))
    if layout == "torch-transposed-view":  # contiguous for torch when a dimension is 1
        if rows == 1 or cols == 1:
            return torch.from_numpy(arr.T.copy()).T
        return t
    raise AssertionError(layout)


def reference(a, b, ta, tb):
    return (a.T if ta else a).astype(np.int64) @ (b.T if tb else b).astype(np.int64)


def operands(rng, m, k, n, ta, tb):
    a = rng.integers(-128, 128, (k, m) if ta else (m, k), dtype=np.int8)
    b = rng.integers(-128, 128, (n, k) if tb else (k, n), dtype=np.int8)
    return a, b


def test_every_layout_is_accepted_and_keeps_its_values():
    rng = np.random.default_rng(0)
    for shape in ((1, 5), (5, 1), (1, 1), (4, 6)):
        arr = rng.integers(-128, 128, shape, dtype=np.int8)
        for layout in LAYOUTS:
            x = in_layout(arr, layout)
            as_np = x.numpy() if isinstance(x, torch.Tensor) else x
            assert np.array_equal(as_np, arr), layout
            assert (x.is_contiguous() if isinstance(x, torch.Tensor) else x.flags.c_contiguous), layout


@settings(max_examples=120)
@given(m=DIMS, k=DIMS, n=DIMS, ta=st.booleans(), tb=st.booleans(),
       la=st.sampled_from(LAYOUTS), lb=st.sampled_from(LAYOUTS), seed=st.integers(0, 2**31),
       backend=st.sampled_from(["fast", "csim"]))
def test_degenerate_shapes_in_every_layout(accs, m, k, n, ta, tb, la, lb, seed, backend):
    a, b = operands(np.random.default_rng(seed), m, k, n, ta, tb)
    r = accs[backend].gemm(in_layout(a, la), in_layout(b, lb), trans_a=ta, trans_b=tb)
    out = r.output.numpy() if isinstance(r.output, torch.Tensor) else r.output
    assert np.array_equal(out, reference(a, b, ta, tb)), (backend, m, k, n, ta, tb, la, lb)


@pytest.mark.parametrize("m, k, n, ta, tb", [
    (m, k, n, ta, tb)
    for m, k, n in [(1, 100, 16), (16, 1, 8), (1, 1, 1), (1, 2, 1), (2, 1, 1), (1, 1, 2), (1, 64, 1), (64, 1, 64)]
    for ta, tb in itertools.product((False, True), repeat=2)])
def test_fast_engine_hands_int_mm_canonical_strides(monkeypatch, m, k, n, ta, tb):
    """The two repros of the issue (``lora-qta gemm 1 100 16 --trans-a``, ``gemm 16 1 8 --trans-b``)
    and their neighbours, with an ``_int_mm`` that behaves like oneDNN on the affected CPUs."""
    real = torch._int_mm

    def oneDNN_like_int_mm(x, y):
        for t in (x, y):
            if t.stride(1) != 1 or t.stride(0) < t.shape[1]:  # lda < K: the call is silently rejected
                return torch.full((x.shape[0], y.shape[1]), -12345, dtype=torch.int32)
        return real(x, y)

    monkeypatch.setattr(torch, "_int_mm", oneDNN_like_int_mm)
    for mod in list(sys.modules.values()):  # engines that bound the function at import
        if getattr(mod, "__name__", "").startswith("lora_qta") and getattr(mod, "_int_mm", None) is real:
            monkeypatch.setattr(mod, "_int_mm", oneDNN_like_int_mm)
    a, b = operands(np.random.default_rng(m * 1000 + k * 10 + n), m, k, n, ta, tb)
    for x, y in ((a, b), (torch.from_numpy(a), torch.from_numpy(b))):
        r = Accelerator("zcu104", "fast").gemm(x, y, trans_a=ta, trans_b=tb)
        out = r.output.numpy() if isinstance(r.output, torch.Tensor) else r.output
        assert np.array_equal(out, reference(a, b, ta, tb))


@st.composite
def api_calls(draw):
    """One random call of the whole ``Accelerator.gemm`` interface, degenerate sizes included."""
    m, k, n = draw(DIMS), draw(DIMS), draw(DIMS)
    ta, tb = draw(st.booleans()), draw(st.booleans())
    kw = dict(trans_a=ta, trans_b=tb, dataflow=draw(st.sampled_from(["auto", "ws", "os", "partitioned"])))
    out8 = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    if out8:
        mode = draw(st.sampled_from(["tensor", "row", "col"]))
        kw.update(out="int8", scale_mode=mode, rounding=draw(st.sampled_from(["nearest_even", "stochastic"])),
                  seed=draw(st.integers(0, 2**32 - 1)))
        cnt = {"tensor": 1, "row": m, "col": n}[mode]
        mult, shift = fixed_point_scale(rng.uniform(1e-5, 2.0, cnt) / np.sqrt(k))
        kw.update(mult=int(mult[0]), shift=int(shift[0])) if mode == "tensor" else kw.update(mult=mult, shift=shift)
    if draw(st.booleans()):
        kw["c"] = (rng.integers(-128, 128, (m, n)).astype(np.int8) if out8
                   else rng.choice(np.array([2**31 - 1, -(2**31), 0, 777]), (m, n)).astype(np.int32))
    a, b = operands(rng, m, k, n, ta, tb)
    return a, b, kw


@settings(max_examples=150)
@given(api_calls())
def test_fast_engine_equals_csim_on_random_calls(accs, case):
    """Differential fuzz: outputs, saturation, dataflow, tiles and cycles agree exactly."""
    a, b, kw = case
    results = []
    for name in ("fast", "csim"):
        try:
            results.append(accs[name].gemm(a, b, **kw))
        except PlanError as e:  # a forced mode may not exist for the shape: both must say so
            results.append(str(e))
    f, c = results
    if isinstance(f, str) or isinstance(c, str):
        assert f == c
        return
    assert np.array_equal(f.output, c.output) and f.output.dtype == c.output.dtype
    assert (f.saturated, f.cycles, f.dataflow, f.split, f.tiles) == (c.saturated, c.cycles, c.dataflow, c.split,
                                                                     c.tiles)
