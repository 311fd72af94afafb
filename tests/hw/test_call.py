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


@given(st.integers(1, 64), st.integers(-(2**31), 2**31 - 1), st.integers(0, 62), st.booleans())
def test_updated_is_dataclasses_replace(k, mult, shift, conv):
    from dataclasses import replace

    import pytest

    from lora_qta.errors import OptionError
    from lora_qta.hw.call import ConvGeometry

    geo = ConvGeometry(h=4, w=4, ho=4, wo=4, cin=64, kh=3, kw=3, stride=1, pad=1, dil=1) if conv else None
    call = GemmCall(m=16, n=8, k=576 if conv else 64, lda=64, ldb=64, ldc=16, tile_m=16, tile_n=8, tile_k=64,
                    mult=3, seed=5, conv=geo)
    changes = {"k": k, "mult": mult, "shift": shift, "dataflow": "ws"}
    new, ref = call.updated(**changes), replace(call, **changes)
    assert new == ref and hash(new) == hash(ref) and repr(new) == repr(ref)
    assert call.k == (576 if conv else 64) and call.mult == 3  # the original is untouched
    assert call.schedule_key() == replace(call, mult=1, shift=0, seed=0)
    with pytest.raises(OptionError, match="no field"):
        call.updated(kk=1)


def test_the_cached_hash_follows_the_fields():
    """A call's hash is computed once and kept; a copy made by ``updated`` has its own, equal to
    a fresh call's with the same fields; pickling leaves the cached hash out (a string's hash
    differs between processes)."""
    import pickle

    call = GemmCall(m=16, n=8, k=64, lda=64, ldb=64, ldc=16, tile_m=16, tile_n=8, tile_k=64, dataflow="ws")
    h = hash(call)
    other = call.updated(k=32)
    fresh = GemmCall(m=16, n=8, k=32, lda=64, ldb=64, ldc=16, tile_m=16, tile_n=8, tile_k=64, dataflow="ws")
    assert hash(other) == hash(fresh) and other == fresh and hash(other) != h
    back = other.updated(k=64)
    assert back == call and hash(back) == h and {call: 1}[back] == 1
    copy = pickle.loads(pickle.dumps(call))
    assert "_hash" not in copy.__dict__ and copy == call and hash(copy) == h
