"""Photos: reading them safely, telling the product from its background, and turning them into
the network's square input."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError, SettingsError
from .storage import atomic_write

IMAGE_SIZE = 224
# Photos far larger than any catalogue image are refused before decoding (decompression bombs).
MAX_IMAGE_PIXELS = 40_000_000
# A photo with fewer pixels than this on a side shows too little of a product to compare it.
MIN_PHOTO_SIDE = 32
WHITE_THRESHOLD = 240  # on a white background, a pixel whose three channels are all above this is background
GEOMETRIES = ("stretch", "pad", "crop")
# The brands of an ISO media file ("ftyp" box) that hold HEIC/HEIF pictures: iPhone photos.
HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1")


def load_image(source, name: str | None = None, max_pixels: int = MAX_IMAGE_PIXELS,
               min_side: int = MIN_PHOTO_SIDE) -> Image.Image:
    """Open a photo as an RGB PIL image, from a path, bytes, a file object or a PIL image.

    The photo is turned upright as its EXIF orientation says (as every viewer shows it).
    Transparent pixels become white (the catalogue's background); grayscale, CMYK and 16-bit
    images are converted. Anything that is not a readable image, or is smaller than `min_side`
    pixels on a side, raises ImageError.
    """
    label = name or (str(source) if isinstance(source, (str, Path)) else "the photo"
                     if isinstance(source, Image.Image) else "the upload")
    if isinstance(source, Image.Image):
        return _check_size(_to_rgb(source), label, min_side)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"Image file {path} does not exist.")
        if path.stat().st_size == 0:
            raise ImageError(f"{label} is empty (0 bytes): it is not an image. Choose a JPEG or PNG photo.")
        opener = lambda: Image.open(path)  # noqa: E731
        header = lambda: path.open("rb").read(16)  # noqa: E731
    else:
        data = source.read() if hasattr(source, "read") else bytes(source)
        if not data:
            raise ImageError(f"{label} is empty (0 bytes): it is not an image. Choose a JPEG or PNG photo.")
        opener = lambda: Image.open(io.BytesIO(data))  # noqa: E731
        header = lambda: data[:16]  # noqa: E731
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
        if is_heif(header()):
            raise ImageError(
                f"{label} is an HEIC (HEIF) photo, the format iPhones save by default, which fashion-lens cannot read. "
                "Convert it to JPEG: share or export it as JPEG (on a Mac, Preview › File › Export › JPEG), "
                "or set the iPhone to Settings › Camera › Formats › Most Compatible for new photos."
            ) from error
        raise ImageError(f"{label} is not an image (no known picture format). Choose a JPEG or PNG photo.") from error
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(f"{label} is too large to decode safely ({error}). Resize the photo.") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"{label} is damaged or truncated ({error}). Re-export or re-download the photo.") from error
    return _check_size(_to_rgb(image), label, min_side)


def is_heif(header: bytes) -> bool:
    """Whether a file's first bytes are those of an HEIC/HEIF picture (an ISO media "ftyp" box)."""
    return header[4:8] == b"ftyp" and header[8:12] in HEIF_BRANDS


def _check_size(image: Image.Image, label: str, min_side: int) -> Image.Image:
    if min(image.size) < min_side:
        raise ImageError(
            f"{label} is only {image.width}x{image.height} pixels: too small to show a product "
            f"(at least {min_side} pixels on each side are needed). Use the original photo, not a thumbnail or an icon."
        )
    return image


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


# ---- the product apart from its background ---------------------------------------------------

# A photo whose outer ring is at least this share near-white is on the catalogue's plain white:
# the quick white rule separates it (the catalogue's photos keep exactly their old descriptors).
WHITE_BORDER_SHARE = 0.9
SEPARATION_SIDE = 128         # GrabCut runs on a copy this many pixels on its longer side (speed)
GRABCUT_ITERATIONS = 3
BORDER_RING = 0.06            # the frame's outer ring, as a share of the shorter side: probable background
TEXTURED_BORDER = 8.0         # L*a*b* units: a ring this far from a smooth surface is a textured background
UNLIKE_BACKGROUND = 18.0      # L*a*b* units from the smooth background model: probably the product
# When the separation is in doubt (see separate_product) the product may be mixed with its background.
MIN_COVERAGE, MAX_COVERAGE = 0.02, 0.85  # shares of the frame
MAX_EDGE_SHARE = 0.3          # share of the frame's edge the product may touch
MIN_AGREEMENT = 0.5           # overlap (intersection over union) of GrabCut with the border model
SEPARATION_VERSION = "white-or-grabcut-v1"  # part of the feature cache's identity


@dataclasses.dataclass(frozen=True)
class Separation:
    """Which pixels show the product, how they were found, and whether to trust it.

    method: "white" (the quick rule for photos on plain white) or "grabcut" (any background);
    doubt: None when the separation looks right, else why the product may be mixed with its background.
    """

    mask: np.ndarray
    method: str
    doubt: str | None = None
    edge: int = 0  # pixels of the outline that may still hold background (GrabCut works on a smaller copy)

    @property
    def coverage(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0

    @property
    def colour_mask(self) -> np.ndarray:
        """The pixels whose colour is the product's: the mask without its uncertain outline."""
        if not self.edge or not self.mask.any():
            return self.mask
        import cv2

        inside = cv2.erode(self.mask.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=self.edge).astype(bool)
        return inside if inside.sum() >= 0.5 * self.mask.sum() else self.mask


def white_product_mask(pixels: np.ndarray) -> np.ndarray:
    """True where a pixel is not near-white: the product, on the catalogue's white background."""
    return (np.asarray(pixels) <= WHITE_THRESHOLD).any(axis=-1)


def _ring(height: int, width: int, thickness: int) -> np.ndarray:
    ring = np.zeros((height, width), dtype=bool)
    ring[:thickness], ring[-thickness:], ring[:, :thickness], ring[:, -thickness:] = True, True, True, True
    return ring


def separate_product(image) -> Separation:
    """Tell the product from its background, on white or on any other background.

    On plain white (the catalogue's photos) every pixel that is not near-white is the product.
    Elsewhere OpenCV's GrabCut is seeded from the frame: the outer ring is probable background,
    and inside it the pixels unlike a smooth surface fitted to the ring (the border model: a plain
    or shaded background) are probable product; on a textured background the whole inside is.
    The result is in doubt when the product covers nearly nothing or nearly the whole frame, runs
    into much of the frame's edge, or GrabCut disagrees with the border model.
    """
    pixels = np.asarray(image)
    height, width = pixels.shape[:2]
    thickness = max(1, round(BORDER_RING * min(height, width)))
    ring = _ring(height, width, thickness)
    white = white_product_mask(pixels)
    if min(height, width) < 8 or 1 - white[ring].mean() >= WHITE_BORDER_SHARE:
        doubt = None if white.mean() >= 0.01 else "nothing stands out from the white background"
        return Separation(white, "white", doubt)
    return _grabcut(pixels)


def _grabcut(pixels: np.ndarray) -> Separation:
    import cv2

    height, width = pixels.shape[:2]
    scale = min(1.0, SEPARATION_SIDE / max(height, width))
    small = cv2.resize(pixels, (max(8, round(width * scale)), max(8, round(height * scale))),
                       interpolation=cv2.INTER_AREA) if scale < 1 else np.ascontiguousarray(pixels)
    rows, cols = small.shape[:2]
    ring = _ring(rows, cols, max(2, round(BORDER_RING * min(rows, cols))))
    # the border model: a quadratic surface per L*a*b* channel fitted to the ring (a plain, shaded or
    # vignetted background); how far each pixel lies from it
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    y, x = y / rows - 0.5, x / cols - 0.5
    basis = np.stack([np.ones_like(x), x, y, x * x, y * y, x * y], axis=-1)
    lab = cv2.cvtColor(small, cv2.COLOR_RGB2LAB).astype(np.float32)
    surface, *_ = np.linalg.lstsq(basis[ring], lab[ring], rcond=None)
    distance = np.linalg.norm(lab - basis @ surface, axis=-1)
    textured = float(np.median(distance[ring])) > TEXTURED_BORDER
    unlike = distance > UNLIKE_BACKGROUND
    labels = np.where(unlike | textured, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    labels[ring] = cv2.GC_PR_BGD
    labels[_ring(rows, cols, 1)] = cv2.GC_BGD
    found = np.zeros((rows, cols), dtype=bool)
    if (labels == cv2.GC_PR_FGD).sum() >= 10:  # GrabCut needs some pixels of each kind to start from
        models = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.setRNGSeed(0)  # GrabCut starts from k-means with random centres: the same photo, the same mask
        cv2.grabCut(np.ascontiguousarray(small[..., ::-1]), labels, None, *models, GRABCUT_ITERATIONS,
                    cv2.GC_INIT_WITH_MASK)
        found = (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)
        found = _without_specks(found)
    doubt = _separation_doubt(found, ring, None if textured else unlike)
    # back to full size: smooth the outline, then keep the inside (its edge mixes product and background)
    mask = cv2.resize(found.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR) > 0.5
    return Separation(mask, "grabcut", doubt, edge=max(1, round(1 / scale)))


def _without_specks(mask: np.ndarray) -> np.ndarray:
    """The mask without its small islands (a fleck of background texture): parts of at least a
    tenth of the largest one are kept."""
    import cv2

    count, parts, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 2:
        return mask
    areas = stats[1:, cv2.CC_STAT_AREA]
    return np.isin(parts, 1 + np.flatnonzero(areas >= 0.1 * areas.max()))


def _separation_doubt(found: np.ndarray, ring: np.ndarray, border_model: np.ndarray | None) -> str | None:
    coverage = float(found.mean())
    edge = np.concatenate([found[0], found[-1], found[:, 0], found[:, -1]]).mean()
    if coverage < MIN_COVERAGE:
        return "no product could be told apart from the background"
    if coverage > MAX_COVERAGE:
        return f"the product could not be told apart from the background (it seems to fill {coverage:.0%} of the photo)"
    if edge > MAX_EDGE_SHARE:
        return "the product runs into the photo's edges, so its outline is uncertain"
    if border_model is not None:
        overlap = (found & border_model).sum() / max(1, (found | border_model).sum())
        if overlap < MIN_AGREEMENT:
            return "the product's outline is uncertain (two ways of finding it disagree)"
    return None


def product_mask(pixels: np.ndarray) -> np.ndarray:
    """True where a pixel belongs to the product, on any background (see separate_product)."""
    return separate_product(pixels).mask


def foreground_box(image: Image.Image, margin: float = 0.04, mask: np.ndarray | None = None) -> tuple[int, int, int, int]:
    """Bounding box (left, top, right, bottom) of the product, plus a margin of its own size.

    `mask` is the product's pixels when already known (separate_product), else they are found here."""
    mask = product_mask(np.asarray(image)) if mask is None else mask
    if not mask.any():
        return (0, 0, image.width, image.height)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    pad_y = int(margin * (rows[-1] + 1 - rows[0])) + 1
    pad_x = int(margin * (cols[-1] + 1 - cols[0])) + 1
    return (max(0, cols[0] - pad_x), max(0, rows[0] - pad_y),
            min(image.width, cols[-1] + 1 + pad_x), min(image.height, rows[-1] + 1 + pad_y))


def on_white(image: Image.Image, separation: Separation) -> Image.Image:
    """The photo with its background painted white, as the catalogue's photos are shot, when
    GrabCut separated it with confidence; otherwise the photo as it is."""
    if separation.method != "grabcut" or separation.doubt is not None:
        return image
    pixels = np.asarray(image).copy()
    pixels[~separation.mask] = 255
    return Image.fromarray(pixels)


def to_square(image: Image.Image, geometry: str = "pad", size: int = IMAGE_SIZE,
              separation: Separation | None = None) -> np.ndarray:
    """Turn a (3:4 portrait) photo into the network's size x size input, as uint8 RGB.

    - "stretch": resize to a square, distorting the shape (the reference article's way, as Keras'
      load_img does it);
    - "pad": keep the shape, scale to fit and pad the sides with white, the photos' background;
    - "crop": separate the product from its background (painted white when it is not white
      already, see on_white), cut to the product's bounding box, then pad: the product fills the frame.
    `separation` is separate_product's answer when already known.
    """
    if geometry == "stretch":  # exactly keras.utils.load_img(target_size=...): nearest neighbour
        square = image.resize((size, size), Image.Resampling.NEAREST)
    elif geometry in ("pad", "crop"):
        if geometry == "crop":
            separation = separation or separate_product(image)
            image = on_white(image, separation).crop(foreground_box(image, mask=separation.mask))
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


def thumbnail_store(artifacts_dir) -> Path:
    """Where the stored thumbnails of a project's photos live: one place for the app and the load test."""
    return Path(artifacts_dir) / "thumbnails"


def stored_thumbnail(path, store_dir) -> bytes:
    """A photo's thumbnail as JPEG bytes, made once and kept as a file in `store_dir` (named by the
    photo's path, size and modification time, so a replaced photo gets a new one). The app serves
    thumbnails from here: reading a small file costs a fraction of decoding and shrinking the photo.
    A store that cannot be written to only loses the saving."""
    stat = Path(path).stat()
    key = hashlib.sha256(f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:32]
    stored = Path(store_dir) / key[:2] / f"{key}.jpg"
    try:
        return stored.read_bytes()
    except OSError:
        pass
    data = jpeg_bytes(thumbnail(path))
    try:
        stored.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(stored) as handle:
            handle.write(data)
    except OSError:
        pass
    return data


def build_thumbnails(paths, store_dir) -> int:
    """Make the stored thumbnails of these photos that are missing (stored_thumbnail); how many photos
    were looked at. Photos that cannot be read are skipped: the page says so when one is shown."""
    count = 0
    for path in paths:
        try:
            stored_thumbnail(path, store_dir)
        except (OSError, ImageError):
            continue
        count += 1
    return count
