"""Held-out loss of fp32, int8 LoRA-only and int8 whole-step (--offload all, both schemes, and
the row scheme with --fuse-lora) fine-tuning of the digits default, per seed (a measurement, not a test): ``python
scripts/offload_quality.py STEPS SEED [SEED ...] [--variants fp32,int8-all] [--concept-samples N
--samples-per-class M]`` (with N > 0 also evaluate's concept accuracy, concept probability and
known-digit accuracy at the seed's sampling noise). Writes
runs/offload_quality/steps<STEPS>/result_<seeds>.json (runs that exist are measured again, not
retrained, when their report says they finished) and prints a table."""

import argparse
import json
from pathlib import Path

import numpy as np

from lora_qta.training import digits as d
from lora_qta.training.config import FinetuneConfig
from lora_qta.training.evaluate import heldout_loss, measure
from lora_qta.training.loop import finetune, finished_run

VARIANTS = {  # label: (precision, offload, offload scheme, fuse LoRA with its base layer)
    "fp32": ("fp32", "lora", "row", False),
    "int8": ("int8", "lora", "row", False),
    "int8-all": ("int8", "all", "row", False),
    "int8-all-tensor": ("int8", "all", "tensor", False),
    "int8-all-row8": ("int8", "all", "row8", False),
    "int8-all-row8c": ("int8", "all", "row8c", False),
    "int8-all-fused": ("int8", "all", "row", True),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("steps", type=int)
    ap.add_argument("seeds", type=int, nargs="+")
    ap.add_argument("--variants", default="fp32,int8,int8-all", help=f"of {', '.join(VARIANTS)}")
    ap.add_argument("--concept-samples", type=int, default=0)
    ap.add_argument("--samples-per-class", type=int, default=4)
    a = ap.parse_args()
    labels = a.variants.split(",")
    root = Path("runs/offload_quality") / f"steps{a.steps}"
    out_file = root / f"result_{'_'.join(map(str, a.seeds))}{'_concept' if a.concept_samples else ''}.json"
    out = {"steps": a.steps, "seeds": a.seeds, "heldout_loss": {}, "step_s": {}, "metrics": {}}
    for s in a.seeds:
        for label in labels:
            precision, offload, scheme, fuse = VARIANTS[label]
            run = root / f"seed{s}" / label
            cfg = FinetuneConfig(output_dir=str(run), precision=precision, offload=offload, offload_scheme=scheme,
                                 fuse_lora=fuse, steps=a.steps, seed=s, samples=False, checkpoint_every=10**6, overwrite=True)
            if finished_run(cfg):
                rep = json.loads((run / "report.json").read_text())
            else:
                rep = finetune(cfg)
            pipe = d.load_shipped_pipeline()
            pipe.load_lora_weights(str(run / "adapter"))
            out["heldout_loss"].setdefault(label, []).append(heldout_loss(pipe, s))
            if a.concept_samples:
                m = measure(pipe, s, a.concept_samples, a.samples_per_class)
                del m["concept_images"]
                out["metrics"].setdefault(label, []).append(m)
            out["step_s"].setdefault(label, []).append(rep["time_s"]["total_measured"] / rep["steps"])
            root.mkdir(parents=True, exist_ok=True)
            out_file.write_text(json.dumps(out, indent=2))
    if "fp32" not in out["heldout_loss"]:
        return
    f = np.array(out["heldout_loss"]["fp32"])
    for label in labels:
        v = np.array(out["heldout_loss"][label])
        print(f"{label:16s} held-out loss {v.mean():.5f} (sd {v.std(ddof=1) if len(v) > 1 else 0:.5f}) "
              f"diff to fp32 {100 * (v - f).mean() / f.mean():+.2f} %  step {np.mean(out['step_s'][label]):.2f} s")


if __name__ == "__main__":
    main()
