"""The quantization schemes of the whole-step offload (``--offload all --offload-scheme``),
standard library only so that the command line lists them without importing PyTorch; what each
does in detail is :mod:`lora_qta.lora.offload`'s docstring."""

from __future__ import annotations

SCHEME_DOCS = {
    "row8c": "row's operands, and the Linear/Conv outputs written INT8 by the epilogue with a delayed scale per "
             "output channel of the row-normalized output (an amax history of 4 per channel, reduced on the host "
             "from the INT8 output it dequantizes; the weight's per-channel scale in the same multipliers; the "
             "host multiplies each row by its input scale): a quarter of their output traffic; attention as row",
    "row8": "row8c with one delayed scale per output tensor instead of per channel (amax history of 16): the same "
            "traffic, more LoRA-gradient error, lower concept accuracy (README, 'Whole-step INT8 offload')",
    "row": "current scales per token (per image for a convolution, per row or column for attention), "
           "INT32 outputs dequantized on the host with both axes' scales",
    "tensor": "delayed per-tensor scales (amax history of 16) with INT8 outputs: less output traffic, larger "
              "held-out-loss gap to fp32 (README, 'Whole-step INT8 offload')",
}
"""What each quantization scheme of ``--offload all`` does (``--offload-scheme``; details in
:mod:`lora_qta.lora.offload`), one line each for the command line's help. The first is the default."""
SCHEMES = tuple(SCHEME_DOCS)
"""The scheme names (:data:`SCHEME_DOCS`' keys)."""
ROW_SCHEMES = ("row", "row8", "row8c")
"""The schemes that quantize operands with current per-row scales."""
DELAYED_SCHEMES = ("tensor", "row8", "row8c")
"""The schemes with INT8 outputs under delayed scaling (amax histories, recomputes)."""
COLUMN_SCHEMES = ("row8c",)
"""The schemes whose INT8 Linear/Conv outputs take a delayed scale per output channel."""


def schemes_help() -> str:
    """``name = what it does`` for every scheme, for an option's help text."""
    return "; ".join(f"{name} = {doc}" for name, doc in SCHEME_DOCS.items())


__all__ = ["COLUMN_SCHEMES", "DELAYED_SCHEMES", "ROW_SCHEMES", "SCHEMES", "SCHEME_DOCS", "schemes_help"]
