"""``lora-qta finetune``/``run`` say what is wrong in one line (exit 2) and refuse what they would
otherwise ignore (issue 9, items 9 and 13); the same run writes the same adapter bytes (item 14);
newcomer friction (item 15): off-terminal progress and no pipeline-loading bar.
"""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lora_qta.cli import main
from lora_qta.training.loop import Progress

QUICK = ["--steps", "2", "--batch-size", "4", "--num-examples", "2", "--prior-per-class", "1", "--no-samples",
         "--eval-every", "0", "--precision", "fp32"]


def one_line(capsys, argv) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("lora-qta: error: "), err
    return lines[0]


@pytest.mark.parametrize("extra, message", [
    (["--threads", "-1"], "--threads must be a positive integer, not -1"),
    (["--num-examples", "0"], "--num-examples must be at least 1, not 0"),
    (["--learning-rate", "-1"], "--learning-rate must be a positive number, not -1.0"),
    (["--learning-rate", "nan"], "--learning-rate must be a positive number, not nan"),
    (["--learning-rate", "inf"], "--learning-rate must be a finite number, not inf"),   # "positive", before
    (["--alpha", "0"], "--alpha must be a positive number, not 0.0"),
    (["--rank", "0"], "--rank must be at least 1, not 0"),
    (["--warmup-steps", "-5"], "--warmup-steps must be 0 or more, not -5"),
    (["--num-examples", "100000"], "--num-examples 100000 is more than the digits training split holds (143)"),
    (["--prior-per-class", "5000"], "--prior-per-class 5000 is more than the digits training split holds"),
    (["--instance-data-dir", "photos"], "--instance-data-dir applies to a Stable Diffusion model"),
    (["--prompt", "a photo of a dog"], "--prompt applies to a Stable Diffusion model"),
    (["--prompt", "p", "--instance-data-dir", "x"], "--instance-data-dir and --prompt apply to a Stable Diffusion"),
    (["--resume", "--overwrite"], "--resume and --overwrite contradict each other"),
    (["--offload", "all"], "--offload all: options of an int8 run's accelerator; --precision fp32 runs none: "
                           "drop them or use --precision int8"),
    (["--offload", "lora"], "--offload lora: options of an int8 run's accelerator"),
    # accepted and recorded before, though an fp32 run has no accelerator (the board was dropped)
    (["--offload-scheme", "tensor"], "--offload-scheme tensor: options of an int8 run's accelerator"),
    (["--board", "kv260", "--backend", "fast"], "--board kv260, --backend fast: options of an int8 run's"),
    (["--fuse-lora"], "--fuse-lora fuses each LoRA layer with its base layer on the accelerator: it needs "
                      "--precision int8 --offload all --offload-scheme row (given: --precision fp32"),
    # item 4: the accelerator splits oversized GEMMs; the limit that remains (memory) is checked first
    (["--batch-size", "100000"], "--batch-size 100000 needs at least"),
])
def test_bad_training_options_are_one_line(capsys, tmp_path, extra, message):
    out = tmp_path / "run"
    assert message in one_line(capsys, ["finetune", "--output-dir", str(out), *QUICK, *extra])
    assert not out.exists()  # refused before anything is written


def test_option_values_are_refused_before_the_training_stack_is_imported(tmp_path):
    """A mistyped value is refused at once, not after the 10-15 s of importing diffusers and peft."""
    code = ("import sys; from lora_qta.cli import main; "
            "rc = main(['finetune', '--learning-rate', '-1', '--output-dir', sys.argv[1]]); "
            "print(rc, [m for m in ('diffusers', 'peft') if m in sys.modules])")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, text=True)
    assert p.stdout.split() == ["2", "[]"], p.stdout + p.stderr
    assert "--learning-rate must be a positive number, not -1.0" in p.stderr


def test_only_finetune_says_resume_with_resume(capsys, monkeypatch, tmp_path):
    """An interrupted run's loop says nothing of --resume: `evaluate`, which has no such option,
    runs the same loop and says that the same command continues."""
    import signal

    from lora_qta.training import loop

    update = loop.Progress.update

    def ctrl_c_at_step_2(self, done, *args):  # Ctrl-C during the second step
        update(self, done, *args)
        if done == 2:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(loop.Progress, "update", ctrl_c_at_step_2)
    out = tmp_path / "run"
    rep = loop.finetune(loop.FinetuneConfig(output_dir=str(out), steps=4, batch_size=4, num_examples=2,
                                            prior_per_class=1, samples=False, eval_every=0, precision="fp32",
                                            checkpoint_every=2))
    assert rep["interrupted"] and rep["step"] == 2 and "--resume" not in capsys.readouterr().out
    monkeypatch.setattr(loop, "finetune", lambda cfg: {"interrupted": True, "step": 2, "writer": True})
    assert main(["finetune", "--output-dir", str(tmp_path / "new"), *QUICK]) == 130
    assert "interrupted: checkpoint saved at step 2; continue with the same command and --resume" in \
        capsys.readouterr().out


@pytest.mark.parametrize("env, engines", [("LORA_QTA_HOST_QUANT", "native or torch"),
                                          ("LORA_QTA_FAST_EPILOGUE", "native or numpy")])
def test_a_mistyped_engine_variable_is_refused_before_training(capsys, tmp_path, monkeypatch, env, engines):
    """Not at the first INT8 call, minutes into a run."""
    monkeypatch.setenv(env, "nativ")
    out = tmp_path / "run"
    quick = [a if a != "fp32" else "int8" for a in QUICK]
    assert f"{env}='nativ' is not an engine of" in (line := one_line(capsys, ["finetune", "--output-dir", str(out), *quick]))
    assert line.endswith(f"use {engines}")
    assert not out.exists()


def test_output_folder_that_is_a_file_or_unwritable(capsys, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert "is a file, not a folder" in one_line(capsys, ["finetune", "--output-dir", str(afile), *QUICK])
    assert "is a file, not a folder" in one_line(capsys, ["finetune", "--output-dir", str(afile / "sub"), *QUICK])
    unwritable = Path("/sys/lora_qta_cannot_write_here")  # not writable even for root
    if os.access("/sys", os.W_OK) and not unwritable.parent.is_mount():
        pytest.skip("no unwritable location on this machine")
    assert "cannot be written" in one_line(capsys, ["finetune", "--output-dir", str(unwritable), *QUICK])


def test_csim_without_sources_is_one_line_in_training(tmp_path):
    p = subprocess.run([sys.executable, "-m", "lora_qta.cli", "finetune", "--output-dir", str(tmp_path / "r"),
                        *QUICK[:-2], "--precision", "int8", "--backend", "csim"], capture_output=True, text=True,
                       env={**os.environ, "LORA_QTA_HLS_DIR": str(tmp_path / "nohls"),
                            "LORA_QTA_CACHE": str(tmp_path / "cache")}, timeout=600)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert lines[-1].startswith("lora-qta: error: the kernel's sources") and "LORA_QTA_HLS_DIR" in lines[-1]


def test_the_same_run_writes_the_same_adapter_bytes(tmp_path):
    """Two processes with different hash seeds (set iteration and the safetensors writer's
    metadata order depend on them) write identical adapter files."""
    files = []
    for seed in ("1", "2"):
        out = tmp_path / f"run{seed}"
        p = subprocess.run([sys.executable, "-m", "lora_qta.cli", "finetune", "--output-dir", str(out), *QUICK],
                           capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": seed}, timeout=600)
        assert p.returncode == 0, p.stderr
        assert "steps of fp32 LoRA (rank 8)" in p.stdout  # an fp32 run offloads nothing, whatever the default
        files.append((out / "adapter" / "pytorch_lora_weights.safetensors").read_bytes())
    assert files[0] == files[1]
    n = int.from_bytes(files[0][:8], "little")
    meta = json.loads(files[0][8:8 + n])["__metadata__"]
    assert list(meta) == sorted(meta)
    assert json.loads(meta["lora_adapter_metadata"])["unet.target_modules"] == sorted(["to_q", "to_k", "to_v", "to_out.0"])


def test_progress_off_a_terminal_is_plain_lines():
    stream = io.StringIO()
    bar = Progress(0, 40, "finetune int8", stream=stream)
    for done in range(1, 41):
        bar.update(done, 0.05, 0.1)
    bar.close()
    text = stream.getvalue()
    assert "\r" not in text and text.count("\n") == 21  # a header and every 2 steps (40 / 20)
    assert text.splitlines()[-1].startswith("finetune int8: step 40/40, loss 0.0500")


def test_loading_the_digits_model_prints_no_bar(capfd):
    from lora_qta.training.models import DigitsBundle

    DigitsBundle()
    captured = capfd.readouterr()
    assert "Loading pipeline components" not in captured.err + captured.out


def test_a_missing_model_folder_is_the_only_line_on_stderr(tmp_path):
    """Checked before the Stable Diffusion pipeline is imported: its import's warnings (e.g. a
    transformers image processor wanting torchvision) do not come before the error."""
    p = subprocess.run([sys.executable, "-m", "lora_qta.cli", "finetune", "--output-dir", str(tmp_path / "run"),
                        "--pretrained-model", str(tmp_path / "missing")], capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [f"lora-qta: error: pretrained model folder {tmp_path / 'missing'} "
                                             "does not exist (--pretrained-model)"], p.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("extra, message", [
    # refused after the model had loaded (8-11 s; --backend board also left a .lock behind): now
    # before the training stack, with the model-free checks
    (["--board", "foo"], "unknown board 'foo'"),
    (["--backend", "board"], "backend='board' needs a PYNQ board (pynq found none)"),
    (["--pretrained-model", "{file}"], "pretrained model folder {file} is a file, not a folder (--pretrained-model)"),
    (["--pretrained-model", "{missing}"], "pretrained model folder {missing} does not exist (--pretrained-model)"),
    (["--pretrained-model", "{tmp}", "--instance-data-dir", "{file}"],
     "instance data folder {file} is a file, not a folder (--instance-data-dir)"),
    (["--resume"], "--resume given but {out}/checkpoints holds no checkpoint"),
    # after the Stable Diffusion model had loaded, before
    (["--pretrained-model", "{sd}"], "--pretrained-model with a Stable Diffusion folder needs --instance-data-dir"),
    # ignored before, though recorded in report.json: LoRA-only runs no frozen layer to quantize
    (["--offload", "lora", "--offload-scheme", "tensor"], "--offload-scheme tensor quantizes the frozen layers"),
])
def test_int8_run_options_are_refused_before_the_model_loads(tmp_path, monkeypatch, extra, message):
    """The accelerator asked for, the model and image folders and --resume's checkpoint."""
    monkeypatch.delenv("LORA_QTA_BACKEND", raising=False)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "sd").mkdir()
    (tmp_path / "sd" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    out = tmp_path / "run"
    names = {"file": tmp_path / "afile", "missing": tmp_path / "nothing", "tmp": tmp_path, "out": out,
             "sd": tmp_path / "sd"}
    argv = [a.format(**names) for a in extra]
    code = ("import sys; from lora_qta.cli import main; rc = main(sys.argv[1:]); "
            "heavy = [m for m in ('diffusers', 'peft') if m in sys.modules]; "
            "print('imported:', heavy, file=sys.stderr); sys.exit(rc)")
    p = subprocess.run([sys.executable, "-c", code, "finetune", "--output-dir", str(out), *argv],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stdout + p.stderr
    assert message.format(**names) in p.stderr
    assert "imported: []" in p.stderr and "Traceback" not in p.stderr
    assert not out.exists()   # nothing written: no folder, no lock


@pytest.mark.parametrize("holds, resume_ok, message", [
    (["notes.txt"], False, "already holds notes.txt: choose another --output-dir"),
    (["report.json"], False, "already holds report.json: replace it with --overwrite, or choose another"),
    (["checkpoints/step_000002/state.json"], True, "continue that run with --resume, replace it with --overwrite"),
])
def test_an_occupied_folder_offers_only_what_would_work(tmp_path, holds, resume_ok, message):
    """It offered --resume and --overwrite for a folder holding a stranger's notes.txt, where
    --overwrite is refused and there is no run to resume."""
    from lora_qta.errors import OutputDirError
    from lora_qta.training.rundir import RunFolder

    for name in holds:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}")
    with pytest.raises(OutputDirError) as e:
        RunFolder(tmp_path).check(resume=False, overwrite=False)
    assert message in str(e.value)
    if resume_ok:
        assert RunFolder(tmp_path).check(resume=True, overwrite=False) == []
