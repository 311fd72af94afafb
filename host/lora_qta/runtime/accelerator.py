"""The public API: ``Accelerator(board, backend)`` with :meth:`~Accelerator.gemm`,
:meth:`~Accelerator.batched_gemm` and :meth:`~Accelerator.conv2d`.

The same code runs on a PYNQ board (``pynq.Overlay`` + :class:`QtaGemmDriver`) and on a PC
(:class:`EmulatedDevice` under the same driver). Each call validates its operands, asks the
planner for tiles and a dataflow, moves the operands into ``pynq.allocate``'d buffers with their
leading dimensions padded to the AXI beat (kernel v2 reads and writes whole beats) -- or reads a
:class:`Resident` operand where :meth:`Accelerator.resident` placed it --, programs the
memory base and the operands' offsets (unified addressing), runs the kernel and returns a
:class:`GemmResult` with the output, the kernel's status outputs, its modelled and measured cycle
counts and the host's wall time.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pynq

from . import planner
from .driver import QtaGemmDriver, RunInfo
from .emulation import EmulatedDevice
from ..errors import (BackendError, BitstreamNotFoundError, DeviceMemoryError, DMAError, InputDTypeError,
                     InputLayoutError, InputShapeError, KernelArgumentError, LimitError, ResidentOperandError,
                     SaturationError, StaleBitstreamError)
from ..hw.config import BoardConfig, board_digest, config, requested_backend, resolve_board
from ..hw.call import ROUNDINGS, SCALE_MODES, ConvGeometry, GemmCall, ceil_to
from ..hw.reference import AMAX_CAP, effective_shift, rounding_bits
from ..hw.reference import requantize as reference_requantize

REPO_BITSTREAMS = Path(__file__).resolve().parents[3] / "bitstreams"

try:  # torch is optional for the GEMM API
    import torch
except ImportError:  # pragma: no cover - torch is a dependency of the package
    torch = None


def bitstream_dir(board: BoardConfig) -> Path:
    """Where the bitstream of ``board`` is looked for (``$LORA_QTA_BITSTREAMS/<board>``)."""
    root = Path(os.environ.get("LORA_QTA_BITSTREAMS", REPO_BITSTREAMS))
    return root / board.name


def find_bitstream(board: BoardConfig, path: str | os.PathLike | None = None) -> Path:
    """The ``.bit`` of ``board`` after checking its ``.hwh`` and ``manifest.json``."""
    bit = Path(path) if path else bitstream_dir(board) / f"qta_{board.name}.bit"
    if not bit.is_file():
        raise BitstreamNotFoundError(
            f"no bitstream at {bit}: build it on a machine with Vivado/Vitis HLS 2024.2 with "
            f"`scripts/build_bitstream.sh {board.name}` and copy bitstreams/{board.name}/ to the board "
            "(see bitstreams/README.md), or use the emulation (backend='emulation', on the command line "
            "--backend emulation)")
    if not bit.with_suffix(".hwh").is_file():
        raise BitstreamNotFoundError(f"{bit.with_suffix('.hwh')} is missing; PYNQ needs the .hwh beside the .bit")
    check_manifest(board, bit.parent / "manifest.json")
    return bit


def check_manifest(board: BoardConfig, manifest: Path) -> dict:
    """Refuse a bitstream built from another configuration than this package's."""
    if not manifest.is_file():
        raise StaleBitstreamError(f"{manifest} is missing: cannot tell which configuration the bitstream "
                                  f"implements; rebuild it with scripts/build_bitstream.sh {board.name}")
    data = json.loads(manifest.read_text())
    want = board_digest(board)
    if data.get("board") != board.name or data.get("config_digest") != want:
        raise StaleBitstreamError(
            f"bitstream in {manifest.parent} was built for board {data.get('board')!r} with configuration "
            f"{data.get('config_digest')!r}, but this package is {board.name!r} {want!r}; rebuild it with "
            f"scripts/build_bitstream.sh {board.name}")
    return data


def resolve_backend(board: BoardConfig, backend: str | None = None,
                    bitstream: str | os.PathLike | None = None) -> str:
    """What ``backend`` (default ``$LORA_QTA_BACKEND`` or ``auto``) means on this machine for
    ``board``: ``board``, ``fast`` or ``csim`` (``auto``: the board when PYNQ finds one and the
    bitstream is there, else ``fast``; ``emulation`` is ``fast``)."""
    backend = requested_backend(backend)
    if backend == "auto":
        found = True
        try:
            find_bitstream(board, bitstream)
        except BitstreamNotFoundError:
            found = False
        backend = "board" if on_target() and found else "fast"
    return "fast" if backend == "emulation" else backend


def fixed_point_scale(scale: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(multiplier, shift) with multiplier * 2**-shift ~= scale, multiplier < 2**31.

    Scales must be positive; the multiplier keeps 30-31 significant bits.
    """
    s = np.asarray(scale, dtype=np.float64)
    if np.any(~np.isfinite(s)) or np.any(s <= 0):
        raise LimitError("requantization scales must be finite and positive")
    exp = np.floor(np.log2(s)).astype(np.int64)
    shift = np.clip(30 - exp, 0, 62)
    mult = np.round(s * np.exp2(shift.astype(np.float64))).astype(np.int64)
    mult = np.minimum(mult, 2**31 - 1)
    return mult, shift


@dataclass
class GemmResult:
    """One call's output and its figures.

    ``cycles_model`` is the kernel's modelled count (trip counts and the overlap recurrence, the
    planner's formula); ``cycles_measured`` the kernel's counter process on a board, ``None`` where
    it cannot measure (emulation, C-simulation); ``cycles`` is the measured count where there is
    one, else the modelled one. ``wall_s`` is host time from ap_start to ap_done. ``sat_count``
    and ``amax`` are the kernel's outputs (saturated outputs, max |value before saturation|).
    ``calls`` is the number of kernel calls: more than one when a dimension of a GEMM exceeded the
    configured limits and :meth:`Accelerator.gemm` split it (cycles and times are then sums).
    """

    output: Any
    cycles: int
    cycles_model: int
    cycles_measured: int | None
    dataflow: str
    split: int
    tiles: tuple[int, int, int]
    utilization: float
    bytes_moved: int
    saturated: bool
    sat_count: int
    amax: int
    bound: str
    roofline_fraction: float
    wall_s: float
    calls: int = 1

    @property
    def partitioned(self) -> bool:
        """Whether the array ran as independent sub-arrays."""
        return self.split != 0


class Resident:
    """An INT8 matrix placed in device memory once by :meth:`Accelerator.resident` (a
    ``pynq.allocate``'d buffer: CMA memory on a board, emulated DDR here), its rows padded to the
    AXI beat. Pass it as ``b`` of :meth:`~Accelerator.gemm` / :meth:`~Accelerator.batched_gemm`
    or ``w`` of :meth:`~Accelerator.conv2d`: the kernel reads it where it is, no copy is made.
    ``shape`` is the matrix as stored; :meth:`Accelerator.free` releases it."""

    def __init__(self, owner: "Accelerator", name: str, shape: tuple[int, int], buffer: Any, ld: int):
        self.owner, self.name, self.shape, self.ld = owner, name, shape, ld
        self.nbytes = int(buffer.nbytes)
        self._buffer: Any = buffer

    @property
    def freed(self) -> bool:
        """Whether :meth:`Accelerator.free` released it."""
        return self._buffer is None

    def buffer(self, acc: "Accelerator") -> Any:
        """Its device buffer, after checking that it is still placed and belongs to ``acc``."""
        if self._buffer is None:
            raise ResidentOperandError(f"resident operand {self.name!r} was freed; place it again with "
                                       "Accelerator.resident(...) before using it")
        if acc is not self.owner:
            raise ResidentOperandError(f"resident operand {self.name!r} lives in another accelerator's memory; "
                                       "place it with this accelerator's resident(...)")
        return self._buffer

    def __repr__(self) -> str:
        state = "freed" if self.freed else f"{self.nbytes} bytes"
        return f"Resident({self.name!r}, {self.shape[0]}x{self.shape[1]} int8, {state})"


def _blocks(dim: int, limit: int) -> list[tuple[int, int]]:
    """``dim`` cut into the fewest balanced blocks of at most ``limit``: (start, end) pairs."""
    nb = -(-dim // limit)
    edges = [dim * i // nb for i in range(nb + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _check_integers(name: str, value: Any) -> None:
    """The requantizer's multiplier and shift are integers: refuse floats (they would be truncated)."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu" or isinstance(value, (bool, np.bool_)):
        raise InputDTypeError(f"{name} must be an integer (or integers), got {value!r}: the kernel's requantizer "
                              "takes a fixed-point scale; convert a float scale with "
                              "fixed_point_scale(scale) -> (mult, shift)")


def _as_numpy(x: Any, name: str, ndim: tuple[int, ...] = (2,)) -> tuple[np.ndarray, bool]:
    """(array, was_torch); clear errors for dtype, rank and layout."""
    is_torch = torch is not None and isinstance(x, torch.Tensor)
    if is_torch:
        if x.device.type != "cpu":
            raise InputLayoutError(f"{name} is on {x.device}; move it to the CPU first")
        if not x.is_contiguous():
            raise InputLayoutError(f"{name} is not contiguous; call .contiguous() first")
        arr = x.detach().numpy()
    elif isinstance(x, np.ndarray):
        arr = x
    else:
        raise InputDTypeError(f"{name} must be a numpy array or torch tensor, not {type(x).__name__}")
    if arr.ndim not in ndim:
        raise InputShapeError(f"{name} must be {' or '.join(f'{d}-D' for d in ndim)}, got shape {tuple(arr.shape)}")
    if not arr.flags.c_contiguous:
        raise InputLayoutError(f"{name} is not C-contiguous (strides {arr.strides}); "
                               "pass np.ascontiguousarray(...) or use trans_a/trans_b instead of .T")
    return arr, is_torch


def check_alignment(board: BoardConfig, call: GemmCall, offsets: dict[str, int]) -> None:
    """Raise :class:`KernelArgumentError` naming what breaks kernel v2's alignment rules: every
    operand offset and leading dimension (in bytes) and batch stride a multiple of the AXI beat,
    every tile a multiple of the beat or the whole dimension, and no two batch items of an
    accumulating call sharing bytes of C."""
    beat = board.axi_bytes
    problems = []
    for name in ("a", "b", "c") + (("scales",) if call.scaled else ()):
        off = offsets.get(name, 0)
        if off % beat:
            problems.append(f"operand {name} at offset 0x{off:X} is not a multiple of the {beat}-byte beat")
    for name, value in (("lda", call.lda), ("ldb", call.ldb), ("ldc * element size", call.ldc * call.out_bytes),
                        ("stride_a", call.stride_a), ("stride_b", call.stride_b), ("stride_c", call.stride_c)):
        if value % beat:
            problems.append(f"{name} = {value} bytes is not a multiple of the {beat}-byte beat (pad it)")
    if call.c_items_overlap:
        problems.append(f"the {call.batch} batch items accumulate into overlapping C (stride_c = {call.stride_c} "
                        f"bytes, one item spans {((call.m - 1) * call.ldc + call.n) * call.out_bytes}): "
                        "give every item its own C or make separate calls")
    for name, t, d in (("tile_m", call.tile_m, call.m), ("tile_n", call.tile_n, call.n), ("tile_k", call.tile_k, call.k)):
        if t % beat and t < d:
            problems.append(f"{name} = {t} is neither a multiple of the {beat}-byte beat nor the whole dimension {d}")
    if problems:
        raise KernelArgumentError(f"{board.name}: " + "; ".join(problems))


def board_bitstream(board: BoardConfig, bitstream: str | os.PathLike | None = None) -> Path:
    """The bitstream that ``backend='board'`` loads for ``board``, after checking that this
    machine is a PYNQ board: a PC or a missing bitstream is refused here, before any work."""
    if not on_target():
        raise BackendError("backend='board' needs a PYNQ board (pynq found none); "
                           "use backend='emulation' on a PC (on the command line --backend emulation)")
    return find_bitstream(board, bitstream)


def on_target() -> bool:
    """Whether this machine is a PYNQ board: ``pynq.ps.ON_TARGET`` (pynq 3.1 and later) or, on
    pynq 3.0, which lacks it, the same device-tree entry that pynq 3.1 reads."""
    on = getattr(pynq.ps, "ON_TARGET", None)
    return os.path.isfile("/proc/device-tree/chosen/pynq_board") if on is None else bool(on)


class Accelerator:
    """The lora-qta accelerator on a board or emulated.

    ``backend``: ``auto`` (a board when one is found with its bitstream, else emulation),
    ``board``, ``emulation`` (= ``fast``), ``fast`` or ``csim``. The environment variables
    ``LORA_QTA_BOARD`` and ``LORA_QTA_BACKEND`` supply defaults.
    """

    RESIDENT_LIMIT = 256 << 20
    """Default budget (bytes) of resident operands (:meth:`resident`)."""

    def __init__(self, board: str | None = None, backend: str | None = None,
                 bitstream: str | os.PathLike | None = None, timeout: float = 60.0,
                 resident_limit: int = RESIDENT_LIMIT):
        self.board = resolve_board(board)
        backend = resolve_backend(self.board, backend, bitstream)
        self.backend = backend
        self.timeout = timeout
        if backend == "board":
            self.overlay = pynq.Overlay(str(board_bitstream(self.board, bitstream)))
            self.ip: QtaGemmDriver = self.overlay.qta_gemm_0
            self.device = self.overlay.device
        else:
            self.overlay = None
            self.device = EmulatedDevice(self.board.name, engine=backend)
            self.ip = QtaGemmDriver(self.device.ip_description())
        # unified addressing: the HP ports see physical DDR (base 0); the emulated DDR has its own base
        self.memory_base = int(getattr(self.device, "memory_base", 0))
        self.measures_cycles = bool(getattr(self.device, "measures_cycles", True))
        self._buffers: dict[str, Any] = {}
        self._layouts: dict[tuple, tuple[Any, np.ndarray, int, int]] = {}  # _padded's views of _buffers
        self.calls = 0
        self.resident_limit = int(resident_limit)
        self._residents: list[Resident] = []

    # -- buffers -----------------------------------------------------------------------
    def _buffer(self, role: str, nbytes: int) -> Any:
        """A reusable ``pynq.allocate``'d byte buffer of at least ``nbytes`` (a view of it)."""
        buf = self._buffers.get(role)
        if buf is None or buf.nbytes < nbytes:
            cap = max(4096, int(nbytes * 1.25))
            buf = pynq.allocate((cap,), dtype=np.uint8, target=self.device)
            self._buffers[role] = buf
            self._layouts = {k: v for k, v in self._layouts.items() if k[0] != role}  # views of the old one
        return buf[:max(nbytes, 1)]

    LAYOUTS = 512
    """Padded layouts whose buffer views :meth:`_padded` keeps (a training step uses a few hundred)."""

    def _padded(self, role: str, items: int, rows: int, cols: int, dtype) -> tuple[Any, np.ndarray, int, int]:
        """A device buffer holding ``items`` matrices of ``rows`` x ``cols`` ``dtype`` elements
        with each row padded to the AXI beat: (buffer, its host view items x rows x ld, ld in
        elements, bytes per item). The views of a layout are made once and kept while the role's
        buffer stays the same (slicing a ``PynqBuffer`` costs more than a small call's copy)."""
        key = (role, items, rows, cols, np.dtype(dtype))
        found = self._layouts.get(key)
        if found is not None and found[0].base is self._buffers[role]:
            return found
        item = np.dtype(dtype).itemsize
        ld_bytes = ceil_to(max(cols * item, 1), self.board.axi_bytes)
        stride = rows * ld_bytes
        buf = self._buffer(role, items * stride)
        view = np.ndarray((items, rows, ld_bytes // item), dtype=dtype, buffer=buf, offset=0,
                          strides=(stride, ld_bytes, item))
        if len(self._layouts) >= self.LAYOUTS:
            self._layouts.clear()
        self._layouts[key] = (buf, view, ld_bytes // item, stride)
        return self._layouts[key]

    def _upload(self, role: str, arr: np.ndarray) -> tuple[Any, int, int]:
        """``arr`` (items x rows x cols) into a padded device buffer: (buffer, ld, bytes per item)."""
        buf, view, ld, stride = self._padded(role, *arr.shape, arr.dtype)
        view[:, :, :arr.shape[2]] = arr
        buf.flush()
        return buf, ld, stride

    def offset(self, buf: Any) -> int:
        """The byte offset of the device buffer ``buf`` from :attr:`memory_base`: what
        :meth:`run_call` takes for an operand."""
        return int(buf.device_address) - self.memory_base

    @property
    def kernel_seconds(self) -> float:
        """Seconds the emulated kernel has computed so far (its engine's time,
        :attr:`~lora_qta.runtime.emulation.EmulatedDevice.kernel_seconds`); 0 on a board, whose
        kernel runs in the programmable logic."""
        return float(getattr(self.device, "kernel_seconds", 0.0))

    # -- resident operands -------------------------------------------------------------
    @property
    def resident_bytes(self) -> int:
        """Device memory held by resident operands (bytes, rows padded to the beat)."""
        return sum(r.nbytes for r in self._residents)

    def resident(self, w: Any, name: str = "operand") -> Resident:
        """Place the INT8 matrix ``w`` (2-D array or tensor, as it will be passed: the stored B of
        a GEMM, or the weights of a convolution) in device memory once, its rows padded to the
        AXI beat, and return the handle to pass instead of it. Raises
        :class:`~lora_qta.errors.DeviceMemoryError` when the residents would exceed
        ``resident_limit`` bytes."""
        arr, _ = _as_numpy(w, name)
        if arr.dtype != np.int8:
            raise InputDTypeError(f"{name} must be int8 to be resident, got {arr.dtype}; quantize it first")
        rows, cols = arr.shape
        ld = ceil_to(max(cols, 1), self.board.axi_bytes)
        need = rows * ld
        if self.resident_bytes + need > self.resident_limit:
            raise DeviceMemoryError(
                f"placing {name} ({rows}x{cols} int8, {need} bytes padded) would hold "
                f"{self.resident_bytes + need} bytes of resident operands, above the budget of "
                f"{self.resident_limit}; free residents (Accelerator.free) or raise resident_limit")
        buf = pynq.allocate((max(need, 1),), dtype=np.uint8, target=self.device)
        view = np.ndarray((rows, ld), dtype=np.int8, buffer=buf, strides=(ld, 1))
        view[:, :cols] = arr
        view[:, cols:] = 0
        buf.flush()
        handle = Resident(self, name, (rows, cols), buf, ld)
        self._residents.append(handle)
        return handle

    def free(self, handle: Resident | None = None) -> None:
        """Release a resident operand (``None``: every one of this accelerator); its handle
        raises :class:`~lora_qta.errors.ResidentOperandError` if used afterwards."""
        for r in ([handle] if handle is not None else list(self._residents)):
            buf = r.buffer(self)
            r._buffer = None
            self._residents.remove(r)
            if hasattr(buf, "freebuffer"):
                buf.freebuffer()

    def write_rows(self, handle: Resident, start: int, rows: Any) -> int:
        """Overwrite rows ``start ..`` of a resident operand in place with the INT8 matrix
        ``rows`` (same column count) and flush only those rows to device memory: a part of a
        resident matrix that changes during the run (e.g. lora_A stacked under a frozen weight)
        is rewritten without placing or copying the rest again. Returns the bytes written
        (rows padded to the beat)."""
        arr, _ = _as_numpy(rows, f"rows of {handle.name}")
        if arr.dtype != np.int8:
            raise InputDTypeError(f"rows written into {handle.name} must be int8, got {arr.dtype}; quantize them first")
        total, cols = handle.shape
        if arr.shape[1] != cols or not 0 <= start <= total - arr.shape[0]:
            raise InputShapeError(f"{arr.shape[0]}x{arr.shape[1]} rows at row {start} do not fit the resident "
                                  f"{handle.name} ({total}x{cols})")
        buf = handle.buffer(self)
        part = buf[start * handle.ld:(start + arr.shape[0]) * handle.ld]
        view = np.ndarray((arr.shape[0], handle.ld), dtype=np.int8, buffer=part, strides=(handle.ld, 1))
        view[:, :cols] = arr
        part.flush()
        return int(part.nbytes)

    def _operand_b(self, b: Any, name: str, ndim: tuple[int, ...]) -> tuple[np.ndarray | Resident, bool]:
        """A resident handle as it is (checked), else :func:`_as_numpy`."""
        if isinstance(b, Resident):
            b.buffer(self)
            return b, False
        return _as_numpy(b, name, ndim)

    # -- the API -----------------------------------------------------------------------
    def gemm(self, a: Any, b: Any, *, trans_a: bool = False, trans_b: bool = False, dataflow: str = "auto",
             split: int | None = None, out: str = "int32", mult: int | Sequence[int] | np.ndarray = 1,
             shift: int | Sequence[int] | np.ndarray = 0, scale_mode: str = "tensor",
             rounding: str = "nearest_even", seed: int = 0, c: Any = None, strict: bool = False,
             k_bucket: int | None = None) -> GemmResult:
        """C = epilogue(op(A) . op(B) [+ c]) on the accelerator.

        ``a``, ``b``: INT8 2-D arrays/tensors as stored (``trans_*`` selects op()); ``b`` may be a
        :class:`Resident` (:meth:`resident`), read in place. ``dataflow``:
        ``auto``, ``ws``, ``os`` or ``partitioned``; ``split`` forces a partition exponent.
        ``out``: ``int32`` or ``int8``; for INT8, ``mult``/``shift`` are the fixed-point scale,
        per tensor (ints) or per output row/column (1-D, with ``scale_mode`` ``row``/``col``),
        ``rounding`` ``nearest_even`` or ``stochastic`` (with ``seed``). ``c`` accumulates into
        an existing output (INT32 for ``int32``, INT8 for ``int8``). ``strict`` raises
        :class:`SaturationError` when an output saturates. ``k_bucket`` (buckets per octave of K):
        for GEMMs whose K changes from call to call, plan once per bucket of K
        (:func:`~lora_qta.runtime.planner.plan`).

        A GEMM with M, N or K beyond the board's limits (``max_m``, ``max_n``, ``max_k``) runs as
        several kernel calls whose results are combined exactly on the host
        (:meth:`_gemm_in_pieces`; ``GemmResult.calls`` says how many).
        """
        a_np, a_torch = _as_numpy(a, "a")
        b_np, _ = self._operand_b(b, "b", (2,))
        m = a_np.shape[1] if trans_a else a_np.shape[0]
        n = b_np.shape[0] if trans_b else b_np.shape[1]
        c_np = None
        if c is not None:
            c_np = _as_numpy(c, "c")[0]
            if c_np.shape != (m, n):
                raise InputShapeError(f"c must be {m}x{n} to accumulate into, got {c_np.shape}")
        k = a_np.shape[0] if trans_a else a_np.shape[1]
        k2 = b_np.shape[1] if trans_b else b_np.shape[0]
        bd = self.board
        if k == k2 and (m > bd.max_m or n > bd.max_n or k > bd.max_k):
            if isinstance(b_np, Resident):
                raise LimitError(f"the {m}x{k}x{n} GEMM exceeds the {bd.name} limits and runs in pieces, which "
                                 f"a resident b ({b_np.name}) cannot be cut into; pass b as an array")
            return self._gemm_in_pieces(a_np, b_np, a_torch, (m, k, n), trans_a=trans_a, trans_b=trans_b,
                                        dataflow=dataflow, split=split, out=out, mult=mult, shift=shift,
                                        scale_mode=scale_mode, rounding=rounding, seed=seed, c_np=c_np,
                                        strict=strict)
        if c_np is not None:
            c_np = c_np[None]
        r = self.batched_gemm(a_np[None], b_np if isinstance(b_np, Resident) else b_np[None], trans_a=trans_a, trans_b=trans_b, dataflow=dataflow,
                              split=split, out=out, mult=mult, shift=shift, scale_mode=scale_mode,
                              rounding=rounding, seed=seed, c=c_np, strict=strict, k_bucket=k_bucket)
        r.output = r.output[0]
        if a_torch:
            r.output = torch.from_numpy(np.ascontiguousarray(r.output))
        return r

    def _gemm_in_pieces(self, a_np: np.ndarray, b_np: np.ndarray, a_torch: bool, mkn: tuple[int, int, int], *,
                        trans_a: bool, trans_b: bool, dataflow: str, split: int | None, out: str, mult, shift,
                        scale_mode: str, rounding: str, seed: int, c_np: np.ndarray | None,
                        strict: bool) -> GemmResult:
        """A GEMM with M, N or K beyond the configured limits, as several kernel calls.

        Each piece (balanced blocks of M, N and K within the limits) runs on the kernel with INT32
        output, which is exact; the pieces' K partial sums are added exactly in int64 on the host,
        and the epilogue (accumulating ``c``, requantization with the kernel's rounding, including
        its stochastic bits at the output's global indices, saturation, ``sat_count`` and ``amax``)
        runs on the host with the kernel's integer arithmetic. The result equals what one kernel
        call without the limits would compute.
        """
        from .fast import requantize  # the kernel's epilogue arithmetic, vectorized on int64

        m, k, n = mkn
        out8, mult_t, shift_t, scales = self._epilogue_args(m, n, out, mult, shift, scale_mode, rounding)
        if c_np is not None and c_np.dtype != (np.int8 if out8 else np.int32):
            raise InputDTypeError(f"c must be {'int8' if out8 else 'int32'} for out={out!r}, got {c_np.dtype}")
        if not 0 <= shift_t <= 62 or abs(mult_t) >= 2**31:
            raise LimitError(f"the per-tensor shift must be 0..62 and the multiplier fit INT32, got "
                             f"mult={mult_t}, shift={shift_t}")
        bd = self.board
        acc = np.zeros((m, n), dtype=np.int64)
        pieces: list[GemmResult] = []
        for i0, i1 in _blocks(m, bd.max_m):
            for j0, j1 in _blocks(n, bd.max_n):
                for k0, k1 in _blocks(k, bd.max_k):
                    ap = a_np[k0:k1, i0:i1] if trans_a else a_np[i0:i1, k0:k1]
                    bp = b_np[j0:j1, k0:k1] if trans_b else b_np[k0:k1, j0:j1]
                    r = self.gemm(np.ascontiguousarray(ap), np.ascontiguousarray(bp), trans_a=trans_a,
                                  trans_b=trans_b, dataflow=dataflow, split=split)
                    acc[i0:i1, j0:j1] += r.output
                    pieces.append(r)
        if not out8:
            total = acc + (c_np.astype(np.int64) if c_np is not None else 0)
            lo, hi, out_dtype = -(2**31), 2**31 - 1, np.int32
        else:
            if scales is None:
                mu, sh = np.int64(mult_t), np.int64(shift_t)
            else:
                pairs = scales.reshape(-1, 2).astype(np.int64)
                shape = (m, 1) if scale_mode == "row" else (1, n)
                mu, sh = pairs[:, 0].reshape(shape), effective_shift(pairs[:, 1]).reshape(shape)
            stochastic = rounding == "stochastic"
            bits = None
            if stochastic:
                rows, cols = np.meshgrid(np.arange(m), np.arange(n), indexing="ij", sparse=True)
                bits = rounding_bits(int(seed) & 0xFFFFFFFF, rows, cols, n)
            if np.abs(acc).max(initial=0) < 2**31:  # acc * mult fits int64, as in the kernel
                total = requantize(acc, mu, sh, stochastic, bits)
            else:  # K beyond the INT32 range of a dot product: exact Python integers
                full = (m, n)
                total = reference_requantize(acc, np.broadcast_to(mu, full), np.broadcast_to(sh, full), stochastic,
                                             np.broadcast_to(bits if bits is not None else 0, full))
            if c_np is not None:
                total = total + c_np.astype(np.int64)
            lo, hi, out_dtype = -128, 127, np.int8
        clipped = np.clip(total, lo, hi)
        nsat = int(np.count_nonzero(clipped != total))
        amax = min(int(np.abs(total).max(initial=0)), AMAX_CAP)
        if strict and nsat:
            raise SaturationError(f"{nsat} outputs of the {m}x{k}x{n} GEMM ({len(pieces)} kernel calls) saturated "
                                  f"to {'INT8' if out8 else 'INT32'} (max |value| {amax}); lower the scale or "
                                  "raise the shift")
        result = clipped.astype(out_dtype)
        cycles = sum(p.cycles for p in pieces)
        measured = [p.cycles_measured for p in pieces]
        first = max(pieces, key=lambda p: p.cycles)
        return GemmResult(
            output=torch.from_numpy(result) if a_torch else result, cycles=cycles,
            cycles_model=sum(p.cycles_model for p in pieces),
            cycles_measured=None if None in measured else sum(measured),
            dataflow=first.dataflow, split=first.split, tiles=first.tiles,
            utilization=m * n * k / (cycles * bd.pes), bytes_moved=sum(p.bytes_moved for p in pieces),
            saturated=nsat > 0, sat_count=min(nsat, 2**32 - 1), amax=amax, bound=first.bound,
            roofline_fraction=sum(p.roofline_fraction * p.cycles for p in pieces) / cycles,
            wall_s=sum(p.wall_s for p in pieces), calls=len(pieces))

    def batched_gemm(self, a: Any, b: Any, *, trans_a: bool = False, trans_b: bool = False,
                     dataflow: str = "auto", split: int | None = None, out: str = "int32",
                     mult: int | Sequence[int] | np.ndarray = 1, shift: int | Sequence[int] | np.ndarray = 0,
                     scale_mode: str = "tensor", rounding: str = "nearest_even", seed: int = 0, c: Any = None,
                     strict: bool = False, k_bucket: int | None = None) -> GemmResult:
        """``C[i] = epilogue(op(A[i]) . op(B[i]) [+ c[i]])`` for every item ``i`` of a batch, in one
        kernel call. ``a``: batch x stored A (3-D); ``b``: batch x stored B (3-D), or one stored B
        (2-D) that every item shares; ``c``: batch x m x n. Options as :meth:`gemm`; per-row or
        per-column scales are shared by the items. The output is batch x m x n (a tensor when
        ``a`` is one)."""
        a_np, a_torch = _as_numpy(a, "a", (3,))
        b_np, _ = self._operand_b(b, "b", (2, 3))
        b_shape = b_np.shape if isinstance(b_np, Resident) else b_np.shape[-2:]
        shared_b = len(b_np.shape) == 2
        if shared_b and not isinstance(b_np, Resident):
            b_np = b_np[None]
        elif not shared_b and b_np.shape[0] != a_np.shape[0]:
            raise InputShapeError(f"a holds {a_np.shape[0]} items but b {b_np.shape[0]}; pass one b (2-D) to share it")
        for name, arr in (("a", a_np), ("b", b_np)):
            if not isinstance(arr, Resident) and arr.dtype != np.int8:
                raise InputDTypeError(f"{name} must be int8, got {arr.dtype}; quantize it first")
        m, k = (a_np.shape[2], a_np.shape[1]) if trans_a else a_np.shape[1:]
        k2, n = (b_shape[1], b_shape[0]) if trans_b else b_shape
        if k != k2:
            raise InputShapeError(
                f"inner dimensions differ: op(a) is {m}x{k} (a {a_np.shape[1:]}, trans_a={trans_a}) but "
                f"op(b) is {k2}x{n} (b {tuple(b_shape)}, trans_b={trans_b})")
        batch = a_np.shape[0]
        return self._run(a_np, b_np, batch, m, n, k, trans_a, trans_b, None, shared_b, dataflow, split, out, mult,
                         shift, scale_mode, rounding, seed, c, strict, a_torch, k_bucket)

    def conv2d(self, x: Any, w: Any, *, kernel_size: int | tuple[int, int] = 3, stride: int = 1, padding: int = 0,
               dilation: int = 1, out_size: tuple[int, int] | None = None, trans_w: bool = False,
               dataflow: str = "auto", split: int | None = None, out: str = "int32",
               mult: int | Sequence[int] | np.ndarray = 1, shift: int | Sequence[int] | np.ndarray = 0,
               scale_mode: str = "tensor", rounding: str = "nearest_even", seed: int = 0, c: Any = None,
               strict: bool = False) -> GemmResult:
        """A convolution as an implicit GEMM: the kernel reads the NHWC INT8 map ``x`` (images x H x
        W x cin) through its window (no im2col copy is made).

        ``w``: the weights as a (K = kh*kw*cin) x cout matrix with K in (ky, kx, ci) order, or
        cout x K with ``trans_w``. ``stride``, ``padding`` (top/left; bottom/right follow from
        ``out_size``), ``dilation``: input dilation 1, or 2 for the input gradient of a stride-2
        convolution (the input is read at the even coordinates of a map twice as large).
        ``out_size`` (Ho, Wo) defaults to PyTorch's output size. Channels are padded to the AXI beat
        with zeros (and the weights' K rows with them). Epilogue options as :meth:`gemm`; ``c`` is
        images x Ho x Wo x cout. The output is images x Ho x Wo x cout."""
        x_np, x_torch = _as_numpy(x, "x", (4,))
        w_np, _ = self._operand_b(w, "w", (2,))
        for name, arr in (("x", x_np), ("w", w_np)):
            if not isinstance(arr, Resident) and arr.dtype != np.int8:
                raise InputDTypeError(f"{name} must be int8, got {arr.dtype}; quantize it first")
        kh, kw = (kernel_size, kernel_size) if np.isscalar(kernel_size) else tuple(kernel_size)
        imgs, h, wd, cin = x_np.shape
        k = kh * kw * cin
        kdim, cout = (w_np.shape[1], w_np.shape[0]) if trans_w else w_np.shape
        if kdim != k:
            raise InputShapeError(f"w must have K = kh*kw*cin = {kh}*{kw}*{cin} = {k} rows"
                                  f"{' (columns with trans_w)' if trans_w else ''}, got {w_np.shape}")
        if dilation not in (1, 2):
            raise LimitError(f"input dilation must be 1 or 2, not {dilation}")
        ho, wo = out_size or (ConvGeometry.output_size(h, kh, stride, padding, dilation),
                              ConvGeometry.output_size(wd, kw, stride, padding, dilation))
        if min(ho, wo) < 1:
            raise InputShapeError(f"a {kh}x{kw} window with padding {padding} does not fit the {h}x{wd} input")
        beat = self.board.axi_bytes
        cin_p = ceil_to(cin, beat)
        if cin_p != cin and isinstance(w_np, Resident):
            raise InputShapeError(f"the convolution has {cin} input channels, not a multiple of the {beat}-byte beat: "
                                  f"its weights are padded per call, which a resident w ({w_np.name}) cannot be; "
                                  "pass w as an array")
        if cin_p != cin:  # pad the channels (and the weights' K rows) with zeros
            x_np = np.concatenate([x_np, np.zeros(x_np.shape[:3] + (cin_p - cin,), np.int8)], axis=3)
            wk = (w_np.T if trans_w else w_np).reshape(kh, kw, cin, cout)
            wk = np.concatenate([wk, np.zeros((kh, kw, cin_p - cin, cout), np.int8)], axis=2).reshape(-1, cout)
            w_np = np.ascontiguousarray(wk.T) if trans_w else wk
        geo = ConvGeometry(h=h, w=wd, ho=ho, wo=wo, cin=cin_p, kh=kh, kw=kw, stride=stride, pad=padding, dil=dilation)
        m = imgs * ho * wo
        c_np = None
        if c is not None:
            c_np = _as_numpy(c, "c", (4,))[0]
            if c_np.shape != (imgs, ho, wo, cout):
                raise InputShapeError(f"c must be {imgs}x{ho}x{wo}x{cout} to accumulate into, got {c_np.shape}")
            c_np = c_np.reshape(1, m, cout)
        r = self._run(x_np.reshape(1, imgs * h * wd, cin_p), w_np if isinstance(w_np, Resident) else w_np[None], 1, m, cout, geo.k, False, trans_w, geo, True,
                      dataflow, split, out, mult, shift, scale_mode, rounding, seed, c_np, strict, x_torch)
        r.output = r.output.reshape(imgs, ho, wo, cout)
        return r

    @staticmethod
    def _epilogue_args(m: int, n: int, out: str, mult, shift, scale_mode: str,
                       rounding: str) -> tuple[bool, int, int, np.ndarray | None]:
        """Check the epilogue options: (out8, per-tensor mult, per-tensor shift, the per-row/column
        (mult, shift) pairs as a 1 x 1 x 2*count INT32 array or None)."""
        if out not in ("int32", "int8"):
            raise LimitError(f"out must be 'int32' or 'int8', not {out!r}")
        if rounding not in ROUNDINGS:
            raise LimitError(f"rounding must be one of {ROUNDINGS}, not {rounding!r}")
        if scale_mode not in SCALE_MODES:
            raise LimitError(f"scale_mode must be one of {SCALE_MODES}, not {scale_mode!r}")
        for name, v in (("mult", mult), ("shift", shift)):
            _check_integers(name, v)
        out8 = out == "int8"
        if out8 and scale_mode != "tensor":
            cnt = m if scale_mode == "row" else n
            mu, sh = np.asarray(mult, dtype=np.int64), np.asarray(shift, dtype=np.int64)
            if mu.shape != (cnt,) or sh.shape != (cnt,):
                raise InputShapeError(f"scale_mode={scale_mode!r} needs {cnt} multipliers and shifts, "
                                      f"got {mu.shape} and {sh.shape}")
            if np.any(sh < 0) or np.any(sh > 62) or np.any(np.abs(mu) >= 2**31):
                raise LimitError("per-row/column shifts must be 0..62 and multipliers fit INT32")
            return out8, 1, 0, np.stack([mu, sh], axis=1).astype(np.int32).reshape(1, 1, 2 * cnt)
        if not np.isscalar(mult) and np.ndim(mult) or not np.isscalar(shift) and np.ndim(shift):
            raise InputShapeError("per-tensor scaling takes scalar mult and shift; "
                                  "use scale_mode='row' or 'col' for vectors")
        return out8, int(mult), int(shift), None

    def _run(self, a_np: np.ndarray, b_np: np.ndarray, batch: int, m: int, n: int, k: int, trans_a: bool,
             trans_b: bool, conv: ConvGeometry | None, shared_b: bool, dataflow: str, split: int | None, out: str,
             mult, shift, scale_mode: str, rounding: str, seed: int, c: Any, strict: bool,
             as_torch: bool, k_bucket: int | None = None) -> GemmResult:
        out8, mult_t, shift_t, scales = self._epilogue_args(m, n, out, mult, shift, scale_mode, rounding)
        out_dtype = np.int8 if out8 else np.int32
        c_np = None
        if c is not None:
            c_np = c if isinstance(c, np.ndarray) and c.ndim == 3 else _as_numpy(c, "c", (3,))[0]
            if c_np.dtype != out_dtype:
                raise InputDTypeError(f"c must be {np.dtype(out_dtype)} for out={out!r}, got {c_np.dtype}")
            if c_np.shape != (batch, m, n):
                raise InputShapeError(f"c must be {batch}x{m}x{n} to accumulate into, got {c_np.shape}")

        abuf, lda, stride_a = self._upload("a", a_np)
        if isinstance(b_np, Resident):  # in device memory already: no copy
            bbuf, ldb, stride_b = b_np.buffer(self), b_np.ld, 0
        else:
            bbuf, ldb, stride_b = self._upload("b", b_np)
        if c_np is not None:
            cbuf, ldc, stride_c = self._upload("c", np.ascontiguousarray(c_np))
            cview = np.ndarray((batch, m, ldc), dtype=out_dtype, buffer=cbuf, strides=(stride_c, ldc * c_np.itemsize,
                                                                                       c_np.itemsize))
        else:
            cbuf, cview, ldc, stride_c = self._padded("c", batch, m, n, out_dtype)
        offsets = {"a": self.offset(abuf), "b": self.offset(bbuf), "c": self.offset(cbuf)}
        if scales is not None:
            sbuf, _, _ = self._upload("scales", scales)
            offsets["scales"] = self.offset(sbuf)
        if conv is not None:
            stride_a = 0
        call = GemmCall(m=m, n=n, k=k, lda=lda, ldb=ldb, ldc=ldc, tile_m=1, tile_n=1, tile_k=1, trans_a=trans_a,
                        trans_b=trans_b, out_int8=out8, accumulate=c_np is not None,
                        scale_mode=scale_mode if out8 else "tensor", stochastic=rounding == "stochastic",
                        mult=mult_t, shift=shift_t, seed=int(seed) & 0xFFFFFFFF, batch=batch,
                        stride_a=stride_a if batch > 1 else 0, stride_b=0 if shared_b or batch == 1 else stride_b,
                        stride_c=stride_c if batch > 1 else 0, conv=conv)
        chosen = planner.plan(self.board, call, dataflow=dataflow, split=split, k_bucket=k_bucket)
        return self._launch(chosen, offsets, cbuf, cview[:, :, :n], strict, as_torch)

    def run_call(self, call: GemmCall, offsets: dict[str, int]) -> RunInfo:
        """Run one planned call on operands already in device memory (``offsets``: byte offsets
        of ``a``, ``b``, ``c`` and, if used, ``scales`` from :attr:`memory_base`), after checking
        the alignment rules (errors name the operand and the beat). Returns the kernel's outputs."""
        check_alignment(self.board, call, offsets)
        if not planner.kernel_accepts(self.board, call):
            raise KernelArgumentError(f"the kernel would reject {call} on {self.board.name} (limits, tiles or "
                                      "buffer capacity); plan the call with lora_qta.runtime.planner.plan")
        info = self.ip.run(self.memory_base, offsets, call, self.timeout)
        self.calls += 1
        if info.status & (1 << config().status["bad_args"]):
            raise KernelArgumentError(f"the kernel rejected {call}; the planner and the bitstream disagree "
                                      "about the limits (stale bitstream?)")
        return info

    def _launch(self, chosen: planner.Plan, offsets: dict[str, int], cbuf: Any, cview: np.ndarray, strict: bool,
                as_torch: bool) -> GemmResult:
        call, rep = chosen.call, chosen.report
        info = self.run_call(call, offsets)
        cbuf.invalidate()
        result = np.array(cview)
        saturated = bool(info.status & (1 << config().status["saturated"]))
        if strict and saturated:
            raise SaturationError(f"{info.sat_count} outputs of the {call.m}x{call.k}x{call.n} GEMM saturated to "
                                  f"{'INT8' if call.out_int8 else 'INT32'} (max |value| {info.amax}); lower the "
                                  "scale or raise the shift")
        measured = info.cycles_measured if self.measures_cycles else None
        cycles = measured if measured else info.cycles_model
        output = torch.from_numpy(result) if as_torch else result
        return GemmResult(
            output=output, cycles=cycles, cycles_model=info.cycles_model, cycles_measured=measured,
            dataflow=call.dataflow, split=call.split, tiles=(call.tile_m, call.tile_n, call.tile_k),
            utilization=call.macs / (cycles * self.board.pes), bytes_moved=rep.bytes_moved, saturated=saturated,
            sat_count=info.sat_count, amax=info.amax, bound=rep.bound,
            roofline_fraction=rep.roofline_cycles / cycles, wall_s=info.wall_s,
        )

    def info(self) -> dict[str, Any]:
        """Configuration and backend, for ``lora-qta info``."""
        b = self.board
        return {
            "board": b.name, "description": b.description, "backend": self.backend,
            "engine": getattr(self.device, "engine_name", "hardware"),
            "array": f"{b.array_rows}x{b.array_cols} PEs", "clock_mhz": b.clock_mhz,
            "axi_bits": b.axi_data_width, "splits": list(b.splits),
            "tiles_max": [b.tile_m_max, b.tile_n_max, b.tile_k_max],
            "limits": [b.max_m, b.max_n, b.max_k], "config_digest": board_digest(b),
            "vlnv": config().vlnv, "kernel_base_address": hex(b.kernel_base_address),
            "axi_ports": b.axi_ports, "memory_base": hex(self.memory_base),
            "cycles_measured": "kernel counter" if self.measures_cycles else "unavailable (emulated: modelled only)",
        }
