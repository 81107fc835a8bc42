"""Photos: reading them safely, and turning them into the network's square input."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError, SettingsError

IMAGE_SIZE = 224
# Photos far larger than any catalogue image are refused before decoding (decompression bombs).
MAX_IMAGE_PIXELS = 40_000_000
WHITE_THRESHOLD = 240  # a pixel whose three channels are all above this is background
GEOMETRIES = ("stretch", "pad", "crop")


def load_image(source, name: str | None = None, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open a photo as an RGB PIL image, from a path, bytes, a file object or a PIL image.

    Transparent pixels become white (the catalogue's background); grayscale, CMYK and 16-bit
    images are converted. Anything that is not a readable image raises ImageError.
    """
    if isinstance(source, Image.Image):
        return _to_rgb(source)
    label = name or (str(source) if isinstance(source, (str, Path)) else "the upload")
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"Image file {path} does not exist.")
        if path.stat().st_size == 0:
            raise ImageError(f"{label} is empty (0 bytes): it is not an image. Choose a JPEG or PNG photo.")
        opener = lambda: Image.open(path)  # noqa: E731
    else:
        data = source.read() if hasattr(source, "read") else bytes(source)
        if not data:
            raise ImageError(f"{label} is empty (0 bytes): it is not an image. Choose a JPEG or PNG photo.")
        opener = lambda: Image.open(io.BytesIO(data))  # noqa: E731
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = opener()
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(
                    f"{label} is {width}x{height} pixels, more than the {max_pixels:,} allowed. "
                    "Resize the photo (a product photo needs no more than a few megapixels)."
                )
            # JPEG can decode straight at a reduced size: much faster for large originals.
            image.draft("RGB", (IMAGE_SIZE * 2, IMAGE_SIZE * 2))
            image.load()
            image = ImageOps.exif_transpose(image)  # phone photos: upright, as every viewer shows them
    except ImageError:
        raise
    except UnidentifiedImageError as error:
        raise ImageError(f"{label} is not an image (no known picture format). Choose a JPEG or PNG photo.") from error
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(f"{label} is too large to decode safely ({error}). Resize the photo.") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"{label} is damaged or truncated ({error}). Re-export or re-download the photo.") from error
    return _to_rgb(image)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit (or 32-bit integer) grayscale: scale to 8 bits rather than clipping.
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB") if image.mode != "RGB" else image


def product_mask(pixels: np.ndarray) -> np.ndarray:
    """True where a pixel belongs to the product: the photos are shot on white."""
    return (np.asarray(pixels) <= WHITE_THRESHOLD).any(axis=-1)


def foreground_box(image: Image.Image, margin: float = 0.04) -> tuple[int, int, int, int]:
    """Bounding box (left, top, right, bottom) of the product, plus a margin of its own size."""
    mask = product_mask(np.asarray(image))
    if not mask.any():
        return (0, 0, image.width, image.height)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    pad_y = int(margin * (rows[-1] + 1 - rows[0])) + 1
    pad_x = int(margin * (cols[-1] + 1 - cols[0])) + 1
    return (max(0, cols[0] - pad_x), max(0, rows[0] - pad_y),
            min(image.width, cols[-1] + 1 + pad_x), min(image.height, rows[-1] + 1 + pad_y))


def to_square(image: Image.Image, geometry: str = "pad", size: int = IMAGE_SIZE) -> np.ndarray:
    """Turn a (3:4 portrait) photo into the network's size x size input, as uint8 RGB.

    - "stretch": resize to a square, distorting the shape (the reference article's way, as Keras'
      load_img does it);
    - "pad": keep the shape, scale to fit and pad the sides with white, the photos' background;
    - "crop": cut to the product's bounding box first, then pad: the product fills the frame.
    """
    if geometry == "stretch":  # exactly keras.utils.load_img(target_size=...): nearest neighbour
        square = image.resize((size, size), Image.Resampling.NEAREST)
    elif geometry in ("pad", "crop"):
        if geometry == "crop":
            image = image.crop(foreground_box(image))
        square = ImageOps.pad(image, (size, size), method=Image.Resampling.BILINEAR, color=(255, 255, 255))
    else:
        raise SettingsError(f"Unknown geometry {geometry!r}; choose one of {', '.join(GEOMETRIES)}.")
    return np.asarray(square, dtype=np.uint8)



def thumbnail(path_or_image, size: int = 256) -> Image.Image:
    """A small RGB copy of a photo for display (the shape kept)."""
    image = load_image(path_or_image).copy()
    image.thumbnail((size, size))
    return image


def jpeg_bytes(image: Image.Image, quality: int = 85) -> bytes:
    """A PIL image as JPEG bytes (what the widget and the app send to the browser)."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
