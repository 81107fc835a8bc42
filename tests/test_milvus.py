"""Search on Milvus (fashion_lens/milvus_search.py), on Milvus Lite in a local file: no network.

The real catalogue through Milvus gives the in-process index's answers; a sync upserts what changed
and deletes what left, resumes after an interruption and then sends nothing; an unreachable server
is reported within seconds; load_index and the app pick the backend from the setting.

Milvus is an optional extra (requirements-scale.txt): without it these tests are skipped, unless
FASHION_LENS_REQUIRE_MILVUS=1 says the run must have it (CI does).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time

import numpy as np
import pytest

from fashion_lens.errors import SearchBackendError, SearchError, SettingsError
from fashion_lens.feature_cache import Features
from fashion_lens.index import build_index, load_index
from fashion_lens.search import search_backend, similar_products, similar_to_image
from fashion_lens.settings import get_settings

if os.environ.get("FASHION_LENS_REQUIRE_MILVUS") == "1":
    import milvus_lite  # noqa: F401  (a missing Milvus fails the run here)
    import pymilvus  # noqa: F401
else:
    pytest.importorskip("pymilvus", reason="Milvus is optional: pip install -r requirements-scale.txt")
    pytest.importorskip("milvus_lite", reason="Milvus Lite is optional: pip install -r requirements-scale.txt")

from engine_support import assert_every_case_agrees, assert_same_results, hand_built_index, query_case  # noqa: E402

from fashion_lens.milvus_search import connect_milvus, filter_expression, sync_milvus  # noqa: E402


def _count(uri, collection) -> int:
    client = connect_milvus(uri)
    return client.query(collection, filter="", output_fields=["count(*)"])[0]["count(*)"]


@pytest.fixture
def milvus_copy(tmp_path):
    """Copies of an index that search through Milvus Lite files in tmp_path; their servers stop at the end."""
    made = []

    def make(index, name="catalogue", **options):
        copy = dataclasses.replace(index, milvus=None, milvus_uri=None)
        report = sync_milvus(copy, str(tmp_path / f"{name}.db"), state_dir=tmp_path / "state", **options)
        made.append(copy)
        return copy, report

    yield make
    for copy in made:
        copy.milvus.close()


# ---- the real catalogue: the same answers ----------------------------------------------------------

@pytest.fixture(scope="module")
def exact_milvus(index, tmp_path_factory):
    """The real catalogue in a FLAT collection of full descriptors: Milvus proposes exact candidates."""
    folder = tmp_path_factory.mktemp("milvus")
    copy = dataclasses.replace(index, milvus=None, milvus_uri=None)
    report = sync_milvus(copy, str(folder / "catalogue.db"), dimensions=None, index_type="FLAT", state_dir=folder)
    assert (report.added, report.changed, report.removed) == (len(index), 0, 0)
    yield copy
    copy.milvus.close()


def test_milvus_gives_the_in_process_results_with_every_filter(index, exact_milvus):
    assert exact_milvus.milvus.dimensions is None and exact_milvus.milvus.lists == 0
    product_ids = np.random.default_rng(7).choice(index.catalog["ProductId"], 20, replace=False)
    assert_every_case_agrees(index, exact_milvus, product_ids)
    assert exact_milvus.milvus.searches > 80  # Milvus answered, not only the fallback for tight filters


def test_milvus_answers_photo_queries_like_the_in_process_index(index, exact_milvus, catalog):
    photo = catalog["image_path"].iloc[123]
    before = exact_milvus.milvus.searches
    for gender in (None, "Women"):
        expected = similar_to_image(index, photo, k=8, gender=gender)
        assert_same_results(expected, similar_to_image(exact_milvus, photo, k=8, gender=gender), str(gender))
    assert exact_milvus.milvus.searches == before + 2


def test_the_widget_on_a_milvus_index_shows_the_in_process_results(index, exact_milvus):
    from fashion_lens.widget import recommender_widget

    product_id = index.catalog.at[index.gender_rows["Men"].start + 7, "ProductId"]
    on_milvus = recommender_widget(exact_milvus, product_id=product_id)
    in_process = recommender_widget(index, product_id=product_id)
    assert on_milvus.results["ProductId"].tolist() == in_process.results["ProductId"].tolist()


def test_pca_vectors_in_milvus_find_nearly_all_the_in_process_results(index, milvus_copy):
    compressed, _ = milvus_copy(index)  # the defaults: 256 PCA numbers per product, FLAT below 20,000
    assert compressed.milvus.dimensions == 256 and compressed.milvus.lists == 0
    fields = {field["name"]: field for field in compressed.milvus.client.describe_collection(compressed.milvus.collection)["fields"]}
    assert fields["vector"]["params"]["dim"] == 256
    assert {"gender", "sub_category", "product_type", "colour", "usage", "duplicate_group"} <= set(fields)
    product_ids = np.random.default_rng(5).choice(index.catalog["ProductId"], 40, replace=False)
    recalls = []
    for product_id in product_ids:
        for case in ({}, {"colour_weight": 0.0}, {"same_product_type": True}):
            expected = set(query_case(index, product_id, case)["ProductId"])
            recalls.append(len(expected & set(query_case(compressed, product_id, case)["ProductId"])) / len(expected))
    assert np.mean(recalls) >= 0.97, np.mean(recalls)


# ---- incremental sync ---------------------------------------------------------------------------------

def _index_of(catalog, features, vectors=None):
    """An index of `catalog` from the real descriptors (optionally other `vectors`, row for row with
    features.ids), without attribute probes (they do not touch what Milvus stores)."""
    changed = Features(ids=features.ids, vectors=features.vectors if vectors is None else vectors,
                       colours=features.colours, recipe=features.recipe)
    return build_index(catalog, changed, attributes=False)


def test_a_catalogue_change_upserts_new_and_changed_products_and_deletes_removed_ones(catalog, features, milvus_copy, tmp_path):
    rng = np.random.default_rng(3)
    order = rng.permutation(len(catalog))
    new, removed, relabelled, rephotographed = (catalog.iloc[order[a:b]]["ProductId"].tolist()
                                                for a, b in ((0, 60), (60, 100), (100, 120), (120, 125)))
    before = catalog[~catalog["ProductId"].isin(new)]
    first, report = milvus_copy(_index_of(before, features), dimensions=None, index_type="FLAT")
    assert (report.added, report.changed, report.removed, report.unchanged) == (len(before), 0, 0, 0)
    again = sync_milvus(first, state_dir=tmp_path / "state")
    assert (again.added, again.changed, again.removed, again.batches) == (0, 0, 0, 0)

    after = catalog[~catalog["ProductId"].isin(removed)].copy()
    black = after["ProductId"].isin(relabelled)
    after.loc[black, "Colour"] = np.where(after.loc[black, "Colour"] == "Black", "White", "Black")  # a label fixed
    vectors = features.vectors.copy()
    rows = {pid: row for row, pid in enumerate(features.ids)}
    for pid in rephotographed:  # a new photo: another product's descriptor
        vectors[rows[pid]] = features.vectors[rows[relabelled[0]]]
    in_process = _index_of(after, features, vectors)
    second = dataclasses.replace(in_process)
    report = sync_milvus(second, first.milvus.uri, dimensions=None, index_type="FLAT", state_dir=tmp_path / "state",
                         batch_size=50)
    assert (report.added, report.changed, report.removed) == (60, 25, 40)
    assert report.unchanged == len(after) - 85 and report.batches == 3
    client, collection = second.milvus.client, second.milvus.collection
    assert _count(second.milvus.uri, collection) == len(after)
    assert client.query(collection, ids=removed, output_fields=["product_id"]) == []
    stored = {row["product_id"]: row["colour"] for row in client.query(collection, ids=relabelled, output_fields=["colour"])}
    assert stored == dict(zip(after.loc[black, "ProductId"], after.loc[black, "Colour"]))
    for product_id in (*new[:3], *relabelled[:3], *rephotographed[:3]):
        for case in ({}, {"colour": "Black", "colour_weight": 0.5}):
            try:
                expected = query_case(in_process, product_id, case)
            except SearchError:  # no product of that gender has the colour
                continue
            assert_same_results(expected, query_case(second, product_id, case), f"{product_id} {case}")
    assert second.milvus.searches > 0
    second.milvus.close()


def test_an_interrupted_sync_resumes_and_a_second_sync_sends_nothing(catalog, features, milvus_copy, tmp_path):
    index = _index_of(catalog, features)
    uri, state = str(tmp_path / "resumed.db"), tmp_path / "state"
    calls = []

    def stop_after_three_batches(done, total):
        calls.append((done, total))
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated kill")

    interrupted = dataclasses.replace(index, milvus=None, milvus_uri=None)
    with pytest.raises(KeyboardInterrupt):
        sync_milvus(interrupted, uri, state_dir=state, batch_size=400, on_batch=stop_after_three_batches)
    assert calls == [(400, len(index)), (800, len(index)), (1200, len(index))]

    resumed, report = milvus_copy(index, name="resumed", batch_size=400)
    assert (report.added, report.changed, report.removed) == (len(index) - 1200, 0, 0)
    assert report.batches == -(-(len(index) - 1200) // 400)
    assert _count(uri, resumed.milvus.collection) == len(index)
    again = sync_milvus(resumed, state_dir=state)
    assert (again.added, again.changed, again.removed, again.batches) == (0, 0, 0, 0)

    # the sync state lost (a fresh machine): what Milvus holds is read back, nothing is sent
    for path in state.glob("*.state.npz"):
        path.unlink()
    lost = sync_milvus(resumed, state_dir=state)
    assert (lost.added, lost.changed, lost.removed, lost.batches) == (0, 0, 0, 0)
    product_id = index.catalog["ProductId"].iloc[42]
    assert similar_products(resumed, product_id, k=5)["ProductId"].tolist()[:1] \
        == similar_products(index, product_id, k=5)["ProductId"].tolist()[:1]


# ---- choosing the backend by setting ----------------------------------------------------------------

def test_load_index_with_the_milvus_setting_searches_through_milvus(catalog, index, features, tmp_path):
    uri = str(tmp_path / "setting.db")
    loaded = load_index(catalog, get_settings(milvus_uri=uri), progress=False)
    assert loaded.milvus_uri == uri and loaded.milvus is None
    assert "connects at the first query" in search_backend(loaded)
    product_ids = index.catalog["ProductId"].iloc[10:400:39].tolist()
    answers = [set(similar_products(loaded, product_id, k=10)["ProductId"]) for product_id in product_ids]
    assert loaded.milvus.searches == len(product_ids) and loaded.milvus.last_sync.added == len(loaded)
    assert search_backend(loaded).startswith(f"Milvus Lite file {uri}")
    # PCA-256 candidates, then the exact ranking: nearly the in-process answers (one query may miss a few)
    recalls = [len(answer & set(similar_products(index, product_id, k=10)["ProductId"])) / 10
               for product_id, answer in zip(product_ids, answers)]
    assert np.mean(recalls) >= 0.9, recalls
    loaded.milvus.close()


def test_the_app_says_which_backend_answers(monkeypatch, tmp_path, features):
    from test_app import messages, search, shown_result_ids, start_app

    uri = str(tmp_path / "app.db")
    monkeypatch.setenv("FASHION_LENS_MILVUS_URI", uri)
    app = start_app()
    sidebar = " ".join(messages(app.sidebar.markdown) + messages(app.sidebar.caption))
    assert f"Search: **Milvus Lite file {uri}" in sidebar
    assert f"Milvus sync: {len(features)} added, 0 changed, 0 removed" in sidebar
    search(app, features.ids[5])
    assert len(shown_result_ids(app)) == 5


def test_the_app_shows_an_unreachable_milvus_as_an_error(monkeypatch, features):
    monkeypatch.setenv("FASHION_LENS_MILVUS_URI", f"http://127.0.0.1:{_closed_port()}")
    from test_app import start_app

    app = start_app()
    assert len(app.error) == 1 and "failed while connecting" in app.error[0].value


# ---- fast: no catalogue -------------------------------------------------------------------------------

def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.fast
def test_fast_an_unreachable_milvus_is_reported_within_seconds(tmp_path):
    index = hand_built_index(count=40)
    silent = socket.socket()  # accepts connections and never answers: a firewall or a hung server
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    try:
        for uri in (f"http://127.0.0.1:{_closed_port()}", f"http://127.0.0.1:{silent.getsockname()[1]}"):
            started = time.monotonic()
            with pytest.raises(SearchBackendError, match="failed while connecting .*unset that variable"):
                sync_milvus(index, uri, timeout=2, state_dir=tmp_path)
            assert time.monotonic() - started < 6, uri
        # the setting alone: the first query connects and says so, within the default 5 s
        index.milvus_uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(SearchBackendError, match="Milvus at http://127.0.0.1"):
            similar_products(index, index.catalog["ProductId"].iloc[0], k=3, colour_weight=0)
        assert time.monotonic() - started < 10
    finally:
        silent.close()


@pytest.mark.fast
def test_fast_a_milvus_uri_that_is_neither_a_server_nor_a_lite_file_is_refused(tmp_path):
    with pytest.raises(SettingsError, match="ending in .db"):
        sync_milvus(hand_built_index(count=10), str(tmp_path / "catalogue.sqlite"))


@pytest.mark.fast
def test_fast_filters_become_a_milvus_expression_that_milvus_applies(milvus_copy):
    index = hand_built_index(count=240, genders=("Men", "Women"))
    men = index.gender_rows["Men"]
    expression = filter_expression(index, men, {"Colour": ["Black", 'Navy "Blue"'], "Usage": "Sports", "SubCategory": None},
                                   ["1000", "1002"])
    assert expression == ('gender == "Men" and colour in ["Black", "Navy \\"Blue\\""] and usage in ["Sports"] '
                          'and product_id not in ["1000", "1002"]')
    assert filter_expression(index, slice(0, len(index)), {}) == ""
    copy, report = milvus_copy(index, dimensions=None)
    assert report.added == 240
    for product_id in index.catalog["ProductId"][::37]:
        for case in ({"colour_weight": 0, "k": 3}, {"colour_weight": 0, "k": 3, "colour": ["Black", "Red"]},
                     {"colour_weight": 0, "k": 5, "across_genders": True}):
            assert_same_results(similar_products(index, product_id, **case), similar_products(copy, product_id, **case),
                                 f"{product_id} {case}")
    assert copy.milvus.searches >= 10
