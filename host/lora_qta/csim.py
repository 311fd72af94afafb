"""The HLS kernel compiled with g++ (C-simulation) and loaded through ctypes.

As in hls4ml, the emulation path runs the very C++ that Vitis HLS synthesizes: this module
generates ``qta_config.h`` for a board, compiles ``hls/src/*.cpp`` against the ``ap_int``
headers that the ``hls4ml`` package ships, caches the shared library by a hash of its
inputs, and exposes :func:`load` -> :class:`CsimKernel`.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from .hwconfig import BoardConfig, board_digest, config, header

HLS_DIR = Path(__file__).resolve().parents[2] / "hls"
SOURCES = ("src/qta_gemm.cpp", "src/qta_csim_api.cpp")
HEADERS = ("src/qta_gemm.h", "src/qta_blocks.h")
# -Wall -Werror as the project demands; HLS pragmas and loop labels are not errors for g++,
# and the ap_int headers trip -Wmaybe-uninitialized when inlined into our code.
CXXFLAGS = ("-std=c++14", "-O2", "-Wall", "-Werror", "-Wno-unknown-pragmas", "-Wno-unused-label",
            "-Wno-maybe-uninitialized")


class CsimBuildError(RuntimeError):
    """The C-simulation library could not be built (compiler, headers or sources missing)."""


def ap_types_dir() -> Path:
    """The folder of ``ap_int.h`` inside the installed ``hls4ml`` package (not imported)."""
    spec = importlib.util.find_spec("hls4ml")
    if spec is None or not spec.submodule_search_locations:
        raise CsimBuildError("the hls4ml package is not installed; it provides the ap_int headers "
                             "(pip install --no-deps hls4ml==1.3.0)")
    path = Path(list(spec.submodule_search_locations)[0]) / "templates" / "vivado" / "ap_types"
    if not (path / "ap_int.h").is_file():
        raise CsimBuildError(f"ap_int.h not found under {path}")
    return path


def cache_dir() -> Path:
    """Where built libraries are kept (``$LORA_QTA_CACHE`` or ``~/.cache/lora_qta``)."""
    return Path(os.environ.get("LORA_QTA_CACHE", Path.home() / ".cache" / "lora_qta")) / "csim"


def build(board: BoardConfig, out_dir: Path | None = None, testbench: bool = False) -> Path:
    """Compile the kernel for ``board``; returns the shared library (or testbench) path.

    The result is cached under a hash of the sources, the generated header and the flags.
    """
    if not HLS_DIR.is_dir():
        raise CsimBuildError(f"HLS sources not found at {HLS_DIR}: install the package from its "
                             "repository (pip install -e .)")
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        raise CsimBuildError(f"C++ compiler {cxx!r} not found; install g++ (apt-get install g++)")
    hdr = header(board.name)
    files = list(SOURCES) + (["tb/qta_gemm_tb.cpp"] if testbench else [])
    h = hashlib.sha256(hdr.encode())
    for rel in files + list(HEADERS):
        h.update((HLS_DIR / rel).read_bytes())
    h.update(" ".join(CXXFLAGS).encode())
    key = h.hexdigest()[:16]
    out_dir = out_dir or cache_dir() / f"{board.name}-{key}"
    target = out_dir / ("qta_gemm_tb" if testbench else f"libqta_{board.name}.so")
    if target.exists():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "qta_config.h").write_text(hdr)
    srcs = [str(HLS_DIR / f) for f in files if not (testbench and f.endswith("csim_api.cpp"))]
    link = [] if testbench else ["-shared", "-fPIC"]
    with tempfile.NamedTemporaryFile(dir=out_dir, suffix=".tmp", delete=False) as tmp:
        tmp_path = Path(tmp.name)
    cmd = [cxx, *CXXFLAGS, *link, "-isystem", str(ap_types_dir()), f"-I{out_dir}",
           f"-I{HLS_DIR / 'src'}", *srcs, "-o", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tmp_path.unlink(missing_ok=True)
        raise CsimBuildError(f"compiling the kernel failed:\n{' '.join(cmd)}\n{proc.stderr[-4000:]}")
    tmp_path.replace(target)  # atomic: concurrent builders never see a half-written file
    return target


_P = ctypes.c_void_p
_U32 = ctypes.c_uint32


class CsimKernel:
    """The C-simulated ``qta_gemm`` of one board, callable on numpy memory."""

    def __init__(self, board: BoardConfig):
        self.board = board
        self.path = build(board)
        lib = ctypes.CDLL(str(self.path))
        lib.qta_csim_gemm.restype = _U32
        lib.qta_csim_gemm.argtypes = [_P, _P, _P, _P] + [_U32] * 10 + [ctypes.c_int32, _U32, _U32,
                                                                       ctypes.POINTER(ctypes.c_uint64)]
        lib.qta_csim_config_digest.restype = ctypes.c_char_p
        lib.qta_csim_mix32.restype = _U32
        lib.qta_csim_mix32.argtypes = [_U32]
        built_for = lib.qta_csim_config_digest().decode()
        if built_for != board_digest(board):
            raise CsimBuildError(f"{self.path} was built for configuration {built_for}, "
                                 f"not {board_digest(board)}; delete it to rebuild")
        self._lib = lib

    def run(self, a: int, b: int, c: int, scales: int, regs: dict[str, int]) -> tuple[int, int]:
        """Run one call on raw host addresses; ``regs`` holds the scalar registers.

        Returns (status, cycles). The ctypes call releases the GIL while the kernel runs.
        """
        cycles = ctypes.c_uint64(0)
        mult = regs["mult"] - (1 << 32) if regs["mult"] >= 1 << 31 else regs["mult"]
        status = self._lib.qta_csim_gemm(
            a, b, c, scales, regs["m"], regs["n"], regs["k"], regs["lda"], regs["ldb"], regs["ldc"],
            regs["tile_m"], regs["tile_n"], regs["tile_k"], regs["flags"], mult, regs["shift"],
            regs["seed"], ctypes.byref(cycles))
        return int(status), int(cycles.value)

    def mix32(self, x: int) -> int:
        """The kernel's rounding hash of one value."""
        return int(self._lib.qta_csim_mix32(x))


_loaded: dict[str, CsimKernel] = {}


def load(board: BoardConfig) -> CsimKernel:
    """The C-simulated kernel of ``board``, built on first use and cached per process."""
    if board.name not in _loaded:
        _loaded[board.name] = CsimKernel(board)
    return _loaded[board.name]


def address(arr: np.ndarray) -> int:
    """Host address of a numpy array's first element."""
    return int(arr.__array_interface__["data"][0])


def run_testbench(board: BoardConfig) -> subprocess.CompletedProcess:
    """Build and run the C++ testbench of ``board`` (what `vitis_hls` csim runs)."""
    exe = build(board, testbench=True)
    return subprocess.run([str(exe)], capture_output=True, text=True)


__all__ = ["CsimKernel", "CsimBuildError", "build", "load", "run_testbench", "address", "config"]
