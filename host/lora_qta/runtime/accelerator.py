"""The public API: ``Accelerator(board, backend).gemm(a, b, ...)``.

The same code runs on a PYNQ board (``pynq.Overlay`` + :class:`QtaGemmDriver`) and on a PC
(:class:`EmulatedDevice` under the same driver). Each call validates its operands, asks the
planner for tiles and a dataflow, moves the operands into ``pynq.allocate``'d buffers with
flush/invalidate, runs the kernel and returns a :class:`GemmResult`.
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
from ..errors import (BackendError, BitstreamNotFoundError, InputDTypeError, InputLayoutError,
                     InputShapeError, KernelArgumentError, LimitError, SaturationError,
                     StaleBitstreamError)
from ..hw.config import BoardConfig, board_digest, config
from ..hw.call import ROUNDINGS, SCALE_MODES, GemmCall

BACKENDS = ("auto", "board", "emulation", "csim", "fast")
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
            "(see bitstreams/README.md), or use backend='emulation'")
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
    """One GEMM's output and its figures. ``cycles`` come from the kernel's cycle counter
    (modelled schedule in emulation); ``wall_s`` is host time around the run."""

    output: Any
    cycles: int
    dataflow: str
    split: int
    tiles: tuple[int, int, int]
    utilization: float
    bytes_moved: int
    saturated: bool
    bound: str
    roofline_fraction: float
    wall_s: float

    @property
    def partitioned(self) -> bool:
        """Whether the array ran as independent sub-arrays."""
        return self.split != 0


def _as_numpy(x: Any, name: str) -> tuple[np.ndarray, bool]:
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
    if arr.ndim != 2:
        raise InputShapeError(f"{name} must be 2-D, got shape {tuple(arr.shape)}")
    if not arr.flags.c_contiguous:
        raise InputLayoutError(f"{name} is not C-contiguous (strides {arr.strides}); "
                               "pass np.ascontiguousarray(...) or use trans_a/trans_b instead of .T")
    return arr, is_torch


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

    def __init__(self, board: str | None = None, backend: str | None = None,
                 bitstream: str | os.PathLike | None = None, timeout: float = 60.0):
        self.board = config().board(board or os.environ.get("LORA_QTA_BOARD"))
        backend = (backend or os.environ.get("LORA_QTA_BACKEND") or "auto").lower()
        if backend not in BACKENDS:
            raise BackendError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
        if backend == "auto":
            backend = "board" if on_target() and self._has_bitstream(bitstream) else "fast"
        if backend == "emulation":
            backend = "fast"
        self.backend = backend
        self.timeout = timeout
        if backend == "board":
            if not on_target():
                raise BackendError("backend='board' needs a PYNQ board (pynq found none); "
                                   "use backend='emulation' on a PC")
            self.overlay = pynq.Overlay(str(find_bitstream(self.board, bitstream)))
            self.ip: QtaGemmDriver = self.overlay.qta_gemm_0
            self.device = self.overlay.device
        else:
            self.overlay = None
            self.device = EmulatedDevice(self.board.name, engine=backend)
            self.ip = QtaGemmDriver(self.device.ip_description())
        self._buffers: dict[str, Any] = {}
        self.calls = 0

    def _has_bitstream(self, bitstream: str | os.PathLike | None) -> bool:
        try:
            find_bitstream(self.board, bitstream)
            return True
        except BitstreamNotFoundError:
            return False

    # -- buffers -----------------------------------------------------------------------
    def _buffer(self, role: str, nbytes: int) -> Any:
        """A reusable ``pynq.allocate``'d byte buffer of at least ``nbytes`` (a view of it)."""
        buf = self._buffers.get(role)
        if buf is None or buf.nbytes < nbytes:
            cap = max(4096, int(nbytes * 1.25))
            buf = pynq.allocate((cap,), dtype=np.uint8, target=self.device)
            self._buffers[role] = buf
        return buf[:max(nbytes, 1)]

    def _upload(self, role: str, arr: np.ndarray) -> Any:
        view = self._buffer(role, arr.nbytes)
        view[: arr.nbytes] = arr.reshape(-1).view(np.uint8)
        view.flush()
        return view

    # -- the API -----------------------------------------------------------------------
    def gemm(
        self,
        a: Any,
        b: Any,
        *,
        trans_a: bool = False,
        trans_b: bool = False,
        dataflow: str = "auto",
        split: int | None = None,
        out: str = "int32",
        mult: int | Sequence[int] | np.ndarray = 1,
        shift: int | Sequence[int] | np.ndarray = 0,
        scale_mode: str = "tensor",
        rounding: str = "nearest_even",
        seed: int = 0,
        c: Any = None,
        strict: bool = False,
    ) -> GemmResult:
        """C = epilogue(op(A) . op(B) [+ c]) on the accelerator.

        ``a``, ``b``: INT8 2-D arrays/tensors as stored (``trans_*`` selects op()). ``dataflow``:
        ``auto``, ``ws``, ``os`` or ``partitioned``; ``split`` forces a partition exponent.
        ``out``: ``int32`` or ``int8``; for INT8, ``mult``/``shift`` are the fixed-point scale,
        per tensor (ints) or per output row/column (1-D, with ``scale_mode`` ``row``/``col``),
        ``rounding`` ``nearest_even`` or ``stochastic`` (with ``seed``). ``c`` accumulates into
        an existing output (INT32 for ``int32``, INT8 for ``int8``). ``strict`` raises
        :class:`SaturationError` when an output saturates.
        """
        a_np, a_torch = _as_numpy(a, "a")
        b_np, _ = _as_numpy(b, "b")
        for name, arr in (("a", a_np), ("b", b_np)):
            if arr.dtype != np.int8:
                raise InputDTypeError(f"{name} must be int8, got {arr.dtype}; quantize it first")
        m, k = (a_np.shape[1], a_np.shape[0]) if trans_a else a_np.shape
        k2, n = (b_np.shape[1], b_np.shape[0]) if trans_b else b_np.shape
        if k != k2:
            raise InputShapeError(
                f"inner dimensions differ: op(a) is {m}x{k} (a {a_np.shape}, trans_a={trans_a}) but "
                f"op(b) is {k2}x{n} (b {b_np.shape}, trans_b={trans_b})")
        if out not in ("int32", "int8"):
            raise LimitError(f"out must be 'int32' or 'int8', not {out!r}")
        if rounding not in ROUNDINGS:
            raise LimitError(f"rounding must be one of {ROUNDINGS}, not {rounding!r}")
        if scale_mode not in SCALE_MODES:
            raise LimitError(f"scale_mode must be one of {SCALE_MODES}, not {scale_mode!r}")
        out8 = out == "int8"
        scales = None
        if out8 and scale_mode != "tensor":
            cnt = m if scale_mode == "row" else n
            mu, sh = np.asarray(mult, dtype=np.int64), np.asarray(shift, dtype=np.int64)
            if mu.shape != (cnt,) or sh.shape != (cnt,):
                raise InputShapeError(f"scale_mode={scale_mode!r} needs {cnt} multipliers and shifts, "
                                      f"got {mu.shape} and {sh.shape}")
            if np.any(sh < 0) or np.any(sh > 62) or np.any(np.abs(mu) >= 2**31):
                raise LimitError("per-row/column shifts must be 0..62 and multipliers fit INT32")
            scales = np.stack([mu, sh], axis=1).astype(np.int32)
            mult_t, shift_t = 1, 0
        else:
            if not np.isscalar(mult) or not np.isscalar(shift):
                raise InputShapeError("per-tensor scaling takes scalar mult and shift; "
                                      "use scale_mode='row' or 'col' for vectors")
            mult_t, shift_t = int(mult), int(shift)
        c_np = None
        if c is not None:
            c_np, _ = _as_numpy(c, "c")
            want = np.int8 if out8 else np.int32
            if c_np.dtype != want:
                raise InputDTypeError(f"c must be {np.dtype(want)} for out={out!r}, got {c_np.dtype}")
            if c_np.shape != (m, n):
                raise InputShapeError(f"c must be {m}x{n} to accumulate into, got {c_np.shape}")

        call = GemmCall(m=m, n=n, k=k, lda=a_np.shape[1], ldb=b_np.shape[1], ldc=n, tile_m=1, tile_n=1,
                        tile_k=1, trans_a=trans_a, trans_b=trans_b, out_int8=out8, accumulate=c is not None,
                        scale_mode=scale_mode if out8 else "tensor", stochastic=rounding == "stochastic",
                        mult=mult_t, shift=shift_t, seed=int(seed) & 0xFFFFFFFF)
        chosen = planner.plan(self.board, call, dataflow=dataflow, split=split)
        call = chosen.call

        abuf = self._upload("a", a_np)
        bbuf = self._upload("b", b_np)
        out_dtype = np.int8 if out8 else np.int32
        cbytes = m * n * np.dtype(out_dtype).itemsize
        if c_np is not None:
            cbuf = self._upload("c", np.ascontiguousarray(c_np))
        else:
            cbuf = self._buffer("c", cbytes)
        sbuf = self._upload("scales", scales) if scales is not None else None
        pointers = {"a": abuf.device_address, "b": bbuf.device_address, "c": cbuf.device_address,
                    "scales": sbuf.device_address if sbuf is not None else 0}
        info: RunInfo = self.ip.run(pointers, call, self.timeout)
        self.calls += 1
        st = config().status
        if info.status & (1 << st["bad_args"]):
            raise KernelArgumentError(f"the kernel rejected {call}; the planner and the bitstream disagree "
                                      "about the limits (stale bitstream?)")
        cbuf.invalidate()
        result = np.array(cbuf[:cbytes].view(out_dtype).reshape(m, n))
        saturated = bool(info.status & (1 << st["saturated"]))
        if strict and saturated:
            raise SaturationError(f"an output of the {m}x{k}x{n} GEMM saturated to "
                                  f"{'INT8' if out8 else 'INT32'}; lower the scale or raise the shift")
        rep = chosen.report
        output = torch.from_numpy(result) if a_torch else result
        return GemmResult(
            output=output, cycles=info.cycles, dataflow=call.dataflow, split=call.split,
            tiles=(call.tile_m, call.tile_n, call.tile_k),
            utilization=call.macs / (info.cycles * self.board.pes), bytes_moved=rep.bytes_moved,
            saturated=saturated, bound=rep.bound, roofline_fraction=rep.roofline_cycles / info.cycles,
            wall_s=info.wall_s,
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
        }
