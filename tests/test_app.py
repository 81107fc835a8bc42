"""The Streamlit app (app.py), driven by Streamlit's own test harness (AppTest) on the real
catalogue with the real MobileNetV2 ImageNet weights. What the page shows is compared with what
the engine in helpers.py answers for the same query."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from engine_support import imagenet_weights_downloadable
from streamlit.testing.v1 import AppTest

from fashion_lens.catalog import find_products, load_catalog, product_row
from fashion_lens.errors import CatalogError, ImageError
from fashion_lens.features import KERAS_WEIGHT_FILES, keras_cache_dir
from fashion_lens.images import load_image
from fashion_lens.index import Index, load_index
from fashion_lens.search import similar_products, similar_to_image
from fashion_lens.settings import get_settings

APP = Path(__file__).resolve().parents[1] / "app.py"
# Generous: a first upload builds the network on two shared cores; a normal run takes well under a second.
TIMEOUT = 240


def start_app() -> AppTest:
    app = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert not app.exception, app.exception
    return app


@pytest.fixture
def app(features) -> AppTest:
    """The app after its first run; `features` has already filled the feature cache it reads."""
    return start_app()


def captions(app: AppTest) -> list[str]:
    return [caption for image in app.image for caption in image.captions]


def shown_result_ids(app: AppTest) -> list[str]:
    """The ProductIds of the result photos, in page order (each caption starts with the id)."""
    return [caption.split(" · ")[0] for caption in captions(app)[1:]]


def messages(elements) -> list[str]:
    return [element.value for element in elements]


def product_of_gender(index: Index, gender: str, offset: int = 0) -> str:
    return index.catalog.at[index.gender_rows[gender].start + offset, "ProductId"]


def search(app: AppTest, text: str) -> AppTest:
    app.text_input(key="product_query").input(text).run()
    assert not app.exception, app.exception
    return app


# ---------------------------------------------------------------------------- queries

def test_a_product_id_shows_exactly_k_results_in_the_engines_order(app, index):
    product_id = product_of_gender(index, "Women", 3)
    search(app, product_id)
    expected = similar_products(index, product_id, k=5)

    assert captions(app)[0] == f"Query · {product_id}"
    assert shown_result_ids(app) == expected["ProductId"].tolist()
    for caption, (_, row) in zip(captions(app)[1:], expected.iterrows(), strict=True):
        assert f"**#{row['rank']}** · similarity **{row['similarity']:.2f}**" in caption
        assert row["why"] in caption
    assert "Women products" in " ".join(messages(app.markdown))  # the gender follows the product
    assert not app.dataframe  # the table waits for its toggle
    app.toggle(key="results_as_table").set_value(True).run()
    assert app.dataframe[0].value["ProductId"].tolist() == expected["ProductId"].tolist()


def test_k_filters_colour_weight_and_all_genders_reach_the_engine(app, index):
    product_id = product_of_gender(index, "Boys", 5)
    usage = index.catalog.at[index.positions[product_id], "Usage"]
    app.number_input(key="k").set_value(12)
    app.slider(key="colour_weight").set_value(0.6)
    app.multiselect(key="filter_Usage").select(usage)
    app.checkbox(key="across_genders").check()
    app.toggle(key="results_as_table").set_value(True)
    search(app, product_id)
    expected = similar_products(index, product_id, k=12, colour_weight=0.6, usage=[usage], across_genders=True)

    assert len(expected) == 12
    assert shown_result_ids(app) == expected["ProductId"].tolist()
    assert app.dataframe[0].value["Usage"].eq(usage).all()


def test_words_of_a_title_offer_the_matching_products_to_pick_from(app, index):
    words = "sports shoes"
    matches = find_products(index.catalog, words, limit=50)
    assert len(matches) > 1, "the catalogue should have several sports shoes"
    search(app, words)
    assert app.selectbox(key="title_match").options == [
        f"{title} · {pid}" for pid, title in zip(matches["ProductId"], matches["ProductTitle"])]
    assert captions(app)[0] == f"Query · {matches['ProductId'].iloc[0]}"

    second = matches["ProductId"].iloc[1]
    app.selectbox(key="title_match").set_value(second).run()
    assert not app.exception
    assert captions(app)[0] == f"Query · {second}"
    assert shown_result_ids(app) == similar_products(index, second, k=5)["ProductId"].tolist()


def test_an_uploaded_catalogue_photo_finds_itself_first(app, index):
    product = index.catalog.loc[index.gender_rows["Men"].start + 7]
    photo = Path(product["image_path"]).read_bytes()
    app.radio(key="mode").set_value("Your photo").run()
    app.file_uploader(key="photo").upload("my photo.jpg", photo, "image/jpeg").run()
    assert not app.exception, app.exception

    assert captions(app)[0] == "Your photo · my photo.jpg"
    shown = shown_result_ids(app)
    assert len(shown) == 5
    first = index.catalog.loc[index.positions[shown[0]]]
    assert first["duplicate_group"] == product["duplicate_group"]  # itself, or a byte-identical copy
    assert shown == similar_to_image(index, photo, k=5)["ProductId"].tolist()


def test_the_sidebar_names_the_backbone_and_weights_in_use(app, settings):
    engine = " ".join(messages(app.sidebar.markdown) + messages(app.sidebar.caption))
    assert f"Backbone **{settings.backbone}**, weights **{settings.weights}**" in engine
    assert "mobilenet_v2" in engine


# ---------------------------------------------------------------------------- bad input

def test_an_empty_id_asks_for_one(app):
    search(app, "   ")
    assert any("Enter a ProductId" in text for text in messages(app.warning))
    assert captions(app) == []


def test_an_unknown_id_says_so_and_suggests_close_ids(app, index):
    unknown = str(max(map(int, index.catalog["ProductId"])) + 1)
    with pytest.raises(KeyError) as expected:
        product_row(index.catalog, unknown)
    search(app, unknown)
    assert messages(app.error) == [expected.value.args[0]]
    assert unknown in app.error[0].value
    assert captions(app) == []


def test_a_title_that_matches_nothing_says_so(app):
    search(app, "zzqx no such title")
    assert any("No product title contains" in text for text in messages(app.warning))
    assert captions(app) == []


@pytest.mark.parametrize("k", [0, 21, -3])
def test_k_out_of_range_says_the_allowed_range(app, k):
    app.number_input(key="k").set_value(k).run()
    assert not app.exception
    assert len(app.error) == 1
    assert "between 1 and 20" in app.error[0].value and f"you asked for {k}" in app.error[0].value
    assert captions(app) == []


@pytest.mark.parametrize("name, content", [("notes.jpg", b"this is a text file, not a photo"), ("empty.png", b"")])
def test_a_file_that_is_not_an_image_gets_the_image_error(app, name, content):
    with pytest.raises(ImageError) as expected:
        load_image(content, name=name)
    app.radio(key="mode").set_value("Your photo").run()
    app.file_uploader(key="photo").upload(name, content, "image/jpeg").run()
    assert not app.exception, app.exception
    without_addresses = lambda texts: [re.sub(r" at 0x[0-9a-f]+", "", text) for text in texts]  # noqa: E731
    assert without_addresses(messages(app.error)) == without_addresses([str(expected.value)])
    assert app.error[0].value.startswith(name)
    assert captions(app) == []


def test_filters_that_match_nothing_say_so(app, index):
    product_id = product_of_gender(index, "Girls")
    # a ProductType no Girls product has (footwear types belong to Men and Women)
    girls_types = set(index.catalog.loc[index.gender_rows["Girls"], "ProductType"])
    other_type = sorted(set(index.catalog["ProductType"]) - girls_types)[0]
    app.multiselect(key="filter_ProductType").select(other_type)
    search(app, product_id)
    assert messages(app.warning) == [
        f"No product matches the filters (ProductType {other_type}) among Girls products. Loosen the filters in the sidebar."]
    assert captions(app) == [f"Query · {product_id}"]


# ---------------------------------------------------------------------------- settings and loading

def test_a_missing_catalogue_folder_shows_the_catalogue_error(monkeypatch, tmp_path):
    missing = tmp_path / "no-catalogue-here"
    monkeypatch.setenv("FASHION_LENS_DATA", str(missing))
    with pytest.raises(CatalogError) as expected:
        load_catalog(missing)
    app = start_app()
    assert messages(app.error) == [str(expected.value)]
    assert "make data" in app.error[0].value


def test_an_unknown_backbone_shows_the_settings_error(monkeypatch):
    monkeypatch.setenv("FASHION_LENS_BACKBONE", "vgg16")
    app = start_app()
    assert len(app.error) == 1 and "Unknown backbone 'vgg16'" in app.error[0].value


def test_random_weights_are_refused_not_shown_as_recommendations(monkeypatch, tmp_path, catalog_dir):
    monkeypatch.setenv("FASHION_LENS_WEIGHTS", "random")
    monkeypatch.setenv("FASHION_LENS_ARTIFACTS", str(tmp_path))
    app = start_app()
    assert any("random" in text and "untrained" in text for text in messages(app.error))
    assert captions(app) == []
    assert "weights **random**" in " ".join(messages(app.sidebar.markdown))
    assert not (tmp_path / "features").exists()  # nothing computed with the untrained network


def _resnet50_weights_obtainable() -> bool:
    if (keras_cache_dir() / KERAS_WEIGHT_FILES["resnet50"]).is_file():
        return True
    return imagenet_weights_downloadable()


def test_unavailable_resnet50_weights_show_what_to_do(monkeypatch, tmp_path, catalog_dir):
    if _resnet50_weights_obtainable():
        pytest.skip("ResNet50 ImageNet weights can be had on this machine: the app would compute its features")
    monkeypatch.setenv("FASHION_LENS_BACKBONE", "resnet50")
    monkeypatch.setenv("FASHION_LENS_ARTIFACTS", str(tmp_path))
    app = start_app()
    assert len(app.error) == 1
    assert "ImageNet weights for resnet50" in app.error[0].value
    assert "FASHION_LENS_BACKBONE=mobilenet_v2" in app.error[0].value


def test_a_damaged_weights_file_shows_the_weights_error(monkeypatch, tmp_path, catalog_copy):
    damaged = tmp_path / "resnet50.h5"
    damaged.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 1024)  # the right signature, no weights inside
    monkeypatch.setenv("FASHION_LENS_DATA", str(catalog_copy))
    monkeypatch.setenv("FASHION_LENS_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("FASHION_LENS_BACKBONE", "resnet50")
    monkeypatch.setenv("FASHION_LENS_WEIGHTS", str(damaged))
    app = start_app()
    assert len(app.error) == 1
    assert app.error[0].value.startswith(f"Cannot load the resnet50 weights from {damaged}")
    assert not app.get("progress")  # the progress bar is taken down when loading fails


def test_missing_features_are_computed_then_the_app_answers(monkeypatch, tmp_path, catalog_copy, mobilenet_weights):
    monkeypatch.setenv("FASHION_LENS_DATA", str(catalog_copy))
    monkeypatch.setenv("FASHION_LENS_ARTIFACTS", str(tmp_path))
    app = start_app()

    manifests = list((tmp_path / "features").glob("*/manifest.json"))
    assert len(manifests) == 1
    assert sum(shard["count"] for shard in json.loads(manifests[0].read_text())["shards"]) == 24
    index = load_index(settings=get_settings(), progress=False)  # reads what the app computed
    query = index.catalog["ProductId"].iloc[0]
    assert captions(app)[0] == f"Query · {query}"
    assert shown_result_ids(app) == similar_products(index, query, k=5)["ProductId"].tolist()
    assert "24 products indexed" in " ".join(messages(app.sidebar.caption))

    app.number_input(key="k").set_value(3).run()  # later runs reuse the cached index, progress bar gone
    assert not app.exception, app.exception
    assert len(shown_result_ids(app)) == 3
    assert not app.get("progress")
