"""What one kernel call is: the register values of a GEMM, encoded from ``hardware.toml``.

:class:`GemmCall` holds every scalar register of the kernel v2 (all but the memory base and the
operand offsets): shapes, leading dimensions, tiles, mode flags, the epilogue's scale, the batch
and the convolution geometry (:class:`ConvGeometry`). The driver writes it, the emulated device
reads it back from its register file, and the planner, the engines and the reference take their
decisions from it, so the flag layout and the register packing are encoded and decoded in this
one place (hls/README.md, "Memory contract").
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from ..errors import OptionError
from .config import config

DATAFLOWS = ("ws", "os")
SCALE_MODES = ("tensor", "row", "col")
ROUNDINGS = ("nearest_even", "stochastic")


def ceil_to(x: int, step: int) -> int:
    """``x`` rounded up to a multiple of ``step`` (a row to whole beats, a width to the alignment)."""
    return -(-x // step) * step


@dataclass(frozen=True)
class ConvGeometry:
    """An implicit-GEMM convolution: ``op(A)`` is the im2col matrix of an NHWC INT8 map.

    Input ``h x w`` pixels of ``cin`` channels (a multiple of the beat), output ``ho x wo``
    pixels, a ``kh x kw`` window, ``stride``, ``pad`` (top/left; bottom/right follow from ``ho``,
    ``wo``) and the input dilation ``dil`` (1, or 2 for the input gradient of a stride-2
    convolution, which reads the input at the even coordinates of a map twice as large). Row r
    of op(A) is output pixel (image, ho, wo) in row-major order; column k is (ky, kx, ci).
    """

    h: int
    w: int
    ho: int
    wo: int
    cin: int
    kh: int = 3
    kw: int = 3
    stride: int = 1
    pad: int = 1
    dil: int = 1

    @property
    def k(self) -> int:
        """Inner dimension of the GEMM: kh x kw x cin."""
        return self.kh * self.kw * self.cin

    @property
    def pixels(self) -> int:
        """Output pixels per image: rows of op(A) per image."""
        return self.ho * self.wo

    def images(self, m: int) -> int:
        """Input images the m rows of op(A) read."""
        return -(-m // self.pixels)

    def registers(self) -> dict[str, int]:
        """The ``conv_*`` register values."""
        return {"conv_in": self.h | self.w << 16, "conv_out": self.ho | self.wo << 16, "conv_cin": self.cin,
                "conv_win": self.kh | self.kw << 8 | self.stride << 16 | self.pad << 24, "conv_dil": self.dil}

    @classmethod
    def from_registers(cls, regs: dict[str, int]) -> "ConvGeometry":
        win = regs["conv_win"]
        return cls(h=regs["conv_in"] & 0xFFFF, w=regs["conv_in"] >> 16, ho=regs["conv_out"] & 0xFFFF,
                   wo=regs["conv_out"] >> 16, cin=regs["conv_cin"], kh=win & 0xFF, kw=(win >> 8) & 0xFF,
                   stride=(win >> 16) & 0xFF, pad=win >> 24, dil=regs["conv_dil"])

    @staticmethod
    def output_size(size: int, k: int, stride: int, pad: int, dil: int = 1) -> int:
        """Output pixels along one side of a convolution of ``size`` input pixels (input
        dilation ``dil``), as PyTorch's Conv2d / the input gradient of a strided one computes."""
        return ((size - 1) * dil + 1 + 2 * pad - k) // stride + 1


_NO_CONV = {"conv_in": 0, "conv_out": 0, "conv_cin": 0, "conv_win": 0, "conv_dil": 1}


@dataclass(frozen=True)
class GemmCall:
    """The scalar arguments of one ``qta_gemm`` call (see README, register map).

    ``dataflow`` is ``"ws"`` or ``"os"``; ``split`` the partition exponent (0: whole array);
    ``scale_mode`` is ``"tensor"``, ``"row"`` or ``"col"``; ``shift`` is the requantizer's
    right shift and ``mult`` its signed multiplier (per-tensor mode). ``lda``, ``ldb`` are the
    stored leading dimensions in bytes (INT8 elements; for a convolution ``lda`` is the bytes per
    pixel), ``ldc`` in output elements, ``stride_*`` the bytes between batch items.
    """

    m: int
    n: int
    k: int
    lda: int
    ldb: int
    ldc: int
    tile_m: int
    tile_n: int
    tile_k: int
    trans_a: bool = False
    trans_b: bool = False
    dataflow: str = "os"
    split: int = 0
    out_int8: bool = False
    accumulate: bool = False
    scale_mode: str = "tensor"
    stochastic: bool = False
    mult: int = 1
    shift: int = 0
    seed: int = 0
    batch: int = 1
    stride_a: int = 0
    stride_b: int = 0
    stride_c: int = 0
    conv: ConvGeometry | None = None

    def __hash__(self) -> int:
        """The hash of the fields, computed once per call: calls key the planner's and the
        engines' caches, several lookups per GEMM (hashing 25 fields each time cost more than
        some of the lookups saved)."""
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash(tuple(self.__dict__[name] for name in _FIELD_ORDER))
            object.__setattr__(self, "_hash", h)
        return h

    def __getstate__(self) -> dict[str, Any]:
        """The fields without the cached hash (a string's hash differs between processes)."""
        return {name: v for name, v in self.__dict__.items() if name != "_hash"}

    @property
    def flags(self) -> int:
        """The ``flags`` register value."""
        f = config().flags
        return (
            (int(self.trans_a) << f["trans_a"])
            | (int(self.trans_b) << f["trans_b"])
            | (DATAFLOWS.index(self.dataflow) << f["dataflow"])
            | ((self.split & 0xF) << f["split_lsb"])
            | (int(self.out_int8) << f["out_int8"])
            | (int(self.accumulate) << f["accumulate"])
            | (SCALE_MODES.index(self.scale_mode) << f["scale_mode_lsb"])
            | (int(self.stochastic) << f["stochastic"])
            | (int(self.conv is not None) << f["conv"])
        )

    def scalar_registers(self) -> dict[str, int]:
        """Register name -> 32-bit value for every 32-bit scalar argument (all but the memory
        base and the operand offsets)."""
        regs = {
            "m": self.m, "n": self.n, "k": self.k, "lda": self.lda, "ldb": self.ldb,
            "ldc": self.ldc, "tile_m": self.tile_m, "tile_n": self.tile_n, "tile_k": self.tile_k,
            "flags": self.flags, "mult": self.mult & 0xFFFFFFFF, "shift": self.shift,
            "seed": self.seed & 0xFFFFFFFF, "batch": self.batch, "stride_a": self.stride_a,
            "stride_b": self.stride_b, "stride_c": self.stride_c,
        }
        regs.update(self.conv.registers() if self.conv is not None else _NO_CONV)
        return regs

    @classmethod
    def from_registers(cls, regs: dict[str, int]) -> "GemmCall":
        """Decode register values (as the kernel does) back into a call."""
        f = config().flags
        flags = regs["flags"]
        s4 = (flags >> f["split_lsb"]) & 0xF
        mode = (flags >> f["scale_mode_lsb"]) & 3
        mult = regs["mult"] & 0xFFFFFFFF
        return cls(
            m=regs["m"], n=regs["n"], k=regs["k"], lda=regs["lda"], ldb=regs["ldb"], ldc=regs["ldc"],
            tile_m=regs["tile_m"], tile_n=regs["tile_n"], tile_k=regs["tile_k"],
            trans_a=bool((flags >> f["trans_a"]) & 1), trans_b=bool((flags >> f["trans_b"]) & 1),
            dataflow=DATAFLOWS[(flags >> f["dataflow"]) & 1], split=s4 - 16 if s4 >= 8 else s4,
            out_int8=bool((flags >> f["out_int8"]) & 1), accumulate=bool((flags >> f["accumulate"]) & 1),
            scale_mode=SCALE_MODES[mode] if mode < 3 else f"invalid({mode})",
            stochastic=bool((flags >> f["stochastic"]) & 1),
            mult=mult - (1 << 32) if mult >= 1 << 31 else mult, shift=regs["shift"], seed=regs["seed"],
            batch=regs["batch"], stride_a=regs["stride_a"], stride_b=regs["stride_b"], stride_c=regs["stride_c"],
            conv=ConvGeometry.from_registers(regs) if (flags >> f["conv"]) & 1 else None,
        )

    def updated(self, **changes: Any) -> "GemmCall":
        """``dataclasses.replace(self, **changes)`` for the planner's and the engines' hot paths:
        the fields copied as they are (every one is an immutable value), so the call's
        construction is not repeated (15 us for ``replace``, about 1 us here)."""
        if not changes.keys() <= _FIELDS:
            raise OptionError(f"GemmCall has no field {sorted(changes.keys() - _FIELDS)}; its fields: "
                              f"{sorted(_FIELDS)}")
        new = object.__new__(GemmCall)
        new.__dict__.update(self.__dict__)
        new.__dict__.pop("_hash", None)  # the copy's fields differ: its hash is its own
        new.__dict__.update(changes)
        return new

    def schedule_key(self) -> "GemmCall":
        """The call with the epilogue's scale and seed left out (mult 1, shift 0, seed 0): they
        change neither the schedule nor the cycle count, so this is the key of the planner's and
        the engines' caches; the call itself when they already are."""
        if self.mult == 1 and self.shift == 0 and self.seed == 0:
            return self
        return self.updated(mult=1, shift=0, seed=0)

    def with_tiles(self, tile_m: int, tile_n: int, tile_k: int, dataflow: str, split: int) -> "GemmCall":
        return self.updated(tile_m=tile_m, tile_n=tile_n, tile_k=tile_k, dataflow=dataflow, split=split)

    @property
    def out_bytes(self) -> int:
        """Bytes per output element (4 for INT32, 1 for INT8)."""
        return 1 if self.out_int8 else 4

    @property
    def macs(self) -> int:
        """Multiply-accumulates of the call (all batch items)."""
        return self.batch * self.m * self.n * self.k

    @property
    def scaled(self) -> bool:
        """Whether the epilogue reads per-row/column (mult, shift) pairs."""
        return self.out_int8 and self.scale_mode != "tensor"

    @property
    def scale_count(self) -> int:
        """Number of (mult, shift) pairs the call reads (0 per tensor)."""
        if not self.scaled:
            return 0
        return self.m if self.scale_mode == "row" else self.n

    def stored_shape_a(self) -> tuple[int, int]:
        """Rows and used columns (bytes) of A as it lies in memory (a conv: pixels x cin)."""
        if self.conv is not None:
            return (self.conv.images(self.m) * self.conv.h * self.conv.w, self.conv.cin)
        return (self.k, self.m) if self.trans_a else (self.m, self.k)

    def stored_shape_b(self) -> tuple[int, int]:
        """Rows and used columns of B as it lies in memory."""
        return (self.n, self.k) if self.trans_b else (self.k, self.n)

    @property
    def c_items_overlap(self) -> bool:
        """Whether the batch items of an accumulating call share bytes of C (stride_c shorter than
        one item's ``((m - 1) * ldc + n)`` elements). The kernel rejects such a call: item i+1's
        fetchers could read old C before item i's writers, other processes, wrote it."""
        return (self.accumulate and self.batch > 1
                and self.stride_c < ((self.m - 1) * self.ldc + self.n) * self.out_bytes)

    def extents(self, beat: int) -> dict[str, int]:
        """Bytes each operand spans from its offset, in whole beats as the kernel reads and writes
        them (``c`` includes the beat padding of its rows), over every batch item."""
        ra, ca = self.stored_shape_a()
        rb, cb = self.stored_shape_b()
        last = self.batch - 1
        out = {
            "a": (ra - 1) * self.lda + ceil_to(ca, beat) + last * self.stride_a,
            "b": (rb - 1) * self.ldb + ceil_to(cb, beat) + last * self.stride_b,
            "c": (self.m - 1) * self.ldc * self.out_bytes + ceil_to(self.n * self.out_bytes, beat)
            + last * self.stride_c,
        }
        if self.scaled:
            out["scales"] = ceil_to(8 * self.scale_count, beat)
        return out


_FIELD_ORDER = tuple(f.name for f in fields(GemmCall))
_FIELDS = frozenset(_FIELD_ORDER)
"""The field names of :class:`GemmCall` (:meth:`GemmCall.updated` accepts only these)."""
