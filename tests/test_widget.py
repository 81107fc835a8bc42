"""The interactive recommender widget, driven from Python: it must show exactly what the engine ranks."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import html
import io
from html.parser import HTMLParser
from pathlib import Path

import ipywidgets
import numpy as np
import pandas as pd
import pytest
from engine_support import CountingNetwork
from PIL import Image

from fashion_lens.catalog import find_products
from fashion_lens.errors import SearchError
from fashion_lens.images import jpeg_bytes, thumbnail
from fashion_lens.index import DEFAULT_COLOUR_WEIGHT
from fashion_lens.search import similar_products, similar_to_image
from fashion_lens.widget import MAX_MATCHES, STATIC_THUMBNAIL, recommender_widget

PROJECT_DIR = Path(__file__).resolve().parents[1]


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
        assert card.image.value == jpeg_bytes(thumbnail(row["image_path"], widget.thumbnail_size))


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
    widget = recommender_widget(index)
    assert isinstance(widget, ipywidgets.VBox)
    assert "application/vnd.jupyter.widget-view+json" in widget._repr_mimebundle_()
    assert "fl-results" in widget.grid._dom_classes
    assert widget.results is None and widget.grid.children == ()
    assert (widget.k.min, widget.k.max) == (1, 20)
    assert widget.colour_weight.value == DEFAULT_COLOUR_WEIGHT
    assert widget.upload.accept == ".jpg,.jpeg,.png,.heic,.heif"  # HEIC: to be told how to convert it
    assert set(widget.colour.options) == {"any", *index.catalog["Colour"]}
    with pytest.raises(SearchError, match="at most 20 results"):
        recommender_widget(index, k=21)


def test_search_lists_products_of_the_chosen_gender_whose_title_matches(index):
    widget = recommender_widget(index)
    widget.gender.value = "Girls"
    widget.search.value = "TOP"
    listed = [option for option in widget.matches.options if option[1]]  # after the prompt
    girls = index.catalog[index.catalog["Gender"] == "Girls"]
    expected = find_products(girls, "top", limit=MAX_MATCHES)
    assert [pid for _, pid in listed] == expected["ProductId"].tolist()
    assert listed and all("top" in label.lower() for label, _ in listed)
    assert widget.matches.value == "" and widget.results is None  # listing does not query yet


def test_choosing_a_searched_product_shows_exactly_the_engine_results(index, product):
    widget = recommender_widget(index)
    widget.gender.value = product["Gender"]
    widget.search.value = product["ProductTitle"][:-3].lower()
    assert product["ProductId"] in [pid for _, pid in widget.matches.options]
    widget.matches.value = product["ProductId"]

    assert widget.query.product_id == product["ProductId"]
    assert_shows(widget, similar_products(index, product["ProductId"], k=widget.k.value))
    assert widget.query_image.value == jpeg_bytes(thumbnail(product["image_path"], widget.thumbnail_size))
    assert html.escape(product["ProductTitle"]) in widget.query_caption.value
    assert widget.message.value == ""


def test_typing_a_product_id_queries_it(index, product):
    widget = recommender_widget(index)
    widget.product_id.value = f" {product['ProductId']} "
    assert_shows(widget, similar_products(index, product["ProductId"], k=widget.k.value))


def test_k_filters_colour_weight_and_genders_reach_the_engine(index, product):
    widget = recommender_widget(index, product_id=product["ProductId"])
    widget.k.value = 12
    assert_shows(widget, similar_products(index, product["ProductId"], k=12))
    widget.colour_weight.value = 0.0
    assert_shows(widget, similar_products(index, product["ProductId"], k=12, colour_weight=0.0))

    widget.subcategory.value = product["SubCategory"]
    widget.usage.value = product["Usage"]
    expected = similar_products(index, product["ProductId"], k=12, colour_weight=0.0,
                                        subcategory=product["SubCategory"], usage=product["Usage"])
    assert_shows(widget, expected)
    assert set(widget.results["SubCategory"]) == {product["SubCategory"]}
    assert set(widget.results["Usage"]) == {product["Usage"]}

    widget.subcategory.value = "any"
    widget.usage.value = "any"
    widget.colour.value = "White"
    widget.across_genders.value = True
    expected = similar_products(index, product["ProductId"], k=12, colour_weight=0.0,
                                        colour="White", across_genders=True)
    assert_shows(widget, expected)
    assert set(widget.results["Colour"]) == {"White"}


def test_clicking_a_result_makes_it_the_query_and_back_restores_the_previous_one(index, product):
    widget = recommender_widget(index, product_id=product["ProductId"], k=8)
    first = widget.results.copy()
    assert widget.back_button.disabled

    clicked = shown_cards(widget)[2]
    clicked_id = clicked.product_id
    clicked.button.click()
    assert widget.query.product_id == clicked_id
    assert_shows(widget, similar_products(index, clicked_id, k=8))
    assert not widget.back_button.disabled

    shown_cards(widget)[0].button.click()
    assert len(widget.history) == 2
    widget.back_button.click()
    assert widget.query.product_id == clicked_id
    widget.back_button.click()
    assert widget.query.product_id == product["ProductId"]
    assert_shows(widget, first)
    assert widget.back_button.disabled


def test_uploaded_catalogue_photo_finds_that_product_first_and_runs_the_network_once(index, product):
    network = CountingNetwork()
    index = dataclasses.replace(index, network=network)
    photo = open(product["image_path"], "rb").read()
    widget = recommender_widget(index, k=5)
    widget.gender.value = product["Gender"]
    upload(widget, "my photo.jpg", photo)

    assert widget.message.value == ""
    assert widget.query.product_id is None and widget.query.photo_name == "my photo.jpg"
    assert widget.results["ProductId"].iloc[0] == product["ProductId"]
    assert widget.results["similarity"].iloc[0] > 0.99
    assert widget.upload.value == ()  # cleared, so the same file can be chosen again
    assert max(Image.open(io.BytesIO(widget.query_image.value)).size) == widget.thumbnail_size
    assert network.calls == [1]

    widget.k.value = 9
    widget.colour.value = product["Colour"]
    assert network.calls == [1]  # new settings re-rank the stored descriptor
    expected = similar_to_image(index, photo, k=9, gender=product["Gender"], colour=product["Colour"])
    pd.testing.assert_frame_equal(widget.results, expected, rtol=1e-4)
    assert [card.product_id for card in shown_cards(widget)] == expected["ProductId"].tolist()

    other = "Men" if product["Gender"] != "Men" else "Women"
    widget.colour.value = "any"
    widget.gender.value = other  # the photo is searched again, among that gender's products
    assert set(widget.results["Gender"]) == {other} and len(widget.results) == 9
    assert network.calls == [1, 1]  # only similar_to_image above ran the network again


def test_uploaded_duplicate_photo_finds_a_byte_identical_product_first(index):
    catalog = index.catalog
    copies = catalog[catalog["is_duplicate"]]
    duplicate = copies.iloc[0]
    widget = recommender_widget(index, k=3)
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
    "words instead of an id": (lambda widget, index: setattr(widget.product_id, "value", "blue shirt"),
                               "ProductId 'blue shirt' is not in the catalogue"),
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
    widget = recommender_widget(index, product_id=product["ProductId"])
    before = widget.results.copy()
    shown_before = [card.product_id for card in shown_cards(widget)]

    action(widget, index)  # must not raise

    assert html.escape(expected_message) in widget.message.value
    assert widget.query.product_id == product["ProductId"]
    pd.testing.assert_frame_equal(widget.results, before)
    assert [card.product_id for card in shown_cards(widget)] == shown_before


def test_after_a_filter_left_nothing_resetting_it_shows_results_again(index, product):
    widget = recommender_widget(index, product_id=product["ProductId"])
    widget.subcategory.value = _unused_value(index, product["Gender"], "SubCategory")
    assert "No product of" in widget.message.value
    widget.subcategory.value = "any"
    assert widget.message.value == ""
    assert_shows(widget, similar_products(index, product["ProductId"], k=widget.k.value))


# ---- fast: the widget over a hand-built index with drawn photos, no catalogue or weights --------

@pytest.fixture(scope="module")
def drawn_index(tmp_path_factory):
    """24 hand-built products, Men (even rows: Shoes, Black or Blue) and Women (odd rows: Sandal,
    White or Red), each with a small drawn JPEG of its colour."""
    from engine_support import hand_built_index

    return hand_built_index(count=24, seed=7, genders=("Men", "Women"), image_dir=tmp_path_factory.mktemp("photos"))


def _photo_network(index, product_id):
    """A network that sees `product_id` in every photo (its descriptor), counting the photos."""
    import numpy as np

    vector = index.vectors[index.positions[product_id]]
    return CountingNetwork(network=lambda pixels, recipe: np.repeat(vector[None], len(pixels), axis=0))


@pytest.mark.fast
def test_fast_the_widget_starts_empty_with_the_genders_and_values_of_the_index(drawn_index):
    widget = recommender_widget(drawn_index)
    assert isinstance(widget, ipywidgets.VBox)
    assert widget.query is None and widget.results is None and widget.grid.children == ()
    assert list(widget.gender.options) == ["Men", "Women"]  # only the genders that have products
    assert list(widget.colour.options) == ["any", "Black", "Blue", "Red", "White"]
    assert list(widget.subcategory.options) == ["any", "Sandal", "Shoes"]
    assert widget.k.value == 6 and widget.colour_weight.value == DEFAULT_COLOUR_WEIGHT
    assert "Choose a gender" in widget.message.value and "#b00020" not in widget.message.value  # a hint, not an error
    men = [pid for _, pid in widget.matches.options if pid]
    assert men == drawn_index.catalog.loc[drawn_index.catalog["Gender"] == "Men", "ProductId"].tolist()


@pytest.mark.fast
@pytest.mark.parametrize("k, message", [(21, "at most 20 results; got k=21"), (0, "k must be between 1 and 100"),
                                        ("many", "k must be a whole number")])
def test_fast_a_bad_k_for_the_widget_is_refused(drawn_index, k, message):
    with pytest.raises(SearchError, match=message):
        recommender_widget(drawn_index, k=k)


@pytest.mark.fast
def test_fast_query_product_shows_exactly_the_engine_results_with_photos(drawn_index):
    widget = recommender_widget(drawn_index, k=4)
    assert widget.query_product(" 1005 ")
    assert widget.query.product_id == "1005" and widget.gender.value == "Women"  # the product's own gender
    assert_shows(widget, similar_products(drawn_index, "1005", k=4))
    row = drawn_index.catalog.loc[drawn_index.positions["1005"]]
    assert widget.query_image.value == jpeg_bytes(thumbnail(row["image_path"], widget.thumbnail_size))
    assert "Product 1005" in widget.query_caption.value and "ProductId 1005 · Women" in widget.query_caption.value
    assert "4 products most similar to Product 1005 (1005)" in widget.summary.value
    assert widget.message.value == "" and widget.back_button.disabled


@pytest.mark.fast
def test_fast_typing_an_id_or_choosing_a_searched_product_queries_it(drawn_index):
    widget = recommender_widget(drawn_index)
    widget.product_id.value = "1008"
    assert_shows(widget, similar_products(drawn_index, "1008", k=6))
    widget.gender.value = "Women"
    widget.search.value = "product 101"
    assert [pid for _, pid in widget.matches.options if pid] == ["1011", "1013", "1015", "1017", "1019"]
    assert widget.query.product_id == "1008"  # listing does not query
    widget.matches.value = "1013"
    assert widget.query.product_id == "1013" and widget.history[-1].product_id == "1008"
    assert_shows(widget, similar_products(drawn_index, "1013", k=6))
    widget.search.value = "no such title"
    assert [pid for _, pid in widget.matches.options] == [""]
    assert "no Women product matches 'no such title'" in widget.matches.options[0][0]


@pytest.mark.fast
def test_fast_k_filters_weight_and_genders_reach_the_engine(drawn_index):
    widget = recommender_widget(drawn_index, product_id="1004", k=3)
    widget.k.value = 7
    assert_shows(widget, similar_products(drawn_index, "1004", k=7))
    widget.colour_weight.value = 0.0
    assert_shows(widget, similar_products(drawn_index, "1004", k=7, colour_weight=0.0))
    widget.colour.value = "Blue"
    expected = similar_products(drawn_index, "1004", k=7, colour_weight=0.0, colour="Blue")
    assert_shows(widget, expected)
    assert set(widget.results["Colour"]) == {"Blue"} and len(widget.results) == 6  # all 6 blue men's products, fewer than k
    widget.colour.value = "any"
    before = widget.results.copy()
    widget.usage.value = "Sports"  # only women's products are for sports
    assert "No product of Men has Usage Sports" in widget.message.value
    pd.testing.assert_frame_equal(widget.results, before)  # the previous results stay
    widget.across_genders.value = True
    assert widget.message.value == ""
    assert_shows(widget, similar_products(drawn_index, "1004", k=7, colour_weight=0.0, usage="Sports", across_genders=True))
    assert set(widget.results["Gender"]) == {"Women"}


@pytest.mark.fast
def test_fast_clicking_a_result_follows_it_and_back_returns(drawn_index):
    widget = recommender_widget(drawn_index, product_id="1000", k=5)
    first = widget.results.copy()
    followed = shown_cards(widget)[1].product_id
    shown_cards(widget)[1].button.click()
    assert widget.query.product_id == followed and not widget.back_button.disabled
    assert_shows(widget, similar_products(drawn_index, followed, k=5))
    widget.query_product(followed)  # asking for the same product again adds no history
    assert len(widget.history) == 1
    widget.back_button.click()
    assert widget.query.product_id == "1000" and widget.back_button.disabled
    assert_shows(widget, first)
    assert not widget.back() and "Nothing to go back to" in widget.message.value


@pytest.mark.fast
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_fast_bad_input_shows_a_message_and_keeps_the_previous_results(drawn_index, case):
    action, expected_message = BAD_INPUTS[case]
    widget = recommender_widget(drawn_index, product_id="1003")
    before = widget.results.copy()
    shown_before = [card.product_id for card in shown_cards(widget)]

    action(widget, drawn_index)  # must not raise

    assert html.escape(expected_message) in widget.message.value
    assert widget.query.product_id == "1003"
    pd.testing.assert_frame_equal(widget.results, before)
    assert [card.product_id for card in shown_cards(widget)] == shown_before


@pytest.mark.fast
def test_fast_an_uploaded_photo_runs_the_network_once_and_is_searched_in_the_chosen_gender(drawn_index):
    from fashion_lens.colour import colour_descriptor, colour_names
    from fashion_lens.index import describe_photo
    from fashion_lens.search import similar_to_query

    network = _photo_network(drawn_index, "1006")  # a men's product
    index = dataclasses.replace(drawn_index, network=network)
    row = index.catalog.loc[index.positions["1006"]]
    photo = open(row["image_path"], "rb").read()
    widget = recommender_widget(index, k=4)
    upload(widget, "my shoe.jpg", photo)

    assert widget.message.value == "" and network.calls == [1]
    assert widget.query.product_id is None and widget.query.photo_name == "my shoe.jpg"
    assert widget.upload.value == ()
    assert widget.results["ProductId"].iloc[0] == "1006" and set(widget.results["Gender"]) == {"Men"}
    description = describe_photo(dataclasses.replace(index, network=_photo_network(drawn_index, "1006")), photo)
    pd.testing.assert_frame_equal(widget.results, similar_to_query(index, description, 4, gender="Men"))
    names = colour_names(colour_descriptor(Image.open(io.BytesIO(photo)).convert("RGB")))
    assert f"colours: {', '.join(names)}" in widget.query_caption.value
    assert max(Image.open(io.BytesIO(widget.query_image.value)).size) == widget.thumbnail_size

    widget.k.value = 9
    widget.gender.value = "Women"
    assert network.calls == [1]  # new settings and another gender re-rank the stored description
    assert len(widget.results) == 9 and set(widget.results["Gender"]) == {"Women"}
    pd.testing.assert_frame_equal(widget.results, similar_to_query(index, description, 9, gender="Women"))
    before = widget.results.copy()
    upload(widget, "notes.png", b"not a photo")
    assert "notes.png is not an image" in widget.message.value and network.calls == [1]
    pd.testing.assert_frame_equal(widget.results, before)


# ---- the widget opens on a product, and leaves a static copy of its answer for viewers without a kernel ----

class _StaticCells(HTMLParser):
    """The cells of the widget's static copy (text/html): each cell's JPEG and its lines of text."""

    def __init__(self):
        super().__init__()
        self.cells: list[tuple[bytes, list[str]]] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "td":
            self.cells.append((b"", []))
        elif tag == "img" and self.cells:
            assert attrs["src"].startswith("data:image/jpeg;base64,")
            self.cells[-1] = (base64.b64decode(attrs["src"].split(",", 1)[1]), self.cells[-1][1])

    def handle_data(self, data):
        if self.cells and data.strip():
            self.cells[-1][1].append(data.strip())


def static_cells(bundle: dict) -> list[tuple[bytes, list[str]]]:
    parser = _StaticCells()
    parser.feed(bundle["text/html"])
    return parser.cells


def assert_static_copy_shows(widget, query_row, expected: pd.DataFrame, size: int = STATIC_THUMBNAIL):
    """The widget's display bundle holds the live view and a static copy of `expected`: the query, then
    each result in order, with its photo (a small JPEG) and its rank, ProductId, type, colour and similarity."""
    bundle = widget._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle  # the live widget, unchanged
    cells = static_cells(bundle)
    assert len(cells) == 1 + len(expected)
    rows = [query_row] + [row for _, row in expected.iterrows()]
    for (jpeg, _), row in zip(cells, rows):
        photo = Image.open(io.BytesIO(jpeg))
        assert photo.format == "JPEG" and max(photo.size) == size
        reference = np.asarray(thumbnail(row["image_path"], size), dtype=float)
        assert np.abs(np.asarray(photo.convert("RGB"), dtype=float) - reference).mean() < 8  # that product's photo
    assert cells[0][1] == ["QUERY", f"ProductId {query_row['ProductId']}",
                           f"{query_row['ProductType']}, {query_row['Colour']}"]
    for (_, lines), (_, row) in zip(cells[1:], expected.iterrows()):
        assert lines == [f"#{row['rank']} · ProductId {row['ProductId']}", f"{row['ProductType']}, {row['Colour']}",
                         f"similarity {row['similarity']:.3f}"]
    assert ", ".join(expected["ProductId"]) in bundle["text/plain"]


@pytest.mark.fast
def test_fast_the_widget_opens_on_the_given_product_with_its_answer_shown(drawn_index):
    widget = recommender_widget(drawn_index, "1005", k=4)
    assert widget.query.product_id == "1005" and widget.gender.value == "Women"
    assert_shows(widget, similar_products(drawn_index, "1005", k=4))
    assert widget.query_panel.layout.display == "flex"  # the query panel is shown, not hidden as before a query
    assert widget.query_image.value == jpeg_bytes(thumbnail(widget.index.catalog.loc[widget.index.positions["1005"],
                                                                                     "image_path"], 150))
    assert "4 products most similar to Product 1005 (1005)" in widget.summary.value
    assert widget.message.value == "" and widget.history == [] and widget.back_button.disabled


@pytest.mark.fast
def test_fast_the_displayed_widget_carries_a_static_copy_of_its_answer(drawn_index):
    widget = recommender_widget(drawn_index, "1004", k=8)  # two rows of results
    row = drawn_index.catalog.loc[drawn_index.positions["1004"]]
    assert_static_copy_shows(widget, row, similar_products(drawn_index, "1004", k=8))
    assert widget._repr_mimebundle_()["text/html"].count("<tr>") == 2
    shown_cards(widget)[0].button.click()  # the copy follows what is on screen when the widget is displayed
    followed = widget.query.product_id
    assert_static_copy_shows(widget, drawn_index.catalog.loc[drawn_index.positions[followed]],
                             similar_products(drawn_index, followed, k=8))
    photo = open(drawn_index.catalog.loc[drawn_index.positions["1006"], "image_path"], "rb").read()
    uploaded = recommender_widget(dataclasses.replace(drawn_index, network=_photo_network(drawn_index, "1006")), k=3)
    upload(uploaded, "my <shoe>.jpg", photo)
    cells = static_cells(uploaded._repr_mimebundle_())
    assert cells[0][1] == ["QUERY", "my <shoe>.jpg", "your photo"]  # the name escaped in the HTML, read back
    assert max(Image.open(io.BytesIO(cells[0][0])).size) == STATIC_THUMBNAIL and len(cells) == 4
    assert "your photo my <shoe>.jpg: " + ", ".join(uploaded.results["ProductId"]) in uploaded.static_text()


@pytest.mark.fast
def test_fast_a_widget_without_a_query_leaves_a_note_instead_of_a_blank(drawn_index):
    bundle = recommender_widget(drawn_index)._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert "run the notebook" in bundle["text/html"] and "<img" not in bundle["text/html"]
    assert "no product chosen yet" in bundle["text/plain"]


def test_a_notebook_exported_without_a_kernel_shows_the_static_copy_of_the_first_answer(index, tmp_path):
    """Executed for real (nbclient), exported by nbconvert's HTMLExporter. Without widget state in
    the notebook, nbconvert shows text/html (its WidgetsDataTypeFilter skips the widget view); with the
    state nbclient saves by default, it shows the widget view, which needs the widgets' JavaScript."""
    import nbformat
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter

    import helpers
    from run_notebooks import ensure_kernel

    setup = ("import helpers as h\n"
             "catalog = h.sample_catalog(h.load_catalog(), per_gender=6)\n"
             "index = h.build_index(catalog, h.extract_features(catalog, h.default_recipe(), progress=False))")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(setup),
                                               nbformat.v4.new_code_cell("h.recommender_widget(index, '8341', k=4)")])
    NotebookClient(notebook, kernel_name=ensure_kernel(), timeout=600,
                   resources={"metadata": {"path": str(PROJECT_DIR)}}).execute()
    output = notebook.cells[1].outputs[0]
    assert {"application/vnd.jupyter.widget-view+json", "text/html"} <= set(output["data"])

    sample = helpers.sample_catalog(helpers.load_catalog(), per_gender=6)
    small = helpers.build_index(sample, helpers.extract_features(sample, helpers.default_recipe(), progress=False))
    expected = similar_products(small, "8341", k=4)
    with_state, _ = HTMLExporter().from_notebook_node(notebook)
    assert 'type="application/vnd.jupyter.widget-view+json"' in with_state and "fl-static" not in with_state
    del notebook.metadata["widgets"]  # as a notebook saved without widget state (JupyterLab's default)
    page, _ = HTMLExporter().from_notebook_node(notebook)
    (tmp_path / "exported.html").write_text(page)
    assert "fl-static" in page and page.count("data:image/jpeg;base64,") == 1 + len(expected)
    shown = [line for _, lines in static_cells({"text/html": page[page.index('<div class="fl-static">'):]})
             for line in lines if line.startswith("#")]
    assert shown == [f"#{row['rank']} · ProductId {row['ProductId']}" for _, row in expected.iterrows()]
