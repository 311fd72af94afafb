"""The PYNQ driver of the ``qta_gemm`` kernel: one code path for board and emulation.

:class:`QtaGemmDriver` is a ``pynq.DefaultIP`` that binds to the kernel's VLNV, so
``pynq.Overlay`` hands it out as ``overlay.qta_gemm_0`` on a board; on a PC the
:class:`~lora_qta.runtime.emulation.EmulatedDevice` gives it the same description. It writes
the argument registers through ``pynq.MMIO`` (offsets and order from the argument list of
``hardware.toml``): the memory base into every m_axi pointer (``rd0..3``, ``wr0..3``: unified
addressing, 0 on a board), the operands' byte offsets from it (``a``, ``b``, ``c``, ``scales``)
and the call's scalars; it starts the kernel, polls ``ap_done`` with a timeout and reads the
output registers (status, sat_count, amax, the modelled and the measured cycle count) as one
block (:meth:`QtaGemmDriver.read_block`).
Registered as a ``pynq.lib`` entry point so that ``Overlay`` imports it.
"""

from __future__ import annotations

import operator
import struct
import time
from dataclasses import dataclass

import numpy as np

from pynq import DefaultIP

from ..errors import DeviceBusyError, DeviceTimeoutError, KernelArgumentError, StaleRegisterMapError
from ..hw.call import GemmCall
from ..hw.config import config

CTRL_START, CTRL_DONE, CTRL_IDLE = (config().ctrl_mask(b) for b in ("ap_start", "ap_done", "ap_idle"))
OPERANDS = ("a", "b", "c", "scales")
"""The operands' offset registers (64-bit byte offsets from the memory base)."""
POINTERS = tuple(a.name for a in config().args if a.kind == "pointer")
"""The m_axi pointer registers (every one holds the memory base: unified addressing)."""
OUTPUTS = tuple(a.name for a in config().outputs)
"""The kernel's output registers (status, sat_count, amax, cycle counts)."""
POLL_FIRST_S, POLL_MAX_S = 1e-5, 1e-3
"""The completion poll's first sleep between ap_done reads and its cap (seconds; each sleep
doubles the one before)."""


@dataclass(frozen=True)
class RunInfo:
    """What one kernel run reports: its output registers by name, host wall time (seconds)
    from ap_start to ap_done as the host saw it."""

    outputs: dict[str, int]
    wall_s: float

    @property
    def status(self) -> int:
        """The status word (bits in hardware.toml's ``status`` table)."""
        return self.outputs["status"]

    @property
    def sat_count(self) -> int:
        """Outputs that saturated."""
        return self.outputs["sat_count"]

    @property
    def amax(self) -> int:
        """Max |value before saturation| of the call (capped at 2^31 - 1)."""
        return self.outputs["amax"]

    @property
    def cycles_model(self) -> int:
        """The kernel's modelled cycle count (trip counts and the overlap recurrence)."""
        return self.outputs["cycles_model"]

    @property
    def cycles_measured(self) -> int:
        """The kernel's measured cycle count (its counter process; 0 in C-simulation)."""
        return self.outputs["cycles_measured"]


def _fits(value: object, nbytes: int) -> bool:
    """Whether ``value`` is an integer that an unsigned register of ``nbytes`` holds."""
    try:
        return 0 <= operator.index(value) < 1 << 8 * nbytes
    except TypeError:
        return False


def check_register_map(registers: dict | None, where: str) -> None:
    """Compare an overlay's register map (from its ``.hwh``) with the arguments of ``hardware.toml``."""
    if not registers:
        return  # no .hwh metadata to compare (the bitstream manifest is checked instead)
    problems = []
    for arg in config().args:
        key = arg.hwh_name
        if key not in registers:
            problems.append(f"{key} missing")
        elif int(registers[key]["address_offset"]) != arg.offset:
            problems.append(f"{key} at 0x{int(registers[key]['address_offset']):X}, expected 0x{arg.offset:X}")
    if problems:
        raise StaleRegisterMapError(
            f"the register map of {where} does not match hardware.toml ({'; '.join(problems)}): "
            "the bitstream was built from another version of the kernel; rebuild it with "
            "scripts/build_bitstream.sh <board>")


class QtaGemmDriver(DefaultIP):
    """Driver of one ``qta_gemm`` instance."""

    bindto = [config().vlnv]

    def __init__(self, description: dict):
        super().__init__(description)
        check_register_map(description.get("registers"), description.get("fullpath", "qta_gemm"))
        self._ctrl = config().registers["ctrl"]
        self._t0 = 0.0

    def start(self, memory_base: int, offsets: dict[str, int], call: GemmCall) -> None:
        """Write the arguments and raise ap_start: ``memory_base`` into every m_axi pointer,
        ``offsets`` (byte offsets of ``a``, ``b``, ``c`` and, if used, ``scales`` from the base),
        the call's scalars.

        The input arguments form one block, from the first to the last input of hardware.toml's
        list, written with a single MMIO burst; the reserved words between them are written as
        zero, which the AXI-lite slave ignores.
        """
        ctrl = self.read(self._ctrl)
        if ctrl & CTRL_START or not ctrl & CTRL_IDLE:
            raise DeviceBusyError("the kernel is still running a previous call; wait for it to finish")
        block = config().input_block
        values = dict.fromkeys(POINTERS, memory_base)
        values.update({name: offsets.get(name, 0) for name in OPERANDS})
        values.update(call.scalar_registers())
        try:
            data = block.pack(values)
        except struct.error:
            bad = [f"{a.name}={values[a.name]!r}" for a in config().inputs if not _fits(values[a.name], a.data_bytes)]
            raise KernelArgumentError(f"argument registers out of range ({', '.join(bad)}): every value must be a "
                                      "non-negative integer that fits its register; check the offsets and "
                                      "the call's fields") from None
        self.write(block.start, data)
        self._t0 = time.perf_counter()
        self.write(self._ctrl, CTRL_START)

    def wait(self, timeout: float = 30.0) -> RunInfo:
        """Poll ap_done until ``timeout`` seconds; returns the output registers and the wall time
        since ap_start."""
        t0 = self._t0 or time.perf_counter()
        delay = POLL_FIRST_S
        while not self.read(self._ctrl) & CTRL_DONE:
            if time.perf_counter() - t0 > timeout:
                raise DeviceTimeoutError(
                    f"qta_gemm did not raise ap_done within {timeout:.1f} s; the kernel may be hung "
                    "(check the bitstream matches this package) or the timeout too short for this GEMM")
            time.sleep(delay)
            delay = min(delay * 2, POLL_MAX_S)
        wall = time.perf_counter() - t0
        block = config().output_block
        values = block.decode(self.read_block(block.start, block.size))
        return RunInfo({name: values[name] for name in OUTPUTS}, wall)

    def read_block(self, offset: int, nbytes: int) -> bytes:
        """``nbytes`` of registers from ``offset`` (both multiples of 4): where the register map
        is memory-mapped (a board), one 32-bit load per word from its numpy view, as
        ``pynq.MMIO.read`` does (an s_axilite slave takes 32-bit reads only, so never a bulk copy
        that may issue wider loads); one ``read_registers`` where the device has the REGISTER_RW
        capability (the emulation); else word by word through ``pynq.MMIO``. Reading the
        outputs' ap_vld words clears them on a board (clear on read); nothing uses them."""
        mmio = self.mmio
        if isinstance(mmio.array, np.ndarray):
            words = mmio.array
            return struct.pack(f"<{nbytes >> 2}I", *(int(words[i]) for i in range(offset >> 2, (offset + nbytes) >> 2)))
        if mmio.device.has_capability("REGISTER_RW"):
            return mmio.device.read_registers(mmio.base_addr + offset, nbytes)
        return b"".join(struct.pack("<I", self.read(at)) for at in range(offset, offset + nbytes, 4))

    def run(self, memory_base: int, offsets: dict[str, int], call: GemmCall, timeout: float = 30.0) -> RunInfo:
        """``start`` then ``wait``."""
        self.start(memory_base, offsets, call)
        return self.wait(timeout)
