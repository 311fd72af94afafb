"""lora-qta: INT8 LoRA training acceleration on PYNQ FPGAs, with a bit-exact emulation.

One subpackage per part, imports running one way: ``cli`` -> ``analysis`` -> ``training`` ->
``lora`` -> ``runtime`` -> ``hw`` -> ``errors`` (README, "Repository layout"). The top-level
names are imported lazily, so ``python -m lora_qta.hw.generate`` runs on a build machine that
has only the standard library.
"""

from importlib import import_module
from typing import Any

__all__ = ["Accelerator", "GemmResult", "config", "fixed_point_scale"]
__version__ = "0.1.0"

_WHERE = {"Accelerator": "runtime.accelerator", "GemmResult": "runtime.accelerator",
          "fixed_point_scale": "runtime.accelerator", "config": "hw.config"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'lora_qta' has no attribute {name!r}")
