"""The PYNQ driver of the ``qta_gemm`` kernel: one code path for board and emulation.

:class:`QtaGemmDriver` is a ``pynq.DefaultIP`` that binds to the kernel's VLNV, so
``pynq.Overlay`` hands it out as ``overlay.qta_gemm_0`` on a board; on a PC the
:class:`~lora_qta.runtime.emulation.EmulatedDevice` gives it the same description. It writes
the argument registers through ``pynq.MMIO`` (offsets and order from the argument list of
``hardware.toml``), starts the kernel, polls ``ap_done`` with a timeout and reads the output
registers (status and cycle counter). Registered as a ``pynq.lib`` entry point so that
``Overlay`` imports it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pynq import DefaultIP

from ..errors import DeviceBusyError, DeviceTimeoutError, StaleRegisterMapError
from ..hw.config import config
from ..hw.call import GemmCall

CTRL_START, CTRL_DONE, CTRL_IDLE = (config().ctrl_mask(b) for b in ("ap_start", "ap_done", "ap_idle"))


@dataclass(frozen=True)
class RunInfo:
    """What one kernel run reports: its output registers by name, host wall time (seconds)."""

    outputs: dict[str, int]
    wall_s: float

    @property
    def status(self) -> int:
        """The status word (bits in hardware.toml's ``status`` table)."""
        return self.outputs["status"]

    @property
    def cycles(self) -> int:
        """The kernel's cycle counter of the call."""
        return self.outputs["cycles"]


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

    def start(self, pointers: dict[str, int], call: GemmCall) -> None:
        """Write the arguments (device addresses of the pointer arguments by name, the call's
        scalars) and raise ap_start.

        The input arguments form one block, from the first to the last input of hardware.toml's
        list, written with a single MMIO burst; the reserved words between them are written as
        zero, which the AXI-lite slave ignores.
        """
        ctrl = self.read(self._ctrl)
        if ctrl & CTRL_START or not ctrl & CTRL_IDLE:
            raise DeviceBusyError("the kernel is still running a previous call; wait for it to finish")
        values = {**pointers, **call.scalar_registers()}
        inputs = config().inputs
        first = inputs[0].offset
        block = bytearray(inputs[-1].offset + inputs[-1].data_bytes - first)
        for arg in inputs:
            at = arg.offset - first
            block[at:at + arg.data_bytes] = int(values[arg.name]).to_bytes(arg.data_bytes, "little")
        self.write(first, bytes(block))
        self.write(self._ctrl, CTRL_START)

    def wait(self, timeout: float = 30.0) -> RunInfo:
        """Poll ap_done until ``timeout`` seconds; returns the output registers (status, cycle
        counter) and the wall time."""
        t0 = time.perf_counter()
        delay = 1e-5
        while not self.read(self._ctrl) & CTRL_DONE:
            elapsed = time.perf_counter() - t0
            if elapsed > timeout:
                raise DeviceTimeoutError(
                    f"qta_gemm did not raise ap_done within {timeout:.1f} s; the kernel may be hung "
                    "(check the bitstream matches this package) or the timeout too short for this GEMM")
            time.sleep(delay)
            delay = min(delay * 2, 1e-3)
        wall = time.perf_counter() - t0
        outputs = {}
        for arg in config().outputs:
            value = self.read(arg.offset)
            if arg.wide:
                value |= self.read(arg.offset + 4) << 32
            outputs[arg.name] = value
        return RunInfo(outputs, wall)

    def run(self, pointers: dict[str, int], call: GemmCall, timeout: float = 30.0) -> RunInfo:
        """``start`` then ``wait``."""
        self.start(pointers, call)
        return self.wait(timeout)
