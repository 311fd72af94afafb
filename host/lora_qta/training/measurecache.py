"""The measurements of ``lora-qta evaluate``, cached so that a killed evaluation resumes them.

Each run's measurement (:func:`lora_qta.training.evaluate.measure`) is written into the run's
folder (``runs/<variant>/seed<s>/measure.json``; the base model's into
``base_measure.seed<s>.json``, one per sampling seed, as the evaluation samples the base model with
its first seed: evaluations with other seeds in one folder keep each other's)
the moment it is made: a temporary file renamed over the old one (``os.replace``), so a kill
leaves the old file or the new one, never half of one. Beside the result the file holds its
**key**, everything that defines the measurement:

* ``format``: :data:`MEASURE_FORMAT`, raised whenever what :func:`~.evaluate.measure` computes
  or how this file stores it changes;
* ``run``: the run's identity (``report.json``, :meth:`FinetuneConfig.identity`) and the sha256 of
  its adapter file; none for the base model;
* ``sampling_seed``, ``concept_samples``, ``samples_per_known_digit``, ``inference_steps`` and
  ``heldout_repeats``: the measurement's options;
* ``judge``: the digit classifier and the probability model (their scikit-learn repr and a sha256
  of their readings of the test split), ``base_model_sha256`` (the shipped pipeline the adapter is
  loaded into) and ``software`` (the versions of the libraries that sample and judge).

A cached measurement is reused only when the whole key matches; anything else (another option, a
retrained or replaced adapter, another format, an unreadable or incomplete file) is measured again
and the file overwritten. The adapter's sha256 rather than a deletion on retraining is what ties
the measurement to its run: it holds however the adapter changed (``evaluate`` retraining it,
``finetune --overwrite`` by hand, a folder copied over, a kill between training and measuring),
while a deletion holds only for the writers that remember to make it (``finetune --overwrite``
does remove ``measure.json`` with the run's other files, :data:`~.rundir.RUN_ENTRIES`).
The number of PyTorch threads is not part of the key, as it is not part of a run's identity.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import MeasurementCacheError, OutputDirError
from . import evalstats as st
from .models import LORA_FILE
from .rundir import MEASUREMENT

MEASURE_FORMAT = 1
"""Version of the cached measurement: raise it when ``measure`` or the stored layout changes."""


def base_measurement(seed: int) -> str:
    """The file name of the base model's cached measurement with sampling seed ``seed``, in the
    evaluation's output folder."""
    return f"base_measure.seed{seed}.json"


HELDOUT_REPEATS = 4
"""Noise draws per test image of the held-out loss (:func:`~.evaluate.heldout_loss`)."""

IMAGES = "concept_images"
"""The measurement's one array (the first concept samples, for the sample grid)."""

SOFTWARE = ("torch", "diffusers", "peft", "numpy", "scikit-learn")
"""The libraries whose versions a measurement is keyed on: they sample and judge the images."""

__all__ = ["HELDOUT_REPEATS", "MEASURE_FORMAT", "MEASUREMENT", "Cached", "base_measurement", "file_sha256",
           "judge_identity", "load", "measurement_key", "measurement_options", "run_key", "save"]


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def folder_sha256(folder: Path) -> str:
    """The sha256 over every file of a folder (relative paths and bytes, in sorted order)."""
    h = hashlib.sha256()
    for p in sorted(q for q in folder.rglob("*") if q.is_file()):
        h.update(p.relative_to(folder).as_posix().encode() + b"\0" + file_sha256(p).encode())
    return h.hexdigest()


def judge_identity(classifier, prob_model) -> dict[str, str]:
    """What identifies the two judges of a measurement: their scikit-learn repr and a sha256 of
    their predictions and probabilities on the test split (a refit that reads anything
    differently changes it)."""
    from . import digits as d

    images, _ = d.load_digits_dataset(split="test")
    images = (images + 1) / 2
    h = hashlib.sha256(np.ascontiguousarray(d.classify(images, classifier)).tobytes())
    h.update(np.ascontiguousarray(d.digit_probabilities(images, prob_model)).tobytes())
    return {"classifier": repr(classifier), "probability_model": repr(prob_model), "probe_sha256": h.hexdigest()}


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def measurement_options(concept_samples: int, per_class: int, classifier, prob_model) -> dict[str, Any]:
    """The part of a measurement's key that every run of one evaluation shares."""
    from . import digits as d

    return {"format": MEASURE_FORMAT, "concept_samples": concept_samples, "samples_per_known_digit": per_class,
            "inference_steps": d.DEFAULT_INFERENCE_STEPS, "heldout_repeats": HELDOUT_REPEATS,
            "judge": judge_identity(classifier, prob_model),
            "base_model_sha256": folder_sha256(d.shipped_model_dir()),
            "software": {n: _version(n) for n in SOFTWARE}}


def run_key(folder: Path, identity: dict[str, Any] | None) -> dict[str, Any]:
    """The part of a measurement's key that names the measured run: its identity and adapter."""
    return {"identity": identity, "adapter_sha256": file_sha256(folder / "adapter" / LORA_FILE)}


def measurement_key(options: dict[str, Any], seed: int, run: dict[str, Any] | None) -> dict[str, Any]:
    """The whole key of one measurement (``run`` None: the base model), as JSON stores it."""
    return json.loads(json.dumps({**options, "run": run, "sampling_seed": seed}))


@dataclass(frozen=True)
class Cached:
    """A measurement read back from its file."""

    result: dict[str, Any]
    """As :func:`~.evaluate.measure` returned it (the concept images as a numpy array again)."""
    seconds: float
    """The wall time its measurement took when it was made."""


def _differences(stored: dict[str, Any], key: dict[str, Any]) -> list[str]:
    """Why a stored key is not ``key``, one phrase per differing entry."""
    out = []
    for k in sorted(set(stored) | set(key)):
        mine, theirs = stored.get(k), key.get(k)
        if mine == theirs:
            continue
        if k == "run":
            mine, theirs = mine or {}, theirs or {}
            if mine.get("identity") != theirs.get("identity"):
                out.append("a run with another identity (trained with other options)")
            if mine.get("adapter_sha256") != theirs.get("adapter_sha256"):
                out.append("another adapter file (the run was retrained or replaced since)")
        elif isinstance(mine, dict) or isinstance(theirs, dict):
            out.append(f"other {k}")
        else:
            out.append(f"other {k} ({mine!r}, now {theirs!r})")
    return out


def _decode(result: Any) -> dict[str, Any]:
    """A stored result checked to hold every figure of a measurement, its images decoded."""
    if not isinstance(result, dict):
        raise MeasurementCacheError("no result")
    for k in ("known_accuracy_per_class", "samples", "sampling_se", IMAGES):
        if k not in result:
            raise MeasurementCacheError(f"no {k}")
    for m in st.METRICS:
        for v in (result.get(m.key), result["sampling_se"].get(m.key)):
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise MeasurementCacheError(f"no number for {m.key}")
    img = result[IMAGES]
    values = np.asarray(img["values"], dtype=np.dtype(img["dtype"]))
    return {**result, IMAGES: values.reshape(img["shape"])}


def load(path: Path, key: dict[str, Any], log: Callable[[str], None], label: str) -> Cached | None:
    """The measurement cached in ``path`` if its key is exactly ``key``, else None (after a line
    on ``log`` saying why, unless there is no file at all)."""
    try:
        stored = json.loads(path.read_text())
        if not isinstance(stored, dict) or not isinstance(stored.get("key"), dict):
            raise MeasurementCacheError("no key")
        if stored["key"] == key:
            return Cached(_decode(stored.get("result")), float(stored.get("measure_s", 0.0)))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        log(f"evaluate: warning: {label}: the cached measurement {path} is unreadable or incomplete ({e}); "
            "measuring again and overwriting it")
        return None
    log(f"evaluate: {label}: {path} holds a measurement of {', '.join(_differences(stored['key'], key))}; "
        "measuring again and overwriting it")
    return None


def _encode(result: dict[str, Any]) -> dict[str, Any]:
    img = np.asarray(result[IMAGES])
    return {**result, IMAGES: {"dtype": str(img.dtype), "shape": list(img.shape), "values": img.ravel().tolist()}}


def save(path: Path, key: dict[str, Any], result: dict[str, Any], seconds: float) -> None:
    """Write a measurement with its key into ``path`` atomically (a temporary file in the same
    folder, then ``os.replace``)."""
    text = json.dumps({"key": key, "measure_s": seconds, "result": _encode(result)}, indent=1)
    tmp = None
    try:
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".tmp-", suffix=".json", delete=False) as f:
            tmp = Path(f.name)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise OutputDirError(f"cannot write the measurement {path} ({e.strerror or e}); the evaluation's "
                             "--output-dir must be writable (free space, permissions)") from None
    finally:  # also on Ctrl-C: no temporary file is left behind
        if tmp is not None:
            tmp.unlink(missing_ok=True)
