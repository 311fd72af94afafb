"""The PYNQ driver of the ``qta_gemm`` kernel: one code path for board and emulation.

:class:`QtaGemmDriver` is a ``pynq.DefaultIP`` that binds to the kernel's VLNV, so
``pynq.Overlay`` hands it out as ``overlay.qta_gemm_0`` on a board; on a PC the
:class:`~lora_qta.emulation.EmulatedDevice` gives it the same description. It writes the
registers through ``pynq.MMIO``, starts the kernel, polls ``ap_done`` with a timeout and
reads the status and cycle counter. Registered as a ``pynq.lib`` entry point so that
``Overlay`` imports it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pynq import DefaultIP

from ..errors import DeviceBusyError, DeviceTimeoutError, StaleRegisterMapError
from ..hw.config import config
from ..hw.call import GemmCall

CTRL_START, CTRL_DONE, CTRL_IDLE = 0x1, 0x2, 0x4


@dataclass(frozen=True)
class RunInfo:
    """What one kernel run reports: status word, cycle counter, host wall time (seconds)."""

    status: int
    cycles: int
    wall_s: float


def check_register_map(registers: dict | None, where: str) -> None:
    """Compare an overlay's register map (from its ``.hwh``) with ``hardware.toml``."""
    if not registers:
        return  # no .hwh metadata to compare (the bitstream manifest is checked instead)
    wide = {"a", "b", "c", "scales", "cycles"}
    problems = []
    for name, off in config().registers.items():
        if name in ("ctrl", "gie", "ier", "isr", "status_ctrl", "cycles_ctrl"):
            continue
        key = f"{name}_1" if name in wide else name
        if key not in registers:
            problems.append(f"{key} missing")
        elif int(registers[key]["address_offset"]) != off:
            problems.append(f"{key} at 0x{int(registers[key]['address_offset']):X}, expected 0x{off:X}")
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
        self._r = config().registers

    def _read64(self, name: str) -> int:
        return self.read(self._r[name]) | (self.read(self._r[name] + 4) << 32)

    def start(self, a: int, b: int, c: int, scales: int, call: GemmCall) -> None:
        """Write the arguments (device addresses and scalars) and raise ap_start.

        The argument registers form one block (``a`` .. ``seed``), written with a single MMIO
        burst; the reserved words between them are written as zero, which the AXI-lite slave
        ignores.
        """
        ctrl = self.read(self._r["ctrl"])
        if ctrl & CTRL_START or not ctrl & CTRL_IDLE:
            raise DeviceBusyError("the kernel is still running a previous call; wait for it to finish")
        values = {"a": a, "b": b, "c": c, "scales": scales, **call.scalar_registers()}
        first, last = self._r["a"], self._r["seed"]
        block = bytearray(last + 4 - first)
        for name, value in values.items():
            off = self._r[name] - first
            width = 8 if name in ("a", "b", "c", "scales") else 4
            block[off:off + width] = int(value).to_bytes(width, "little")
        self.write(first, bytes(block))
        self.write(self._r["ctrl"], CTRL_START)

    def wait(self, timeout: float = 30.0) -> RunInfo:
        """Poll ap_done until ``timeout`` seconds; returns status and cycle counter."""
        t0 = time.perf_counter()
        delay = 1e-5
        while not self.read(self._r["ctrl"]) & CTRL_DONE:
            elapsed = time.perf_counter() - t0
            if elapsed > timeout:
                raise DeviceTimeoutError(
                    f"qta_gemm did not raise ap_done within {timeout:.1f} s; the kernel may be hung "
                    "(check the bitstream matches this package) or the timeout too short for this GEMM")
            time.sleep(delay)
            delay = min(delay * 2, 1e-3)
        wall = time.perf_counter() - t0
        return RunInfo(self.read(self._r["status"]), self._read64("cycles"), wall)

    def run(self, a: int, b: int, c: int, scales: int, call: GemmCall, timeout: float = 30.0) -> RunInfo:
        """``start`` then ``wait``."""
        self.start(a, b, c, scales, call)
        return self.wait(timeout)
