"""Write tests/data/cycle_model_golden.json: the cycle model's report (cycles, the load, array and
store sums, steps, blocks and bytes) for a fixed grid of calls on every board -- every mode, both
transposes, INT8 outputs per tensor, row and column, accumulation, batches and convolutions --
which tests/runtime/test_planner.py holds the model to exactly.

The model is the kernel's counter recurrence; a change that moves these numbers must be a change
of the kernel's schedule (then regenerate: ``.venv/bin/python scripts/cycle_model_golden.py``, a
few seconds), not of how the model is computed. The stored file was written by the model of
commit 5d0cd1d, before its cost functions took Python ints as well as arrays.
"""

from __future__ import annotations

import json
from pathlib import Path

from lora_qta.hw.call import ConvGeometry, GemmCall
from lora_qta.hw.config import board_digest, config
from lora_qta.runtime.planner import model_cycles, valid_modes

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "cycle_model_golden.json"
SHAPES = ((1, 1, 1), (5, 3, 7), (64, 8, 300), (300, 200, 1500), (1024, 64, 64))
FIELDS = ("cycles", "load_cycles", "array_cycles", "store_cycles", "steps", "blocks", "bytes_a", "bytes_b",
          "bytes_c", "bytes_scales")


def calls(board) -> dict[str, GemmCall]:
    """The grid: name -> call (tiles clipped to the shape; the model does not check legality)."""
    beat, out = board.axi_bytes, {}
    for m, n, k in SHAPES:
        for df, split in valid_modes(board):
            for ta, tb in ((False, False), (True, False), (False, True), (True, True)):
                for epi in ("int32", "tensor", "row", "col", "acc"):
                    out8 = epi in ("tensor", "row", "col")
                    out[f"{m}x{n}x{k}/{df}{split:+d}/ta{ta:d}tb{tb:d}/{epi}"] = GemmCall(
                        m=m, n=n, k=k, lda=-(-(m if ta else k) // beat) * beat, ldb=-(-(k if tb else n) // beat) * beat,
                        ldc=-(-n // beat) * beat, tile_m=min(m, 64), tile_n=min(n, 32), tile_k=min(k, 128),
                        trans_a=ta, trans_b=tb, dataflow=df, split=split, out_int8=out8, accumulate=epi == "acc",
                        scale_mode=epi if out8 else "tensor")
        out[f"{m}x{n}x{k}/batch3"] = GemmCall(m=m, n=n, k=k, lda=k, ldb=n, ldc=n, tile_m=min(m, 64),
                                              tile_n=min(n, 32), tile_k=min(k, 128), batch=3,
                                              stride_a=m * k, stride_b=k * n, stride_c=4 * m * n)
    for kh, stride, pad, dil in ((1, 1, 0, 1), (3, 1, 1, 1), (3, 2, 1, 1), (3, 1, 1, 2)):
        cin = 2 * beat
        geo = ConvGeometry(h=9, w=7, ho=9, wo=7, cin=cin, kh=kh, kw=kh, stride=stride, pad=pad, dil=dil)
        for df, split in valid_modes(board):
            out[f"conv{kh}s{stride}d{dil}/{df}{split:+d}"] = GemmCall(
                m=2 * 9 * 7, n=40, k=kh * kh * cin, lda=cin, ldb=-(-40 // beat) * beat, ldc=-(-40 // beat) * beat,
                tile_m=64, tile_n=32, tile_k=min(kh * kh * cin, 3 * cin), dataflow=df, split=split, conv=geo)
    return out


def golden() -> dict:
    """The report of every call of the grid on every board, with the board's config digest."""
    boards = {}
    for name in sorted(config().boards):
        board = config().board(name)
        reports = {key: [int(getattr(model_cycles(board, c), f)) for f in FIELDS] for key, c in calls(board).items()}
        boards[name] = {"config_digest": board_digest(board), "reports": reports}
    return {"fields": list(FIELDS), "boards": boards}


def main() -> int:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(golden(), indent=0, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
