"""lora-qta: INT8 LoRA training acceleration on PYNQ FPGAs, with a bit-exact emulation."""

from .accelerator import Accelerator, GemmResult, fixed_point_scale
from .hwconfig import config

__all__ = ["Accelerator", "GemmResult", "config", "fixed_point_scale"]
__version__ = "0.1.0"
