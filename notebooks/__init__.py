"""The lora-qta notebooks, shipped as the package ``lora_qta.notebooks`` (pyproject.toml maps it
onto this folder) so that ``pynq get-notebooks lora-qta`` finds them; PYNQ calls the
``deliver_notebooks`` hook, which copies only the notebooks and README.md."""

from lora_qta.delivery import deliver_notebooks

__all__ = ["deliver_notebooks"]
