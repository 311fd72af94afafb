"""The all-reduce of the LoRA gradients in a data-parallel run over N boards on Ethernet (modelled).

A data-parallel step (:mod:`lora_qta.training.distributed`) sums every board's LoRA gradients
with one all-reduce. gloo's bandwidth-optimal algorithm on TCP is a ring: a reduce-scatter then
an all-gather, ``2(N-1)`` rounds in which every board sends (and receives) one ``S/N`` chunk of
the ``S``-byte gradient, so each board puts ``2(N-1)/N x S`` bytes on its link and the
all-reduce takes ``2(N-1) x (latency + S/N / bandwidth)``.

The link assumptions (:class:`Link`, stated in every report): 1 GbE, full duplex, boards on one
non-blocking switch; TCP payload rate = line rate x 1448/1538 (1500-byte MTU, TCP timestamps:
1448 payload bytes per 1538 bytes on the wire, ~941 Mbit/s); 100 us per round (switch, the
kernels' TCP stacks on the ARM cores and gloo); the ARM cores keep up with line rate (a
Cortex-A53 moving gloo's buffers may not: a measured figure on boards supersedes this model).
Gradients are fp32 (the LoRA weights and their gradients stay fp32; only the GEMM operands are
INT8); the step's buffer carries 2 + N more floats (loss, stop and divergence flags), left out.

:func:`ring_allreduce` is the model of one all-reduce; :func:`lora_allreduce` applies it to the
LoRA parameters of a model (:mod:`.shapes`) per rank and board count (``lora-qta bench``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

from ..errors import OptionError

FP32_BYTES = 4


@dataclass(frozen=True)
class Link:
    """One board's network link (assumptions: module docstring)."""

    name: str = "1 GbE"
    line_rate_bit_s: float = 1e9
    payload_efficiency: float = 1448 / 1538
    latency_s: float = 100e-6

    @property
    def payload_bytes_per_s(self) -> float:
        """TCP payload bytes per second in one direction."""
        return self.line_rate_bit_s * self.payload_efficiency / 8


GBE = Link()
"""1 GbE, the boards' Ethernet (ZCU104, KV260 and PYNQ-Z2 all have a 1 GbE port)."""


def ring_allreduce(gradient_bytes: int, boards: int, link: Link = GBE) -> dict[str, Any]:
    """Ring all-reduce of ``gradient_bytes`` over ``boards`` boards on ``link`` (modelled):
    bytes each board sends (and receives) and the time. One board: nothing to exchange."""
    if boards < 1 or gradient_bytes < 0:
        raise OptionError(f"need at least one board and a non-negative size, not {boards} boards, "
                          f"{gradient_bytes} bytes")
    rounds = 2 * (boards - 1)
    chunk = gradient_bytes / boards
    return {"boards": boards, "gradient_bytes": gradient_bytes, "rounds": rounds,
            "bytes_sent_per_board": rounds * chunk,
            "seconds": rounds * (link.latency_s + chunk / link.payload_bytes_per_s) if rounds else 0.0}


def lora_allreduce(model: str = "sd15", ranks: Sequence[int] = (4, 8, 16, 32, 64, 128),
                   boards: Sequence[int] = (2, 4, 8), link: Link = GBE,
                   resolution: int | None = None) -> dict[str, Any]:
    """The all-reduce of ``model``'s LoRA gradients (to_q/k/v/out of every attention) per LoRA
    rank and number of boards (modelled): parameters, gradient bytes, bytes each board sends per
    step and the time."""
    from .shapes import lora_layers, lora_params, model_spec

    layers = lora_layers(model, resolution)
    rows = []
    for r in ranks:
        params = lora_params(layers, r)
        grad = params * FP32_BYTES
        for n in boards:
            rows.append({"rank": r, "lora_params": params, **ring_allreduce(grad, n, link)})
    return {"model": model, "model_name": model_spec(model).name, "lora_linears": len(layers),
            "link": {**asdict(link), "payload_bytes_per_s": link.payload_bytes_per_s},
            "label": "modelled", "ranks": list(ranks), "boards": list(boards), "rows": rows,
            "assumptions": ("ring all-reduce (gloo on TCP): each board sends 2(N-1)/N x the gradient bytes in "
                            "2(N-1) rounds; 1 GbE full duplex on one non-blocking switch, TCP payload "
                            f"{link.payload_bytes_per_s * 8 / 1e6:.0f} Mbit/s (1500-byte MTU), "
                            f"{link.latency_s * 1e6:.0f} us per round, ARM cores at line rate; fp32 gradients")}
