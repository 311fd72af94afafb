"""Running GEMMs on the accelerator: the planner, the PYNQ driver, the emulated device with its
two engines (C-simulation of the HLS kernel, vectorized fast path) and the ``Accelerator`` API."""
