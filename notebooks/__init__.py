"""The lora-qta Jupyter notebooks, importable as the package ``lora_qta.notebooks``.

The notebooks live in the repository's top-level ``notebooks/`` folder, and
``host/lora_qta/notebooks`` is a symbolic link to that folder, so the same files are the
package ``lora_qta.notebooks`` without a second copy: in a checkout, in an editable install
(``pip install -e .``, whose path entry is ``host/``) and in a wheel (``pip install .``, where
setuptools follows the link and ships ``*.ipynb`` and ``README.md`` as package data).

PYNQ delivers them with ``pynq get-notebooks lora-qta``: the ``pynq.notebooks`` entry point
``lora-qta = "lora_qta.notebooks"`` (pyproject.toml) names this package, and PYNQ copies from
the folder ``__path__[0]`` of it. :func:`deliver_notebooks` replaces PYNQ's default copy of
that folder (every file and sub-folder next to a notebook) so that only the notebooks and their
README are delivered, not ``runs/`` outputs or ``.ipynb_checkpoints/`` left behind by running
the notebooks in place.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

__all__ = ["deliver_notebooks", "notebook_dir", "shipped_files"]


def notebook_dir() -> Path:
    """The folder holding the notebooks (what ``pynq get-notebooks`` copies from)."""
    return Path(__path__[0])  # noqa: F821 - the package's own __path__


def shipped_files(folder: str | Path | None = None) -> list[Path]:
    """The files a delivery copies: every notebook of ``folder`` and its README.md."""
    folder = Path(folder) if folder is not None else notebook_dir()
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
