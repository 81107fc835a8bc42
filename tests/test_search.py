"""Search over the real catalogue with real MobileNetV2 features."""

import dataclasses
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from fashion_lens.catalog import product_row
from fashion_lens.errors import ImageError, SearchError
from fashion_lens.index import product_query
from fashion_lens.search import MAX_RESULTS, similar_products, similar_to_image, similar_to_query

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
    query = product_row(index.catalog, product_id)
    results = similar_products(index, product_id, **options)
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
    results = similar_products(index, "13683", k=20)
    assert len(results) == 20 and results["ProductId"].is_unique


def test_reference_query_13683_returns_mens_shoes(index):
    results = similar_products(index, "13683", k=5)
    assert (results["Gender"] == "Men").all()
    assert (results["SubCategory"] == "Shoes").sum() >= 4
    assert {"rank", "ProductId", "ProductTitle", "SubCategory", "ProductType", "Colour", "Usage",
            "similarity", "image_path", "why"} <= set(results.columns)


def test_results_equal_a_brute_force_ranking(index):
    """The documented rule, from scratch: cosine in float64, rounded to 6 decimals, ties by ProductId."""
    position = index.positions["13683"]
    rows = index.gender_rows["Men"]
    scores = np.round(index.vectors[rows].astype(np.float64) @ index.vectors[position].astype(np.float64), 6)
    groups = index.groups[rows]
    scores[groups == index.groups[position]] = -np.inf
    ids = index.catalog["ProductId"].to_numpy()[rows]
    expected = sorted(zip(-scores, [(len(pid), pid) for pid in ids], ids))[:10]
    results = similar_products(index, "13683", k=10, colour_weight=0)
    assert list(results["ProductId"]) == [pid for _, _, pid in expected]
    assert np.allclose(results["similarity"], [-score for score, _, _ in expected], atol=1e-6)


def test_query_by_image_finds_the_product_itself_first(index):
    for product_id in ["13683", index.catalog["ProductId"].iloc[100], index.catalog["ProductId"].iloc[2000]]:
        row = product_row(index.catalog, product_id)
        with open(row["image_path"], "rb") as handle:
            results = similar_to_image(index, handle.read(), k=3, gender=row["Gender"])
        first = product_row(index.catalog, results["ProductId"].iloc[0])
        assert first["duplicate_group"] == row["duplicate_group"]
        assert results["similarity"].iloc[0] > 0.99


def test_duplicates_are_left_out_unless_asked_for(index):
    groups = index.catalog.groupby("duplicate_group")["ProductId"].apply(list)
    members = next(ids for ids in groups if len(ids) == 3)
    default = similar_products(index, members[0], k=10)
    assert not set(members) & set(default["ProductId"])
    with_copies = similar_products(index, members[0], k=10, include_duplicates=True, colour_weight=0)
    assert set(members[1:]) <= set(with_copies["ProductId"].head(2))


def test_min_similarity_drops_weaker_results(index):
    unfiltered = similar_products(index, "13683", k=20)
    threshold = float(unfiltered["similarity"].iloc[9])
    results = similar_products(index, "13683", k=20, min_similarity=threshold)
    assert list(results["ProductId"]) == list(unfiltered.loc[unfiltered["similarity"] >= threshold, "ProductId"])
    assert 10 <= len(results) < 20


def test_colour_weight_one_ranks_by_colour(index):
    results = similar_products(index, "13683", k=10, colour_weight=1.0)
    assert np.allclose(results["similarity"], results["colour_similarity"])
    assert (np.diff(results["colour_similarity"]) <= 1e-9).all()


def test_each_result_explains_why(index):
    results = similar_products(index, "13683", k=5)
    assert results["why"].str.len().gt(0).all()
    same_type = results["ProductType"] == "Sports Shoes"
    assert results.loc[same_type, "why"].str.contains("same ProductType Sports Shoes").all()


@pytest.mark.parametrize("k", [0, -1, 2.5, "three", True, 1000])
def test_bad_k_is_refused_with_the_allowed_range(index, k):
    with pytest.raises(SearchError, match="k must be"):
        similar_products(index, "13683", k=k)


def test_k_given_as_text_or_float_whole_number_is_accepted(index):
    assert len(similar_products(index, "13683", k="3")) == 3
    assert len(similar_products(index, "13683", k=4.0)) == 4


def test_k_larger_than_the_candidates_returns_them_all(index):
    results = similar_products(index, "13683", k=MAX_RESULTS, subcategory="Flip Flops")
    assert len(results) == index.catalog.query("Gender == 'Men' and SubCategory == 'Flip Flops'").shape[0] < MAX_RESULTS


def test_ids_as_int_or_with_spaces_are_the_same_product(index):
    expected = list(similar_products(index, "13683")["ProductId"])
    assert list(similar_products(index, 13683)["ProductId"]) == expected
    assert list(similar_products(index, " 13683 ")["ProductId"]) == expected


def test_unknown_id_and_unknown_filter_value_are_explained(index):
    with pytest.raises(KeyError, match="not in the catalogue"):
        similar_products(index, "1")
    with pytest.raises(SearchError, match="No product has Colour 'Purpel'"):
        similar_products(index, "13683", colour="Purpel")


def test_filters_that_match_nothing_give_an_empty_result(index):
    assert similar_products(index, "13683", subcategory="Dress").empty  # no dresses for men


def test_non_image_upload_is_refused(index):
    with pytest.raises(ImageError, match="not an image"):
        similar_to_image(index, b"plain text")


def test_precomputed_pairs_answer_exactly_like_the_matrix_product(index):
    assert index.pair_scores is not None  # the catalogue is small enough to keep every pair
    computed = dataclasses.replace(index, pair_scores=None)
    for product_id in index.catalog["ProductId"].iloc[::23]:
        for options in ({}, {"colour_weight": 0.0}, {"colour_weight": 1.0, "k": 12}, {"usage": "Casual"}):
            fast = similar_products(index, product_id, **options)
            slow = similar_products(computed, product_id, **options)
            assert list(fast["ProductId"]) == list(slow["ProductId"]), (product_id, options)
            assert np.array_equal(fast["similarity"], slow["similarity"]), (product_id, options)


# ---- fast: a hand-built index (random unit vectors, made-up labels), no catalogue or weights ----

@pytest.fixture(scope="module")
def hand_index():
    """40 products, all Men: every label combination occurs."""
    from engine_support import hand_built_index

    return hand_built_index(count=40, seed=3)


@pytest.fixture(scope="module")
def gendered_index():
    """40 products alternating Men (even rows: Shoes, Black or Blue) and Women (odd rows: Sandal, White or Red)."""
    from engine_support import hand_built_index

    return hand_built_index(count=40, seed=5, genders=("Men", "Women"))


def _brute_force(index, product_id, k, colour_weight, rows=None, keep=None, include_duplicates=False):
    """The documented rule from scratch: (1 - w) * cosine + w * colour dot product in float64, rounded to
    6 decimals, best first, equal scores by ProductId as a number; the query (and its copies) left out."""
    position = index.positions[product_id]
    catalog = index.catalog
    rows = np.arange(len(index)) if rows is None else rows
    if keep is not None:
        rows = rows[keep(catalog.iloc[rows])]
    own_group = catalog.at[position, "duplicate_group"]
    rows = [row for row in rows if row != position and (include_duplicates or catalog.at[row, "duplicate_group"] != own_group)]
    vectors, colours = index.vectors.astype(np.float64), index.colours.astype(np.float64)
    scores = {row: round((1 - colour_weight) * float(vectors[row] @ vectors[position])
                         + colour_weight * float(colours[row] @ colours[position]), 6) for row in rows}
    ranked = sorted(rows, key=lambda row: (-scores[row], int(catalog.at[row, "ProductId"])))[:k]
    return [catalog.at[row, "ProductId"] for row in ranked], [scores[row] for row in ranked]


def _same_gender_rows(index, product_id):
    gender = index.catalog.at[index.positions[product_id], "Gender"]
    return np.flatnonzero(index.catalog["Gender"].to_numpy() == gender)


@pytest.mark.fast
@pytest.mark.parametrize("colour_weight", [0.0, 0.4, 1.0])
def test_fast_results_follow_the_documented_ranking_rule(gendered_index, colour_weight):
    for product_id in gendered_index.catalog["ProductId"].iloc[::4]:
        results = similar_products(gendered_index, product_id, k=7, colour_weight=colour_weight)
        ids, scores = _brute_force(gendered_index, product_id, 7, colour_weight,
                                   rows=_same_gender_rows(gendered_index, product_id))
        assert results["ProductId"].tolist() == ids, product_id
        assert np.allclose(results["similarity"], scores, atol=1e-6)
        assert results["rank"].tolist() == list(range(1, 8))
        visual_part = (1 - colour_weight) * results["visual_similarity"] + colour_weight * results["colour_similarity"]
        assert np.allclose(results["similarity"], visual_part, atol=1e-6)


@pytest.mark.fast
def test_fast_the_default_colour_weight_is_the_documented_one(hand_index):
    from fashion_lens.index import DEFAULT_COLOUR_WEIGHT

    default = similar_products(hand_index, "1000", k=10)
    assert default["ProductId"].tolist() == _brute_force(hand_index, "1000", 10, DEFAULT_COLOUR_WEIGHT)[0]
    assert default.equals(similar_products(hand_index, "1000", k=10, colour_weight=DEFAULT_COLOUR_WEIGHT))
    assert default.equals(similar_products(hand_index, "1000", k=10, colour_weight=str(DEFAULT_COLOUR_WEIGHT)))


@pytest.mark.fast
def test_fast_filters_keep_only_the_chosen_values(hand_index):
    from fashion_lens.search import SearchOptions

    catalog = hand_index.catalog
    cases = [
        ({"subcategory": "Sandal"}, lambda rows: rows["SubCategory"] == "Sandal"),
        ({"colour": ["Red", "Blue"]}, lambda rows: rows["Colour"].isin(["Red", "Blue"])),
        ({"product_type": ("Sandals",), "usage": "Sports"}, lambda rows: (rows["ProductType"] == "Sandals") & (rows["Usage"] == "Sports")),
        ({"colour": "White", "subcategory": "Sandal", "usage": "Sports"},
         lambda rows: (rows["Colour"] == "White") & (rows["SubCategory"] == "Sandal") & (rows["Usage"] == "Sports")),
        ({"colour": []}, lambda rows: np.ones(len(rows), dtype=bool)),  # an empty choice filters nothing
    ]
    for choices, keep in cases:
        results = similar_products(hand_index, "1001", k=6, colour_weight=0.3, **choices)
        expected = _brute_force(hand_index, "1001", 6, 0.3, keep=lambda rows, keep=keep: np.asarray(keep(rows)))[0]
        assert results["ProductId"].tolist() == expected, choices
        assert len(results) > 0 and keep(catalog.set_index("ProductId").loc[results["ProductId"]]).all(), choices
    with_options = similar_products(hand_index, "1001", k=6, options=SearchOptions(colour="Red", usage="Casual"), usage="Sports")
    assert set(with_options["Colour"]) == {"Red"} and set(with_options["Usage"]) == {"Sports"}  # a keyword beats options


@pytest.mark.fast
def test_fast_filters_that_match_nothing_give_an_empty_result_with_the_usual_columns(gendered_index):
    full = similar_products(gendered_index, "1000", k=5)
    for choices in ({"subcategory": "Sandal"}, {"colour": "Red"}):  # only the women's products have these
        results = similar_products(gendered_index, "1000", k=5, **choices)
        assert results.empty and list(results.columns) == list(full.columns)
        across = similar_products(gendered_index, "1000", k=5, across_genders=True, **choices)
        assert len(across) == 5 and set(across["Gender"]) == {"Women"}


@pytest.mark.fast
def test_fast_a_bad_filter_value_or_option_is_explained(hand_index):
    with pytest.raises(SearchError, match="No product has Colour 'Purple'; choose from Black, Blue, Red, White"):
        similar_products(hand_index, "1000", colour="Purple")
    with pytest.raises(SearchError, match="No product has SubCategory 'Boots'"):
        similar_products(hand_index, "1000", subcategory=["Shoes", "Boots"])
    with pytest.raises(SearchError, match="The Usage filter takes a value or a list of values, got 42"):
        similar_products(hand_index, "1000", usage=42)
    with pytest.raises(SearchError, match="Unknown search option\\(s\\) colur; the options are subcategory"):
        similar_products(hand_index, "1000", colur="Red")


@pytest.mark.fast
@pytest.mark.parametrize("choice, message", [
    ({"colour": 3}, "The Colour filter takes a value or a list of values, got 3 (int): give one Colour as text"),
    ({"colour": [3]}, "The Colour filter's values must be text (a catalogue's Colour), got 3."),
    ({"colour": [["Black"]]}, "The Colour filter's values must be text (a catalogue's Colour), got ['Black']."),
    ({"usage": ["Casual", None]}, "The Usage filter's values must be text (a catalogue's Usage), got None."),
    ({"product_type": {"Sandals": 1}}, "The ProductType filter takes a value or a list of values, got {'Sandals': 1}"),
    ({"colour": b"Black"}, "The Colour filter takes a value or a list of values, got b'Black' (bytes)"),
    ({"across_genders": "no"}, "across_genders must be True or False, got 'no'."),
    ({"include_duplicates": 1}, "include_duplicates must be True or False, got 1."),
    ({"colour_weight": "high"}, "colour_weight (0 = pure visual, 1 = pure colour) must be a number, got 'high'."),
    ({"colour_weight": [0.2, 0.3]}, "colour_weight (0 = pure visual, 1 = pure colour) must be a number, got [0.2, 0.3]."),
])
def test_fast_a_filter_option_or_weight_of_the_wrong_type_gets_a_message_not_a_raw_error(hand_index, choice, message):
    with pytest.raises(SearchError, match=re.escape(message)):
        similar_products(hand_index, "1000", **choice)
    if "across_genders" not in choice and "include_duplicates" not in choice:  # photo queries take the same checks
        with pytest.raises(SearchError, match=re.escape(message)):
            similar_to_query(hand_index, product_query(hand_index, 0), **choice)


@pytest.mark.fast
def test_fast_filter_values_may_come_as_a_tuple_set_or_array(hand_index):
    expected = similar_products(hand_index, "1000", k=10, colour=["Black", "Red"])["ProductId"].tolist()
    for chosen in (("Black", "Red"), {"Black", "Red"}, np.array(["Black", "Red"])):
        assert similar_products(hand_index, "1000", k=10, colour=chosen)["ProductId"].tolist() == expected


@pytest.mark.fast
@pytest.mark.parametrize("k", [0, -1, 101, 2.5, "three", "", True, None, [3]])
def test_fast_a_bad_k_is_refused_with_a_message(hand_index, k):
    with pytest.raises(SearchError, match="k must be (a whole number of results|between 1 and 100)"):
        similar_products(hand_index, "1000", k=k)


@pytest.mark.fast
def test_fast_k_as_text_float_or_numpy_integer_and_k_beyond_the_candidates(hand_index, gendered_index):
    for k, count in (("3", 3), (" 4 ", 4), (5.0, 5), (np.int64(6), 6), (1, 1), (MAX_RESULTS, 39)):
        assert len(similar_products(hand_index, "1000", k=k)) == count, k
    assert len(similar_products(gendered_index, "1000", k=MAX_RESULTS)) == 19  # the other 19 men
    assert len(similar_products(gendered_index, "1000", k=MAX_RESULTS, across_genders=True)) == 39


@pytest.mark.fast
@pytest.mark.parametrize("colour_weight, message", [
    ("heavy", "must be a number, got 'heavy'"), ([0.3], "must be a number"), (True, "must be a number, got True"),
    (-0.1, "must be between 0.0 and 1.0, got -0.1"), (1.5, "must be between 0.0 and 1.0, got 1.5"),
    (float("nan"), "must be between 0.0 and 1.0"), (float("inf"), "must be between 0.0 and 1.0"),
])
def test_fast_a_bad_colour_weight_is_refused_with_a_message(hand_index, colour_weight, message):
    with pytest.raises(SearchError, match="colour_weight \\(0 = pure visual, 1 = pure colour\\) " + message.replace("(", "\\(")):
        similar_products(hand_index, "1000", colour_weight=colour_weight)


@pytest.mark.fast
def test_fast_an_unknown_product_id_is_explained_with_close_ids(hand_index):
    with pytest.raises(KeyError, match="ProductId '10399' is not in the catalogue. Close ids: 1039."):
        similar_products(hand_index, "10399")
    with pytest.raises(KeyError, match="ProductId '5' is not in the catalogue. Search by title to find an id."):
        similar_products(hand_index, 5)
    with pytest.raises(KeyError, match="ProductId 'shoe' is not in the catalogue. Search by title"):
        similar_products(hand_index, "shoe")  # ids are any text: not a wrong kind of id, just not there
    with pytest.raises(KeyError, match="An empty text is not a ProductId"):
        similar_products(hand_index, "  ")
    assert similar_products(hand_index, 1007).equals(similar_products(hand_index, " 1007 "))


@pytest.mark.fast
def test_fast_min_similarity_keeps_the_head_of_the_list_above_it(hand_index):
    unfiltered = similar_products(hand_index, "1000", k=20, colour_weight=0.5)
    threshold = float(unfiltered["similarity"].iloc[6])
    results = similar_products(hand_index, "1000", k=20, colour_weight=0.5, min_similarity=threshold)
    assert results["ProductId"].tolist() == unfiltered.loc[unfiltered["similarity"] >= threshold, "ProductId"].tolist()
    assert 7 <= len(results) < 20 and results["rank"].tolist() == list(range(1, len(results) + 1))
    assert similar_products(hand_index, "1000", k=20, colour_weight=0.5, min_similarity=str(threshold)).equals(results)
    assert similar_products(hand_index, "1000", k=20, min_similarity=1.5).empty
    with pytest.raises(SearchError, match="min_similarity must be a number, got 'high'"):
        similar_products(hand_index, "1000", min_similarity="high")


@pytest.mark.fast
def test_fast_a_min_similarity_that_is_not_finite_gets_a_sensible_message(hand_index):
    with pytest.raises(SearchError) as raised:
        similar_products(hand_index, "1000", min_similarity=float("nan"))
    assert "None" not in str(raised.value)


@pytest.mark.fast
def test_fast_a_product_query_searches_its_own_gender_unless_asked_across_genders(gendered_index):
    all_rows = np.arange(len(gendered_index))
    for product_id in ("1000", "1001", "1014", "1027"):
        gender = gendered_index.catalog.at[gendered_index.positions[product_id], "Gender"]
        within = similar_products(gendered_index, product_id, k=10, colour_weight=0.2)
        assert set(within["Gender"]) == {gender}
        assert within["ProductId"].tolist() == _brute_force(gendered_index, product_id, 10, 0.2,
                                                             rows=_same_gender_rows(gendered_index, product_id))[0]
        across = similar_products(gendered_index, product_id, k=10, colour_weight=0.2, across_genders=True)
        assert across["ProductId"].tolist() == _brute_force(gendered_index, product_id, 10, 0.2, rows=all_rows)[0]
        assert set(across["Gender"]) == {"Men", "Women"}  # random vectors: both genders among the ten


@pytest.mark.fast
def test_fast_the_query_and_the_copies_of_its_photo_are_left_out_unless_asked_for(gendered_index):
    from engine_support import with_duplicate_groups

    # 1002 and 1004 (men, like 1000) show 1000's very photo: same descriptors, one duplicate group
    vectors, colours = gendered_index.vectors.copy(), gendered_index.colours.copy()
    original = gendered_index.positions["1000"]
    for copy in ("1002", "1004"):
        vectors[gendered_index.positions[copy]] = vectors[original]
        colours[gendered_index.positions[copy]] = colours[original]
    index = with_duplicate_groups(dataclasses.replace(gendered_index, vectors=vectors, colours=colours),
                                  {"1002": "1000", "1004": "1000"})
    group = {"1000", "1002", "1004"}
    for product_id in sorted(group):
        results = similar_products(index, product_id, k=19)
        assert not group & set(results["ProductId"]), product_id
        assert len(results) == 17  # the 20 men less the query and its two copies
        with_copies = similar_products(index, product_id, k=19, include_duplicates=True, colour_weight=0)
        assert product_id not in set(with_copies["ProductId"])
        assert set(with_copies["ProductId"].head(2)) == group - {product_id}
        assert (with_copies["similarity"].head(2) > 0.999).all()
    assert similar_products(index, "1000", k=5, across_genders=True)["ProductId"].isin(group).sum() == 0


@pytest.mark.fast
def test_fast_why_names_the_shared_labels(hand_index):
    query = hand_index.catalog.set_index("ProductId").loc["1005"]
    results = similar_products(hand_index, "1005", k=15)
    for _, row in results.iterrows():
        for column in ("ProductType", "Colour", "Usage"):
            shared = f"{column} {row[column]}" in row["why"].split(";")[0]
            assert shared == (row[column] == query[column]), (row["ProductId"], column, row["why"])


@pytest.mark.fast
def test_fast_a_described_photo_searches_one_gender_or_all(gendered_index):
    from fashion_lens.index import Query
    from fashion_lens.search import similar_to_query

    position = gendered_index.positions["1003"]  # a women's product, as if photographed
    query = Query(gendered_index.vectors[position], gendered_index.colours[position])
    everyone = similar_to_query(gendered_index, query, k=40, colour_weight=0)
    assert len(everyone) == 40 and set(everyone["Gender"]) == {"Men", "Women"}
    assert everyone["ProductId"].iloc[0] == "1003" and everyone["similarity"].iloc[0] > 0.999  # a photo leaves nothing out
    men = similar_to_query(gendered_index, query, k=8, gender="Men", colour_weight=0)
    assert men["ProductId"].tolist() == everyone.loc[everyone["Gender"] == "Men", "ProductId"].head(8).tolist()
    with pytest.raises(SearchError, match="Unknown gender 'Unisex'; choose one of Men, Women, or None for the whole catalogue"):
        similar_to_query(gendered_index, query, gender="Unisex")
