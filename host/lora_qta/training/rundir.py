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
import re
import shutil
import socket
import time
from pathlib import Path

from ..errors import CheckpointError, OptionError, OutputDirError, RunLockedError
from ..paths import file_in_the_way

LOCK = ".lock"
CHECKPOINTS = "checkpoints"
"""The run's checkpoint folder: ``step_NNNNNN/`` each (:mod:`lora_qta.training.checkpoint`)."""
_STEP = re.compile(r"step_(\d+)$")
MEASUREMENT = "measure.json"
"""``lora-qta evaluate``'s cached measurement of the run (:mod:`lora_qta.training.measurecache`)."""
RUN_ENTRIES = (CHECKPOINTS, "adapter", "samples.png", "samples_before.npy", "loss.png", "report.json", MEASUREMENT,
               LOCK)
"""What a run and its evaluation write into its folder (``--overwrite`` removes these and nothing
else: a retrained run loses its old measurement with its old adapter)."""


def checkpoints(run: Path) -> list[tuple[int, Path]]:
    """The complete checkpoints of a run folder as (step, folder), oldest step first (by number,
    not by name)."""
    found = []
    for p in (run / CHECKPOINTS).glob("step_*"):
        m = _STEP.match(p.name)
        if m and p.is_dir() and (p / "state.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run: Path) -> Path | None:
    """The checkpoint with the highest step number, if any."""
    found = checkpoints(run)
    return found[-1][1] if found else None


class RunFolder:
    """The output folder of one run (see the module docstring)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fd: int | None = None

    def check_usable(self) -> None:
        """Refuse a path that is a file or lies under one, before any work is done."""
        p = file_in_the_way(self.path)
        if p is not None:
            raise OutputDirError(f"--output-dir {self.path}: {p} is a file, not a folder; "
                                 "choose another --output-dir")

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

    def check(self, resume: bool, overwrite: bool) -> list[Path]:
        """Refuse what the one-run-per-folder rule forbids, without changing anything: a path that
        is or lies under a file, --resume without a checkpoint, a folder holding files without
        --resume or --overwrite, and --overwrite of files a run does not write. Returns what
        --overwrite would remove. Called before any work, and again with the lock held."""
        if resume and overwrite:
            raise OptionError("--resume and --overwrite contradict each other: --resume continues the run in "
                              "--output-dir, --overwrite replaces it")
        self.check_usable()
        if resume:
            if latest_checkpoint(self.path) is None:
                raise CheckpointError(f"--resume given but {self.path / CHECKPOINTS} holds no checkpoint: "
                                      "leave out --resume to start a run there, or give the run's --output-dir")
            return []
        found = self.entries()
        if not found:
            return []
        names = ", ".join(p.name for p in found[:6]) + (", ..." if len(found) > 6 else "")
        foreign = [p.name for p in found if p.name not in RUN_ENTRIES and not p.name.startswith(".tmp")]
        if overwrite and foreign:
            raise OutputDirError(f"--overwrite refuses {self.path}: it holds files a run does not write "
                                 f"({', '.join(foreign[:6])}); choose another --output-dir")
        if not overwrite:  # offer only what would work here
            ways = (["continue that run with --resume"] if latest_checkpoint(self.path) is not None else []) \
                + ([] if foreign else ["replace it with --overwrite"]) + ["choose another --output-dir"]
            raise OutputDirError(f"--output-dir {self.path} already holds {names}: "
                                 + (", ".join(ways[:-1]) + ", or " if len(ways) > 1 else "") + ways[-1])
        return found

    def prepare(self, resume: bool, overwrite: bool) -> None:
        """Apply the one-run-per-folder rule (call with the lock held): :meth:`check`, then remove
        the old run's files if --overwrite."""
        for p in self.check(resume, overwrite):
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
