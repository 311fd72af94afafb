"""The all-reduce model of a data-parallel run (``lora-qta bench``'s data-parallel table)."""

import pytest

from lora_qta.analysis import allreduce, report
from lora_qta.analysis.allreduce import GBE, Link, lora_allreduce, ring_allreduce
from lora_qta.errors import OptionError


@pytest.mark.parametrize("boards", [2, 3, 4, 8])
def test_ring_sends_2_n_minus_1_over_n_of_the_gradient(boards):
    r = ring_allreduce(1_000_000, boards)
    assert r["bytes_sent_per_board"] == pytest.approx(2 * (boards - 1) / boards * 1_000_000)
    assert r["rounds"] == 2 * (boards - 1)
    chunk = 1_000_000 / boards
    assert r["seconds"] == pytest.approx(2 * (boards - 1) * (GBE.latency_s + chunk / GBE.payload_bytes_per_s))


def test_one_board_exchanges_nothing_and_bad_input_is_refused():
    assert ring_allreduce(123, 1) == {"boards": 1, "gradient_bytes": 123, "rounds": 0,
                                      "bytes_sent_per_board": 0.0, "seconds": 0.0}
    with pytest.raises(OptionError):
        ring_allreduce(10, 0)


def test_gigabit_link_assumptions():
    assert GBE.payload_bytes_per_s * 8 / 1e6 == pytest.approx(941.4, abs=0.1)
    fast = Link("10 GbE", 10e9)
    assert ring_allreduce(10**8, 4, fast)["seconds"] < ring_allreduce(10**8, 4)["seconds"] / 5


def test_sd15_lora_gradients_per_rank():
    res = lora_allreduce("sd15", ranks=(4, 16), boards=(2, 8))
    rows = {(r["rank"], r["boards"]): r for r in res["rows"]}
    assert rows[4, 2]["lora_params"] == 797_184 and rows[4, 2]["gradient_bytes"] == 3_188_736
    assert rows[4, 2]["bytes_sent_per_board"] == 3_188_736  # 2(N-1)/N = 1 for two boards
    assert rows[16, 8]["gradient_bytes"] == 4 * 797_184 * 4
    assert rows[4, 2]["seconds"] == pytest.approx(0.0273, abs=0.0005)  # 3.19 MB at 941 Mbit/s + 2 x 100 us
    md = report.allreduce_markdown(res)
    assert "| 4 | 797,184 | 3.19 | 3.19 | 27.3 |" in md and "modelled" in md and "1 GbE" in md
    assert allreduce.FP32_BYTES == 4
