"""``lora-qta calltime``: the host time per accelerator call, the figure behind ``call_us``."""

import json
from dataclasses import replace

import numpy as np
import pytest

from lora_qta.analysis import calltime
from lora_qta.analysis.report import calltime_summary
from lora_qta.cli import main
from lora_qta.errors import BackendError, OptionError
from lora_qta.runtime.accelerator import Accelerator
from lora_qta.runtime.driver import RunInfo


def test_percentiles_of_known_values():
    assert calltime.percentiles(range(101)) == {"median": 50.0, "p10": 10.0, "p90": 90.0}
    assert calltime.percentiles([4.0, 1.0, 2.0, 3.0]) == {"median": 2.5, "p10": pytest.approx(1.3),
                                                         "p90": pytest.approx(3.7)}


def test_emulated_loops_run_the_calls_asked_and_split_wall_time(monkeypatch):
    acc = Accelerator("zcu104", "fast")
    gemm, gemms = acc.gemm, []

    def counted(*args, **kw):
        gemms.append(1)
        return gemm(*args, **kw)

    monkeypatch.setattr(acc, "gemm", counted)
    before, buffers = acc.calls, len(acc.device._host)
    r = calltime.measure(acc, calls=7, warmup=2, shape=(20, 48, 12))
    assert acc.calls - before == 2 * (7 + 2) and len(gemms) == 7 + 2  # each loop, warm-up and timed
    # calltime's operands and output buffer are given back; what stays is the accelerator's own
    # reusable buffer per role (a, b, c), which the gemm loop made
    assert len(acc._buffers) == 3 and len(acc.device._host) == buffers + 3 and acc.resident_bytes == 0
    assert r["kernel_time"] == "the emulated engine's time on this machine"
    assert r["shape"] == [20, 48, 12] and r["calls"] == 7 and r["stated_call_us"] == acc.board.host.call_us
    for loop in ("driver", "gemm"):
        x = r[loop]
        assert all(x[k]["p10"] <= x[k]["median"] <= x[k]["p90"] for k in ("wall_us", "kernel_us", "host_us"))
        # each call's kernel time is part of its wall time, so the medians keep that order
        assert 0 < x["kernel_us"]["median"] <= x["wall_us"]["median"]
        assert x["host_us"]["p10"] >= 0
    text = calltime_summary(r)
    assert "these are not board figures" in text and "set call_us" not in text
    assert "20x48x12 GEMM on zcu104 [fast]" in text


def _as_board(acc: Accelerator, monkeypatch, cycles_measured: int | None) -> None:
    """The emulated accelerator seen as a board: backend board, a cycle counter that reports
    ``cycles_measured`` (None: the emulation's 0, i.e. no count)."""
    monkeypatch.setattr(acc, "backend", "board")
    monkeypatch.setattr(acc, "measures_cycles", True)
    if cycles_measured is not None:
        run_call = acc.run_call

        def counted(call, offsets):
            info = run_call(call, offsets)
            return RunInfo({**info.outputs, "cycles_measured": cycles_measured}, info.wall_s)

        monkeypatch.setattr(acc, "run_call", counted)


def test_board_kernel_time_is_the_counter_at_the_clock(monkeypatch):
    acc = Accelerator("kv260", "fast")
    _as_board(acc, monkeypatch, 5000)
    r = calltime.measure(acc, calls=4, warmup=1)
    assert r["kernel_time"].startswith("measured (the kernel's cycle counter")
    kernel_us = 5000 / acc.board.clock_mhz
    for loop in ("driver", "gemm"):
        x = r[loop]
        assert x["kernel_us"]["median"] == pytest.approx(kernel_us)
        # the host's part is each call's wall time less the kernel's
        assert x["host_us"]["median"] == pytest.approx(x["wall_us"]["median"] - kernel_us)
    text = calltime_summary(r)
    drv = r["driver"]["host_us"]["median"]
    assert f"set call_us = {drv:.0f} under [boards.kv260.host]" in text


def test_board_without_a_count_uses_the_modelled_cycles_and_says_so(monkeypatch):
    acc = Accelerator("pynq_z2", "fast")
    _as_board(acc, monkeypatch, None)
    r = calltime.measure(acc, calls=3, warmup=0)
    assert r["kernel_time"].startswith("modelled")
    assert r["driver"]["kernel_us"]["median"] == pytest.approx(r["cycles_model"] / acc.board.clock_mhz)


def test_a_wrong_product_is_refused_naming_its_loop(monkeypatch):
    acc = Accelerator("zcu104", "fast")
    run_call = acc.run_call
    monkeypatch.setattr(acc, "run_call", lambda call, offsets: run_call(replace(call, k=call.k - 1), offsets))
    with pytest.raises(BackendError, match="driver loop computed a GEMM that does not equal numpy's product"):
        calltime.measure(acc, calls=2, warmup=0)
    assert acc.resident_bytes == 0  # freed on the error too

    acc = Accelerator("zcu104", "fast")
    gemm = acc.gemm

    def wrong(a, b, **kw):
        r = gemm(a, b, **kw)
        r.output = np.asarray(r.output) + 1
        return r

    monkeypatch.setattr(acc, "gemm", wrong)
    with pytest.raises(BackendError, match="gemm loop computed"):
        calltime.measure(acc, calls=2, warmup=0)


@pytest.mark.parametrize("kw, message", [
    ({"calls": 0}, "at least one timed call"),
    ({"warmup": -1}, "no negative warm-up"),
    ({"shape": (16, 16)}, "three numbers M,K,N, got 2"),
    ({"shape": (16, 0, 16)}, "must be at least 1"),
    ({"shape": (16, 16, 10**6)}, "within the zcu104 limits"),
])
def test_bad_options_are_named(kw, message):
    with pytest.raises(OptionError, match=message):
        calltime.measure(Accelerator("zcu104", "fast"), **kw)


def test_command_prints_and_writes_json(tmp_path, capsys):
    out = tmp_path / "calls" / "calltime.json"
    assert main(["calltime", "--calls", "3", "--warmup", "1", "--shape", "16,32,16", "--board", "pynq_z2",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "whole call path (Accelerator.gemm)" in text and "hardware.toml states call_us = 80 us for pynq_z2" in text
    data = json.loads(out.read_text())
    assert data["board"] == "pynq_z2" and data["shape"] == [16, 32, 16] and set(data["driver"]) == {
        "wall_us", "kernel_us", "host_us"}
