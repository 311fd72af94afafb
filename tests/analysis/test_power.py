"""Power recording with pynq.pmbus on emulated sensors (``lora-qta power``)."""

from __future__ import annotations

import json

import pytest

from lora_qta.analysis import power
from lora_qta.cli import main
from lora_qta.hw.config import config

ZCU = config().board("zcu104")
PNG = b"\x89PNG\r\n\x1a\n"


def test_emulated_rails_work_with_pynqs_sensor_reader():
    from pynq.pmbus import MultiSensor, Rail

    src = power.PowerSource(12.0)
    rails = power.emulated_rails(ZCU, src)
    rail = rails["12V"]
    assert isinstance(rail, Rail)
    src.set(18.0)
    assert MultiSensor([rail.power, rail.voltage, rail.current]).get_values() == (18.0, 12.0, 1.5)
    assert power.select_power_sensors(rails) == [rail.power]
    with pytest.raises(ValueError):
        power.select_power_sensors(rails, ["VCCINT"])


def test_power_script_on_emulated_sensors(tmp_path, capsys):
    pytest.importorskip("pandas", reason="pynq.pmbus.DataRecorder needs pandas")
    rc = main(["power", "--out", str(tmp_path), "--sensors", "emulated", "--idle-seconds", "0.3",
               "--phase-seconds", "0.4", "--interval", "0.02", "--tokens", "256", "--features", "64",
               "--rank", "4"])
    text = capsys.readouterr().out
    assert rc == 0
    assert (tmp_path / "power.png").read_bytes()[:8] == PNG
    assert "energy per GEMM" in text and power.EMULATED_LABEL in text and "modelled" in text
    rep = json.loads((tmp_path / "power.json").read_text())
    assert rep["emulated"] and rep["idle_w"] == pytest.approx(ZCU.host.idle_watts)
    loops = [p for p in rep["phases"] if p["reps"]]
    assert loops and all(p["energy_per_gemm_j"] > 0 and p["gops"] > 0 for p in loops)
    assert all(p["modelled_energy_per_gemm_j"] > 0 for p in loops)
    assert (tmp_path / "power_trace.csv").read_text().count("\n") > 10
