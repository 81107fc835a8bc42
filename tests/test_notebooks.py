"""The chapters in notebooks/: committed stripped, shaped like chapters, free of logic, and they run.

Every notebook is executed headless (papermill, through run_notebooks.py) on a small sample of
the real catalogue with the real MobileNetV2 ImageNet weights, in a feature cache of its own, so
the runs never depend on a full-catalogue cache being present.
"""

from __future__ import annotations

import ast
import re
from html.parser import HTMLParser
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
# Each chapter's own slow step, shortened on the sample: a handful of photos through the article's
# one-photo-per-call method, and three tuning epochs (the full tuning is tested in test_tuning.py).
CHAPTER_PARAMETERS = {"04": {"REFERENCE_SAMPLE": 20}, "05": {"REFERENCE_SAMPLE": 8}, "06": {"EPOCHS": 3}}
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


WIDGET_CELL = "widget = h.recommender_widget(index, QUERY_ID)\nwidget"


def test_the_recommender_chapter_ends_with_the_interactive_widget_opened_on_the_query():
    cells = read(Path(run_notebooks.NOTEBOOK_DIR) / "04_recommender.ipynb").cells
    exercises = next(number for number, cell in enumerate(cells) if cell.source.startswith("## Exercises"))
    assert [cell.source for cell in cells[:exercises] if cell.cell_type == "code"][-1] == WIDGET_CELL


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
# (sample_artifacts and executed_dir are session fixtures in conftest.py: test_book.py builds the book from these runs)

@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_notebook_runs_headless_on_a_sample_of_real_photos(path, sample_artifacts, executed_dir, monkeypatch):
    monkeypatch.setenv("FASHION_LENS_ARTIFACTS", str(sample_artifacts))  # the kernels inherit it

    parameters = {**PARAMETERS, **CHAPTER_PARAMETERS.get(path.name[:2], {})}
    tagged = next(cell for cell in code_cells(read(path)) if "parameters" in cell.metadata.get("tags", []))
    unknown = [name for name in parameters if not re.search(rf"^{name} = ", tagged.source, re.M)]
    assert not unknown, f"{path.name}'s parameters cell has no {unknown}"
    outputs = run_notebooks.run_notebook(path, executed_dir, parameters)  # raises, naming the cell, on any error

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
    widget_outputs = next(cell for cell in code_cells(executed) if cell.source == WIDGET_CELL).outputs
    assert any("application/vnd.jupyter.widget-view+json" in output.get("data", {}) for output in widget_outputs)
    # read without a kernel, it leaves a still picture of its first answer: the query and the engine's results
    still = next(output["data"]["text/html"] for output in widget_outputs if "text/html" in output.get("data", {}))
    assert "widgets" not in executed.metadata, "no saved widget state: viewers show the still picture instead"
    first = similar_products(index, "13683", k=6)["ProductId"].tolist()  # the widget's default k
    assert list(dict.fromkeys(re.findall(r"ProductId (\d+)", still))) == ["13683", *first]  # each in alt text and caption
    assert still.count("<img") == len(first) + 1
    assert "ProductId 13683" in (executed_dir / "04_recommender.html").read_text(encoding="utf-8")


class TableCells(HTMLParser):
    """The rows of every HTML table in an output, as lists of (tag, text) cells."""

    def __init__(self):
        super().__init__()
        self.tables, self.cell = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("th", "td") and self.tables and self.tables[-1]:
            self.cell = [tag, ""]

    def handle_data(self, data):
        if self.cell is not None:
            self.cell[1] += data

    def handle_endtag(self, tag):
        if tag in ("th", "td") and self.cell is not None:
            self.tables[-1][-1].append((self.cell[0], self.cell[1].strip()))
            self.cell = None


def html_tables(notebook) -> list[tuple[list[str], list[tuple[str, list[str]]]]]:
    """Each table as (column names, [(row name, values)]): the row name joins the row's index cells."""
    found = []
    for html in outputs_of(notebook, "text/html"):
        parser = TableCells()
        parser.feed(html if isinstance(html, str) else "".join(html))
        for rows in parser.tables:
            body = [row for row in rows if any(tag == "td" for tag, _ in row)]
            if not body:
                continue
            width = sum(tag == "td" for tag, _ in body[0])
            header = next((row for row in rows if not any(tag == "td" for tag, _ in row)), None)
            if header is None:  # a layout table (the recommender's still picture), not a data frame
                continue
            columns = [text for _, text in header][-width:]
            found.append((columns, [(" ".join(text for tag, text in row if tag == "th"),
                                     [text for tag, text in row if tag == "td"]) for row in body]))
    return found


def test_every_score_table_shows_the_network_only_row_beside_any_label_trained_one(executed_dir):
    """In the executed chapters: a table of precision scores says what each row learnt from the labels
    ("labels used"), and one with a label-trained row (probes, a tuned network) has the network-only row."""
    checked = 0
    for path in NOTEBOOKS:
        page = executed_dir / path.name
        if not page.exists():
            pytest.skip(f"{path.name} was not executed in this session")
        for columns, rows in html_tables(read(page)):
            if not any(column.startswith("P@") for column in columns) and "labels used" not in columns:
                continue
            assert "labels used" in columns, f"{path.name}: a score table without a 'labels used' column: {columns}"
            used = [(name, values[columns.index("labels used")]) for name, values in rows]
            if any(labels != "none" for _, labels in used):
                checked += 1
                assert any(labels == "none" and "network only" in name for name, labels in used), \
                    f"{path.name}: label-trained rows {used} without the network-only row"
    assert checked, "no executed table had a label-trained row: the check above never ran"


def test_the_ablation_changes_exactly_one_field_per_row(executed_dir):
    page = executed_dir / "05_evaluation.ipynb"
    if not page.exists():
        pytest.skip("05_evaluation was not executed in this session")
    fields = ["geometry", "preprocessing", "pooling", "metric"]
    (columns, rows), = [table for table in html_tables(read(page)) if set(fields) <= set(table[0])]
    recipes = [[values[columns.index(field)] for field in fields] for _, values in rows]
    assert recipes[0] == ["stretch", "rescale", "flatten", "euclidean"] and recipes[-1] == ["crop", "backbone", "grid2x2", "cosine"]
    for (name, _), before, after in zip(rows[1:], recipes, recipes[1:]):
        changed = [field for field, old, new in zip(fields, before, after) if old != new]
        assert len(changed) == 1 and name.startswith(changed[0]), f"row {name!r} changes {changed}"
