"""lora-qta evaluate --combine: finished evaluations with disjoint seeds pool into one result whose
statistics are those of every seed together; anything that would mix different runs is refused."""

import json

import pytest

from lora_qta.cli import main
from lora_qta.errors import OptionError, OutputDirError
from lora_qta.training.evaluate import combine, summarize

IDENTITY = {"precision": "fp32", "steps": 300, "learning_rate": 0.02, "rank": 8}
METRICS = ("concept_accuracy", "concept_probability", "known_accuracy", "heldout_loss")


def _run(seed: int, value: float, identity: dict | None) -> dict:
    run = {k: value if k != "heldout_loss" else 0.04 + value / 100 for k in METRICS}
    run["sampling_se"] = {k: 0.01 for k in METRICS}
    run.update(status="trained", seed=seed, folder=f"/nowhere/seed{seed}")
    if identity is not None:
        run["identity"] = {**identity, "seed": seed}
    return run


def _evaluation(folder, seeds, values, steps=300, identity=IDENTITY, with_identity=True, defaults=None):
    """An evaluate.json as `lora-qta evaluate` writes it, for variants fp32 and int8."""
    runs = {"fp32": {}, "int8": {}}
    for s, (f, q) in zip(seeds, values):
        runs["fp32"][str(s)] = _run(s, f, identity if with_identity else None)
        runs["int8"][str(s)] = _run(s, q, {**identity, "precision": "int8"} if with_identity else None)
    summaries, comparisons, target = summarize(runs, ["fp32", "int8"], seeds)
    result = {"label": "measured on this machine", "machine": "m", "date": "2026-11-26 19:00",
              "command": f"lora-qta evaluate --seeds {','.join(map(str, seeds))}", "variants": ["fp32", "int8"],
              "variant_options": {"fp32": {"precision": "fp32"}, "int8": {"precision": "int8"}}, "seeds": list(seeds),
              "steps": steps, "samples": {"concept": 200, "per_known_digit": 20}, "finetune_defaults": defaults or {"rank": 8},
              "target": {"rule": "the rule", "per_variant": target}, "base": {k: 0.0 for k in METRICS},
              "metrics": summaries, "comparisons": comparisons, "runs": runs,
              "time_s_measured": {"train_s": 10.0, "measure_s": 5.0, "total": 16.0}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "evaluate.json").write_text(json.dumps(result))
    return result


A_VALUES = [(0.70, 0.75), (0.80, 0.78), (0.60, 0.70)]
B_VALUES = [(0.76, 0.44), (0.86, 0.77)]


def test_pooled_statistics_equal_those_of_every_seed_together(tmp_path):
    a = _evaluation(tmp_path / "a", [0, 1, 2], A_VALUES)
    b = _evaluation(tmp_path / "b", [3, 4], B_VALUES)
    res = combine([str(tmp_path / "b"), str(tmp_path / "a" / "evaluate.json")], str(tmp_path / "out"))
    runs = {n: {**a["runs"][n], **b["runs"][n]} for n in ("fp32", "int8")}
    summaries, comparisons, target = summarize(runs, ["fp32", "int8"], [0, 1, 2, 3, 4])
    assert res["seeds"] == [0, 1, 2, 3, 4]
    assert res["metrics"] == summaries and res["comparisons"] == comparisons
    assert res["target"]["per_variant"] == target and res["target"]["rule"] == "the rule"
    c = res["comparisons"]["int8"]["concept_accuracy"]
    assert c["per_seed"] == pytest.approx([5.0, -2.0, 10.0, -32.0, -9.0])
    assert [e["seeds"] for e in res["combined_from"]] == [[3, 4], [0, 1, 2]]
    assert res["base_from"].endswith("a/evaluate.json")  # the base measured at the smallest first seed
    assert res["time_s_measured"]["total"] == pytest.approx(32.0)
    written = json.loads((tmp_path / "out" / "evaluate.json").read_text())
    assert written["seeds"] == [0, 1, 2, 3, 4] and (tmp_path / "out" / "evaluate_diffs.png").stat().st_size > 0
    # combining again into the same output (a combination of its own) is allowed
    combine([str(tmp_path / "a"), str(tmp_path / "b")], str(tmp_path / "out"))


def test_a_seed_in_two_evaluations_is_refused(tmp_path):
    _evaluation(tmp_path / "a", [0, 1, 2], A_VALUES)
    _evaluation(tmp_path / "b", [2, 3], B_VALUES)
    with pytest.raises(OptionError, match="seed 2 is in both"):
        combine([str(tmp_path / "a"), str(tmp_path / "b")], str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_other_options_are_refused(tmp_path):
    _evaluation(tmp_path / "a", [0, 1, 2], A_VALUES)
    _evaluation(tmp_path / "b", [3, 4], B_VALUES, steps=100)
    with pytest.raises(OptionError, match="differ in steps"):
        combine([str(tmp_path / "a"), str(tmp_path / "b")], str(tmp_path / "out"))
    # an option added since (at its default) is no difference; another default is
    _evaluation(tmp_path / "d", [3, 4], B_VALUES, defaults={"rank": 8, "fuse_lora": False})
    assert combine([str(tmp_path / "a"), str(tmp_path / "d")], str(tmp_path / "out"))["seeds"] == [0, 1, 2, 3, 4]
    _evaluation(tmp_path / "e", [3, 4], B_VALUES, defaults={"rank": 4, "fuse_lora": False})
    with pytest.raises(OptionError, match="differ in finetune_defaults"):
        combine([str(tmp_path / "a"), str(tmp_path / "e")], str(tmp_path / "out2"))
    _evaluation(tmp_path / "c", [3, 4], B_VALUES, identity={**IDENTITY, "learning_rate": 0.01})
    with pytest.raises(OptionError, match=r"fp32 seed 3 .* other options .*\(learning_rate\)"):
        combine([str(tmp_path / "a"), str(tmp_path / "c")], str(tmp_path / "out"))


def test_identity_from_the_run_folder_or_refused(tmp_path):
    _evaluation(tmp_path / "a", [0, 1, 2], A_VALUES)
    b = _evaluation(tmp_path / "b", [3, 4], B_VALUES, with_identity=False)  # written before identities were kept
    with pytest.raises(OptionError, match="does not record the identity of fp32 seed 3"):
        combine([str(tmp_path / "a"), str(tmp_path / "b")], str(tmp_path / "out"))
    for name in ("fp32", "int8"):  # the run folders hold report.json with the identity
        for s, run in b["runs"][name].items():
            folder = tmp_path / "runs" / name / f"seed{s}"
            folder.mkdir(parents=True)
            ident = {**IDENTITY, "precision": name, "seed": int(s)}
            (folder / "report.json").write_text(json.dumps({"identity": ident}))
            run["folder"] = str(folder)
    (tmp_path / "b" / "evaluate.json").write_text(json.dumps(b))
    assert combine([str(tmp_path / "a"), str(tmp_path / "b")], str(tmp_path / "out"))["seeds"] == [0, 1, 2, 3, 4]


def test_outputs_of_other_evaluations_are_not_overwritten(tmp_path):
    _evaluation(tmp_path / "a", [0, 1, 2], A_VALUES)
    _evaluation(tmp_path / "b", [3, 4], B_VALUES)
    _evaluation(tmp_path / "c", [5], [(0.7, 0.7)])
    before = (tmp_path / "a" / "evaluate.json").read_text()
    with pytest.raises(OutputDirError, match="is one of the evaluations to combine"):
        combine([str(tmp_path / "a"), str(tmp_path / "b")], str(tmp_path / "a"))
    with pytest.raises(OutputDirError, match="holds an evaluation of its own"):
        combine([str(tmp_path / "a"), str(tmp_path / "b")], str(tmp_path / "c"))
    assert (tmp_path / "a" / "evaluate.json").read_text() == before
    with pytest.raises(OptionError, match="two or more"):
        combine([str(tmp_path / "a")], str(tmp_path / "out"))
    with pytest.raises(OptionError, match="cannot read"):
        combine([str(tmp_path / "a"), str(tmp_path / "missing")], str(tmp_path / "out"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "evaluate.json").write_text(json.dumps({"seeds": [7]}))
    with pytest.raises(OptionError, match="not an evaluate.json"):
        combine([str(tmp_path / "a"), str(tmp_path / "bad")], str(tmp_path / "out"))


def test_cli_combines_and_refuses_options_that_define_runs(tmp_path, capsys):
    _evaluation(tmp_path / "a", [0, 1, 2], A_VALUES)
    _evaluation(tmp_path / "b", [3, 4], B_VALUES)
    srcs = f"{tmp_path / 'a'},{tmp_path / 'b'}"
    assert main(["evaluate", "--combine", srcs, "--output-dir", str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    assert "| int8 - fp32, paired per seed |" in text and "+5.0, -2.0, +10.0, -32.0, -9.0" in text
    assert "lora-qta evaluate --combine" in text
    # the time is the sources' (the combine took well under a second), and says so
    assert "the combined folders' last evaluate commands took" in text
    for option in (["--seeds", "0,1"], ["--seed", "3"], ["--board", "kv260"], ["--backend", "csim"]):
        assert main(["evaluate", "--combine", srcs, *option, "--output-dir", str(tmp_path / "o2")]) == 2
        assert f"leave out {option[0]}" in capsys.readouterr().err and not (tmp_path / "o2").exists()
