"""Reading photos: every kind of file a user may hand over, and the square the network sees."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from fashion_lens.colour import colour_descriptor
from fashion_lens.errors import ImageError
from fashion_lens.images import (
    GEOMETRIES,
    WHITE_THRESHOLD,
    build_thumbnails,
    foreground_box,
    jpeg_bytes,
    load_image,
    stored_thumbnail,
    thumbnail,
    to_square,
)


@pytest.fixture
def photo(catalog):
    return Image.open(catalog["image_path"].iloc[0]).convert("RGB")


def _png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_catalogue_photo_loads_as_rgb_from_path_bytes_file_and_pil(catalog):
    path = catalog["image_path"].iloc[0]
    from_path = np.asarray(load_image(path))
    with open(path, "rb") as handle:
        data = handle.read()
    assert from_path.shape == (320, 240, 3)
    assert np.array_equal(from_path, np.asarray(load_image(data)))
    assert np.array_equal(from_path, np.asarray(load_image(io.BytesIO(data))))
    assert np.array_equal(from_path, np.asarray(load_image(Image.open(path))))


def test_transparent_png_becomes_white_where_transparent(photo):
    rgba = photo.convert("RGBA")
    alpha = np.full(rgba.size[::-1], 255, np.uint8)
    alpha[:10, :10] = 0
    rgba.putalpha(Image.fromarray(alpha))
    loaded = np.asarray(load_image(_png_bytes(rgba)))
    assert loaded.shape[2] == 3 and (loaded[:10, :10] == 255).all()


def test_grayscale_cmyk_and_16_bit_images_are_converted(photo):
    grey = load_image(_png_bytes(photo.convert("L")))
    assert grey.mode == "RGB"
    cmyk = io.BytesIO()
    photo.convert("CMYK").save(cmyk, "JPEG")
    assert load_image(cmyk.getvalue()).mode == "RGB"
    sixteen = Image.fromarray(np.asarray(photo.convert("L"), dtype=np.uint16) * 257)
    assert sixteen.mode.startswith("I")
    loaded = np.asarray(load_image(_png_bytes(sixteen)))
    assert loaded.shape[2] == 3
    assert abs(int(loaded.mean()) - int(np.asarray(photo.convert("L")).mean())) <= 2  # scaled, not clipped


def test_one_pixel_image_is_refused_as_too_small_yet_to_square_copes_with_it():
    tiny = Image.new("RGB", (1, 1), (200, 30, 30))
    with pytest.raises(ImageError, match="only 1x1 pixels: too small to show a product"):
        load_image(_png_bytes(tiny))
    square = to_square(load_image(_png_bytes(tiny), min_side=1), "pad")
    assert square.shape == (224, 224, 3)


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"this is a text file, not a photo", "not an image"),
])
def test_non_images_get_a_clear_error(data, message):
    with pytest.raises(ImageError, match=message):
        load_image(data, name="upload.jpg")


def test_truncated_jpeg_is_reported_as_damaged(catalog):
    data = open(catalog["image_path"].iloc[0], "rb").read()
    with pytest.raises(ImageError, match="damaged or truncated"):
        load_image(data[: len(data) // 2])


def test_huge_image_is_refused_before_decoding(photo):
    with pytest.raises(ImageError, match="more than the 10,000 allowed"):
        load_image(_png_bytes(photo), max_pixels=100 * 100)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ImageError, match="does not exist"):
        load_image(tmp_path / "nope.jpg")


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_every_geometry_gives_a_224_square(photo, geometry):
    assert to_square(photo, geometry).shape == (224, 224, 3)


def test_pad_keeps_the_shape_with_white_sides_and_stretch_does_not(photo):
    padded = to_square(photo, "pad")
    # a 240x320 portrait scaled to 168x224: 28 white columns on each side
    assert (padded[:, :25] == 255).all() and (padded[:, -25:] == 255).all()
    stretched = to_square(photo, "stretch")
    assert not np.array_equal(stretched, padded)


def test_crop_fills_the_frame_with_the_product(photo):
    box = foreground_box(photo)
    assert box[2] - box[0] < photo.width or box[3] - box[1] < photo.height
    cropped = to_square(photo, "crop")
    assert (cropped < WHITE_THRESHOLD).any(axis=2).mean() > (to_square(photo, "pad") < WHITE_THRESHOLD).any(axis=2).mean()


def test_colour_descriptor_ignores_the_white_background(photo):
    wider = Image.new("RGB", (photo.width * 2, photo.height), (255, 255, 255))
    wider.paste(photo, (0, 0))
    a, b = colour_descriptor(photo), colour_descriptor(wider)
    assert float(a @ b) > 0.97
    assert np.isclose(np.linalg.norm(a), 1.0)


# ---- fast: synthetic photos drawn here, no catalogue -------------------------------------------

RED = (210, 30, 40)
PRODUCT_BOX = (30, 50, 89, 129)  # the drawn product: columns 30..89, rows 50..129 (inclusive)


@pytest.fixture
def drawn_photo():
    """A 120x160 portrait, white, with a red rectangular product: exact edges, for lossless formats."""
    from PIL import ImageDraw

    image = Image.new("RGB", (120, 160), (255, 255, 255))
    ImageDraw.Draw(image).rectangle(PRODUCT_BOX, fill=RED)
    return image


def _encoded(image, fmt, **options):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.mark.fast
def test_fast_a_photo_loads_the_same_from_a_path_bytes_a_file_object_or_pil(drawn_photo, tmp_path):
    png = tmp_path / "photo.png"
    drawn_photo.save(png)
    expected = np.asarray(drawn_photo)
    for source in (png, str(png), png.read_bytes(), io.BytesIO(png.read_bytes()), Image.open(png), drawn_photo):
        loaded = load_image(source)
        assert loaded.mode == "RGB" and np.array_equal(np.asarray(loaded), expected), type(source)
    jpeg = tmp_path / "photo.jpg"
    drawn_photo.save(jpeg, quality=90)
    from_path = np.asarray(load_image(jpeg))
    assert from_path.shape == (160, 120, 3) and np.array_equal(from_path, np.asarray(load_image(jpeg.read_bytes())))
    assert np.abs(from_path.astype(int) - expected).mean() < 3  # JPEG, yet the same picture


@pytest.mark.fast
def test_fast_empty_files_and_uploads_are_refused_by_name(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty.jpg is empty \\(0 bytes\\)"):
        load_image(empty)
    with pytest.raises(ImageError, match="my upload is empty"):
        load_image(b"", name="my upload")
    with pytest.raises(ImageError, match="the upload is empty"):
        load_image(io.BytesIO(b""))


@pytest.mark.fast
def test_fast_a_file_that_is_not_an_image_is_refused_even_named_jpg(tmp_path):
    text = tmp_path / "shopping.jpg"
    text.write_text("socks, laces, polish")
    with pytest.raises(ImageError, match="shopping.jpg is not an image") as raised:
        load_image(text)
    assert "JPEG or PNG" in str(raised.value)
    with pytest.raises(ImageError, match="notes.png is not an image"):
        load_image(b"%PDF-1.4 not a photo", name="notes.png")


@pytest.mark.fast
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_fast_a_truncated_photo_is_reported_as_damaged(drawn_photo, fmt, tmp_path):
    data = _encoded(drawn_photo, fmt)
    assert load_image(data).size == (120, 160)  # whole, it loads
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="damaged or truncated"):
        load_image(path)
    with pytest.raises(ImageError, match="damaged or truncated"):
        load_image(data[: len(data) // 2])


@pytest.mark.fast
def test_fast_a_photo_with_more_pixels_than_allowed_is_refused(drawn_photo):
    data = _encoded(drawn_photo, "PNG")
    with pytest.raises(ImageError, match="is 120x160 pixels, more than the 19,199 allowed") as raised:
        load_image(data, max_pixels=120 * 160 - 1)
    assert "Resize" in str(raised.value)
    assert load_image(data, max_pixels=120 * 160).size == (120, 160)  # the limit itself is allowed


@pytest.mark.fast
def test_fast_a_decompression_bomb_is_refused_before_decoding():
    """A PNG whose header claims 100000x100000 pixels (10 gigapixels) and holds none of them."""
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    with pytest.raises(ImageError, match="too large|more than the"):
        load_image(bomb, name="bomb.png")


@pytest.mark.fast
def test_fast_transparent_pixels_become_white_and_half_transparent_ones_blend(drawn_photo):
    rgba = drawn_photo.convert("RGBA")
    alpha = np.full((160, 120), 255, np.uint8)
    alpha[60:80, 40:60] = 0      # inside the red product: a hole
    alpha[100:120, 40:60] = 128  # half see-through
    rgba.putalpha(Image.fromarray(alpha))
    loaded = np.asarray(load_image(_encoded(rgba, "PNG"))).astype(int)
    assert loaded.shape == (160, 120, 3)
    assert (loaded[60:80, 40:60] == 255).all()
    assert np.abs(loaded[100:120, 40:60] - (np.array(RED) * 128 + 255 * 127) / 255).max() <= 1
    assert (loaded[90, 40:60] == RED).all()  # opaque pixels keep their colour

    grey_alpha = Image.new("LA", (10, 10), (0, 0))  # black, fully transparent
    assert (np.asarray(load_image(_encoded(grey_alpha, "PNG"), min_side=1)) == 255).all()
    palette = drawn_photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    red_index = palette.getpixel((50, 70))
    transparent_red = _encoded(palette, "PNG", transparency=red_index)
    assert (np.asarray(load_image(transparent_red)) == 255).all()  # the red index was the see-through one


@pytest.mark.fast
def test_fast_16_bit_png_is_scaled_to_8_bits_not_clipped():
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (8, 1))
    image = Image.fromarray(ramp)
    assert image.mode == "I;16"
    loaded = np.asarray(load_image(_encoded(image, "PNG"), min_side=1))  # a strip: its size is beside the point
    assert loaded.shape == (8, 64, 3) and loaded.dtype == np.uint8
    assert np.abs(loaded[0, :, 0].astype(int) - np.round(np.linspace(0, 255, 64))).max() <= 1
    dark = Image.fromarray(np.full((8, 8), 200, np.uint16))  # 200 of 65535: nearly black, not level 200
    assert np.asarray(load_image(_encoded(dark, "PNG"), min_side=1)).max() <= 1


@pytest.mark.fast
@pytest.mark.parametrize("size", [(120, 160), (160, 120), (1, 1), (300, 40)])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_fast_every_geometry_gives_the_asked_square_of_uint8_rgb(geometry, size):
    from PIL import ImageDraw

    image = Image.new("RGB", size, (255, 255, 255))
    ImageDraw.Draw(image).ellipse([0, 0, size[0] // 2, size[1] // 2], fill=RED)
    for side in (224, 97):
        square = to_square(image, geometry, side)
        assert square.shape == (side, side, 3) and square.dtype == np.uint8


@pytest.mark.fast
def test_fast_an_unknown_geometry_names_the_choices(drawn_photo):
    from fashion_lens.errors import SettingsError

    with pytest.raises(SettingsError, match="Unknown geometry 'zoom'; choose one of stretch, pad, crop"):
        to_square(drawn_photo, "zoom")


@pytest.mark.fast
def test_fast_pad_keeps_the_shape_on_white_and_stretch_distorts_it(drawn_photo):
    portrait = to_square(drawn_photo, "pad", 224)
    # 120x160 scaled to 168x224: 28 white columns on each side, none at the top or bottom
    assert (portrait[:, :27] == 255).all() and (portrait[:, -27:] == 255).all()
    assert not (portrait[:, 28:196] == 255).all(axis=(0, 2)).all()
    landscape = to_square(drawn_photo.transpose(Image.Transpose.ROTATE_90), "pad", 224)
    assert (landscape[:27] == 255).all() and (landscape[-27:] == 255).all()
    stretched = to_square(drawn_photo, "stretch", 224)
    assert np.array_equal(stretched, np.asarray(drawn_photo.resize((224, 224), Image.Resampling.NEAREST)))
    red_rows = (stretched == RED).all(axis=2).any(axis=1)
    red_cols = (stretched == RED).all(axis=2).any(axis=0)
    # the 60x80 product stretched to the square's proportions: 112 wide, 112 high
    assert abs(red_cols.sum() - 112) <= 2 and abs(red_rows.sum() - 112) <= 2


@pytest.mark.fast
def test_fast_crop_cuts_to_the_product_box_with_a_small_margin(drawn_photo):
    left, top, right, bottom = PRODUCT_BOX
    width, height = right + 1 - left, bottom + 1 - top
    margin_x, margin_y = int(0.04 * width) + 1, int(0.04 * height) + 1
    assert foreground_box(drawn_photo) == (left - margin_x, top - margin_y, right + 1 + margin_x, bottom + 1 + margin_y)
    assert foreground_box(Image.new("RGB", (50, 70), (255, 255, 255))) == (0, 0, 50, 70)  # nothing to crop to
    corner = Image.new("RGB", (120, 160), (255, 255, 255))
    corner.paste(Image.new("RGB", (10, 10), RED), (0, 150))
    assert foreground_box(corner) == (0, 149, 11, 160)  # the margin stops at the photo's edges

    cropped = to_square(drawn_photo, "crop", 224)
    product = (cropped < WHITE_THRESHOLD).any(axis=2)
    padded = (to_square(drawn_photo, "pad", 224) < WHITE_THRESHOLD).any(axis=2)
    # padded, the 60x80 product is scaled as the 120x160 photo; cropped, as its 66x88 box: the product fills the frame
    assert product.mean() == pytest.approx(width * height * (224 / (height + 2 * margin_y)) ** 2 / 224**2, abs=0.02)
    assert padded.mean() == pytest.approx(width * height * (224 / 160) ** 2 / 224**2, abs=0.02)
    rows, cols = np.flatnonzero(product.any(axis=1)), np.flatnonzero(product.any(axis=0))
    assert rows[0] <= 10 and rows[-1] >= 213  # the taller side spans the square, up to the margin
    assert abs((cols[0] + cols[-1]) / 2 - 111.5) <= 2  # and the product sits in the middle


@pytest.mark.fast
def test_fast_a_phone_photo_is_turned_upright_by_its_exif_orientation(drawn_photo):
    stored = drawn_photo.transpose(Image.Transpose.ROTATE_90)  # the sensor's landscape frame
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: turn 90 degrees clockwise to display
    loaded = load_image(_encoded(stored, "JPEG", quality=95, exif=exif.tobytes()))
    assert loaded.size == (120, 160)
    assert np.abs(np.asarray(loaded).astype(int) - np.asarray(drawn_photo)).mean() < 3


# ---- photos as people take them: any background, too small, HEIC -----------------------------

def _on_background(background, product_colour=RED, size=(240, 320), box=(60, 80, 179, 239)):
    """A drawn product (a rectangle with a rounded top, like a garment) on a background array or colour."""
    from PIL import ImageDraw

    if isinstance(background, tuple):
        image = Image.new("RGB", size, background)
    else:
        image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    draw.rectangle(box, fill=product_colour)
    draw.ellipse((box[0], box[1] - 30, box[2], box[1] + 30), fill=product_colour)
    truth = np.zeros(size[::-1], dtype=bool)
    truth[np.asarray(image).astype(int).__sub__(product_colour).__abs__().sum(axis=2) == 0] = True
    return image, truth


def _overlap(mask, truth):
    return (mask & truth).sum() / (mask | truth).sum()


def _stripes(size=(240, 320), colours=((60, 90, 170), (235, 205, 90)), width=14):
    rows, cols = np.mgrid[0:size[1], 0:size[0]]
    band = ((rows + cols) // width) % 2 == 0
    return np.where(band[..., None], np.array(colours[0], np.uint8), np.array(colours[1], np.uint8)).astype(np.uint8)


def _noise(size=(240, 320), seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal((150, 120, 90), 45, (size[1], size[0], 3)), 0, 255).astype(np.uint8)


@pytest.mark.fast
def test_fast_on_white_the_quick_rule_separates_the_product_exactly_as_before(drawn_photo):
    from fashion_lens.images import separate_product, white_product_mask

    separation = separate_product(drawn_photo)
    assert separation.method == "white" and separation.doubt is None
    assert np.array_equal(separation.mask, white_product_mask(np.asarray(drawn_photo)))
    blank = separate_product(Image.new("RGB", (120, 160), (255, 255, 255)))
    assert blank.doubt == "nothing stands out from the white background"


@pytest.mark.fast
@pytest.mark.parametrize("background", ["green", "grey vignette", "stripes", "noise"])
def test_fast_grabcut_separates_a_product_from_a_coloured_shaded_or_textured_background(background):
    from fashion_lens.images import separate_product

    if background == "green":
        pixels = np.full((320, 240, 3), (50, 150, 60), np.uint8)
    elif background == "grey vignette":  # a studio backdrop: lighter in the middle than at the edges
        rows, cols = np.mgrid[0:320, 0:240]
        radius = np.hypot((rows - 160) / 160, (cols - 120) / 120)
        pixels = np.repeat((225 - 60 * radius**2).clip(0, 255)[..., None], 3, axis=2).astype(np.uint8)
    else:
        pixels = _stripes() if background == "stripes" else _noise()
    image, truth = _on_background(pixels)
    separation = separate_product(image)
    assert separation.method == "grabcut"
    assert separation.doubt is None, separation.doubt
    assert _overlap(separation.mask, truth) > 0.9
    # the crop fills the network's square with the product, its background painted white
    square = to_square(image, "crop", 224, separation=separation)
    assert np.array_equal(square, to_square(image, "crop", 224))  # separated here when not given
    red = (np.abs(square.astype(int) - RED).sum(axis=2) < 60)
    assert red.mean() > 0.5
    assert ((square == 255).all(axis=2) | red).mean() > 0.97  # nothing of the background is left


@pytest.mark.fast
def test_fast_a_separation_in_doubt_says_why_and_falls_back_to_the_whole_frame():
    from fashion_lens.colour import filled_product_mask
    from fashion_lens.images import separate_product

    texture = Image.fromarray(_stripes(colours=((200, 40, 40), (120, 20, 30)), width=9))  # a close-up of a fabric
    separation = separate_product(texture)
    assert (separation.method, separation.doubt) == ("grabcut", "no product could be told apart from the background")
    assert foreground_box(texture, mask=separation.mask) == (0, 0, 240, 320)  # no crop
    assert filled_product_mask(np.asarray(texture), separation.mask).all()  # every pixel's colour counts
    assert np.array_equal(to_square(texture, "crop", 64), to_square(texture, "pad", 64))  # and nothing is painted white

    cut_off, _ = _on_background((50, 150, 60), box=(20, 0, 219, 319))  # a garment running off the frame
    assert separate_product(cut_off).doubt is not None  # the frame's border is no longer background alone


@pytest.mark.fast
def test_fast_separation_gives_the_same_mask_every_time_and_in_threads():
    from concurrent.futures import ThreadPoolExecutor

    from fashion_lens.images import separate_product

    image, _ = _on_background(_noise(seed=4))
    first = separate_product(image).mask
    with ThreadPoolExecutor(2) as pool:
        again = list(pool.map(lambda _: separate_product(image).mask, range(4)))
    assert all(np.array_equal(first, mask) for mask in again)


@pytest.mark.fast
def test_fast_the_colour_descriptor_ignores_a_coloured_background():
    image, _ = _on_background(_stripes())
    on_white, _ = _on_background((255, 255, 255))
    assert float(colour_descriptor(image) @ colour_descriptor(on_white)) > 0.9


@pytest.mark.fast
@pytest.mark.parametrize("size", [(31, 200), (200, 20), (8, 8)])
def test_fast_a_photo_too_small_to_show_a_product_is_refused_with_its_size(size, tmp_path):
    from fashion_lens.images import MIN_PHOTO_SIDE

    small = Image.new("RGB", size, (200, 30, 30))
    width, height = size
    expected = (f"is only {width}x{height} pixels: too small to show a product "
                f"(at least {MIN_PHOTO_SIDE} pixels on each side are needed)")
    with pytest.raises(ImageError, match=re_escape(f"icon.png {expected}")):
        load_image(_encoded(small, "PNG"), name="icon.png")
    path = tmp_path / "icon.jpg"
    small.save(path)
    with pytest.raises(ImageError, match=re_escape(f"{path} {expected}")):
        load_image(path)
    with pytest.raises(ImageError, match=re_escape(expected)):
        load_image(small)  # a PIL image too
    assert load_image(Image.new("RGB", (32, 32))).size == (32, 32)  # the limit itself is allowed


def re_escape(text):
    import re

    return re.escape(text)


HEIC_HEADERS = [b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", b"\x00\x00\x00\x1cftypmif1\x00\x00\x00\x00mif1heix",
                b"\x00\x00\x00\x18ftypheix\x00\x00\x00\x00heixmif1"]


@pytest.mark.fast
@pytest.mark.parametrize("header", HEIC_HEADERS)
def test_fast_an_iphone_heic_photo_is_named_and_the_way_to_convert_it_given(header, tmp_path):
    data = header + bytes(range(256)) * 8  # the ISO-media header of an HEIC file, then its (unreadable) boxes
    with pytest.raises(ImageError) as raised:
        load_image(data, name="IMG_0042.HEIC")
    message = str(raised.value)
    assert message.startswith("IMG_0042.HEIC is an HEIC (HEIF) photo, the format iPhones save by default")
    assert "Convert it to JPEG" in message and "Most Compatible" in message
    path = tmp_path / "IMG_0043.heic"
    path.write_bytes(data)
    with pytest.raises(ImageError, match="IMG_0043.heic is an HEIC \\(HEIF\\) photo"):
        load_image(path)
    other = b"\x00\x00\x00\x18ftypisom" + bytes(64)  # an MP4 video: the same box, another brand
    with pytest.raises(ImageError, match="is not an image"):
        load_image(other, name="clip.mp4")


@pytest.mark.fast
def test_fast_thumbnails_are_upright_as_the_exif_orientation_says(drawn_photo):
    from fashion_lens.images import thumbnail

    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways; turn 90 degrees clockwise to display
    stored = _encoded(drawn_photo.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif.tobytes())
    assert Image.open(io.BytesIO(stored)).size == (160, 120)
    shown = thumbnail(stored, 80)
    assert shown.size == (60, 80)
    expected = np.asarray(drawn_photo.resize((60, 80), Image.Resampling.BILINEAR)).astype(int)
    assert np.abs(np.asarray(shown).astype(int) - expected).mean() < 8


@pytest.mark.fast
def test_thumbnails_are_made_once_into_the_store_and_again_for_a_replaced_photo(tmp_path):
    from engine_support import product_photo

    photo, store = tmp_path / "1.jpg", tmp_path / "thumbnails"
    product_photo().save(photo)
    first = stored_thumbnail(photo, store)
    kept = list(store.rglob("*.jpg"))
    assert len(kept) == 1 and kept[0].read_bytes() == first
    assert load_image(first).size == thumbnail(photo).size  # the thumbnail, not the photo
    made = kept[0].stat().st_mtime_ns
    assert stored_thumbnail(photo, store) == first and kept[0].stat().st_mtime_ns == made  # read, not made again

    product_photo(colour=(20, 40, 200)).save(photo)  # the photo is replaced: its old thumbnail no longer fits
    os.utime(photo, ns=(made + 10**9, made + 10**9))
    assert stored_thumbnail(photo, store) != first and len(list(store.rglob("*.jpg"))) == 2

    assert build_thumbnails([photo, tmp_path / "missing.jpg"], store) == 1  # the unreadable one is skipped


@pytest.mark.fast
def test_a_store_that_cannot_be_written_still_gives_the_thumbnail(tmp_path):
    from engine_support import product_photo

    photo, blocked = tmp_path / "1.jpg", tmp_path / "a-file"
    product_photo().save(photo)
    blocked.write_text("not a folder")
    assert stored_thumbnail(photo, blocked / "thumbnails") == jpeg_bytes(thumbnail(photo))
