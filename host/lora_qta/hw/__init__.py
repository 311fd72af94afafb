"""The hardware contract: ``hardware.toml`` and what is read or generated from it.

Standard library only (``reference.py`` adds numpy), so a build machine runs
``python3 -m lora_qta.hw.generate header --board zcu104`` without the rest of the package.
"""
