"""Shared settings of the training tests."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The UNet calls here are tiny: one thread avoids OpenMP spin contention with other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_digits_model(tmp_path_factory):
    """An untrained digits pipeline (the shipped architecture), saved to disk once per session."""
    from lora_qta.training import digits

    folder = tmp_path_factory.mktemp("tiny_digits_model")
    digits.build_pipeline(0).save_pretrained(folder)
    return str(folder)
