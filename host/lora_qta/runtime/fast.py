"""The fast emulation engine: the kernel's results computed with vectorized numpy and PyTorch.

Bit-exact with the C-simulated kernel (checked on every test run) on the same memory image:
the GEMM is an exact integer product computed by float32 GEMMs over K chunks of at most 1024
(every product of two INT8 values is at most 2**14 in magnitude, so every partial sum of a chunk,
in whatever order the BLAS adds it, is an integer of at most 2**24 and exact in float32), the
chunks summed in INT32 (the configured K <= 131071 keeps every dot product inside INT32); float64
where PyTorch is missing. With K <= 1024 the product is one float32 GEMM whose result is
written to an INT32 output as it is converted (:func:`float_product`). The operands are read from
their strided views in the emulated DDR (converted to float32 in one pass that keeps a transposed
view transposed); a convolution with K <= 1024 is one PyTorch float32 convolution over the
zero-padded map (:func:`float_conv`; no im2col matrix), a longer one multiplies the im2col matrix
built from the NHWC map with stride tricks, in float32 (one copy), and a 1x1 window that reads
every pixel once in order is a GEMM on the map itself (a strided view, no copy); a batched call
whose items write disjoint outputs runs as one batched float32 GEMM per K chunk. Where a user's
PyTorch settings allow reduced-precision float32 math (:func:`exact_float32`), the products are
float64 GEMMs instead.
PyTorch's own INT8 GEMM (``torch._int_mm``) is not used: on an AMD EPYC with AVX2 and no
AVX-512/VNNI it ran 15-65x slower than this float32 path on LoRA shapes (about 0.2 GMAC/s;
measured with torch 2.13, one thread), and oneDNN mis-reads the strides of its 1 x K views on
some CPUs (issue 9, pytorch/pytorch#195066). The epilogue is the kernel's integer arithmetic:
for INT8 outputs one C++ pass over the exact products (:mod:`.epilogue_native`: requantization,
accumulation, saturation count, amax and the strided write), with the int64 numpy code
(:func:`requantize`, :func:`_epilogue_numpy`) as its statement and fallback; accumulated INT32
outputs in numpy; INT32 outputs without accumulation are written straight from the product, their
amax from one min/max pass (``torch.aminmax``, exact on integers). Every
output row is written in whole beats, its padding with zeros, as the kernel does. The modelled
cycle count is the planner's (:func:`~lora_qta.runtime.planner.model_cycles`); the measured count
is unavailable here (0), as in C-simulation.
"""

from __future__ import annotations

import functools
import os
import warnings

import numpy as np

try:  # PyTorch's float32 GEMM (the same thread pool as the training loop)
    import torch
except ImportError:  # pragma: no cover - torch is a dependency of the package
    torch = None

K_CHUNK = 1024
"""K of one float32 GEMM: 1024 products of at most 2**14 keep every partial sum within 2**24."""

NARROW_N = 8
"""Products with at most this many columns (and more rows) run transposed (see :func:`float_product`)."""

from ..hw.call import ConvGeometry, GemmCall, ceil_to
from ..hw.config import BoardConfig, config
from ..hw.reference import AMAX_CAP, effective_shift, rounding_bits
from . import epilogue_native
from .planner import cached_model, kernel_accepts


def _view(mem: np.ndarray, offset: int, shape: tuple, strides: tuple, dtype) -> np.ndarray:
    """A strided view of the memory image ``mem`` (uint8) from byte ``offset``."""
    return np.ndarray(shape, dtype=dtype, buffer=mem, offset=offset, strides=strides)


def _float(x: np.ndarray) -> "torch.Tensor":
    """An INT8 (or already float32) matrix or batch, views allowed, as a float32 tensor: one
    conversion pass that keeps the view's layout (numpy's ``astype`` in memory order: a
    transposed operand reaches the BLAS as a transposed one; no copy for float32). numpy's pass
    ran 1.3-2x faster than ``Tensor.to`` on these operands (measured here, one thread)."""
    return torch.from_numpy(x if x.dtype == np.float32 else x.astype(np.float32))


FPMATH_ENV = ("ONEDNN_DEFAULT_FPMATH_MODE", "DNNL_DEFAULT_FPMATH_MODE")
"""Environment variables that set oneDNN's default floating-point math mode (``strict``, or a
reduced precision such as ``bf16`` for every float32 primitive)."""


@functools.cache
def fpmath_strict() -> bool:
    """Whether :data:`FPMATH_ENV` leaves oneDNN's float32 math strict (read once, as oneDNN
    reads it once)."""
    return all(os.environ.get(name, "strict").lower() in ("strict", "") for name in FPMATH_ENV)


def public_precision(backend: str, op: str) -> str:
    """``torch.backends.<backend>.<op>.fp32_precision`` through the public attributes
    (``generic`` is ``torch.backends`` itself, ``all`` the backend's own setting); ``none``
    where PyTorch has no such setting."""
    target = torch.backends if backend == "generic" else getattr(torch.backends, backend, None)
    if op != "all":
        target = getattr(target, op, None)
    return str(getattr(target, "fp32_precision", "none"))


PRECISION = getattr(torch._C, "_get_fp32_precision_getter", None) or public_precision if torch is not None else None
"""How :func:`exact_float32` reads a ``fp32_precision`` setting: the C getter behind the
attributes (PyTorch >= 2.9; an attribute read costs several us), else :func:`public_precision`."""


SETTINGS = torch is not None and hasattr(torch.backends, "fp32_precision")
"""Whether this PyTorch has the ``fp32_precision`` settings (2.9 and later)."""


def exact_float32(conv: bool = False) -> bool:
    """Whether PyTorch's float32 GEMMs (and, with ``conv``, its convolutions) compute in IEEE
    float32 here, as the exactness arguments below need: no reduced-precision inner products
    (bf16, TF32) allowed by ``torch.set_float32_matmul_precision`` or the ``fp32_precision``
    settings of ``torch.backends`` (a user's setting for their own model; with it these
    products are not exact, and the engine takes its float64 path), and, for a convolution,
    oneDNN enabled and :func:`conv_exact_here` (see :func:`float_conv`).
    ``set_float32_matmul_precision`` writes the ``fp32_precision`` settings too, and they are
    what is read (an op's ``none`` defers to its backend's, that to the generic one, ``none``
    there means IEEE); a PyTorch without them is asked ``get_float32_matmul_precision()``.
    oneDNN's own default (:data:`FPMATH_ENV`) must be strict too."""
    if not fpmath_strict():
        return False
    if not SETTINGS:
        try:
            if torch.get_float32_matmul_precision() != "highest":
                return False
        except RuntimeError:  # settings mixed through two APIs: not provably IEEE
            return False
    parents = (PRECISION("mkldnn", "all"), PRECISION("generic", "all"))
    for op in ("matmul", "conv") if conv else ("matmul",):
        if next((p for p in (PRECISION("mkldnn", op), *parents) if p != "none"), "ieee") != "ieee":
            return False
    return not conv or bool(torch.backends.mkldnn.is_available() and torch._C._get_mkldnn_enabled()
                            and conv_exact_here())


@functools.cache
def conv_exact_here() -> bool:
    """Once per process: whether this PyTorch build's float32 convolution gives the exact
    integers on a probe where every partial sum is an integer up to 2**24 (K = 1024 of -128 and
    random INT8 values, a strided and a padded window), compared with float64 products of the
    im2col matrix. The argument of :func:`float_conv` rests on how PyTorch dispatches a
    convolution on this CPU (oneDNN's direct kernels here; ARM's ACL builds are not tested):
    a build that transforms instead fails the probe, and :func:`float_conv` is then not used
    (with one warning)."""
    rng = np.random.default_rng(0)
    full = ConvGeometry(h=4, w=4, ho=1, wo=1, cin=64, kh=4, kw=4, stride=1, pad=0)  # K = 1024: sums of 2**24
    strided = ConvGeometry(h=9, w=7, ho=5, wo=4, cin=96, kh=3, kw=3, stride=2, pad=1)
    probes = [(full, np.full((16, 4, 4, 64), -128, np.int8), np.full((full.k, 5), -128, np.int8)),
              (strided, rng.integers(-128, 128, (16, 9, 7, 96), dtype=np.int8),
               rng.integers(-128, 128, (strided.k, 5), dtype=np.int8))]
    for geo, x, w in probes:
        got = _conv2d(x, geo, w, x.shape[0] * geo.pixels)
        want = im2col(x, geo, x.shape[0] * geo.pixels, np.float64) @ w.astype(np.float64)
        if not np.array_equal(got.numpy(), want):
            warnings.warn("this PyTorch build's float32 convolution does not give exact integer sums; the fast engine "
                          "computes convolutions from an im2col matrix instead (slower, exact)", RuntimeWarning,
                          stacklevel=2)
            return False
    return True


def float_product(a: np.ndarray, b: np.ndarray) -> "torch.Tensor | None":
    """op(A) . op(B) as ONE float32 GEMM (batched for 3-D operands; a 2-D ``b`` is shared), when
    that is exact: K <= :data:`K_CHUNK`, so every partial sum, in whatever order the BLAS adds,
    is an integer of magnitude <= K * 2**14 <= 2**24, which float32 holds exactly; the result's
    elements are those exact integers. None when K is longer (or PyTorch is missing): use
    :func:`exact_matmul`. ``a`` and ``b`` are INT8 views or float32 arrays of INT8 values.

    A narrow product (n <= :data:`NARROW_N` < m: a LoRA rank, a weight gradient's columns) runs
    as (op(B)^T . op(A)^T)^T: the same exact integers, 1.5-4x faster in PyTorch's CPU GEMM for
    those shapes (measured on this machine, one thread; wider ones ran up to 1.2x slower)."""
    if torch is None or a.shape[-1] > K_CHUNK or not exact_float32():
        return None
    fa, fb = _float(a), _float(b)
    if fb.shape[-1] <= NARROW_N < fa.shape[-2]:
        return torch.matmul(fb.transpose(-1, -2), fa.transpose(-1, -2)).transpose(-1, -2).contiguous()
    return torch.matmul(fa, fb)


def exact_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """op(A) . op(B) of INT8 matrices, or of batches of them (3-D; a 2-D ``b`` is shared by every
    item), views allowed, exact, as INT32 (int64 without PyTorch): float32 GEMMs (one batched
    GEMM per K chunk) over K chunks of :data:`K_CHUNK`, whose results are exact integers (see
    :func:`float_product`), summed in INT32. ``a`` and ``b`` may also be float32 arrays holding
    INT8 values (an im2col matrix built in float32). Without PyTorch, or where its float32
    products are not :func:`exact_float32`, one float64 GEMM (every partial sum < 2**53: exact)
    gives int64."""
    k = a.shape[-1]
    if torch is None or not exact_float32():
        return np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(np.int64)
    out = None
    for k0 in range(0, k, K_CHUNK):
        part = torch.matmul(_float(a[..., k0:k0 + K_CHUNK]), _float(b[..., k0:k0 + K_CHUNK, :]))
        part = part.numpy().astype(np.int32)
        if out is None:
            out = part
        else:
            out += part
    return out


def window_map(x: np.ndarray, geo: ConvGeometry, dtype=np.int8) -> np.ndarray:
    """The map the window slides over: images x hp x wp x cin zeros (``hp = (ho-1)*stride + kh``,
    likewise ``wp``) with input pixel (y, x) of the NHWC map ``x`` at (pad + dil*y, pad + dil*x)
    (pixels that land past the map are not read, as in the kernel), as ``dtype``."""
    imgs = x.shape[0]
    hp, wp = (geo.ho - 1) * geo.stride + geo.kh, (geo.wo - 1) * geo.stride + geo.kw
    padded = np.zeros((imgs, hp, wp, geo.cin), dtype=dtype)
    nh = min(geo.h, max(0, -(-(hp - geo.pad) // geo.dil)))  # input rows/columns inside the map
    nw = min(geo.w, max(0, -(-(wp - geo.pad) // geo.dil)))
    if nh and nw:  # the pixels are an arithmetic progression: one strided slice, no fancy index
        padded[:, geo.pad:geo.pad + geo.dil * (nh - 1) + 1:geo.dil,
               geo.pad:geo.pad + geo.dil * (nw - 1) + 1:geo.dil, :] = x[:, :nh, :nw, :geo.cin]
    return padded


def reads_in_place(geo: ConvGeometry) -> bool:
    """Whether the window is 1x1 and reads every pixel once in order (stride 1, no padding or
    dilation): op(A) is then the map itself."""
    return (geo.kh, geo.kw, geo.stride, geo.pad, geo.dil) == (1, 1, 1, 0, 1) and (geo.ho, geo.wo) == (geo.h, geo.w)


def im2col(x: np.ndarray, geo: ConvGeometry, m: int, dtype=np.int8) -> np.ndarray:
    """The first ``m`` rows of the im2col matrix of the NHWC map ``x`` (images x h x w x bytes
    per pixel; the first ``cin`` channels are used), as ``dtype`` (float32: the GEMM's operand
    directly, no second conversion pass; INT8 values are exact in it): every window of the
    :func:`window_map` as a strided view, copied once. A map that the window
    :func:`reads_in_place` is returned as a strided view of ``x``, no copy."""
    imgs = x.shape[0]
    if reads_in_place(geo):
        return x.reshape(imgs * geo.pixels, x.shape[3])[:m, :geo.cin]
    padded = window_map(x, geo, dtype)
    s = padded.strides
    win = np.lib.stride_tricks.as_strided(padded, (imgs, geo.ho, geo.wo, geo.kh, geo.kw, geo.cin),
                                          (s[0], geo.stride * s[1], geo.stride * s[2], s[1], s[2], s[3]))
    return win.reshape(imgs * geo.pixels, geo.k)[:m]


def float_conv(x: np.ndarray, geo: ConvGeometry, wmat: np.ndarray, m: int) -> "torch.Tensor | None":
    """The first ``m`` rows of op(A) . op(B) of a convolution call as ONE PyTorch float32
    convolution, when that is exact: op(A) the im2col matrix of the NHWC INT8 map ``x`` (not
    built: the convolution slides its window over the :func:`window_map` in float32),
    ``wmat`` = op(B), K x n in (ky, kx, ci) order, a view. Every output is a sum of K <=
    :data:`K_CHUNK` products of INT8 values, exact in float32 in any order of summation (see
    :func:`float_product`); PyTorch's CPU convolutions sum products directly (oneDNN's direct or
    GEMM-based kernels, XNNPACK, or im2col + GEMM): the transforms that would not be exact
    (Winograd, FFT: NNPACK, and PyTorch's depthwise 3x3 for groups > 1) are chosen only where
    oneDNN is disabled (this returns None then) or for grouped convolutions (these are not);
    the probe :func:`conv_exact_here` checks the build once.
    None also for a longer K, a map the window :func:`reads_in_place` (that is one GEMM on the map
    itself), or when :func:`exact_float32` is false: use :func:`im2col` and the GEMM paths.
    On the digits model's 3x3 convolutions alone: 1.3-2.2x faster than im2col + GEMM on 16 x 16
    maps, 0.9-1.1x on 8 x 8 ones (measured here, hot caches, one thread)."""
    if torch is None or geo.k > K_CHUNK or reads_in_place(geo) or not exact_float32(conv=True):
        return None
    return _conv2d(x, geo, wmat, m)


def _conv2d(x: np.ndarray, geo: ConvGeometry, wmat: np.ndarray, m: int) -> "torch.Tensor":
    """The PyTorch float32 convolution of :func:`float_conv`, unconditionally."""
    n = wmat.shape[1]
    xt = torch.from_numpy(window_map(x, geo, np.float32)).permute(0, 3, 1, 2)  # channels-last NCHW
    wt = _float(wmat).T.reshape(n, geo.kh, geo.kw, geo.cin).permute(0, 3, 1, 2)  # n x cin x kh x kw
    y = torch.nn.functional.conv2d(xt, wt, stride=geo.stride)  # valid: the map holds the padding
    return y.permute(0, 2, 3, 1).reshape(-1, n)[:m].contiguous()


def requantize(acc: np.ndarray, mult, shift, stochastic: bool, bits: np.ndarray | None) -> np.ndarray:
    """round((acc * mult) / 2**shift) as the kernel does it, vectorized on int64 (``shift``
    broadcasts against ``acc``). A shift of 0 leaves the product as it is (the stochastic noise,
    32 bits >> 32, is then 0)."""
    p = acc * mult
    sh = np.asarray(shift, dtype=np.int64)
    if stochastic:
        b = bits.astype(np.int64)
        noise = np.where(sh <= 32, b >> np.clip(32 - sh, 0, 32), b << np.clip(sh - 32, 0, 62))
        return (p + noise) >> sh
    # half-to-even as one shifted sum: floor((p + 2^(sh-1) - 1 + (floor(p / 2^sh) & 1)) / 2^sh)
    # (a remainder above the half carries, the half itself only onto an odd quotient); the
    # addend is 0 for a zero shift; |p| < 2^62 keeps the sum inside int64
    odd = (p >> sh) & 1
    addend = np.where(sh > 0, (np.int64(1) << np.maximum(sh - 1, 0)) - 1, 0)
    return (p + addend + np.where(sh > 0, odd, 0)) >> sh


def scales(call: GemmCall, mem: np.ndarray, offs: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """The (multiplier, effective shift) int64 arrays of an INT8-output call: one pair per
    tensor (the call's own), else the m (row) or n (column) pairs it reads from ``mem``."""
    if call.scale_mode == "tensor":  # the multiplier as its 32-bit register holds it (signed)
        mult = ((call.mult + 2**31) & 0xFFFFFFFF) - 2**31
        return np.array([mult], dtype=np.int64), np.array([call.shift], dtype=np.int64)
    pairs = _view(mem, offs["scales"], (call.scale_count, 2), (8, 4), np.int32).astype(np.int64)
    return pairs[:, 0].copy(), effective_shift(pairs[:, 1])


def _epilogue_numpy(call: GemmCall, acc: np.ndarray, item: int | None, cview: np.ndarray,
                    mult: np.ndarray | None, shift: np.ndarray | None) -> tuple[int, int]:
    """The epilogue of an INT8 output (``mult``, ``shift`` from :func:`scales`) or an
    accumulated INT32 one (None) on int64 numpy arrays: writes ``cview`` (items x m x n) from
    the exact products ``acc``; returns (saturated outputs, amax). The statement of the
    semantics :mod:`.epilogue_native` computes in one C++ pass for INT8 outputs."""
    items, m, n = acc.shape
    if not call.out_int8:
        total = acc + cview.astype(np.int64)
        lo, hi = -(2**31), 2**31 - 1
    else:
        shape = {"tensor": (1, 1), "row": (-1, 1), "col": (1, -1)}[call.scale_mode]
        bits = None
        if call.stochastic:  # bits at the output's global index (item * m + row) * n + col
            first = item or 0
            rows = (np.arange(first, first + items)[:, None, None] * m + np.arange(m)[None, :, None])
            bits = rounding_bits(call.seed, rows, np.arange(n)[None, None, :], n)
        total = requantize(acc, mult.reshape(shape), shift.reshape(shape), call.stochastic, bits)
        if call.accumulate:
            total = total + cview.astype(np.int64)
        lo, hi = -128, 127
    tmax, tmin = int(total.max()), int(total.min())
    amax = min(max(tmax, -tmin), AMAX_CAP)
    nsat = 0
    if tmax > hi or tmin < lo:  # only then a pass to count and clip
        nsat = int(np.count_nonzero(total > hi)) + int(np.count_nonzero(total < lo))
        total = np.clip(total, lo, hi)
    cview[...] = total
    return nsat, amax


def _op_b(call: GemmCall, mem: np.ndarray, bo: int) -> np.ndarray:
    """op(B) (k x n) as a view of the memory image from byte ``bo``."""
    if call.trans_b:
        return _view(mem, bo, (call.n, call.k), (call.ldb, 1), np.int8).T
    return _view(mem, bo, (call.k, call.n), (call.ldb, 1), np.int8)


def conv_operands(call: GemmCall, mem: np.ndarray, offs: dict[str, int], item: int) -> tuple[np.ndarray, np.ndarray]:
    """The NHWC map a convolution call reads (images x h x w x lda bytes; its op(A) is the im2col
    matrix of the first ``cin`` channels) and op(B), of batch item ``item``, as views."""
    g = call.conv
    ao = offs["a"] + item * call.stride_a
    x = _view(mem, ao, (g.images(call.m), g.h, g.w, call.lda), (g.h * g.w * call.lda, g.w * call.lda, call.lda, 1),
              np.int8)
    return x, _op_b(call, mem, offs["b"] + item * call.stride_b)


def operands(call: GemmCall, mem: np.ndarray, offs: dict[str, int], item: int) -> tuple[np.ndarray, np.ndarray]:
    """op(A), op(B) of batch item ``item`` of a GEMM (not a convolution: :func:`conv_operands`)
    as views of the memory image; ``offs`` are the operands' byte offsets in ``mem``."""
    ao = offs["a"] + item * call.stride_a
    if call.trans_a:
        opa = _view(mem, ao, (call.k, call.m), (call.lda, 1), np.int8).T
    else:
        opa = _view(mem, ao, (call.m, call.k), (call.lda, 1), np.int8)
    return opa, _op_b(call, mem, offs["b"] + item * call.stride_b)


def batch_operands(call: GemmCall, mem: np.ndarray, offs: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """op(A) and op(B) of every item of a batched GEMM (not a convolution) as strided views of the
    memory image, batch x m x k and batch x k x n (k x n when the items share B: stride_b 0)."""
    m, n, k, nb = call.m, call.n, call.k, call.batch
    if call.trans_a:
        opa = _view(mem, offs["a"], (nb, k, m), (call.stride_a, call.lda, 1), np.int8).transpose(0, 2, 1)
    else:
        opa = _view(mem, offs["a"], (nb, m, k), (call.stride_a, call.lda, 1), np.int8)
    if call.stride_b == 0:
        return opa, _op_b(call, mem, offs["b"])
    if call.trans_b:
        opb = _view(mem, offs["b"], (nb, n, k), (call.stride_b, call.ldb, 1), np.int8).transpose(0, 2, 1)
    else:
        opb = _view(mem, offs["b"], (nb, k, n), (call.stride_b, call.ldb, 1), np.int8)
    return opa, opb


def _items_apart(call: GemmCall) -> bool:
    """Whether the items of a batched call write disjoint outputs (then one pass over the whole
    batch equals the kernel's item-by-item order)."""
    return call.batch == 1 or call.stride_c >= call.m * call.ldc * call.out_bytes


def run(board: BoardConfig, call: GemmCall, mem: np.ndarray, offs: dict[str, int]) -> dict[str, int]:
    """Execute ``call`` on the memory image ``mem`` (uint8, the emulated DDR) with the operands
    at byte offsets ``offs``; returns the kernel's output registers by name.

    A batched GEMM whose items write disjoint outputs runs as one pass over the whole batch (one
    batched float32 GEMM per K chunk, the epilogue on the batch x m x n block); otherwise (a
    convolution, or items sharing an output) item by item, as the kernel orders them."""
    st = config().status
    if not kernel_accepts(board, call) or any(v % board.axi_bytes for v in offs.values()):
        return {"status": 1 << st["bad_args"], "sat_count": 0, "amax": 0,
                "cycles_model": config().schedule.call_overhead, "cycles_measured": 0}
    whole = call.conv is None and call.batch > 1 and _items_apart(call)
    nsat = amax = 0
    for item in ([None] if whole else range(call.batch)):
        s, a = _run_items(board, call, mem, offs, item)
        nsat, amax = nsat + s, max(amax, a)
    return {"status": (1 << st["saturated"]) if nsat else 0, "sat_count": min(nsat, 2**32 - 1),
            "amax": min(amax, AMAX_CAP), "cycles_model": cached_model(board, call.schedule_key()).cycles,
            "cycles_measured": 0}


def _run_items(board: BoardConfig, call: GemmCall, mem: np.ndarray, offs: dict[str, int],
               item: int | None) -> tuple[int, int]:
    """One batch item (``item``) or, with ``item`` None, the whole batch at once: computes and
    writes the outputs; returns (saturated outputs, amax)."""
    m, n, eb = call.m, call.n, call.out_bytes
    out_dtype = np.int8 if call.out_int8 else np.int32
    row_bytes = ceil_to(n * eb, board.axi_bytes)
    items = call.batch if item is None else 1
    co = offs["c"] + (item or 0) * call.stride_c
    prod = None
    if item is None:
        opa, opb = batch_operands(call, mem, offs)
    elif call.conv is not None:  # one exact float32 convolution where it can, else im2col
        x, opb = conv_operands(call, mem, offs, item)
        prod = float_conv(x, call.conv, opb, m)
        opa = None if prod is not None else im2col(x, call.conv, m, np.int8 if torch is None else np.float32)
    else:
        opa, opb = operands(call, mem, offs, item)
    cview = _view(mem, co, (items, m, n), (call.stride_c, call.ldc * eb, eb), out_dtype)
    if prod is None:
        prod = float_product(opa, opb)  # one exact float32 GEMM when K allows it, else None
    if not call.out_int8 and not call.accumulate:
        # an exact INT32 product: nothing to round, nothing can saturate (|acc| < 2^31)
        nsat = 0
        if prod is not None:  # exact integers in float32: converted to INT32 as they are written
            np.copyto(cview, prod.numpy().reshape(items, m, n), casting="unsafe")
            lo, hi = torch.aminmax(prod)
        else:
            acc = exact_matmul(opa, opb).reshape(items, m, n)
            cview[...] = acc
            lo, hi = acc.min(), acc.max()
        amax = max(-int(lo), int(hi))
    else:
        acc = prod.numpy() if prod is not None else exact_matmul(opa, opb)
        mult = shift = done = None
        if call.out_int8:  # one C++ pass where it is available (the same bits as the numpy code)
            mult, shift = scales(call, mem, offs)
            done = epilogue_native.epilogue_i8(acc, mult, shift, call.scale_mode, call.stochastic, call.seed,
                                               (item or 0) * m, call.accumulate, cview)
        if done is None:
            done = _epilogue_numpy(call, acc.reshape(items, m, n).astype(np.int64), item, cview, mult, shift)
        nsat, amax = done  # the amax is capped by run()
    if row_bytes > n * eb:  # the beat padding of every row is written with zeros
        _view(mem, co + n * eb, (items, m, row_bytes - n * eb), (call.stride_c, call.ldc * eb, 1), np.uint8)[...] = 0
    return nsat, amax
