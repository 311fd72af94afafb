"""The host runtime on the real pynq package: emulated device, driver, Accelerator API, errors."""

import gc
import json
from dataclasses import replace

import numpy as np
import pynq
import pytest
import torch

from lora_qta.runtime import emulation
from lora_qta.runtime.accelerator import (Accelerator, check_alignment, check_manifest, find_bitstream,
                                          fixed_point_scale)
from lora_qta.runtime.driver import QtaGemmDriver
from lora_qta.runtime.emulation import EmulatedDevice
from lora_qta.errors import (BackendError, BitstreamNotFoundError, DeviceBusyError, DeviceTimeoutError,
                             DMAError, InputDTypeError, KernelArgumentError, QtaError, InputLayoutError, InputShapeError, LimitError,
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


def _offsets(dev, **bufs):
    """Byte offsets of pynq buffers from the device's memory base (unified addressing)."""
    return {name: buf.device_address - dev.memory_base for name, buf in bufs.items()}


def _square(dev, n):
    return plan(dev.board, GemmCall(n, n, n, n, n, n, 1, 1, 1)).call


def test_cache_semantics_flush_and_invalidate():
    """A driver that forgets flush() computes on stale DDR contents, as on a board."""
    dev = EmulatedDevice("zcu104")
    ip = QtaGemmDriver(dev.ip_description())
    a = pynq.allocate((16, 16), dtype=np.int8, target=dev)
    b = pynq.allocate((16, 16), dtype=np.int8, target=dev)
    c = pynq.allocate((16, 16), dtype=np.int32, target=dev)
    a[:] = 1
    b[:] = 2
    call = _square(dev, 16)
    ip.run(dev.memory_base, _offsets(dev, a=a, b=b, c=c), call)
    c.invalidate()
    assert (c == 0).all(), "without flush the kernel must see the zeros in DDR"
    a.flush()
    b.flush()
    info = ip.run(dev.memory_base, _offsets(dev, a=a, b=b, c=c), call)
    assert (c == 0).all(), "without invalidate the host must still see its stale view"
    c.invalidate()
    assert (c == 32).all()
    assert info.status == 0 and info.sat_count == 0 and info.amax == 32
    assert info.cycles_model == plan(dev.board, call).report.cycles and info.cycles_measured == 0


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


def test_non_integer_scales_are_refused(acc):
    """Issue 9, item 12: mult=1.5, shift=2.9 were truncated silently."""
    a, b = i8(5, 6), i8(6, 3)
    for kw in (dict(mult=1.5, shift=2), dict(mult=3, shift=2.9), dict(mult=True, shift=2),
               dict(mult=np.float64(2.0), shift=1)):
        with pytest.raises(InputDTypeError, match="must be an integer.*fixed_point_scale"):
            acc.gemm(a, b, out="int8", **kw)
    with pytest.raises(InputDTypeError, match="mult must be an integer"):
        acc.gemm(a, b, out="int8", mult=[1.5] * 5, shift=[3] * 5, scale_mode="row")
    mult, shift = fixed_point_scale(np.full(5, 1e-3))
    assert acc.gemm(a, b, out="int8", mult=mult, shift=shift, scale_mode="row").output.dtype == np.int8
    assert acc.gemm(a, b, out="int8", mult=np.int64(3), shift=np.int32(9)).output.dtype == np.int8


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
    m_at = config().registers["m"]
    desc["registers"]["m"] = dict(desc["registers"]["m"], address_offset=m_at + 4)
    with pytest.raises(StaleRegisterMapError, match=f"m at 0x{m_at + 4:X}, expected 0x{m_at:X}"):
        QtaGemmDriver(desc)
    cycles = next(a.hwh_name for a in config().args if a.name == "cycles_measured")
    del desc["registers"][cycles]
    with pytest.raises(StaleRegisterMapError, match=f"{cycles} missing"):
        QtaGemmDriver(desc)


def test_timeout_and_busy():
    dev = EmulatedDevice("zcu104", hang=True)
    ip = QtaGemmDriver(dev.ip_description())
    a = pynq.allocate((256,), np.int8, target=dev)
    c = pynq.allocate((256,), np.int32, target=dev)
    call = _square(dev, 16)
    offsets = _offsets(dev, a=a, b=a, c=c)
    with pytest.raises(DeviceTimeoutError, match="did not raise ap_done within 0.2 s"):
        ip.run(dev.memory_base, offsets, call, timeout=0.2)
    with pytest.raises(DeviceBusyError):
        ip.start(dev.memory_base, offsets, call)
    with pytest.raises(DeviceBusyError, match="while the kernel is running"):
        dev.write_registers(dev.base, (1).to_bytes(4, "little"))


def _start_with(ip, values: dict[str, int]):
    """Write argument registers one by one (a driver with a bug) and raise ap_start."""
    for arg in config().inputs:
        ip.write(arg.offset, int(values.get(arg.name, 0)) & 0xFFFFFFFF)
        if arg.data_bytes == 8:
            ip.write(arg.offset + 4, int(values.get(arg.name, 0)) >> 32)
    ip.write(config().registers["ctrl"], 1)


def test_dma_outside_unified_base_and_overlapping():
    dev = EmulatedDevice("zcu104")
    ip = QtaGemmDriver(dev.ip_description())
    a = pynq.allocate((256,), np.int8, target=dev)
    c = pynq.allocate((256,), np.int32, target=dev)
    small, big = _square(dev, 16), _square(dev, 48)
    base = dev.memory_base
    with pytest.raises(DMAError, match="operand a .* past the end"):
        ip.run(base, _offsets(dev, a=a, b=a, c=c), big)
    with pytest.raises(DMAError, match="not inside any allocated buffer"):
        ip.run(base, {"a": 0x1234_0000, **_offsets(dev, b=a, c=c)}, small)
    with pytest.raises(DMAError, match="overlaps operand a"):
        ip.run(base, _offsets(dev, a=c, b=a, c=c), small)
    values = {p.name: base for p in config().args if p.kind == "pointer"}
    values.update(_offsets(dev, a=a, b=a, c=c), **small.scalar_registers())
    values["rd1"] = base + 4096
    with pytest.raises(DMAError, match="must hold the same memory base"):
        _start_with(ip, values)


def test_the_kernel_rejects_misaligned_arguments_without_touching_memory():
    """Offsets and leading dimensions that are not beat multiples: status bad_args, no DMA (the
    kernel checks its arguments before any memory access); the Accelerator says what is wrong."""
    dev = EmulatedDevice("zcu104")
    ip = QtaGemmDriver(dev.ip_description())
    a = pynq.allocate((256,), np.int8, target=dev)
    c = pynq.allocate((256,), np.int32, target=dev)
    c[:] = 7
    c.flush()
    call = _square(dev, 16)
    bad = 1 << config().status["bad_args"]
    info = ip.run(dev.memory_base, {**_offsets(dev, a=a, b=a, c=c), "a": a.device_address - dev.memory_base + 3},
                  call)
    assert info.status == bad
    info = ip.run(dev.memory_base, _offsets(dev, a=a, b=a, c=c), replace(call, lda=17))
    assert info.status == bad
    c.invalidate()
    assert (c == 7).all()
    board = config().board("zcu104")
    with pytest.raises(KernelArgumentError, match="operand a at offset 0x3 is not a multiple of the 16-byte beat"):
        check_alignment(board, call, {"a": 3, "b": 0, "c": 0})
    with pytest.raises(KernelArgumentError, match="lda = 17 bytes is not a multiple of the 16-byte beat"):
        check_alignment(board, replace(call, lda=17), {"a": 0, "b": 0, "c": 0})
    with pytest.raises(KernelArgumentError, match="tile_m = 8 is neither a multiple"):
        check_alignment(board, replace(_square(dev, 48), tile_m=8), {"a": 0, "b": 0, "c": 0})
    acc = Accelerator("zcu104", "fast")
    with pytest.raises(KernelArgumentError, match="ldc \\* element size = 20 bytes"):
        acc.run_call(replace(call, ldc=5), {"a": 0, "b": 0, "c": 0})


def test_asynchronous_device_runs_in_the_background():
    dev = EmulatedDevice("zcu104", engine="csim", asynchronous=True)
    ip = QtaGemmDriver(dev.ip_description())
    a = pynq.allocate((256, 256), np.int8, target=dev)
    c = pynq.allocate((256, 256), np.int32, target=dev)
    a[:] = 1
    a.flush()
    call = _square(dev, 256)
    info = ip.run(dev.memory_base, _offsets(dev, a=a, b=a, c=c), call)
    c.invalidate()
    assert (c == 256).all() and info.cycles_model == plan(dev.board, call).report.cycles


# ------------------------------------------------------------------------ batches and convolutions

def test_batched_gemm_with_separate_and_shared_b(acc):
    a, b = i8(3, 21, 40), i8(3, 40, 17)
    r = acc.batched_gemm(a, b)
    assert r.output.shape == (3, 21, 17)
    for i in range(3):
        assert np.array_equal(r.output[i], reference_gemm(a[i], b[i])[0])
    shared = i8(17, 40)
    r = acc.batched_gemm(a, shared, trans_b=True, out="int8", mult=1 << 20, shift=28)
    for i in range(3):
        ref = reference_gemm(a[i], shared, trans_b=True, out_int8=True, mult=1 << 20, shift=28)[0]
        assert np.array_equal(r.output[i], ref)
    assert r.amax > 0 and r.cycles_model > 0
    with pytest.raises(InputShapeError, match="a holds 3 items but b 2"):
        acc.batched_gemm(a, b[:2])


@pytest.mark.parametrize("kernel, stride, padding, dilation", [(3, 1, 1, 1), (3, 2, 1, 1), (1, 1, 0, 1),
                                                                (1, 2, 0, 1), (3, 1, 1, 2)])
def test_conv2d_is_exact(acc, kernel, stride, padding, dilation):
    x, cin, cout = i8(2, 7, 6, 5), 5, 9
    x = x[..., :cin]
    w = i8(kernel * kernel * cin, cout)
    r = acc.conv2d(x, w, kernel_size=kernel, stride=stride, padding=padding, dilation=dilation)
    xt = torch.from_numpy(x.astype(np.float64)).permute(0, 3, 1, 2)
    if dilation == 2:  # input dilation: zeros between the pixels (the backward of a strided conv)
        d = torch.zeros(xt.shape[0], cin, 2 * xt.shape[2] - 1, 2 * xt.shape[3] - 1, dtype=xt.dtype)
        d[:, :, ::2, ::2] = xt
        xt = d
    wt = torch.from_numpy(w.astype(np.float64)).reshape(kernel, kernel, cin, cout).permute(3, 2, 0, 1)
    ref = torch.nn.functional.conv2d(xt, wt, stride=stride, padding=padding).permute(0, 2, 3, 1).numpy()
    out = r.output
    assert out.shape == ref.shape and np.array_equal(out, ref.astype(np.int32))
    rt = acc.conv2d(x, np.ascontiguousarray(w.T), kernel_size=kernel, stride=stride, padding=padding,
                    dilation=dilation, trans_w=True)
    assert np.array_equal(rt.output, out)


def test_conv2d_rejects_bad_geometry(acc):
    x = i8(1, 4, 4, 16)
    with pytest.raises(InputShapeError, match="w must have K = kh\\*kw\\*cin = 3\\*3\\*16 = 144 rows"):
        acc.conv2d(x, i8(100, 8), kernel_size=3)
    with pytest.raises(LimitError, match="input dilation must be 1 or 2"):
        acc.conv2d(x, i8(144, 8), kernel_size=3, dilation=3)


def test_result_reports_modelled_and_measured_cycles_and_wall_time(acc):
    r = acc.gemm(i8(64, 64), i8(64, 64))
    assert r.cycles == r.cycles_model and r.cycles_measured is None  # emulation measures nothing
    assert r.wall_s >= 0 and r.sat_count == 0 and 0 < r.amax <= 64 * 128 * 128
    info = acc.info()
    assert info["axi_ports"] == 4


def test_output_registers_read_as_one_block_equal_word_by_word_reads():
    """The driver reads the outputs as one block: the same values as reading each register (and
    the high word of a wide one) through pynq.MMIO, on the emulated device (REGISTER_RW) and on
    a memory-mapped register file as a board has (a numpy view)."""
    dev = EmulatedDevice("zcu104")
    ip = QtaGemmDriver(dev.ip_description())
    a = pynq.allocate((256,), np.int8, target=dev)
    c = pynq.allocate((256,), np.int32, target=dev)
    a[:] = np.arange(256) % 7 - 3
    a.flush()
    info = ip.run(dev.memory_base, _offsets(dev, a=a, b=a, c=c), _square(dev, 16))
    words = {arg.name: ip.read(arg.offset) | (ip.read(arg.offset + 4) << 32 if arg.wide else 0)
             for arg in config().outputs}
    assert info.outputs == words and info.cycles_model > 0 and info.amax > 0

    class MemoryMapped:  # what pynq.MMIO holds for a MEMORY_MAPPED device: a numpy view of the map
        array = np.frombuffer(bytes(dev._regs), dtype=np.uint32)

    ip.mmio = MemoryMapped()
    block = config().output_block
    assert ip.read_block(block.start, block.size) == bytes(dev._regs[block.start:block.start + block.size])


def test_a_repeated_argument_block_is_checked_again_after_its_buffer_is_freed():
    """The emulated device remembers the decoded call and DMA check of an argument block only
    while no buffer is allocated or freed: the same registers naming a freed buffer fail."""
    dev = EmulatedDevice("zcu104")
    ip = QtaGemmDriver(dev.ip_description())
    a = pynq.allocate((256,), np.int8, target=dev)
    c = pynq.allocate((256,), np.int32, target=dev)
    offsets, call = _offsets(dev, a=a, b=a, c=c), _square(dev, 16)
    ip.run(dev.memory_base, offsets, call)
    ip.run(dev.memory_base, offsets, call)  # the remembered decode
    assert dev.runs == 2 and len(dev._decoded) == 1
    a.freebuffer()  # the emulated DDR is released at once, as on a board
    with pytest.raises(DMAError, match="not inside any allocated buffer"):
        ip.run(dev.memory_base, offsets, call)
    with pytest.raises(DMAError, match="past the end"):  # a new, larger call on the same block
        ip.run(dev.memory_base, _offsets(dev, a=c, b=c, c=c) | {"a": offsets["c"], "c": offsets["c"] + 1024},
               _square(dev, 48))


def test_freebuffer_gives_the_emulated_ddr_back_at_once_and_only_once():
    """``freebuffer()`` (or a ``with`` block) releases the allocation without waiting for the
    garbage collector; views never release it; freeing twice cannot release a later allocation
    that reuses the address; a freed buffer's flush is refused by name."""
    dev = EmulatedDevice("zcu104")
    a = pynq.allocate((4096,), np.int8, target=dev)
    view = a[100:200]
    del view
    gc.collect()
    assert len(dev.ddr._sizes) == 1            # a view's collection left the allocation alone
    addr = a.device_address
    a.freebuffer()
    assert len(dev.ddr._sizes) == 0            # released now, a still referenced
    b = pynq.allocate((4096,), np.int8, target=dev)
    assert b.device_address == addr            # the range is reused first-fit ...
    a.freebuffer()
    del a
    gc.collect()
    assert len(dev.ddr._sizes) == 1            # ... and the stale buffer cannot release it
    with pynq.allocate((64,), np.int32, target=dev):
        assert len(dev.ddr._sizes) == 2
    assert len(dev.ddr._sizes) == 1
    b.freebuffer()
    with pytest.raises(DMAError, match="was freed"):
        b.flush()
