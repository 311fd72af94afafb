"""Data-parallel fine-tuning over several processes (boards) with ``torch.distributed`` (gloo).

``lora-qta finetune`` runs unchanged under ``torchrun --nproc-per-node N`` (or ``--nnodes`` /
``--rdzv-endpoint`` across hosts, or one command per board with the env:// variables
``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE``, ``RANK``). :meth:`DataParallel.from_environment`
sees ``WORLD_SIZE`` > 1 and joins the gloo process group (CPU tensors over plain TCP, as on the
boards' ARM Linux); each process owns one accelerator (its board, or its own emulated device).
The loop (:mod:`.loop`) calls a few explicit hooks of :class:`DataParallel`:

* **one global batch.** Every rank draws the same global batch (example indices, noise,
  timesteps) from the step generators and computes its contiguous block of rows
  (:meth:`~DataParallel.rows`); its mean loss is weighted by rows / B
  (:meth:`~DataParallel.share`), so the sum of the ranks' gradients is the gradient of the
  global batch's mean loss. N processes at global batch B therefore train the same function as
  one process at batch B: in fp32 equal up to the order of float reductions; in int8 within the
  stochastic-rounding noise (each rank rounds its own rows with its own stream, and the
  per-channel scales of the weight-gradient GEMMs are taken over its rows).
* **one all-reduce per step** (:meth:`~DataParallel.all_reduce_gradients`): the LoRA gradients
  flattened into one fp32 buffer (a single bucket: LoRA gradients are small) with the weighted
  loss, a stop-request flag (Ctrl-C on any rank) and one divergence flag per rank riding in the
  same buffer; SUM over gloo, copied back before clipping. Clipping, AdamW and the schedule then
  run on identical gradients on every rank, so the replicas stay identical (checked at every
  checkpoint: :meth:`~DataParallel.check_replicas`); a non-finite norm of the summed gradients is
  the same on every rank, so the loop's check stops every rank at the same step, before AdamW.
* **rank 0 writes** checkpoints, samples, report and adapter: it alone takes the run folder's
  lock and applies the one-run-per-folder rule (:mod:`.rundir`); the other ranks never touch
  their --output-dir. A refusal there (or any check one rank fails before training) stops every
  rank with it (:meth:`~DataParallel.together`). On ``--resume`` rank 0 reads the newest
  checkpoint under its lock and broadcasts its files (:meth:`~DataParallel.checkpoint_from_rank0`),
  so ranks on other boards need no shared filesystem; every rank checks the run's identity
  against it.
* **failures name the rank.** Accelerator errors and each rank's configuration are gathered
  before training (:meth:`~DataParallel.agree`); during the run each rank keeps a heartbeat and a
  state in the rendezvous store, so when a collective breaks or torchrun's agent sends SIGTERM
  the survivors tell a rank that failed (with its message) from one that died
  (:class:`~lora_qta.errors.RankLostError`).

``LORA_QTA_DIST_TIMEOUT`` (seconds, default 1800) bounds rendezvous and every collective: a
board that loses power (no TCP reset) is noticed after it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as tdist

from .. import __version__
from .. import errors as error_classes
from ..errors import (CollectiveError, DistributedError, DivergedError, LimitError, QtaError, RankLostError,
                      RankMismatchError, RankSetupError, RankStoppedError, RendezvousError)
from ..hw.config import board_digest, resolve_board
from .checkpoint import lora_state
from .config import FinetuneConfig
from .rundir import latest_checkpoint

TIMEOUT_ENV = "LORA_QTA_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0
HEARTBEAT_S = 0.5
"""Seconds between two heartbeats of a rank in the rendezvous store."""
SILENCE_S = 2.5
"""A rank whose heartbeat did not advance for this long is reported as dead."""

_generation = 0  # data-parallel runs started in this process (ranks start them in lockstep)


def world_from_environment() -> tuple[int, int]:
    """(rank, world size) from torchrun's / env://'s variables; (0, 1) outside such a launch."""
    try:
        world = int(os.environ.get("WORLD_SIZE") or 1)
        rank = int(os.environ.get("RANK") or 0)
    except ValueError as e:
        raise RendezvousError(f"WORLD_SIZE / RANK must be integers ({e}); launch with torchrun or set them "
                              "as the README's 'Several boards' section shows") from None
    if world > 1 and not 0 <= rank < world:
        raise RendezvousError(f"RANK={rank} is outside 0..{world - 1} (WORLD_SIZE={world})")
    return rank, world


def block_of_rows(rank: int, world: int, batch: int) -> slice:
    """The contiguous rows of a global batch of ``batch`` examples that ``rank`` of ``world``
    computes (sizes differ by at most one)."""
    return slice(rank * batch // world, (rank + 1) * batch // world)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".strip()


def _timeout_s() -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise RendezvousError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise RendezvousError(f"{TIMEOUT_ENV} must be positive, not {value}")
    return value


def _digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, torch.Tensor):
            h.update(p.detach().contiguous().cpu().numpy().tobytes())
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def weights_fingerprint(module: torch.nn.Module, samples: int = 256) -> str:
    """A cheap digest of a model's weights (names, shapes and a strided sample of each tensor):
    different checkpoints of one architecture differ in it."""
    h = hashlib.sha256()
    for name, p in module.state_dict().items():
        flat = p.detach().reshape(-1)
        h.update(f"{name}{tuple(p.shape)}".encode())
        if flat.numel():
            h.update(flat[:: max(1, flat.numel() // samples)].float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def params_digest(params: list[torch.nn.Parameter]) -> str:
    """A digest of the trainable weights, bit for bit."""
    return _digest(*(p.detach() for p in params))


def disagreements(facts: list[dict[str, Any]]) -> list[str]:
    """What the ranks' facts (:meth:`DataParallel.facts`, one dict per rank) disagree on, each as
    ``key: rank 0 value, rank 1 value, ...``."""
    diffs = []
    for key in dict.fromkeys(k for f in facts for k in f):
        values = [f.get(key) for f in facts]
        if any(v != values[0] for v in values):
            diffs.append(f"{key}: " + ", ".join(f"rank {r} {v}" for r, v in enumerate(values)))
    return diffs


class DataParallel:
    """This process's place in a data-parallel run: rank, world size, the process group and the
    store, and the hooks the training loop calls (module docstring)."""

    def __init__(self, rank: int, world: int, timeout_s: float, owns_group: bool, kv: Any, agent_store: bool):
        self.rank, self.world = rank, world
        self.timeout_s = timeout_s
        self.owns_group = owns_group
        self.agent_store = agent_store
        self.kv = kv
        self.host = socket.gethostname()
        self.hosts: list[str] | None = None
        self.phase = "setting up"
        self.step: int | None = None  # the last step whose all-reduce completed
        self.output_dir: str | None = None  # rank 0's --output-dir (the run folder), once known
        self.last_checkpoint: int | None = None  # steps done at the last checkpoint rank 0 surely wrote
        self._pending_checkpoint: int | None = None  # one rank 0 may still be writing
        self.steps_run = 0
        self.stop = False             # agreed stop request (Ctrl-C on any rank), read by the loop
        self.stop_wanted = False      # this rank's own request, sent until agreed
        self.interrupted: dict | None = None
        self.time_allreduce = 0.0
        self.t_start: float | None = None
        self.terminated = False
        self._raise_on_term = True
        self._lock = threading.Lock()
        self._beat = threading.Event()
        self._tmp: list[str] = []
        self._gemms_at_start: dict[str, Any] | None = None  # accelerator counters restored by --resume
        self._previous_term: Any = None
        self._kv_set(f"host/{rank}", self.host)
        self._kv_set(f"state/{rank}", "running")
        self._thread = threading.Thread(target=self._heartbeat, name="lora-qta-heartbeat", daemon=True)
        self._thread.start()
        try:
            self._previous_term = signal.signal(signal.SIGTERM, self._on_sigterm)
        except ValueError:  # not the main thread: no SIGTERM handling
            self._previous_term = None

    # ------------------------------------------------------------------ joining and leaving
    @classmethod
    def from_environment(cls) -> "DataParallel | None":
        """Join the run that ``torchrun`` (or the env:// variables) describe; None when this
        process runs alone (``WORLD_SIZE`` unset or 1). A process group the caller already
        initialized (gloo) is used and left open."""
        global _generation
        rank, world = world_from_environment()
        if world <= 1:
            return None
        timeout_s = _timeout_s()
        timeout = timedelta(seconds=timeout_s)
        agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
        owns = not tdist.is_initialized()
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        try:
            if owns:
                store, rank, world = next(tdist.rendezvous("env://", rank, world, timeout=timeout))
                tdist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timeout)
            else:
                backend = str(tdist.get_backend())
                if "gloo" not in backend:
                    raise RendezvousError(f"the process group uses {backend}; lora-qta exchanges CPU tensors and "
                                          "needs gloo (init_process_group('gloo') or 'cpu:gloo,cuda:nccl')")
                rank, world = tdist.get_rank(), tdist.get_world_size()
            kv = cls._own_store(timeout)
        except QtaError:
            raise
        except Exception as e:
            raise RendezvousError(
                f"rank {rank} of {world} could not join the run at {where} within {timeout_s:g} s "
                f"({_first_line(e)}): start every rank with the same MASTER_ADDR/MASTER_PORT (or torchrun "
                f"--rdzv-endpoint), check that rank 0's host is reachable on that port, or raise "
                f"{TIMEOUT_ENV}") from None
        _generation += 1
        prefix = f"lora_qta/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{_generation}/"
        return cls(rank, world, timeout_s, owns, tdist.PrefixStore(prefix, kv), agent_store)

    @staticmethod
    def _own_store(timeout: timedelta) -> Any:
        """A store client of our own (short timeouts, for heartbeats and failure reports): a
        TCPStore client at MASTER_ADDR:MASTER_PORT (torchrun's agent store, or rank 0's), else
        the process group's store."""
        addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
        if addr and port:
            try:
                return tdist.TCPStore(addr, int(port), is_master=False, timeout=timedelta(seconds=10),
                                      wait_for_workers=False)
            except Exception:  # fall back to the process group's store
                pass
        from torch.distributed.distributed_c10d import _get_default_store

        return _get_default_store()

    def close(self) -> None:
        """Stop the heartbeat, restore SIGTERM, remove temporary copies, leave the process group
        if this object joined it."""
        self._raise_on_term = False
        self._beat.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2 * HEARTBEAT_S)  # not inside a store call when the group goes
        if self._previous_term is not None:
            try:
                signal.signal(signal.SIGTERM, self._previous_term)
            except ValueError:
                pass
        for folder in self._tmp:
            shutil.rmtree(folder, ignore_errors=True)
        if self.owns_group and tdist.is_initialized():
            try:
                tdist.destroy_process_group()
            except Exception:
                pass

    def run(self, body: Callable[[], Any]) -> Any:
        """Run ``body`` (the fine-tuning) as this rank: a failure here is posted for the others;
        a broken collective or the launcher's SIGTERM becomes a :class:`RankLostError` that
        names the rank that failed or died."""
        try:
            result = body()
            self._kv_set(f"state/{self.rank}", "done")
            return result
        except Exception as e:
            if self.terminated or isinstance(e, (CollectiveError, RankStoppedError)):
                raise self.explain(e) from None
            self._kv_set(f"state/{self.rank}", "failed:" + _first_line(e)[:500])
            raise
        finally:
            self.close()

    # ------------------------------------------------------------------ the store
    def _kv_set(self, key: str, value: str) -> bool:
        try:
            with self._lock:
                self.kv.set(key, value)
            return True
        except Exception:
            return False

    def _kv_get(self, key: str) -> str | None:
        with self._lock:
            if not self.kv.check([key]):
                return None
            return self.kv.get(key).decode(errors="replace")

    def _heartbeat_of(self, rank: int) -> int:
        with self._lock:
            return int(self.kv.add(f"hb/{rank}", 0))

    def _heartbeat(self) -> None:
        while not self._beat.wait(HEARTBEAT_S):
            try:
                with self._lock:
                    self.kv.add(f"hb/{self.rank}", 1)
            except Exception:
                return

    def _on_sigterm(self, signum, frame) -> None:
        self.terminated = True
        if self._raise_on_term:
            self._raise_on_term = False
            raise RankStoppedError(f"rank {self.rank} was stopped by the launcher (SIGTERM)")

    def _name(self, rank: int) -> str:
        host = (self.hosts[rank] if self.hosts else None) or self._safe_get(f"host/{rank}")
        return f"rank {rank} ({host})" if host else f"rank {rank}"

    def _safe_get(self, key: str) -> str | None:
        try:
            return self._kv_get(key)
        except Exception:
            return None

    # ------------------------------------------------------------------ failures
    def explain(self, error: BaseException) -> RankLostError:
        """Why the run broke, as seen from this surviving rank: a rank that posted its failure,
        else ranks whose heartbeat stopped, else the error itself."""
        self._raise_on_term = False
        where = (f"after {self.step + 1} steps" if self.step is not None else
                 "in its first step" if self.phase == "training" else f"while {self.phase}")
        others = [r for r in range(self.world) if r != self.rank]
        failed: dict[int, str] = {}
        silent: list[int] = []
        try:
            with self._lock:
                self.kv.set(f"state/{self.rank}", "stopped")
            beats = {r: self._heartbeat_of(r) for r in others}
            deadline = time.monotonic() + SILENCE_S
            while True:
                states = {r: self._kv_get(f"state/{r}") or "running" for r in others}
                failed = {r: s[len("failed:"):] for r, s in states.items() if s.startswith("failed:")}
                if failed or time.monotonic() >= deadline:
                    break
                time.sleep(0.1)
            if not failed:
                silent = [r for r in others if states[r] == "running" and self._heartbeat_of(r) == beats[r]]
            store_ok = True
        except Exception:
            store_ok = False
        if failed:
            cause = "; ".join(f"{self._name(r)} failed: {m}" for r, m in sorted(failed.items()))
        elif silent:
            cause = (", ".join(self._name(r) for r in silent)
                     + " died or stopped answering (killed, crashed, or its host or network went down)")
        elif not store_ok:
            cause = ("the rendezvous store is unreachable: torchrun's agent on the first node is gone"
                     if self.agent_store else
                     f"{self._name(0)}, which hosts the rendezvous store, died or stopped answering")
        elif self.terminated:
            cause = "the launcher stopped it (SIGTERM) while no other rank reported a failure"
        else:
            cause = f"a collective operation failed ({_first_line(error.__cause__ or error)})"
        folder = Path(self.output_dir or ".") / "checkpoints"
        if self._pending_checkpoint is not None:
            earlier = f"step_{self.last_checkpoint:06d}" if self.last_checkpoint is not None else "none"
            advice = (f"; the last checkpoint on rank 0, {folder}/step_{self._pending_checkpoint:06d} (or {earlier} "
                      "if rank 0 died while writing it), stays valid: start every rank again with --resume")
        elif self.last_checkpoint is not None:
            advice = (f"; the last checkpoint, {folder}/step_{self.last_checkpoint:06d} on rank 0, stays valid: "
                      "start every rank again with --resume")
        elif self.phase == "training":
            advice = "; no checkpoint was written yet: start the run again"
        else:
            advice = "; fix the cause and start the run again"
        return RankLostError(f"rank {self.rank} stopped {where}: {cause}{advice}")

    def _collective(self, what: str, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (QtaError, KeyboardInterrupt):
            raise
        except Exception as e:
            raise CollectiveError(f"{what} failed: {_first_line(e)}") from e

    def _wait_for_everyone(self, name: str) -> None:
        """A barrier through the store, without the collective timeout (rank 0 may work alone
        for long, e.g. sampling Stable Diffusion on a board), that stops early when a rank fails
        or dies."""
        self._kv_set(f"at/{name}/{self.rank}", "1")
        beats: dict[int, tuple[int, float]] = {}
        while True:
            try:
                missing = [r for r in range(self.world) if self._kv_get(f"at/{name}/{r}") is None]
                if not missing:
                    return
                now = time.monotonic()
                for r in missing:
                    state = self._kv_get(f"state/{r}") or "running"
                    if state != "running":
                        raise CollectiveError(f"{self._name(r)} left the run ({state})")
                    beat = self._heartbeat_of(r)
                    if r not in beats or beats[r][0] != beat:
                        beats[r] = (beat, now)
                    elif now - beats[r][1] > SILENCE_S:
                        raise CollectiveError(f"{self._name(r)} stopped answering")
            except CollectiveError:
                raise
            except Exception as e:
                raise CollectiveError(f"the rendezvous store failed: {_first_line(e)}") from e
            time.sleep(0.1)

    # ------------------------------------------------------------------ before training
    def agree(self, cfg: FinetuneConfig, bundle: Any, data: Any,
              open_accelerator: Callable[[], Any]) -> Any:
        """Open this rank's accelerator (int8) and check, across every rank, that each opened
        its accelerator and that all agree on what they train; returns the accelerator (None in
        fp32). Raises on every rank :class:`RankSetupError` (naming each rank whose board or
        bitstream is missing) or :class:`RankMismatchError` (naming what differs)."""
        if cfg.batch_size < self.world:
            raise LimitError(f"--batch-size {cfg.batch_size} is the global batch, split over {self.world} "
                             f"processes: it must be at least {self.world}")
        acc, error = None, None
        if cfg.precision == "int8":
            try:
                acc = open_accelerator()
            except QtaError as e:
                error = f"{type(e).__name__}: {e}"
        self.output_dir = cfg.output_dir
        facts = self.facts(cfg, bundle, data, acc)
        everyone: list[Any] = [None] * self.world
        self._collective("exchanging the ranks' configurations", tdist.all_gather_object, everyone,
                         {"host": self.host, "error": error, "facts": facts, "output_dir": cfg.output_dir})
        self.hosts = [e["host"] for e in everyone]
        self.output_dir = everyone[0]["output_dir"]  # the run folder: rank 0's, the one that is written
        errors = [(r, e["error"]) for r, e in enumerate(everyone) if e["error"]]
        if errors:
            raise RankSetupError(
                "; ".join(f"{self._name(r)}: {err}" for r, err in errors)
                + " -- every rank needs its own accelerator: its board with the bitstream in bitstreams/<board>/, "
                  "or --backend emulation on every rank")
        diffs = disagreements([e["facts"] for e in everyone])
        if diffs:
            raise RankMismatchError(
                "the ranks disagree on " + "; ".join(diffs) + " -- start every rank with the same options, package "
                "version, board type and model/data files (a run uses one board type and one backend)")
        return acc

    def facts(self, cfg: FinetuneConfig, bundle: Any, data: Any, acc: Any) -> dict[str, Any]:
        """What every rank of one run must share."""
        try:
            board = acc.board if acc is not None else resolve_board(cfg.board)
            board_name, digest = board.name, board_digest(board)
        except QtaError as e:
            board_name, digest = f"unknown ({e})", None
        options = {**cfg.identity(), "steps": cfg.steps, "checkpoint_every": cfg.checkpoint_every,
                   "resume": cfg.resume}
        facts: dict[str, Any] = {
            "package version": __version__, "precision": cfg.precision, "board": board_name,
            "hardware config digest": digest,
            "backend": (acc.backend if acc is not None else "none (int8 accelerator not opened)")
            if cfg.precision == "int8" else "pytorch",
            "model": f"{bundle.name} {_digest(dict(bundle.unet.config))} weights {weights_fingerprint(bundle.unet)}",
            "training data": _digest(data.images, data.prompts, data.prior_images if data.prior_images is not None
                                     else "", data.prior_prompts or []),
        }
        facts.update({"--" + k.replace("_", "-"): v for k, v in options.items()})
        return facts

    def together(self, what: str, check: Callable[[], Any] | None) -> None:
        """Run ``check`` on this rank (None: nothing to check here) and stop every rank if it
        refused on any: the refusing rank raises its own error, the others the same class of
        error naming that rank, so no rank waits in a collective for one that gave up (e.g. rank
        0's run folder locked or holding another run, one board short of memory)."""
        mine: QtaError | None = None
        if check is not None:
            try:
                check()
            except QtaError as e:
                mine = e
        posted = None if mine is None else (type(mine).__name__, str(mine))
        everyone: list[Any] = [None] * self.world
        self._collective(f"comparing the ranks' {what}", tdist.all_gather_object, everyone, posted)
        if mine is not None:
            raise mine
        failed = [(r, p) for r, p in enumerate(everyone) if p]
        if failed:
            r, (name, message) = failed[0]
            cls = getattr(error_classes, name, None)
            if not (isinstance(cls, type) and issubclass(cls, QtaError)):
                cls = DistributedError
            raise cls(f"{self._name(r)}: {message}")

    def gather_to_rank0(self, what: str, obj: Any) -> list[Any] | None:
        """``obj`` of every rank in rank order, on rank 0 (None on the others); a collective."""
        everyone: list[Any] | None = [None] * self.world if self.rank == 0 else None
        self._collective(f"gathering the ranks' {what}", tdist.gather_object, obj, everyone, dst=0)
        return everyone

    def checkpoint_from_rank0(self, run: Path) -> Path | None:
        """The newest checkpoint of rank 0's run folder, on every rank: rank 0 reads its files
        and broadcasts them; the other ranks load a temporary copy (no shared filesystem
        needed). None (on every rank) when rank 0 has none."""
        payload = None
        last = None
        if self.rank == 0:
            last = latest_checkpoint(run)
            if last is not None:
                payload = {"name": last.name, "files": {p.name: p.read_bytes() for p in sorted(last.iterdir())
                                                        if p.is_file()}}
        box = [payload]
        self._collective("broadcasting the checkpoint", tdist.broadcast_object_list, box, src=0)
        if box[0] is not None:
            self.last_checkpoint = int(box[0]["name"].rsplit("_", 1)[-1])
        if self.rank == 0 or box[0] is None:
            return last
        folder = Path(tempfile.mkdtemp(prefix=f"lora_qta_rank{self.rank}_"))
        self._tmp.append(str(folder))
        copy = folder / box[0]["name"]
        copy.mkdir()
        for name, content in box[0]["files"].items():
            (copy / name).write_bytes(content)
        return copy

    def start(self, params: list[torch.nn.Parameter], interrupted: dict, runtime: Any = None) -> None:
        """Wait for every rank (rank 0 may have measured its held-out loss alone), give every rank
        rank 0's LoRA weights, and watch the loop's Ctrl-C flag. ``runtime``'s counters now (a
        resumed run's, from the checkpoint) are left out of this launch's per-rank figures."""
        self._gemms_at_start = runtime.state() if runtime is not None else None
        self._wait_for_everyone("start")
        for p in params:
            self._collective("broadcasting the LoRA weights", tdist.broadcast, p.data, src=0)
        self.interrupted = interrupted
        self.phase = "training"
        self.t_start = time.perf_counter()

    # ------------------------------------------------------------------ each step
    def rows(self, batch: int) -> slice:
        """This rank's rows of a global batch of ``batch`` examples."""
        return block_of_rows(self.rank, self.world, batch)

    def share(self, batch: int) -> float:
        """The weight of this rank's mean loss: its rows / the global batch."""
        r = self.rows(batch)
        return (r.stop - r.start) / batch

    def all_reduce_gradients(self, params: list[torch.nn.Parameter], loss: torch.Tensor | None, step: int,
                             failure: DivergedError | None = None) -> torch.Tensor:
        """Sum the ranks' LoRA gradients (each from a weighted loss) in one all-reduce, with the
        weighted loss, the stop request and the divergence flags; returns the global batch's
        loss. Raises :class:`DivergedError` on every rank if any rank diverged (``failure``)."""
        n = sum(p.numel() for p in params)
        flat = torch.zeros(n + 2 + self.world, dtype=torch.float32)
        if failure is None:
            offset = 0
            for p in params:
                k = p.numel()
                if p.grad is not None:
                    flat[offset:offset + k] = p.grad.detach().reshape(-1)
                offset += k
            flat[n] = loss.detach().float()
        else:
            flat[n + 2 + self.rank] = 1.0
        if self.interrupted is not None and self.interrupted.get("flag"):
            self.stop_wanted = True
        flat[n + 1] = 1.0 if self.stop_wanted else 0.0
        t0 = time.perf_counter()
        self._collective(f"the gradient all-reduce of step {step}", tdist.all_reduce, flat)
        self.time_allreduce += time.perf_counter() - t0
        self.step = step
        if self._pending_checkpoint is not None:
            self.last_checkpoint, self._pending_checkpoint = self._pending_checkpoint, None
        self.steps_run += 1
        self.stop = bool(flat[n + 1] > 0)
        if self.stop:
            self.stop_wanted = False
        diverged = [r for r in range(self.world) if flat[n + 2 + r] > 0]
        if diverged:
            if failure is not None:
                raise DivergedError(f"{failure} (on rank {self.rank})")
            raise DivergedError(f"{', '.join(self._name(r) for r in diverged)} diverged (NaN or Inf in its loss or "
                                "in a tensor reaching the INT8 quantizer)")
        offset = 0
        for p in params:
            k = p.numel()
            p.grad = flat[offset:offset + k].view_as(p).clone()
            offset += k
        return flat[n].clone()

    def check_replicas(self, params: list[torch.nn.Parameter], step: int) -> None:
        """Raise :class:`RankMismatchError` on every rank if the ranks' LoRA weights differ."""
        digests: list[Any] = [None] * self.world
        self._collective("comparing the LoRA weights", tdist.all_gather_object, digests, params_digest(params))
        if len(set(digests)) > 1:
            raise RankMismatchError(
                f"the LoRA weights differ between ranks after step {step} ("
                + ", ".join(f"rank {r} {d}" for r, d in enumerate(digests)) + "): the replicas drifted apart "
                "(different PyTorch builds or a nondeterministic accelerator?); resume from the previous checkpoint "
                "with identical software on every rank")
        self._pending_checkpoint = step  # rank 0 writes it next; the next collective confirms it

    # ------------------------------------------------------------------ the end
    def finish(self, cfg: FinetuneConfig, runtime: Any, params: list[torch.nn.Parameter]) -> dict[str, Any] | None:
        """Gather every rank's figures; rank 0 gets the report's ``distributed`` section, the
        others None (they are done: rank 0 writes the outputs alone)."""
        self.phase = "gathering the figures"
        mine: dict[str, Any] = {
            "rank": self.rank, "host": self.host, "steps_run": self.steps_run,
            "time_training_measured_s": time.perf_counter() - self.t_start if self.t_start else 0.0,
            "time_allreduce_measured_s": self.time_allreduce,
        }
        if runtime is not None:
            b = runtime.acc.board
            gemms = runtime.report(since=self._gemms_at_start)
            cycles = sum(v["cycles"] for v in gemms.values())
            acc_s, quant_s = runtime.measured_times()
            mine.update({"board": b.name, "backend": runtime.acc.backend,
                         "time_accelerator_measured_s": acc_s, "time_quantization_measured_s": quant_s,
                         "total_cycles": cycles, "modelled_board_time_s": cycles / (b.clock_mhz * 1e6),
                         "per_gemm": gemms})
        everyone: list[Any] = [None] * self.world if self.rank == 0 else None
        self._collective("gathering the ranks' figures", tdist.gather_object, mine, everyone, dst=0)
        if self.rank != 0:
            return None
        n = sum(p.numel() for p in params)
        return {
            "world_size": self.world, "process_group": "gloo (CPU tensors over TCP)",
            "global_batch_size": cfg.batch_size,
            "rows_per_rank": [(lambda s: s.stop - s.start)(block_of_rows(r, self.world, cfg.batch_size))
                              for r in range(self.world)],
            "allreduce": {"method": "one flat fp32 all-reduce (SUM) per step of the LoRA gradients, the loss, "
                                    "a stop flag and one divergence flag per rank",
                          "gradient_elements": n, "bytes_per_step": 4 * (n + 2 + self.world),
                          "time_measured_s": self.time_allreduce,
                          "note": "measured on rank 0 around the all-reduce call; it includes waiting for the "
                                  "slowest rank"},
            "per_rank": everyone,
            "note": "per-rank figures cover the steps run by this launch (after a resume, from the resumed step)",
        }
