"""Shared test settings: deterministic hypothesis runs (CI reproducible), no deadlines."""

import os

import torch
from hypothesis import HealthCheck, settings

# The test models are tiny: one PyTorch thread is as fast as two and immune to the
# thread-contention slowdowns of a machine that is busy with other work.
torch.set_num_threads(1)

settings.register_profile(
    "default",
    derandomize=True,
    deadline=None,
    max_examples=int(os.environ.get("LORA_QTA_EXAMPLES", "150")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("default")
