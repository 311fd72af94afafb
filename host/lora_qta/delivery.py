"""What ``pynq get-notebooks lora-qta`` delivers: the notebooks and their README, nothing else.

PYNQ's ``pynq.notebooks`` entry point ``lora-qta = "lora_qta.notebooks"`` (pyproject.toml) names
the package ``lora_qta.notebooks``, which setuptools maps onto the repository's top-level
``notebooks/`` folder. PYNQ copies from that package's folder ``__path__[0]`` and, when the
package has a ``deliver_notebooks`` attribute, calls it instead of its own copy; the package
re-exports :func:`deliver_notebooks` from here. Without it PYNQ would copy every file beside
the notebooks: the package's ``__init__.py`` and ``__pycache__/``, and ``runs/`` outputs or
``.ipynb_checkpoints/`` left behind by running the notebooks in place.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

__all__ = ["deliver_notebooks", "shipped_files"]


def shipped_files(folder: str | Path) -> list[Path]:
    """The files a delivery copies: every notebook of ``folder`` and its README.md."""
    folder = Path(folder)
    files = sorted(folder.glob("*.ipynb"))
    if (folder / "README.md").is_file():
        files.append(folder / "README.md")
    return files


def deliver_notebooks(device_name, src_path, dst_path, name, folder=False, overlays_res_lookup=True):
    """PYNQ's plugin hook (same interface as ``pynqutils.setup_utils.deliver_notebooks``):
    stage :func:`shipped_files` of ``src_path`` in a temporary folder and let PYNQ's own
    ``deliver_notebooks`` copy them to ``dst_path`` (``dst_path/name`` when ``folder``)."""
    from pynqutils.setup_utils import deliver_notebooks as pynq_deliver

    with tempfile.TemporaryDirectory(prefix="lora_qta_notebooks_") as stage:
        for f in shipped_files(src_path):
            shutil.copy2(f, Path(stage) / f.name)
        pynq_deliver(device_name, stage, dst_path, name, folder=folder,
                     overlays_res_lookup=overlays_res_lookup)
