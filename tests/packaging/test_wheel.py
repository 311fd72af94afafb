"""What a wheel ships, tested on a wheel built from the checkout: the notebooks (with the
``pynq.notebooks`` entry point) and the kernel's C++ sources, so that C-simulation works from an
installation outside the repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ["01_quickstart.ipynb", "02_finetune_lora.ipynb", "03_power_energy.ipynb",
             "04_dataflow_explorer.ipynb"]
DELIVERED = sorted(NOTEBOOKS + ["README.md"])
KERNEL_FILES = ["src/qta_gemm.cpp", "src/qta_gemm.h", "src/qta_csim_api.cpp", "tb/qta_gemm_tb.cpp"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel of a copy of the checkout (``pip wheel``, offline, no build isolation)."""
    setuptools = pytest.importorskip("setuptools")
    if tuple(int(x) for x in setuptools.__version__.split(".")[:2]) < (77, 0):
        pytest.skip(f"setuptools {setuptools.__version__} < 77 (pyproject.toml's build requirement)")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "runs", ".ipynb_checkpoints", "build", "*.so")
    for folder in ("host", "notebooks", "hls"):
        shutil.copytree(ROOT / folder, src / folder, ignore=ignore)
    for f in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / f, src / f)
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                          "-q", "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    (built,) = (tmp / "dist").glob("lora_qta-*.whl")
    return built


def test_wheel_ships_the_notebooks(wheel, tmp_path):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = next(z.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
        z.extractall(tmp_path / "unpacked")
    for name in DELIVERED + ["__init__.py"]:
        assert f"lora_qta/notebooks/{name}" in names
    assert "[pynq.notebooks]\nlora-qta = lora_qta.notebooks" in entry_points

    # installed from the wheel, the package's folder is a real folder holding the notebooks
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import lora_qta.notebooks as m; "
             "from lora_qta.delivery import shipped_files; "
             "print(m.__path__[0]); print(*sorted(f.name for f in shipped_files(m.__path__[0])))")
    res = subprocess.run([sys.executable, "-S", "-c", probe, str(tmp_path / "unpacked")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    where, files = res.stdout.splitlines()
    assert Path(where).resolve() == (tmp_path / "unpacked" / "lora_qta" / "notebooks").resolve()
    assert files.split() == DELIVERED


def test_wheel_ships_the_kernel_sources_and_not_the_tool_flows(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for rel in KERNEL_FILES:
        assert f"lora_qta/hls/{rel}" in names
        assert zipfile.ZipFile(wheel).read(f"lora_qta/hls/{rel}") == (ROOT / "hls" / rel).read_bytes()
    assert not [n for n in names if n.startswith("lora_qta/hls/tcl/")]
    # the host quantizer's and the fast epilogue's C++ sources, compiled at first use like the kernel
    for rel in ("lora/quant_native.cpp", "runtime/epilogue_native.cpp"):
        assert zipfile.ZipFile(wheel).read(f"lora_qta/{rel}") == (ROOT / "host" / "lora_qta" / rel).read_bytes()


# Run in another folder with only the wheel's copy of the package on the path (the venv's other
# packages stay importable): build the C-simulated kernel from the shipped sources, run GEMMs.
CSIM_FROM_WHEEL = """
import sys
from pathlib import Path

import numpy as np

import lora_qta
from lora_qta import Accelerator
from lora_qta.runtime import csim

site = Path(sys.argv[1]).resolve()
assert Path(lora_qta.__file__).resolve().is_relative_to(site), lora_qta.__file__
assert csim.hls_dir().resolve() == site / "lora_qta" / "hls", csim.hls_dir()
acc = Accelerator("pynq_z2", backend="csim")
rng = np.random.default_rng(3)
for m, k, n, ta, tb in [(37, 50, 11, False, True), (8, 130, 21, True, False)]:
    a = rng.integers(-128, 128, (k, m) if ta else (m, k), dtype=np.int8)
    b = rng.integers(-128, 128, (n, k) if tb else (k, n), dtype=np.int8)
    r = acc.gemm(a, b, trans_a=ta, trans_b=tb)
    want = (a.T if ta else a).astype(np.int64) @ (b.T if tb else b).astype(np.int64)
    assert np.array_equal(r.output, want) and r.cycles > 0
assert csim.load(acc.board).path.resolve().is_relative_to(Path(sys.argv[2]).resolve())

# the fused host quantizer, built from the wheel's source into the same cache
import torch
from lora_qta.lora import quant_native
from lora_qta.lora.quant import quantize_along

q, s = quantize_along(torch.arange(-6.0, 6.0).reshape(3, 4), (1,))
assert quant_native.NATIVE.load() is not None and quant_native.NATIVE.build().is_relative_to(Path(sys.argv[2]).resolve())

# the fast engine's C++ epilogue, built from the wheel's source into the same cache
from lora_qta.runtime import epilogue_native

r = Accelerator("pynq_z2", backend="emulation").gemm(np.full((3, 4), 100, np.int8), np.full((4, 2), 100, np.int8),
                                                    out="int8", mult=1, shift=10)
assert r.output.tolist() == [[39, 39]] * 3, r.output.tolist()  # 40000 / 1024 = 39.06
assert epilogue_native.NATIVE.load() is not None
assert epilogue_native.NATIVE.build().is_relative_to(Path(sys.argv[2]).resolve())
assert q.tolist() == [[-127, -106, -85, -64], [-127, -64, 0, 64], [51, 76, 102, 127]], q.tolist()  # -63.5, 63.5: to even
print("bit-exact from the wheel")
"""


def test_csim_runs_from_a_wheel_installed_outside_the_repository(wheel, tmp_path):
    site = tmp_path / "site"
    res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                          str(site), str(wheel)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "LORA_QTA_HLS_DIR"}
    env.update(PYTHONPATH=str(site), LORA_QTA_CACHE=str(tmp_path / "cache"))
    res = subprocess.run([sys.executable, "-c", CSIM_FROM_WHEEL, str(site), str(tmp_path / "cache")],
                         cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "bit-exact from the wheel" in res.stdout
