"""The statistics and the variant table of ``lora-qta evaluate``, on synthetic numbers with known
answers (pure functions: no model is trained here)."""

import math
from dataclasses import fields

import pytest

from lora_qta.errors import OptionError
from lora_qta.training import evalstats as st
from lora_qta.training.config import FinetuneConfig
from lora_qta.training.evaluate import summarize
from lora_qta.training.variants import (VARIANTS, available_variants, parse_variants, variant_config,
                                        variant_options, variants_help)

HAS_OFFLOAD = "offload" in {f.name for f in fields(FinetuneConfig)}


def test_paired_ci_against_a_hand_computed_example():
    # fp32 and int8 concept accuracy on three seeds -> differences 5, -2, 10 pp
    diffs = st.paired_differences([0.70, 0.80, 0.60], [0.75, 0.78, 0.70], relative=False)
    assert diffs == pytest.approx([5.0, -2.0, 10.0])
    ci = st.confidence_interval(diffs)
    # by hand: mean 13/3; squared deviations 0.4444 + 40.1111 + 32.1111 = 72.6667, /2 -> sd 6.02771;
    # se = sd / sqrt 3 = 3.48010; t(0.975, 2) = 4.30265 (table); half-width 14.9738
    assert ci["mean"] == pytest.approx(4.33333, abs=1e-4)
    assert ci["std"] == pytest.approx(6.02771, abs=1e-4)
    assert ci["se"] == pytest.approx(3.48010, abs=1e-4)
    assert ci["t"] == pytest.approx(4.30265, abs=1e-4)
    assert (ci["ci_low"], ci["ci_high"]) == pytest.approx((-10.6405, 19.3071), abs=1e-3)


def test_t_quantiles_match_the_table():
    for df, t in ((1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (29, 2.045)):
        assert st.t_quantile(0.975, df) == pytest.approx(t, abs=1e-3)


def test_relative_differences_of_the_heldout_loss():
    assert st.paired_differences([0.040, 0.050], [0.041, 0.049], relative=True) == pytest.approx([2.5, -2.0])


def test_one_seed_gives_no_interval_and_says_so():
    ci = st.confidence_interval([3.0])
    assert ci["ci_low"] is None and ci["std"] is None and "2 or more" in ci["note"]
    v = st.verdict(ci, None, True)
    assert v["verdict"] == "too few seeds"


def test_sampling_errors():
    assert st.binomial_se(0.5, 100) == pytest.approx(0.05)
    assert st.binomial_se(1.0, 100) == 0.0
    # the mean of two shares 0.5 and 0.9, each on 25 samples: sqrt((0.25 + 0.09) / 25) / 2
    assert st.mean_of_shares_se([0.5, 0.9], 25) == pytest.approx(math.sqrt(0.34 / 25) / 2)
    assert st.mean_se([0.0, 1.0, 0.0, 1.0]) == pytest.approx(math.sqrt(1 / 3) / 2)


def _ci(mean, low, high, n=3):
    return {"n_seeds": n, "mean": mean, "ci_low": low, "ci_high": high, "confidence": 0.95}


@pytest.mark.parametrize("ci, margin, higher, expected", [
    (_ci(-1.0, -4.0, 2.0), 5.0, True, "met"),           # whole interval above -5 pp
    (_ci(+9.0, +1.0, 17.0), 5.0, True, "met"),           # better than fp32 is no failure
    (_ci(-12.0, -15.0, -9.0), 5.0, True, "not met"),     # whole interval below -5 pp
    (_ci(-3.0, -10.0, 4.0), 5.0, True, "undecided"),     # straddles -5 pp
    (_ci(+0.5, -0.4, 1.4), 2.0, False, "met"),           # loss: whole interval below +2 %
    (_ci(+3.0, +2.5, 3.5), 2.0, False, "not met"),
    (_ci(+1.0, -1.0, 3.0), 2.0, False, "undecided"),
    (_ci(-1.0, -4.0, 2.0, n=2), 5.0, True, "too few seeds"),  # the target asks for 3+ seeds
])
def test_target_verdict(ci, margin, higher, expected):
    assert st.verdict(ci, margin, higher)["verdict"] == expected


def test_point_estimate_is_reported_beside_the_verdict():
    assert st.verdict(_ci(-3.0, -10.0, 4.0), 5.0, True)["point_within"] is True
    assert st.verdict(_ci(-6.0, -10.0, -2.0), 5.0, True)["point_within"] is False


def test_combined_verdict():
    assert st.combine_verdicts(["met", "met"]) == "met"
    assert st.combine_verdicts(["met", "not met"]) == "not met"
    assert st.combine_verdicts(["met", "undecided"]) == "undecided"
    assert st.combine_verdicts(["too few seeds", "too few seeds"]) == "too few seeds"


def test_margin_is_fp32_spread_and_heldout_loss_at_most_2_percent():
    acc = st.variant_summary([0.70, 0.80, 0.60], [0.04] * 3)
    assert st.reference_margin(st.METRIC["concept_accuracy"], acc) == pytest.approx(10.0)
    wide = st.variant_summary([0.040, 0.044, 0.036], [0.0] * 3)  # 10 % spread -> capped at 2 %
    assert st.reference_margin(st.METRIC["heldout_loss"], wide) == pytest.approx(2.0)
    narrow = st.variant_summary([0.0400, 0.0402, 0.0398], [0.0] * 3)  # 0.5 % spread
    assert st.reference_margin(st.METRIC["heldout_loss"], narrow) == pytest.approx(0.5)


def test_seeds_needed_for_the_interval_to_fit_the_margin():
    # t(n-1) * 10 / sqrt(n) <= 5: n = 17 gives 2.120 * 10 / 4.123 = 5.14, n = 18 gives 4.97
    assert st.seeds_for_half_width(10.0, 5.0) == 18
    assert st.seeds_for_half_width(None, 5.0) is None


def test_compare_splits_sampling_from_training_variance():
    ref = st.variant_summary([0.70, 0.80, 0.60], [0.05] * 3)
    oth = st.variant_summary([0.75, 0.78, 0.70], [0.05] * 3)
    c = st.compare(st.METRIC["concept_accuracy"], ref, oth)
    # per-seed sampling variance of a difference: 2 * 5^2 = 50 pp^2; var of the differences 36.33
    assert c["sampling_share_of_variance"] == 1.0 and c["advice"].startswith("more samples")
    assert c["sampling_se_of_mean"] == pytest.approx(math.sqrt(50 / 3))
    assert c["margin"] == pytest.approx(10.0) and c["verdict"] == "undecided"  # CI [-10.6, 19.3]


def _measured(values: dict) -> dict:
    return {k: v for k, v in values.items()} | {"sampling_se": {k: 0.01 for k in values}}


def test_summarize_pairs_by_seed():
    runs = {"fp32": {}, "int8": {}}
    for s, (f, q) in enumerate([(0.70, 0.75), (0.80, 0.78), (0.60, 0.70)]):
        base = {"concept_probability": 0.5, "known_accuracy": 0.95, "heldout_loss": 0.04}
        runs["fp32"][str(s)] = _measured({**base, "concept_accuracy": f})
        runs["int8"][str(s)] = _measured({**base, "concept_accuracy": q, "heldout_loss": 0.0404})
    summaries, comparisons, target = summarize(runs, ["fp32", "int8"], [0, 1, 2])
    assert summaries["fp32"]["concept_accuracy"]["mean"] == pytest.approx(0.70)
    c = comparisons["int8"]["concept_accuracy"]
    assert c["per_seed"] == pytest.approx([5.0, -2.0, 10.0]) and c["ci_low"] == pytest.approx(-10.6405, abs=1e-3)
    h = comparisons["int8"]["heldout_loss"]
    assert h["mean"] == pytest.approx(1.0) and h["std"] == pytest.approx(0.0, abs=1e-9)
    assert h["margin"] == pytest.approx(0.0)  # fp32's loss did not vary: no spread to hide a +1 % in
    assert h["verdict"] == "not met" and target["int8"]["verdict"] == "not met"


# ------------------------------------------------------------------------------ variants

def test_variant_table():
    avail = available_variants()
    assert list(avail)[:2] == ["fp32", "int8"]
    assert variant_config("fp32", FinetuneConfig()).precision == "fp32"
    assert variant_config("int8", FinetuneConfig(precision="fp32")).precision == "int8"
    assert [v.name for v in VARIANTS] == ["fp32", "int8", "int8-all", "int8-all-row8", "int8-all-fused",
                                          "int8-all-row8c"]
    row8 = variant_config("int8-all-row8", FinetuneConfig())
    assert (row8.precision, row8.offload, row8.offload_scheme) == ("int8", "all", "row8")
    assert variant_config("int8-all-row8c", FinetuneConfig()).offload_scheme == "row8c"
    assert parse_variants("int8, fp32") == ["fp32", "int8"]  # the reference first


@pytest.mark.skipif(HAS_OFFLOAD, reason="FinetuneConfig.offload exists: int8-all is offered (next test)")
def test_int8_all_is_not_offered_without_the_offload_option():
    assert "int8-all" not in available_variants()
    assert "not in this build" in variants_help()
    with pytest.raises(OptionError, match="offload"):
        parse_variants("fp32,int8-all")


@pytest.mark.skipif(not HAS_OFFLOAD, reason="FinetuneConfig.offload does not exist in this build")
def test_int8_all_is_offered_with_the_offload_option():
    cfg = variant_config("int8-all", FinetuneConfig())
    assert (cfg.precision, cfg.offload, cfg.offload_scheme) == ("int8", "all", "row")
    assert variant_config("int8", FinetuneConfig()).offload == "lora"


@pytest.mark.skipif(not HAS_OFFLOAD, reason="FinetuneConfig.offload does not exist in this build")
def test_int8_all_runs_have_their_own_identity():
    """evaluate reuses a folder only for a finished run of the same identity: int8-all's names the
    offload (and its delayed-scaling numerics), int8's stays that of a LoRA-only run."""
    from lora_qta.training.loop import run_target

    base = FinetuneConfig(backend="fast")
    lora, whole = variant_config("int8", base), variant_config("int8-all", base)
    id_lora, id_all = lora.identity(run_target(lora)), whole.identity(run_target(whole))
    assert "offload" not in id_lora and id_all["offload"] == "all"
    assert "offload_numerics" in id_all["target"] and "offload_numerics" not in id_lora["target"]
    assert variant_options("int8") == {"precision": "int8", "offload": "lora"}
    assert variant_options("int8-all") == {"precision": "int8", "offload": "all", "offload_scheme": "row"}
    assert id_all["target"]["offload_numerics"]["scheme"] == "row"  # pinned: the default's change left it as it was
    fused = variant_config("int8-all-fused", base)
    assert fused.fuse_lora and fused.identity(run_target(fused))["target"]["offload_numerics"]["fuse_lora"]
    assert "fuse_lora" not in id_all["target"]["offload_numerics"]  # int8-all's identity stays unfused


@pytest.mark.parametrize("text, message", [
    ("fp32,bf16", "unknown variant 'bf16'"),
    ("int8", "must include fp32"),
    ("fp32,int8,int8", "twice"),
])
def test_bad_variant_lists(text, message):
    with pytest.raises(OptionError, match=message):
        parse_variants(text)


def test_digit_probabilities_score_real_test_images():
    """The continuous score: calibrated probabilities that agree with the classifier's reading."""
    import numpy as np

    from lora_qta.training import digits as d

    images, labels = d.load_digits_dataset(split="test")
    x = ((images + 1) / 2)[:, 0].numpy()
    p = d.digit_probabilities(x)
    assert p.shape == (len(x), 10) and np.allclose(p.sum(1), 1)
    assert np.mean(p.argmax(1) == labels.numpy()) > 0.95
    sevens = labels.numpy() == d.HELD_OUT_CLASS
    assert p[sevens, d.HELD_OUT_CLASS].mean() > 0.8 and p[~sevens, d.HELD_OUT_CLASS].mean() < 0.1


def test_evaluate_compares_the_default_fine_tuning_with_fp32_unless_told():
    """The default variants are the reference and exactly what ``lora-qta finetune`` trains at its
    defaults, so ``lora-qta evaluate`` measures the main job's quality."""
    from lora_qta.training.variants import DEFAULT_VARIANTS

    assert parse_variants(list(DEFAULT_VARIANTS)) == ["fp32", "int8-all-row8c"]
    assert variant_config(DEFAULT_VARIANTS[1], FinetuneConfig()) == FinetuneConfig()
    assert variant_config("int8", FinetuneConfig()) != FinetuneConfig()  # LoRA-only is a choice now
