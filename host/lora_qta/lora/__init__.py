"""Quantized LoRA on the accelerator: the six GEMMs of a LoRA layer, the INT8 quantizers and the
peft layer whose GEMMs run on the accelerator."""
