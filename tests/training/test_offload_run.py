"""``finetune --offload all``: every GEMM family of the step on the (emulated) accelerator."""

import json

import numpy as np
import pytest
import torch

from lora_qta.cli import main
from lora_qta.errors import CheckpointError, LimitError
from lora_qta.lora.schemes import SCHEMES
from lora_qta.training.config import FinetuneConfig
from lora_qta.training.loop import finetune
from test_loop import adapter_state, write_images, write_tiny_stable_diffusion

FAMILIES = ("linear", "conv", "attention", "lora")


def check_families(off):
    assert off["mode"] == "all" and set(off["families"]) == set(FAMILIES)
    for name in FAMILIES:
        f = off["families"][name]
        assert f["calls"] > 0 and f["cycles"] > 0 and f["macs"] > 0 and f["bytes_moved"] > 0, name
        assert 0 < f["utilization"] <= 1, name
    assert off["total_cycles"] == sum(f["cycles"] for f in off["families"].values())
    assert off["wrapped_layers"]["linear"] > 0 and off["wrapped_layers"]["conv"] > 0
    assert off["wrapped_layers"]["attention"] > 0


def test_finetune_offload_all_on_the_digits_default_reports_the_four_families(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["finetune", "--offload", "all", "--steps", "2", "--batch-size", "2", "--num-examples", "2",
                 "--prior-per-class", "1", "--checkpoint-every", "1", "--no-samples", "--output-dir", str(run)]) == 0
    printed = capsys.readouterr()
    out = printed.out
    assert "--offload all" in out and "attention" in out
    assert "finetune int8 all GEMMs, row8c: steps 0..2" in printed.err    # the progress line says what it trains
    # --no-samples: the summary lists what the folder holds, no samples.png
    listed = next(line for line in out.splitlines() if line.startswith("outputs in "))
    assert "samples.png" not in listed and not (run / "samples.png").exists()
    assert "adapter/" in listed and "loss.png" in listed and "report.json" in listed and "checkpoints/" in listed
    rep = json.loads((run / "report.json").read_text())
    assert rep["config"]["offload"] == "all" and np.isfinite(rep["final_loss"])
    off = rep["offload"]
    check_families(off)
    # the default, row8c: current per-row input scales, INT8 Linear/Conv outputs with a per-channel amax
    # history per site
    assert off["scheme"] == "row8c" and off["sites"] > 0
    assert rep["identity"]["target"]["offload_numerics"]["amax_history"] == 4
    # the digits UNet's convolutions are all supported: nothing fell back to fp32
    assert off["fallback_calls"] == 0 and off["wrapped_layers"]["conv_fallback"] == 0
    # the LoRA family is the LoRA runtime's six GEMMs
    assert off["families"]["lora"]["calls"] == sum(v["calls"] for v in rep["accelerator"]["per_gemm"].values())
    assert (run / "adapter" / "pytorch_lora_weights.safetensors").is_file()
    # the run's time split counts the offloaded calls and their host quantization too
    t, fam = rep["time_s"], off["families"].values()
    assert t["accelerator_measured"] >= sum(f["wall_s"] for f in fam) > 0
    assert t["quantization_measured"] >= sum(f["host_quant_s"] for f in fam) > 0
    assert t["rest_measured"] == pytest.approx(t["total_measured"] - t["accelerator_measured"]
                                               - t["quantization_measured"])


# figures that are measured times on this machine, not counts: they differ between two runs
TIMES = ("wall_s", "host_quant_s")


@pytest.mark.parametrize("scheme, fuse", [("row", False), ("tensor", False), ("row8", False), ("row8c", False),
                                          ("row", True)])
def test_resumed_offload_all_run_equals_the_uninterrupted_one(tmp_path, scheme, fuse):
    """The amax histories (delayed scales of the tensor scheme), recompute counters and
    per-family figures are in the checkpoint: an --offload all run interrupted after step 2 and
    resumed ends with the same adapter bytes, loss and counted figures as the run that never
    stopped (digits default); with --fuse-lora too (A's rows are rewritten after the resume)."""
    common = dict(precision="int8", offload="all", offload_scheme=scheme, fuse_lora=fuse, steps=4,
                  checkpoint_every=2, batch_size=2, num_examples=2, prior_per_class=1, eval_every=2, samples=False)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    a = finetune(FinetuneConfig(output_dir=str(straight), **common))
    assert finetune(FinetuneConfig(output_dir=str(resumed), **common), stop_after=2) == {"interrupted": True,
                                                                                          "step": 2}
    state = json.loads((resumed / "checkpoints" / "step_000002" / "state.json").read_text())
    sites = state["history"]["offload"]["sites"]
    if scheme == "tensor":
        assert sites and all(len(v) == 2 for v in sites.values())  # two steps of amax per site, saved
    elif scheme == "row8":  # delayed scales of the Linear/Conv outputs only (inputs are current)
        assert sites and all(len(v) == 2 and name.endswith((".y", ".dx")) for name, v in sites.items())
    elif scheme == "row8c":  # the same, one amax per output channel in each entry (conv_out has one)
        assert sites and all(len(v) == 2 and all(isinstance(e, list) for e in v) for v in sites.values())
        assert max(len(v[0]) for v in sites.values()) > 1
    else:
        assert not sites  # current scaling: no history
    b = finetune(FinetuneConfig(output_dir=str(resumed), resume=True, **common))
    sa, sb = adapter_state(straight), adapter_state(resumed)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert (straight / "adapter" / "pytorch_lora_weights.safetensors").read_bytes() == \
        (resumed / "adapter" / "pytorch_lora_weights.safetensors").read_bytes()
    assert a["final_loss"] == b["final_loss"] and a["heldout_loss"] == b["heldout_loss"]
    assert set(a["offload"]["families"]) == set(FAMILIES) | ({"fused"} if fuse else set())
    for fam in a["offload"]["families"]:
        fa, fb = ({k: v for k, v in r["offload"]["families"][fam].items() if k not in TIMES} for r in (a, b))
        assert fa == fb, fam
    assert a["offload"].get("fusion") == b["offload"].get("fusion")
    assert a["offload"]["sites"] == b["offload"]["sites"] and a["offload"]["recomputes"] == b["offload"]["recomputes"]


def test_resume_of_offload_all_refuses_a_checkpoint_without_amax_histories(tmp_path):
    common = dict(precision="int8", offload="all", steps=2, checkpoint_every=1, batch_size=2, num_examples=2,
                  prior_per_class=1, eval_every=0, samples=False)
    run = tmp_path / "r"
    finetune(FinetuneConfig(output_dir=str(run), **common), stop_after=1)
    path = run / "checkpoints" / "step_000001" / "state.json"
    state = json.loads(path.read_text())
    del state["history"]["offload"]  # as written before the offload state was checkpointed
    path.write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="amax histories"):
        finetune(FinetuneConfig(output_dir=str(run), resume=True, **common))


def test_offload_all_on_a_stable_diffusion_folder(tmp_path):
    sd = write_tiny_stable_diffusion(tmp_path / "sd")
    images = tmp_path / "instance"
    write_images(images)
    rep = finetune(FinetuneConfig(output_dir=str(tmp_path / "run"), precision="int8", offload="all",
                                  pretrained_model=str(sd), instance_data_dir=str(images), steps=1, batch_size=1,
                                  rank=4, alpha=4, samples=False))
    check_families(rep["offload"])


def test_the_whole_step_is_the_default_and_offload_defines_only_int8_runs():
    """``--offload all`` is the default since it met issue 13's quality target (scheme ``row``,
    ``row8`` since it met it too, with INT8 outputs, and ``row8c`` since it lost less concept
    accuracy than ``row8`` on the same 15 seeds); an
    fp32 run offloads nothing, so its identity (what --resume and evaluate's reuse compare) holds no
    offload, and an int8 LoRA-only identity stays as it was before the offload existed."""
    assert FinetuneConfig().offload == "all" and FinetuneConfig().offload_scheme == "row8c"
    assert FinetuneConfig().identity()["offload"] == "all"
    assert "offload" not in FinetuneConfig(offload="lora").identity()
    fp32 = [FinetuneConfig(precision="fp32", offload=o).identity() for o in ("all", "lora")]
    assert fp32[0] == fp32[1] and "offload" not in fp32[0]
    with pytest.raises(LimitError, match="--offload-scheme must be one of row8c, row8, row, tensor, not 'block'"):
        finetune(FinetuneConfig(offload="all", offload_scheme="block", steps=1, samples=False))
    with pytest.raises(LimitError, match="--offload must be lora or all"):
        finetune(FinetuneConfig(offload="everything", steps=1, samples=False))


def test_the_progress_label_names_the_numerics_a_run_trains_in():
    """It said `finetune int8` for LoRA-only and whole-step runs alike."""
    assert FinetuneConfig(precision="fp32").numerics() == "fp32"
    assert FinetuneConfig(offload="lora").numerics() == "int8 LoRA GEMMs"
    assert FinetuneConfig(offload_scheme="row8").numerics() == "int8 all GEMMs, row8"
    assert FinetuneConfig(offload_scheme="row", fuse_lora=True).numerics() == "int8 all GEMMs, row, fused LoRA"


def offload_figures(rep, families=("linear", "lora", "fused")):
    fam = rep["offload"]["families"]
    return {k: sum(fam[f][k] for f in families if f in fam) for k in ("calls", "bytes_moved", "cycles", "macs")}


def test_row8_writes_int8_linear_and_conv_outputs_and_is_recorded(tmp_path):
    """--offload-scheme row8: the Linear and Conv outputs come back INT8 (fewer bytes than row's
    INT32 for the same GEMMs), each output site keeps an amax history whose first call calibrates,
    attention is row's; the scheme and its delayed-scaling constants are in the run's identity."""
    common = dict(precision="int8", offload="all", steps=2, checkpoint_every=1, batch_size=2, num_examples=2,
                  prior_per_class=1, eval_every=0, samples=False)
    row = finetune(FinetuneConfig(output_dir=str(tmp_path / "row"), offload_scheme="row", **common))
    row8 = finetune(FinetuneConfig(output_dir=str(tmp_path / "row8"), offload_scheme="row8", **common))
    numerics = row8["identity"]["target"]["offload_numerics"]
    assert numerics["scheme"] == "row8" and numerics["amax_history"] == 16
    off, ref = row8["offload"], row["offload"]
    assert off["scheme"] == "row8" and off["sites"] > 0
    for fam in ("linear", "conv"):
        a, b = off["families"][fam], ref["families"][fam]
        # the same calls, plus the recomputes (two-entry histories still saturate a few); fewer bytes
        assert a["calls"] == b["calls"] + a["recomputes"] + a["int32_after_recompute"], fam
        assert a["macs"] >= b["macs"] and a["bytes_moved"] < b["bytes_moved"], fam
        assert 0 < a["calibration_calls"] <= off["sites"], fam
    assert off["families"]["attention"]["bytes_moved"] == ref["families"]["attention"]["bytes_moved"]
    assert off["families"]["attention"]["calibration_calls"] == 0
    with pytest.raises(CheckpointError, match="other options"):
        finetune(FinetuneConfig(output_dir=str(tmp_path / "row8"), resume=True, offload_scheme="row", **common))


def test_fuse_lora_runs_fewer_calls_and_bytes_and_is_recorded(tmp_path):
    """--fuse-lora: one call per adapted layer for the forward and one for the input gradient
    (32 and 21 on the digits UNet, whose cross-attention to_k/to_v have no input gradient) instead of
    two each; recorded in the identity, config and report; its checkpoint refuses an unfused resume."""
    common = dict(precision="int8", offload="all", offload_scheme="row", steps=2, checkpoint_every=1, batch_size=2,
                  num_examples=2, prior_per_class=1, eval_every=0, samples=False)
    plain = finetune(FinetuneConfig(output_dir=str(tmp_path / "plain"), **common))
    fused_cfg = FinetuneConfig(output_dir=str(tmp_path / "fused"), fuse_lora=True, **common)
    fused = finetune(fused_cfg)
    assert "fuse_lora" not in json.dumps(plain["identity"]) and plain["offload"]["fuse_lora"] is False
    assert fused["identity"]["target"]["offload_numerics"] == {"scheme": "row", "fuse_lora": True}
    assert fused["config"]["fuse_lora"] is True and fused["offload"]["fuse_lora"] is True
    off = fused["offload"]
    assert off["fusion"]["layers"] == fused["lora_layers"] == 32
    assert off["families"]["fused"]["calls"] == 2 * (32 + 21)
    per_gemm = fused["accelerator"]["per_gemm"]
    assert per_gemm["fwd_H=X.At"]["gemms"] == per_gemm["bwd_dX=dH.A"]["gemms"] == 0
    assert per_gemm["fwd_Y=H.Bt"]["gemms"] == plain["accelerator"]["per_gemm"]["fwd_Y=H.Bt"]["gemms"]
    f, p = offload_figures(fused), offload_figures(plain)
    assert f["macs"] == p["macs"]                            # the same work ...
    assert f["calls"] < p["calls"] and f["bytes_moved"] < p["bytes_moved"]   # ... in fewer calls and bytes
    assert off["weights"]["resident_bytes"] < plain["offload"]["weights"]["resident_bytes"]
    for other in ("conv", "attention"):                      # families fusion does not touch
        assert off["families"][other]["calls"] == plain["offload"]["families"][other]["calls"]
    with pytest.raises(CheckpointError, match="other options"):
        finetune(FinetuneConfig(output_dir=str(tmp_path / "fused"), resume=True, **common))


@pytest.mark.parametrize("options, what", [
    (dict(fuse_lora=True, offload="lora"), "--offload lora"),
    (dict(fuse_lora=True, offload="all", offload_scheme="tensor"), "--offload-scheme tensor"),
    (dict(fuse_lora=True, precision="fp32"), "--precision fp32"),
])
def test_fuse_lora_needs_int8_offload_all_and_the_row_scheme(options, what):
    with pytest.raises(LimitError, match="--fuse-lora .* needs --precision int8 --offload all --offload-scheme row"):
        finetune(FinetuneConfig(steps=1, samples=False, **options))
    with pytest.raises(LimitError, match=what):
        finetune(FinetuneConfig(steps=1, samples=False, **options))


def test_measured_times_add_the_whole_step_offload_to_the_lora_layers():
    """The time split of finetune, speed and the data-parallel per-rank figures:
    QtaRuntime.measured_times() adds the offload's calls and host quantization to the LoRA
    layers' own (which alone left them in "rest" of an --offload all run)."""
    from types import SimpleNamespace

    from lora_qta.lora.layer import QtaRuntime
    from lora_qta.lora.offload import FamilyStats
    from lora_qta.runtime.accelerator import Accelerator

    rt = QtaRuntime(Accelerator("zcu104", "fast"))
    rt.time_accelerator, rt.time_quantization = 1.0, 2.0
    assert rt.measured_times() == (1.0, 2.0)
    rt.offload = SimpleNamespace(stats={"linear": FamilyStats(wall_s=0.25, host_quant_s=0.5),
                                        "conv": FamilyStats(wall_s=4.0, host_quant_s=8.0)})
    assert rt.measured_times() == (5.25, 10.5)
