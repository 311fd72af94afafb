"""Where the whole-step INT8 offload's error comes from (a measurement, not a test).

``python scripts/offload_ablation.py STEPS SEED CONFIG [CONFIG ...]``: trains the digits default
int8 LoRA with ``--offload all``-style offload for STEPS steps per CONFIG; at every step the
LoRA gradient and the loss are also computed in fp32 on the same batch and weights (the offload
suspended, the LoRA layers in PyTorch), and the optimizer steps with the offloaded gradient (so
the amax histories evolve as in training). Prints and writes (runs/offload_ablation/SEED.json)
per CONFIG the mean relative gradient error ``|g - g32| / |g32|``, the mean cosine and the mean
relative loss difference. A CONFIG is ``families[/fp32-keys]``, e.g. ``linear,conv,attention``
(everything), ``attention`` (attention matmuls only), ``linear,conv,attention/attention.bwd``
(attention backward kept fp32), with an optional ``@scheme`` (``@tensor``: delayed per-tensor
scales; ``@row8``: row's operands, INT8 Linear/Conv outputs; ``@row8c``: the same with a delayed
scale per output channel; default ``row``) and, after it, ``:history=N`` and ``:threshold=X``
(the amax histories' length and the saturation rate above which a call is recomputed; defaults
the scheme's ``default_history`` and ``SAT_THRESHOLD``), e.g.
``linear,conv,attention@row8:history=4``: see ``install``'s ``families``, ``scheme``,
``history``, ``threshold`` and ``Offload.host_fp32``.
"""

import json
import sys
from pathlib import Path

import torch

from lora_qta.lora.layer import QtaRuntime, attach_runtime
from lora_qta.lora.offload import SAT_THRESHOLD, install, suspended, uninstall
from lora_qta.runtime.accelerator import Accelerator
from lora_qta.training.config import FinetuneConfig
from lora_qta.training.loop import add_lora, load_bundle, loss_of_step, lr_lambda, training_batch


OPTIONS = {"history", "threshold"}
"""The per-config options after ``@scheme`` (``:history=N``, ``:threshold=X``)."""


def grads(params: list[torch.nn.Parameter]) -> torch.Tensor:
    g = torch.cat([p.grad.flatten() for p in params])
    for p in params:
        p.grad = None
    return g


def measure(steps: int, seed: int, spec: str) -> dict[str, float]:
    spec, _, scheme = spec.partition("@")
    scheme, *options = scheme.split(":")
    if not all("=" in o for o in options):
        raise SystemExit(f"options after @scheme are name=value: {options}; use history=N, threshold=X")
    opts = dict(o.split("=", 1) for o in options)
    if not set(opts) <= OPTIONS:
        raise SystemExit(f"unknown option(s) {sorted(set(opts) - OPTIONS)}: use history=N, threshold=X")
    fams, _, keys = spec.partition("/")
    cfg = FinetuneConfig(precision="int8", steps=steps, seed=seed)
    torch.set_num_threads(1)
    bundle = load_bundle(cfg)
    data = bundle.training_data(cfg.num_examples, cfg.prior_per_class, cfg.seed)
    add_lora(bundle, cfg)
    runtime = QtaRuntime(Accelerator(cfg.board, cfg.backend), seed=cfg.seed)
    attach_runtime(bundle.unet, runtime)
    off = install(bundle.unet, runtime.acc, runtime, families=tuple(fams.split(",")) if fams else (),
                  host_fp32=frozenset(k for k in keys.split(",") if k), scheme=scheme or "row",
                  history=int(opts["history"]) if "history" in opts else None,
                  threshold=float(opts.get("threshold", SAT_THRESHOLD)))
    lat = type(data)(bundle.to_latents(data.images), data.prompts, bundle.to_latents(data.prior_images),
                     data.prior_prompts)
    params = [p for p in bundle.unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    err, cos, dloss = [], [], []
    for step in range(steps):
        runtime.step = step
        x0, prompts = training_batch(lat, bundle, cfg, step)
        ctx = bundle.encode_prompts(prompts)
        attach_runtime(bundle.unet, None)
        with suspended(bundle.unet, off):
            l32 = loss_of_step(bundle, cfg, x0, ctx, step)
            l32.backward()
        g32 = grads(params)
        attach_runtime(bundle.unet, runtime)
        loss = loss_of_step(bundle, cfg, x0, ctx, step)
        loss.backward()
        g = grads(params)
        err.append(float((g - g32).norm() / g32.norm()))
        cos.append(float(torch.nn.functional.cosine_similarity(g, g32, dim=0)))
        dloss.append(float(loss.detach() / l32.detach() - 1))
        for p, gi in zip(params, torch.split(g, [p.numel() for p in params])):
            p.grad = gi.view_as(p).clone()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    uninstall(bundle.unet, off)
    half = steps // 2  # the second half: histories filled, the adapter no longer at its init
    return {"grad_rel_err": sum(err[half:]) / (steps - half), "cosine": sum(cos[half:]) / (steps - half),
            "loss_rel_diff": sum(dloss[half:]) / (steps - half), "grad_rel_err_per_step": err,
            "host_quant_elements": sum(s.host_quant_elements for s in off.stats.values())}


def main() -> None:
    steps, seed, specs = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    out_file = Path(f"runs/offload_ablation/{seed}.json")
    out_file.parent.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        r = measure(steps, seed, spec)
        out = json.loads(out_file.read_text()) if out_file.is_file() else {}
        out[f"{spec} ({steps} steps)"] = r
        out_file.write_text(json.dumps(out, indent=1))
        print(f"{spec:45s} grad rel err {r['grad_rel_err']:.4f}  cos {r['cosine']:.5f}  "
              f"loss {100 * r['loss_rel_diff']:+.3f} %", flush=True)


if __name__ == "__main__":
    main()
