"""Large catalogues: the FAISS path of the search engine (fashion_lens/ann.py).

On the real catalogue an exact FAISS index must give the exact search's answers; on a synthetic
catalogue above the size threshold the approximate index must find nearly all of them; the
FAISS index is cached beside the features and rebuilt only when they change.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from engine_support import assert_every_case_agrees, assert_same_results, query_case

from fashion_lens import ann
from fashion_lens.ann import attach_faiss_index, faiss_candidates, uses_faiss
from fashion_lens.errors import FeatureCacheWarning
from fashion_lens.feature_cache import Features, read_feature_cache, write_feature_shard
from fashion_lens.features import reference_recipe
from fashion_lens.index import APPROXIMATE_SEARCH_MIN_PRODUCTS, build_index
from fashion_lens.search import similar_products, similar_to_image
from fashion_lens.settings import get_settings
from synthetic import synthetic_index


@pytest.fixture(scope="module")
def flat_index(index):
    """The real catalogue searched through an exact FAISS index (IndexFlatIP), forced on."""
    copy = dataclasses.replace(index, faiss_index=None, feature_cache_dir=None)
    return attach_faiss_index(copy, spec="Flat")


def test_exact_faiss_index_returns_the_exact_searchs_top_k_with_every_filter(index, flat_index, monkeypatch):
    import faiss

    assert isinstance(flat_index.faiss_index, faiss.IndexFlatIP)
    assert uses_faiss(flat_index) and not uses_faiss(index)
    calls = []  # a counting wrapper: it changes nothing but shows that FAISS answered
    original = faiss_candidates
    monkeypatch.setattr(ann, "faiss_candidates", lambda *a, **kw: calls.append(1) or original(*a, **kw))
    product_ids = np.random.default_rng(7).choice(index.catalog["ProductId"], 25, replace=False)
    assert_every_case_agrees(index, flat_index, product_ids)
    assert len(calls) > 100  # the FAISS index answered, not only the exact fallback for tight filters


def test_exact_faiss_index_answers_photo_queries_like_the_exact_search(index, flat_index, catalog):
    photo = catalog["image_path"].iloc[123]
    for gender in (None, "Women"):
        exact = similar_to_image(index, photo, k=8, gender=gender)
        assert_same_results(exact, similar_to_image(flat_index, photo, k=8, gender=gender), str(gender))


def test_the_articles_euclidean_index_never_goes_through_faiss(index):
    article_like = dataclasses.replace(index, recipe=reference_recipe(get_settings()))
    assert article_like.metric == "euclidean" and not uses_faiss(article_like)


@pytest.fixture(scope="module")
def synthetic(index):
    """24,000 synthetic products grown from the real descriptors: above APPROXIMATE_SEARCH_MIN_PRODUCTS."""
    return synthetic_index(index, 24_000, seed=3)


def test_synthetic_catalogue_is_clustered_like_real_embeddings(synthetic):
    vectors = synthetic.vectors
    np.testing.assert_allclose(np.linalg.norm(vectors[:500], axis=1), 1.0, atol=1e-5)
    similarities = vectors[:300] @ vectors.T
    similarities[np.arange(300), np.arange(300)] = -np.inf
    tenth_nearest = -np.sort(-similarities, axis=1)[:, 9]
    typical = np.median(similarities[np.isfinite(similarities)])
    # neighbourhoods: the 10th nearest product is far closer than a typical one (uniform random
    # unit vectors in 5120 dimensions would have both near 0)
    assert np.median(tenth_nearest) > 0.75 and typical < 0.5


def test_large_catalogue_switches_to_the_approximate_index_and_keeps_recall(synthetic):
    import faiss

    assert len(synthetic) >= APPROXIMATE_SEARCH_MIN_PRODUCTS and synthetic.faiss_index is None
    product_ids = np.random.default_rng(11).choice(synthetic.catalog["ProductId"], 60, replace=False)
    cases = [{}, {"colour_weight": 0.0}, {"same_product_type": True}]
    approximate = {str(case): [query_case(synthetic, pid, case)["ProductId"].tolist() for pid in product_ids] for case in cases}
    assert isinstance(faiss.downcast_index(synthetic.faiss_index.index), faiss.IndexIVFFlat)  # attached by itself
    exact_only = dataclasses.replace(synthetic, faiss_index=None, approximate_from=10**12)
    assert not uses_faiss(exact_only)
    for case in cases:
        exact = [query_case(exact_only, pid, case)["ProductId"].tolist() for pid in product_ids]
        recall = np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(approximate[str(case)], exact)])
        assert recall >= 0.95, (case, recall)


def _cached_index(catalog, features, cache_dir, upto):
    """An Index whose features come from a feature cache in `cache_dir` (shards written through the
    engine's own writer), like load_index builds it."""
    stored = read_feature_cache(cache_dir, features.recipe)
    loaded = Features(ids=stored["ids"], vectors=stored["vectors"], colours=stored["colours"],
                              recipe=features.recipe, cache_dir=cache_dir)
    # no attribute probes: they do not touch the FAISS index, and fitting them takes a minute
    return build_index(catalog[catalog["ProductId"].isin(features.ids[:upto])], loaded, attributes=False)


def test_faiss_index_is_cached_beside_the_features_and_rebuilt_only_when_they_change(catalog, features, tmp_path):
    cache_dir = tmp_path / "features"
    cache_dir.mkdir()
    fingerprints = catalog.set_index("ProductId").loc[features.ids, "image_sha256"].to_numpy(dtype=str)

    def add_shard(start, stop):
        write_feature_shard(cache_dir, features.recipe, features.ids[start:stop], fingerprints[start:stop],
                                    features.vectors[start:stop], features.colours[start:stop])

    add_shard(0, 900)
    first = attach_faiss_index(_cached_index(catalog, features, cache_dir, 900))
    saved = sorted(cache_dir.glob("faiss-*.index"))
    assert len(saved) == 1
    written = saved[0].stat()  # a rebuild would write a new file (new inode) in its place
    query = first.catalog["ProductId"].iloc[5]
    answer = similar_products(first, query, k=10)["ProductId"].tolist()

    again = attach_faiss_index(_cached_index(catalog, features, cache_dir, 900))
    assert sorted(cache_dir.glob("faiss-*.index")) == saved
    assert (saved[0].stat().st_ino, saved[0].stat().st_mtime_ns) == (written.st_ino, written.st_mtime_ns), \
        "the cached FAISS index should have been read back, not rebuilt"
    assert similar_products(again, query, k=10)["ProductId"].tolist() == answer

    add_shard(900, 1200)  # new products: the features changed
    grown = attach_faiss_index(_cached_index(catalog, features, cache_dir, 1200))
    now = sorted(cache_dir.glob("faiss-*.index"))
    assert len(now) == 1 and now != saved, "the stale index should be replaced"
    assert grown.faiss_index.ntotal == len(grown) == 1200


def test_a_damaged_faiss_index_file_is_detected_and_rebuilt(catalog, features, tmp_path):
    cache_dir = tmp_path / "features"
    cache_dir.mkdir()
    fingerprints = catalog.set_index("ProductId").loc[features.ids, "image_sha256"].to_numpy(dtype=str)
    write_feature_shard(cache_dir, features.recipe, features.ids[:600], fingerprints[:600],
                        features.vectors[:600], features.colours[:600])
    first = attach_faiss_index(_cached_index(catalog, features, cache_dir, 600))
    query = first.catalog["ProductId"].iloc[3]
    answer = similar_products(first, query, k=10)["ProductId"].tolist()
    saved = next(cache_dir.glob("faiss-*.index"))
    saved.write_bytes(saved.read_bytes()[:1000])  # a half-written or damaged file
    with pytest.warns(FeatureCacheWarning, match="FAISS index .* is damaged"):
        again = attach_faiss_index(_cached_index(catalog, features, cache_dir, 600))
    assert again.faiss_index.ntotal == 600
    assert similar_products(again, query, k=10)["ProductId"].tolist() == answer
