"""Held-out loss of fp32, int8 LoRA-only and int8 whole-step (--offload all) fine-tuning of the
digits default, per seed (a measurement, not a test): ``python scripts/offload_quality.py STEPS
SEED [SEED ...]``. Writes runs/offload_quality/result.json and prints a table."""

import json
import sys
from pathlib import Path

import numpy as np

from lora_qta.training import digits as d
from lora_qta.training.config import FinetuneConfig
from lora_qta.training.evaluate import heldout_loss
from lora_qta.training.loop import finetune

VARIANTS = (("fp32", "fp32", "lora"), ("int8 lora", "int8", "lora"), ("int8 all", "int8", "all"))


def main() -> None:
    steps, seeds = int(sys.argv[1]), [int(s) for s in sys.argv[2:]] or [0]
    root = Path("runs/offload_quality")
    out = {"steps": steps, "seeds": seeds, "heldout_loss": {}, "step_s": {}}
    for s in seeds:
        for label, precision, offload in VARIANTS:
            run = root / f"seed{s}" / label.replace(" ", "_")
            cfg = FinetuneConfig(output_dir=str(run), precision=precision, offload=offload, steps=steps, seed=s,
                                 samples=False, checkpoint_every=10**6)
            rep = finetune(cfg)
            pipe = d.load_shipped_pipeline()
            pipe.load_lora_weights(str(run / "adapter"))
            out["heldout_loss"].setdefault(label, []).append(heldout_loss(pipe, s))
            out["step_s"].setdefault(label, []).append(rep["time_s"]["total_measured"] / rep["steps"])
            root.mkdir(parents=True, exist_ok=True)
            (root / "result.json").write_text(json.dumps(out, indent=2))
    f = np.array(out["heldout_loss"]["fp32"])
    for label, _, _ in VARIANTS:
        v = np.array(out["heldout_loss"][label])
        print(f"{label:10s} held-out loss {v.mean():.5f} (sd {v.std(ddof=1) if len(v) > 1 else 0:.5f}) "
              f"diff to fp32 {100 * (v - f).mean() / f.mean():+.2f} %  step {np.mean(out['step_s'][label]):.2f} s")


if __name__ == "__main__":
    main()
