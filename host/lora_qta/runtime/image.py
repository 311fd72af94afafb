"""A memory image for one kernel call: the operands of a :class:`~lora_qta.hw.call.GemmCall` laid
out in one beat-aligned byte array, as unified addressing sees DDR (one base, byte offsets).

The engines' tests and checks run the C-simulated kernel (:meth:`run_csim`) and the fast engine
(:meth:`run_fast`) on copies of the same image and compare the images byte for byte; the views
(:meth:`a`, :meth:`b`, :meth:`c`, :meth:`scales`) feed the numpy reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..hw.call import GemmCall, ceil_to
from ..hw.config import BoardConfig, config

ALIGN = 4096


def aligned_bytes(nbytes: int) -> np.ndarray:
    """A zeroed uint8 array of ``nbytes`` whose first byte is page-aligned."""
    raw = np.zeros(nbytes + ALIGN, dtype=np.uint8)
    off = (-raw.ctypes.data) % ALIGN
    return raw[off:off + nbytes]


@dataclass
class MemoryImage:
    """The bytes of a call's operands (``mem``) and their offsets in it."""

    call: GemmCall
    mem: np.ndarray
    offsets: dict[str, int]

    @classmethod
    def build(cls, board: BoardConfig, call: GemmCall, rng: np.random.Generator | None = None,
              scales: np.ndarray | None = None, c_fill: str = "random", gap: int = 0) -> "MemoryImage":
        """Lay out A, B, C (and the scale pairs of row/column scaling) at beat-aligned offsets
        ``gap`` beats apart; A and B random INT8, C random (``c_fill="random"``) or zero,
        ``scales`` the (count x 2) INT32 pairs (random multipliers and shifts when None)."""
        rng = rng or np.random.default_rng(0)
        beat = board.axi_bytes
        ext = call.extents(beat)
        offsets, at = {}, gap * beat
        for name in ("a", "b", "c", "scales"):
            if name in ext:
                offsets[name] = at
                at = ceil_to(at + ext[name], beat) + gap * beat
        mem = aligned_bytes(max(at, beat))
        for name in ("a", "b"):
            mem[offsets[name]:offsets[name] + ext[name]] = rng.integers(0, 256, ext[name], dtype=np.uint8)
        if c_fill == "random":
            mem[offsets["c"]:offsets["c"] + ext["c"]] = rng.integers(0, 256, ext["c"], dtype=np.uint8)
        if "scales" in ext:
            cnt = call.scale_count
            if scales is None:
                scales = np.stack([rng.integers(-1000, 5000, cnt), rng.integers(8, 24, cnt)], axis=1)
            pairs = np.asarray(scales, dtype=np.int32).reshape(cnt, 2)
            mem[offsets["scales"]:offsets["scales"] + 8 * cnt] = pairs.view(np.uint8).ravel()
        return cls(call, mem, offsets)

    def copy(self) -> "MemoryImage":
        mem = aligned_bytes(self.mem.size)
        mem[:] = self.mem
        return MemoryImage(self.call, mem, dict(self.offsets))

    # -- views for the reference ---------------------------------------------------------
    def _matrix(self, offset: int, rows: int, cols: int, ld: int, dtype) -> np.ndarray:
        item = np.dtype(dtype).itemsize
        return np.ndarray((rows, cols), dtype=dtype, buffer=self.mem, offset=offset, strides=(ld * item, item))

    def a(self, item: int) -> np.ndarray:
        """Batch item ``item``'s A as stored (a convolution: its NHWC map with ``lda`` bytes per pixel)."""
        c = self.call
        off = self.offsets["a"] + item * c.stride_a
        if c.conv is not None:
            g = c.conv
            return np.ndarray((g.images(c.m), g.h, g.w, c.lda), dtype=np.int8, buffer=self.mem, offset=off)
        rows, cols = c.stored_shape_a()
        return self._matrix(off, rows, cols, c.lda, np.int8)

    def b(self, item: int) -> np.ndarray:
        rows, cols = self.call.stored_shape_b()
        return self._matrix(self.offsets["b"] + item * self.call.stride_b, rows, cols, self.call.ldb, np.int8)

    def c(self, item: int) -> np.ndarray:
        c = self.call
        return self._matrix(self.offsets["c"] + item * c.stride_c, c.m, c.n, c.ldc,
                            np.int8 if c.out_int8 else np.int32)

    def scales(self) -> np.ndarray | None:
        if "scales" not in self.offsets:
            return None
        cnt = self.call.scale_count
        return np.ndarray((cnt, 2), dtype=np.int32, buffer=self.mem, offset=self.offsets["scales"])

    # -- the engines ----------------------------------------------------------------------
    def run_csim(self, board: BoardConfig) -> dict[str, int]:
        """Run the call on this image with the C-simulated kernel; its output registers."""
        from . import csim

        base = int(self.mem.ctypes.data)
        regs = {"a": 0, "b": 0, "c": 0, "scales": 0, **self.offsets, **self.call.scalar_registers()}
        pointers = {a.name: base for a in config().args if a.kind == "pointer"}
        return csim.load(board).run(pointers, regs)

    def run_fast(self, board: BoardConfig) -> dict[str, int]:
        """Run the call on this image with the fast engine; its output registers."""
        from . import fast

        return fast.run(board, self.call, self.mem, self.offsets)
