"""The Streamlit app in a real headless Chromium: served by `streamlit run` on 127.0.0.1, queried
like a user would, its result photos loaded by the browser. Recipe: ../shared/notes/browser-testing.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from fashion_lens.search import similar_products
from fashion_lens.storage import atomic_write
from load_test import served_app

pytestmark = pytest.mark.browser

PROJECT_DIR = Path(__file__).resolve().parents[1]
SCREENSHOT = PROJECT_DIR / "artifacts" / "test-screenshots" / "streamlit-app.png"
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'
RESULT_IMAGES = '.st-key-results [data-testid="stImage"] img'
RESULT_CAPTIONS = '.st-key-results [data-testid="stImageCaption"]'
ALL_LOADED = """n => { const images = [...document.querySelectorAll('.st-key-results [data-testid="stImage"] img')];
    return images.length === n && images.every(image => image.complete && image.naturalWidth > 0); }"""


def serve_app(tmp_path: Path, **environment):
    """The app as load_test serves it, on a free port of 127.0.0.1, HOME in a temporary folder."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return served_app(tmp_path / "streamlit.log", {"HOME": str(home), **environment})


def open_page(browser, errors: list):
    page = browser.new_page(viewport={"width": 1400, "height": 1500})
    page.on("pageerror", lambda error: errors.append(str(error)))
    return page


def save_whole_page(page, path: Path) -> None:
    """Screenshot of the whole page: Streamlit scrolls inside its main area, so grow the window to fit it."""
    height = page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]')?.scrollHeight ?? 0")
    page.set_viewport_size({"width": 1400, "height": max(1500, min(int(height), 5000))})
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as handle:
        handle.write(page.screenshot(full_page=True))


def test_a_query_renders_k_result_photos_with_their_captions(browser, index, tmp_path):
    product_id = index.catalog.at[index.gender_rows["Men"].start + 2, "ProductId"]
    k = 10
    expected = similar_products(index, product_id, k=k)
    errors: list[str] = []
    with serve_app(tmp_path) as (_, url):
        page = open_page(browser, errors)
        try:
            page.goto(url)
            page.locator(RESULT_IMAGES).first.wait_for(timeout=120_000)  # the default query's results
            page.locator(IDLE).wait_for()

            number = page.locator('[data-testid="stNumberInput"] input')
            number.fill(str(k))
            number.press("Enter")
            page.wait_for_function(ALL_LOADED, arg=k, timeout=60_000)
            page.locator(IDLE).wait_for()
            box = page.locator('[data-testid="stTextInput"] input')
            box.fill(product_id)
            box.press("Enter")
            page.locator('[data-testid="stImageCaption"]', has_text=f"Query · {product_id}").wait_for(timeout=60_000)
            page.locator(IDLE).wait_for()
            page.wait_for_function(ALL_LOADED, arg=k, timeout=60_000)

            shown = [text.splitlines() for text in page.locator(RESULT_CAPTIONS).all_inner_texts()]
            assert [lines[0] for lines in shown] == [f"{pid} · {title}" for pid, title
                                                     in zip(expected["ProductId"], expected["ProductTitle"])]
            assert [lines[1] for lines in shown] == [f"#{rank} · similarity {similarity:.2f}" for rank, similarity
                                                     in zip(expected["rank"], expected["similarity"])]
            assert page.get_by_text(f"{k} most similar among Men products").is_visible()
            assert page.locator('[data-testid="stAlert"]').count() == 0
        finally:
            save_whole_page(page, SCREENSHOT)
            page.close()
    assert errors == []


def test_missing_features_show_a_progress_bar_then_the_results(browser, catalog_copy, mobilenet_weights, tmp_path):
    errors: list[str] = []
    with serve_app(tmp_path, FASHION_LENS_DATA=str(catalog_copy), FASHION_LENS_ARTIFACTS=str(tmp_path / "artifacts")) as (_, url):
        page = open_page(browser, errors)
        try:
            page.goto(url)
            bar = page.locator('[data-testid="stProgress"]')
            bar.wait_for(timeout=120_000)
            assert "first start only" in page.locator('[data-testid="stMain"]').inner_text()
            page.wait_for_function(ALL_LOADED, arg=5, timeout=180_000)
            page.locator(IDLE).wait_for()
            assert bar.count() == 0  # taken down once the features are there
        finally:
            page.close()
    assert errors == []
    assert list((tmp_path / "artifacts" / "features").glob("*/manifest.json"))
