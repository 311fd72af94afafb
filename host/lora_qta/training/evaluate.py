"""Offline quality of LoRA fine-tuning variants (fp32, int8, ...) of the default digits model.

Every variant of :mod:`.variants` is fine-tuned once per training seed with the same options,
data order, noise, timesteps and LoRA initialisation (all drawn from the seed); each adapter is
then loaded into a fresh stock pipeline with ``pipeline.load_lora_weights`` and measured on real
data with the sampling noise of that seed (identical for every variant of a seed):

* concept accuracy: the share of images generated for the new token that a digit classifier
  (trained on scikit-learn's digits, :func:`lora_qta.training.digits.train_digit_classifier`) reads as
  the held-out digit;
* concept probability: the calibrated classifier's mean probability of the held-out digit on
  those images (:func:`lora_qta.training.digits.digit_probabilities`), a continuous score that
  moves before an image crosses the classifier's decision boundary;
* known-digit accuracy: the concept accuracy's counterpart for prompts of the digits the base
  model already knew (mean over the nine);
* held-out denoising loss: the noise-prediction MSE on test-split images (new concept with its
  token, known digits with their prompts) at fixed, seeded noise and timesteps.

The statistics (paired differences to fp32 per seed, t intervals, the target verdict, the
sampling error) are :mod:`.evalstats`. One run per folder: ``<output>/runs/<variant>/seed<s>``;
a folder is reused only if it holds a finished run with every option that defines the run
(:func:`lora_qta.training.loop.finished_run`), and the report says which runs were reused.

Resumable: each measurement is written into its run's folder (``measure.json``; the base model's
into ``<output>/base_measure.seed<s>.json``, s its sampling seed) as soon as it is made, and a
later evaluation reuses it only when everything that defines it matches (:mod:`.measurecache`),
so a killed evaluation loses at most the measurement it was making; evaluate.json is built from
cached and new measurements alike.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..errors import CheckpointError, OptionError, OutputDirError
from . import evalstats as st
from . import measurecache as cache
from .rundir import latest_checkpoint
from .config import FinetuneConfig
from .loop import finetune, finished_run, grid_png, step_generator
from .variants import DEFAULT_VARIANTS, REFERENCE, parse_variants, variant_config, variant_options

DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_SAMPLES_PER_CLASS = 20
DEFAULT_CONCEPT_SAMPLES = 100


def heldout_loss(pipe, seed: int, repeats: int = cache.HELDOUT_REPEATS) -> float:
    """Mean noise-prediction MSE on the test split at fixed noise and timesteps."""
    from . import digits as d

    images, labels = d.load_digits_dataset(split="test")
    prompts = [d.concept_prompt() if int(c) == d.HELD_OUT_CLASS else d.digit_prompt(int(c)) for c in labels]
    sched = pipe.scheduler
    total, count = 0.0, 0
    with torch.no_grad():
        ctx = pipe.text_encoder.encode(prompts)
        for r in range(repeats):
            g = step_generator(seed, 10_000 + r, 7)
            noise = torch.randn(images.shape, generator=g)
            t = torch.randint(0, sched.config.num_train_timesteps, (len(images),), generator=g)
            pred = pipe.unet(sched.add_noise(images, noise, t), t, encoder_hidden_states=ctx).sample
            total += torch.nn.functional.mse_loss(pred, noise, reduction="sum").item()
            count += noise.numel()
    return total / count


def measure(pipe, seed: int, concept_samples: int, per_class: int, classifier=None, prob_model=None) -> dict[str, Any]:
    """Every metric of one pipeline (with or without an adapter) at the sampling noise of ``seed``,
    with the sampling standard error of each (none for the held-out loss: fixed noise)."""
    from . import digits as d

    g = torch.Generator().manual_seed(seed)
    concept = pipe([d.concept_prompt()] * concept_samples, generator=g)
    hits = d.classify(concept, classifier) == d.HELD_OUT_CLASS
    p7 = d.digit_probabilities(concept, prob_model)[:, d.HELD_OUT_CLASS]
    per = {}
    for c in d.KNOWN_CLASSES:
        imgs = pipe([d.digit_prompt(c)] * per_class, generator=g)
        per[str(c)] = float(np.mean(d.classify(imgs, classifier) == c))
    out = {
        "concept_accuracy": float(np.mean(hits)),
        "concept_probability": float(np.mean(p7)),
        "known_accuracy": float(np.mean(list(per.values()))),
        "heldout_loss": heldout_loss(pipe, seed),
        "known_accuracy_per_class": per,
        "samples": {"concept": concept_samples, "per_known_digit": per_class},
    }
    out["sampling_se"] = {
        "concept_accuracy": st.binomial_se(out["concept_accuracy"], concept_samples),
        "concept_probability": st.mean_se([float(x) for x in p7]),
        "known_accuracy": st.mean_of_shares_se(list(per.values()), per_class),
        "heldout_loss": 0.0,
    }
    out["concept_images"] = concept[:8]
    return out


def check_seeds(seeds: Sequence[int]) -> list[int]:
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise OptionError("no training seed given: --seeds 0,1,2 or --num-seeds 3")
    if len(set(seeds)) != len(seeds):
        raise OptionError(f"--seeds repeats a seed ({','.join(map(str, seeds))}): a repeated seed trains the "
                          "same run again and is no independent pair")
    if any(s < 0 for s in seeds):
        raise OptionError(f"seeds must be 0 or more, not {min(seeds)}")
    return seeds


def _run(name: str, seed: int, root: Path, steps: int, board, backend, reuse: bool) -> tuple[Path, str]:
    """Train (or reuse) one run of variant ``name`` with ``seed``; returns its folder and status.
    A run whose training was cut short (killed, or Ctrl-C: finetune checkpoints and returns)
    continues from its newest checkpoint when that checkpoint has every option of the run
    (``finetune --resume``, which ends with the bytes of an uninterrupted run), else it is trained
    again. A training stopped by Ctrl-C stops the evaluation: KeyboardInterrupt, with every
    measurement made so far cached."""
    run = root / "runs" / name / f"seed{seed}"
    cfg = variant_config(name, FinetuneConfig(output_dir=str(run), steps=steps, seed=seed, board=board,
                                              backend=backend, samples=False))
    if reuse and finished_run(cfg):  # every option that defines the run must match, no resume overrides
        return run, "reused (finished run with the same options)"
    ckpt = latest_checkpoint(run) if reuse and not (run / "report.json").is_file() else None
    if ckpt is not None:
        try:
            rep = finetune(replace(cfg, resume=True))
        except CheckpointError:  # a checkpoint of other options (or unreadable): trained again below
            pass
        else:
            if rep.get("interrupted"):
                raise KeyboardInterrupt
            return run, f"resumed from its checkpoint {ckpt.name} (an interrupted run with the same options)"
    had = (run / "report.json").is_file() or (run / "checkpoints").is_dir()
    if finetune(replace(cfg, overwrite=True)).get("interrupted"):
        raise KeyboardInterrupt
    if not had:
        return run, "trained"
    return run, "trained (replaced a run with other options or unfinished)" if reuse else "trained (--no-reuse)"


def _measured(path: Path, key: dict[str, Any], load_pipe: Callable[[], Any], concept_samples: int,
              per_class: int, classifier, prob_model, reuse: bool, log, label: str) -> tuple[dict[str, Any], dict]:
    """The measurement ``key`` names of the pipeline ``load_pipe()`` returns: read from ``path`` when
    that holds exactly it (and ``reuse``), else made and written to ``path`` at once. Returns the
    measurement and how it was obtained (``measurement``, ``measure_time_s_measured``)."""
    cached = cache.load(path, key, log, label) if reuse else None
    if cached is not None:
        log(f"evaluate: {label}: measurement reused from {path}")
        return cached.result, {"measurement": f"reused from {path}", "measure_time_s_measured": cached.seconds}
    pipe = load_pipe()
    t = time.perf_counter()
    res = measure(pipe, key["sampling_seed"], concept_samples, per_class, classifier, prob_model)
    seconds = time.perf_counter() - t
    cache.save(path, key, res, seconds)
    return res, {"measurement": "measured", "measure_time_s_measured": seconds}


def _adapted_pipeline(folder: Path):
    """A fresh stock pipeline with the run's adapter loaded."""
    from . import digits as d

    pipe = d.load_shipped_pipeline()
    pipe.load_lora_weights(str(folder / "adapter"))
    return pipe


def evaluate(output_dir: str = "runs/evaluate", variants: Sequence[str] | str = DEFAULT_VARIANTS,
             seeds: Sequence[int] = DEFAULT_SEEDS, steps: int = FinetuneConfig.steps,
             samples_per_class: int = DEFAULT_SAMPLES_PER_CLASS, concept_samples: int = DEFAULT_CONCEPT_SAMPLES,
             board: str | None = None, backend: str | None = None, reuse: bool = True,
             threads: int = 1, log=print) -> dict[str, Any]:
    """Fine-tune every variant with every seed, measure them, compare each to fp32 paired per
    seed; write evaluate.json, evaluate_diffs.png and concept_samples.png into ``output_dir``.
    Measurements cached by an earlier evaluation are reused when they match exactly (not with
    ``reuse`` False, which also retrains every run); new ones are cached as they are made."""
    from . import digits as d

    names = parse_variants(list(variants) if not isinstance(variants, str) else variants)
    seeds = check_seeds(seeds)
    for opt, v in (("--samples-per-class", samples_per_class), ("--concept-samples", concept_samples),
                   ("--steps", steps)):
        if v < 1:
            raise OptionError(f"{opt} must be at least 1, not {v}")
    root = Path(output_dir)
    t0 = time.perf_counter()
    torch.set_num_threads(threads)  # the digits model's ops are too small to gain from more (see finetune --threads)
    log(f"evaluate: base model, {concept_samples} concept samples and {samples_per_class} per known digit")
    classifier, prob_model = d.train_digit_classifier(), d.train_digit_probability_model()
    options = cache.measurement_options(concept_samples, samples_per_class, classifier, prob_model)
    root.mkdir(parents=True, exist_ok=True)
    base, how = _measured(root / cache.base_measurement(seeds[0]), cache.measurement_key(options, seeds[0], None),
                          d.load_shipped_pipeline, concept_samples, samples_per_class, classifier, prob_model,
                          reuse, log, "base model")
    grid = [("base model", base.pop("concept_images"))]
    base["measurement"] = how["measurement"]
    runs: dict[str, dict[str, Any]] = {}
    times = {"train_s": 0.0, "measure_s": 0.0}
    for name in names:
        runs[name] = {}
        for s in seeds:
            log(f"evaluate: {name}, seed {s} ({time.perf_counter() - t0:.0f} s so far)")
            t = time.perf_counter()
            folder, status = _run(name, s, root, steps, board, backend, reuse)
            t_train = time.perf_counter() - t
            report = json.loads((folder / "report.json").read_text())
            key = cache.measurement_key(options, s, cache.run_key(folder, report.get("identity")))
            t = time.perf_counter()
            res, how = _measured(folder / cache.MEASUREMENT, key, lambda: _adapted_pipeline(folder), concept_samples,
                                 samples_per_class, classifier, prob_model, reuse, log, f"{name}, seed {s}")
            t_measure = time.perf_counter() - t
            images = res.pop("concept_images")
            if s == seeds[0]:
                grid.append((f"{name} LoRA\nseed {s}", images))
            res.update(folder=str(folder), status=status, seed=s, identity=report.get("identity"),
                       train_time_s_measured=report.get("time_s", {}).get("total_measured"), **how,
                       wall_time_s_measured={"train_or_reuse": t_train, "measure": t_measure})
            times["train_s"] += t_train
            times["measure_s"] += t_measure
            runs[name][str(s)] = res
    summaries, comparisons, target = summarize(runs, names, seeds)
    opts = {n: variant_options(n) for n in names}
    result = {
        "label": "measured on this machine",
        "machine": platform.node(), "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": command_line(names, seeds, steps, samples_per_class, concept_samples, board, backend),
        "accelerator": "int8 variants ran on the emulated accelerator (bit-exact with the kernel) unless --backend "
                       "board",
        "reference": REFERENCE, "variants": names, "variant_options": opts, "seeds": seeds, "steps": steps,
        "samples": {"concept": concept_samples, "per_known_digit": samples_per_class},
        "finetune_defaults": {k: v for k, v in asdict(FinetuneConfig()).items()
                              if k not in ("output_dir", "seed", "steps", "samples", "resume", "overwrite")},
        "target": {"rule": ("concept accuracy and held-out loss differences to fp32 inside fp32's seed-to-seed "
                            "standard deviation (held-out loss also within 2 %), with 95 % confidence and 3+ "
                            "seeds; one-sided: being better than fp32 is no failure"),
                   "per_variant": target},
        "statistics": st.__doc__.split("\n\n", 1)[1].strip(),
        "base": {k: v for k, v in base.items()},
        "metrics": summaries, "comparisons": comparisons, "runs": runs,
        "time_s_measured": {**times, "total": time.perf_counter() - t0},
    }
    (root / "evaluate.json").write_text(json.dumps(result, indent=2))
    grid_png(grid, root / "concept_samples.png", captions=["<sks>"] * 8)
    plot_differences(result, root / "evaluate_diffs.png")
    return result


RUN_OPTIONS = ("variants", "variant_options", "steps", "samples", "finetune_defaults")
"""The keys of evaluate.json that every pooled evaluation must share (besides each run's identity)."""


def _load_result(source: str) -> tuple[Path, dict[str, Any]]:
    """An evaluate.json given as its folder or its path."""
    path = Path(source)
    path = path / "evaluate.json" if path.is_dir() else path
    try:
        result = json.loads(path.read_text())
    except OSError as e:
        raise OptionError(f"--combine {source}: cannot read {path} ({e.strerror}); give folders written by "
                          "lora-qta evaluate (each holding evaluate.json) or the evaluate.json files") from None
    except ValueError as e:
        raise OptionError(f"--combine {source}: {path} is not JSON ({e})") from None
    missing = [k for k in (*RUN_OPTIONS, "seeds", "runs", "base", "target", "label") if k not in result]
    if missing:
        raise OptionError(f"--combine {source}: {path} lacks {', '.join(missing)}: not an evaluate.json")
    return path, result


def _run_identity(source: Path, name: str, seed: str, run: dict[str, Any]) -> dict[str, Any]:
    """A measured run's identity without its seed: from evaluate.json, else from its folder's report.json."""
    identity = run.get("identity")
    if identity is None:
        report = Path(run.get("folder", "")) / "report.json"
        try:
            identity = json.loads(report.read_text())["identity"]
        except (OSError, ValueError, KeyError):
            raise OptionError(f"--combine: {source} does not record the identity of {name} seed {seed} and its "
                              f"run folder's report ({report}) cannot be read: without it the runs cannot be "
                              "checked to share every option; combine on the machine that holds the runs") from None
    return {k: v for k, v in identity.items() if k != "seed"}


def combine(sources: Sequence[str], output_dir: str) -> dict[str, Any]:
    """Pool finished evaluations with disjoint seeds (e.g. seeds split over two processes or
    machines) into one result with the statistics over every seed, without training or measuring
    anything again. Refuses evaluations whose variants, steps, samples or run options differ, a
    seed measured twice, and an output folder that holds an evaluation of its own; writes
    evaluate.json and evaluate_diffs.png into ``output_dir``."""
    if len(sources) < 2:
        raise OptionError("--combine takes two or more evaluate folders, comma-separated")
    loaded = [_load_result(s) for s in sources]
    root = Path(output_dir)
    own = root / "evaluate.json"
    for path, _ in loaded:
        if path.resolve() == own.resolve():
            raise OutputDirError(f"--output-dir {root} is one of the evaluations to combine: its evaluate.json "
                                 "would be overwritten; give a new folder")
    if own.is_file():
        try:
            previous = json.loads(own.read_text())
        except ValueError:
            previous = {}
        if "combined_from" not in previous:
            raise OutputDirError(f"{own} holds an evaluation of its own (not a combination): give a new "
                                 "--output-dir so that it is not overwritten")
    first_path, first = loaded[0]
    for path, res in loaded[1:]:
        for key in RUN_OPTIONS:
            mine, theirs = res[key], first[key]
            if key == "finetune_defaults":  # an option added since keeps its old behaviour at its default;
                common = mine.keys() & theirs.keys()  # the runs' identities below decide what defines a run
                mine, theirs = ({k: d[k] for k in common} for d in (mine, theirs))
            if mine != theirs:
                raise OptionError(f"--combine: {path} and {first_path} differ in {key} ({mine!r} vs "
                                  f"{theirs!r}): only evaluations of the same variants and options pool")
    names = first["variants"]
    runs: dict[str, dict[str, Any]] = {n: {} for n in names}
    origin: dict[int, Path] = {}
    identities: dict[str, tuple[dict[str, Any], Path]] = {}
    for path, res in loaded:
        for s in res["seeds"]:
            if s in origin:
                raise OptionError(f"--combine: seed {s} is in both {origin[s]} and {path}: a seed pooled twice "
                                  "is no independent pair; leave one out")
            origin[s] = path
        for n in names:
            for s, run in res["runs"][n].items():
                ident = _run_identity(path, n, s, run)
                ref = identities.setdefault(n, (ident, path))
                if ident != ref[0]:
                    diff = sorted(k for k in set(ident) | set(ref[0]) if ident.get(k) != ref[0].get(k))
                    raise OptionError(f"--combine: {n} seed {s} of {path} was trained with other options than in "
                                      f"{ref[1]} ({', '.join(diff)}): only runs that differ in their seed pool")
                runs[n][s] = run
    seeds = sorted(origin)
    summaries, comparisons, target = summarize(runs, names, seeds)
    base_path, base_src = min(loaded, key=lambda pr: pr[1]["seeds"][0])
    labels = {res["label"] for _, res in loaded}
    machines = sorted({res.get("machine", "?") for _, res in loaded})
    times = {k: sum(res.get("time_s_measured", {}).get(k, 0.0) for _, res in loaded)
             for k in ("train_s", "measure_s", "total")}
    result = {
        **{k: v for k, v in first.items() if k not in ("runs", "metrics", "comparisons", "base")},
        "label": labels.pop() if len(labels) == 1 else "measured on " + ", ".join(machines),
        "machine": ", ".join(machines), "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": "lora-qta evaluate --combine " + ",".join(str(p.parent) for p, _ in loaded)
                   + f" --output-dir {output_dir}",
        "combined_from": [{"path": str(p), "seeds": r["seeds"], "command": r.get("command"), "date": r.get("date"),
                           "machine": r.get("machine")} for p, r in loaded],
        "seeds": seeds,
        "target": {**first["target"], "per_variant": target},
        "base": base_src["base"], "base_from": str(base_path),
        "metrics": summaries, "comparisons": comparisons, "runs": runs,
        "time_s_measured": times,
    }
    root.mkdir(parents=True, exist_ok=True)
    own.write_text(json.dumps(result, indent=2))
    plot_differences(result, root / "evaluate_diffs.png")
    return result


def summarize(runs: dict[str, dict[str, Any]], names: Sequence[str], seeds: Sequence[int]) -> tuple[dict, dict, dict]:
    """The statistics of measured runs (``runs[variant][str(seed)]`` as :func:`measure` returns):
    per-variant summaries, paired comparisons of each non-reference variant to ``names[0]``, and
    the target verdict per variant. Pure: recomputes evaluate.json's statistics from its ``runs``."""
    summaries = {name: {m.key: st.variant_summary([runs[name][str(s)][m.key] for s in seeds],
                                                  [runs[name][str(s)]["sampling_se"][m.key] for s in seeds])
                        for m in st.METRICS} for name in names}
    comparisons, target = {}, {}
    in_target = [m.key for m in st.METRICS if m.in_target]
    for name in names[1:]:
        comparisons[name] = {m.key: st.compare(m, summaries[names[0]][m.key], summaries[name][m.key])
                             for m in st.METRICS}
        target[name] = {"verdict": st.combine_verdicts([comparisons[name][k]["verdict"] for k in in_target]),
                        "metrics": in_target}
    return summaries, comparisons, target


def command_line(names, seeds, steps, samples_per_class, concept_samples, board=None, backend=None) -> str:
    """The ``lora-qta evaluate`` command line that reproduces a result."""
    cmd = (f"lora-qta evaluate --variants {','.join(names)} --seeds {','.join(map(str, seeds))} --steps {steps} "
           f"--samples-per-class {samples_per_class} --concept-samples {concept_samples}")
    if board:
        cmd += f" --board {board}"
    if backend:
        cmd += f" --backend {backend}"
    return cmd


def plot_differences(result: dict[str, Any], path: Path) -> None:
    """Per-seed paired differences to fp32 (error bars: ±1.96 sampling SE, independent-sample bound) and their mean with the
    95 % t interval, per metric; the shaded band is beyond the target margin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = result["variants"][1:]
    seeds = result["seeds"]
    fig, axes = plt.subplots(1, len(st.METRICS), figsize=(3.4 * len(st.METRICS), 3.4), squeeze=False)
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    for ax, m in zip(axes[0], st.METRICS):
        ax.axhline(0, color="gray", lw=0.8)
        for k, name in enumerate(names):
            c = result["comparisons"][name][m.key]
            off = (k - (len(names) - 1) / 2) * 0.15
            ref_se = result["metrics"][REFERENCE][m.key]["sampling_se"]
            oth_se = result["metrics"][name][m.key]["sampling_se"]
            err = [0.0 if m.relative else 196 * (a * a + b * b) ** 0.5 for a, b in zip(ref_se, oth_se)]
            xs = [i + off for i in range(len(seeds))]
            ax.errorbar(xs, c["per_seed"], yerr=err, fmt="o", ms=4, color=colors[k % 4], capsize=2,
                        label=f"{name} - fp32")
            if c["ci_low"] is not None:
                ax.errorbar([len(seeds) + off], [c["mean"]], yerr=[[c["mean"] - c["ci_low"]], [c["ci_high"] - c["mean"]]],
                            fmt="D", ms=6, color=colors[k % 4], capsize=4)
            else:
                ax.plot([len(seeds) + off], [c["mean"]], "D", ms=6, color=colors[k % 4])
        margin = result["comparisons"][names[0]][m.key]["margin"] if names else None
        if margin is not None:
            lo, hi = ax.get_ylim()
            lo, hi = min(lo, -1.3 * margin), max(hi, 1.3 * margin)
            if m.higher_is_better:
                ax.axhspan(lo, -margin, color="red", alpha=0.08, lw=0)
            else:
                ax.axhspan(margin, hi, color="red", alpha=0.08, lw=0)
            ax.set_ylim(lo, hi)
        many = len(seeds) > 6  # short, turned labels so that 15+ seeds stay readable
        ax.set_xticks(range(len(seeds) + 1), [f"{s}" if many else f"seed {s}" for s in seeds] + ["mean\n95% CI"],
                      fontsize=7, rotation=90 if many else 0)
        if many:
            ax.set_xlabel("training seed", fontsize=7)
        ax.set_title(m.label, fontsize=8)
        ax.set_ylabel(f"difference to fp32 ({m.unit})", fontsize=8)
        ax.tick_params(labelsize=7)
    if names:
        axes[0][0].legend(fontsize=7)
    fig.suptitle(f"paired differences to fp32 per training seed ({result['label']}; {result['steps']} steps, "
                 f"{result['samples']['concept']} concept samples, {result['samples']['per_known_digit']} per known "
                 "digit; per-seed bars: ±1.96 sampling SE, independent-sample bound; shaded: beyond the "
                 "target margin)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(v: float | None, unit: str, digits: int = 1) -> str:
    return "n/a" if v is None else f"{v:+.{digits}f} {unit}"


def format_table(result: dict[str, Any]) -> str:
    """The tables printed by ``lora-qta evaluate``."""
    names, n = result["variants"], len(result["seeds"])
    m_rows = []

    def value(m: st.Metric, x: float) -> str:
        return f"{x:.4f}" if m.relative else f"{100 * x:.1f}%"

    head = "| metric | base (no LoRA) | " + " | ".join(f"{v} LoRA" for v in names) + " |"
    m_rows += [head, "|---" * (len(names) + 2) + "|"]
    for m in st.METRICS:
        cells = []
        for v in names:
            s = result["metrics"][v][m.key]
            text = value(m, s["mean"])
            if s["seed_std"] is not None:
                text += f" ± {s['seed_std']:.4f}" if m.relative else f" ± {100 * s['seed_std']:.1f}"
            if not m.relative:
                text += f" (sampling ± {100 * s['sampling_se_mean']:.1f})"
            cells.append(text)
        m_rows.append(f"| {m.label} | {value(m, result['base'][m.key])} | " + " | ".join(cells) + " |")
    lines = m_rows + ["", f"mean ± seed std over {n} seed(s) {','.join(map(str, result['seeds']))} (ddof 1); "
                          "sampling: standard error of one seed's measurement from the finite samples"]
    for v in names[1:]:
        lines += ["", f"| {v} - fp32, paired per seed | mean | 95% CI | per seed | fp32 spread (margin) | verdict |"
                      " seeds for CI inside margin | sampling share |",
                  "|---|---|---|---|---|---|---|---|"]
        for m in st.METRICS:
            c = result["comparisons"][v][m.key]
            ci = "n/a (needs 2+ seeds)" if c["ci_low"] is None else f"[{c['ci_low']:+.2f}, {c['ci_high']:+.2f}]"
            per = ", ".join(f"{x:+.1f}" for x in c["per_seed"])
            margin = "n/a" if c["margin"] is None else f"{c['margin']:.2f} {c['unit']}"
            share = "n/a" if c["sampling_share_of_variance"] is None else f"{c['sampling_share_of_variance']:.0%}"
            need = c["seeds_for_margin"] if c["seeds_for_margin"] is not None else "n/a"
            tag = "" if m.in_target else " (info)"
            lines.append(f"| {m.label}{tag} | {_fmt(c['mean'], c['unit'], 2)} | {ci} | {per} | {margin} | "
                         f"{c['verdict']} | {need} | {share} |")
        t = result["target"]["per_variant"][v]
        lines.append("")
        lines.append(f"target for {v}: {t['verdict'].upper()} ({result['target']['rule']})")
    if n < 2:
        lines.append(f"\n1 seed: no seed-to-seed spread and no confidence interval (--seeds takes a list such as "
                     "0,1,2; --num-seeds N takes a count)")
    reused = [f"{v}/seed{s}" for v in names for s, r in result["runs"][v].items() if r["status"].startswith("reused")]
    cached = [f"{v}/seed{s}" for v in names for s, r in result["runs"][v].items()
              if r.get("measurement", "").startswith("reused")]  # evaluations before the cache lack the key
    if result["base"].get("measurement", "").startswith("reused"):
        cached.insert(0, "base")
    took = result['time_s_measured']['total']
    took = (f"the combined folders' last evaluate commands took {took:.0f} s in all (the combine trains and "
            "measures nothing)" if result.get("combined_from") else f"{took:.0f} s")
    lines.append(f"\n{result['label']}: {result['command']}; runs reused: {', '.join(reused) or 'none'}; "
                 f"measurements reused: {', '.join(cached) or 'none'}; {took}")
    return "\n".join(lines)


__all__ = ["DEFAULT_CONCEPT_SAMPLES", "DEFAULT_SAMPLES_PER_CLASS", "DEFAULT_SEEDS", "combine", "command_line", "evaluate",
           "format_table", "heldout_loss", "measure", "plot_differences", "summarize"]
