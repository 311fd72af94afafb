"""The whole-step model: the composition of ARM and accelerator time, the host-work schemes,
fusion, the targets and the report files (on the embedded digits model, which plans fast)."""

from __future__ import annotations

import json

import pytest

from lora_qta.analysis import energy, host, inventory as inv, plots, report, step
from lora_qta.hw.config import config

ZCU = config().board("zcu104")
PNG = b"\x89PNG\r\n\x1a\n"
CONFIGS = [step.CONFIG_BY_KEY[k] for k in ("arm_fp32", "lora_offload", "whole_dynamic", "whole_dynamic8",
                                           "whole_serial", "whole_overlap", "whole_ws")]


@pytest.fixture(scope="module")
def table():
    return step.step_table(["zcu104"], ["digits"], 4, CONFIGS)


@pytest.fixture(scope="module")
def whole_energy():
    return energy.whole_step_energy(["zcu104"], ["digits"], 4)


def test_serial_overlapped_and_parts_are_ordered(table):
    for r in table["rows"]:
        assert r["t_serial_s"] == pytest.approx(r["t_host_s"] + r["t_accelerator_s"])
        assert r["t_serial_s"] >= r["t_overlapped_s"] - 1e-12
        assert r["t_overlapped_s"] >= max(r["t_host_s"], r["t_accelerator_s"]) - 1e-12
        assert r["t_step_s"] == (r["t_overlapped_s"] if r["overlap"] else r["t_serial_s"])
        assert sum(report.step_components(r).values()) == pytest.approx(r["t_serial_s"])
        assert 0 <= r["utilization"] <= 1


def test_arm_only_is_the_sum_of_its_parts(table):
    """On the ARM alone: no accelerator, every GEMM at the stated FP32 rate, the traced
    element-wise work, the LoRA adds and the optimizer; nothing overlaps."""
    r = next(r for r in table["rows"] if r["config"] == "arm_fp32")
    tr = inv.trace_step("digits")
    macs = sum(g.useful_macs for g in inv.step_gemms(tr, 4))
    assert r["t_accelerator_s"] == 0 and r["accelerator_calls"] == 0 and r["speedup_vs_arm"] == 1
    assert r["host"]["gemm_fp32"]["seconds"] == pytest.approx(2 * macs / (ZCU.host.gflops * 1e9))
    parts = sum(v["seconds"] for k, v in r["host"].items() if k != "total")
    assert r["t_step_s"] == pytest.approx(parts) == pytest.approx(r["host"]["total"]["seconds"])
    assert set(r["host"]) == {"elementwise", "gemm_fp32", "lora_add", "optimizer", "total"}


def test_overlap_model():
    h = {("a", "fwd"): 3.0, ("b", "fwd"): 1.0, ("c", "bwd"): 2.0}
    a = {("a", "fwd"): 1.0, ("b", "fwd"): 4.0}
    t = step.overlapped(h, a, tiles=4)
    assert max(6.0, 5.0) <= t <= 11.0
    assert t == pytest.approx(3 + 1 / 4 + 4 + 1 / 4 + 2)


def test_offload_configurations(table):
    """LoRA-only runs only the LoRA GEMMs on the accelerator (181 on digits); the whole step runs
    them all, fused where that saves cycles; delayed scaling needs no (de)quantization pass where
    the dynamic scheme runs one per boundary."""
    rows = {r["config"]: r for r in table["rows"]}
    assert rows["lora_offload"]["accelerator_calls"] == 181 and set(rows["lora_offload"]["families"]) == {"lora"}
    whole = rows["whole_overlap"]
    assert set(whole["families"]) >= {"linear", "conv", "attention", "lora"} and whole["fused_gemms"] > 0
    assert "gemm_fp32" not in whole["host"]
    assert rows["whole_dynamic"]["host"]["quantize"]["seconds"] > 5 * whole["host"]["quantize"]["seconds"]
    assert rows["whole_dynamic"]["host"]["dequantize"]["seconds"] > 0 > whole["host"]["dequantize"]["seconds"]
    dyn8 = rows["whole_dynamic8"]["host"]
    for what in ("quantize", "dequantize"):
        assert whole["host"][what]["seconds"] < dyn8[what]["seconds"] < rows["whole_dynamic"]["host"][what]["seconds"]
    assert rows["whole_ws"]["modes"] and all(m.startswith("ws") for f in rows["whole_ws"]["modes"].values() for m in f)


def test_boundary_passes_per_scheme():
    """One pass per distinct (tensor, scale axis) in the dynamic scheme, none between GEMMs with
    delayed scaling; dequantization of outputs the host reads; nothing but cache maintenance and
    driver calls in FP32."""
    tr = inv.trace_step("digits")
    gemms = inv.step_gemms(tr, 4)
    everything = set(range(len(gemms)))
    kinds = {s: host.summarize(host.boundary_work(ZCU, gemms, everything, s)) for s in host.SCHEMES}
    assert set(kinds["fp32"]) == {"driver", "cache", "total"}
    assert kinds["dynamic"]["quantize"]["bytes"] > 5 * kinds["delayed"]["quantize"]["bytes"] > 0
    assert kinds["delayed"]["dequantize"]["bytes"] < 0 < kinds["dynamic"]["dequantize"]["bytes"]
    dyn = [w for w in host.boundary_work(ZCU, gemms, everything, "dynamic") if w.what == "quantize"]
    q_operands = {(x.tensor, x.axis if x.src not in ("fixed", "lora") else "") for g in gemms for x in (g.a, g.b)
                  if x.src != "weight"}
    assert len(dyn) == len(q_operands)
    dyn8 = [w for w in host.boundary_work(ZCU, gemms, everything, "dynamic8") if w.what == "quantize"]
    assert len(dyn8) == len(q_operands)


def test_dynamic8_lies_between_delayed_and_dynamic():
    """row8 quantizes every operand as the row scheme but reads the frozen layers' INT8 outputs:
    fewer host bytes than dynamic (quantization, dequantization and cache maintenance each), more
    than delayed scaling; it fuses the forward pairs alone, as dynamic."""
    base = inv.step_gemms(inv.trace_step("digits"), 4, ZCU.axi_bytes)
    assert {w for _, w in step.fusable(base, "dynamic8")} == {"fwd"}
    gemms = step.choose_fusion(ZCU, base, "dynamic8", "auto", "all")
    assert {g.op for g in gemms if g.family == "fused"} == {"fwd_fused"}
    everything = set(range(len(gemms)))
    work = {s: host.boundary_work(ZCU, gemms, everything, s) for s in ("dynamic", "dynamic8", "delayed")}
    kinds = {s: host.summarize(w) for s, w in work.items()}
    for what in ("quantize", "dequantize", "total"):
        assert kinds["delayed"][what]["bytes"] < kinds["dynamic8"][what]["bytes"] < kinds["dynamic"][what]["bytes"]
    cache = {s: sum(w.instructions for w in work[s] if w.what == "cache") for s in work}
    assert cache["delayed"] < cache["dynamic8"] < cache["dynamic"]


def _one_boundary(gemms, idx, scheme):
    """(quantize bytes, dequantize bytes) of the GEMMs ``idx`` offloaded alone."""
    k = host.summarize(host.boundary_work(ZCU, gemms, set(idx), scheme))
    return k.get("quantize", {}).get("bytes", 0.0), k.get("dequantize", {}).get("bytes", 0.0)


def test_dynamic8_output_widths():
    """Linear/Conv (and fused) outputs 1 byte per element on the device and at the host's
    dequantization (read 1, write 4) and requantization (read 1 twice, write 1); attention,
    LoRA and INT32-only outputs 4 bytes as in the dynamic scheme."""
    tr = inv.trace_step("digits")
    gemms = step.choose_fusion(ZCU, inv.step_gemms(tr, 4, ZCU.axi_bytes), "dynamic8", "auto", "all")
    fams = set()
    for g in gemms:
        call, _ = step.device_call(ZCU, g, "dynamic8")
        int8 = g.family in ("linear", "conv", "fused") and not g.out_int32
        assert call.out_int8 == int8 == host.int8_output(g, "dynamic8"), g
        assert call.scale_mode == ("col" if int8 else "tensor")
        assert host.int8_output(g, "dynamic") is False
        fams.add((g.family, int8))
    assert fams >= {("linear", True), ("conv", True), ("fused", True), ("attention", False), ("lora", False)}
    # a convolution alone: its FP32 input quantized (read 4 + 4, write 1), its INT8 output dequantized
    i = next(i for i, g in enumerate(gemms) if g.family == "conv" and g.op == "fwd")
    g = gemms[i]
    assert _one_boundary(gemms, [i], "dynamic8") == (9.0 * g.a.elements, 5.0 * g.out_elements)
    assert _one_boundary(gemms, [i], "dynamic") == (9.0 * g.a.elements, 8.0 * g.out_elements)
    # the scores into softmax stay INT32
    j = next(j for j, g in enumerate(gemms) if g.family == "attention" and g.op == "qk")
    assert _one_boundary(gemms, [j], "dynamic8")[1] == 8.0 * gemms[j].out_elements
    # Q from its projection on the device: quantized from INT8 (3 bytes per element), not INT32 (9)
    q = gemms[j].a
    p = next(p for p, g in enumerate(gemms) if g.out_tensor == q.tensor and g.family in ("linear", "fused"))
    solo, both = _one_boundary(gemms, [j], "dynamic8")[0], _one_boundary(gemms, [p, j], "dynamic8")[0]
    assert solo + _one_boundary(gemms, [p], "dynamic8")[0] - both == pytest.approx(6.0 * q.elements)
    # O from P.V (attention, INT32) into to_out: requantized from INT32 in both schemes
    o = next(j for j, g in enumerate(gemms) if g.family == "attention" and g.op == "pv")
    t = next(t for t, g in enumerate(gemms) if g.a.tensor == gemms[o].out_tensor and g.family in ("linear", "fused"))
    assert _one_boundary(gemms, [o, t], "dynamic8")[0] == _one_boundary(gemms, [o, t], "dynamic")[0]
    # the device moves fewer bytes than with INT32 outputs (the per-column scale vector included)
    lin = max((g for g in gemms if g.family == "linear"), key=lambda g: g.out_elements)
    r8, r32 = step.run_gemm(ZCU, lin, "dynamic8", "auto"), step.run_gemm(ZCU, lin, "dynamic", "auto")
    assert r8.bytes < r32.bytes


def test_lora_outputs_accumulate_on_the_device_only_with_one_scale():
    """LoRA's Y (and dX) into the frozen layer's, both offloaded: free with delayed scaling; in
    the per-row schemes the host dequantizes it (read 4, write 4) and adds it (read 8, write 4),
    as the run-time does, the same as when the frozen layer runs on the ARM (delayed: its INT8
    output read, 3 bytes fewer than FP32, then the add)."""
    gemms = inv.step_gemms(inv.trace_step("digits"), 4, ZCU.axi_bytes)
    accs = [i for i, g in enumerate(gemms) if g.out == "accumulate"]
    assert accs and {gemms[i].family for i in accs} == {"lora"}

    def output_bytes(offloaded, scheme, g):
        return sum(w.bytes for w in host.boundary_work(ZCU, gemms, offloaded, scheme)
                   if w.what in ("dequantize", "lora_add") and (w.block, w.direction) == (g.block, g.direction))

    for i in accs:
        g = gemms[i]
        target = next(t for t, h in enumerate(gemms) if h.out_tensor == g.out_tensor and h.out != "accumulate")
        e = float(g.out_elements)
        for scheme, with_target, alone in (("delayed", 0, 9), ("dynamic", 20, 20), ("dynamic8", 20, 20)):
            added = output_bytes({i, target}, scheme, g) - output_bytes({target}, scheme, g)
            assert added == pytest.approx(with_target * e), (scheme, g.op)
            assert output_bytes({i}, scheme, g) == pytest.approx(alone * e), (scheme, g.op)


def test_whole_step_energy_counts_the_arm(whole_energy):
    v = whole_energy["rows"][0]["variants"]
    assert set(v) == set(energy.WHOLE_STEP_VARIANTS)
    assert v["int8_delayed"]["ratio_vs_int8_delayed"] == 1
    assert v["fp32"]["total_pj"] > v["fp16"]["total_pj"] > v["int8_delayed"]["total_pj"]
    assert v["int8_dynamic"]["host_quantization"]["total_pj"] > v["int8_dynamic8"]["host_quantization"]["total_pj"] \
        > v["int8_delayed"]["host_quantization"]["total_pj"]
    assert v["int8_dynamic"]["total_pj"] > v["int8_dynamic8"]["total_pj"] > v["int8_delayed"]["total_pj"]
    assert v["fp32"]["fp32_vs_this"] == 1 and v["int8_dynamic8"]["fp32_vs_this"] == pytest.approx(
        v["fp32"]["total_pj"] / v["int8_dynamic8"]["total_pj"])
    for x in v.values():
        assert x["total_pj"] == pytest.approx(x["accelerator"]["total_pj"] + x["host"]["total_pj"])
        assert x["host"]["ddr_pj"] > 0 and x["host"]["arith_pj"] > 0


def test_targets_are_checked_and_reported(table):
    assert step.target_check(table) is None        # no sd15 on zcu104 in this table
    t = step.target_check(table, board="zcu104", model="digits")
    assert [r["met"] for r in t["rows"]] == [r["speedup"] >= 10 for r in t["rows"][:1]] + \
        [t["rows"][1]["ratio"] >= 1.5]
    md = report.targets_markdown(t)
    assert "whole step offloaded >= 10x" in md and "| no |" in md


def test_step_report_files(table, whole_energy, tmp_path):
    text, files = report.write_step(table, tmp_path, whole_energy)
    files += plots.step_plots(table, tmp_path)
    assert [f.name for f in files] == ["step.md", "step.json", "step.png", "step_utilization.png"]
    for f in files[2:]:
        assert f.read_bytes()[:8] == PNG and f.stat().st_size > 10_000
    data = json.loads(files[1].read_text())
    assert {r["config"] for r in data["rows"]} == {c.key for c in CONFIGS} and data["energy"]["rows"]
    assert "modelled" in text and "| digits on zcu104" not in text and "## digits on zcu104" in text
    assert "stream" in text and "GFLOP/s" in text and "Energy per step" in text


@pytest.mark.parametrize("board", sorted(config().boards))
def test_every_step_gemm_is_a_kernel_v2_call_the_kernel_accepts(board):
    """The whole step on the v2 planner: every GEMM's planned call passes the kernel's argument
    check; convolutions carry their geometry (implicit GEMM, no im2col), attention GEMMs are one
    batched call over the heads, nothing else is batched."""
    from lora_qta.runtime.planner import kernel_accepts

    b = config().board(board)
    gemms = inv.step_gemms(inv.trace_step("digits"), 4, b.axi_bytes)
    gemms = step.choose_fusion(b, gemms, "delayed", "auto", "all")
    seen = set()
    for g in gemms:
        for scheme in ("delayed", "dynamic", "dynamic8"):
            call, n = step.device_call(b, g, scheme)
            assert (call.conv is not None) == (g.family == "conv") and call.macs * n == g.macs
            assert call.batch == (g.heads if g.family == "attention" else 1) and n == g.batch // call.batch
            if call not in seen:
                seen.add(call)
                p = step.best_plan(b, call, "auto")
                assert kernel_accepts(b, p.call), (g, p.call)


def test_step_calls_cycles_equal_the_c_simulated_kernel():
    """The step's convolution (forward, strided forward, input gradient) and batched attention
    calls, the smallest of each kind: the planner's cycles are the C-simulated kernel's modelled
    count."""
    import numpy as np

    from lora_qta.runtime.image import MemoryImage

    gemms = inv.step_gemms(inv.trace_step("digits"), 4, ZCU.axi_bytes)
    picks = {}
    for g in gemms:
        key = (g.family, g.op, g.conv.stride if g.conv else 0)
        if g.family in ("conv", "attention") and (key not in picks or g.macs < picks[key].macs):
            picks[key] = g
    assert {("conv", "fwd", 2), ("conv", "dgrad", 1), ("attention", "qk", 0), ("attention", "dk", 0)} <= set(picks)
    rng = np.random.default_rng(0)
    for g in picks.values():
        call, _ = step.device_call(ZCU, g, "delayed")
        p = step.best_plan(ZCU, call, "auto")
        out = MemoryImage.build(ZCU, p.call, rng).run_csim(ZCU)
        assert out["status"] & 2 == 0 and out["cycles_model"] == p.report.cycles, (g, p.call)


def test_a_slower_driver_call_only_lowers_the_offloaded_steps():
    """The sensitivity rows of the driver call time (x4, x10, x50 the stated call_us): the ARM
    alone makes no calls and does not change; every offloaded step slows as the factor grows
    (the digits step: hundreds of small calls)."""
    rows = {r["assumption"]: r for r in step.sensitivity(ZCU, inv.trace_step("digits"), 4)}
    calls = [rows["as stated"]] + [rows[f"driver call time x{f}"] for f in (4, 10, 50)]
    assert len({r["arm_s"] for r in calls}) == 1
    for key in ("whole_serial_s", "whole_overlap_s"):
        times = [r[key] for r in calls]
        assert times == sorted(times) and times[0] < times[-1]


def test_recomputes_run_their_family_again_and_slow_only_the_offloaded_steps():
    """compose's ``recompute``: a rate of 1 doubles the family's modelled cycles, bytes and calls
    and leaves the other families as they were; the sensitivity row at the digits run's measured
    rates leaves the ARM alone unchanged and slows every offloaded step."""
    tr = inv.trace_step("digits")
    cfg = step.CONFIG_BY_KEY["whole_serial"]
    base = step.compose(ZCU, tr, 4, cfg)
    twice = step.compose(ZCU, tr, 4, cfg, {"linear": 1.0})
    for key in ("cycles", "bytes", "calls", "macs"):
        assert twice["families"]["linear"][key] == pytest.approx(2 * base["families"]["linear"][key], rel=1e-6)
    for fam in set(base["families"]) - {"linear"}:
        assert twice["families"][fam] == base["families"][fam]
    assert twice["t_accelerator_s"] > base["t_accelerator_s"] and twice["t_host_s"] > base["t_host_s"]
    assert step.compose(ZCU, tr, 4, cfg, {"linear": 0.0}) == base
    assert 0 < step.RECOMPUTE_RATES["conv"] < step.RECOMPUTE_RATES["linear"] < 1
    rows = {r["assumption"]: r for r in step.sensitivity(ZCU, tr, 4)}
    stated, rec = rows["as stated"], rows["saturation recomputes at the digits run's rates"]
    assert rec["arm_s"] == stated["arm_s"]
    for key in ("whole_serial_s", "whole_overlap_s"):
        assert rec[key] > stated[key]
