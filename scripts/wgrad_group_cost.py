"""What the magnitude-grouped LoRA weight gradients cost on the accelerator (README, "Quantization
accuracy"): the modelled cycles and DDR traffic of running every weight-gradient GEMM of a step
(dB = G^T.H and dA = dH^T.X, which sum over tokens) as two calls, one per magnitude group, instead
of one over all tokens, for an even split of the tokens and for the worst split (one group of a
single token); and as ONE call for both groups (the narrower, rank-side operand block-diagonal,
twice as wide: ``QtaRuntime._groups_call``), with how many of the GEMMs training runs that way on
this board (``QtaRuntime.one_call``: where it costs no more than two calls plus one call's issue
time). Modelled by the planner's cycle model (the kernel's ``cycles_model``), planned as training
plans them (per K bucket, ``QtaRuntime.K_BUCKETS``).

``.venv/bin/python scripts/wgrad_group_cost.py [--model sd15] [--rank 4] [--board zcu104]``
"""

from __future__ import annotations

import argparse

from lora_qta.analysis.shapes import lora_gemms, lora_layers
from lora_qta.hw.config import config
from lora_qta.lora.gemms import lora_call
from lora_qta.lora.layer import DA_DHTX, DB_GTH, QtaRuntime, groups_call_shape
from lora_qta.runtime.accelerator import Accelerator
from lora_qta.runtime.planner import plan

WGRAD = (DB_GTH, DA_DHTX)
"""The two GEMMs that sum over tokens, which run in magnitude groups."""


def cost(board, m: int, k: int, n: int, trans_a: bool, trans_b: bool, out_int8: bool = False) -> tuple[int, int]:
    """(modelled cycles, DDR bytes) of one call (INT32 output unless ``out_int8``), planned as
    training plans it."""
    r = plan(board, lora_call((m, k, n, trans_a, trans_b, out_int8)), k_bucket=QtaRuntime.K_BUCKETS).report
    return r.cycles, r.bytes_moved


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="sd15", help="model whose LoRA layers are counted (sd15, sdxl, digits)")
    ap.add_argument("--rank", type=int, default=4, help="LoRA rank")
    ap.add_argument("--board", default="zcu104", help="board configuration from hardware.toml")
    args = ap.parse_args(argv)
    board = config().board(args.board)
    gemms = lora_gemms(lora_layers(args.model), args.rank)
    six = sum(cost(board, *g.key)[0] for g in gemms)  # INT8 outputs where they feed a GEMM
    one, even, worst, block, used = [0, 0], [0, 0], [0, 0], [0, 0], [0, 0]
    runtime = QtaRuntime(Accelerator(args.board, "fast"))
    calls = chosen = 0
    for g in gemms:
        if g.kind not in WGRAD:
            continue
        calls += 1
        _, m, n = groups_call_shape((g.m, g.n), 2)  # the narrower (rank) side doubled
        c1, b1 = cost(board, m, g.k, n, g.trans_a, g.trans_b)
        block[0] += c1
        block[1] += b1
        pick = runtime.one_call(g.kind, g.k, (g.m, g.n), 2)
        chosen += pick
        if pick:
            used[0] += c1
            used[1] += b1
        for acc, ks in ((one, [g.k]), (even, [g.k - g.k // 2, g.k // 2]), (worst, [g.k - 1, 1])):
            for k in ks:
                c, b = cost(board, g.m, k, g.n, g.trans_a, g.trans_b)
                acc[0] += c
                acc[1] += b
                if acc is even and not pick:
                    used[0] += c
                    used[1] += b
    print(f"{args.model}, rank {args.rank}, {args.board} (modelled): {calls} weight-gradient GEMMs per step, "
          f"the six LoRA GEMMs {six:,} cycles")
    print(f"  one call each:            {one[0]:,} cycles, {one[1]:,} bytes")
    for name, acc in (("two groups, even split", even), ("two groups, 1 token apart", worst),
                      ("two groups in one call", block), ("as training runs them", used)):
        print(f"  {name + ':':25s} {acc[0]:,} cycles (+{acc[0] - one[0]:,}, +{100 * (acc[0] - one[0]) / six:.2f}% "
              f"of the six GEMMs), {acc[1]:,} bytes (+{acc[1] - one[1]:,})")
    print(f"  (training runs {chosen} of the {calls} as one call for both groups, the others as two calls; "
          "'as training runs them' takes the even split for those)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
