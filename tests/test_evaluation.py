"""Evaluation measures, on a hand-built index whose answers are known."""

import numpy as np
import pandas as pd
import pytest

import helpers


def _toy_index():
    """Six products of one gender on a circle: neighbours are known by construction."""
    angles = np.radians([0, 10, 20, 90, 100, 180])
    vectors = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    catalog = pd.DataFrame({
        "ProductId": ["1", "2", "3", "4", "5", "6"],
        "Gender": ["Men"] * 6,
        "SubCategory": ["Shoes"] * 6,
        "ProductType": ["A", "A", "B", "B", "B", "A"],
        "Colour": ["Red", "Red", "Red", "Blue", "Blue", "Blue"],
        "Usage": ["Casual"] * 6,
        "ProductTitle": [f"product {i}" for i in range(1, 7)],
        "image_path": [""] * 6,
        "duplicate_group": ["1", "2", "3", "4", "5", "6"],
    })
    recipe = helpers.FeatureRecipe(backbone="mobilenet_v2", weights="toy:sha256=0")
    colours = np.ones((6, 4), np.float32) / 2
    return helpers.build_index(catalog, helpers.Features(catalog["ProductId"].to_numpy(), vectors, colours, recipe))


def test_rank_all_finds_the_known_neighbours():
    index = _toy_index()
    ranks = helpers.rank_all(index, k=2, colour_weight=0)
    ids = index.catalog["ProductId"].to_numpy()
    assert [list(ids[row]) for row in ranks] == [["2", "3"], ["1", "3"], ["2", "1"], ["5", "3"], ["4", "3"], ["5", "4"]]


def test_precision_at_k_on_known_answers():
    index = _toy_index()
    ranks = helpers.rank_all(index, k=2, colour_weight=0)
    # ProductType hits per query: 1:[A,B] 2:[A,B] 3:[A,A] 4:[B,B] 5:[B,B] 6:[B,B]
    relevant = helpers.relevance_matrix(index, ranks, ("ProductType",))
    assert relevant.tolist() == [[True, False], [True, False], [False, False], [True, True], [True, True], [False, False]]
    assert helpers.precision_at_k(relevant) == pytest.approx(6 / 12)


def test_average_precision_uses_the_number_of_relevant_items():
    relevant = np.array([[True, False, True], [False, True, False], [False, False, False]])
    ap = helpers.average_precision_at_k(relevant, np.array([2, 1, 0]))
    assert ap[0] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert ap[1] == pytest.approx((1 / 2) / 1)
    assert np.isnan(ap[2])


def test_relevant_counts_exclude_the_query_and_its_copies():
    index = _toy_index()
    assert helpers.relevant_counts(index, ("ProductType",)).tolist() == [2, 2, 2, 2, 2, 2]
    assert helpers.relevant_counts(index, ("ProductType", "Colour")).tolist() == [1, 1, 0, 1, 1, 0]


def test_evaluate_reports_every_relevance_kind():
    scores = helpers.evaluate(_toy_index(), k=2, colour_weight=0)
    assert scores["P@2 ProductType"] == pytest.approx(0.5)
    assert scores["P@2 SubCategory"] == pytest.approx(1.0)
    assert set(scores.index) == {f"{m}@2 {name}" for m in ("P", "mAP") for name in helpers.RELEVANCE}


def test_rank_all_agrees_with_similar_products_on_the_real_catalogue(index):
    ranks = helpers.rank_all(index, k=5)
    ids = index.catalog["ProductId"].to_numpy()
    for position in range(0, len(index), 97):
        expected = list(helpers.similar_products(index, ids[position], k=5)["ProductId"])
        assert list(ids[ranks[position]]) == expected


def test_project_features_beat_random_ranking_on_the_real_catalogue(index):
    assert index.attributes is not None  # the full catalogue gets its attribute probes
    scores = helpers.evaluate(index, k=5)
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(len(index))
    random_index = helpers.dataclasses.replace(
        index, vectors=index.vectors[shuffled], colours=index.colours[shuffled],
        attributes={target: probabilities[shuffled] for target, probabilities in index.attributes.items()},
        pair_scores=None)  # the precomputed pairs belong to the real descriptors
    random_scores = helpers.evaluate(random_index, k=5)
    assert scores["P@5 ProductType"] > random_scores["P@5 ProductType"] + 0.2


def test_compare_methods_puts_methods_side_by_side(index):
    table = helpers.compare_methods({"visual only": (index, 0.0), "default": index}, k=5)
    assert list(table.index) == ["visual only", "default"]
    assert table.loc["visual only", "P@5 Colour"] != table.loc["default", "P@5 Colour"]
