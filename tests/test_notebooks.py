"""The chapters in notebooks/: committed stripped, shaped like chapters, free of logic, and they run.

Every notebook is executed headless (papermill, through run_notebooks.py) on a small sample of
the real catalogue with the real MobileNetV2 ImageNet weights, in a feature cache of its own, so
the runs never depend on a full-catalogue cache being present.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import run_notebooks
from fashion_lens.catalog import load_catalog, sample_catalog
from fashion_lens.index import load_index
from fashion_lens.search import similar_products
from fashion_lens.settings import get_settings

NOTEBOOKS = run_notebooks.notebook_paths()
SAMPLE = 15  # products per gender: every method and plot runs, in a few minutes for all chapters
PARAMETERS = {"BACKBONE": "mobilenet_v2", "SAMPLE": SAMPLE}
ids = [path.stem for path in NOTEBOOKS]


def read(path: Path):
    import nbformat  # imported where used: it takes seconds, and `pytest -m fast` runs none of these tests

    return nbformat.read(path, as_version=4)


def code_cells(notebook):
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def outputs_of(notebook, mimetype: str) -> list:
    return [output["data"][mimetype] for cell in code_cells(notebook) for output in cell.get("outputs", [])
            if mimetype in output.get("data", {})]


# ---- the committed notebooks -------------------------------------------------------------------

def test_the_chapters_are_numbered_01_to_06_in_order():
    assert [path.name[:2] for path in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_notebook_is_committed_without_outputs_or_execution_counts(path):
    notebook = read(path)
    dirty = [number for number, cell in enumerate(notebook.cells, start=1) if cell.cell_type == "code"
             and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not dirty, (f"{path.name}: cells {dirty} carry outputs or execution counts; strip them "
                       "(Kernel > Restart Kernel and Clear Outputs, then save) before committing.")
    assert "widgets" not in notebook.metadata, f"{path.name} carries saved widget state: strip it."


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_notebook_opens_like_a_chapter_and_ends_with_takeaways_and_the_next_link(path):
    notebook = read(path)
    number = path.name[:2]
    opening = notebook.cells[0]
    assert opening.cell_type == "markdown" and opening.source.startswith(f"# {number} · ")
    assert "**You will learn:**" in opening.source

    code = code_cells(notebook)
    setup = code[0].source
    assert "%autoreload 2" in setup and "import helpers as h" in setup and "h.setup_notebook()" in setup
    tagged = [cell for cell in code if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0] is code[1], f"{path.name}: the second code cell must be the one tagged 'parameters'"
    assert re.search(r"^BACKBONE = None\b", tagged[0].source, re.M) and re.search(r"^SAMPLE = None\b", tagged[0].source, re.M)

    takeaways = [cell.source for cell in notebook.cells if cell.cell_type == "markdown" and "**Takeaways**" in cell.source]
    assert len(takeaways) == 1
    bullets = [line for line in takeaways[0].splitlines() if line.startswith("- ")]
    assert len(bullets) == 3, f"{path.name}: Takeaways should have three bullets, found {len(bullets)}"
    links = re.findall(r"\]\(([0-9]{2}_[a-z_]+\.ipynb)\)", takeaways[0])
    assert links and all((path.parent / link).is_file() for link in links)
    following = NOTEBOOKS[NOTEBOOKS.index(path) + 1] if path != NOTEBOOKS[-1] else None
    if following:
        assert following.name in links, f"{path.name} should end with a link to {following.name}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_notebook_has_exercises_before_its_takeaways(path):
    cells = read(path).cells
    exercises = [number for number, cell in enumerate(cells) if cell.cell_type == "markdown"
                 and cell.source.startswith("## Exercises")]
    takeaways = [number for number, cell in enumerate(cells) if cell.cell_type == "markdown" and "**Takeaways**" in cell.source]
    assert len(exercises) == 1 and exercises[0] < takeaways[0], f"{path.name}: one Exercises section, before the Takeaways"
    items = re.findall(r"^\d\. \*\*", cells[exercises[0]].source, re.M)
    assert 3 <= len(items) <= 5, f"{path.name}: three to five exercises, found {len(items)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_notebook_defines_no_function_or_class_logic_belongs_in_helpers(path):
    for number, cell in enumerate(read(path).cells, start=1):
        if cell.cell_type != "code":
            continue
        python = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))
        tree = ast.parse(python)  # also proves every code cell is valid Python
        defined = [type(node).__name__ for node in ast.walk(tree)
                   if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef))]
        assert not defined, f"{path.name} cell {number} defines {defined}: put that logic in helpers.py"


def test_the_recommender_chapter_ranks_from_scratch_and_checks_it_against_the_engine():
    """The numpy cell's assert runs whenever the chapter does (test_notebook_runs_headless...)."""
    notebook = read(Path(run_notebooks.NOTEBOOK_DIR) / "04_recommender.ipynb")
    scratch = [cell.source for cell in code_cells(notebook) if "np.lexsort" in cell.source]
    assert len(scratch) == 1 and "V[rows] @ q" in scratch[0] and "np.linalg.norm" in scratch[0]
    assert "assert list(by_cosine) == list(by_distance) == list(engine)" in scratch[0]


def test_the_recommender_chapter_ends_with_the_interactive_widget():
    notebook = read(Path(run_notebooks.NOTEBOOK_DIR) / "04_recommender.ipynb")
    assert code_cells(notebook)[-1].source == "widget = h.recommender_widget(index)\nwidget"


# ---- run_notebooks.py --------------------------------------------------------------------------

def test_only_picks_chapters_by_number_and_rejects_unknown_ones():
    assert [path.name[:2] for path in run_notebooks.notebook_paths("1, 03")] == ["01", "03"]
    with pytest.raises(SystemExit, match="no notebook numbered 09"):
        run_notebooks.notebook_paths("01,09")


def test_a_failing_notebook_stops_the_run_naming_the_notebook_and_the_cell(tmp_path, capsys):
    import nbformat

    folder = tmp_path / "notebooks"
    folder.mkdir()
    for name, cells in {"01_fine": ["x = 1", "print(x)"], "02_broken": ["y = 2", "1 / 0", "print(y)"],
                        "03_never": ["print('should not run')"]}.items():
        notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in cells])
        notebook.cells[0].metadata["tags"] = ["parameters"]
        nbformat.write(notebook, folder / f"{name}.ipynb")
    output = tmp_path / "out"

    assert run_notebooks.main(["--output", str(output), "--notebooks", str(folder)]) == 1

    message = capsys.readouterr().err
    assert "02_broken.ipynb failed in code cell" in message and "1 / 0" in message and "ZeroDivisionError" in message
    assert (output / "01_fine.ipynb").is_file() and (output / "01_fine.html").is_file()
    failed = read(output / "02_broken.ipynb")  # kept for reading, with the traceback in the failing cell
    assert any(out.get("output_type") == "error" for cell in code_cells(failed) for out in cell.outputs)
    assert not (output / "03_never.ipynb").exists()
    assert not list(output.glob(".*.running.ipynb"))


def test_a_rerun_executes_only_the_chapters_whose_inputs_changed(tmp_path, capsys):
    import nbformat

    folder, output = tmp_path / "notebooks", tmp_path / "out"
    folder.mkdir()
    for name in ("01_first", "02_second"):
        notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import time\nstarted = time.time()")])
        notebook.cells[0].metadata["tags"] = ["parameters"]
        nbformat.write(notebook, folder / f"{name}.ipynb")
    arguments = ["--output", str(output), "--notebooks", str(folder)]

    def executed_at():  # an executed notebook is rewritten only when it runs
        return {name: (output / f"{name}.ipynb").stat().st_mtime_ns for name in ("01_first", "02_second")}

    assert run_notebooks.main(arguments) == 0
    first = executed_at()
    assert run_notebooks.main(arguments) == 0
    assert capsys.readouterr().out.count("up to date (its inputs") == 2 and executed_at() == first

    changed = read(folder / "02_second.ipynb")
    changed.cells[0].source += "\nx = 1"
    nbformat.write(changed, folder / "02_second.ipynb")
    assert run_notebooks.main(arguments) == 0
    again = executed_at()
    assert capsys.readouterr().out.count("up to date (its inputs") == 1
    assert again["01_first"] == first["01_first"] and again["02_second"] != first["02_second"]

    assert run_notebooks.main([*arguments, "--force"]) == 0
    assert "up to date" not in capsys.readouterr().out
    assert all(executed_at()[name] != again[name] for name in again)


# ---- every chapter runs on real photos with the real weights -------------------------------------

@pytest.fixture(scope="module")
def sample_artifacts(tmp_path_factory, catalog_dir, mobilenet_weights) -> Path:
    """A feature cache of these runs' own (shared by the chapters, in order, like `make demo`)."""
    return tmp_path_factory.mktemp("notebook-artifacts")


@pytest.fixture(scope="module")
def executed_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("executed")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_notebook_runs_headless_on_a_sample_of_real_photos(path, sample_artifacts, executed_dir, monkeypatch):
    monkeypatch.setenv("FASHION_LENS_ARTIFACTS", str(sample_artifacts))  # the kernels inherit it

    outputs = run_notebooks.run_notebook(path, executed_dir, PARAMETERS)  # raises, naming the cell, on any error

    executed = read(outputs["notebook"])
    assert all(cell.execution_count is not None for cell in code_cells(executed)), "every code cell ran"
    assert executed.cells[0].source.splitlines()[0].lstrip("# ") in outputs["html"].read_text(encoding="utf-8")
    if path.name[:2] in ("01", "03", "04", "05", "06"):
        assert outputs_of(executed, "image/png"), f"{path.name} should show photos or charts"


def test_the_exported_html_carries_the_interactive_charts(sample_artifacts, executed_dir):
    """The plotly charts must survive the HTML export (plotly.js embedded: no network needed)."""
    for name in ("01_explore_the_catalogue", "03_feature_extraction"):
        page = executed_dir / f"{name}.html"
        if not page.exists():
            pytest.skip(f"{name} was not executed in this session")
        assert "Plotly.newPlot" in page.read_text(encoding="utf-8")


def test_the_recommender_chapter_shows_the_engines_answer_and_the_widget(sample_artifacts, executed_dir, monkeypatch):
    page = executed_dir / "04_recommender.ipynb"
    if not page.exists():
        pytest.skip("04_recommender was not executed in this session")
    monkeypatch.setenv("FASHION_LENS_ARTIFACTS", str(sample_artifacts))
    executed = read(page)
    settings = get_settings(backbone="mobilenet_v2")
    catalog = sample_catalog(load_catalog(settings.data_dir), per_gender=SAMPLE, keep=["13683"])
    index = load_index(catalog, settings, progress=False)  # read back from the cache the notebook filled
    expected = similar_products(index, "13683", k=5)["ProductId"].tolist()

    table = next(cell for cell in code_cells(executed) if cell.source == 'results.drop(columns="image_path")')
    shown = table.outputs[0]["data"]["text/plain"]  # rows: "<row>  <rank>  <ProductId>  ..."
    assert re.findall(r"^\s*\d+\s+\d+\s+(\d+)\s", shown, re.M)[:len(expected)] == expected
    widget_outputs = code_cells(executed)[-1].outputs
    assert any("application/vnd.jupyter.widget-view+json" in output.get("data", {}) for output in widget_outputs)
