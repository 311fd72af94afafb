"""lora-qta evaluate resumes: each measurement is cached (``measure.json`` in its run folder,
``base_measure.seed<s>.json`` for the base model) as soon as it is made, and reused only when everything
that defines it matches. ``measure`` is replaced here by a quick stand-in in its format (a
deterministic function of the adapter loaded into the pipeline, the seed and the options) so that
the cache's behaviour costs seconds; test_evaluate.py reads real measurements back from the cache."""

import json
import shutil

import numpy as np
import pytest

from lora_qta.training import evalstats as st
from lora_qta.training import evaluate as ev

OPTIONS = dict(variants=["fp32", "int8"], seeds=[0], steps=2, samples_per_class=1, concept_samples=3)
PER_RUN = ("folder", "status", "measurement", "measure_time_s_measured", "wall_time_s_measured")
"""What a run's record in evaluate.json says about how it was obtained, not what was measured."""


class Interrupted(Exception):
    """Stands for Ctrl-C or a kill in the middle of a measurement."""


def _stand_in_result(x: float, concept_samples: int = 3, per_class: int = 1) -> dict:
    """measure()'s result format, its figures made from ``x`` in [0, 1), without the images."""
    values = {"concept_accuracy": x, "concept_probability": x / 3, "known_accuracy": 1 - x / 5,
              "heldout_loss": 0.04 + x / 100}
    return {**values, "known_accuracy_per_class": {str(c): 1 - x / (c + 2) for c in range(9)},
            "samples": {"concept": concept_samples, "per_known_digit": per_class},
            "sampling_se": {m.key: x / 97 for m in st.METRICS}}


def _stand_in(pipe, seed, concept_samples, per_class):
    """A measurement in measure()'s format, from the LoRA weights in ``pipe`` (none: the base model)."""
    lora = [p.detach().double().abs().sum().item() for n, p in pipe.unet.named_parameters() if "lora" in n]
    x = (sum(lora) * 0.731 + seed / 7 + concept_samples / 11 + per_class / 13) % 1
    images = np.random.default_rng(seed).random((min(8, concept_samples), 16, 16), dtype=np.float32)
    return {**_stand_in_result(x, concept_samples, per_class), "concept_images": images}


class Measure:
    """The stand-in, counting its calls; raises :class:`Interrupted` at call ``fail_at``."""

    def __init__(self, fail_at: int | None = None):
        self.calls, self.fail_at = 0, fail_at

    def __call__(self, pipe, seed, concept_samples, per_class, classifier=None, prob_model=None):
        self.calls += 1
        if self.calls == self.fail_at:
            raise Interrupted
        return _stand_in(pipe, seed, concept_samples, per_class)


def _evaluate(folder, measure: Measure, **changes) -> tuple[dict, list[str]]:
    lines: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ev, "measure", measure)
        result = ev.evaluate(str(folder), **{**OPTIONS, **changes}, log=lines.append)
    return result, lines


def _numbers(folder) -> dict:
    """evaluate.json's measured numbers and statistics, without how each was obtained."""
    res = json.loads((folder / "evaluate.json").read_text())
    runs = {n: {s: {k: v for k, v in r.items() if k not in PER_RUN} for s, r in rs.items()}
            for n, rs in res["runs"].items()}
    base = {k: v for k, v in res["base"].items() if k != "measurement"}
    return {"runs": runs, "base": base, **{k: res[k] for k in ("metrics", "comparisons", "target", "seeds")}}


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """An evaluation killed in its third measurement (base model and fp32 measured, int8 not) and
    run again; and, for reference, the same evaluation uninterrupted in a folder holding the same
    trained runs without their measurements."""
    out = tmp_path_factory.mktemp("resumed")
    with pytest.raises(Interrupted):
        _evaluate(out, Measure(fail_at=3))
    cached = sorted(p.relative_to(out).as_posix() for p in out.rglob("*measure*.json"))
    measure = Measure()
    result, lines = _evaluate(out, measure)
    ref = tmp_path_factory.mktemp("uninterrupted")
    shutil.copytree(out / "runs", ref / "runs", ignore=shutil.ignore_patterns("measure.json"))
    ref_measure = Measure()
    _evaluate(ref, ref_measure)
    return {"out": out, "ref": ref, "cached": cached, "calls": measure.calls, "ref_calls": ref_measure.calls,
            "result": result, "lines": lines}


def test_resumed_evaluation_equals_an_uninterrupted_one(resumed):
    out, ref = resumed["out"], resumed["ref"]
    assert resumed["cached"] == ["base_measure.seed0.json", "runs/fp32/seed0/measure.json"]
    assert resumed["calls"] == 1 and resumed["ref_calls"] == 3  # the rerun measured only the int8 run
    res = resumed["result"]
    assert res["base"]["measurement"] == f"reused from {out / 'base_measure.seed0.json'}"
    assert res["runs"]["fp32"]["0"]["measurement"].startswith("reused from")
    assert res["runs"]["int8"]["0"]["measurement"] == "measured"
    assert all(r["0"]["status"].startswith("reused") for r in res["runs"].values())
    assert f"evaluate: fp32, seed 0: measurement reused from {out / 'runs/fp32/seed0/measure.json'}" in resumed["lines"]
    assert "measurements reused: base, fp32/seed0;" in ev.format_table(res)
    assert _numbers(out) == _numbers(ref)
    assert (out / "concept_samples.png").read_bytes() == (ref / "concept_samples.png").read_bytes()
    stored = json.loads((out / "runs/int8/seed0/measure.json").read_text())["key"]
    assert stored["run"]["identity"] == res["runs"]["int8"]["0"]["identity"] and stored["sampling_seed"] == 0
    assert stored["concept_samples"] == 3 and stored["samples_per_known_digit"] == 1 and stored["format"] >= 1
    assert len(stored["run"]["adapter_sha256"]) == 64 and stored["judge"]["probe_sha256"]


@pytest.fixture
def copy(resumed, tmp_path):
    """A copy of the resumed evaluation, every measurement cached."""
    folder = tmp_path / "eval"
    shutil.copytree(resumed["out"], folder)
    return folder


def test_a_changed_measurement_option_measures_again(copy):
    measure = Measure()
    res, lines = _evaluate(copy, measure, concept_samples=4)
    assert measure.calls == 3 and all(r["0"]["measurement"] == "measured" for r in res["runs"].values())
    assert any("other concept_samples (3, now 4)" in line and "seed0/measure.json" in line for line in lines)
    # the caches now hold the new measurement: the same command again measures nothing
    again = Measure()
    _evaluate(copy, again, concept_samples=4)
    assert again.calls == 0


def test_unreadable_or_other_format_caches_measure_again(copy):
    base = copy / "base_measure.seed0.json"
    fp32, int8 = (copy / f"runs/{n}/seed0/measure.json" for n in ("fp32", "int8"))
    before = _numbers(copy)
    base.write_text(base.read_text()[:200])  # partial
    fp32.write_text("{not json")  # corrupt
    stored = json.loads(int8.read_text())
    stored["key"]["format"] = 0
    int8.write_text(json.dumps(stored))
    measure = Measure()
    _, lines = _evaluate(copy, measure)
    assert measure.calls == 3 and _numbers(copy) == before
    warned = [line for line in lines if "warning" in line]
    assert len(warned) == 2 and str(base) in warned[0] and str(fp32) in warned[1]
    assert any(str(int8) in line and "other format (0, now" in line for line in lines)
    again = Measure()
    _evaluate(copy, again)
    assert again.calls == 0


def test_a_retrained_run_measures_again(copy):
    report = copy / "runs/fp32/seed0/report.json"
    rep = json.loads(report.read_text())
    rep["identity"]["learning_rate"] *= 2  # no longer the run these options define: it is retrained
    report.write_text(json.dumps(rep))
    measure = Measure()
    res, _ = _evaluate(copy, measure)
    assert res["runs"]["fp32"]["0"]["status"].startswith("trained (replaced")
    assert measure.calls == 1 and res["runs"]["fp32"]["0"]["measurement"] == "measured"
    assert res["runs"]["int8"]["0"]["measurement"].startswith("reused from")


def test_a_replaced_adapter_measures_again(copy):
    # the same identities, other adapter files (e.g. a folder copied over): keyed on the adapter's sha256
    adapters = [copy / f"runs/{n}/seed0/adapter/pytorch_lora_weights.safetensors" for n in ("fp32", "int8")]
    before = _numbers(copy)["runs"]
    data = [a.read_bytes() for a in adapters]
    for a, d in zip(adapters, reversed(data)):
        a.write_bytes(d)
    measure = Measure()
    res, lines = _evaluate(copy, measure)
    assert measure.calls == 2 and all(r["0"]["status"].startswith("reused") for r in res["runs"].values())
    assert sum("another adapter file" in line for line in lines) == 2
    # each folder's measurement is now that of the adapter it holds
    assert res["runs"]["fp32"]["0"]["concept_accuracy"] == before["int8"]["0"]["concept_accuracy"]
    assert res["runs"]["int8"]["0"]["concept_accuracy"] == before["fp32"]["0"]["concept_accuracy"]


def test_ctrl_c_in_a_training_stops_the_evaluation_and_keeps_what_was_measured(tmp_path, monkeypatch):
    # finetune takes Ctrl-C itself (it checkpoints and returns): evaluate must stop, not measure a
    # run that does not exist
    monkeypatch.setattr(ev, "finetune", lambda cfg: {"interrupted": True, "step": 1})
    measure = Measure()
    with pytest.raises(KeyboardInterrupt):
        _evaluate(tmp_path / "eval", measure)
    assert measure.calls == 1 and (tmp_path / "eval" / "base_measure.seed0.json").is_file()


def test_the_command_says_how_to_resume_after_ctrl_c(tmp_path, monkeypatch, capsys):
    from lora_qta.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ev, "evaluate", interrupted)
    assert main(["evaluate", "--output-dir", str(tmp_path / "eval")]) == 130
    assert "the same command again resumes" in capsys.readouterr().err


def test_a_cached_measurement_reads_back_exactly_and_a_failed_write_keeps_the_old_one(tmp_path, monkeypatch):
    from lora_qta.errors import OutputDirError
    from lora_qta.training import measurecache as cache

    path, key = tmp_path / "measure.json", {"format": cache.MEASURE_FORMAT, "run": None, "sampling_seed": 3}
    result = {**_stand_in_result(0.1 + 0.2), "concept_images": np.float32([[1 / 3, 1e-38], [np.pi, 0.7]])[None]}
    cache.save(path, key, result, 1.5)
    back = cache.load(path, key, print, "test")
    assert back.seconds == 1.5 and back.result["concept_images"].dtype == np.float32
    assert back.result["concept_images"].tobytes() == result["concept_images"].tobytes()
    assert {k: v for k, v in back.result.items() if k != "concept_images"} == \
        {k: v for k, v in result.items() if k != "concept_images"}

    def full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache.os, "replace", full)
    with pytest.raises(OutputDirError, match="No space left"):
        cache.save(path, key, {**result, "concept_accuracy": 0.5}, 2.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["measure.json"]  # no temporary file left
    assert cache.load(path, key, print, "test").result["concept_accuracy"] == result["concept_accuracy"]


def test_a_training_cut_short_continues_from_its_checkpoint(resumed, tmp_path, monkeypatch):
    """A run whose training was stopped (here after its first of two steps, as Ctrl-C does:
    finetune checkpoints and returns) continues from that checkpoint on the next evaluation and
    ends with the adapter bytes of the uninterrupted run; a checkpoint of other options is not
    used: that run is trained again."""
    real = ev.finetune
    monkeypatch.setattr(ev, "finetune", lambda cfg: real(cfg, stop_after=1))
    with pytest.raises(KeyboardInterrupt):
        _evaluate(tmp_path / "eval", Measure(), variants=["fp32"])
    monkeypatch.setattr(ev, "finetune", real)
    res, _ = _evaluate(tmp_path / "eval", Measure(), variants=["fp32"])
    assert res["runs"]["fp32"]["0"]["status"].startswith("resumed from its checkpoint step_000001")
    adapter = "runs/fp32/seed0/adapter/pytorch_lora_weights.safetensors"
    assert (tmp_path / "eval" / adapter).read_bytes() == (resumed["out"] / adapter).read_bytes()

    monkeypatch.setattr(ev, "finetune", lambda cfg: real(cfg, stop_after=1))
    with pytest.raises(KeyboardInterrupt):
        _evaluate(tmp_path / "other", Measure(), variants=["fp32"], steps=3)
    monkeypatch.setattr(ev, "finetune", real)
    res, _ = _evaluate(tmp_path / "other", Measure(), variants=["fp32"])  # steps 2: not that checkpoint's run
    assert res["runs"]["fp32"]["0"]["status"].startswith("trained (replaced")
    assert (tmp_path / "other" / adapter).read_bytes() == (resumed["out"] / adapter).read_bytes()


def test_an_evaluation_with_another_first_seed_keeps_the_base_measurement(copy):
    # the base model is sampled with the first seed: an evaluation of seed 1 in the same folder
    # writes its own base measurement beside seed 0's instead of overwriting it
    seed0 = (copy / "base_measure.seed0.json").read_bytes()
    other = Measure()
    res, _ = _evaluate(copy, other, seeds=[1])
    assert res["base"]["measurement"] == "measured"
    assert (copy / "base_measure.seed0.json").read_bytes() == seed0
    assert (copy / "base_measure.seed1.json").is_file()
    again = Measure()
    res, _ = _evaluate(copy, again)
    assert again.calls == 0 and res["base"]["measurement"] == f"reused from {copy / 'base_measure.seed0.json'}"
