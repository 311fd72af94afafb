"""lora-qta evaluate: its command line, and one end-to-end run at toy size (two variants, two
seeds, a few samples) writing evaluate.json and the plot of paired differences."""

import argparse
import json

import pytest

from lora_qta.cli import build_parser, main
from lora_qta.cli.training import evaluate_seeds
from lora_qta.training.evaluate import evaluate


def _args(*argv):
    return build_parser().parse_args(["evaluate", *argv])


def test_seed_options():
    assert evaluate_seeds(_args()) == [0, 1, 2]
    assert evaluate_seeds(_args("--seeds", "3,5,8")) == [3, 5, 8]
    assert evaluate_seeds(_args("--num-seeds", "2", "--seed", "4")) == [4, 5]
    a = _args()
    assert a.variants is None and a.samples_per_class is None and a.concept_samples is None and a.combine is None


def test_seeds_and_num_seeds_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["evaluate", "--seeds", "0,1", "--num-seeds", "3"])
    assert e.value.code == 2 and "not allowed with" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--variants", "fp32,fp8"], "unknown variant 'fp8'"),
    (["--variants", "int8"], "must include fp32"),
    (["--seeds", "0,0"], "repeats a seed"),
    (["--num-seeds", "0"], "--num-seeds must be at least 1"),
    (["--concept-samples", "0", "--seeds", "0"], "--concept-samples must be at least 1"),
])
def test_bad_options_fail_before_any_training(tmp_path, capsys, argv, message):
    out = tmp_path / "eval"
    assert main(["evaluate", "--output-dir", str(out), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (out / "runs").exists()


def test_evaluate_end_to_end_two_seeds(tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", "--output-dir", str(out), "--steps", "2", "--samples-per-class", "1",
                 "--concept-samples", "3", "--seeds", "0,1", "--variants", "fp32,int8"]) == 0
    text = capsys.readouterr().out
    assert "| int8 - fp32, paired per seed |" in text and "95% CI" in text and "measured on this machine" in text
    res = json.loads((out / "evaluate.json").read_text())
    assert res["label"] == "measured on this machine" and res["seeds"] == [0, 1] and res["steps"] == 2
    assert res["samples"] == {"concept": 3, "per_known_digit": 1} and res["variants"] == ["fp32", "int8"]
    assert res["command"].startswith("lora-qta evaluate --variants fp32,int8 --seeds 0,1 --steps 2")
    for name in ("fp32", "int8"):
        for s in (0, 1):
            run = res["runs"][name][str(s)]
            assert run["status"] == "trained" and run["folder"].endswith(f"runs/{name}/seed{s}")
            assert (out / "runs" / name / f"seed{s}" / "adapter" / "pytorch_lora_weights.safetensors").is_file()
            assert 0 <= run["concept_probability"] <= 1 and run["heldout_loss"] > 0
            assert run["measurement"] == "measured" and (out / "runs" / name / f"seed{s}" / "measure.json").is_file()
        report = json.loads((out / "runs" / name / "seed1" / "report.json").read_text())
        assert report["identity"]["precision"] == name and report["identity"]["seed"] == 1
    c = res["comparisons"]["int8"]["concept_accuracy"]
    assert len(c["per_seed"]) == 2 and c["ci_low"] is not None and c["verdict"] == "too few seeds"
    assert res["target"]["per_variant"]["int8"]["verdict"] == "too few seeds"
    assert (out / "evaluate_diffs.png").stat().st_size > 10_000 and (out / "concept_samples.png").is_file()

    # the same options again: the finished runs and their real measurements are reused, read back
    # from the cache exactly, and the report says so
    lines = []
    again = evaluate(str(out), variants=["fp32"], seeds=[0, 1], steps=2, samples_per_class=1, concept_samples=3,
                     log=lines.append)
    assert all(r["status"].startswith("reused") for r in again["runs"]["fp32"].values())
    assert all(r["measurement"].startswith("reused from") for r in again["runs"]["fp32"].values())
    assert again["base"]["measurement"] == f"reused from {out / 'base_measure.seed0.json'}"
    assert sum("measurement reused from" in line for line in lines) == 3
    for s in ("0", "1"):
        for key in ("concept_accuracy", "concept_probability", "known_accuracy", "heldout_loss", "sampling_se",
                    "known_accuracy_per_class", "identity"):
            assert again["runs"]["fp32"][s][key] == res["runs"]["fp32"][s][key]
    assert again["metrics"]["fp32"] == res["metrics"]["fp32"]
