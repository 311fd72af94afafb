"""The exceptions of lora-qta: each names one problem and says what to do about it."""

from __future__ import annotations


class QtaError(Exception):
    """Base of every lora-qta error."""


class InputDTypeError(QtaError, TypeError):
    """An operand of the wrong element type (the accelerator takes INT8 / INT32)."""


class InputShapeError(QtaError, ValueError):
    """Operands whose shapes do not make a GEMM, or that are not 2-D."""


class InputLayoutError(QtaError, ValueError):
    """A non-contiguous operand."""


class LimitError(QtaError, ValueError):
    """A dimension or parameter beyond what the configured accelerator supports."""


class SaturationError(QtaError, ArithmeticError):
    """The kernel saturated an output while the caller asked for strict overflow checks."""


class KernelArgumentError(QtaError, RuntimeError):
    """The kernel refused its arguments (status bit ``bad_args``)."""


class BitstreamNotFoundError(QtaError, FileNotFoundError):
    """No bitstream for the board in ``bitstreams/<board>/``."""


class StaleBitstreamError(QtaError, RuntimeError):
    """A bitstream built from another configuration than the package's."""


class StaleRegisterMapError(QtaError, RuntimeError):
    """The overlay's register map differs from ``hardware.toml``."""


class DeviceTimeoutError(QtaError, TimeoutError):
    """The kernel did not raise ``ap_done`` in time."""


class DeviceBusyError(QtaError, RuntimeError):
    """``ap_start`` written while the kernel is still running."""


class DMAError(QtaError, RuntimeError):
    """A kernel memory access outside allocated buffers, unaligned, or overlapping."""


class BackendError(QtaError, RuntimeError):
    """An unknown or unavailable backend."""
