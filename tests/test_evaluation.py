"""Evaluation measures, on a hand-built index whose answers are known."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from fashion_lens.evaluation import (
    RELEVANCE,
    average_precision_at_k,
    colour_name_agreement,
    compare_methods,
    evaluate,
    precision_at_k,
    rank_all,
    relevance_matrix,
    relevant_counts,
)
from fashion_lens.feature_cache import Features
from fashion_lens.features import FeatureRecipe
from fashion_lens.index import build_index
from fashion_lens.search import similar_products


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
    recipe = FeatureRecipe(backbone="mobilenet_v2", weights="toy:sha256=0")
    colours = np.ones((6, 256), np.float32) / 16  # one unit colour descriptor shared by all: colour never decides
    return build_index(catalog, Features(catalog["ProductId"].to_numpy(), vectors, colours, recipe))


def test_rank_all_finds_the_known_neighbours():
    index = _toy_index()
    ranks = rank_all(index, k=2, colour_weight=0)
    ids = index.catalog["ProductId"].to_numpy()
    assert [list(ids[row]) for row in ranks] == [["2", "3"], ["1", "3"], ["2", "1"], ["5", "3"], ["4", "3"], ["5", "4"]]


def test_precision_at_k_on_known_answers():
    index = _toy_index()
    ranks = rank_all(index, k=2, colour_weight=0)
    # ProductType hits per query: 1:[A,B] 2:[A,B] 3:[A,A] 4:[B,B] 5:[B,B] 6:[B,B]
    relevant = relevance_matrix(index, ranks, ("ProductType",))
    assert relevant.tolist() == [[True, False], [True, False], [False, False], [True, True], [True, True], [False, False]]
    assert precision_at_k(relevant) == pytest.approx(6 / 12)


def test_average_precision_uses_the_number_of_relevant_items():
    relevant = np.array([[True, False, True], [False, True, False], [False, False, False]])
    ap = average_precision_at_k(relevant, np.array([2, 1, 0]))
    assert ap[0] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert ap[1] == pytest.approx((1 / 2) / 1)
    assert np.isnan(ap[2])


def test_relevant_counts_exclude_the_query_and_its_copies():
    index = _toy_index()
    assert relevant_counts(index, ("ProductType",)).tolist() == [2, 2, 2, 2, 2, 2]
    assert relevant_counts(index, ("ProductType", "Colour")).tolist() == [1, 1, 0, 1, 1, 0]


def test_evaluate_reports_every_relevance_kind():
    scores = evaluate(_toy_index(), k=2, colour_weight=0)
    assert scores["P@2 ProductType"] == pytest.approx(0.5)
    assert scores["P@2 SubCategory"] == pytest.approx(1.0)
    assert set(scores.index) == {f"{m}@2 {name}" for m in ("P", "mAP") for name in RELEVANCE}


def test_rank_all_agrees_with_similar_products_on_the_real_catalogue(index):
    ranks = rank_all(index, k=5)
    ids = index.catalog["ProductId"].to_numpy()
    for position in range(0, len(index), 97):
        expected = list(similar_products(index, ids[position], k=5)["ProductId"])
        assert list(ids[ranks[position]]) == expected


def test_project_features_beat_random_ranking_on_the_real_catalogue(index):
    assert index.attributes is not None  # the full catalogue gets its attribute probes
    scores = evaluate(index, k=5)
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(len(index))
    random_index = dataclasses.replace(
        index, vectors=index.vectors[shuffled], colours=index.colours[shuffled],
        attributes={target: probabilities[shuffled] for target, probabilities in index.attributes.items()},
        pair_scores=None)  # the precomputed pairs belong to the real descriptors
    random_scores = evaluate(random_index, k=5)
    assert scores["P@5 ProductType"] > random_scores["P@5 ProductType"] + 0.2


def test_compare_methods_puts_methods_side_by_side(index):
    table = compare_methods({"visual only": (index, 0.0), "default": index}, k=5)
    assert list(table.index) == ["visual only", "default"]
    # the colour-aware blend is what lifts Colour precision (measured: about 0.36 -> 0.59)
    assert table.loc["default", "P@5 Colour"] > table.loc["visual only", "P@5 Colour"] + 0.15


# ---- fast: indexes built by hand, answers worked out by hand -----------------------------------

def _circle_index():
    """Eight products on a circle, so that neighbours are known without computing:
    Men 1 (0 deg), 2 (10), 3 (30), 4 (90) and 5, a copy of 4's photo; Women 6 (0), 7 (40), 8 (170).
    The colour histograms are all the same: only the angles rank."""
    angles = np.radians([0, 10, 30, 90, 90, 0, 40, 170])
    catalog = pd.DataFrame({
        "ProductId": [str(i) for i in range(1, 9)],
        "Gender": ["Men"] * 5 + ["Women"] * 3,
        "SubCategory": ["Shoes"] * 8,
        "ProductType": ["A", "A", "B", "B", "B", "A", "A", "B"],
        "Colour": ["Red", "Blue", "Red", "Blue", "Blue", "Red", "Red", "Blue"],
        "Usage": ["Casual"] * 8,
        "ProductTitle": [f"product {i}" for i in range(1, 9)],
        "image_path": [""] * 8,
        "duplicate_group": ["1", "2", "3", "4", "4", "6", "7", "8"],
    })
    vectors = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    features = Features(catalog["ProductId"].to_numpy(), vectors, np.full((8, 4), 0.5, np.float32),
                        FeatureRecipe(backbone="mobilenet_v2", weights="toy", weights_id="toy"))
    return build_index(catalog, features, attributes=False)


@pytest.mark.fast
def test_fast_rank_all_finds_the_nearest_products_of_the_same_gender_leaving_copies_out():
    index = _circle_index()
    ids = index.catalog["ProductId"].to_numpy()
    ranks = rank_all(index, k=2, colour_weight=0)
    assert [ids[row].tolist() for row in ranks] == [
        ["2", "3"], ["1", "3"], ["2", "1"], ["3", "2"], ["3", "2"],  # 4 and 5 never find each other
        ["7", "8"], ["6", "8"], ["7", "6"]]                          # the women find women only
    padded = rank_all(index, k=3, colour_weight=0)
    women = index.gender_rows["Women"]
    assert (padded[women, 2] == -1).all() and (padded[index.gender_rows["Men"]] >= 0).all()  # only 2 other women
    assert not relevance_matrix(index, padded, ("SubCategory",))[women, 2].any()  # padding is never relevant


@pytest.mark.fast
def test_fast_relevance_and_relevant_counts_on_known_answers():
    index = _circle_index()
    ranks = rank_all(index, k=2, colour_weight=0)
    assert relevance_matrix(index, ranks, ("ProductType",)).tolist() == [
        [True, False], [True, False], [False, False], [True, False], [True, False], [True, False], [True, False], [False, False]]
    assert relevance_matrix(index, ranks, ("Colour",)).tolist() == [
        [False, True], [False, False], [False, True], [False, True], [False, True], [True, False], [True, False], [False, False]]
    # the same gender and labels, less the query and the copies of its photo
    assert relevant_counts(index, ("ProductType",)).tolist() == [1, 1, 2, 1, 1, 1, 1, 0]
    assert relevant_counts(index, ("Colour",)).tolist() == [1, 2, 1, 1, 1, 1, 1, 0]
    assert relevant_counts(index, ("SubCategory",)).tolist() == [4, 4, 4, 3, 3, 2, 2, 2]


@pytest.mark.fast
def test_fast_precision_and_average_precision_by_hand():
    relevant = np.array([[True, True, False], [False, True, True], [False, False, True], [False, False, False]])
    assert precision_at_k(relevant) == pytest.approx(5 / 12)
    assert precision_at_k(relevant[:, :1]) == pytest.approx(1 / 4)
    assert np.isnan(precision_at_k(np.zeros((0, 3), dtype=bool)))
    ap = average_precision_at_k(relevant, np.array([5, 2, 1, 0]))
    assert ap[:3] == pytest.approx([(1 + 1) / 3, (1 / 2 + 2 / 3) / 2, (1 / 3) / 1])  # over min(k, relevant items)
    assert np.isnan(ap[3])  # nothing to find: left out of the mean, not a zero


@pytest.mark.fast
def test_fast_evaluate_gives_the_hand_computed_scores():
    scores = evaluate(_circle_index(), k=2, colour_weight=0)
    expected = {
        "P@2 SubCategory": 1.0, "mAP@2 SubCategory": 1.0,
        "P@2 ProductType": 6 / 16, "mAP@2 ProductType": 6 / 7,   # query 8 has no other type-B woman: left out
        "P@2 Colour": 6 / 16, "mAP@2 Colour": 4 / 7,             # APs 1/2, 0, 1/2, 1/2, 1/2, 1, 1
        "P@2 ProductType and Colour": 2 / 16, "mAP@2 ProductType and Colour": 1.0,  # only 6 and 7 can score
    }
    assert scores.to_dict() == pytest.approx(expected)
    table = compare_methods({"angles": (_circle_index(), 0.0)}, k=2)
    assert table.loc["angles"].to_dict() == pytest.approx(expected)


@pytest.mark.fast
def test_fast_rank_all_ranks_every_product_exactly_as_similar_products():
    colour_weight = None  # the default blend; test_index.py checks the pure weights on one gender
    from engine_support import hand_built_index, with_duplicate_groups

    base = hand_built_index(count=36, seed=11, genders=("Men", "Women"))
    vectors = base.vectors.copy()
    vectors[base.positions["1012"]] = vectors[base.positions["1002"]]  # a copy of 1002's photo
    index = with_duplicate_groups(dataclasses.replace(base, vectors=vectors), {"1012": "1002"})
    ranks = rank_all(index, k=6, colour_weight=colour_weight)
    ids = index.catalog["ProductId"].to_numpy()
    for position, product_id in enumerate(ids):
        expected = similar_products(index, product_id, k=6, colour_weight=colour_weight)["ProductId"].tolist()
        assert ids[ranks[position]].tolist() == expected, product_id
    both = ranks[[index.positions["1002"], index.positions["1012"]]]
    assert not {"1002", "1012"} & set(ids[both.ravel()])


@pytest.mark.fast
def test_fast_rank_all_ranks_by_euclidean_distance_exactly_as_similar_products():
    from engine_support import random_colour_descriptors, random_unit_vectors

    rng = np.random.default_rng(2)
    vectors = random_unit_vectors(rng, 30, 16) * rng.uniform(0.5, 3.0, (30, 1)).astype(np.float32)  # raw, not unit
    catalog = pd.DataFrame({"ProductId": [str(500 + i) for i in range(30)], "Gender": ["Boys", "Girls"] * 15,
                            "SubCategory": "Topwear", "ProductType": ["Shirts", "Tshirts", "Tops"] * 10,
                            "Colour": ["Red", "Blue", "Black", "White", "Green"] * 6, "Usage": "Casual",
                            "ProductTitle": "a shirt", "image_path": "", "duplicate_group": [str(500 + i) for i in range(30)]})
    recipe = FeatureRecipe(backbone="mobilenet_v2", weights="toy", weights_id="toy", metric="euclidean",
                           pooling="flatten", dtype="float32")
    index = build_index(catalog, Features(catalog["ProductId"].to_numpy(), vectors, random_colour_descriptors(rng, 30), recipe))
    ranks = rank_all(index, k=4, colour_weight=0.9)  # a Euclidean recipe ignores the colour weight
    ids = index.catalog["ProductId"].to_numpy()
    for position, product_id in enumerate(ids):
        results = similar_products(index, product_id, k=4)
        assert ids[ranks[position]].tolist() == results["ProductId"].tolist(), product_id
        query = index.vectors[position].astype(np.float64)
        same = np.flatnonzero((index.catalog["Gender"] == index.catalog.at[position, "Gender"]).to_numpy())
        distances = {row: np.linalg.norm(index.vectors[row].astype(np.float64) - query) for row in same if row != position}
        nearest = sorted(distances, key=lambda row: (round(distances[row], 6), ids[row]))[:4]
        assert ids[nearest].tolist() == results["ProductId"].tolist()
        assert np.allclose(-results["similarity"], [distances[row] for row in nearest], atol=1e-6)


@pytest.mark.fast
def test_fast_colour_name_agreement_counts_first_and_top_two_names_per_label():
    labels = ["Navy Blue", "Navy Blue", "Orange", "Orange", "Orange", "Grey", "Beige"]
    names = [["navy", "white"], ["black", "navy"], ["orange"], ["red", "orange"], ["red", "white"], ["dark grey"], ["orange"]]
    table = colour_name_agreement(labels, names)
    assert list(table.index) == ["Orange", "Navy Blue", "Grey"]  # most products first; Beige has no colour word
    assert table.loc["Orange"].tolist() == pytest.approx([3, 1 / 3, 2 / 3])
    assert table.loc["Navy Blue"].tolist() == pytest.approx([2, 0.5, 1.0])
    assert table.loc["Grey"].tolist() == pytest.approx([1, 1.0, 1.0])
