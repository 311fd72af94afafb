"""The emulation-speed benchmarks run and report their figures (no timing assertions)."""

import inspect
import json
import subprocess
import sys

import pytest

from lora_qta.analysis import report
from lora_qta.analysis.speed import measure, throughput
from lora_qta.cli import main
from lora_qta.lora.schemes import SCHEMES
from lora_qta.training.config import FinetuneConfig


def test_speed_measure_reports_both_variants_and_the_split():
    r = measure(steps=1, warmup=0, batch_size=4, offload="lora")
    assert r["fp32_step_s"] > 0 and r["int8_step_s"] > 0
    assert r["ratio_int8_over_fp32"] == r["int8_step_s"] / r["fp32_step_s"]
    s = r["int8_split_s"]
    assert s["accelerator"] > 0 and s["quantization"] > 0
    assert abs(s["accelerator"] + s["quantization"] + s["rest"] - r["int8_step_s"]) < 1e-9
    assert set(r["cpu_step_s"]) == {"fp32", "int8"} and all(t > 0 for t in r["cpu_step_s"].values())
    assert "CPU time per step" in report.speed_summary(r)
    # the emulated kernel's own work is a part of the accelerator time, not all of it
    assert set(r["kernel_step_s"]) == {"int8"} and 0 < r["kernel_step_s"]["int8"] < s["accelerator"]
    assert "the emulated kernel's work" in report.speed_summary(r)
    # six GEMMs per layer, minus dX where the layer's input needs no gradient
    assert 5 * r["lora_layers"] <= r["gemms_per_step"] <= 6 * r["lora_layers"] and r["lora_layers"] > 0


def test_speed_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "speed.json"
    assert main(["speed", "--steps", "1", "--warmup", "0", "--batch-size", "2", "--out", str(out)]) == 0
    assert out.is_file() and "int8 on emulated accel." in capsys.readouterr().out


def test_throughput_times_both_engines_on_the_six_gemms_of_a_layer():
    rows = throughput("pynq_z2", repeat=1, layers=((64, 32, 4),))
    assert [r["gemm"] for r in rows] == ["fwd  H = X.A^T", "fwd  Y = H.B^T", "bwd dH = G.B", "bwd dB = G^T.H",
                                         "bwd dA = dH^T.X", "bwd dX = dH.A"]
    assert all(r["fp32"] > 0 and r["fast"] > 0 and r["csim"] > 0 and r["board_us"] > 0 for r in rows)
    table = report.throughput_markdown(rows, "pynq_z2", 1)
    assert sum(line.startswith(("| fwd", "| bwd")) for line in table.splitlines()) == 6
    assert "| **all** |" in table and "measured on this machine" in table


def test_throughput_cli_writes_what_it_prints(tmp_path, capsys, monkeypatch):
    """make bench keeps the throughput figures (runs/bench/throughput.json): it printed them only."""
    from lora_qta.analysis import speed

    monkeypatch.setattr(speed, "QUICK_LAYERS", ((64, 32, 4),))   # one small layer: six GEMMs
    out = tmp_path / "new" / "throughput.json"
    assert main(["throughput", "--quick", "--repeat", "1", "--board", "pynq_z2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["board"] == "pynq_z2" and r["repeat"] == 1 and "measured on this machine" in r["note"]
    assert len(r["gemms"]) == 6 and all(g["fast"] > 0 and g["csim"] > 0 for g in r["gemms"])
    assert printed == report.throughput_markdown(r["gemms"], "pynq_z2", 1)


def test_speed_with_offload_all_times_the_whole_step_variant_too(tmp_path, capsys):
    out = tmp_path / "speed.json"
    assert main(["speed", "--steps", "1", "--warmup", "0", "--batch-size", "2", "--offload", "all",
                 "--out", str(out)]) == 0
    assert "--offload all" in capsys.readouterr().out
    import json

    r = json.loads(out.read_text())
    assert r["int8_all_step_s"] > 0 and r["ratio_int8_all_over_fp32"] == r["int8_all_step_s"] / r["fp32_step_s"]
    s = r["int8_all_split_s"]
    assert s["accelerator"] > 0 and s["quantization"] > 0
    assert r["int8_all_gemms_per_step"] > r["gemms_per_step"]      # every family, not only LoRA
    assert set(r["cpu_step_s"]) == {"fp32", "int8", "int8_all"}
    assert 0 < r["kernel_step_s"]["int8_all"] < s["accelerator"]


def test_speed_with_fuse_lora_times_the_fused_whole_step_beside_the_unfused_one(tmp_path, capsys):
    out = tmp_path / "speed.json"
    assert main(["speed", "--steps", "1", "--warmup", "0", "--batch-size", "2", "--offload", "all",
                 "--offload-scheme", "row", "--fuse-lora", "--out", str(out)]) == 0
    assert "--fuse-lora" in capsys.readouterr().out
    import json

    r = json.loads(out.read_text())
    assert r["fuse_lora"] is True and r["int8_all_step_s"] > 0 and r["int8_fused_step_s"] > 0
    assert r["ratio_int8_fused_over_fp32"] == r["int8_fused_step_s"] / r["fp32_step_s"]
    s = r["int8_fused_split_s"]
    assert abs(s["accelerator"] + s["quantization"] + s["rest"] - r["int8_fused_step_s"]) < 1e-9
    # a fused call replaces a base call and a LoRA call (H = X.A^T): fewer calls per step
    assert r["int8_fused_gemms_per_step"] < r["int8_all_gemms_per_step"]
    assert set(r["cpu_step_s"]) == {"fp32", "int8", "int8_all", "int8_fused"}


@pytest.mark.parametrize("scheme", ["row", "tensor"])
def test_speed_times_the_whole_step_in_the_scheme_asked_for(tmp_path, capsys, scheme):
    out = tmp_path / "speed.json"
    assert main(["speed", "--steps", "1", "--warmup", "0", "--batch-size", "2", "--offload", "all",
                 "--offload-scheme", scheme, "--out", str(out)]) == 0
    assert f"--offload all, {scheme} scheme" in capsys.readouterr().out
    r = json.loads(out.read_text())
    # the scheme asked for, and the one the whole-step variant's offload reports it ran
    assert r["offload_scheme"] == r["int8_all_scheme"] == scheme and r["int8_all_step_s"] > 0


def test_speed_defaults_to_finetunes_scheme_and_refuses_an_unknown_one(capsys):
    default = inspect.signature(measure).parameters["offload_scheme"].default
    assert default == FinetuneConfig.offload_scheme == SCHEMES[0]
    with pytest.raises(SystemExit):
        main(["speed", "--offload-scheme", "int4"])
    err = capsys.readouterr().err
    assert "--offload-scheme" in err and all(s in err for s in SCHEMES)
    help_text = subprocess.run([sys.executable, "-m", "lora_qta.cli", "speed", "--help"], capture_output=True,
                               text=True).stdout
    assert all(f"{s} =" in " ".join(help_text.split()) for s in SCHEMES)


def test_speed_refuses_fuse_lora_with_another_scheme_as_finetune_does(capsys):
    assert main(["speed", "--steps", "1", "--warmup", "0", "--offload", "all", "--offload-scheme", "row8",
                 "--fuse-lora"]) == 2
    err = capsys.readouterr().err
    assert "--fuse-lora" in err and "--offload-scheme row8" in err


def test_speed_refuses_fuse_lora_without_offload_all_as_finetune_does(capsys):
    assert main(["speed", "--steps", "1", "--warmup", "0", "--offload", "lora", "--fuse-lora"]) == 2
    err = capsys.readouterr().err
    assert "--fuse-lora" in err and "--offload all" in err


def test_median_interval_is_the_sign_test_interval():
    from lora_qta.analysis.speed import median_interval

    assert median_interval([1.0] * 5) is None  # 5 values cannot give 95% (1 - 2/32 < 0.95)
    six = median_interval([6, 1, 5, 2, 4, 3])  # k = 1: the extremes, 1 - 2/64
    assert six == {"median": 3.5, "low": 1.0, "high": 6.0, "coverage": 1 - 2 / 64, "n": 6}
    # n = 20: P(B <= 5) = 21700 / 2**20, so k = 6: the 6th and 15th smallest
    twenty = median_interval([float(v) for v in range(20, 0, -1)])
    assert (twenty["low"], twenty["high"], twenty["median"]) == (6.0, 15.0, 10.5)
    assert twenty["coverage"] == 1 - 2 * 21700 / 2**20
    assert median_interval(range(1, 21), confidence=0.8)["low"] == 7.0  # P(B <= 6) = 0.058, P(B <= 7) = 0.132


def test_speed_reports_the_paired_ratio_with_its_interval(tmp_path, capsys):
    r = measure(steps=6, warmup=0, batch_size=2, offload="lora")
    p = r["ratio_int8_over_fp32_paired"]
    assert p["n"] == 6 and p["low"] <= p["median"] <= p["high"] and p["coverage"] > 0.95
    assert "paired per step" in report.speed_summary(r) and "97% interval of the median" in report.speed_summary(r)
    short = measure(steps=2, warmup=0, batch_size=2, offload="lora")
    assert short["ratio_int8_over_fp32_paired"] is None and "too few steps" in report.speed_summary(short)


def test_the_emulated_device_counts_only_its_engine_time():
    """kernel_seconds grows by the engine's time per call, inside the driver's wall time."""
    import time

    import numpy as np

    from lora_qta.analysis.speed import kernel_seconds
    from lora_qta.runtime.accelerator import Accelerator

    acc = Accelerator("zcu104", "fast")
    dev = acc.device
    assert dev.kernel_seconds == 0.0
    slow = dev._engine

    def engine(*args):  # a kernel that takes at least 20 ms
        time.sleep(0.02)
        return slow(*args)

    dev._engine = engine
    a = np.ones((4, 16), np.int8)
    t0 = time.perf_counter()
    acc.gemm(a, a, trans_b=True)
    wall = time.perf_counter() - t0
    assert 0.02 <= dev.kernel_seconds <= wall
    assert kernel_seconds(type("Rt", (), {"acc": acc})()) == dev.kernel_seconds and kernel_seconds(None) == 0.0
