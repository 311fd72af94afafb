"""A run never mixes with or returns another run's state (issue 9, items 5-8, 10 and 11).

One run per output folder (refused when it holds files, unless --resume or --overwrite), resume
checks every option that defines the run (--steps, precision, board, backend and the layer's
numerics included; --learning-rate is a recorded override), checkpoints ordered by step number,
an exclusive lock on the folder, divergence in INT8 runs stopped with the documented message,
non-finite checkpoints and unsafe optimizer files refused, accelerator counters carried across
resume, evaluate reusing only runs with the same options.
"""

import json
import os
import pickle
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lora_qta.cli import main
from lora_qta.errors import CheckpointError, DivergedError, OutputDirError, RunLockedError
from lora_qta.training import rundir
from lora_qta.training import loop as train
from lora_qta.training.config import FinetuneConfig
from lora_qta.training.loop import finetune, finished_run
from lora_qta.training.rundir import RunFolder

FAST = dict(steps=4, batch_size=8, checkpoint_every=2, num_examples=4, prior_per_class=2, samples=False,
            eval_every=0)


def cfg_for(run, model, **kw):
    return FinetuneConfig(output_dir=str(run), pretrained_model=model, **{**FAST, **kw})


def adapter(run):
    return load_file(str(Path(run) / "adapter" / "pytorch_lora_weights.safetensors"))


# ------------------------------------------------------------------ item 5: one run per folder

def test_reused_output_folder_is_refused_and_never_returns_the_old_adapter(tiny_digits_model, tmp_path):
    """The issue's repro: an old finished run in R, then a new shorter run in R."""
    run = tmp_path / "R"
    finetune(cfg_for(run, tiny_digits_model, precision="fp32", steps=6))
    old = adapter(run)
    with pytest.raises(OutputDirError, match="already holds.*--resume.*--overwrite"):
        finetune(cfg_for(run, tiny_digits_model, precision="fp32", steps=4, seed=1), stop_after=2)
    # resuming with other --steps (or any other option) is refused, not answered with the old adapter
    with pytest.raises(CheckpointError, match=r"steps: checkpoint 6, now 4"):
        finetune(cfg_for(run, tiny_digits_model, precision="fp32", steps=4, resume=True))
    with pytest.raises(CheckpointError, match=r"seed: checkpoint 0, now 1"):
        finetune(cfg_for(run, tiny_digits_model, precision="fp32", steps=6, seed=1, resume=True))
    # --overwrite replaces the run: no checkpoint of the old one survives
    finetune(cfg_for(run, tiny_digits_model, precision="fp32", steps=4, seed=1, overwrite=True))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000002", "step_000004"]
    assert not all(torch.equal(old[k], v) for k, v in adapter(run).items())
    # --overwrite never deletes files a run did not write
    (run / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirError, match="notes.txt"):
        finetune(cfg_for(run, tiny_digits_model, precision="fp32", overwrite=True))
    assert (run / "notes.txt").read_text() == "mine" and (run / "adapter").is_dir()


def test_resume_checks_precision_backend_and_numerics(tiny_digits_model, tmp_path):
    run = tmp_path / "r"
    finetune(cfg_for(run, tiny_digits_model, precision="int8", backend="fast"), stop_after=2)
    state = json.loads((run / "checkpoints" / "step_000002" / "state.json").read_text())
    assert state["identity"]["target"]["board"] == "zcu104" and state["identity"]["target"]["backend"] == "fast"
    with pytest.raises(CheckpointError, match="precision"):
        finetune(cfg_for(run, tiny_digits_model, precision="fp32", resume=True))
    with pytest.raises(CheckpointError, match="target"):
        finetune(cfg_for(run, tiny_digits_model, precision="int8", backend="csim", resume=True))
    with pytest.raises(CheckpointError, match="target"):
        finetune(cfg_for(run, tiny_digits_model, precision="int8", board="kv260", resume=True))
    state["identity"]["target"]["numerics"]["smooth_alpha"] = None  # a checkpoint of other numerics
    (run / "checkpoints" / "step_000002" / "state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="target"):
        finetune(cfg_for(run, tiny_digits_model, precision="int8", resume=True))


def test_the_identity_names_the_board_of_lora_qta_board(tiny_digits_model, tmp_path, monkeypatch):
    """Without --board the accelerator is $LORA_QTA_BOARD's board: the run's identity names that
    board (it named ZCU104 whatever the variable said), so a resume on another board is refused."""
    run = tmp_path / "r"
    monkeypatch.setenv("LORA_QTA_BOARD", "kv260")
    assert train.run_target(FinetuneConfig(precision="int8", backend="fast"))["board"] == "kv260"
    finetune(cfg_for(run, tiny_digits_model, precision="int8", backend="fast"), stop_after=2)
    state = json.loads((run / "checkpoints" / "step_000002" / "state.json").read_text())
    assert state["identity"]["target"]["board"] == "kv260"
    monkeypatch.delenv("LORA_QTA_BOARD")
    with pytest.raises(CheckpointError, match="target"):
        finetune(cfg_for(run, tiny_digits_model, precision="int8", backend="fast", resume=True))


def test_checkpoints_are_ordered_by_step_number(tmp_path):
    root = tmp_path / "checkpoints"
    for name in ("step_999999", "step_1000000", ".tmp_step_2000000", "step_3000000"):
        (root / name).mkdir(parents=True)
        if not name.endswith("3000000"):  # an incomplete folder (no state.json) is no checkpoint
            (root / name / "state.json").write_text("{}")
    assert rundir.latest_checkpoint(tmp_path).name == "step_1000000"
    assert [s for s, _ in rundir.checkpoints(tmp_path)] == [999999, 1000000]


def test_clean_up_keeps_the_newest_by_step(tiny_digits_model, tmp_path):
    run = tmp_path / "r"
    finetune(cfg_for(run, tiny_digits_model, precision="fp32", steps=6, checkpoint_every=1), stop_after=6)
    assert [s for s, _ in rundir.checkpoints(run)] == [5, 6]


# ------------------------------------------------------------------ item 6: lock

def test_a_second_run_in_the_same_folder_says_who_holds_it(tiny_digits_model, tmp_path, capsys):
    run = tmp_path / "r"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from lora_qta.training.rundir import RunFolder; "
         "f = RunFolder(sys.argv[1]); f.lock(); print('locked', flush=True); time.sleep(120)", str(run)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        rc = main(["finetune", "--output-dir", str(run), "--pretrained-model", tiny_digits_model, "--steps", "2",
                   "--no-samples", "--precision", "fp32"])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
        assert f"in use by process {holder.pid} on host" in err and "started" in err
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in run.iterdir()) == [".lock"]  # the refused run wrote nothing
    with RunFolder(run):  # released with its process
        with pytest.raises(RunLockedError, match=f"process {os.getpid()}"):
            RunFolder(run).lock()


# ------------------------------------------------------------------ item 7: divergence

def _poison_a_lora_weight_at(step_to_poison, monkeypatch):
    real = train.loss_of_step

    def poisoned(bundle, cfg, x0, context, step, *part):
        if step == step_to_poison:
            with torch.no_grad():
                next(p for n, p in bundle.unet.named_parameters() if "lora_A" in n).fill_(float("nan"))
        return real(bundle, cfg, x0, context, step, *part)

    monkeypatch.setattr(train, "loss_of_step", poisoned)


def test_nan_in_an_int8_run_stops_with_the_documented_message(tiny_digits_model, tmp_path, monkeypatch, capsys):
    """The NaN reaches the INT8 quantizer (no loss is computed): one line, exit 2, the checkpoint
    named, and the advice (--resume with a lower --learning-rate) is accepted and recorded."""
    run = tmp_path / "r"
    _poison_a_lora_weight_at(2, monkeypatch)
    args = ["finetune", "--output-dir", str(run), "--pretrained-model", tiny_digits_model, "--steps", "4",
            "--batch-size", "8", "--checkpoint-every", "2", "--num-examples", "4", "--prior-per-class", "2",
            "--no-samples", "--eval-every", "0"]
    assert main(args) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # the lines before it are the progress lines
    assert last.startswith("lora-qta: error: training diverged at step 3: NaN or Inf reached the INT8 quantizer")
    assert "Traceback" not in err and not any(ln.startswith("lora-qta") for ln in err.splitlines()[:-1])
    assert str(run / "checkpoints" / "step_000002") in last and "--resume --learning-rate 0.002" in last
    monkeypatch.undo()
    assert main(args + ["--resume", "--learning-rate", "0.002"]) == 0
    report = json.loads((run / "report.json").read_text())
    assert report["overrides"] == [{"step": 2, "learning_rate": 0.002, "was": 0.02}]
    state = json.loads((run / "checkpoints" / "step_000004" / "state.json").read_text())
    assert state["overrides"] == report["overrides"]


def test_nan_gradient_stops_before_the_weights_change(tiny_digits_model, tmp_path, monkeypatch):
    real = train.loss_of_step

    def nan_gradient(bundle, cfg, x0, context, step, *part):
        loss = real(bundle, cfg, x0, context, step, *part)
        if step == 3:  # finite loss, NaN gradient: d sqrt(x)/dx at 0 is inf, times 0
            p = next(p for n, p in bundle.unet.named_parameters() if "lora_B" in n)
            loss = loss + 0.0 * torch.sqrt(p.sum() * 0)
        return loss

    monkeypatch.setattr(train, "loss_of_step", nan_gradient)
    run = tmp_path / "r"
    with pytest.raises(DivergedError, match="step 4: the gradient norm became nan.*step_000002"):
        finetune(cfg_for(run, tiny_digits_model, precision="fp32"))


def test_a_checkpoint_with_non_finite_weights_is_refused(tiny_digits_model, tmp_path):
    run = tmp_path / "r"
    finetune(cfg_for(run, tiny_digits_model, precision="fp32"), stop_after=2)
    path = run / "checkpoints" / "step_000002" / "lora.safetensors"
    weights = load_file(str(path))
    first = sorted(weights)[0]
    weights[first] = torch.full_like(weights[first], float("inf"))
    save_file(weights, str(path))
    with pytest.raises(CheckpointError, match="non-finite weights"):
        finetune(cfg_for(run, tiny_digits_model, precision="fp32", resume=True))
    assert not (run / "adapter").exists()


# ------------------------------------------------------------------ item 8: safe loading

class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "code ran"))


def test_optimizer_state_cannot_run_code(tiny_digits_model, tmp_path):
    run = tmp_path / "r"
    finetune(cfg_for(run, tiny_digits_model, precision="fp32"), stop_after=2)
    marker = tmp_path / "pwned"
    with open(run / "checkpoints" / "step_000002" / "optimizer.pt", "wb") as f:
        pickle.dump({"optimizer": _Payload(str(marker)), "scheduler": {}}, f)
    with pytest.raises(CheckpointError, match="unreadable"):
        finetune(cfg_for(run, tiny_digits_model, precision="fp32", resume=True))
    assert not marker.exists()


# ------------------------------------------------------------------ items 10 and 11

def test_report_counts_the_whole_run_across_a_resume(tiny_digits_model, tmp_path):
    common = dict(precision="int8", steps=4)
    finetune(cfg_for(tmp_path / "straight", tiny_digits_model, **common))
    finetune(cfg_for(tmp_path / "resumed", tiny_digits_model, **common), stop_after=2)
    finetune(cfg_for(tmp_path / "resumed", tiny_digits_model, resume=True, **common))
    a = json.loads((tmp_path / "straight" / "report.json").read_text())
    b = json.loads((tmp_path / "resumed" / "report.json").read_text())
    assert a["accelerator"]["per_gemm"] == b["accelerator"]["per_gemm"]
    assert b["accelerator"]["per_gemm"]["fwd_H=X.At"]["calls"] == 4 * b["lora_layers"]
    assert b["accelerator"]["counted_over_steps"] == [0, 4] and b["steps"] == 4
    assert b["config"]["board"] == "zcu104" and b["config"]["backend"] == "fast"
    figures = b["accelerator"]["figures"]
    assert figures["bytes_moved"].startswith("modelled") and figures["utilization"].startswith("modelled")
    assert figures["cycles"].startswith("modelled")


def test_evaluate_reuses_only_a_run_with_the_same_options(tiny_digits_model, tmp_path):
    run = tmp_path / "r"
    cfg = cfg_for(run, tiny_digits_model, precision="fp32", steps=2)
    finetune(cfg)
    assert finished_run(cfg)
    assert not finished_run(replace(cfg, seed=1))
    assert not finished_run(replace(cfg, learning_rate=1e-3))
    assert not finished_run(replace(cfg, steps=3))
    assert not finished_run(replace(cfg, precision="int8"))


def test_one_run_spelled_two_ways_has_one_identity():
    """--resume refused the same target modules in another order (peft adapts the same layers:
    the adapters were byte-identical) and the documented default prompt given explicitly."""
    from lora_qta.training.checkpoint import identity_diff
    from lora_qta.training.config import DEFAULT_SD_PROMPT, FinetuneConfig

    ident = FinetuneConfig(target_modules=["to_q", "to_k"]).identity()
    assert identity_diff(ident, FinetuneConfig(target_modules=["to_k", "to_q"]).identity()) == {}
    assert identity_diff(ident, FinetuneConfig(target_modules=["to_q", "to_v"]).identity()) == {
        "target_modules": (["to_q", "to_k"], ["to_q", "to_v"])}               # shown as given
    sd = FinetuneConfig(pretrained_model="sd", instance_data_dir="imgs")
    explicit = FinetuneConfig(pretrained_model="sd", instance_data_dir="imgs", prompt=DEFAULT_SD_PROMPT)
    assert identity_diff(sd.identity(), explicit.identity()) == {}
    other = FinetuneConfig(pretrained_model="sd", instance_data_dir="imgs", prompt="a photo of xyz")
    assert set(identity_diff(sd.identity(), other.identity())) == {"prompt"}
