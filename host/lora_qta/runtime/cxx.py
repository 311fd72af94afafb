"""Compiling the package's C++ with g++ at first use: the compiler, the cache folder and an
atomic build, shared by the C-simulated kernel (:mod:`.csim`), the host quantizer
(:mod:`lora_qta.lora.quant_native`) and the fast engine's epilogue (:mod:`.epilogue_native`).

The compiler is ``$CXX`` (default ``g++``); built files are kept under ``$LORA_QTA_CACHE``
(default ``~/.cache/lora_qta``), one subfolder per user of this module, and named by a hash of
everything that went into them, so a changed source, flag or compiler builds anew.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CsimBuildError, OptionError
from ..paths import file_in_the_way


def compiler() -> str:
    """The C++ compiler: ``$CXX``, else ``g++``; raises :class:`CsimBuildError` if it is not found."""
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        raise CsimBuildError(f"C++ compiler {cxx!r} not found; install g++ (apt-get install g++)")
    return cxx


@functools.lru_cache(maxsize=None)
def compiler_identity(cxx: str) -> str:
    """What names the compiler ``cxx`` in a cache key: its resolved path and ``--version`` output
    (a changed or upgraded compiler builds anew)."""
    proc = subprocess.run([cxx, "--version"], capture_output=True, text=True)
    return f"{shutil.which(cxx)}\n{proc.stdout}"


CACHE_ENV = "LORA_QTA_CACHE"


def cache_root() -> Path:
    """``$LORA_QTA_CACHE``, else ``~/.cache/lora_qta``: the folder of every built or cached file.
    A variable naming a file (or a path under one) is refused here, before a build or a synthesis
    whose result could not be kept."""
    root = Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "lora_qta"))
    p = file_in_the_way(root)
    if p is not None:
        raise OptionError(f"{CACHE_ENV}={root}: {p} is a file, not a folder; point {CACHE_ENV} at a "
                          "folder (or unset it for ~/.cache/lora_qta)")
    return root


def compile_to(target: Path, args: list[str], what: str) -> Path:
    """Run ``$CXX *args -o target`` unless ``target`` exists; returns ``target``.

    The output is written to a temporary file and renamed, so concurrent builders never see a
    half-written file. On failure the command and the compiler's messages go to ``build.log``
    beside ``target`` and :class:`CsimBuildError` (naming ``what`` was built) is raised."""
    if target.exists():
        return target
    cxx = compiler()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".tmp", delete=False) as tmp:
        tmp_path = Path(tmp.name)
    cmd = [cxx, *args, "-o", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tmp_path.unlink(missing_ok=True)
        log = target.parent / "build.log"
        log.write_text(f"{' '.join(cmd)}\n{proc.stderr}")
        raise CsimBuildError(f"compiling {what} with {cxx} failed (exit status {proc.returncode}); "
                             f"the command and the compiler's messages are in {log}")
    tmp_path.replace(target)
    return target


NATIVE_ARCH = "-march=native"


def build_native(src: Path, flags: tuple[str, ...], subdir: str, name: str, what: str) -> Path:
    """Compile the shared library ``name`` from ``src`` with ``flags`` plus ``-march=native``
    where the compiler has it (else a portable build), cached under
    ``cache_root()/subdir/<key>/name``: the key hashes the source, the flags and the compiler's
    predefined macros for the target (its version and instruction sets). Raises
    :class:`CsimBuildError` if it cannot be built (``what`` names it in the message)."""
    cxx = compiler()
    source = src.read_bytes()
    arch: tuple[str, ...] = (NATIVE_ARCH,)
    probe = subprocess.run([cxx, *arch, "-dM", "-E", "-x", "c++", os.devnull], capture_output=True, text=True)
    if probe.returncode != 0:  # a compiler without -march=native: a portable build
        arch = ()
        probe = subprocess.run([cxx, "-dM", "-E", "-x", "c++", os.devnull], capture_output=True, text=True)
    key = hashlib.sha256(source + " ".join((*flags, *arch)).encode() + probe.stdout.encode()).hexdigest()[:16]
    return compile_to(cache_root() / subdir / key / name, [*flags, *arch, "-x", "c++", str(src)], what)


@dataclass
class NativeLibrary:
    """A C++ faster route to what Python code of the package states (the host quantizer, the fast
    engine's epilogue): built from ``source`` with :func:`build_native` at first use, loaded
    through ctypes, and chosen or refused by the environment variable ``env``.

    ``env`` unset or ``native`` asks for the library; ``fallback`` (e.g. ``torch``, ``numpy``)
    forces the Python code, which gives the same bits. If the library cannot be built or loaded,
    the Python code runs after one warning (``failed`` keeps why)."""

    source: Path
    flags: tuple[str, ...]
    subdir: str
    filename: str
    what: str
    """names the library in messages, e.g. ``the host quantizer``"""
    env: str
    fallback: str
    declare: Callable[[ctypes.CDLL], None]
    """sets the argtypes and restypes of the library's functions"""
    lib: ctypes.CDLL | None = field(default=None, repr=False)
    failed: str | None = None

    @property
    def engines(self) -> tuple[str, str]:
        return ("native", self.fallback)

    def engine(self) -> str:
        """The engine ``$env`` asks for (``native`` when unset); raises :class:`OptionError` for
        a name that is neither."""
        name = os.environ.get(self.env) or "native"
        if name not in self.engines:
            raise OptionError(f"{self.env}={name!r} is not an engine of {self.what}: use "
                              f"{' or '.join(self.engines)}")
        return name

    def build(self) -> Path:
        """Compile the source (cached); raises :class:`CsimBuildError` if it cannot be."""
        return build_native(self.source, self.flags, self.subdir, self.filename, self.what)

    def load(self) -> ctypes.CDLL | None:
        """The built library, or None (after one warning) when it cannot be built or loaded."""
        if self.lib is None and self.failed is None:
            try:
                lib = ctypes.CDLL(str(self.build()))
            except (CsimBuildError, OSError) as e:
                self.failed = str(e)
                warnings.warn(f"the C++ code of {self.what} is not available ({e}); running its {self.fallback} "
                              "code, which gives the same values, more slowly", RuntimeWarning, stacklevel=3)
                return None
            self.declare(lib)
            self.lib = lib
        return self.lib

    def active(self) -> ctypes.CDLL | None:
        """The library when ``$env`` asks for it and it loads, else None (the Python code runs)."""
        return None if self.engine() == self.fallback else self.load()


__all__ = ["NATIVE_ARCH", "NativeLibrary", "build_native", "cache_root", "compile_to", "compiler",
           "compiler_identity"]
