"""load_test.py's protocol client against the real app: `streamlit run app.py` on a small copy of the
catalogue, spoken to over Streamlit's own websocket protocol, its photos fetched over HTTP. What the
client reads from the deltas is compared with what the engine answers for the same query. No timing
is asserted: the figures of a load test depend on the machine."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io

from PIL import Image

from fashion_lens.index import load_index
from fashion_lens.search import similar_products
from fashion_lens.settings import get_settings
from load_test import RESULTS, MediaFetcher, ProtocolUser, run_load, served_app


async def first_page(url: str):
    user = ProtocolUser(url)
    try:
        return await user.open()
    finally:
        await user.close()


async def answers_and_a_photo(url: str, product_ids: list[str]):
    """One user's answers to `product_ids` then to an unknown id, and the bytes behind a result photo."""
    user = ProtocolUser(url)
    try:
        answers = [await user.open()] + [await user.query(product_id) for product_id in product_ids]
        unknown = await user.ask("no-such-product")
        photo = await MediaFetcher(user.media.host, user.media.port).get(answers[-1].results[0][1])
        return answers, unknown, photo
    finally:
        await user.close()


def run_apart(coroutine):
    """asyncio.run in a thread of its own: the browser tests' Playwright keeps an event loop running
    in this one for the whole session, and asyncio.run refuses to start inside it."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def test_the_protocol_client_gets_the_apps_answers_and_photos(catalog_copy, mobilenet_weights, tmp_path):
    artifacts, home = tmp_path / "artifacts", tmp_path / "home"
    home.mkdir()
    environment = {"FASHION_LENS_DATA": str(catalog_copy), "FASHION_LENS_ARTIFACTS": str(artifacts), "HOME": str(home)}
    with served_app(tmp_path / "streamlit.log", environment) as (server, url):
        first = run_apart(first_page(url))  # computes the copy's features: the engine here then reads the same
        index = load_index(settings=get_settings(data_dir=catalog_copy, artifacts_dir=artifacts), progress=False)
        ids = [index.catalog.at[rows.start + 1, "ProductId"] for rows in index.gender_rows.values()]
        answers, unknown, photo = run_apart(answers_and_a_photo(url, ids))
        # the load itself, briefly, over the products that have a full page of results
        full = [pid for pid in index.catalog["ProductId"] if len(similar_products(index, pid, k=RESULTS)) == RESULTS]
        figures = run_apart(run_load(url, server.pid, full, users=2, seconds=3, think=0))

    default = index.catalog["ProductId"].iloc[0]  # the first page answers the catalogue's first product
    assert first.alerts == [] and len(first.text_inputs) == 1
    assert first.query == default and first.result_ids == similar_products(index, default, k=RESULTS)["ProductId"].tolist()
    for product_id, answer in zip([default, *ids], answers):
        expected = similar_products(index, product_id, k=RESULTS)
        assert answer.alerts == [], answer.alerts
        assert answer.status in ("FINISHED_SUCCESSFULLY", "FINISHED_FRAGMENT_RUN_SUCCESSFULLY")
        assert answer.query == product_id
        assert answer.result_ids == expected["ProductId"].tolist()
        assert [caption.split("  \n")[0] for caption, _ in answer.results] == [  # then rank, similarity, why
            f"{pid} · {title}" for pid, title in zip(expected["ProductId"], expected["ProductTitle"])]
        assert len(answer.photos) == len(expected) + 1  # the query's photo, then one per result
        assert all(url.startswith("/media/") for _, url in answer.photos)
    # each photo was fetched once: a URL the user has already loaded is not fetched again
    assert sum(answer.fetched for answer in answers) == len({url for answer in answers for _, url in answer.photos})
    _, problems = unknown
    assert any("no-such-product" in problem for problem in problems), problems
    with Image.open(io.BytesIO(photo)) as image:
        assert image.format == "JPEG" and max(image.size) <= 256

    assert figures["client"] == "protocol" and figures["users"] == 2
    assert figures["answers"] > 0 and figures["errors"] == 0, figures["error_examples"]
    assert figures["server_mb_start"] > 0 and figures["server_mb_peak"] >= figures["server_mb_end"] > 0
