"""The statistics of ``lora-qta evaluate``: pure functions of measured numbers (no model, no
PyTorch), so that they can be checked on synthetic numbers with known answers.

Every variant is trained and measured once per training seed with the same data order, noise,
timesteps, LoRA initialisation and sampling noise as the fp32 reference of that seed, so a
variant's difference to fp32 is *paired* per seed: the per-seed differences ``d_s`` carry the
seed-to-seed variation that both runs share only once. For each metric:

* per variant: mean and sample standard deviation (``ddof=1``) over seeds, and the mean
  sampling standard error of one seed's measurement (binomial for the accuracies, the standard
  error of the mean for the mean probability; none for the held-out loss, whose images, noise and
  timesteps are fixed and identical for every variant of a seed);
* per non-reference variant: the mean paired difference ``mean(d_s)`` with a 95 % Student-t
  confidence interval ``mean ± t(0.975, n-1) · sd(d_s) / sqrt(n)`` (none with fewer than 2
  seeds), the share of ``var(d_s)`` that sampling alone explains, and how many seeds would make
  the interval's half-width fall inside the target margin;
* the target verdict: the difference must stay inside fp32's seed-to-seed spread (one standard
  deviation over seeds) and, for the held-out loss, also within 2 %. Being better than fp32 is no
  failure (one-sided): *met* when the whole interval is on the good side of the margin, *not met*
  when the whole interval is beyond it, *undecided* otherwise, and *too few seeds* below 3 seeds
  (the target asks for 3+).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from ..errors import InputShapeError

CONFIDENCE = 0.95
MIN_SEEDS_FOR_VERDICT = 3
TARGET_LOSS_PCT = 2.0


@dataclass(frozen=True)
class Metric:
    """One measured quantity of a run and how its difference to fp32 is expressed."""

    key: str
    label: str
    higher_is_better: bool
    relative: bool      # difference in % of the reference (held-out loss) instead of points
    unit: str           # unit of the difference: "pp" or "%"
    in_target: bool     # part of the int8 quality target (concept accuracy, held-out loss)
    cap_pct: float | None = None  # a fixed bound on the difference besides fp32's spread


METRICS: tuple[Metric, ...] = (
    Metric("concept_accuracy", "concept accuracy (new token -> digit 7)", True, False, "pp", True),
    Metric("concept_probability", "mean classifier probability of 7 on the concept samples", True, False, "pp",
           False),
    Metric("known_accuracy", "accuracy on the known digits", True, False, "pp", False),
    Metric("heldout_loss", "held-out denoising loss", False, True, "%", True, TARGET_LOSS_PCT),
)
METRIC = {m.key: m for m in METRICS}


def t_quantile(p: float, df: int) -> float:
    """Quantile ``p`` of Student's t with ``df`` degrees of freedom (scipy, a scikit-learn dependency)."""
    from scipy.stats import t

    return float(t.ppf(p, df))


def mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def sample_std(xs: Sequence[float]) -> float | None:
    """Standard deviation with ``ddof=1`` (None for fewer than 2 values)."""
    if len(xs) < 2:
        return None
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def binomial_se(p: float, n: int) -> float:
    """Sampling standard error of a share ``p`` measured on ``n`` independent samples."""
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n > 0 else float("nan")


def mean_of_shares_se(shares: Sequence[float], n: int) -> float:
    """Sampling standard error of the mean of several shares, each measured on ``n`` samples."""
    return math.sqrt(sum(p * (1 - p) for p in shares) / n) / len(shares) if shares and n > 0 else float("nan")


def mean_se(values: Sequence[float]) -> float:
    """Standard error of the mean of ``values`` (e.g. per-image probabilities)."""
    sd = sample_std(values)
    return sd / math.sqrt(len(values)) if sd is not None else float("nan")


def paired_differences(reference: Sequence[float], other: Sequence[float], relative: bool) -> list[float]:
    """Per-seed ``other - reference``, in points (x100) or in % of the reference (``relative``)."""
    if len(reference) != len(other):
        raise InputShapeError(f"paired differences need one value per seed in both: {len(reference)} vs {len(other)}")
    if relative:
        return [100.0 * (o - r) / r for r, o in zip(reference, other)]
    return [100.0 * (o - r) for r, o in zip(reference, other)]


def confidence_interval(diffs: Sequence[float], confidence: float = CONFIDENCE) -> dict:
    """Mean of the paired differences with its Student-t confidence interval."""
    n = len(diffs)
    out = {"n_seeds": n, "mean": mean(diffs) if n else None, "std": sample_std(diffs), "se": None,
           "t": None, "ci_low": None, "ci_high": None, "half_width": None, "confidence": confidence}
    if n < 2:
        out["note"] = f"no confidence interval from {n} seed(s): it needs 2 or more (3+ for the target)"
        return out
    se = out["std"] / math.sqrt(n)
    t = t_quantile(0.5 + confidence / 2, n - 1)
    out.update(se=se, t=t, ci_low=out["mean"] - t * se, ci_high=out["mean"] + t * se, half_width=t * se)
    return out


def seeds_for_half_width(std: float | None, margin: float | None, confidence: float = CONFIDENCE,
                         most: int = 200) -> int | None:
    """The fewest seeds whose t interval half-width ``t(n-1) · std / sqrt(n)`` is at most
    ``margin`` (given the per-seed spread ``std`` of the differences); None if over ``most``."""
    if std is None or margin is None or margin <= 0:
        return None
    if std == 0:
        return 2
    for n in range(2, most + 1):
        if t_quantile(0.5 + confidence / 2, n - 1) * std / math.sqrt(n) <= margin:
            return n
    return None


def verdict(ci: dict, margin: float | None, higher_is_better: bool,
            min_seeds: int = MIN_SEEDS_FOR_VERDICT) -> dict:
    """Whether a variant's paired difference to fp32 stays inside ``margin`` (one-sided: being
    better is no failure). Returns ``{"verdict", "point_within", "reason"}``."""
    m = ci["mean"]
    if margin is None or m is None:
        return {"verdict": "too few seeds", "point_within": None,
                "reason": "no seed-to-seed spread of fp32 (fewer than 2 seeds)"}
    point = m >= -margin if higher_is_better else m <= margin
    if ci["n_seeds"] < min_seeds:
        return {"verdict": "too few seeds", "point_within": point,
                "reason": f"{ci['n_seeds']} seed(s); the target asks for {min_seeds} or more"}
    worst, best = (ci["ci_low"], ci["ci_high"]) if higher_is_better else (ci["ci_high"], ci["ci_low"])
    side = "below" if higher_is_better else "above"
    if (worst >= -margin) if higher_is_better else (worst <= margin):
        return {"verdict": "met", "point_within": point,
                "reason": f"the whole {ci['confidence']:.0%} interval is at most {margin:.2f} {side} fp32"}
    if (best < -margin) if higher_is_better else (best > margin):
        return {"verdict": "not met", "point_within": point,
                "reason": f"the whole {ci['confidence']:.0%} interval is more than {margin:.2f} {side} fp32"}
    return {"verdict": "undecided", "point_within": point,
            "reason": f"the {ci['confidence']:.0%} interval straddles the margin {margin:.2f}"}


def combine_verdicts(verdicts: Sequence[str]) -> str:
    """The target verdict of several metrics: met only if all are, not met if any is not."""
    if "not met" in verdicts:
        return "not met"
    if all(v == "met" for v in verdicts):
        return "met"
    if "too few seeds" in verdicts:
        return "too few seeds"
    return "undecided"


def variant_summary(values: Sequence[float], sampling_se: Sequence[float]) -> dict:
    """Mean and seed standard deviation of one metric of one variant, and its sampling error."""
    return {"mean": mean(values), "seed_std": sample_std(values), "per_seed": list(values),
            "sampling_se": list(sampling_se),
            "sampling_se_mean": math.sqrt(mean([s * s for s in sampling_se])) if sampling_se else None}


def reference_margin(metric: Metric, reference: dict) -> float | None:
    """The target margin of a metric's difference, in its unit: fp32's seed-to-seed standard
    deviation (points, or % of the mean for relative metrics), capped by the metric's fixed bound."""
    sd = reference["seed_std"]
    if sd is None:
        return None
    spread = 100.0 * sd / reference["mean"] if metric.relative else 100.0 * sd
    return min(spread, metric.cap_pct) if metric.cap_pct is not None else spread


def compare(metric: Metric, reference: dict, other: dict, confidence: float = CONFIDENCE) -> dict:
    """The paired comparison of one metric of a variant (``other``) to fp32 (``reference``), both
    :func:`variant_summary` results over the same seeds."""
    diffs = paired_differences(reference["per_seed"], other["per_seed"], metric.relative)
    ci = confidence_interval(diffs, confidence)
    margin = reference_margin(metric, reference)
    out = {"metric": metric.key, "unit": metric.unit, "per_seed": diffs, **ci, "margin": margin,
           "margin_rule": ("fp32 seed std" + (f", at most {metric.cap_pct:g} %" if metric.cap_pct else ""))}
    # sampling part of one seed's difference (independent-sample bound: the variants share each
    # seed's sampling noise, which makes the true sampling error of a difference smaller)
    # (in the difference's unit; none for the held-out loss: fixed images, noise and timesteps)
    var_sampling = ([0.0] * len(diffs) if metric.relative else
                    [1e4 * (a * a + b * b) for a, b in zip(reference["sampling_se"], other["sampling_se"])])
    vs = mean(var_sampling) if var_sampling else 0.0
    out["sampling_se_of_mean"] = math.sqrt(vs / len(diffs)) if diffs else None
    if ci["std"] is not None and ci["std"] > 0:
        share = min(1.0, vs / ci["std"] ** 2)
        out["sampling_share_of_variance"] = share
        out["advice"] = ("more samples per seed (sampling can explain most of the seed-to-seed variance of the "
                         "difference by the independent-sample bound, which overstates it: the variants share "
                         "each seed's sampling noise)" if share > 0.5 else
                         "more seeds (training explains most of the seed-to-seed variance of the difference)")
    else:
        out["sampling_share_of_variance"] = None
        out["advice"] = "more seeds (2+ needed for a spread)" if ci["std"] is None else "none needed"
    out["seeds_for_margin"] = seeds_for_half_width(ci["std"], margin, confidence)
    out.update(verdict(ci, margin, metric.higher_is_better))
    return out


__all__ = ["CONFIDENCE", "METRICS", "METRIC", "Metric", "TARGET_LOSS_PCT", "binomial_se", "combine_verdicts",
           "compare", "confidence_interval", "mean_of_shares_se", "mean_se", "paired_differences",
           "reference_margin", "sample_std", "seeds_for_half_width", "t_quantile", "variant_summary", "verdict"]
