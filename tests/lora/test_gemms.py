"""The six GEMMs of a LoRA layer, defined once: shapes, transposes and summed dimensions agree with
the layer's algebra, and only the outputs that feed another GEMM may be INT8."""

import numpy as np
import pytest

from lora_qta.errors import OptionError
from lora_qta.lora.gemms import LORA_GEMMS, layer_gemms, lora_call

TOKENS, D_IN, D_OUT, RANK = 7, 5, 6, 3


def layer_algebra(rng):
    """The operands and outputs of one LoRA layer as training keeps them, computed in float64."""
    x = rng.standard_normal((TOKENS, D_IN))    # layer input
    a = rng.standard_normal((RANK, D_IN))      # lora_A
    b = rng.standard_normal((D_OUT, RANK))     # lora_B
    g = rng.standard_normal((TOKENS, D_OUT))   # gradient of the layer output
    h = x @ a.T
    dh = g @ b
    # label -> (stored left operand, stored right operand, expected output)
    return {"H = X.A^T": (x, a, h), "Y = H.B^T": (h, b, h @ b.T), "dH = G.B": (g, b, dh),
            "dB = G^T.H": (g, h, g.T @ h), "dA = dH^T.X": (dh, x, dh.T @ x), "dX = dH.A": (dh, a, dh @ a)}


def test_each_gemm_reads_the_operands_as_training_keeps_them():
    algebra = layer_algebra(np.random.default_rng(0))
    assert [k.label for k in LORA_GEMMS] == list(algebra)
    for kind, g in zip(LORA_GEMMS, layer_gemms(TOKENS, D_IN, D_OUT, RANK)):
        left, right, expected = algebra[kind.label]
        out = (left.T if kind.trans_a else left) @ (right.T if kind.trans_b else right)
        assert np.allclose(out, expected), kind.label
        assert (g.m, g.n) == expected.shape and (g.m, g.k, g.n) == kind.shape(TOKENS, D_IN, D_OUT, RANK)
        assert (left.shape[0] if kind.trans_a else left.shape[1]) == g.k
        assert {"tokens": TOKENS, "d_in": D_IN, "d_out": D_OUT, "rank": RANK}[kind.summed] == g.k


def test_names_directions_and_the_int8_outputs():
    assert [k.key for k in LORA_GEMMS] == ["fwd_H=X.At", "fwd_Y=H.Bt", "bwd_dH=G.B", "bwd_dB=Gt.H",
                                           "bwd_dA=dHt.X", "bwd_dX=dH.A"]
    assert [k.title for k in LORA_GEMMS] == ["fwd  H = X.A^T", "fwd  Y = H.B^T", "bwd dH = G.B",
                                             "bwd dB = G^T.H", "bwd dA = dH^T.X", "bwd dX = dH.A"]
    assert [k.summed for k in LORA_GEMMS] == ["d_in", "rank", "d_out", "tokens", "tokens", "rank"]
    # H feeds Y, dH feeds dA and dX: only those two may leave the kernel as INT8
    assert [g.out_int8 for g in layer_gemms(TOKENS, D_IN, D_OUT, RANK)] == [True, False, True, False, False, False]
    assert all(g.out_int8 for g in layer_gemms(TOKENS, D_IN, D_OUT, RANK, int8_outputs="all"))
    assert not any(g.out_int8 for g in layer_gemms(TOKENS, D_IN, D_OUT, RANK, int8_outputs="none"))
    with pytest.raises(OptionError, match="int8_outputs must be feeds, all, none"):
        layer_gemms(TOKENS, D_IN, D_OUT, RANK, int8_outputs="some")


def test_the_kernel_call_of_a_gemm_has_beat_padded_leading_dimensions():
    """Kernel v2 reads and writes whole AXI beats: leading dimensions are padded to 16 bytes."""
    for g in layer_gemms(TOKENS, D_IN, D_OUT, RANK):
        call = lora_call(g.key)
        assert (call.m, call.k, call.n, call.trans_a, call.trans_b, call.out_int8) == g.key
        for ld, used in ((call.lda, call.stored_shape_a()[1]), (call.ldb, call.stored_shape_b()[1]),
                         (call.ldc * call.out_bytes, g.n * call.out_bytes)):
            assert ld % 16 == 0 and used <= ld < used + 16
