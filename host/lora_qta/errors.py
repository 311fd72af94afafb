"""The exceptions of lora-qta: every one is a :class:`QtaError`, names one problem, and its
message says what to do about it. The command line prints them as one line
``lora-qta: error: ...`` with exit status 2.

Each class also derives from the built-in exception a caller would expect (``ValueError`` for
a bad value, ``FileNotFoundError`` for a missing file, ...), so ``except ValueError`` keeps
working. This module imports nothing of the package: every layer may raise these.
"""

from __future__ import annotations


class QtaError(Exception):
    """Base of every lora-qta error."""


# ----------------------------------------------------------------------------- configuration

class ConfigError(QtaError, ValueError):
    """``hardware.toml`` is malformed or inconsistent."""


class UnknownBoardError(QtaError, ValueError):
    """A board name that ``hardware.toml`` does not describe."""


class OptionError(QtaError, ValueError):
    """An option or argument value outside the choices the function or command accepts."""


# ----------------------------------------------------------------------------- GEMM calls

class InputDTypeError(QtaError, TypeError):
    """An operand of the wrong element type (the accelerator takes INT8 / INT32)."""


class InputShapeError(QtaError, ValueError):
    """Operands or images whose shapes do not fit (not 2-D, no GEMM, wrong image size)."""


class InputLayoutError(QtaError, ValueError):
    """A non-contiguous operand."""


class LimitError(QtaError, ValueError):
    """A dimension or parameter beyond what the configured accelerator supports."""


class PlanError(LimitError):
    """A GEMM the configured accelerator cannot run (size, dataflow or partition)."""


class SaturationError(QtaError, ArithmeticError):
    """The kernel saturated an output while the caller asked for strict overflow checks."""


# ----------------------------------------------------------------------------- devices

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


class DeviceMemoryError(QtaError, MemoryError):
    """The emulated DDR has no room left for an allocation, or resident operands would exceed
    the accelerator's budget for them."""


class ResidentOperandError(QtaError, RuntimeError):
    """A resident operand used after it was freed, or with another accelerator than its own."""


class BackendError(QtaError, RuntimeError):
    """An unknown or unavailable backend."""


class CsimBuildError(QtaError, RuntimeError):
    """The C-simulation library could not be built (compiler, headers or sources missing)."""


# ----------------------------------------------------------------------------- training

class ModelFolderError(QtaError, FileNotFoundError):
    """A missing or corrupt pretrained model folder."""


class InstanceDataError(QtaError, ValueError):
    """An empty, unreadable or ill-formed folder of instance images."""


class PromptError(QtaError, ValueError):
    """A prompt the digits model's tokenizer cannot encode."""


class AdapterError(QtaError, ValueError):
    """LoRA weights or an adapter kind that the model or the accelerated layer does not take."""


class CheckpointError(QtaError, RuntimeError):
    """A checkpoint that cannot be read, holds non-finite weights, or does not belong to this
    run's configuration."""


class MeasurementCacheError(QtaError, ValueError):
    """A cached ``lora-qta evaluate`` measurement (measure.json) that is unreadable or incomplete:
    evaluate says so and measures again."""


class OutputDirError(QtaError, OSError):
    """An output folder that cannot be used: a file, unwritable, or holding another run's files
    (without ``--resume`` or ``--overwrite``)."""


class RunLockedError(QtaError, RuntimeError):
    """Another process holds the output folder's lock (a run is writing there)."""


class DivergedError(QtaError, FloatingPointError):
    """The loss, or a tensor reaching the INT8 quantizer, became NaN or Inf."""


# ----------------------------------------------------------------------------- several processes

class DistributedError(QtaError, RuntimeError):
    """Base of the errors of a data-parallel run over several processes (boards)."""


class RendezvousError(DistributedError):
    """The processes of a data-parallel run could not meet (address, port, a rank that never
    started, a backend without CPU collectives)."""


class RankSetupError(DistributedError):
    """One or more ranks could not open their accelerator (board or bitstream missing); the
    message names every such rank."""


class RankMismatchError(DistributedError):
    """The ranks of one run disagree (board, hardware configuration, package version, backend,
    options, model or data), or their LoRA weights drifted apart."""


class CollectiveError(DistributedError):
    """A collective operation failed because another rank failed, died or stopped answering
    (turned into a :class:`RankLostError` naming that rank)."""


class RankStoppedError(DistributedError):
    """The launcher (torchrun's elastic agent) stopped this rank with SIGTERM (turned into a
    :class:`RankLostError` naming the rank that failed, when it can be known)."""


class RankLostError(DistributedError):
    """A data-parallel run stopped because a rank failed, died or was stopped; the message names
    it, and the last checkpoint stays valid for ``--resume``."""


# ----------------------------------------------------------------------------- power

class RailError(QtaError, ValueError):
    """No power rail (or no power sensor on the named rails) to record."""


class RecordingError(QtaError, RuntimeError):
    """A power recording that cannot run or recorded too little."""


# ----------------------------------------------------------------------------- RTL evidence

class RtlToolError(QtaError, RuntimeError):
    """An open tool of the RTL evidence (Verilator, cocotb, yosys, a C++ compiler) is missing or failed."""


class RtlInputError(QtaError, ValueError):
    """An array shape, split, dataflow or tile that the RTL PE array cannot take."""
