"""PYNQ packaging: the ``pynq.notebooks`` entry point delivers the notebooks with
``pynq get-notebooks`` and the ``pynq.lib`` entry point registers the kernel's driver.

The entry points are read from the installed distribution: after editing pyproject.toml the
package must be reinstalled (``pip install --no-deps -e .``; ``make test`` does it when
pyproject.toml is newer than its stamp)."""

from __future__ import annotations

import importlib
import importlib.metadata as md
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (the board images)
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
NB_DIR = ROOT / "notebooks"
NOTEBOOKS = ["01_quickstart.ipynb", "02_finetune_lora.ipynb", "03_power_energy.ipynb",
             "04_dataflow_explorer.ipynb"]
DELIVERED = sorted(NOTEBOOKS + ["README.md"])
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VLNV = tomllib.loads((ROOT / "host" / "lora_qta" / "hw" / "hardware.toml").read_text())["kernel"]["vlnv"]


def installed_entry_point(group: str, name: str) -> md.EntryPoint:
    found = [ep for ep in md.entry_points(group=group) if ep.name == name]
    if not found:
        pytest.fail(f"entry point {group}:{name} is not installed; reinstall the package "
                    "(pip install --no-deps -e .) after editing pyproject.toml")
    return found[0]


def pynq_command() -> str:
    beside = Path(sys.executable).parent / "pynq"
    exe = str(beside) if beside.is_file() else shutil.which("pynq")
    assert exe, "the pynq command-line tool is not installed"
    return exe


def test_pyproject_declares_both_pynq_entry_points():
    eps = PYPROJECT["project"]["entry-points"]
    assert eps["pynq.notebooks"] == {"lora-qta": "lora_qta.notebooks"}
    assert eps["pynq.lib"] == {"lora_qta": "lora_qta.runtime.driver"}
    assert set(PYPROJECT["tool"]["setuptools"]["package-data"]["lora_qta.notebooks"]) >= {"*.ipynb", "README.md"}
    assert PYPROJECT["tool"]["setuptools"]["package-dir"]["lora_qta.notebooks"] == "notebooks"


def test_notebooks_package_is_the_top_level_folder():
    from lora_qta import delivery

    assert not (ROOT / "host" / "lora_qta" / "notebooks").exists(), "no second copy, no link"
    ep = installed_entry_point("pynq.notebooks", "lora-qta")
    assert ep.value == "lora_qta.notebooks"
    mod = ep.load()
    # PYNQ copies from the folder __path__[0] of the entry point's package, with its hook
    assert Path(mod.__path__[0]).resolve() == NB_DIR.resolve()
    assert mod.deliver_notebooks is delivery.deliver_notebooks
    assert sorted(f.name for f in delivery.shipped_files(mod.__path__[0])) == DELIVERED


def test_pynq_lists_the_notebooks():
    res = subprocess.run([pynq_command(), "get-notebooks", "--list"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "lora-qta (source: lora_qta)" in res.stdout


def test_pynq_get_notebooks_delivers_the_four_notebooks(tmp_path):
    # --ignore-overlays: without it PYNQ looks up the active device (pynq.Device), and on a PC
    # there is none ("No device found in the system"); the notebooks need no overlay resolution.
    dest = tmp_path / "delivered"
    cmd = [pynq_command(), "get-notebooks", "lora-qta", "-p", str(dest), "--ignore-overlays"]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    folder = dest / "lora-qta"
    assert sorted(p.name for p in folder.iterdir()) == DELIVERED
    for name in DELIVERED:
        assert (folder / name).read_bytes() == (NB_DIR / name).read_bytes()
    assert json.loads((dest / ".pynq-notebooks").read_text()) == ["lora_qta.notebooks"]

    # a second delivery is refused unless forced, then overwrites
    (folder / NOTEBOOKS[0]).write_text("stale")
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and (folder / NOTEBOOKS[0]).read_text() == "stale"
    res = subprocess.run(cmd + ["--force"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert (folder / NOTEBOOKS[0]).read_bytes() == (NB_DIR / NOTEBOOKS[0]).read_bytes()


def test_delivery_skips_outputs_and_checkpoints_left_beside_the_notebooks(tmp_path):
    from lora_qta import delivery

    src = tmp_path / "src"
    (src / "runs" / "notebooks").mkdir(parents=True)
    (src / ".ipynb_checkpoints").mkdir()
    (src / "__pycache__").mkdir()
    (src / "a.ipynb").write_text("{}")
    (src / "README.md").write_text("readme")
    (src / "__init__.py").write_text("")
    (src / "runs" / "notebooks" / "loss.png").write_bytes(b"png")
    (src / ".ipynb_checkpoints" / "a-checkpoint.ipynb").write_text("{}")
    delivery.deliver_notebooks(None, str(src), str(tmp_path / "dst"), "lora-qta", folder=True,
                                overlays_res_lookup=False)
    assert sorted(p.name for p in (tmp_path / "dst" / "lora-qta").iterdir()) == ["README.md", "a.ipynb"]


def test_pynq_lib_entry_point_registers_the_kernel_driver():
    import pynq
    import pynq.overlay
    from pynqutils.setup_utils import ExtensionsManager

    ep = installed_entry_point("pynq.lib", "lora_qta")
    assert ep.value == "lora_qta.runtime.driver"
    # what Overlay._register_drivers imports
    assert "lora_qta.runtime.driver" in [e.module_name for e in ExtensionsManager(pynq.overlay.DRIVERS_GROUP).list]
    mod = importlib.import_module(ep.value)
    drivers = [c for c in vars(mod).values() if isinstance(c, type) and issubclass(c, pynq.DefaultIP)
               and c is not pynq.DefaultIP and c.__module__ == mod.__name__]
    assert drivers, f"{ep.value} defines no pynq.DefaultIP subclass"
    bound = [c for c in drivers if VLNV in c.bindto]
    assert bound, f"no driver in {ep.value} binds to the kernel VLNV {VLNV} of hardware.toml"
    assert pynq.overlay._ip_drivers[VLNV] is bound[0]  # registered by DefaultIP's metaclass
