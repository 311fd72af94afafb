"""What one kernel call is: the register values of a GEMM, encoded from ``hardware.toml``.

:class:`GemmCall` holds every scalar register of the kernel (all but the buffer
addresses). The driver writes it, the emulated device reads it back from its register
file, and the planner and the engines take their decisions from it, so the flag layout
is encoded and decoded in this one place.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import config

DATAFLOWS = ("ws", "os")
SCALE_MODES = ("tensor", "row", "col")
ROUNDINGS = ("nearest_even", "stochastic")


@dataclass(frozen=True)
class GemmCall:
    """The scalar arguments of one ``qta_gemm`` call (see README, register map).

    ``dataflow`` is ``"ws"`` or ``"os"``; ``split`` the partition exponent (0: whole array);
    ``scale_mode`` is ``"tensor"``, ``"row"`` or ``"col"``; ``shift`` is the requantizer's
    right shift and ``mult`` its signed multiplier (per-tensor mode).
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
        )

    def scalar_registers(self) -> dict[str, int]:
        """Register name -> 32-bit value for every scalar argument."""
        return {
            "m": self.m, "n": self.n, "k": self.k, "lda": self.lda, "ldb": self.ldb,
            "ldc": self.ldc, "tile_m": self.tile_m, "tile_n": self.tile_n, "tile_k": self.tile_k,
            "flags": self.flags, "mult": self.mult & 0xFFFFFFFF, "shift": self.shift,
            "seed": self.seed & 0xFFFFFFFF,
        }

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
        )


    @property
    def out_bytes(self) -> int:
        """Bytes per output element (4 for INT32, 1 for INT8)."""
        return 1 if self.out_int8 else 4

    @property
    def macs(self) -> int:
        """Multiply-accumulates of the GEMM."""
        return self.m * self.n * self.k

    def stored_shape_a(self) -> tuple[int, int]:
        """Rows and used columns of A as it lies in memory."""
        return (self.k, self.m) if self.trans_a else (self.m, self.k)

    def stored_shape_b(self) -> tuple[int, int]:
        """Rows and used columns of B as it lies in memory."""
        return (self.n, self.k) if self.trans_b else (self.k, self.n)
