"""The host runtime on the real pynq package: emulated device, driver, Accelerator API, errors."""

import json

import numpy as np
import pynq
import pytest
import torch

from lora_qta.runtime import emulation
from lora_qta.runtime.accelerator import Accelerator, check_manifest, find_bitstream, fixed_point_scale
from lora_qta.runtime.driver import QtaGemmDriver
from lora_qta.runtime.emulation import EmulatedDevice
from lora_qta.errors import (BackendError, BitstreamNotFoundError, DeviceBusyError, DeviceTimeoutError,
                             DMAError, InputDTypeError, QtaError, InputLayoutError, InputShapeError, LimitError,
                             SaturationError, StaleBitstreamError, StaleRegisterMapError)
from lora_qta.hw.config import board_digest, config
from lora_qta.hw.call import GemmCall
from lora_qta.runtime.planner import plan
from lora_qta.hw.reference import reference_gemm

RNG = np.random.default_rng(7)


def i8(*shape):
    return RNG.integers(-128, 128, shape, dtype=np.int8)


@pytest.fixture(scope="module", params=["fast", "csim"])
def acc(request):
    return Accelerator("zcu104", request.param)


# ------------------------------------------------------------------------ through pynq

def test_emulated_device_is_a_pynq_device_with_pynq_buffers():
    dev = EmulatedDevice("zcu104")
    assert isinstance(dev, pynq.Device)
    buf = pynq.allocate((10, 3), dtype=np.int32, target=dev)
    assert isinstance(buf, pynq.buffer.PynqBuffer)
    assert buf.device_address % 4096 == 0 and buf.physical_address == buf.device_address
    mmio = pynq.MMIO(dev.base, config().address_range, device=dev)
    mmio.write(config().registers["m"], 77)
    assert mmio.read(config().registers["m"]) == 77
    assert mmio.read(config().registers["ctrl"]) & 0x4  # ap_idle


def test_cache_semantics_flush_and_invalidate():
    """A driver that forgets flush() computes on stale DDR contents, as on a board."""
    dev = EmulatedDevice("zcu104")
    ip = QtaGemmDriver(dev.ip_description())
    a = pynq.allocate((4, 4), dtype=np.int8, target=dev)
    b = pynq.allocate((4, 4), dtype=np.int8, target=dev)
    c = pynq.allocate((4, 4), dtype=np.int32, target=dev)
    a[:] = 1
    b[:] = 2
    call = plan(dev.board, GemmCall(4, 4, 4, 4, 4, 4, 1, 1, 1)).call
    ip.run({"a": a.device_address, "b": b.device_address, "c": c.device_address, "scales": 0}, call)
    c.invalidate()
    assert (c == 0).all(), "without flush the kernel must see the zeros in DDR"
    a.flush()
    b.flush()
    ip.run({"a": a.device_address, "b": b.device_address, "c": c.device_address, "scales": 0}, call)
    assert (c == 0).all(), "without invalidate the host must still see its stale view"
    c.invalidate()
    assert (c == 8).all()


def test_probe_lists_the_emulated_device(monkeypatch):
    monkeypatch.setenv("LORA_QTA_EMULATE", "kv260")
    monkeypatch.delattr(pynq.Device, "_devices", raising=False)
    monkeypatch.delattr(pynq.Device, "_active_device", raising=False)
    try:
        devices = pynq.Device.devices
        assert any(isinstance(d, EmulatedDevice) and d.board.name == "kv260" for d in devices)
        buf = pynq.allocate((8,), dtype=np.uint8)  # no target: the active (emulated) device
        assert buf.device_address >= emulation.DDR_BASE
    finally:
        for attr in ("_devices", "_active_device"):
            if attr in vars(pynq.Device):
                delattr(pynq.Device, attr)


# ------------------------------------------------------------------------ the API

@pytest.mark.parametrize("ta, tb", [(False, False), (True, False), (False, True), (True, True)])
def test_gemm_is_exact_in_every_layout(acc, ta, tb):
    m, k, n = 67, 45, 29
    a = i8(k, m) if ta else i8(m, k)
    b = i8(n, k) if tb else i8(k, n)
    r = acc.gemm(a, b, trans_a=ta, trans_b=tb)
    assert np.array_equal(r.output, reference_gemm(a, b, trans_a=ta, trans_b=tb)[0])
    assert 0 < r.utilization <= 1 and r.cycles > 0 and r.bytes_moved >= a.nbytes + b.nbytes


@pytest.mark.parametrize("dataflow", ["ws", "os", "partitioned"])
def test_forced_dataflow(acc, dataflow):
    a, b = i8(200, 64), i8(64, 8)
    r = acc.gemm(a, b, dataflow=dataflow)
    if dataflow == "partitioned":
        assert r.partitioned
    else:
        assert r.dataflow == dataflow
    assert np.array_equal(r.output, reference_gemm(a, b)[0])


def test_int8_epilogue_per_row_and_col(acc):
    a, b = i8(33, 50), i8(50, 21)
    for mode, cnt in (("row", 33), ("col", 21)):
        mult, shift = fixed_point_scale(RNG.uniform(1e-4, 1e-2, cnt))
        r = acc.gemm(a, b, out="int8", mult=mult, shift=shift, scale_mode=mode, rounding="stochastic", seed=3)
        ref, sat = reference_gemm(a, b, out_int8=True, scale_mode=mode,
                                  scales=np.stack([mult, shift], 1), stochastic=True, seed=3)
        assert r.output.dtype == np.int8 and np.array_equal(r.output, ref) and r.saturated == sat


def test_accumulate_and_saturation(acc):
    a, b = np.full((3, 4), -128, np.int8), np.full((4, 5), -128, np.int8)
    c = np.full((3, 5), 2**31 - 10, dtype=np.int32)
    r = acc.gemm(a, b, c=c)
    assert r.saturated and (r.output == 2**31 - 1).all()
    with pytest.raises(SaturationError, match="saturated"):
        acc.gemm(a, b, c=c, strict=True)


def test_torch_in_torch_out(acc):
    a = torch.randint(-128, 128, (40, 24), dtype=torch.int8)
    b = torch.randint(-128, 128, (16, 24), dtype=torch.int8)
    r = acc.gemm(a, b, trans_b=True)
    assert isinstance(r.output, torch.Tensor)
    assert torch.equal(r.output, (a.int() @ b.int().T).int())


def test_fixed_point_scale_is_close():
    mult, shift = fixed_point_scale(np.array([1e-6, 0.3, 1.0, 37.5]))
    approx = mult / 2.0 ** shift
    assert np.allclose(approx, [1e-6, 0.3, 1.0, 37.5], rtol=1e-8)
    with pytest.raises(LimitError):
        fixed_point_scale(0.0)


# ------------------------------------------------------------------------ bad input

def test_wrong_dtype(acc):
    with pytest.raises(InputDTypeError, match="a must be int8, got float32"):
        acc.gemm(np.zeros((4, 4), np.float32), i8(4, 4))
    with pytest.raises(InputDTypeError, match="c must be int32"):
        acc.gemm(i8(4, 4), i8(4, 4), c=np.zeros((4, 4), np.int8))
    with pytest.raises(InputDTypeError, match="numpy array or torch tensor"):
        acc.gemm([[1]], i8(1, 1))


def test_non_contiguous(acc):
    with pytest.raises(InputLayoutError, match="not C-contiguous.*trans_a"):
        acc.gemm(i8(8, 4).T, i8(8, 4))
    with pytest.raises(InputLayoutError, match="not contiguous"):
        acc.gemm(torch.zeros(8, 4, dtype=torch.int8).T, i8(8, 4))


def test_mis_shaped(acc):
    with pytest.raises(InputShapeError, match="inner dimensions differ"):
        acc.gemm(i8(5, 6), i8(7, 3))
    with pytest.raises(InputShapeError, match="must be 2-D"):
        acc.gemm(np.zeros((2, 2, 2), np.int8), i8(2, 2))
    with pytest.raises(InputShapeError, match="c must be 5x3"):
        acc.gemm(i8(5, 6), i8(6, 3), c=np.zeros((3, 5), np.int32))
    with pytest.raises(InputShapeError, match="needs 5 multipliers"):
        acc.gemm(i8(5, 6), i8(6, 3), out="int8", mult=[1, 2], shift=[3, 4], scale_mode="row")


def test_dimension_beyond_the_limits(acc):
    k = config().board("zcu104").max_k + 1
    with pytest.raises(LimitError, match=f"K = {k} is outside"):
        acc.gemm(np.zeros((1, k), np.int8), np.zeros((k, 1), np.int8))


def test_unknown_board_and_backend():
    with pytest.raises(QtaError, match="unknown board"):
        Accelerator("zedboard")
    with pytest.raises(BackendError, match="unknown backend 'gpu'"):
        Accelerator("zcu104", "gpu")
    with pytest.raises(BackendError, match="needs a PYNQ board"):
        Accelerator("zcu104", "board")


def test_missing_and_stale_bitstream(tmp_path, monkeypatch):
    board = config().board("zcu104")
    monkeypatch.setenv("LORA_QTA_BITSTREAMS", str(tmp_path))
    with pytest.raises(BitstreamNotFoundError, match="build_bitstream.sh zcu104"):
        find_bitstream(board)
    d = tmp_path / "zcu104"
    d.mkdir()
    (d / "qta_zcu104.bit").write_bytes(b"\0")
    with pytest.raises(BitstreamNotFoundError, match=r"\.hwh is missing"):
        find_bitstream(board)
    (d / "qta_zcu104.hwh").write_text("<hwh/>")
    with pytest.raises(StaleBitstreamError, match="manifest.json is missing"):
        find_bitstream(board)
    (d / "manifest.json").write_text(json.dumps({"board": "zcu104", "config_digest": "0123456789abcdef"}))
    with pytest.raises(StaleBitstreamError, match="rebuild it"):
        find_bitstream(board)
    (d / "manifest.json").write_text(json.dumps({"board": "zcu104", "config_digest": board_digest(board)}))
    assert find_bitstream(board) == d / "qta_zcu104.bit"
    assert check_manifest(board, d / "manifest.json")["board"] == "zcu104"


def test_stale_register_map():
    dev = EmulatedDevice("zcu104")
    desc = dev.ip_description()
    desc["registers"]["m"] = dict(desc["registers"]["m"], address_offset=0x44)
    with pytest.raises(StaleRegisterMapError, match="m at 0x44, expected 0x40"):
        QtaGemmDriver(desc)
    del desc["registers"]["cycles_1"]
    with pytest.raises(StaleRegisterMapError, match="cycles_1 missing"):
        QtaGemmDriver(desc)


def test_timeout_and_busy():
    dev = EmulatedDevice("zcu104", hang=True)
    ip = QtaGemmDriver(dev.ip_description())
    a = pynq.allocate((16,), np.int8, target=dev)
    c = pynq.allocate((16,), np.int32, target=dev)
    call = plan(dev.board, GemmCall(4, 4, 4, 4, 4, 4, 1, 1, 1)).call
    with pytest.raises(DeviceTimeoutError, match="did not raise ap_done within 0.2 s"):
        ip.run({"a": a.device_address, "b": a.device_address, "c": c.device_address, "scales": 0}, call, timeout=0.2)
    with pytest.raises(DeviceBusyError):
        ip.start({"a": a.device_address, "b": a.device_address, "c": c.device_address, "scales": 0}, call)
    with pytest.raises(DeviceBusyError, match="while the kernel is running"):
        dev.write_registers(dev.base, (1).to_bytes(4, "little"))


def test_dma_outside_unaligned_and_overlapping():
    dev = EmulatedDevice("zcu104")
    ip = QtaGemmDriver(dev.ip_description())
    a = pynq.allocate((64,), np.int8, target=dev)
    c = pynq.allocate((64,), np.int32, target=dev)
    small = plan(dev.board, GemmCall(4, 4, 4, 4, 4, 4, 1, 1, 1)).call
    big = plan(dev.board, GemmCall(40, 40, 40, 40, 40, 40, 1, 1, 1)).call
    with pytest.raises(DMAError, match="operand a: .* past the end"):
        ip.run({"a": a.device_address, "b": a.device_address, "c": c.device_address, "scales": 0}, big)
    with pytest.raises(DMAError, match="not inside any allocated buffer"):
        ip.run({"a": 0x1234_0000, "b": a.device_address, "c": c.device_address, "scales": 0}, small)
    with pytest.raises(DMAError, match="not aligned"):
        ip.run({"a": a.device_address + 3, "b": a.device_address, "c": c.device_address, "scales": 0}, small)
    with pytest.raises(DMAError, match="overlaps operand a"):
        ip.run({"a": a.device_address, "b": a.device_address, "c": a.device_address, "scales": 0}, small)


def test_asynchronous_device_runs_in_the_background():
    dev = EmulatedDevice("zcu104", engine="csim", asynchronous=True)
    ip = QtaGemmDriver(dev.ip_description())
    a = pynq.allocate((256, 256), np.int8, target=dev)
    c = pynq.allocate((256, 256), np.int32, target=dev)
    a[:] = 1
    a.flush()
    call = plan(dev.board, GemmCall(256, 256, 256, 256, 256, 256, 1, 1, 1)).call
    info = ip.run({"a": a.device_address, "b": a.device_address, "c": c.device_address, "scales": 0}, call)
    c.invalidate()
    assert (c == 256).all() and info.cycles == plan(dev.board, call).report.cycles
