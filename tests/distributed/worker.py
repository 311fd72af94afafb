"""One rank of the tests' data-parallel runs: ``lora-qta`` (``lora_qta.cli.main``) with test hooks.

Launched by torchrun, or directly with the env:// variables (RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT). ``python worker.py SPEC OUT``: SPEC is a JSON list of runs, each
``{"name", "argv", "argv_rank": {"1": [...]}, "kill": [rank, step], "nan": [rank, step],
"nangrad": [rank, step]}`` (NaN loss, or a finite loss with a NaN gradient, on that rank); the
runs go one after the other in this process. With more than one run the worker initializes the
gloo process group itself (lora-qta then uses it and leaves it open), else lora-qta joins the
run itself. Each rank writes ``OUT/<name>.rank<r>.json``: the exit status, the last stderr line,
and after every step the loss and a digest of its LoRA weights.
"""

import contextlib
import io
import json
import os
import signal
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)

from lora_qta.cli import main  # noqa: E402
from lora_qta.training import loop  # noqa: E402
from lora_qta.training.distributed import params_digest  # noqa: E402


class Tee(io.TextIOBase):
    def __init__(self, real):
        self.real, self.buffer = real, io.StringIO()

    def write(self, s):
        self.buffer.write(s)
        return self.real.write(s)

    def flush(self):
        self.real.flush()


def one_run(run: dict, rank: int, out: Path) -> None:
    trace: list[dict] = []
    real_step, real_loss = loop.train_step, loop.loss_of_step
    kill = run.get("kill")
    nan = run.get("nan")
    nangrad = run.get("nangrad")

    def traced_step(bundle, cfg, data, params, optimizer, scheduler, step, dist=None):
        if kill and kill[0] == rank and step == kill[1]:
            os.kill(os.getpid(), signal.SIGKILL)
        loss = real_step(bundle, cfg, data, params, optimizer, scheduler, step, dist)
        trace.append({"step": step, "loss": float(loss), "lora": params_digest(params)})
        return loss

    def nan_loss(bundle, cfg, x0, context, step, part=slice(None)):
        loss = real_loss(bundle, cfg, x0, context, step, part)
        return loss * float("nan") if rank == nan[0] and step == nan[1] else loss

    def nan_gradient(bundle, cfg, x0, context, step, part=slice(None)):
        loss = real_loss(bundle, cfg, x0, context, step, part)
        if rank == nangrad[0] and step == nangrad[1]:  # d sqrt(x)/dx at 0 is inf, times 0: NaN
            p = next(p for n, p in bundle.unet.named_parameters() if "lora_B" in n)
            loss = loss + 0.0 * torch.sqrt(p.sum() * 0)
        return loss

    loop.train_step = traced_step
    if nan:
        loop.loss_of_step = nan_loss
    if nangrad:
        loop.loss_of_step = nan_gradient
    argv = list(run["argv"]) + list(run.get("argv_rank", {}).get(str(rank), []))
    err = Tee(sys.stderr)
    try:
        with contextlib.redirect_stderr(err):
            code = main(argv)
    except SystemExit as e:
        code = e.code
    finally:
        loop.train_step, loop.loss_of_step = real_step, real_loss
    lines = [ln for ln in err.buffer.getvalue().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("lora-qta: error:")]
    (out / f"{run['name']}.rank{rank}.json").write_text(json.dumps(
        {"code": code, "error": errors[-1] if errors else None, "trace": trace,
         "traceback": any(ln.startswith("Traceback") for ln in lines)}))


def worker() -> None:
    spec, out = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
    rank = int(os.environ["RANK"])
    if len(spec) <= 1:
        one_run(spec[0], rank, out)
        return
    import torch.distributed as dist

    dist.init_process_group("gloo")
    try:
        for run in spec:
            one_run(run, rank, out)
    finally:
        # a group left open at exit lets gloo's threads outlive the interpreter: SIGABRT
        # ("terminate called without an active exception"), pytorch/pytorch#190489
        dist.destroy_process_group()


if __name__ == "__main__":
    worker()
