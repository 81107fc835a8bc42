"""Photos as people take them, on the real catalogue with real MobileNetV2 features: stored sideways
with an EXIF orientation, on coloured or textured backgrounds, cut so that nothing can be told from
the background, too small, or saved as HEIC by an iPhone. Each case in the engine, the widget and
the app (Streamlit's AppTest). The photos are built here from catalogue photos, in memory."""

from __future__ import annotations

import dataclasses
import datetime
import html
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from fashion_lens.colour import colour_names
from fashion_lens.errors import ImageError
from fashion_lens.images import load_image, separate_product
from fashion_lens.index import describe_photo
from fashion_lens.search import UNSURE_COLOUR_SHARE, doubt_note, similar_to_image, similar_to_query
from fashion_lens.widget import recommender_widget

APP = Path(__file__).resolve().parents[1] / "app.py"
ORIENTATION = 0x0112  # the EXIF tag


# ---- photos built from catalogue photos ---------------------------------------------------------

def sideways(photo: Image.Image, orientation: int, fmt: str = "PNG") -> bytes:
    """`photo` as a phone stores it: the pixels turned, and an EXIF orientation that turns them back.
    PNG keeps the pixels exactly, so only the orientation differs from the original."""
    turn = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270, 3: Image.Transpose.ROTATE_180}[orientation]
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    buffer = io.BytesIO()
    photo.transpose(turn).save(buffer, fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def jpeg(photo: Image.Image) -> bytes:
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def backgrounds(size: tuple[int, int], seed: int = 0) -> dict[str, np.ndarray]:
    """A solid green, a noisy brown-grey texture and blue/yellow diagonal stripes, `size` (width, height)."""
    width, height = size
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    band = ((rows + cols) // 14) % 2 == 0
    return {
        "green": np.broadcast_to(np.array([50, 150, 60], np.uint8), (height, width, 3)).copy(),
        "noise": np.clip(rng.normal([150, 120, 90], 45, (height, width, 3)), 0, 255).astype(np.uint8),
        "stripes": np.where(band[..., None], np.array([60, 90, 170], np.uint8), np.array([235, 205, 90], np.uint8)),
    }


def composite(photo: Image.Image, background: np.ndarray, margin=(30, 40)) -> Image.Image:
    """The catalogue garment cut out of its white photo and pasted on `background`, with a margin."""
    from scipy import ndimage

    pixels = np.asarray(photo)
    mask = ndimage.binary_fill_holes(separate_product(photo).mask)
    mask = ndimage.binary_erosion(mask, iterations=1)  # no white fringe around the outline
    canvas = background.copy()
    region = canvas[margin[1]:margin[1] + photo.height, margin[0]:margin[0] + photo.width]
    region[mask] = pixels[mask]
    return Image.fromarray(canvas)


def first_product(index, gender: str, product_type: str, colour: str) -> pd.Series:
    """The first catalogue product of that kind shot whole on white (its outline clear of the frame)."""
    rows = index.catalog
    chosen = rows[(rows["Gender"] == gender) & (rows["ProductType"] == product_type) & (rows["Colour"] == colour)]
    for _, row in chosen.iterrows():
        separation = separate_product(load_image(row["image_path"]))
        mask = separation.mask
        edge = np.concatenate([mask[:3].ravel(), mask[-3:].ravel(), mask[:, :3].ravel(), mask[:, -3:].ravel()])
        if separation.method == "white" and edge.mean() < 0.01 and mask.mean() > 0.15:
            return row
    raise AssertionError(f"no {gender} {colour} {product_type} shot whole on white")


def rank_of(index, results: pd.DataFrame, product: pd.Series) -> int | None:
    """1-based place of the product (or a byte-identical copy of its photo) in the results."""
    groups = index.catalog.set_index("ProductId").loc[results["ProductId"], "duplicate_group"].to_numpy()
    places = np.flatnonzero(groups == product["duplicate_group"])
    return int(places[0]) + 1 if len(places) else None


GARMENTS = [("Boys", "Tshirts", "Red"), ("Boys", "Tshirts", "Yellow"), ("Girls", "Tops", "Pink")]


@pytest.fixture(scope="module")
def fabric_close_up() -> bytes:
    """A photo that is all fabric: stripes of two reds filling the frame, no product outline to find."""
    rows, cols = np.mgrid[0:320, 0:240]
    band = ((rows + cols) // 9) % 2 == 0
    pixels = np.where(band[..., None], np.array([200, 40, 40], np.uint8), np.array([120, 20, 30], np.uint8))
    return jpeg(Image.fromarray(pixels))


# ---- the engine ---------------------------------------------------------------------------------

@pytest.mark.parametrize("gender, orientation", [("Boys", 6), ("Girls", 8), ("Men", 6), ("Women", 3)])
def test_an_exif_rotated_photo_ranks_like_its_upright_original(index, gender, orientation):
    product = index.catalog.loc[index.gender_rows[gender].start + 11]
    upright = load_image(product["image_path"])
    stored = sideways(upright, orientation)
    assert Image.open(io.BytesIO(stored)).size != upright.size or orientation == 3  # stored turned
    assert np.array_equal(np.asarray(load_image(stored)), np.asarray(upright))  # read upright

    expected = similar_to_image(index, product["image_path"], k=5, gender=gender)
    found = similar_to_image(index, stored, k=5, gender=gender)
    assert found["ProductId"].tolist() == expected["ProductId"].tolist()
    assert np.allclose(found["similarity"], expected["similarity"])
    assert rank_of(index, found, product) == 1


def test_a_phone_jpeg_stored_sideways_finds_its_product_first(index):
    """As a phone writes it: a JPEG of the turned pixels (re-encoding moves near-ties, not the product)."""
    for gender in ("Boys", "Women"):
        product = index.catalog.loc[index.gender_rows[gender].start + 11]
        stored = sideways(load_image(product["image_path"]), 6, "JPEG")
        found = similar_to_image(index, stored, k=5, gender=gender)
        assert rank_of(index, found, product) == 1
        expected = similar_to_image(index, product["image_path"], k=5, gender=gender)["ProductId"].tolist()
        assert len(set(found["ProductId"]) & set(expected)) >= 4


@pytest.mark.parametrize("background", ["green", "noise", "stripes"])
@pytest.mark.parametrize("garment", GARMENTS, ids=["-".join(garment) for garment in GARMENTS])
def test_a_garment_on_a_coloured_or_textured_background_keeps_its_colours_and_finds_itself(index, garment, background):
    product = first_product(index, *garment)
    photo = load_image(product["image_path"])
    image = composite(photo, backgrounds((photo.width + 60, photo.height + 80))[background])
    query = describe_photo(index, image)

    assert query.doubt is None, query.doubt
    own_names = colour_names(index.colours[index.positions[product["ProductId"]]])
    assert colour_names(query.colour)[0] == own_names[0]
    assert set(colour_names(query.colour)) <= set(colour_names(index.colours[index.positions[product["ProductId"]]], top=3))
    results = similar_to_query(index, query, k=3, gender=product["Gender"])
    assert rank_of(index, results, product) is not None, results[["ProductId", "ProductTitle", "why"]]
    if background == "green":  # the background's colour is never given as a reason
        assert not any("green" in why for why in results["why"])


def test_a_photo_whose_product_cannot_be_told_from_its_background_says_so_and_leans_on_shape(index, fabric_close_up):
    query = describe_photo(index, fabric_close_up)
    assert query.doubt == "no product could be told apart from the background"
    results = similar_to_image(index, fabric_close_up, k=8, gender="Girls")
    assert all("your photo's colours are uncertain" in why and "both" not in why for why in results["why"])
    # the same ranking as the photo judged with a quarter of the colour weight
    sure = dataclasses.replace(query, doubt=None)
    lighter = similar_to_query(index, sure, k=8, gender="Girls", colour_weight=0.4 * UNSURE_COLOUR_SHARE)
    assert results["ProductId"].tolist() == lighter["ProductId"].tolist()
    assert np.allclose(results["similarity"], lighter["similarity"])
    assert results["ProductId"].tolist() != similar_to_query(index, sure, k=8, gender="Girls")["ProductId"].tolist()
    assert "Its colours are uncertain, so the ranking leans on shape" in doubt_note(query)


# ---- the widget ---------------------------------------------------------------------------------

def upload(widget, name: str, content: bytes):
    widget.upload.value = ({"name": name, "type": "image/jpeg", "size": len(content), "content": memoryview(content),
                            "last_modified": datetime.datetime.now(datetime.timezone.utc)},)


def test_the_widget_shows_and_searches_an_exif_rotated_upload_upright(index):
    product = index.catalog.loc[index.gender_rows["Boys"].start + 11]
    upright = load_image(product["image_path"])
    widget = recommender_widget(index, k=5)
    widget.gender.value = "Boys"
    upload(widget, "phone.png", sideways(upright, 6))
    assert widget.message.value == ""
    shown = Image.open(io.BytesIO(widget.query_image.value))
    assert shown.height > shown.width  # the portrait photo, upright
    assert widget.results["ProductId"].tolist() == similar_to_image(index, product["image_path"], k=5, gender="Boys")["ProductId"].tolist()


def test_the_widget_notes_a_photo_in_doubt(index, fabric_close_up):
    widget = recommender_widget(index, k=5)
    upload(widget, "fabric.jpg", fabric_close_up)
    note = doubt_note(describe_photo(index, fabric_close_up))
    assert html.escape(note) in widget.message.value
    assert "uncertain" in widget.results["why"].iloc[0]
    widget.query_product(index.catalog["ProductId"].iloc[0])  # a product query: the note goes
    assert widget.message.value == ""


def heic_bytes() -> bytes:
    return b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(range(256)) * 8


@pytest.mark.parametrize("name, content, expected", [
    ("IMG_0042.HEIC", heic_bytes(), "IMG_0042.HEIC is an HEIC (HEIF) photo"),
    ("icon.png", None, "icon.png is only 24x24 pixels: too small to show a product"),
])
def test_the_widget_explains_an_heic_or_tiny_upload_and_keeps_its_results(index, name, content, expected):
    content = content or _png(Image.new("RGB", (24, 24), (200, 30, 30)))
    widget = recommender_widget(index, product_id=index.catalog["ProductId"].iloc[0])
    before = widget.results.copy()
    upload(widget, name, content)
    assert html.escape(expected) in widget.message.value
    pd.testing.assert_frame_equal(widget.results, before)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


# ---- the app ------------------------------------------------------------------------------------

def start_app() -> AppTest:
    app = AppTest.from_file(str(APP), default_timeout=240).run()
    assert not app.exception, app.exception
    return app


def upload_to_app(app: AppTest, name: str, content: bytes) -> AppTest:
    app.radio(key="mode").set_value("Your photo").run()
    app.file_uploader(key="photo").upload(name, content, "image/jpeg").run()
    assert not app.exception, app.exception
    return app


def result_ids(app: AppTest) -> list[str]:
    return [caption.split(" · ")[0] for image in app.image for caption in image.captions][1:]


@pytest.mark.parametrize("name, content, expected", [
    ("IMG_0042.HEIC", heic_bytes(), "IMG_0042.HEIC is an HEIC (HEIF) photo, the format iPhones save by default"),
    ("icon.png", None, "icon.png is only 24x24 pixels: too small to show a product"),
])
def test_the_app_explains_an_heic_or_tiny_upload(features, name, content, expected):
    content = content or _png(Image.new("RGB", (24, 24), (200, 30, 30)))
    app = upload_to_app(start_app(), name, content)
    with pytest.raises(ImageError) as raised:
        load_image(content, name=name)
    assert [error.value for error in app.error] == [str(raised.value)]
    assert expected in app.error[0].value


def test_the_app_notes_a_photo_in_doubt_and_searches_an_exif_rotated_one_upright(features, index, fabric_close_up):
    app = upload_to_app(start_app(), "fabric.jpg", fabric_close_up)
    assert [warning.value for warning in app.main.warning] == [doubt_note(describe_photo(index, fabric_close_up))]

    product = index.catalog.loc[index.gender_rows["Girls"].start + 11]
    upright = load_image(product["image_path"])
    app.file_uploader(key="photo").upload("phone.png", sideways(upright, 8), "image/png").run()
    assert not app.exception and not app.main.warning
    assert result_ids(app) == similar_to_image(index, product["image_path"], k=5)["ProductId"].tolist()


def test_the_app_keeps_the_product_the_search_text_and_the_options_when_k_is_invalid(features, index):
    app = start_app()
    app.text_input(key="product_query").input("sports shoes").run()
    second = app.selectbox(key="title_match").options[1].rsplit(" · ", 1)[1]
    app.selectbox(key="title_match").set_value(second).run()
    app.slider(key="colour_weight").set_value(0.7).run()
    app.checkbox(key="across_genders").check().run()
    assert result_ids(app)[:1] and not app.error

    app.number_input(key="k").set_value(0).run()
    assert not app.exception
    assert len(app.error) == 1 and "between 1 and 20" in app.error[0].value
    assert app.text_input(key="product_query").value == "sports shoes"
    assert app.selectbox(key="title_match").value == second
    assert app.slider(key="colour_weight").value == 0.7 and app.checkbox(key="across_genders").value

    app.number_input(key="k").set_value(4).run()  # fixed: the same product and options, not the default product
    assert not app.error
    from fashion_lens.search import similar_products

    expected = similar_products(index, second, k=4, colour_weight=0.7, across_genders=True)
    assert result_ids(app) == expected["ProductId"].tolist()
