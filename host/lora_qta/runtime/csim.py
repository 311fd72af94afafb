"""The HLS kernel compiled with g++ (C-simulation) and loaded through ctypes.

As in hls4ml, the emulation path runs the very C++ that Vitis HLS synthesizes: this module
generates ``qta_config.h`` for a board, compiles the kernel's sources against the ``ap_int``
headers that the ``hls4ml`` package ships, caches the shared library by a hash of its
inputs, and exposes :func:`load` -> :class:`CsimKernel`.

The sources are the package data ``lora_qta.hls`` (setuptools maps it onto the repository's
top-level ``hls/`` folder, and a wheel ships ``src/*.cpp|h`` and ``tb/*.cpp``), or the folder
named by ``$LORA_QTA_HLS_DIR``.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import os
import subprocess
from pathlib import Path

import numpy as np

from ..errors import CsimBuildError
from ..hw.config import BoardConfig, KernelArg, board_digest, config
from ..hw.generate import header
from .cxx import cache_root, compile_to, compiler, compiler_identity

HLS_DIR_ENV = "LORA_QTA_HLS_DIR"
SOURCES = ("src/qta_gemm.cpp", "src/qta_csim_api.cpp")
HEADERS = ("src/qta_gemm.h", "src/qta_blocks.h")
TESTBENCH = "tb/qta_gemm_tb.cpp"
# -Wall -Werror as the project demands; HLS pragmas and loop labels are not errors for g++,
# and the ap_int headers trip -Wmaybe-uninitialized when inlined into our code.
CXXFLAGS = ("-std=c++14", "-O2", "-Wall", "-Werror", "-Wno-unknown-pragmas", "-Wno-unused-label",
            "-Wno-maybe-uninitialized")


def ap_types_dir() -> Path:
    """The folder of ``ap_int.h`` inside the installed ``hls4ml`` package (not imported)."""
    spec = importlib.util.find_spec("hls4ml")
    if spec is None or not spec.submodule_search_locations:
        raise CsimBuildError("the hls4ml package is not installed; it provides the ap_int headers "
                             "(pip install --no-deps hls4ml==1.3.0)")
    path = Path(list(spec.submodule_search_locations)[0]) / "templates" / "vivado" / "ap_types"
    if not (path / "ap_int.h").is_file():
        raise CsimBuildError(f"ap_int.h not found under {path}; reinstall hls4ml (pip install --no-deps hls4ml)")
    return path


def hls_dir() -> Path:
    """The folder of the kernel's sources (``src/``, ``tb/``): ``$LORA_QTA_HLS_DIR``, else the
    package data ``lora_qta.hls``."""
    override = os.environ.get(HLS_DIR_ENV)
    if override:
        path = Path(override)
    else:
        spec = importlib.util.find_spec("lora_qta.hls")
        locations = list(spec.submodule_search_locations or []) if spec else []
        path = Path(locations[0]) if locations else None
    files = SOURCES + HEADERS + (TESTBENCH,)
    if path is None or not all((path / rel).is_file() for rel in files):
        raise CsimBuildError(f"the kernel's sources ({', '.join(files)}) are not in {path}: set "
                             f"{HLS_DIR_ENV} to the repository's hls/ folder, or reinstall the package")
    return path


def cache_dir() -> Path:
    """Where built libraries are kept (``$LORA_QTA_CACHE/csim``, default ``~/.cache/lora_qta/csim``)."""
    return cache_root() / "csim"


def _files(testbench: bool) -> list[str]:
    return list(SOURCES) + ([TESTBENCH] if testbench else [])


def _flags(defines: tuple[str, ...]) -> list[str]:
    return [*CXXFLAGS, *(f"-D{d}" for d in defines)]


def build_key(board: BoardConfig, testbench: bool = False, defines: tuple[str, ...] = ()) -> str:
    """The cache key of :func:`build`'s output: a hash of the kernel's sources (and testbench),
    the generated header, the flags, every file of the ``ap_types`` headers (hls4ml's, whose
    version may change) and the compiler's identity (:func:`~.cxx.compiler_identity`)."""
    root = hls_dir()
    h = hashlib.sha256(header(board.name).encode())
    for rel in _files(testbench) + list(HEADERS):
        h.update((root / rel).read_bytes())
    h.update(" ".join(_flags(defines)).encode())
    ap_dir = ap_types_dir()
    for f in sorted(p for p in ap_dir.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(ap_dir)).encode() + b"\0" + f.read_bytes())
    h.update(compiler_identity(compiler()).encode())
    return h.hexdigest()[:16]


def build(board: BoardConfig, out_dir: Path | None = None, testbench: bool = False,
          defines: tuple[str, ...] = ()) -> Path:
    """Compile the kernel for ``board``; returns the shared library (or testbench) path.
    ``defines``: extra preprocessor names (``-D``), e.g. ``QTA_COSIM`` for the testbench as the
    co-simulation's capture pass compiles it.

    The result is cached under :func:`build_key`.
    """
    root, hdr = hls_dir(), header(board.name)
    files, flags = _files(testbench), _flags(defines)
    key = build_key(board, testbench, defines)
    out_dir = out_dir or cache_dir() / f"{board.name}-{key}"
    target = out_dir / ("qta_gemm_tb" if testbench else f"libqta_{board.name}.so")
    if target.exists():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "qta_config.h").write_text(hdr)
    srcs = [str(root / f) for f in files if not (testbench and f.endswith("csim_api.cpp"))]
    link = [] if testbench else ["-shared", "-fPIC"]
    return compile_to(target, [*flags, *link, "-isystem", str(ap_types_dir()), f"-I{out_dir}",
                               f"-I{root / 'src'}", *srcs], "the kernel")


_CTYPES = {"uint32_t": ctypes.c_uint32, "int32_t": ctypes.c_int32, "uint64_t": ctypes.c_uint64,
           "int64_t": ctypes.c_int64}


def _argtype(arg: KernelArg) -> type:
    """The ctypes type of one parameter of ``qta_csim_gemm`` (the kernel's signature)."""
    if arg.kind == "pointer":
        return ctypes.c_void_p
    if arg.kind in ("scalar", "scalar64"):
        return _CTYPES[arg.type]
    return ctypes.POINTER(_CTYPES[arg.type])


def _signed(value: int, ctype: type) -> int:
    """A 32-bit register value as the signed C type takes it (unchanged for unsigned types)."""
    return value - (1 << 32) if ctype is ctypes.c_int32 and value >= 1 << 31 else value


class CsimKernel:
    """The C-simulated ``qta_gemm`` of one board, callable on numpy memory. Its ctypes signature
    is the argument list of ``hardware.toml``, as the kernel's prototype is."""

    def __init__(self, board: BoardConfig):
        self.board = board
        self.path = build(board)
        lib = ctypes.CDLL(str(self.path))
        self._args = config().args
        lib.qta_csim_gemm.restype = None
        lib.qta_csim_gemm.argtypes = [_argtype(a) for a in self._args]
        lib.qta_csim_config_digest.restype = ctypes.c_char_p
        lib.qta_csim_mix32.restype = ctypes.c_uint32
        lib.qta_csim_mix32.argtypes = [ctypes.c_uint32]
        built_for = lib.qta_csim_config_digest().decode()
        if built_for != board_digest(board):
            raise CsimBuildError(f"{self.path} was built for configuration {built_for}, "
                                 f"not {board_digest(board)}; delete it to rebuild")
        self._lib = lib

    def run(self, pointers: dict[str, int], regs: dict[str, int]) -> dict[str, int]:
        """Run one call: ``pointers`` are raw host addresses of the pointer arguments (0 for an
        unused one), ``regs`` the 32-bit values of the scalar arguments. Returns the outputs by
        name (``status``, ``cycles``). The ctypes call releases the GIL while the kernel runs.
        """
        values, outputs = [], {}
        for arg in self._args:
            if arg.kind == "pointer":
                values.append(pointers.get(arg.name, 0))
            elif arg.kind in ("scalar", "scalar64"):
                values.append(_signed(regs[arg.name], _CTYPES[arg.type]))
            else:
                outputs[arg.name] = _CTYPES[arg.type](0)
                values.append(ctypes.byref(outputs[arg.name]))
        self._lib.qta_csim_gemm(*values)
        return {name: int(v.value) for name, v in outputs.items()}

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


def run_testbench(board: BoardConfig, defines: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Build and run the C++ testbench of ``board`` (what `vitis_hls` csim runs; with
    ``defines=("QTA_COSIM",)`` what cosim's capture pass runs)."""
    exe = build(board, testbench=True, defines=defines)
    return subprocess.run([str(exe)], capture_output=True, text=True)


__all__ = ["CsimKernel", "build", "load", "run_testbench", "address"]
