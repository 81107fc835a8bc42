"""The package's shape: stages in the order the data flows, each importing only earlier ones."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import fashion_lens
import helpers

PACKAGE = Path(fashion_lens.__file__).parent
PROJECT = PACKAGE.parent


def _imported_stages(module: Path) -> set[str]:
    """The package modules a module imports (relative or absolute), at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("fashion_lens."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[1] for alias in node.names if alias.name.startswith("fashion_lens."))
    return found


@pytest.mark.fast
def test_every_module_is_a_stage_and_every_stage_a_module():
    modules = {path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__"}
    assert modules == set(fashion_lens.STAGES)


@pytest.mark.fast
@pytest.mark.parametrize("stage", fashion_lens.STAGES)
def test_a_stage_imports_only_stages_before_it(stage):
    position = fashion_lens.STAGES.index(stage)
    later = {name for name in _imported_stages(PACKAGE / f"{stage}.py") if fashion_lens.STAGES.index(name) >= position}
    assert not later, f"{stage} imports {sorted(later)}, which come at or after it in {fashion_lens.STAGES}"


@pytest.mark.fast
def test_modules_and_the_front_door_stay_short():
    lengths = {path.name: len(path.read_text().splitlines()) for path in PACKAGE.glob("*.py")}
    assert max(lengths.values()) <= 450, lengths
    assert len((PROJECT / "helpers.py").read_text().splitlines()) < 150


@pytest.mark.fast
def test_the_front_door_exports_documented_names_only():
    assert len(helpers.__all__) == len(set(helpers.__all__))
    for name in helpers.__all__:
        value = getattr(helpers, name)
        if callable(value):
            assert (value.__doc__ or "").strip(), f"helpers.{name} has no docstring"


@pytest.mark.fast
@pytest.mark.parametrize("entry_point", ["app.py", "benchmark.py", "scale_out.py", "run_notebooks.py",
                                         "download_data.py", "synthetic.py", "load_test.py", "build_book.py"])
def test_entry_points_use_only_public_names(entry_point):
    tree = ast.parse((PROJECT / entry_point).read_text())
    private = [f"{node.module}.{alias.name}" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               and node.module and node.module.startswith(("fashion_lens", "helpers"))
               for alias in node.names if alias.name.startswith("_")]
    private += [f"helpers.{node.attr}" for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name) and node.value.id == "helpers" and node.attr.startswith("_")]
    assert not private, private


@pytest.mark.fast
def test_importing_the_package_loads_neither_tensorflow_nor_faiss_nor_pymilvus():
    script = ("import sys, helpers, fashion_lens.widget, fashion_lens.ann, fashion_lens.milvus_search; "
              "print(sorted(name for name in ('tensorflow', 'keras', 'faiss', 'pymilvus', 'milvus_lite') if name in sys.modules))")
    result = subprocess.run([sys.executable, "-c", script], cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr


@pytest.mark.fast
def test_the_code_passes_the_linter():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=PROJECT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:]
