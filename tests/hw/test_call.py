"""One kernel call's register values: the flag encoding, and its scalars are the kernel's."""

from hypothesis import given
from hypothesis import strategies as st

from lora_qta.hw.call import DATAFLOWS, SCALE_MODES, GemmCall
from lora_qta.hw.config import config


def test_the_call_carries_exactly_the_scalar_arguments_of_the_kernel():
    scalars = [a.name for a in config().args if a.kind == "scalar"]
    assert list(GemmCall(8, 8, 8, 8, 8, 8, 1, 1, 1).scalar_registers()) == scalars


@given(st.booleans(), st.booleans(), st.sampled_from(DATAFLOWS), st.integers(-8, 7), st.booleans(),
       st.booleans(), st.sampled_from(SCALE_MODES), st.booleans(), st.integers(-(2**31), 2**31 - 1),
       st.integers(0, 62), st.integers(0, 2**32 - 1))
def test_registers_decode_to_the_same_call(ta, tb, df, split, out8, acc, mode, sto, mult, shift, seed):
    call = GemmCall(m=3, n=5, k=7, lda=9, ldb=11, ldc=13, tile_m=2, tile_n=4, tile_k=6, trans_a=ta, trans_b=tb,
                    dataflow=df, split=split, out_int8=out8, accumulate=acc, scale_mode=mode, stochastic=sto,
                    mult=mult, shift=shift, seed=seed)
    regs = call.scalar_registers()
    assert all(0 <= v < 2**32 for v in regs.values())
    assert GemmCall.from_registers(regs) == call
