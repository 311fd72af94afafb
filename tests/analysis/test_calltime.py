"""``lora-qta calltime``: the host time per accelerator call, the figure behind ``call_us``."""

import json
from dataclasses import replace

import numpy as np
import pytest

from lora_qta.analysis import calltime
from lora_qta.analysis.report import calltime_summary
from lora_qta.cli import main
from lora_qta.errors import BackendError, DeviceMemoryError, OptionError
from lora_qta.runtime.accelerator import Accelerator
from lora_qta.runtime.driver import POLL_FIRST_S, POLL_MAX_S, RunInfo


def test_percentiles_of_known_values():
    assert calltime.percentiles(range(101)) == {"median": 50.0, "p10": 10.0, "p90": 90.0, "n": 101}
    assert calltime.percentiles([4.0, 1.0, 2.0, 3.0]) == {"median": 2.5, "p10": pytest.approx(1.3),
                                                         "p90": pytest.approx(3.7), "n": 4}


class _Clock:
    """A perf_counter that advances 10 us per reading: every timed call lasts exactly 10 us."""

    def __init__(self):
        self.t = 0.0

    def perf_counter(self) -> float:
        self.t += 1e-5
        return self.t


def test_every_timed_call_is_one_sample_and_buffers_are_freed(monkeypatch):
    import pynq

    acc = Accelerator("zcu104", "fast")
    monkeypatch.setattr(calltime, "time", _Clock())
    made, allocate = [], pynq.allocate

    def keep(*args, **kw):  # the test holds every buffer calltime allocates: only freebuffer frees them
        buf = allocate(*args, **kw)
        made.append(buf)
        return buf

    monkeypatch.setattr(pynq, "allocate", keep)
    flushes, flush = [], acc.device.flush
    monkeypatch.setattr(acc.device, "flush", lambda *a: (flushes.append(1), flush(*a))[1])
    r = calltime.measure(acc, calls=5, warmup=3, shape=(5, 7, 3))  # 4 x 3 INT32 bytes: not a whole beat
    for loop in ("driver", "gemm"):
        assert r[loop]["wall_us"] == {"median": pytest.approx(10.0), "p10": pytest.approx(10.0),
                                      "p90": pytest.approx(10.0), "n": 5}
    # two operand flushes per driver call (warm-up and timed), besides placing them and the gemm loop's uploads
    assert len(flushes) == 2 + 2 * (5 + 3) + 2 * (5 + 3)
    # calltime's output buffer (the only 2-D one; the accelerator's own per-role buffers are bytes) is freed
    out = [b for b in made if b.ndim == 2]
    assert len(out) == 1 and int(out[0].device_address) not in acc.device._host


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
    assert r["clock_mhz"] == acc.board.clock_mhz
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
    assert f"configured {acc.board.clock_mhz} MHz clock" in text


@pytest.mark.parametrize("done_us, warned", [(4.0, False), (0.9 * POLL_FIRST_S * 1e6, False),
                                              (1.2 * POLL_FIRST_S * 1e6, True), (200.0, True)])
def test_a_late_ap_done_on_a_board_is_warned_of(monkeypatch, done_us, warned):
    """Above the poll's first sleep (the driver's own constant) most calls slept at least once."""
    acc = Accelerator("zcu104", "fast")
    _as_board(acc, monkeypatch, 250)  # 1 us of kernel at 250 MHz
    kernel_us = 250 / acc.board.clock_mhz
    run_call = acc.run_call  # the counting one; ap_done seen done_us after the kernel's time
    monkeypatch.setattr(acc, "run_call", lambda call, offsets: replace(run_call(call, offsets),
                                                                        wall_s=(kernel_us + done_us) * 1e-6))
    r = calltime.measure(acc, calls=3, warmup=0)
    assert r["driver"]["done_us"]["median"] == pytest.approx(done_us)
    text = calltime_summary(r)
    row = next(line for line in text.splitlines() if line.startswith("  driver ("))
    assert row.split()[-2] == f"{done_us:.1f}"  # the done column, before the host's 10-90% range
    assert ("completion poll's sleeps" in text) == warned
    if warned:
        assert f"ap_done came {done_us:.1f} us (median) after the kernel's own time" in text
        assert f"sleeps ({POLL_FIRST_S * 1e6:g} us doubling to {POLL_MAX_S * 1e6:g} us)" in text
    # the emulation never warns of a board's poll
    assert "completion poll's sleeps" not in calltime_summary({**r, "backend": "fast"})


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
    resident = acc.resident

    def second_fails(w, name):
        if name.endswith("b"):
            raise DeviceMemoryError("no room for b")
        return resident(w, name)

    monkeypatch.setattr(acc, "resident", second_fails)
    with pytest.raises(DeviceMemoryError):
        calltime.measure(acc, calls=1, warmup=0)
    assert acc.resident_bytes == 0  # a, placed before b failed, is freed

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
        "wall_us", "kernel_us", "host_us", "done_us"}
