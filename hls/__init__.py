"""The kernel's C++ sources as package data of ``lora_qta.hls``: pyproject.toml maps that package
onto this folder, so C-simulation finds ``src/`` and ``tb/`` in a checkout, an editable install
and an installed wheel alike (``lora_qta.runtime.csim.hls_dir``). No Python code lives here."""
