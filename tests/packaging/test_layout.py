"""The package's structure, as the README's layout section states it: imports run one way
(cli -> analysis -> training -> lora -> rtl -> runtime -> hw -> paths -> errors; rtl, the RTL evidence, is
imported by cli only, and takes the array's cycle formulas from the runtime's planner), hw/ needs only the standard
library (numpy for its reference model), every exception class lives in errors.py, and no
module raises a bare built-in exception."""

from __future__ import annotations

import ast
import builtins
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "host" / "lora_qta"
LAYERS = ["errors", "paths", "delivery", "hw", "runtime", "rtl", "lora", "training", "analysis", "cli"]
"""Each part may import itself and the parts before it (delivery: PYNQ's notebook hook, alone)."""

# Built-in exceptions a module may still raise, where a protocol asks for them.
ALLOWED_RAISES = {
    ("training/models.py", "NotImplementedError"): "the abstract methods of ModelBundle",
    ("analysis/report.py", "TypeError"): "json's default= hook for an unknown type",
    ("__init__.py", "AttributeError"): "the module __getattr__ of the lazy top-level names",
    ("cli/__main__.py", "SystemExit"): "the exit status of python -m lora_qta.cli",
    ("hw/generate.py", "SystemExit"): "the exit status of python -m lora_qta.hw.generate",
}


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "assets" not in p.parts)


def part(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def imported_parts(path: Path) -> set[tuple[str, int]]:
    """(part of lora_qta, line) of every import of the package in ``path``, at any depth."""
    tree = ast.parse(path.read_text())
    package = list(path.relative_to(PACKAGE).parent.parts)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1] if node.level > 1 else package
                names = base + (node.module.split(".") if node.module else [])
                targets = [names + [a.name] if not names else names for a in node.names]
            elif node.module and node.module.split(".")[0] == "lora_qta":
                targets = [node.module.split(".")[1:] or [a.name for a in node.names]]
            else:
                continue
            for t in targets:
                if t:
                    out.add((t[0], node.lineno))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "lora_qta" and "." in a.name:
                    out.add((a.name.split(".")[1], node.lineno))
    return out


@pytest.mark.parametrize("path", [p for p in modules() if p.parent != PACKAGE or p.name != "__init__.py"],
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_one_way(path):
    own = LAYERS.index(part(path))
    upward = [(t, line) for t, line in imported_parts(path) if t in LAYERS and LAYERS.index(t) > own]
    assert not upward, f"{path.relative_to(PACKAGE)} imports upward: {upward}"


def test_only_the_command_line_imports_rtl():
    users = {str(p.relative_to(PACKAGE)) for p in modules()
             if part(p) not in ("rtl", "cli") and any(t == "rtl" for t, _ in imported_parts(p))}
    assert not users, f"the RTL evidence is for the command line only, imported by {sorted(users)}"


def test_hw_needs_only_the_standard_library():
    for path in (PACKAGE / "hw").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                ok = top in sys.stdlib_module_names or top == "tomli" or (path.name == "reference.py" and top == "numpy")
                assert ok, f"hw/{path.name} imports {name}"


def test_every_exception_class_is_in_errors_py_and_a_qta_error():
    import lora_qta.errors as errors

    for path in modules():
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = [ast.unparse(b) for b in node.bases]
                assert not any(b.endswith(("Error", "Exception")) for b in bases), \
                    f"{path.relative_to(PACKAGE)} defines the exception {node.name}"
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, Exception)]
    assert len(classes) > 20 and all(issubclass(c, errors.QtaError) for c in classes)


def test_no_bare_builtin_exception_is_raised():
    found = []
    for path in modules():
        rel = str(path.relative_to(PACKAGE))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and isinstance(node.exc.func, ast.Name):
                name = node.exc.func.id
                if name in vars(builtins) and (rel, name) not in ALLOWED_RAISES:
                    found.append(f"{rel}:{node.lineno} raise {name}")
    assert not found, found
