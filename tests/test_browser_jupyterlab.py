"""The recommender notebook in a real JupyterLab, driven by headless Chromium: what a presenter sees."""

from __future__ import annotations

import json
import os
import secrets
import sys
import urllib.request
from pathlib import Path

import nbformat
import pytest
from browser_support import free_port, running_server
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from fashion_lens.search import similar_products

PROJECT_DIR = Path(__file__).resolve().parents[1]
NOTEBOOK = PROJECT_DIR / "notebooks" / "04_recommender.ipynb"
SCREENSHOTS = PROJECT_DIR / "artifacts" / "test-screenshots"

# True once the grid shows exactly these ProductIds, in order, each photo loaded and non-empty. The
# kernel updates the query panel, then each card: waiting on the query alone would read stale cards.
RESULTS_SHOWN = """ids => { const cards = [...document.querySelectorAll('.fl-results .fl-result')];
  return cards.length === ids.length && cards.every((card, i) => {
    const image = card.querySelector('img');
    return card.innerText.includes(`ProductId ${ids[i]}`) && image && image.complete && image.naturalWidth > 0; }); }"""


def jupyter_environment(tmp_path: Path) -> dict:
    """The test's environment (catalogue, features cache, weights) with throwaway Jupyter folders."""
    env = dict(os.environ)
    for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTER_DATA_DIR", "JUPYTERLAB_SETTINGS_DIR",
                 "JUPYTERLAB_WORKSPACES_DIR", "IPYTHONDIR"):
        env[name] = str(tmp_path / "jupyter" / name.lower())
    # The "Jupyter news?" toast would sit over the outputs.
    settings = Path(env["JUPYTERLAB_SETTINGS_DIR"]) / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_DIR), env.get("PYTHONPATH")]))
    return env


def notebook_root(tmp_path: Path) -> Path:
    """A copy of the project's layout (notebooks/ beside helpers.py), so checkpoints never land in the repo.
    The chapter's copy runs the article's one-photo-per-call method on 20 photos instead of 200, as a
    presenter in a hurry would set it: the test is about the widget at the chapter's end."""
    root = tmp_path / "root"
    (root / "notebooks").mkdir(parents=True)
    chapter = parameterize_notebook(load_notebook_node(str(NOTEBOOK)), {"REFERENCE_SAMPLE": 20})
    nbformat.write(chapter, root / "notebooks" / NOTEBOOK.name)
    for name in ("helpers.py", "app.py"):  # chapter 04 quotes app.py
        (root / name).symlink_to(PROJECT_DIR / name)
    return root


@pytest.mark.browser
def test_recommender_notebook_shows_k_similar_product_images_in_jupyterlab(browser, index, tmp_path):
    assert NOTEBOOK.is_file(), f"{NOTEBOOK} is missing"
    port, token = free_port(), secrets.token_hex(16)
    url = f"http://127.0.0.1:{port}"
    root = notebook_root(tmp_path)
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
               "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}"]

    def shut_down():  # also shuts the kernels down
        request = urllib.request.Request(f"{url}/api/shutdown", method="POST", headers={"Authorization": f"token {token}"})
        urllib.request.urlopen(request, timeout=10).close()

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with running_server(command, f"{url}/api", tmp_path / "jupyterlab.log", cwd=root,
                        env=jupyter_environment(tmp_path), stop=shut_down):
        page = browser.new_page(viewport={"width": 1500, "height": 1300})
        page_errors = []
        page.on("pageerror", lambda error: page_errors.append(str(error)))
        try:
            page.goto(f"{url}/lab/tree/notebooks/{NOTEBOOK.name}?token={token}")
            # The execution indicator says idle before the kernel is ready; the status bar does not.
            page.locator(".jp-StatusBar-Widget", has_text="| Idle").wait_for(timeout=120_000)
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-item:not(.lm-mod-disabled)", has_text="Run All Cells").first.click()
            page.locator(".fl-recommender").wait_for(timeout=180_000)
            k = int(page.locator(".fl-k .widget-readout").inner_text())

            # Choose a product the way a presenter does: type part of its title, pick it from the list.
            product = index.catalog[index.catalog["Gender"] == "Girls"].iloc[3]
            page.locator(".fl-gender select").select_option(label="Girls")
            page.locator(".fl-search input").fill(product["ProductTitle"][:-2])
            # The kernel answers the typing with a new list: choose from that list, not the one before.
            page.locator(".fl-matches option", has_text=": choose one").first.wait_for(state="attached")
            page.locator(".fl-matches select").select_option(label=f"{product['ProductTitle']} · {product['ProductId']}")
            expected = similar_products(index, product["ProductId"], k=k)
            check_results(page, product["ProductId"], expected, k)

            # Clicking a result makes it the query.
            clicked = expected.iloc[1]
            page.locator(".fl-result").nth(1).locator("button", has_text="Show similar").click()
            check_results(page, clicked["ProductId"], similar_products(index, clicked["ProductId"], k=k), k)

            page.locator(".fl-recommender").scroll_into_view_if_needed()
            page.screenshot(path=SCREENSHOTS / "jupyterlab-recommender.png")
            outputs = " ".join(page.locator(".jp-OutputArea-output").all_inner_texts())
            assert "Traceback" not in outputs and page.locator(".fl-message").inner_text() == ""
            assert page_errors == []
        except BaseException:
            page.screenshot(path=SCREENSHOTS / "jupyterlab-recommender-failure.png")
            raise
        finally:
            page.close()


def check_results(page, query_id: str, expected, k: int) -> None:
    """The widget shows `query_id` as the query and exactly the engine's k results, photos loaded."""
    assert len(expected) == k
    page.locator(".fl-query", has_text=f"ProductId {query_id}").wait_for(timeout=30_000)
    try:
        page.wait_for_function(RESULTS_SHOWN, arg=expected["ProductId"].tolist(), timeout=30_000)
    except PlaywrightTimeoutError:
        pytest.fail(f"Expected the products {expected['ProductId'].tolist()} with their photos loaded; "
                    f"the grid shows: {page.locator('.fl-result').all_inner_texts()}")
    cards = page.locator(".fl-result")
    assert cards.count() == k
    for position, (_, row) in enumerate(expected.iterrows()):
        card = cards.nth(position)
        assert card.locator(".fl-title").get_attribute("title") == row["ProductTitle"]
        assert f"ProductId {row['ProductId']}" in card.inner_text()
        assert f"similarity {row['similarity']:.3f}" in card.inner_text()
