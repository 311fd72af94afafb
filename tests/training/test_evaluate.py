"""lora-qta evaluate end to end at toy size: both precisions, several seeds, the table."""

import json

from lora_qta.cli import main


def test_evaluate_runs_both_precisions_over_seeds(tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", "--output-dir", str(out), "--steps", "2", "--samples-per-class", "2",
                 "--seeds", "2"]) == 0
    table = capsys.readouterr().out
    assert "| concept accuracy (new token -> digit 7) |" in table and "±" in table and "targets:" in table
    res = json.loads((out / "evaluate.json").read_text())
    for prec in ("fp32", "int8"):
        row = res["rows"][prec]
        assert [r["seed"] for r in row["per_seed"]] == [0, 1]
        assert 0 <= row["concept_accuracy"] <= 1 and row["heldout_loss"] > 0
        assert (out / "seed1" / prec / "adapter" / "pytorch_lora_weights.safetensors").is_file()
    assert (out / "concept_samples.png").is_file()
