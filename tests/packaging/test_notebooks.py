"""The Jupyter notebooks in notebooks/: committed without outputs, parameterizable like papermill
notebooks, and every one runs top to bottom headless (nbclient) on the emulated accelerator.

The kernel is the interpreter running the tests: a kernelspec naming ``sys.executable`` is
written to a temporary folder and handed to the kernel manager, so nothing depends on which
kernelspecs a machine has registered (a fresh ``pip install -e '.[test]'`` is enough)."""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
NB_DIR = ROOT / "notebooks"
NOTEBOOKS = ["01_quickstart.ipynb", "02_finetune_lora.ipynb", "03_power_energy.ipynb",
             "04_dataflow_explorer.ipynb"]
KERNEL = "lora-qta-test"

# What each notebook's parameters cell must define (the size knob after the common three).
REQUIRED_PARAMETERS = {
    "01_quickstart.ipynb": ("BOARD", "BACKEND", "OUTPUT", "TOKENS"),
    "02_finetune_lora.ipynb": ("BOARD", "BACKEND", "OUTPUT", "STEPS", "BATCH_SIZE"),
    "03_power_energy.ipynb": ("BOARD", "BACKEND", "OUTPUT", "PHASE_SECONDS"),
    "04_dataflow_explorer.ipynb": ("BOARD", "BACKEND", "OUTPUT", "RANKS", "SHAPES"),
}

# Parameters injected for the test runs (small sizes; OUTPUT and BACKEND are added per run).
TEST_PARAMETERS = {
    "01_quickstart.ipynb": {"TOKENS": 256},
    "02_finetune_lora.ipynb": {"STEPS": 3, "BATCH_SIZE": 2, "N_SAMPLES": 1, "INFERENCE_STEPS": 5,
                               "TORCH_THREADS": 1},
    "03_power_energy.ipynb": {"INTERVAL": 0.05, "IDLE_SECONDS": 0.3, "PHASE_SECONDS": 0.5,
                              "ENERGY_MODELS": ["digits"]},
    "04_dataflow_explorer.ipynb": {"RANKS": [4, 128], "SHAPES": 2, "BOARDS": ["zcu104", "pynq_z2"]},
}

# Files each notebook must leave in OUTPUT, and how many figures it must display at least.
EXPECTED_FILES = {
    "01_quickstart.ipynb": ["dataflows.csv", "dataflows.png", "rounding.csv"],
    "02_finetune_lora.ipynb": ["loss.png", "per_gemm.csv", "fresh_pipeline_samples.png", "run/samples.png",
                               "run/report.json", "run/adapter/pytorch_lora_weights.safetensors"],
    "03_power_energy.ipynb": ["power.png", "power_trace.csv", "power_phases.csv", "power.md", "energy.png",
                              "energy.md", "energy_summary.csv"],
    "04_dataflow_explorer.ipynb": ["sweep.csv", "utilization_boards.png", "utilization_shapes.png",
                                   "roofline.png"],
}
EXPECTED_FIGURES = {"01_quickstart.ipynb": 1, "02_finetune_lora.ipynb": 3, "03_power_energy.ipynb": 2,
                    "04_dataflow_explorer.ipynb": 3}


def read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NB_DIR / name, as_version=4)


def parameters_cells(nb: nbformat.NotebookNode) -> list:
    return [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]


def assigned_names(source: str) -> dict[str, ast.expr]:
    """Top-level ``NAME = value`` assignments of a cell."""
    out = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            out[node.targets[0].id] = node.value
    return out


def inject(nb: nbformat.NotebookNode, params: dict) -> None:
    """Papermill-style parameter injection: rewrite the assignment of each name in the cell
    tagged ``parameters`` (every name must already be a parameter)."""
    (cell,) = parameters_cells(nb)
    source = cell.source
    for name, value in params.items():
        source, count = re.subn(rf"^{name}\s*=.*$", f"{name} = {value!r}", source, flags=re.M)
        assert count == 1, f"{name} is not a one-line parameter of the notebook"
    cell.source = "# parameters injected by tests/test_notebooks.py\n" + source


# ----------------------------------------------------------------------------- static checks

def test_the_four_notebooks_are_committed():
    assert sorted(p.name for p in NB_DIR.glob("*.ipynb")) == NOTEBOOKS


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_has_no_outputs_or_execution_counts(name):
    raw = json.loads((NB_DIR / name).read_text())
    assert raw["nbformat"] == 4
    nb = read(name)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name}: cell {i} has outputs; clear them before committing"
            assert cell.execution_count is None, f"{name}: cell {i} has an execution count"
        assert "execution" not in cell.metadata, f"{name}: cell {i} keeps execution timing metadata"
    assert "widgets" not in nb.metadata


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_has_a_parameters_cell(name):
    nb = read(name)
    cells = parameters_cells(nb)
    assert len(cells) == 1, f"{name}: exactly one cell must be tagged 'parameters'"
    cell = cells[0]
    assert cell.cell_type == "code"
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert first_code is cell, f"{name}: the parameters cell must be the first code cell"
    names = assigned_names(cell.source)
    for required in REQUIRED_PARAMETERS[name]:
        assert required in names, f"{name}: the parameters cell does not define {required}"
    values = {k: ast.literal_eval(v) for k, v in names.items()}  # literals only, so they can be overridden
    assert values["BACKEND"] == "auto"
    for key in TEST_PARAMETERS[name]:
        assert key in values, f"{name}: test parameter {key} is not in the parameters cell"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_starts_by_saying_what_is_modelled(name):
    nb = read(name)
    assert nb.cells[0].cell_type == "markdown"
    intro = nb.cells[0].source
    assert intro.startswith("# ") and "modelled" in intro.lower()


# ----------------------------------------------------------------------------- execution

@pytest.fixture(scope="session")
def kernel_specs(tmp_path_factory):
    """A kernelspec manager whose only kernel runs ``sys.executable -m ipykernel_launcher``."""
    root = tmp_path_factory.mktemp("kernels")
    spec = root / KERNEL
    spec.mkdir()
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "lora-qta tests", "language": "python",
    }))
    return KernelSpecManager(kernel_dirs=[str(root)])


def run_notebook(nb, name, tmp_path, kernel_specs) -> list:
    """Execute ``nb`` headless in ``tmp_path``; check it displayed its figures, said what is
    modelled and wrote its files to OUTPUT (= tmp_path/output). Returns the outputs."""
    km = AsyncKernelManager(kernel_name=KERNEL, kernel_spec_manager=kernel_specs)
    client = NotebookClient(nb, km=km, kernel_name=KERNEL, timeout=600, allow_errors=False,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first failing cell

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    figures = [o for o in outputs if o.output_type in ("display_data", "execute_result")
               and "image/png" in o.get("data", {})]
    assert len(figures) >= EXPECTED_FIGURES[name], f"{name} displayed {len(figures)} figures"
    text = "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)
    assert "modelled" in text, f"{name}: no output says its figures are modelled"
    missing = [f for f in EXPECTED_FILES[name] if not (tmp_path / "output" / f).is_file()]
    assert not missing, f"{name} did not write {missing} to OUTPUT"
    return outputs


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_under_emulation(name, tmp_path, kernel_specs):
    nb = read(name)
    inject(nb, {"BACKEND": "emulation", "OUTPUT": str(tmp_path / "output"), **TEST_PARAMETERS[name]})
    run_notebook(nb, name, tmp_path, kernel_specs)


NO_TORCH = """import sys
for _name in ("torch", "diffusers", "peft", "transformers", "accelerate"):
    sys.modules[_name] = None  # importing them now raises ImportError, as without the wheels"""


@pytest.mark.slow
@pytest.mark.parametrize("name", ["01_quickstart.ipynb", "03_power_energy.ipynb"])
def test_gemm_and_power_notebooks_run_without_torch(name, tmp_path, kernel_specs):
    """PYNQ-Z2 (armv7) has no torch wheel: the GEMM API and power notebooks must not need it
    (notebooks/README.md says so; the power notebook then skips the model-based parts)."""
    nb = read(name)
    inject(nb, {"BACKEND": "emulation", "OUTPUT": str(tmp_path / "output"), **TEST_PARAMETERS[name]})
    nb.cells.insert(1, nbformat.v4.new_code_cell(NO_TORCH))
    run_notebook(nb, name, tmp_path, kernel_specs)
