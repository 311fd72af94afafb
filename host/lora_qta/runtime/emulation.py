"""An emulated PYNQ device: the accelerator on a PC, plugged into the real ``pynq`` package.

:class:`EmulatedDevice` is a ``pynq.Device`` with the ``REGISTER_RW`` capability, so every
``pynq.MMIO`` access of the driver reaches :meth:`EmulatedDevice.read_registers` /
:meth:`write_registers`, and ``pynq.allocate(..., target=device)`` returns real
``PynqBuffer`` objects whose ``device_address`` lies in an emulated DDR: one contiguous anonymous
memory map (:class:`EmulatedDDR`), so the kernel's unified addressing works as on a board (one
memory base in every m_axi pointer, the operands as byte offsets from it), for the C-simulated
kernel too.

The emulation keeps the host's view of a buffer (the CPU cache) apart from the DDR copy the
kernel reads: ``flush()`` copies host -> DDR and ``invalidate()`` DDR -> host, so a driver
that forgets either sees stale data here as it would on a board.

Writing ``ap_start`` decodes the registers as the kernel does (arguments it would reject return
``bad_args`` without touching memory), checks every DMA range the registers describe (the same
memory base in all eight pointers, every operand inside one allocated buffer, the output not
overlapping the inputs), then runs the kernel, in a worker thread if asked, with one of two
engines: ``csim`` (the HLS C++ compiled with g++) or ``fast`` (vectorized, bit-exact). The
output registers hold what the kernel writes; ``cycles_measured`` reads 0, as C-simulation cannot
measure cycles. ``ap_done``/``ap_idle`` behave as the Vitis HLS control register does.
"""

from __future__ import annotations

import bisect
import mmap
import os
import struct
import threading
import time
from typing import Callable

import numpy as np
import pynq
from pynq.buffer import PynqBuffer

from . import fast
from ..errors import BackendError, DeviceBusyError, DeviceMemoryError, DMAError
from ..hw.call import GemmCall, ceil_to
from ..hw.config import BoardConfig, config
from .driver import OPERANDS, POINTERS

ENGINES = ("fast", "csim")
DDR_BASE = 0x1000_0000
PAGE = 4096

HOST_SKEW = PAGE // 2
"""Page offset of a buffer's host view (the emulated CPU-cache copy): half a page away from its
page-aligned DDR copy and from page-aligned arrays, so that flush/invalidate and the copies of
operands into a buffer do not suffer 4K aliasing (loads and stores whose addresses agree in their
low 12 bits stall each other; measured on this machine: a 64 KB copy into a buffer 16 bytes off
its source's page offset took 65 us, 13 us half a page off)."""
VALID = {f"{a.name}_ctrl": 1 for a in config().outputs}
"""The outputs' ap_vld words as the kernel leaves them after a call."""
CTRL_START, CTRL_DONE, CTRL_IDLE, CTRL_READY = (
    config().ctrl_mask(b) for b in ("ap_start", "ap_done", "ap_idle", "ap_ready"))


class EmulatedBuffer(PynqBuffer):
    """A ``PynqBuffer`` of the emulated DDR. pynq's ``freebuffer()`` gives back only XRT memory,
    so the emulated DDR would stay taken until the garbage collector found the buffer; this one
    gives its allocation back at once, exactly once: on ``freebuffer()``, at the end of a
    ``with`` block or when collected. Views (slices) share the allocation and never release it."""

    def freebuffer(self) -> None:
        give_back = self.__dict__.get("_give_back")  # set on the allocation only, not on its views
        if give_back is not None and not self.freed:
            self.freed = True
            give_back()


class EmulatedDDR:
    """The emulated physical memory: one contiguous anonymous memory map of ``size`` bytes at
    physical address ``base`` (pages are committed when first touched and given back with
    ``madvise(MADV_DONTNEED)`` when freed), page-aligned allocations in it, freed ranges reused
    first-fit."""

    def __init__(self, size: int = 4 << 30, base: int = DDR_BASE):
        try:
            self._map = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        except (OSError, ValueError, AttributeError):  # a small address space: settle for 1 GiB
            size = min(size, 1 << 30)
            self._map = mmap.mmap(-1, size)
        self.base, self.size = base, size
        self.mem = np.frombuffer(self._map, dtype=np.uint8)
        self._starts: list[int] = []          # sorted allocation start addresses
        self._sizes: dict[int, int] = {}      # start -> bytes requested
        self._spans: dict[int, int] = {}      # start -> bytes reserved (pages)
        self._free: list[tuple[int, int]] = []
        self._next = base
        self._lock = threading.Lock()
        self.generation = 0
        """Counts the allocations and frees: a range check made at one generation holds until it changes."""

    @property
    def host_address(self) -> int:
        """The host (virtual) address of physical address ``base``."""
        return int(self.mem.ctypes.data)

    def alloc(self, nbytes: int) -> tuple[int, np.ndarray]:
        """Reserve ``nbytes`` (rounded to pages, zero-filled); returns (address, uint8 view)."""
        span = max(PAGE, ceil_to(nbytes, PAGE))
        with self._lock:
            for i, (addr, free_span) in enumerate(self._free):
                if free_span >= span:
                    if free_span > span:
                        self._free[i] = (addr + span, free_span - span)
                    else:
                        del self._free[i]
                    break
            else:
                if self._next + span > self.base + self.size:
                    raise DeviceMemoryError(f"emulated DDR exhausted: {nbytes} bytes requested, "
                                            f"{self.base + self.size - self._next} left; free buffers or allocate less")
                addr, self._next = self._next, self._next + span
            bisect.insort(self._starts, addr)
            self._sizes[addr], self._spans[addr] = nbytes, span
            self.generation += 1
        off = addr - self.base
        return addr, self.mem[off:off + nbytes]

    def free(self, addr: int) -> None:
        """Release the allocation at ``addr``: its pages go back to the host (zero when reused)."""
        with self._lock:
            if addr not in self._sizes:
                return
            span = self._spans.pop(addr)
            del self._sizes[addr]
            self._starts.remove(addr)
            self.generation += 1
            if hasattr(self._map, "madvise"):
                self._map.madvise(mmap.MADV_DONTNEED, addr - self.base, span)
            else:  # pragma: no cover - Python builds without madvise
                self.mem[addr - self.base:addr - self.base + span] = 0
            self._free.append((addr, span))

    def block(self, addr: int) -> tuple[int, int]:
        """The allocation containing ``addr``: (start, bytes)."""
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0:
            start = self._starts[i]
            if addr < start + self._sizes[start]:
                return start, self._sizes[start]
        raise DMAError(f"address 0x{addr:X} is not inside any allocated buffer")

    def view(self, addr: int, nbytes: int, what: str) -> np.ndarray:
        """``nbytes`` of DDR from ``addr`` as a writable uint8 view; a DMAError names ``what``
        if the range leaves its buffer."""
        try:
            start, size = self.block(addr)
        except DMAError as e:
            raise DMAError(f"{what}: {e}") from None
        if addr + nbytes > start + size:
            raise DMAError(f"{what}: {nbytes} bytes from 0x{addr:X} run {addr + nbytes - start - size} "
                           f"bytes past the end of the buffer at 0x{start:X} ({size} bytes)")
        off = addr - self.base
        return self.mem[off:off + nbytes]


def _host_bytes(nbytes: int) -> np.ndarray:
    """``nbytes`` zeroed bytes starting at page offset :data:`HOST_SKEW`."""
    raw = np.zeros(nbytes + PAGE, dtype=np.uint8)
    skip = (HOST_SKEW - raw.ctypes.data) % PAGE
    return raw[skip:skip + nbytes]


def hwh_register_map() -> dict[str, dict]:
    """The kernel's registers as an ``ip_dict['registers']`` entry names them (Vitis naming:
    ``a_1``/``a_2`` for the words of a 64-bit argument), generated from the configuration."""
    regs = config().registers
    wide = {a.name for a in config().args if a.wide}
    out = {}
    for name, off in regs.items():
        if name in wide:
            for i in (1, 2):
                out[f"{name}_{i}"] = {"address_offset": off + 4 * (i - 1), "size": 32,
                                      "access": "read-write", "description": name, "fields": {}}
        else:
            vitis = {"ctrl": "CTRL", "gie": "GIER", "ier": "IP_IER", "isr": "IP_ISR"}.get(name, name)
            out[vitis] = {"address_offset": off, "size": 32, "access": "read-write",
                          "description": name, "fields": {}}
    return out


Engine = Callable[[BoardConfig, GemmCall, "EmulatedDDR", int, dict[str, int]], dict[str, int]]
"""Runs one call on the emulated DDR with the memory base of its pointers and the operands'
byte offsets from it; returns the output registers by name."""


def _fast_engine(board: BoardConfig, call: GemmCall, ddr: EmulatedDDR, memory_base: int,
                 offsets: dict[str, int]) -> dict[str, int]:
    shift = memory_base - ddr.base
    return fast.run(board, call, ddr.mem, {k: v + shift for k, v in offsets.items()})


def _csim_engine(board: BoardConfig, call: GemmCall, ddr: EmulatedDDR, memory_base: int,
                 offsets: dict[str, int]) -> dict[str, int]:
    from . import csim

    host = ddr.host_address + (memory_base - ddr.base)
    pointers = dict.fromkeys(POINTERS, host)
    regs = {name: offsets.get(name, 0) for name in OPERANDS}
    regs.update(call.scalar_registers())
    return csim.load(board).run(pointers, regs)


def engine(name: str) -> Engine:
    """The emulation engine called ``name`` (``fast`` or ``csim``)."""
    if name == "fast":
        return _fast_engine
    if name == "csim":
        return _csim_engine
    raise BackendError(f"unknown emulation engine {name!r}: use one of {', '.join(ENGINES)}")


class EmulatedDevice(pynq.Device):
    """A PYNQ device whose programmable logic holds the lora-qta kernel, in software.

    Parameters: ``board`` (a name from ``hardware.toml``), ``engine`` (``fast`` or ``csim``),
    ``asynchronous`` (run the kernel in a worker thread, so ap_done rises later, as on a board;
    by default it completes before the ap_start write returns, which is a legal and faster
    timing), ``hang`` (fault injection: the kernel never finishes, to exercise timeouts).
    Setting ``LORA_QTA_EMULATE=<board>`` makes ``pynq.Device.devices`` list one, so plain
    ``pynq.allocate`` works in notebooks without a board.
    """

    _probe_priority_ = 900  # after every real device class of pynq

    @classmethod
    def _probe_(cls) -> list["EmulatedDevice"]:
        board = os.environ.get("LORA_QTA_EMULATE")
        return [cls(board or None)] if board else []

    def __init__(self, board: str | None = None, engine: str = "fast", asynchronous: bool = False,
                 hang: bool = False):
        self.board = config().board(board)
        super().__init__(f"lora-qta-emulated-{self.board.name}")
        self.capabilities = {"REGISTER_RW": True}
        self.name = f"lora-qta emulated {self.board.name}"
        self.engine_name = engine
        self._engine = globals()["engine"](engine)
        self.hang = hang
        self.asynchronous = asynchronous
        self.ddr = EmulatedDDR()
        self._host: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # allocation address -> (host, DDR) bytes
        self.base = self.board.kernel_base_address
        self._regs = bytearray(config().address_range)
        self._ctrl = CTRL_IDLE
        self._worker: threading.Thread | None = None
        self._error: BaseException | None = None
        self.ip_dict = {"qta_gemm_0": self.ip_description()}
        self.mem_dict: dict = {}
        self.runs = 0
        # wall time of the engine computing calls (their results and modelled cycle counts: the
        # emulated kernel's work), summed; the driver, buffers and register traffic are not in it
        self.kernel_seconds = 0.0
        self._decoded: dict[bytes, tuple[int, tuple[GemmCall, int, dict[str, int] | None]]] = {}

    @property
    def memory_base(self) -> int:
        """What the driver writes into every m_axi pointer: the emulated DDR's physical base (on
        a board the HP ports address physical DDR, and it is 0)."""
        return self.ddr.base

    measures_cycles = False
    """The kernel's ``cycles_measured`` reads 0 here (C-simulation cannot measure cycles)."""

    # -- what an overlay's ip_dict would say -------------------------------------------
    def ip_description(self) -> dict:
        """The ``ip_dict`` entry of the kernel, as ``Overlay`` builds it from a ``.hwh``."""
        return {
            "phys_addr": self.base, "addr_range": config().address_range, "type": config().vlnv,
            "fullpath": "qta_gemm_0", "registers": hwh_register_map(), "device": self,
            "parameters": {}, "interrupts": {}, "gpio": {},
        }

    # -- memory ------------------------------------------------------------------------
    def allocate(self, shape, dtype="u4", **kwargs) -> PynqBuffer:
        """A ``PynqBuffer`` in emulated DDR (host view and DDR copy kept apart), released by its
        ``freebuffer()`` (or ``with`` block, or collection) as a board's buffer is."""
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        addr, ddr = self.ddr.alloc(nbytes)
        host = _host_bytes(max(nbytes, 1))
        buf = EmulatedBuffer(shape, dtype, buffer=host, device_address=addr, bo=addr, device=self,
                             coherent=False)
        buf._give_back = lambda: self._release(addr)
        self._host[addr] = (host, ddr)
        return buf

    def _release(self, addr: int) -> None:
        self._host.pop(addr, None)
        self.ddr.free(addr)

    def _sync(self, bo: int, offset: int, nbytes: int, to_device: bool) -> None:
        try:
            host, ddr = self._host[bo]  # the allocation's two copies, as allocate() made them
        except KeyError:
            raise DMAError(f"{'flush' if to_device else 'invalidate'} of the buffer at 0x{bo:X}, which was freed "
                           "(freebuffer): allocate a new buffer") from None
        if to_device:
            ddr[offset:offset + nbytes] = host[offset:offset + nbytes]
        else:
            host[offset:offset + nbytes] = ddr[offset:offset + nbytes]

    def flush(self, bo, offset, ptr, size) -> None:
        """Write the host's view of a buffer range to DDR (cache flush)."""
        self._sync(bo, offset, size, to_device=True)

    def invalidate(self, bo, offset, ptr, size) -> None:
        """Refresh the host's view of a buffer range from DDR (cache invalidate)."""
        self._sync(bo, offset, size, to_device=False)

    # -- registers ---------------------------------------------------------------------
    def _offset(self, address: int, length: int) -> int:
        off = address - self.base
        if off < 0 or off + length > len(self._regs):
            raise DMAError(f"register access at 0x{address:X} is outside the kernel's aperture "
                           f"0x{self.base:X}..0x{self.base + len(self._regs):X}")
        return off

    def _poll_worker(self) -> None:
        if self._worker is not None and not self._worker.is_alive():
            self._worker = None
            self._poll_worker_error()

    def _poll_worker_error(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def read_registers(self, address: int, length: int) -> bytes:
        """MMIO read; reading CTRL clears ap_done, as in Vitis HLS."""
        off = self._offset(address, length)
        self._poll_worker()
        if off == config().registers["ctrl"]:
            value = self._ctrl
            self._ctrl &= ~CTRL_DONE
            return struct.pack("<I", value)[:length]
        return bytes(self._regs[off:off + length])

    def write_registers(self, address: int, data: bytes) -> None:
        """MMIO write; writing ap_start to CTRL launches the kernel."""
        off = self._offset(address, len(data))
        if off == config().registers["ctrl"]:
            if struct.unpack("<I", data[:4])[0] & CTRL_START:
                self._start()
            return
        self._regs[off:off + len(data)] = data

    # -- the kernel ----------------------------------------------------------------------
    def _start(self) -> None:
        self._poll_worker()
        if self._worker is not None or self._ctrl & CTRL_START:
            raise DeviceBusyError("ap_start written while the kernel is running; wait for ap_done")
        call, memory_base, offsets = self._decode()
        self._ctrl = CTRL_START
        self.runs += 1
        if self.hang:
            return  # fault injection: never completes
        if not self.asynchronous:
            self._execute(call, memory_base, offsets)
            self._poll_worker_error()
            return
        self._worker = threading.Thread(target=self._execute, args=(call, memory_base, offsets), daemon=True)
        self._worker.start()

    DECODED = 1024
    """Argument blocks whose decoded call and DMA check :meth:`_decode` remembers (a training step
    repeats a few hundred)."""

    def _decode(self) -> tuple[GemmCall, int, dict[str, int] | None]:
        """The call the argument registers hold, its memory base and operand offsets, after
        :meth:`_dma_check`. Decoded once per distinct argument block and DDR allocation state:
        the same register bytes with the same buffers allocated (:attr:`EmulatedDDR.generation`)
        describe the same call and the same ranges, which the check accepted before; any
        allocation or free in between checks them anew."""
        block = config().input_block
        key = bytes(self._regs[block.start:block.start + block.size])
        hit = self._decoded.get(key)
        if hit is not None and hit[0] == self.ddr.generation:
            return hit[1]
        regs = block.unpack(self._regs)  # every argument register, decoded once
        call = GemmCall.from_registers(regs)
        found = (call, *self._dma_check(call, regs))
        if len(self._decoded) >= self.DECODED:
            self._decoded.clear()
        self._decoded[key] = (self.ddr.generation, found)
        return found

    def _dma_check(self, call: GemmCall, regs: dict[str, int]) -> tuple[int, dict[str, int] | None]:
        """Check every range the kernel will touch (``regs``: the argument registers); (memory
        base, operand offsets), the offsets None when the kernel rejects its arguments before any
        memory access."""
        from .planner import kernel_accepts

        bases = {name: regs[name] for name in POINTERS}
        memory_base = bases[POINTERS[0]]
        offsets = {name: regs[name] for name in OPERANDS}
        if not call.scaled:
            offsets.pop("scales")
        beat = self.board.axi_bytes
        if not kernel_accepts(self.board, call) or any(v % beat for v in offsets.values()):
            return memory_base, None  # the kernel rejects its arguments before any memory access
        if len(set(bases.values())) != 1:
            raise DMAError("unified addressing: every m_axi pointer (rd0..rd3, wr0..wr3) must hold the same "
                           f"memory base, got {', '.join(f'{k}=0x{v:X}' for k, v in bases.items())}")
        ranges = {}
        for name, nbytes in call.extents(beat).items():
            addr = memory_base + offsets[name]
            self.ddr.view(addr, nbytes, f"operand {name} (offset 0x{offsets[name]:X})")
            ranges[name] = (addr, addr + nbytes)
        c0, c1 = ranges["c"]
        for name in ("a", "b", "scales"):
            if name in ranges:
                s0, s1 = ranges[name]
                if s0 < c1 and c0 < s1:
                    raise DMAError(f"output C [0x{c0:X}, 0x{c1:X}) overlaps operand {name} "
                                   f"[0x{s0:X}, 0x{s1:X}); give C its own buffer")
        return memory_base, offsets

    def _execute(self, call: GemmCall, memory_base: int, offsets: dict[str, int] | None) -> None:
        try:
            if offsets is None:  # rejected before any memory access, as the kernel does
                outputs = {"status": 1 << config().status["bad_args"], "sat_count": 0, "amax": 0,
                           "cycles_model": config().schedule.call_overhead, "cycles_measured": 0}
            else:
                t0 = time.perf_counter()
                outputs = self._engine(self.board, call, self.ddr, memory_base, offsets)
                self.kernel_seconds += time.perf_counter() - t0
            # every output and its ap_vld word (1), in one pass
            config().output_block.pack_into(self._regs, {**outputs, **VALID})
        except BaseException as e:  # surfaced to the driver at its next register access
            self._error = e
        finally:
            self._ctrl = CTRL_DONE | CTRL_IDLE | CTRL_READY
