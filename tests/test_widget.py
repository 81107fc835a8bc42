"""The interactive recommender widget, driven from Python: it must show exactly what the engine ranks."""

from __future__ import annotations

import datetime
import html
import io

import ipywidgets
import pandas as pd
import pytest
from PIL import Image

import helpers


def shown_cards(widget):
    """The result cards on screen, in grid order."""
    by_box = {id(card.box): card for card in widget.cards}
    return [by_box[id(box)] for box in widget.grid.children]


def assert_shows(widget, expected: pd.DataFrame):
    """The widget holds `expected` and its grid shows those products, in order, with their details."""
    pd.testing.assert_frame_equal(widget.results, expected)
    cards = shown_cards(widget)
    assert [card.product_id for card in cards] == expected["ProductId"].tolist()
    for card, (_, row) in zip(cards, expected.iterrows()):
        assert html.escape(row["ProductTitle"]) in card.caption.value
        assert f"ProductId {row['ProductId']}" in card.caption.value
        assert f"similarity {row['similarity']:.3f}" in card.caption.value
        assert html.escape(row["why"]) in card.caption.value
        assert card.image.value == helpers.jpeg_bytes(helpers.thumbnail(row["image_path"], widget.thumbnail_size))


def upload(widget, name: str, content: bytes):
    """What the FileUpload widget holds after the browser sent a file (as its deserializer builds it)."""
    widget.upload.value = ({"name": name, "type": "image/jpeg", "size": len(content), "content": memoryview(content),
                            "last_modified": datetime.datetime.now(datetime.timezone.utc)},)


@pytest.fixture
def product(index):
    """A product with a unique photo and a distinctive title word (the first Boys shirt)."""
    rows = index.catalog
    shirts = rows[(rows["Gender"] == "Boys") & (rows["ProductType"] == "Shirts") & ~rows["is_duplicate"]
                  & (rows.groupby("duplicate_group")["ProductId"].transform("size") == 1)]
    return shirts.iloc[0]


def test_the_widget_is_a_displayable_container_with_classes_for_the_browser(index):
    widget = helpers.recommender_widget(index)
    assert isinstance(widget, ipywidgets.VBox)
    assert "application/vnd.jupyter.widget-view+json" in widget._repr_mimebundle_()
    assert "fl-results" in widget.grid._dom_classes
    assert widget.results is None and widget.grid.children == ()
    assert (widget.k.min, widget.k.max) == (1, 20)
    assert widget.colour_weight.value == helpers.DEFAULT_COLOUR_WEIGHT
    assert widget.upload.accept == ".jpg,.jpeg,.png"
    assert set(widget.colour.options) == {"any", *index.catalog["Colour"]}
    with pytest.raises(helpers.SearchError, match="at most 20 results"):
        helpers.recommender_widget(index, k=21)


def test_search_lists_products_of_the_chosen_gender_whose_title_matches(index):
    widget = helpers.recommender_widget(index)
    widget.gender.value = "Girls"
    widget.search.value = "TOP"
    listed = [option for option in widget.matches.options if option[1]]  # after the prompt
    girls = index.catalog[index.catalog["Gender"] == "Girls"]
    expected = helpers.find_products(girls, "top", limit=helpers.MAX_MATCHES)
    assert [pid for _, pid in listed] == expected["ProductId"].tolist()
    assert listed and all("top" in label.lower() for label, _ in listed)
    assert widget.matches.value == "" and widget.results is None  # listing does not query yet


def test_choosing_a_searched_product_shows_exactly_the_engine_results(index, product):
    widget = helpers.recommender_widget(index)
    widget.gender.value = product["Gender"]
    widget.search.value = product["ProductTitle"][:-3].lower()
    assert product["ProductId"] in [pid for _, pid in widget.matches.options]
    widget.matches.value = product["ProductId"]

    assert widget.query.product_id == product["ProductId"]
    assert_shows(widget, helpers.similar_products(index, product["ProductId"], k=widget.k.value))
    assert widget.query_image.value == helpers.jpeg_bytes(helpers.thumbnail(product["image_path"], widget.thumbnail_size))
    assert html.escape(product["ProductTitle"]) in widget.query_caption.value
    assert widget.message.value == ""


def test_typing_a_product_id_queries_it(index, product):
    widget = helpers.recommender_widget(index)
    widget.product_id.value = f" {product['ProductId']} "
    assert_shows(widget, helpers.similar_products(index, product["ProductId"], k=widget.k.value))


def test_k_filters_colour_weight_and_genders_reach_the_engine(index, product):
    widget = helpers.recommender_widget(index, product_id=product["ProductId"])
    widget.k.value = 12
    assert_shows(widget, helpers.similar_products(index, product["ProductId"], k=12))
    widget.colour_weight.value = 0.0
    assert_shows(widget, helpers.similar_products(index, product["ProductId"], k=12, colour_weight=0.0))

    widget.subcategory.value = product["SubCategory"]
    widget.usage.value = product["Usage"]
    expected = helpers.similar_products(index, product["ProductId"], k=12, colour_weight=0.0,
                                        subcategory=product["SubCategory"], usage=product["Usage"])
    assert_shows(widget, expected)
    assert set(widget.results["SubCategory"]) == {product["SubCategory"]}
    assert set(widget.results["Usage"]) == {product["Usage"]}

    widget.subcategory.value = "any"
    widget.usage.value = "any"
    widget.colour.value = "White"
    widget.across_genders.value = True
    expected = helpers.similar_products(index, product["ProductId"], k=12, colour_weight=0.0,
                                        colour="White", across_genders=True)
    assert_shows(widget, expected)
    assert set(widget.results["Colour"]) == {"White"}


def test_clicking_a_result_makes_it_the_query_and_back_restores_the_previous_one(index, product):
    widget = helpers.recommender_widget(index, product_id=product["ProductId"], k=8)
    first = widget.results.copy()
    assert widget.back_button.disabled

    clicked = shown_cards(widget)[2]
    clicked_id = clicked.product_id
    clicked.button.click()
    assert widget.query.product_id == clicked_id
    assert_shows(widget, helpers.similar_products(index, clicked_id, k=8))
    assert not widget.back_button.disabled

    shown_cards(widget)[0].button.click()
    assert len(widget.history) == 2
    widget.back_button.click()
    assert widget.query.product_id == clicked_id
    widget.back_button.click()
    assert widget.query.product_id == product["ProductId"]
    assert_shows(widget, first)
    assert widget.back_button.disabled


def test_uploaded_catalogue_photo_finds_that_product_first_and_runs_the_network_once(index, product, monkeypatch):
    calls = []
    real_run_network = helpers.run_network
    monkeypatch.setattr(helpers, "run_network", lambda *args, **kwargs: calls.append(1) or real_run_network(*args, **kwargs))
    photo = open(product["image_path"], "rb").read()
    widget = helpers.recommender_widget(index, k=5)
    widget.gender.value = product["Gender"]
    upload(widget, "my photo.jpg", photo)

    assert widget.message.value == ""
    assert widget.query.product_id is None and widget.query.photo_name == "my photo.jpg"
    assert widget.results["ProductId"].iloc[0] == product["ProductId"]
    assert widget.results["similarity"].iloc[0] > 0.99
    assert widget.upload.value == ()  # cleared, so the same file can be chosen again
    assert max(Image.open(io.BytesIO(widget.query_image.value)).size) == widget.thumbnail_size
    assert len(calls) == 1

    widget.k.value = 9
    widget.colour.value = product["Colour"]
    assert len(calls) == 1  # new settings re-rank the stored descriptor
    expected = helpers.similar_to_image(index, photo, k=9, gender=product["Gender"], colour=product["Colour"])
    pd.testing.assert_frame_equal(widget.results, expected, rtol=1e-4)
    assert [card.product_id for card in shown_cards(widget)] == expected["ProductId"].tolist()

    other = "Men" if product["Gender"] != "Men" else "Women"
    widget.colour.value = "any"
    widget.gender.value = other  # the photo is searched again, among that gender's products
    assert set(widget.results["Gender"]) == {other} and len(widget.results) == 9
    assert len(calls) == 2  # only similar_to_image above ran the network again


def test_uploaded_duplicate_photo_finds_a_byte_identical_product_first(index):
    catalog = index.catalog
    copies = catalog[catalog["is_duplicate"]]
    duplicate = copies.iloc[0]
    widget = helpers.recommender_widget(index, k=3)
    widget.gender.value = duplicate["Gender"]
    upload(widget, "copy.jpg", open(duplicate["image_path"], "rb").read())
    group = set(catalog.loc[catalog["duplicate_group"] == duplicate["duplicate_group"], "ProductId"])
    assert widget.results["ProductId"].iloc[0] in group


def _unused_value(index, gender, column):
    """A value of `column` that no product of `gender` has (so that filter leaves nothing)."""
    present = set(index.catalog.loc[index.catalog["Gender"] == gender, column])
    return sorted(set(index.catalog[column]) - present)[0]


BAD_INPUTS = {
    "unknown id": (lambda widget, index: setattr(widget.product_id, "value", "99999999"),
                   "ProductId '99999999' is not in the catalogue"),
    "id that is not digits": (lambda widget, index: setattr(widget.product_id, "value", "blue shirt"),
                              "'blue shirt' is not a ProductId"),
    "empty id": (lambda widget, index: (setattr(widget.product_id, "value", ""), widget.find_button.click()),
                 "Type a ProductId"),
    "empty upload": (lambda widget, index: upload(widget, "empty.jpg", b""), "empty.jpg is empty (0 bytes)"),
    "upload that is not an image": (lambda widget, index: upload(widget, "notes.png", b"shopping list: socks"),
                                    "notes.png is not an image"),
    "filters that leave nothing": (lambda widget, index: setattr(
        widget.subcategory, "value", _unused_value(index, widget.query.gender, "SubCategory")), "No product of"),
    "back with nothing before": (lambda widget, index: widget.back(), "Nothing to go back to"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_shows_a_message_and_keeps_the_previous_results(index, product, case):
    action, expected_message = BAD_INPUTS[case]
    widget = helpers.recommender_widget(index, product_id=product["ProductId"])
    before = widget.results.copy()
    shown_before = [card.product_id for card in shown_cards(widget)]

    action(widget, index)  # must not raise

    assert html.escape(expected_message) in widget.message.value
    assert widget.query.product_id == product["ProductId"]
    pd.testing.assert_frame_equal(widget.results, before)
    assert [card.product_id for card in shown_cards(widget)] == shown_before


def test_after_a_filter_left_nothing_resetting_it_shows_results_again(index, product):
    widget = helpers.recommender_widget(index, product_id=product["ProductId"])
    widget.subcategory.value = _unused_value(index, product["Gender"], "SubCategory")
    assert "No product of" in widget.message.value
    widget.subcategory.value = "any"
    assert widget.message.value == ""
    assert_shows(widget, helpers.similar_products(index, product["ProductId"], k=widget.k.value))
