"""Write tests/data/planner_optima.json: the exhaustive optimum of the cycle model for every LoRA
GEMM shape of SD 1.5 and SDXL (ranks 4-64) on every board, which tests/runtime/test_planner.py
holds the planner's choice against (within 2%).

Run after a change of the cycle model, the schedule constants or the buffer sizes:
``.venv/bin/python scripts/planner_optima.py`` (several minutes: branch and bound over every
legal tile of every mode).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from lora_qta.analysis.shapes import lora_gemms, lora_layers
from lora_qta.hw.config import board_digest, config
from lora_qta.lora.gemms import lora_call
from lora_qta.runtime.planner import exhaustive_plan

RANKS = (4, 8, 16, 32, 64)
OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "planner_optima.json"


def shapes() -> list[tuple]:
    keys = set()
    for model in ("sd15", "sdxl"):
        layers = lora_layers(model)
        for rank in RANKS:
            keys.update(g.key for g in lora_gemms(layers, rank))
    return sorted(keys)


def main() -> int:
    out = {"ranks": list(RANKS), "boards": {}}
    for name in sorted(config().boards):
        board = config().board(name)
        t0 = time.time()
        optima = {}
        for key in shapes():
            p = exhaustive_plan(board, lora_call(key))
            optima[json.dumps(list(key))] = [p.report.cycles, p.call.dataflow, p.call.split,
                                             p.call.tile_m, p.call.tile_n, p.call.tile_k]
        out["boards"][name] = {"config_digest": board_digest(board), "optima": optima}
        print(f"{name}: {len(optima)} shapes in {time.time() - t0:.0f} s", file=sys.stderr)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
