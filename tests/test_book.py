"""The book (build_book.py): the executed chapters as a static site, read in a real headless Chromium.

The book is built from the chapters test_notebooks.py executed in this session (conftest.py runs this
file after that one); run alone, this file executes the chapters itself, the same way, first.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import nbformat
import pytest
from test_notebooks import PARAMETERS

import build_book
import run_notebooks
from fashion_lens.storage import atomic_write

NOTEBOOKS = run_notebooks.notebook_paths()
# sphinx-thebe 0.3.1 (pulled in by Jupyter Book 1.x) writes its config script twice into every page's head; the
# second copy throws this and nothing else happens (the book never starts Thebe). Any other page error fails.
KNOWN_PAGE_ERROR = "Identifier 'THEBE_JS_URL' has already been declared"
LOADED_IMAGES = "() => [...document.querySelectorAll('article img')].map(image => image.complete && image.naturalWidth > 0)"


def fake_chapters(folder: Path, failed: str | None = None) -> Path:
    """Executed copies of the chapters, a few lines each (`failed`: the one whose cell never ran)."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in NOTEBOOKS:
        cell = nbformat.v4.new_code_cell("print(1)", execution_count=None if path.stem == failed else 1,
                                         outputs=[nbformat.v4.new_output("stream", text="1\n")])
        notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"# {path.name[:2]} · {path.stem}\n\n## Part"), cell])
        nbformat.write(notebook, folder / path.name)
    return folder


@pytest.mark.fast
def test_fast_missing_or_failed_chapters_are_refused_saying_what_to_run(tmp_path):
    output = tmp_path / "book"
    empty = tmp_path / "none"
    empty.mkdir()
    with pytest.raises(SystemExit, match=rf"lacks all of them.*\n.*run_notebooks.py --output {re.escape(str(empty))}"):
        build_book.main(["--notebooks", str(empty), "--output", str(output)])

    failed = fake_chapters(tmp_path / "failed", failed=NOTEBOOKS[2].stem)
    with pytest.raises(SystemExit, match=rf"{NOTEBOOKS[2].name} did not run to its end"):
        build_book.main(["--notebooks", str(failed), "--output", str(output)])
    (failed / NOTEBOOKS[-1].name).unlink()
    with pytest.raises(SystemExit, match=rf"lacks {NOTEBOOKS[-1].name}\.\n"):
        build_book.main(["--notebooks", str(failed), "--output", str(output)])
    assert not output.exists()

    with pytest.raises(SystemExit, match="is not a book built by build_book.py"):  # it would be replaced whole
        build_book.main(["--notebooks", str(failed), "--output", str(tmp_path)])
    assert (failed / NOTEBOOKS[0].name).is_file()


# ---- the book of the chapters executed on real photos, in a real browser ---------------------------

@pytest.fixture(scope="module")
def book(executed_dir, sample_artifacts, tmp_path_factory) -> Path:
    """The book built from this session's executed chapters (a chapter not executed yet is executed here)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FASHION_LENS_ARTIFACTS", str(sample_artifacts))  # the kernels inherit it
        for path in NOTEBOOKS:
            executed = executed_dir / path.name
            if not (executed.is_file() and build_book.ran_to_the_end(executed)):
                run_notebooks.run_notebook(path, executed_dir, PARAMETERS, html=False)
    output = tmp_path_factory.mktemp("book") / "book"
    started = time.perf_counter()
    arguments = ["--notebooks", str(executed_dir), "--output", str(output)]
    assert build_book.main(arguments) == 0
    print(f"the book of {len(NOTEBOOKS)} chapters built in {time.perf_counter() - started:.1f} s")
    assert not list(output.parent.glob(".book.*")), "the temporary build folder is gone"
    built = (output / "index.html").stat().st_mtime_ns
    assert build_book.main(arguments) == 0 and (output / "index.html").stat().st_mtime_ns == built, \
        "the same chapters again: the book is up to date, not built again"
    return output


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    yield page
    unexpected = [error for error in page.errors if KNOWN_PAGE_ERROR not in error]
    page.close()
    assert not unexpected, f"errors in the book's pages: {unexpected}"


def chapter(path: Path):
    return nbformat.read(path, as_version=4)


def headings(notebook, level: str) -> list[str]:
    """The notebook's markdown headings of one level, as text (no backticks or emphasis)."""
    return [re.sub(r"[`*]", "", line[len(level) + 1:]).strip() for cell in notebook.cells if cell.cell_type == "markdown"
            for line in cell.source.splitlines() if line.startswith(level + " ")]


STRAIGHT_QUOTES = str.maketrans("\u2018\u2019\u201c\u201d", "''\"\"")  # Sphinx curls the quotes (smartquotes)


def texts(page, selector: str) -> list[str]:
    """Inner texts, without the headerlink's '#', with straight quotes."""
    return [text.replace("#", "").strip().translate(STRAIGHT_QUOTES) for text in page.locator(selector).all_inner_texts()]


@pytest.mark.browser
def test_the_index_page_tells_the_story_and_links_every_chapter(book, page):
    page.goto((book / "index.html").as_uri())
    assert texts(page, "article h1") == ["fashion-lens"]
    assert {"The chapters", "How to run it"} <= set(texts(page, "article h2"))
    story = page.locator("article").inner_text()
    assert "A visual-similarity recommender for a fashion catalogue" in story and "make demo" in story  # the README's
    assert f"executed them, on {PARAMETERS['SAMPLE']} products per gender" in story
    links = page.locator("article table a.reference.internal")
    assert links.count() == len(NOTEBOOKS)
    for number, path in enumerate(NOTEBOOKS):
        link = links.nth(number)
        assert link.inner_text().strip() == build_book.chapter_title(chapter(book.parent / "book-source" / path.name))
        assert link.get_attribute("href") == f"{path.stem}.html"
    sidebar = page.locator("nav.bd-docs-nav a.reference.internal")  # this page ("#"), then every chapter
    assert [sidebar.nth(number).get_attribute("href") for number in range(sidebar.count())] == \
        ["#"] + [f"{path.stem}.html" for path in NOTEBOOKS]

    links.first.click()  # a link works: it opens the first chapter
    page.wait_for_url(re.compile(rf"/{NOTEBOOKS[0].stem}\.html$"))
    assert texts(page, "article h1")[0].startswith("01 · ")


@pytest.mark.browser
def test_every_chapter_page_shows_its_headings_and_executed_outputs(book, page, executed_dir, screenshot_dir):
    for path in NOTEBOOKS:
        executed = chapter(executed_dir / path.name)
        page.goto((book / f"{path.stem}.html").as_uri())
        assert texts(page, "article h1") == headings(executed, "#"), path.name
        assert texts(page, "article h2") == headings(executed, "##"), path.name

        outputs = [output.get("data", {}) for cell in executed.cells for output in cell.get("outputs", [])]
        pictures = sum("image/png" in data for data in outputs)
        # the recommender's still picture (chapter 04): its thumbnails are inline in its HTML
        stills = sum(data["text/html"].count("<img") for data in outputs if "fl-static" in data.get("text/html", ""))
        assert stills or path.stem != "04_recommender", "chapter 04 left no still picture of the recommender"
        shown = page.locator("article .cell_output img")
        assert shown.count() == pictures + stills, \
            f"{path.name}: {pictures} figures or photos and {stills} still thumbnails in the notebook, {shown.count()} on its page"
        assert page.locator("article .cell_output .fl-static img").count() == stills
        assert all(page.evaluate(LOADED_IMAGES)), f"{path.name}: an image did not load"
        tables = page.locator("article .cell_output table").count()
        assert pictures + tables > 0, f"{path.name} shows no executed output (no figure, no table)"
        charts = page.locator("article .cell_output .js-plotly-plot .main-svg")
        if any("application/vnd.plotly.v1+json" in output.get("data", {}) for cell in executed.cells
               for output in cell.get("outputs", [])):
            charts.first.wait_for(timeout=30_000)  # drawn by the plotly.js embedded in the page: no network needed

        if path.stem == "04_recommender":  # what a reader sees: the query, its results, the charts
            with atomic_write(screenshot_dir / "book-04_recommender.png") as handle:
                handle.write(page.screenshot(full_page=True))


@pytest.mark.browser
def test_next_leads_through_the_chapters_in_order_and_no_link_is_broken(book, page):
    page.goto((book / "index.html").as_uri())
    for path in NOTEBOOKS:
        page.locator("a.right-next").click()
        page.wait_for_url(re.compile(rf"/{path.stem}\.html$"))
        # every page this book links to is in it (links to other sites and to anchors aside)
        hrefs = page.eval_on_selector_all("a[href]", "links => links.map(link => link.getAttribute('href'))")
        local = {href.split("#")[0] for href in hrefs if not re.match(r"[a-z]+:", href) and not href.startswith("#")}
        missing = [href for href in local if not (book / href).is_file()]
        assert not missing, f"{path.name} links to pages the book lacks: {missing}"
    assert page.locator("a.right-next").count() == 0, "the last chapter has no next page"
    assert page.locator("a.left-prev").get_attribute("href") == f"{NOTEBOOKS[-2].stem}.html"
