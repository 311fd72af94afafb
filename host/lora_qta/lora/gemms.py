"""The six GEMMs of a LoRA layer, defined once.

For one adapted linear layer with input X (tokens x d_in), lora_A = A (rank x d_in) and
lora_B = B (d_out x rank), training runs (the scaling alpha / rank aside, see
:mod:`lora_qta.lora.layer`)::

    forward    H  = X . A^T        Y = H . B^T
    backward   dH = G . B          dB = G^T . H        dA = dH^T . X        dX = dH . A

:data:`LORA_GEMMS` describes each: its names, its (M, K, N) in terms of the layer's sizes, the
transposes that let the kernel read the operands as training keeps them (no transposes on the
host), the summed dimension K (a quantization scale must be constant along it), and whether
its output feeds another GEMM (H feeds Y; dH feeds dA and dX), so that the kernel's
requantizing epilogue may write it as INT8. :func:`layer_gemms` lists the six GEMMs of a layer,
:func:`lora_call` gives the kernel call of one, :func:`check_layer` runs them on an accelerator
against the numpy reference. Needs numpy (and pynq for the check), not torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from ..errors import OptionError, PlanError
from ..hw.call import GemmCall, ceil_to

if TYPE_CHECKING:  # the accelerator is imported where a check runs, so that the table stays light
    from ..runtime.accelerator import Accelerator, GemmResult

Dim = Literal["tokens", "d_in", "d_out", "rank"]
GemmKey = tuple[int, int, int, bool, bool, bool]
"""(m, k, n, trans_a, trans_b, out_int8): what a GEMM's plan and cycle count depend on."""
INT8_OUTPUTS = ("feeds", "all", "none")
"""Which outputs the epilogue requantizes to INT8: those that feed a GEMM, all, or none."""


@dataclass(frozen=True)
class LoraGemmKind:
    """One of the six GEMMs of a LoRA layer, as training lays out its operands."""

    key: str                        # its name in run reports, e.g. "fwd_H=X.At"
    label: str                      # e.g. "H = X.A^T"
    direction: str                  # "fwd" or "bwd"
    dims: tuple[Dim, Dim, Dim]      # what M, K and N are
    trans_a: bool
    trans_b: bool
    feeds_gemm: bool                # its output is an operand of another GEMM

    @property
    def summed(self) -> Dim:
        """The dimension the GEMM sums over (K)."""
        return self.dims[1]

    @property
    def title(self) -> str:
        """Direction and label aligned at the ``=``, e.g. ``fwd  H = X.A^T``."""
        lhs, rhs = self.label.split(" = ")
        return f"{self.direction} {lhs:>2} = {rhs}"

    def shape(self, tokens: int, d_in: int, d_out: int, rank: int) -> tuple[int, int, int]:
        """(M, K, N) for a layer of these sizes."""
        size = {"tokens": tokens, "d_in": d_in, "d_out": d_out, "rank": rank}
        m, k, n = (size[d] for d in self.dims)
        return m, k, n


LORA_GEMMS = (
    LoraGemmKind("fwd_H=X.At", "H = X.A^T", "fwd", ("tokens", "d_in", "rank"), False, True, True),
    LoraGemmKind("fwd_Y=H.Bt", "Y = H.B^T", "fwd", ("tokens", "rank", "d_out"), False, True, False),
    LoraGemmKind("bwd_dH=G.B", "dH = G.B", "bwd", ("tokens", "d_out", "rank"), False, False, True),
    LoraGemmKind("bwd_dB=Gt.H", "dB = G^T.H", "bwd", ("d_out", "tokens", "rank"), True, False, False),
    LoraGemmKind("bwd_dA=dHt.X", "dA = dH^T.X", "bwd", ("rank", "tokens", "d_in"), True, False, False),
    LoraGemmKind("bwd_dX=dH.A", "dX = dH.A", "bwd", ("tokens", "rank", "d_in"), False, False, False),
)
"""The six GEMMs in the order training runs them."""


@dataclass(frozen=True)
class LoraGemm:
    """One GEMM of one LoRA layer at one rank; ``out_int8``: the epilogue writes INT8."""

    layer: str
    kind: LoraGemmKind
    m: int
    k: int
    n: int
    out_int8: bool

    @property
    def gemm(self) -> str:
        """The GEMM's label, e.g. ``H = X.A^T``."""
        return self.kind.label

    @property
    def trans_a(self) -> bool:
        return self.kind.trans_a

    @property
    def trans_b(self) -> bool:
        return self.kind.trans_b

    @property
    def macs(self) -> int:
        return self.m * self.k * self.n

    @property
    def key(self) -> GemmKey:
        """The shape and layout of the call (what its cycle count depends on)."""
        return (self.m, self.k, self.n, self.trans_a, self.trans_b, self.out_int8)


def layer_gemms(tokens: int, d_in: int, d_out: int, rank: int, int8_outputs: str = "feeds",
                layer: str = "") -> list[LoraGemm]:
    """The six GEMMs of one LoRA layer at ``rank``, in :data:`LORA_GEMMS` order.

    ``int8_outputs``: ``"feeds"`` requantizes to INT8 the outputs that feed another GEMM and
    keeps INT32 for the others (Y, dB, dA and dX leave to be dequantized by the host: the output
    added to the base path, the weight gradients, the input gradient); ``"all"``
    requantizes every output (fully quantized training); ``"none"`` keeps every output INT32.
    """
    if int8_outputs not in INT8_OUTPUTS:
        raise OptionError(f"int8_outputs must be {', '.join(INT8_OUTPUTS)}, not {int8_outputs!r}")
    return [LoraGemm(layer, kind, *kind.shape(tokens, d_in, d_out, rank),
                     int8_outputs == "all" or (int8_outputs == "feeds" and kind.feeds_gemm))
            for kind in LORA_GEMMS]


def lora_call(key: GemmKey) -> GemmCall:
    """The kernel call of a GEMM ``key`` with its operands stored densely as training keeps them
    (tiles left to the planner; INT8 outputs with the right shift 16)."""
    m, k, n, ta, tb, o8 = key
    eb = 1 if o8 else 4
    return GemmCall(m=m, n=n, k=k, lda=pad_ld(m if ta else k), ldb=pad_ld(k if tb else n), ldc=pad_ld(n * eb) // eb,
                    tile_m=1, tile_n=1, tile_k=1, trans_a=ta, trans_b=tb, out_int8=o8, shift=16 if o8 else 0)


LD_ALIGN = 16
"""Bytes every leading dimension is padded to in memory: the widest AXI beat of hardware.toml
(kernel v2 reads and writes whole beats; a multiple of every board's beat)."""


def pad_ld(nbytes: int) -> int:
    """A dense row of ``nbytes`` padded to whole beats (:data:`LD_ALIGN`)."""
    return ceil_to(nbytes, LD_ALIGN)


@dataclass(frozen=True)
class LayerCheck:
    """One GEMM of :func:`check_layer` under one forced dataflow: the result, or why the
    planner refused the forced mode."""

    gemm: LoraGemm
    dataflow: str
    result: GemmResult | None
    exact: bool | None
    refused: str = ""


def check_layer(acc: Accelerator, tokens: int, features: int, rank: int, seed: int = 0) -> list[LayerCheck]:
    """Run the six GEMMs of a LoRA layer (``features`` in and out) on ``acc`` in WS, OS and
    auto, each checked bit for bit against the numpy reference (INT32 outputs)."""
    from ..runtime.check import checked_gemm, random_operands

    rng = np.random.default_rng(seed)
    out = []
    for g in layer_gemms(tokens, features, features, rank, int8_outputs="none"):
        a, b = random_operands(rng, g.m, g.k, g.n, g.trans_a, g.trans_b)
        for df in ("ws", "os", "auto"):
            try:
                c = checked_gemm(acc, a, b, trans_a=g.trans_a, trans_b=g.trans_b, dataflow=df)
            except PlanError as e:  # a forced mode may not exist for this shape
                out.append(LayerCheck(g, df, None, None, str(e)))
                continue
            out.append(LayerCheck(g, df, c.result, c.exact))
    return out
