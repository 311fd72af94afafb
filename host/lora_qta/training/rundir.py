"""The output folder of a run: one run per folder, and one process at a time.

* :meth:`RunFolder.lock` takes an exclusive ``fcntl.flock`` on ``<run>/.lock`` (held until the
  run ends, released by the kernel if the process dies) and writes the holder's pid, host and
  start time into it, so a second run in the same folder is refused with who holds it.
* :meth:`RunFolder.prepare` refuses a folder that already holds files unless the run resumes
  (``--resume``: the checkpoint must then match every option that defines the run) or replaces
  it (``--overwrite``: removes the files a run writes, and refuses folders holding others).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

from ..errors import OptionError, OutputDirError, RunLockedError

LOCK = ".lock"
MEASUREMENT = "measure.json"
"""``lora-qta evaluate``'s cached measurement of the run (:mod:`lora_qta.training.measurecache`)."""
RUN_ENTRIES = ("checkpoints", "adapter", "samples.png", "samples_before.npy", "loss.png", "report.json", MEASUREMENT,
               LOCK)
"""What a run and its evaluation write into its folder (``--overwrite`` removes these and nothing
else: a retrained run loses its old measurement with its old adapter)."""


class RunFolder:
    """The output folder of one run (see the module docstring)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fd: int | None = None

    def check_usable(self) -> None:
        """Refuse a path that is a file or lies under one, before any work is done."""
        for p in (self.path, *self.path.parents):
            if p.exists() and not p.is_dir():
                raise OutputDirError(f"--output-dir {self.path}: {p} is a file, not a folder; "
                                     "choose another --output-dir")
            if p.exists():
                break

    def lock(self) -> None:
        """Create the folder if needed and take its lock (or say which process holds it)."""
        import fcntl

        self.check_usable()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise OutputDirError(f"--output-dir {self.path} cannot be written ({e.strerror or e}); "
                                 "choose a folder you can write to") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunLockedError(f"--output-dir {self.path} is in use by {holder}; wait for that run to "
                                 "finish (or stop it), or choose another --output-dir") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def unlock(self) -> None:
        """Release the lock (the lock file stays; its content no longer means anything)."""
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def entries(self) -> list[Path]:
        """What the folder holds besides the lock file."""
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.iterdir() if p.name != LOCK)

    def prepare(self, resume: bool, overwrite: bool) -> None:
        """Apply the one-run-per-folder rule (call with the lock held)."""
        if resume and overwrite:
            raise OptionError("--resume and --overwrite contradict each other: --resume continues the run in "
                              "--output-dir, --overwrite replaces it")
        found = self.entries()
        if not found or resume:
            return
        names = ", ".join(p.name for p in found[:6]) + (", ..." if len(found) > 6 else "")
        if not overwrite:
            raise OutputDirError(f"--output-dir {self.path} already holds {names}: continue that run with --resume, "
                                 "replace it with --overwrite, or choose another --output-dir")
        foreign = [p.name for p in found if p.name not in RUN_ENTRIES and not p.name.startswith(".tmp")]
        if foreign:
            raise OutputDirError(f"--overwrite refuses {self.path}: it holds files a run does not write "
                                 f"({', '.join(foreign[:6])}); choose another --output-dir")
        for p in found:
            shutil.rmtree(p) if p.is_dir() else p.unlink()

    def __enter__(self) -> "RunFolder":
        self.lock()
        return self

    def __exit__(self, *exc) -> None:
        self.unlock()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process"
    return f"process {info.get('pid')} on host {info.get('host')} (started {info.get('started')})"
