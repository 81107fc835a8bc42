"""Reading photos: every kind of file a user may hand over, and the square the network sees."""

import io

import numpy as np
import pytest
from PIL import Image

import helpers


@pytest.fixture
def photo(catalog):
    return Image.open(catalog["image_path"].iloc[0]).convert("RGB")


def _png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_catalogue_photo_loads_as_rgb_from_path_bytes_file_and_pil(catalog):
    path = catalog["image_path"].iloc[0]
    from_path = np.asarray(helpers.load_image(path))
    with open(path, "rb") as handle:
        data = handle.read()
    assert from_path.shape == (320, 240, 3)
    assert np.array_equal(from_path, np.asarray(helpers.load_image(data)))
    assert np.array_equal(from_path, np.asarray(helpers.load_image(io.BytesIO(data))))
    assert np.array_equal(from_path, np.asarray(helpers.load_image(Image.open(path))))


def test_transparent_png_becomes_white_where_transparent(photo):
    rgba = photo.convert("RGBA")
    alpha = np.full(rgba.size[::-1], 255, np.uint8)
    alpha[:10, :10] = 0
    rgba.putalpha(Image.fromarray(alpha))
    loaded = np.asarray(helpers.load_image(_png_bytes(rgba)))
    assert loaded.shape[2] == 3 and (loaded[:10, :10] == 255).all()


def test_grayscale_cmyk_and_16_bit_images_are_converted(photo):
    grey = helpers.load_image(_png_bytes(photo.convert("L")))
    assert grey.mode == "RGB"
    cmyk = io.BytesIO()
    photo.convert("CMYK").save(cmyk, "JPEG")
    assert helpers.load_image(cmyk.getvalue()).mode == "RGB"
    sixteen = Image.fromarray(np.asarray(photo.convert("L"), dtype=np.uint16) * 257)
    assert sixteen.mode.startswith("I")
    loaded = np.asarray(helpers.load_image(_png_bytes(sixteen)))
    assert loaded.shape[2] == 3
    assert abs(int(loaded.mean()) - int(np.asarray(photo.convert("L")).mean())) <= 2  # scaled, not clipped


def test_one_pixel_image_still_gives_a_network_input():
    tiny = Image.new("RGB", (1, 1), (200, 30, 30))
    square = helpers.to_square(helpers.load_image(_png_bytes(tiny)), "pad")
    assert square.shape == (224, 224, 3)


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"this is a text file, not a photo", "not an image"),
])
def test_non_images_get_a_clear_error(data, message):
    with pytest.raises(helpers.ImageError, match=message):
        helpers.load_image(data, name="upload.jpg")


def test_truncated_jpeg_is_reported_as_damaged(catalog):
    data = open(catalog["image_path"].iloc[0], "rb").read()
    with pytest.raises(helpers.ImageError, match="damaged or truncated"):
        helpers.load_image(data[: len(data) // 2])


def test_huge_image_is_refused_before_decoding(monkeypatch, photo):
    monkeypatch.setattr(helpers, "MAX_IMAGE_PIXELS", 100 * 100)
    with pytest.raises(helpers.ImageError, match="more than the 10,000 allowed"):
        helpers.load_image(_png_bytes(photo))


def test_missing_file_is_named(tmp_path):
    with pytest.raises(helpers.ImageError, match="does not exist"):
        helpers.load_image(tmp_path / "nope.jpg")


@pytest.mark.parametrize("geometry", helpers.GEOMETRIES)
def test_every_geometry_gives_a_224_square(photo, geometry):
    assert helpers.to_square(photo, geometry).shape == (224, 224, 3)


def test_pad_keeps_the_shape_with_white_sides_and_stretch_does_not(photo):
    padded = helpers.to_square(photo, "pad")
    # a 240x320 portrait scaled to 168x224: 28 white columns on each side
    assert (padded[:, :25] == 255).all() and (padded[:, -25:] == 255).all()
    stretched = helpers.to_square(photo, "stretch")
    assert not np.array_equal(stretched, padded)


def test_crop_fills_the_frame_with_the_product(photo):
    box = helpers.foreground_box(photo)
    assert box[2] - box[0] < photo.width or box[3] - box[1] < photo.height
    cropped = helpers.to_square(photo, "crop")
    assert (cropped < helpers.WHITE_THRESHOLD).any(axis=2).mean() > (helpers.to_square(photo, "pad") < helpers.WHITE_THRESHOLD).any(axis=2).mean()


def test_colour_descriptor_ignores_the_white_background(photo):
    wider = Image.new("RGB", (photo.width * 2, photo.height), (255, 255, 255))
    wider.paste(photo, (0, 0))
    a, b = helpers.colour_descriptor(photo), helpers.colour_descriptor(wider)
    assert float(a @ b) > 0.97
    assert np.isclose(np.linalg.norm(a), 1.0)
