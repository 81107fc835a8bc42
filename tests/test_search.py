"""Search over the real catalogue with real MobileNetV2 features."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st

import helpers

FILTER_ARGUMENTS = {"SubCategory": "subcategory", "ProductType": "product_type", "Colour": "colour", "Usage": "usage"}
searches = hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def queries(draw, index):
    position = draw(st.integers(0, len(index) - 1))
    options = {"k": draw(st.integers(1, 20)), "colour_weight": draw(st.sampled_from([0.0, 0.3, 1.0])),
               "across_genders": draw(st.booleans())}
    if draw(st.booleans()):
        column = draw(st.sampled_from(list(FILTER_ARGUMENTS)))
        options[FILTER_ARGUMENTS[column]] = draw(st.sampled_from(sorted(index.catalog[column].unique())))
    return index.catalog["ProductId"].iloc[position], options


@searches
@given(data=st.data())
def test_search_properties(index, data):
    product_id, options = data.draw(queries(index))
    query = helpers.product_row(index.catalog, product_id)
    results = helpers.similar_products(index, product_id, **options)
    assert len(results) <= options["k"]
    assert list(results["rank"]) == list(range(1, len(results) + 1))
    assert (np.diff(results["similarity"]) <= 1e-9).all()
    assert product_id not in set(results["ProductId"])
    assert query["duplicate_group"] not in set(index.catalog.set_index("ProductId").loc[results["ProductId"], "duplicate_group"])
    if not options["across_genders"]:
        assert (results["Gender"] == query["Gender"]).all()
    for column, argument in FILTER_ARGUMENTS.items():
        if argument in options:
            assert (results[column] == options[argument]).all()


def test_k_results_when_enough_candidates(index):
    results = helpers.similar_products(index, "13683", k=20)
    assert len(results) == 20 and results["ProductId"].is_unique


def test_reference_query_13683_returns_mens_shoes(index):
    results = helpers.similar_products(index, "13683", k=5)
    assert (results["Gender"] == "Men").all()
    assert (results["SubCategory"] == "Shoes").sum() >= 4
    assert {"rank", "ProductId", "ProductTitle", "SubCategory", "ProductType", "Colour", "Usage",
            "similarity", "image_path", "why"} <= set(results.columns)


def test_results_equal_a_brute_force_ranking(index):
    position = index.positions["13683"]
    rows = index.gender_rows["Men"]
    scores = index.vectors[rows] @ index.vectors[position]
    groups = index.groups[rows]
    scores[groups == index.groups[position]] = -np.inf
    expected = index.catalog["ProductId"].to_numpy()[rows][np.argsort(-scores, kind="stable")[:10]]
    results = helpers.similar_products(index, "13683", k=10, colour_weight=0)
    assert list(results["ProductId"]) == list(expected)
    assert np.allclose(results["similarity"], np.sort(scores)[::-1][:10], atol=1e-6)


def test_query_by_image_finds_the_product_itself_first(index):
    for product_id in ["13683", index.catalog["ProductId"].iloc[100], index.catalog["ProductId"].iloc[2000]]:
        row = helpers.product_row(index.catalog, product_id)
        with open(row["image_path"], "rb") as handle:
            results = helpers.similar_to_image(index, handle.read(), k=3, gender=row["Gender"])
        first = helpers.product_row(index.catalog, results["ProductId"].iloc[0])
        assert first["duplicate_group"] == row["duplicate_group"]
        assert results["similarity"].iloc[0] > 0.99


def test_duplicates_are_left_out_unless_asked_for(index):
    groups = index.catalog.groupby("duplicate_group")["ProductId"].apply(list)
    members = next(ids for ids in groups if len(ids) == 3)
    default = helpers.similar_products(index, members[0], k=10)
    assert not set(members) & set(default["ProductId"])
    with_copies = helpers.similar_products(index, members[0], k=10, include_duplicates=True, colour_weight=0)
    assert set(members[1:]) <= set(with_copies["ProductId"].head(2))


def test_min_similarity_drops_weaker_results(index):
    unfiltered = helpers.similar_products(index, "13683", k=20)
    threshold = float(unfiltered["similarity"].iloc[9])
    results = helpers.similar_products(index, "13683", k=20, min_similarity=threshold)
    assert list(results["ProductId"]) == list(unfiltered.loc[unfiltered["similarity"] >= threshold, "ProductId"])
    assert 10 <= len(results) < 20


def test_colour_weight_one_ranks_by_colour(index):
    results = helpers.similar_products(index, "13683", k=10, colour_weight=1.0)
    assert np.allclose(results["similarity"], results["colour_similarity"])
    assert (np.diff(results["colour_similarity"]) <= 1e-9).all()


def test_each_result_explains_why(index):
    results = helpers.similar_products(index, "13683", k=5)
    assert results["why"].str.len().gt(0).all()
    same_type = results["ProductType"] == "Sports Shoes"
    assert results.loc[same_type, "why"].str.contains("same ProductType Sports Shoes").all()


@pytest.mark.parametrize("k", [0, -1, 2.5, "three", True, 1000])
def test_bad_k_is_refused_with_the_allowed_range(index, k):
    with pytest.raises(helpers.SearchError, match="k must be"):
        helpers.similar_products(index, "13683", k=k)


def test_k_given_as_text_or_float_whole_number_is_accepted(index):
    assert len(helpers.similar_products(index, "13683", k="3")) == 3
    assert len(helpers.similar_products(index, "13683", k=4.0)) == 4


def test_k_larger_than_the_candidates_returns_them_all(index):
    results = helpers.similar_products(index, "13683", k=helpers.MAX_RESULTS, subcategory="Flip Flops")
    assert len(results) == index.catalog.query("Gender == 'Men' and SubCategory == 'Flip Flops'").shape[0] < helpers.MAX_RESULTS


def test_ids_as_int_or_with_spaces_are_the_same_product(index):
    expected = list(helpers.similar_products(index, "13683")["ProductId"])
    assert list(helpers.similar_products(index, 13683)["ProductId"]) == expected
    assert list(helpers.similar_products(index, " 13683 ")["ProductId"]) == expected


def test_unknown_id_and_unknown_filter_value_are_explained(index):
    with pytest.raises(KeyError, match="not in the catalogue"):
        helpers.similar_products(index, "1")
    with pytest.raises(helpers.SearchError, match="No product has Colour 'Purpel'"):
        helpers.similar_products(index, "13683", colour="Purpel")


def test_filters_that_match_nothing_give_an_empty_result(index):
    assert helpers.similar_products(index, "13683", subcategory="Dress").empty  # no dresses for men


def test_non_image_upload_is_refused(index):
    with pytest.raises(helpers.ImageError, match="not an image"):
        helpers.similar_to_image(index, b"plain text")


def test_precomputed_pairs_answer_exactly_like_the_matrix_product(index):
    assert index.pair_scores is not None  # the catalogue is small enough to keep every pair
    computed = helpers.dataclasses.replace(index, pair_scores=None)
    for product_id in index.catalog["ProductId"].iloc[::211]:
        for options in ({}, {"colour_weight": 0.0}, {"colour_weight": 1.0, "k": 12}, {"usage": "Casual"}):
            fast = helpers.similar_products(index, product_id, **options)
            slow = helpers.similar_products(computed, product_id, **options)
            assert list(fast["ProductId"]) == list(slow["ProductId"])
            assert np.allclose(fast["similarity"], slow["similarity"], atol=1e-5)
