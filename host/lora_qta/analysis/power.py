"""Power measurement of the accelerator with PYNQ's rail sensors, or against emulated sensors.

On a board, ``pynq.get_rails()`` lists the PMBus/INA power rails (libsensors); this module
records the chosen rails' power sensors with ``pynq.pmbus.DataRecorder`` while it runs marked
phases -- idle, a GEMM loop (the six GEMMs of one LoRA layer, repeated), training steps (every
LoRA GEMM of one training step of the default model, repeated), idle again -- subtracts the
idle baseline (mean of the idle phases) and reports the energy per GEMM and per training step,
GOPS (2 x MACs per second) and GOPS/W, with a PNG of the power trace, phases shaded.

On a PC (no rails) the very same code path runs against **emulated sensors**: a
``get_rails()``-compatible dict of ``pynq.pmbus.Rail`` objects whose ``voltage``, ``current``
and ``power`` are duck-typed sensors (``name``, ``parents``, ``get_value()``, ``value``, as
``pynq.pmbus.MultiSensor`` reads them). Their power is an idle draw (a stated assumption per
board, ``idle_watts`` of its ``host`` table in ``hardware.toml``) plus, while a phase runs, the
energy model's dynamic power: the modelled energy of the phase's GEMMs
(:mod:`lora_qta.analysis.energy`, Horowitz 45 nm) divided by their modelled time at the board
clock (cycles from the emulated accelerator's kernel counter). The
emulated workload plays the modelled schedule back in real time (it holds each phase for the
modelled duration of a whole number of repetitions) so that the recorder samples a trace with
the board's timing. Every figure from emulated sensors is labelled
"emulated sensors: power from the energy model (modelled)"; nothing here is a board measurement
unless it ran on a board's rails. The report and the trace's figure are
:func:`lora_qta.analysis.report.power_markdown` and :func:`lora_qta.analysis.plots.power_plot`.

``pynq.pmbus.DataRecorder`` needs pandas (pin ``pandas==2.2.3``, compatible with numpy 1.26).
"""

from __future__ import annotations

import threading
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..errors import RailError, RecordingError
from ..hw.config import BoardConfig, config
from ..lora.gemms import lora_call
from ..runtime.check import random_operands
from . import shapes

EMULATED_LABEL = "emulated sensors: power from the energy model (modelled)"
BOARD_LABEL = "measured on a board (PYNQ rail sensors)"

INPUT_RAIL_NAMES = ("12V", "12v", "VIN", "VCC12", "12V_IN", "PS_12V", "VCC_12V")
"""Rail names taken as a board's whole input when ``--rails`` is not given."""


# ----------------------------------------------------------------------------- emulated sensors

class PowerSource:
    """The emulated board's present power draw (W), set by the emulated workload (thread-safe)."""

    def __init__(self, idle_watts: float):
        self.idle_watts = idle_watts
        self._watts = idle_watts
        self._lock = threading.Lock()

    def set(self, watts: float) -> None:
        with self._lock:
            self._watts = watts

    def idle(self) -> None:
        self.set(self.idle_watts)

    @property
    def watts(self) -> float:
        with self._lock:
            return self._watts


class EmulatedSensor:
    """A sensor as ``pynq.pmbus`` uses them: ``name``, ``parents``, ``get_value``, ``value``."""

    def __init__(self, name: str, unit: str, read: Callable[[], float]):
        self.name = name
        self._unit = unit
        self._read = read
        self.parents = tuple()

    def get_value(self, parents=None) -> float:
        return float(self._read())

    @property
    def value(self) -> float:
        return self.get_value()

    def __repr__(self) -> str:
        return f"Sensor {{name={self.name}, value={self.value}{self._unit}, emulated}}"


def emulated_rails(board: BoardConfig, source: PowerSource) -> dict:
    """A ``pynq.get_rails()``-compatible dict with the board's input rail, whose sensors read
    ``source`` (power in W, fixed voltage, current = power / voltage)."""
    from pynq.pmbus import Rail

    name, volts = board.host.input_rail, board.host.input_volts
    rail = Rail(name)
    rail.voltage = EmulatedSensor(f"{name}_voltage", "V", lambda: volts)
    rail.current = EmulatedSensor(f"{name}_current", "A", lambda: source.watts / volts)
    rail.power = EmulatedSensor(f"{name}_power", "W", lambda: source.watts)
    return {name: rail}


def board_rails() -> dict:
    """``pynq.get_rails()`` without the libsensors warning on machines that have none."""
    import pynq

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pynq.get_rails()
        except Exception:  # no libsensors, no rails
            return {}


def select_power_sensors(rails: dict, names: Sequence[str] | None = None) -> list:
    """Power sensors to record: the named rails, else the board's input rail if one is found
    (it includes every other rail), else every rail with a power sensor (may double count
    rails that feed others: pass ``names`` on such boards)."""
    if names:
        missing = [n for n in names if n not in rails or rails[n].power is None]
        if missing:
            raise RailError(f"no power sensor on rail(s) {missing}; name rails among {sorted(rails)}")
        return [rails[n].power for n in names]
    for n in INPUT_RAIL_NAMES:
        if n in rails and rails[n].power is not None:
            return [rails[n].power]
    sensors = [r.power for r in rails.values() if r.power is not None]
    if not sensors:
        raise RailError("no rail has a power sensor; record on a board with power rails, or with "
                        "emulated sensors")
    return sensors


# ----------------------------------------------------------------------------- workloads

@dataclass
class PhaseResult:
    """What one phase ran: repetitions of a loop of ``gemms_per_rep`` GEMMs."""

    name: str
    reps: int
    gemms_per_rep: int
    macs_per_rep: int
    seconds: float                      # wall time of the phase
    modelled_energy_per_rep_j: float    # energy model (dynamic), for reference
    modelled_seconds_per_rep: float     # cycle model at the board clock


class GemmWorkload:
    """Runs lists of LoRA GEMMs on an :class:`~lora_qta.runtime.accelerator.Accelerator`.

    ``emulated=False``: each phase calls ``acc.gemm`` for real, repeating the loop until
    ``seconds`` have passed. ``emulated=True``: each distinct GEMM runs once on the emulated
    accelerator (for its kernel cycle count), then the phase is played back: the power source is
    set to idle + modelled dynamic power for the modelled duration of a whole number of loops.
    """

    def __init__(self, board: BoardConfig, backend: str, emulated: bool, source: PowerSource | None = None,
                 seed: int = 0):
        from ..runtime.accelerator import Accelerator

        self.board = board
        self.acc = Accelerator(board.name, backend)
        self.emulated = emulated
        self.source = source
        self.rng = np.random.default_rng(seed)
        self._ops: dict[tuple, tuple] = {}
        self._cycles: dict[tuple, int] = {}
        self._energy: dict[tuple, float] = {}

    def _run(self, g):
        if g.key not in self._ops:
            self._ops[g.key] = random_operands(self.rng, g.m, g.k, g.n, g.trans_a, g.trans_b)
        a, b = self._ops[g.key]
        kw = dict(out="int8", mult=1, shift=12) if g.out_int8 else {}
        r = self.acc.gemm(a, b, trans_a=g.trans_a, trans_b=g.trans_b, **kw)
        self._cycles[g.key] = r.cycles
        return r

    def modelled(self, gemms) -> tuple[float, float]:
        """(dynamic energy in J, time in s) of one pass over ``gemms`` (modelled)."""
        from .energy import gemm_energy
        from ..runtime.planner import plan

        energy, cycles = 0.0, 0
        for g in gemms:
            if g.key not in self._cycles:
                self._run(g)
            if g.key not in self._energy:
                call = plan(self.board, lora_call(g.key)).call
                self._energy[g.key] = gemm_energy(self.board, call).total_pj * 1e-12
            cycles += self._cycles[g.key]
            energy += self._energy[g.key]
        return energy, cycles / (self.board.clock_mhz * 1e6)

    def prepare(self, gemms) -> None:
        """Run every distinct GEMM once (operands, cycle counts, energies) before recording."""
        self.modelled(gemms)

    def idle(self, name: str, seconds: float) -> PhaseResult:
        if self.source is not None:
            self.source.idle()
        t0 = time.perf_counter()
        time.sleep(seconds)
        return PhaseResult(name, 0, 0, 0, time.perf_counter() - t0, 0.0, 0.0)

    def phase(self, name: str, gemms, seconds: float) -> PhaseResult:
        e_rep, t_rep = self.modelled(gemms)   # also warms the operands and cycle counts
        macs = sum(g.macs for g in gemms)
        if self.emulated:
            reps = max(1, int(round(seconds / t_rep)))
            self.source.set(self.source.idle_watts + e_rep / t_rep)
            t0 = time.perf_counter()
            time.sleep(reps * t_rep)
            wall = time.perf_counter() - t0
            self.source.idle()
        else:
            reps = 0
            t0 = time.perf_counter()
            while True:
                for g in gemms:
                    self._run(g)
                reps += 1
                if time.perf_counter() - t0 >= seconds:
                    break
            wall = time.perf_counter() - t0
        return PhaseResult(name, reps, len(gemms), macs, wall, e_rep, t_rep)


# ----------------------------------------------------------------------------- measurement

def record(sensors: list, workload: GemmWorkload, phases: list[tuple], interval: float):
    """Run ``phases`` = [(name, gemms or None for idle, seconds)] under a DataRecorder on
    ``sensors``, one mark per phase. Returns (frame, [(mark, PhaseResult, t_start, t_end)])."""
    from pynq.pmbus import DataRecorder

    try:
        rec = DataRecorder(*sensors)
    except ImportError as e:  # DataRecorder imports pandas in its constructor
        raise RecordingError(f"pynq.pmbus.DataRecorder needs pandas ({e}): pip install pandas") from e
    done = []
    with rec.record(interval):
        time.sleep(2 * interval)  # a first sample before the first mark
        for name, gemms, seconds in phases:
            mark = rec.mark()
            t_start = time.time()
            res = workload.idle(name, seconds) if gemms is None else workload.phase(name, gemms, seconds)
            done.append((mark, res, t_start, time.time()))
        time.sleep(2 * interval)
    return rec.frame, done


def analyse(frame, done, sensors: list, label: str) -> dict:
    """Mean power per phase (sum of the recorded sensors), idle baseline, energy per GEMM / step,
    GOPS and GOPS/W."""
    cols = [s.name for s in sensors]
    power = frame[cols].astype(float).sum(axis=1)
    marks = frame["Mark"].astype(int)
    phases = []
    for mark, res, t0, t1 in done:
        sel = power[marks == mark]
        phases.append({"name": res.name, "mark": mark, "samples": int(len(sel)),
                       "mean_w": float(sel.mean()) if len(sel) else float("nan"), "seconds": res.seconds,
                       "reps": res.reps, "gemms_per_rep": res.gemms_per_rep, "macs_per_rep": res.macs_per_rep,
                       "modelled_energy_per_rep_j": res.modelled_energy_per_rep_j,
                       "modelled_seconds_per_rep": res.modelled_seconds_per_rep, "t0": t0, "t1": t1})
    idle = [p for p in phases if p["reps"] == 0 and p["samples"]]
    if not idle:
        raise RecordingError("no idle samples recorded: lengthen the idle phase or shorten the interval")
    base = float(np.mean([p["mean_w"] for p in idle]))
    for p in phases:
        if p["reps"] == 0:
            continue
        dyn = p["mean_w"] - base
        ops = 2.0 * p["macs_per_rep"] * p["reps"]
        energy = dyn * p["seconds"]
        p.update({
            "dynamic_w": dyn, "energy_j": energy,
            "energy_per_gemm_j": energy / (p["reps"] * p["gemms_per_rep"]),
            "energy_per_rep_j": energy / p["reps"],
            "gops": ops / p["seconds"] / 1e9,
            "gops_per_w_dynamic": ops / p["seconds"] / 1e9 / dyn if dyn > 0 else float("nan"),
            "gops_per_w_total": ops / p["seconds"] / 1e9 / p["mean_w"],
            "modelled_energy_per_gemm_j": p["modelled_energy_per_rep_j"] / p["gemms_per_rep"],
        })
    return {"label": label, "sensors": cols, "idle_w": base, "phases": phases}


def measure(board_name: str = "zcu104", sensors_mode: str = "auto", rails: Sequence[str] | None = None,
            interval: float = 0.05, idle_seconds: float = 2.0, phase_seconds: float = 3.0,
            tokens: int = 1024, features: int = 320, rank: int = 8, idle_watts: float | None = None,
            backend: str | None = None) -> tuple[dict, object]:
    """The whole measurement; returns (report, DataRecorder frame)."""
    board = config().board(board_name)
    found = board_rails() if sensors_mode in ("auto", "board") else {}
    if sensors_mode == "board" and not found:
        raise RailError("no PYNQ power rails found (pynq.get_rails() is empty): run on a board, "
                        "or use --sensors emulated")
    emulated = not found
    source = None
    if emulated:
        source = PowerSource(board.host.idle_watts if idle_watts is None else idle_watts)
        found = emulated_rails(board, source)
        backend = backend or "emulation"
    else:
        backend = backend or "board"
    sensors = select_power_sensors(found, rails)
    workload = GemmWorkload(board, backend, emulated, source)
    layer = shapes.LoraLayer("stand-in layer", tokens, features, features)
    phases = [("idle", None, idle_seconds),
              (f"GEMM loop (LoRA layer {tokens}x{features}, r={rank})", shapes.lora_gemms([layer], rank),
               phase_seconds)]
    try:
        step = shapes.lora_gemms(shapes.default_model_layers(), rank)
        phases.append((f"training steps (default model LoRA GEMMs, r={rank})", step, phase_seconds))
    except ImportError as e:  # the default model's module is missing
        print(f"training-step phase skipped: {e}")
    phases.append(("idle ", None, idle_seconds))
    for _, gemms, _ in phases:
        if gemms is not None:
            workload.prepare(gemms)
    frame, done = record(sensors, workload, phases, interval)
    rep = analyse(frame, done, sensors, EMULATED_LABEL if emulated else BOARD_LABEL)
    rep.update({"board": board.name, "emulated": emulated, "interval": interval, "backend": backend,
                "idle_watts_assumed": source.idle_watts if source else None})
    return rep, frame
