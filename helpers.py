"""fashion-lens: the shared code behind the notebooks, the widget, the app and the benchmark.

Read it top to bottom in the order the data flows:

    settings -> catalogue -> images -> features (extractor, descriptors, cache)
    -> index and search -> evaluation -> display and widgets

Heavy libraries (TensorFlow/Keras, matplotlib, ipywidgets) are imported inside the
functions that need them, so `import helpers` is quick and never touches the network.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import html
import io
import json
import os
import re
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError

PROJECT_DIR = Path(__file__).resolve().parent


# ============================================================================
# Settings
# ============================================================================

BACKBONES = ("resnet50", "mobilenet_v2")
ENVIRONMENT_VARIABLES = {
    "data_dir": "FASHION_LENS_DATA",
    "artifacts_dir": "FASHION_LENS_ARTIFACTS",
    "backbone": "FASHION_LENS_BACKBONE",
    "weights": "FASHION_LENS_WEIGHTS",
}
DEFAULT_SETTINGS = {
    "data_dir": PROJECT_DIR / "data" / "fashion",
    "artifacts_dir": PROJECT_DIR / "artifacts",
    "backbone": "resnet50",  # the reference article's backbone
    "weights": "imagenet",
}
# "random" builds the network untrained: for shape tests only, never for recommendations.
RANDOM_WEIGHTS = "random"


class SettingsError(ValueError):
    """A setting (argument or environment variable) has a value the project cannot use."""


@dataclasses.dataclass(frozen=True)
class Settings:
    data_dir: Path
    artifacts_dir: Path
    backbone: str
    weights: str  # "imagenet", "random" or the path of a Keras weights file


def get_settings(data_dir=None, artifacts_dir=None, backbone=None, weights=None) -> Settings:
    """Read the settings: an argument wins, then the environment variable, then the default.

    >>> get_settings(backbone="mobilenet_v2").backbone
    'mobilenet_v2'
    """
    given = {"data_dir": data_dir, "artifacts_dir": artifacts_dir, "backbone": backbone, "weights": weights}
    values = {}
    for name, value in given.items():
        if value is None or value == "":
            value = os.environ.get(ENVIRONMENT_VARIABLES[name]) or DEFAULT_SETTINGS[name]
        values[name] = value
    backbone_name = str(values["backbone"]).strip().lower()
    if backbone_name not in BACKBONES:
        raise SettingsError(
            f"Unknown backbone {values['backbone']!r}. Choose one of {', '.join(BACKBONES)} "
            f"(argument backbone= or environment variable {ENVIRONMENT_VARIABLES['backbone']})."
        )
    return Settings(
        data_dir=Path(values["data_dir"]).expanduser().resolve(),
        artifacts_dir=Path(values["artifacts_dir"]).expanduser().resolve(),
        backbone=backbone_name,
        weights=_check_weights(str(values["weights"])),
    )


def _check_weights(weights: str) -> str:
    if weights in ("imagenet", RANDOM_WEIGHTS):
        return weights
    path = Path(weights).expanduser()
    if not path.is_file():
        raise SettingsError(
            f"Weights file {weights!r} does not exist. Give 'imagenet' or the path of a Keras "
            f"weights file (.h5) via weights= or {ENVIRONMENT_VARIABLES['weights']}."
        )
    with open(path, "rb") as handle:
        signature = handle.read(8)
    if signature != b"\x89HDF\r\n\x1a\n" and not zipfile_signature(signature):
        raise SettingsError(
            f"{weights!r} is not a Keras weights file (expected an HDF5 .h5 or a .keras/.weights.h5 file). "
            "Point the weights setting at the file Keras saved or downloaded."
        )
    return str(path.resolve())


def zipfile_signature(first_bytes: bytes) -> bool:
    return first_bytes.startswith(b"PK\x03\x04")


def writable_dir(path: Path) -> Path:
    """Create `path` if needed and make sure files can be written there (fail early, with advice)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as error:
        raise SettingsError(
            f"Cannot write to the artifacts folder {path} ({error.strerror or error}). "
            f"Choose a writable folder with artifacts_dir= or {ENVIRONMENT_VARIABLES['artifacts_dir']}."
        ) from error
    return path


def _umask() -> int:
    mask = os.umask(0)  # the only way to read the umask is to set it
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: Path, mode: str = "wb") -> Iterator[io.IOBase]:
    """Write `path` through a temporary file in the same folder, renamed into place only when
    complete: a reader never sees half a file and a crash leaves the old file untouched."""
    path = Path(path)
    writable_dir(path.parent)
    handle = tempfile.NamedTemporaryFile(mode, dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(handle.name, 0o666 & ~_umask())  # temporary files are private; the result is not
        os.replace(handle.name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(handle.name)
        raise


def show_versions() -> dict:
    """The versions of the libraries that shape the results (printed by each notebook's setup cell)."""
    from importlib.metadata import PackageNotFoundError, version

    names = ["python", "numpy", "pandas", "pillow", "tensorflow", "keras", "scikit-learn", "faiss-cpu"]
    found = {}
    for name in names:
        if name == "python":
            import platform

            found[name] = platform.python_version()
            continue
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


# ============================================================================
# Catalogue
# ============================================================================

CATALOG_COLUMNS = [
    "ProductId", "Gender", "Category", "SubCategory", "ProductType",
    "Colour", "Usage", "ProductTitle", "Image", "ImageURL",
]
# The catalogue's folders are named by category and adult gender; kids' apparel sits under them.
GENDER_FOLDERS = {
    "Boys": "Apparel/Men",
    "Girls": "Apparel/Women",
    "Men": "Footwear/Men",
    "Women": "Footwear/Women",
}
GENDERS = tuple(GENDER_FOLDERS)
FILTER_COLUMNS = ("SubCategory", "ProductType", "Colour", "Usage")


class CatalogError(ValueError):
    """The catalogue (folder or fashion.csv) cannot be used as it is."""


class MissingImagesWarning(UserWarning):
    """Some catalogue rows have no image file; they are left out."""


def normalize_product_id(product_id) -> str:
    """ProductIds are strings of digits everywhere: 13683, ' 13683 ' and '13683' are the same product."""
    if isinstance(product_id, (bool, np.bool_)):
        raise KeyError(f"{product_id!r} is not a ProductId: give the digits, for example '13683'.")
    if isinstance(product_id, (int, np.integer)):
        return str(int(product_id))
    if isinstance(product_id, (float, np.floating)) and float(product_id).is_integer():
        return str(int(product_id))
    text = str(product_id).strip()
    if not text.isdigit():
        raise KeyError(f"{product_id!r} is not a ProductId: a ProductId is made of digits, for example '13683'.")
    return text


def load_catalog(data_dir=None) -> pd.DataFrame:
    """Read fashion.csv, check it, and add each product's image path and duplicate group.

    Columns added: `image_path` (str), `image_sha256` (fingerprint of the file's bytes),
    `duplicate_group` (the smallest ProductId sharing a byte-identical image; the product's own
    id when its image is unique) and `is_duplicate` (True for every copy but the first).
    ProductId stays a string. Rows whose image file is missing are reported and left out.
    """
    data_dir = Path(data_dir) if data_dir is not None else get_settings().data_dir
    if not data_dir.is_dir():
        raise CatalogError(
            f"The catalogue folder {data_dir} does not exist. Run `make data` to get the catalogue, "
            f"or point {ENVIRONMENT_VARIABLES['data_dir']} (or data_dir=) at the folder that holds fashion.csv."
        )
    csv_path = data_dir / "fashion.csv"
    if not csv_path.is_file():
        raise CatalogError(
            f"{csv_path} is missing. The catalogue folder must hold fashion.csv and the image folders; "
            "run `make data` to get a complete copy."
        )
    try:
        catalog = pd.read_csv(csv_path, dtype=str, keep_default_na=False, encoding="utf-8")
    except UnicodeDecodeError as error:
        raise CatalogError(
            f"{csv_path} is not UTF-8 text (byte {error.start}: {error.reason}). Save it as UTF-8, "
            "or run `make data` to restore the original file."
        ) from error
    except pd.errors.EmptyDataError as error:
        raise CatalogError(f"{csv_path} is empty. Run `make data` to restore the original file.") from error
    except pd.errors.ParserError as error:
        raise CatalogError(f"{csv_path} is not a readable CSV file ({error}). Run `make data` to restore it.") from error

    missing_columns = [column for column in CATALOG_COLUMNS if column not in catalog.columns]
    if missing_columns:
        raise CatalogError(
            f"{csv_path} lacks the column(s) {', '.join(missing_columns)}. Expected the columns "
            f"{', '.join(CATALOG_COLUMNS)}; found {', '.join(map(str, catalog.columns))}."
        )
    if catalog.empty:
        raise CatalogError(f"{csv_path} has a header but no products. Run `make data` to restore the original file.")
    for column in CATALOG_COLUMNS:
        catalog[column] = catalog[column].astype(str).str.strip()

    bad_ids = catalog.loc[~catalog["ProductId"].str.fullmatch(r"\d+"), "ProductId"]
    if len(bad_ids):
        rows = ", ".join(f"line {index + 2}: {value!r}" for index, value in bad_ids.head(5).items())
        raise CatalogError(f"ProductId must be made of digits; {len(bad_ids)} row(s) are not ({rows}). Fix those rows.")
    repeated = catalog.loc[catalog["ProductId"].duplicated(keep=False), "ProductId"].unique()
    if len(repeated):
        raise CatalogError(
            f"ProductId must be unique; {len(repeated)} id(s) appear more than once: "
            f"{', '.join(repeated[:10])}. Remove or renumber the repeated rows."
        )
    unknown = sorted(set(catalog["Gender"]) - set(GENDERS))
    if unknown:
        raise CatalogError(
            f"Unknown Gender value(s) {', '.join(map(repr, unknown))}; each row must be one of "
            f"{', '.join(GENDERS)} (the folders {', '.join(GENDER_FOLDERS.values())})."
        )

    file_names = catalog["Image"].where(catalog["Image"] != "", catalog["ProductId"] + ".jpg")
    folders = catalog["Gender"].map(GENDER_FOLDERS)
    catalog["image_path"] = [str(data_dir / folder / name) for folder, name in zip(folders, file_names)]
    exists = np.array([os.path.isfile(path) for path in catalog["image_path"]], dtype=bool)
    if not exists.all():
        absent = catalog.loc[~exists]
        examples = ", ".join(f"{pid} ({path})" for pid, path in zip(absent["ProductId"].head(5), absent["image_path"].head(5)))
        warnings.warn(
            f"{len(absent)} of {len(catalog)} products have no image file and are left out: {examples}"
            f"{' ...' if len(absent) > 5 else ''}. Run `make data` to fetch the missing images.",
            MissingImagesWarning,
            stacklevel=2,
        )
        catalog = catalog.loc[exists].reset_index(drop=True)

    catalog["image_sha256"] = [file_sha256(path) for path in catalog["image_path"]]
    smallest_id = catalog.groupby("image_sha256")["ProductId"].transform(lambda ids: min(ids, key=int))
    catalog["duplicate_group"] = smallest_id
    order = catalog["ProductId"].astype(int)
    first_of_group = catalog.assign(_order=order).groupby("image_sha256")["_order"].transform("min") == order
    catalog["is_duplicate"] = ~first_of_group
    return catalog


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def duplicate_groups(catalog: pd.DataFrame) -> pd.DataFrame:
    """The products that share a byte-identical image, one row per product, with its group."""
    grouped = catalog[catalog.groupby("duplicate_group")["ProductId"].transform("size") > 1]
    return grouped[["duplicate_group", "ProductId", "Gender", "SubCategory", "ProductType", "Colour", "ProductTitle"]] \
        .sort_values(["duplicate_group", "ProductId"], key=lambda s: s.astype(int)).reset_index(drop=True)


METADATA_COLUMNS = ("Gender", "SubCategory", "ProductType", "Colour", "Usage", "ProductTitle")


def metadata_conflicts(catalog: pd.DataFrame, columns: Iterable[str] = METADATA_COLUMNS) -> pd.DataFrame:
    """Duplicate groups (one photo under several ProductIds) whose rows disagree: one row per group
    and column that differs, with the distinct values. The same photo with two Colour labels caps
    what any photo-based method can score on Colour."""
    grouped = catalog[catalog.groupby("duplicate_group")["ProductId"].transform("size") > 1]
    found = []
    for group, members in grouped.groupby("duplicate_group", sort=False):
        for column in columns:
            values = members[column].unique()
            if len(values) > 1:
                found.append({"duplicate_group": group, "column": column,
                              "products": ", ".join(members["ProductId"]), "values": " | ".join(values)})
    table = pd.DataFrame(found, columns=["duplicate_group", "column", "products", "values"])
    return table.sort_values("duplicate_group", key=lambda s: s.astype(int), kind="stable").reset_index(drop=True)


GRAYSCALE_TOLERANCE = 4  # JPEG rounding leaves the channels of a grey pixel a few levels apart at most


def colour_spread(image) -> int:
    """The largest gap between a pixel's R, G and B over the whole photo: about 0 for a photo without colour."""
    pixels = np.asarray(load_image(image), dtype=np.int16)
    return int((pixels.max(axis=2) - pixels.min(axis=2)).max())


def grayscale_products(catalog: pd.DataFrame, tolerance: int = GRAYSCALE_TOLERANCE) -> pd.DataFrame:
    """Products whose photo carries no colour at all (every pixel grey, up to JPEG rounding).

    Their Colour label cannot be checked against the photo, and the colour descriptor sees only grey levels.
    """
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        spread = np.fromiter(pool.map(colour_spread, catalog["image_path"]), dtype=np.int64, count=len(catalog))
    found = catalog.assign(colour_spread=spread)[spread <= tolerance]
    return found[["ProductId", "Gender", "SubCategory", "ProductType", "Colour", "ProductTitle",
                  "image_path", "colour_spread"]].reset_index(drop=True)


def sample_catalog(catalog: pd.DataFrame, per_gender: int | None = None, seed: int = 0,
                   keep: Iterable = ()) -> pd.DataFrame:
    """The same `per_gender` products of each gender on every run, for quick runs (None: the whole catalogue).

    Products named in `keep` are always in the sample (a notebook's example query, say) and count
    toward their gender's share.

    >>> sample_catalog(catalog, per_gender=20, keep=["13683"])  # doctest: +SKIP
    """
    if per_gender is None:
        return catalog
    if isinstance(per_gender, (bool, np.bool_)) or not isinstance(per_gender, (int, np.integer)) or per_gender < 1:
        raise CatalogError(f"per_gender must be a whole number of products (1 or more), or None for the "
                           f"whole catalogue; got {per_gender!r}.")
    kept = {normalize_product_id(product_id) for product_id in keep}
    for product_id in kept:
        product_row(catalog, product_id)  # an unknown id raises KeyError naming close ids
    rng = np.random.default_rng(seed)
    ids, genders = catalog["ProductId"].to_numpy(), catalog["Gender"].to_numpy()
    chosen = []
    for gender in GENDERS:
        positions = np.flatnonzero(genders == gender)
        forced = positions[np.isin(ids[positions], list(kept))]
        others = rng.permutation(np.setdiff1d(positions, forced))
        chosen += [*forced, *others[: max(0, per_gender - len(forced))]]
    return catalog.iloc[np.sort(np.asarray(chosen, dtype=np.int64))].reset_index(drop=True)


def split_by_gender(catalog: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The reference article's four subsets: Boys and Girls apparel, Men and Women footwear."""
    return {gender: catalog[catalog["Gender"] == gender].reset_index(drop=True) for gender in GENDERS}


def save_gender_splits(catalog: pd.DataFrame, artifacts_dir=None) -> dict[str, Path]:
    """Write each gender's rows to artifacts/splits/<Gender>.csv (atomically); returns the paths."""
    folder = Path(artifacts_dir or get_settings().artifacts_dir) / "splits"
    paths = {}
    for gender, subset in split_by_gender(catalog).items():
        paths[gender] = folder / f"{gender}.csv"
        with atomic_write(paths[gender], "w") as handle:
            subset[CATALOG_COLUMNS].to_csv(handle, index=False)
    return paths


def find_products(catalog: pd.DataFrame, text: str, limit: int = 20) -> pd.DataFrame:
    """Products whose id starts with `text`, or whose title holds every word of it (any order,
    any case): "puma black" finds "Puma Men Black Sports Shoes". For search boxes."""
    words = str(text).lower().split()
    if not words:
        return catalog.head(0)
    titles = catalog["ProductTitle"].str.lower()
    hits = catalog["ProductId"].str.startswith(words[0]) if len(words) == 1 else False
    in_title = np.logical_and.reduce([titles.str.contains(word, regex=False) for word in words])
    return catalog[hits | in_title].head(limit)


def product_row(catalog: pd.DataFrame, product_id) -> pd.Series:
    """The catalogue row of one product; an unknown id raises KeyError naming close ids."""
    product_id = normalize_product_id(product_id)
    match = catalog.index[catalog["ProductId"] == product_id]
    if len(match) == 0:
        raise KeyError(unknown_product_message(catalog["ProductId"], product_id))
    return catalog.loc[match[0]]


def unknown_product_message(known_ids, product_id: str) -> str:
    known = pd.Series(np.asarray(known_ids, dtype=str))
    close = known[known.str.startswith(product_id[: max(1, len(product_id) - 1)])].head(5).tolist()
    hint = f" Close ids: {', '.join(close)}." if close else " Search by title to find an id."
    return f"ProductId {product_id!r} is not in the catalogue.{hint}"


# ============================================================================
# Images
# ============================================================================

IMAGE_SIZE = 224
# Photos far larger than any catalogue image are refused before decoding (decompression bombs).
MAX_IMAGE_PIXELS = 40_000_000
WHITE_THRESHOLD = 240  # a pixel whose three channels are all above this is background
GEOMETRIES = ("stretch", "pad", "crop")


class ImageError(ValueError):
    """A file or upload that cannot be read as a product photo."""


def load_image(source, name: str | None = None) -> Image.Image:
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
            if width * height > MAX_IMAGE_PIXELS:
                raise ImageError(
                    f"{label} is {width}x{height} pixels, more than the {MAX_IMAGE_PIXELS:,} allowed. "
                    "Resize the photo (a product photo needs no more than a few megapixels)."
                )
            # JPEG can decode straight at a reduced size: much faster for large originals.
            image.draft("RGB", (IMAGE_SIZE * 2, IMAGE_SIZE * 2))
            image.load()
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


# ============================================================================
# Features: extractor, descriptors and their cache
# ============================================================================

POOLINGS = ("gap", "grid2x2", "flatten")
PREPROCESSINGS = ("backbone", "rescale")
KERAS_WEIGHT_FILES = {
    "resnet50": "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "mobilenet_v2": "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
}
CACHE_FORMAT = 1
_MODELS: dict = {}


class WeightsError(RuntimeError):
    """The backbone's weights cannot be found or loaded."""


@dataclasses.dataclass(frozen=True)
class FeatureRecipe:
    """Everything that decides the numbers in a feature vector; the cache is keyed by it.

    The project's default: ImageNet backbone with its own preprocess_input, photo padded to a
    square on white, feature map pooled over a 2x2 grid (keeps the garment's layout),
    L2-normalised, stored as float16. `reference()` gives the article's recipe instead.
    """

    backbone: str = "resnet50"
    weights: str = "imagenet"
    geometry: str = "crop"
    preprocessing: str = "backbone"  # "backbone": the network's own preprocess_input; "rescale": pixels / 255
    pooling: str = "grid2x2"
    image_size: int = IMAGE_SIZE
    dtype: str = "float16"

    @property
    def is_reference(self) -> bool:
        return self.pooling == "flatten"

    @property
    def name(self) -> str:
        return f"{self.backbone}-{self.geometry}-{self.preprocessing}-{self.pooling}"

    def check(self) -> FeatureRecipe:
        choices = {"backbone": BACKBONES, "geometry": GEOMETRIES, "preprocessing": PREPROCESSINGS,
                   "pooling": POOLINGS, "dtype": ("float16", "float32")}
        for field, allowed in choices.items():
            if getattr(self, field) not in allowed:
                raise SettingsError(f"Unknown {field} {getattr(self, field)!r}; choose one of {', '.join(allowed)}.")
        if self.image_size != IMAGE_SIZE:
            raise SettingsError(f"image_size must be {IMAGE_SIZE}: the weights on offer are trained at that size.")
        return self


def default_recipe(settings: Settings | None = None, **changes) -> FeatureRecipe:
    """The project's recipe for the configured backbone and weights (fields can be overridden)."""
    settings = settings or get_settings()
    return dataclasses.replace(FeatureRecipe(backbone=settings.backbone, weights=settings.weights), **changes).check()


def reference_recipe(settings: Settings | None = None) -> FeatureRecipe:
    """The reference article's recipe: stretch (nearest), pixels / 255, flatten the 7x7xC map, float32."""
    return default_recipe(settings, geometry="stretch", preprocessing="rescale", pooling="flatten", dtype="float32")


def keras_cache_dir() -> Path:
    """Where Keras keeps downloaded weights: $KERAS_HOME/models, else ~/.keras/models.

    Keras reads KERAS_HOME once, when it is imported; after that its own answer counts."""
    import sys

    config = sys.modules.get("keras.src.backend.config")
    if config is not None:
        return Path(config.keras_home()) / "models"
    home = Path.home() if os.access(Path.home(), os.W_OK) else Path("/tmp")
    return Path(os.environ.get("KERAS_HOME") or home / ".keras") / "models"


def weights_identity(backbone: str, weights: str) -> str:
    """A name for the weights that changes when the weights file changes (part of the cache key)."""
    if weights == RANDOM_WEIGHTS:
        return RANDOM_WEIGHTS
    path = Path(weights) if weights != "imagenet" else keras_cache_dir() / KERAS_WEIGHT_FILES[backbone]
    if not path.is_file():
        load_backbone(backbone, weights)  # downloads the ImageNet file into the Keras cache, or explains why not
    return f"{weights if weights == 'imagenet' else path.name}:sha256={file_sha256(path)[:16]}"


def load_backbone(backbone: str, weights: str = "imagenet"):
    """The Keras ImageNet backbone without its classifier (include_top=False): photo -> 7x7xC feature map.

    Built once per process. With weights="imagenet", Keras reads its cache (~/.keras/models or
    $KERAS_HOME/models) and downloads the file only when it is missing.
    """
    key = (backbone, weights)
    if key in _MODELS:
        return _MODELS[key]
    if backbone not in BACKBONES:
        raise SettingsError(f"Unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}.")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    build = {"resnet50": keras.applications.ResNet50, "mobilenet_v2": keras.applications.MobileNetV2}[backbone]
    try:
        model = build(include_top=False, weights=None if weights == RANDOM_WEIGHTS else weights,
                      input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3))
    except Exception as error:  # Keras raises a bare Exception when the download fails
        if weights != "imagenet":
            raise WeightsError(
                f"Cannot load the {backbone} weights from {weights} ({error}). Give a weights file saved "
                f"for {backbone} with include_top=False, or use weights='imagenet'."
            ) from error
        raise WeightsError(
            f"The ImageNet weights for {backbone} are not in the Keras cache ({keras_cache_dir()}) and could not "
            f"be downloaded ({str(error)[:200]}). Fix one of: connect to the internet once (Keras then keeps the file); "
            f"copy {KERAS_WEIGHT_FILES[backbone]} into {keras_cache_dir()}; set {ENVIRONMENT_VARIABLES['weights']} "
            f"to the path of a weights file; or use the light backbone with {ENVIRONMENT_VARIABLES['backbone']}=mobilenet_v2."
        ) from error
    _MODELS[key] = model
    return model


def preprocess_batch(pixels: np.ndarray, recipe: FeatureRecipe) -> np.ndarray:
    """uint8 RGB batch -> the network's input. ResNet50 expects BGR with the ImageNet mean removed
    (its own preprocess_input), MobileNetV2 expects [-1, 1]: scaling by 1/255 (the article) fits neither."""
    batch = pixels.astype(np.float32)
    if recipe.preprocessing == "rescale":
        return batch / 255.0
    import keras

    module = {"resnet50": keras.applications.resnet50, "mobilenet_v2": keras.applications.mobilenet_v2}[recipe.backbone]
    return module.preprocess_input(batch)


def l2_normalize(vectors: np.ndarray, axis: int = -1) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=axis, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def pool_feature_maps(maps: np.ndarray, pooling: str) -> np.ndarray:
    """(N, H, W, C) feature maps -> (N, D) descriptors.

    - "gap": global average, L2-normalised (C numbers);
    - "grid2x2": averages over four overlapping quadrants, each normalised, then the whole (4C):
      the top of a garment stays apart from its bottom;
    - "flatten": every number of the map, unnormalised (the article's H*W*C numbers).
    """
    maps = np.asarray(maps, dtype=np.float32)
    if pooling == "flatten":
        return maps.reshape(len(maps), -1)
    if pooling == "gap":
        return l2_normalize(maps.mean(axis=(1, 2)))
    height, width = maps.shape[1:3]
    cells = []
    for row in range(2):
        for col in range(2):
            # adaptive pooling bounds: 7 -> rows 0..3 and 3..6 (the middle row belongs to both)
            r0, r1 = (row * height) // 2, -(-((row + 1) * height) // 2)
            c0, c1 = (col * width) // 2, -(-((col + 1) * width) // 2)
            cells.append(l2_normalize(maps[:, r0:r1, c0:c1, :].mean(axis=(1, 2))))
    return l2_normalize(np.concatenate(cells, axis=1))


COLOUR_DESCRIPTOR_VERSION = "lab-4x8x8-soft-filled-sqrt-v1"
LAB_BINS = (4, 8, 8)  # L* over 0..100, a* and b* over -60..60
LAB_RANGES = ((0.0, 100.0), (-60.0, 60.0), (-60.0, 60.0))


_LEVELS = np.arange(256, dtype=np.float32) / 255.0
_SRGB_TO_LINEAR = np.where(_LEVELS > 0.04045, ((_LEVELS + 0.055) / 1.055) ** 2.4, _LEVELS / 12.92).astype(np.float32)


def rgb_to_lab(pixels: np.ndarray) -> np.ndarray:
    """sRGB uint8 -> CIE L*a*b* (D65): distances there follow perceived colour differences."""
    linear = _SRGB_TO_LINEAR[np.asarray(pixels, dtype=np.uint8)]
    to_xyz = np.array([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169],
                       [0.019334, 0.119193, 0.950227]], dtype=np.float32)
    xyz = linear @ to_xyz.T / np.array([0.950456, 1.0, 1.088754], dtype=np.float32)
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def filled_product_mask(pixels: np.ndarray) -> np.ndarray:
    """The product's outline, holes filled: white parts of a garment (a logo, a sole) stay in, the
    background goes. A nearly all-white photo keeps every pixel."""
    from scipy import ndimage

    mask = ndimage.binary_fill_holes(ndimage.binary_closing(product_mask(pixels), iterations=2, border_value=0))
    return mask if mask.sum() >= 0.01 * mask.size else np.ones_like(mask)


def colour_descriptor(image: Image.Image) -> np.ndarray:
    """The colours of the product alone, as a soft L*a*b* histogram (4x8x8 bins), comparable by a dot product.

    Each pixel is shared between its neighbouring bins (no jumps at bin edges); the histogram is
    L1-normalised and square-rooted, so the dot product of two descriptors is their
    Bhattacharyya coefficient: 1 for the same colours, 0 for none in common.
    """
    pixels = np.asarray(image)
    lab = rgb_to_lab(pixels[filled_product_mask(pixels)])
    histogram = np.zeros(int(np.prod(LAB_BINS)), dtype=np.float64)
    positions, weights = [], []
    for channel, (count, (low, high)) in enumerate(zip(LAB_BINS, LAB_RANGES)):
        t = np.clip((lab[:, channel] - low) / (high - low) * (count - 1), 0, count - 1)
        lower = np.floor(t).astype(np.int64)
        positions.append((lower, np.minimum(lower + 1, count - 1)))
        weights.append((1 - (t - lower), t - lower))
    for corner in range(8):  # the 8 corners of the cell around each pixel (trilinear weights)
        bits = [(corner >> axis) & 1 for axis in range(3)]
        bin_index = (positions[0][bits[0]] * LAB_BINS[1] + positions[1][bits[1]]) * LAB_BINS[2] + positions[2][bits[2]]
        histogram += np.bincount(bin_index, weights[0][bits[0]] * weights[1][bits[1]] * weights[2][bits[2]],
                                 minlength=histogram.size)
    return np.sqrt(histogram / max(histogram.sum(), 1e-12)).astype(np.float32)


def embed_images(images: Iterable, recipe: FeatureRecipe) -> np.ndarray:
    """Descriptors for a few photos (paths, bytes or PIL images), through exactly the catalogue's pipeline."""
    pixels = np.stack([to_square(load_image(image), recipe.geometry, recipe.image_size) for image in images])
    return run_network(pixels, recipe)


def run_network(pixels: np.ndarray, recipe: FeatureRecipe) -> np.ndarray:
    model = load_backbone(recipe.backbone, _weights_argument(recipe))
    batch = preprocess_batch(pixels, recipe)
    if recipe.is_reference:  # the article: model.predict, one image at a time
        maps = np.concatenate([model.predict(batch[i:i + 1], verbose=0) for i in range(len(batch))])
    else:
        maps = np.asarray(model(batch, training=False))
    return pool_feature_maps(maps, recipe.pooling).astype(recipe.dtype)


def _weights_argument(recipe: FeatureRecipe) -> str:
    # the recipe keeps "imagenet:sha256=..." or "<file name>:sha256=..."; Keras wants the original value
    return _WEIGHT_SOURCES.get(recipe.weights, recipe.weights.split(":sha256=")[0])


_WEIGHT_SOURCES: dict[str, str] = {}


def resolve_recipe(recipe: FeatureRecipe) -> FeatureRecipe:
    """Replace the weights setting ("imagenet" or a path) by its identity, which includes the file's hash."""
    if ":sha256=" in recipe.weights or recipe.weights == RANDOM_WEIGHTS:
        return recipe
    identity = weights_identity(recipe.backbone, recipe.weights)
    _WEIGHT_SOURCES[identity] = recipe.weights
    return dataclasses.replace(recipe, weights=identity)


def weights_setting(recipe: FeatureRecipe) -> str:
    """The weights setting behind a resolved recipe ("imagenet", "random" or a file path): what another
    process (a Ray worker) needs to resolve the same recipe and load the same weights."""
    return _weights_argument(recipe)


@dataclasses.dataclass
class Features:
    """Descriptors of a set of products, row for row with `ids`."""

    ids: np.ndarray          # ProductIds (str)
    vectors: np.ndarray      # (N, D) CNN descriptors
    colours: np.ndarray      # (N, C) colour descriptors of the product (background ignored)
    recipe: FeatureRecipe
    cache_dir: Path | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def megabytes(self) -> float:
        return self.vectors.nbytes / 1e6


class FeatureCacheWarning(UserWarning):
    """Part of the feature cache was damaged or written by other settings; it is recomputed."""


def feature_cache_dir(recipe: FeatureRecipe, artifacts_dir=None) -> Path:
    """artifacts/features/<recipe name>-<hash of the recipe>: a cache per recipe, never shared."""
    recipe = resolve_recipe(recipe)
    key = hashlib.sha256(json.dumps(_cache_identity(recipe), sort_keys=True).encode()).hexdigest()[:12]
    return Path(artifacts_dir or get_settings().artifacts_dir) / "features" / f"{recipe.name}-{key}"


def _cache_identity(recipe: FeatureRecipe) -> dict:
    return {"format": CACHE_FORMAT, "recipe": dataclasses.asdict(recipe), "colour": COLOUR_DESCRIPTOR_VERSION}


def extract_features(catalog: pd.DataFrame, recipe: FeatureRecipe | None = None, *, artifacts_dir=None,
                     batch_size: int = 32, shard_size: int = 512, progress: bool = True,
                     on_progress=None) -> Features:
    """Descriptors of every product in `catalog`, computed only where the cache has none.

    Photos are decoded by a thread pool while the network runs on the previous batch. Results
    are saved every `shard_size` images, so an interrupted run resumes where it stopped. A
    product whose photo changed (different bytes) is recomputed; the rest is read back.
    Unreadable photos are reported and left out. `on_progress(done, total)`, if given, is called
    after each photo computed (the web app draws its progress bar with it).
    """
    recipe = resolve_recipe((recipe or default_recipe()).check())
    cache_dir = feature_cache_dir(recipe, artifacts_dir)
    writable_dir(cache_dir)
    ids = catalog["ProductId"].to_numpy(dtype=str)
    fingerprints = catalog["image_sha256"].to_numpy(dtype=str)
    todo = uncached_positions(catalog, cache_dir, recipe)
    if todo:
        failures = _compute_into_cache(catalog.iloc[todo], recipe, cache_dir, batch_size, shard_size, progress,
                                       on_progress)
        if failures:
            examples = "; ".join(f"{pid}: {reason}" for pid, reason in list(failures.items())[:5])
            warnings.warn(f"{len(failures)} photo(s) could not be read and are left out ({examples}).", stacklevel=2)
    stored = read_feature_cache(cache_dir, recipe)
    known = _rows_by_id(stored)
    keep = [i for i, (pid, fp) in enumerate(zip(ids, fingerprints)) if known.get(pid, (None,))[0] == fp]
    rows = [known[ids[i]][1] for i in keep]
    return Features(ids=ids[keep], vectors=stored["vectors"][rows], colours=stored["colours"][rows], recipe=recipe, cache_dir=cache_dir)


def uncached_positions(catalog: pd.DataFrame, cache_dir: Path, recipe: FeatureRecipe) -> list[int]:
    """Positions of the catalogue rows the cache has no descriptor for: new products and changed photos."""
    known = _rows_by_id(read_feature_cache(cache_dir, recipe))
    pairs = zip(catalog["ProductId"].to_numpy(dtype=str), catalog["image_sha256"].to_numpy(dtype=str))
    return [i for i, (pid, fp) in enumerate(pairs) if known.get(pid, (None,))[0] != fp]


def _compute_into_cache(rows: pd.DataFrame, recipe, cache_dir, batch_size, shard_size, progress,
                        on_progress=None) -> dict:
    from tqdm.auto import tqdm

    if recipe.is_reference:
        batch_size = 1  # the article's generator ran with batch_size=1
    failures, finished = {}, 0
    bar = tqdm(total=len(rows), desc=f"{recipe.name} features", unit="img", disable=not progress)
    # Network (and TensorFlow) first: importing TensorFlow while Pillow decodes in the threads below
    # crashed the process (segfault in ImageFile.load) when a fresh process computed its first features.
    load_backbone(recipe.backbone, _weights_argument(recipe))
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        for start in range(0, len(rows), shard_size):
            chunk = rows.iloc[start:start + shard_size]
            prepared = pool.map(lambda path: prepare_photo(path, recipe), chunk["image_path"])
            done_ids, done_fps, vectors, colours, pixels = [], [], [], [], []
            for pid, fp, (result, error) in zip(chunk["ProductId"], chunk["image_sha256"], prepared):
                if error:
                    failures[pid] = error
                else:
                    done_ids.append(pid); done_fps.append(fp)
                    pixels.append(result[0]); colours.append(result[1])
                if len(pixels) == batch_size:
                    vectors.append(run_network(np.stack(pixels), recipe)); pixels = []
                bar.update(1)
                finished += 1
                if on_progress is not None:
                    on_progress(finished, len(rows))
            if pixels:
                vectors.append(run_network(np.stack(pixels), recipe))
            if done_ids:
                write_feature_shard(cache_dir, recipe, np.array(done_ids), np.array(done_fps),
                             np.concatenate(vectors), np.stack(colours).astype(np.float32))
    bar.close()
    return failures


def prepare_photo(path: str, recipe: FeatureRecipe):
    try:
        image = load_image(path)
    except ImageError as error:
        return None, str(error)
    return (to_square(image, recipe.geometry, recipe.image_size), colour_descriptor(image)), None


@contextlib.contextmanager
def _locked(cache_dir: Path):
    """An exclusive lock on the cache folder, so two writers (notebook and app) never mix manifests."""
    import fcntl

    with open(cache_dir / ".lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_feature_shard(cache_dir: Path, recipe: FeatureRecipe, ids, fingerprints, vectors, colours) -> None:
    """Save one shard (atomic), then add it to the manifest under the lock: a shard counts only once listed."""
    name = f"shard-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}.npz"
    with atomic_write(cache_dir / name) as handle:
        np.savez(handle, ids=ids, fingerprints=fingerprints, vectors=vectors.astype(recipe.dtype), colours=colours)
    entry = {"file": name, "sha256": file_sha256(cache_dir / name), "count": int(len(ids))}
    with _locked(cache_dir):
        manifest = _read_manifest(cache_dir, recipe) or _new_manifest(recipe)
        manifest["shards"].append(entry)
        manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        with atomic_write(cache_dir / "manifest.json", "w") as out:
            json.dump(manifest, out, indent=1)


def _new_manifest(recipe: FeatureRecipe) -> dict:
    return {**_cache_identity(recipe), "versions": show_versions(), "shards": []}


def _read_manifest(cache_dir: Path, recipe: FeatureRecipe) -> dict | None:
    path = cache_dir / "manifest.json"
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
        shards = manifest["shards"]
        if not all({"file", "sha256", "count"} <= set(entry) for entry in shards):
            raise ValueError("shard entries lack file, sha256 or count")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
        warnings.warn(f"Feature cache manifest {path} is damaged ({error}); the features are recomputed.",
                      FeatureCacheWarning, stacklevel=3)
        return None
    if {k: manifest.get(k) for k in ("format", "recipe", "colour")} != _cache_identity(recipe):
        warnings.warn(f"Feature cache {cache_dir} was written by other settings; it is not reused and is rebuilt.",
                      FeatureCacheWarning, stacklevel=3)
        return None
    return manifest


def _load_shard(cache_dir: Path, entry: dict) -> dict | None:
    path = cache_dir / entry["file"]
    try:
        if file_sha256(path) != entry["sha256"]:
            raise ValueError("its checksum does not match the manifest")
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in ("ids", "fingerprints", "vectors", "colours")}
        if not len(arrays["ids"]) == len(arrays["vectors"]) == len(arrays["colours"]) == entry["count"]:
            raise ValueError("its arrays do not have the listed length")
    except (OSError, ValueError, KeyError) as error:
        warnings.warn(f"Feature cache file {path} is damaged or missing ({error}); its products are recomputed.",
                      FeatureCacheWarning, stacklevel=4)
        return None
    return arrays


def read_feature_cache(cache_dir: Path, recipe: FeatureRecipe) -> dict[str, np.ndarray]:
    """Every valid shard of a cache, concatenated: arrays ids, fingerprints, vectors, colours.

    A shard that is damaged, missing or not listed in the manifest is ignored (with a warning
    for the first two); when an id appears in several shards the last one wins."""
    manifest = _read_manifest(cache_dir, recipe) or {"shards": []}
    loaded = [arrays for arrays in (_load_shard(cache_dir, entry) for entry in manifest["shards"]) if arrays is not None]
    if not loaded:
        return {"ids": np.array([], dtype=str), "fingerprints": np.array([], dtype=str),
                "vectors": np.zeros((0, 0), dtype=recipe.dtype), "colours": np.zeros((0, 0), dtype=np.float32)}
    return {name: np.concatenate([arrays[name] for arrays in loaded]) for name in loaded[0]}


def _rows_by_id(stored: dict) -> dict[str, tuple[str, int]]:
    return {pid: (fp, row) for row, (pid, fp) in enumerate(zip(stored["ids"], stored["fingerprints"]))}


# ============================================================================
# Attribute probes: the product type and colour a photo shows, learned from the catalogue
# ============================================================================

# Logistic regressions on the frozen descriptors, one per attribute (C tuned on a held-out half of
# the queries). They read pixels only: a query's own labels never enter its score.
ATTRIBUTE_PROBES = {"ProductType": 0.01, "Colour": 0.1}
ATTRIBUTE_FOLDS = 5
ATTRIBUTE_MIN_PRODUCTS = 300  # fewer labelled products teach the probes too little to help
ATTRIBUTES_VERSION = "logreg-lookmean+lab-v2"


@dataclasses.dataclass
class AttributeModel:
    """One fitted probe as plain arrays: standardise, then a softmax over `classes`."""

    classes: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        logits = ((np.asarray(inputs, np.float32) - self.mean) / self.scale) @ self.coef.T + self.intercept
        logits -= logits.max(axis=1, keepdims=True)
        odds = np.exp(logits)
        return (odds / odds.sum(axis=1, keepdims=True)).astype(np.float32)


def probe_inputs(vectors: np.ndarray, colours: np.ndarray, pooling: str) -> np.ndarray:
    """What the probes read: the overall look (the mean of the 2x2 grid cells) and the colour histogram."""
    vectors = np.asarray(vectors, dtype=np.float32)
    look = l2_normalize(vectors.reshape(len(vectors), 4, -1).mean(axis=1)) if pooling == "grid2x2" else vectors
    return np.concatenate([look, np.asarray(colours, dtype=np.float32)], axis=1)


def _fit_probe(inputs: np.ndarray, labels: np.ndarray, C: float, classes: np.ndarray) -> AttributeModel:
    from sklearn.linear_model import LogisticRegression

    mean, scale = inputs.mean(axis=0), inputs.std(axis=0) + 1e-6
    # tol 1e-3: the same rankings as a tight fit, in a fraction of the iterations
    fitted = LogisticRegression(C=C, max_iter=2000, tol=1e-3).fit((inputs - mean) / scale, labels)
    # classes missing from this training fold get no probability
    coef = np.zeros((len(classes), inputs.shape[1]), np.float32)
    intercept = np.full(len(classes), -1e4, np.float32)
    rows = np.searchsorted(classes, fitted.classes_)
    if len(fitted.classes_) == 2:  # a binary fit returns one row: the second class against the first
        coef[rows[1]], intercept[rows[1]] = fitted.coef_[0], fitted.intercept_[0]
        coef[rows[0]], intercept[rows[0]] = 0.0, 0.0
    else:
        coef[rows], intercept[rows] = fitted.coef_, fitted.intercept_
    return AttributeModel(classes, mean.astype(np.float32), scale.astype(np.float32), coef, intercept)


def fit_attribute_probes(catalog: pd.DataFrame, features: Features) -> tuple[dict, dict]:
    """Out-of-fold probabilities of each attribute for every product, and probes fitted on all of them.

    Each product's probabilities come from probes that never saw it (5 folds, byte-identical
    copies kept in one fold), so catalogue queries and evaluation stay honest; the probes fitted
    on the whole catalogue serve new photos. Cached beside the features, keyed by the products,
    their photos and labels: retrained whenever any of them changes.
    """
    rows = catalog.set_index("ProductId").loc[features.ids]
    key = hashlib.sha256(json.dumps([ATTRIBUTES_VERSION, ATTRIBUTE_PROBES, ATTRIBUTE_FOLDS, features.ids.tolist(),
                                     rows["image_sha256"].tolist(), rows["ProductType"].tolist(),
                                     rows["Colour"].tolist()]).encode()).hexdigest()[:16]
    path = Path(features.cache_dir) / f"attributes-{key}.npz" if features.cache_dir else None
    if path is not None and path.exists():
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
            return ({target: arrays[f"{target}.oof"] for target in ATTRIBUTE_PROBES},
                    {target: AttributeModel(*(arrays[f"{target}.{part}"] for part in
                                              ("classes", "mean", "scale", "coef", "intercept")))
                     for target in ATTRIBUTE_PROBES})
        except (OSError, ValueError, KeyError) as error:
            warnings.warn(f"Attribute probes {path} are damaged ({error}); they are refitted.", FeatureCacheWarning, stacklevel=2)
    from sklearn.model_selection import StratifiedGroupKFold

    inputs = probe_inputs(features.vectors, features.colours, features.recipe.pooling)
    folds = np.zeros(len(inputs), dtype=np.int64)
    splitter = StratifiedGroupKFold(ATTRIBUTE_FOLDS, shuffle=True, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rare types have fewer members than folds: expected
        for fold, (_, held_out) in enumerate(splitter.split(inputs, rows["ProductType"], rows["duplicate_group"])):
            folds[held_out] = fold
        out_of_fold, models, arrays = {}, {}, {}
        for target, C in ATTRIBUTE_PROBES.items():
            labels = rows[target].to_numpy(dtype=str)
            classes = np.unique(labels)
            out_of_fold[target] = np.zeros((len(inputs), len(classes)), np.float32)
            for fold in range(ATTRIBUTE_FOLDS):
                train = folds != fold
                model = _fit_probe(inputs[train], labels[train], C, classes)
                out_of_fold[target][~train] = model.predict(inputs[~train])
            models[target] = _fit_probe(inputs, labels, C, classes)
            arrays[f"{target}.oof"] = out_of_fold[target]
            arrays.update({f"{target}.{part}": getattr(models[target], part)
                           for part in ("classes", "mean", "scale", "coef", "intercept")})
    if path is not None:
        with atomic_write(path) as handle:
            np.savez(handle, **arrays)
    return out_of_fold, models


# ============================================================================
# Index and search
# ============================================================================

# The score blends two similarities: visual (cosine of the CNN descriptors) and colour-aware
# (the probes' probability that two products share type and colour, 5/6, plus the colour
# histograms, 1/6): score = (1 - w) * visual + w * colour-aware. The default w = 0.4 is the
# largest weight that kept ProductType precision at its pure-visual level on a development half
# of the queries (README, "How it works").
DEFAULT_COLOUR_WEIGHT = 0.4
ATTRIBUTE_SHARE = 5 / 6
SAME_PHOTO_SIMILARITY = 0.999  # visual cosine of a photo with itself (up to float16 rounding)
PAIR_SCORES_MAX_ROWS = 5_000  # per gender: two float32 matrices of at most 100 MB
CANDIDATE_POOL = 100  # large catalogues: FAISS proposes this many visual candidates to re-rank
MAX_RESULTS = 100


class SearchError(ValueError):
    """A query the engine cannot answer as given (bad k, unknown filter value, unreadable image)."""


@dataclasses.dataclass
class Index:
    """The searchable catalogue: rows grouped by gender, aligned with their descriptors."""

    catalog: pd.DataFrame
    vectors: np.ndarray            # float32 (N, D)
    colours: np.ndarray            # float32 (N, C)
    recipe: FeatureRecipe
    gender_rows: dict[str, slice]  # each gender's rows are contiguous: a query multiplies only its slice
    positions: dict[str, int]      # ProductId -> row
    codes: dict[str, pd.Categorical]
    groups: np.ndarray             # duplicate group of each row, as integer codes
    feature_cache_dir: Path | None = None  # where the FAISS index of a large catalogue is cached
    faiss_index: object | None = dataclasses.field(default=None, repr=False)  # see attach_faiss_index
    attributes: dict[str, np.ndarray] | None = None          # out-of-fold attribute probabilities per row
    attribute_models: dict[str, AttributeModel] | None = None  # probes for new photos
    # per gender slice (start, stop): its (visual, colour-aware) similarity matrices, for catalogues
    # small enough to keep every pair: a product query then reads one row instead of multiplying
    pair_scores: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] | None = None

    def __len__(self) -> int:
        return len(self.catalog)

    @property
    def is_reference(self) -> bool:
        return self.recipe.is_reference


@dataclasses.dataclass(frozen=True)
class Query:
    """What a search compares: a descriptor, a colour histogram and (with probes) attribute probabilities."""

    vector: np.ndarray
    colour: np.ndarray
    attributes: dict[str, np.ndarray] | None = None
    position: int | None = None  # the index row of a product query (None for a photo)


def build_index(catalog: pd.DataFrame, features: Features, attributes: bool | None = None) -> Index:
    """Join the catalogue with its features; products without features are left out.

    `attributes` fits (or loads) the attribute probes; by default they are used when the
    catalogue has at least ATTRIBUTE_MIN_PRODUCTS products and the features come from a cache.
    """
    if features.recipe.weights == RANDOM_WEIGHTS:
        warnings.warn("These features come from an untrained network (weights='random'): "
                      "use them to test shapes, never as recommendations.", stacklevel=2)
    if attributes is None:
        attributes = (len(features) >= ATTRIBUTE_MIN_PRODUCTS and features.cache_dir is not None
                      and not features.recipe.is_reference and features.recipe.weights != RANDOM_WEIGHTS)
    row_of = {pid: row for row, pid in enumerate(features.ids)}
    rows = catalog[catalog["ProductId"].isin(row_of)].copy()
    rows["_gender"] = pd.Categorical(rows["Gender"], categories=GENDERS)
    rows = rows.sort_values("_gender", kind="stable").drop(columns="_gender").reset_index(drop=True)
    order = np.array([row_of[pid] for pid in rows["ProductId"]], dtype=np.int64)
    gender_rows, start = {}, 0
    for gender in GENDERS:
        count = int((rows["Gender"] == gender).sum())
        gender_rows[gender] = slice(start, start + count)
        start += count
    index = Index(
        catalog=rows,
        vectors=np.ascontiguousarray(features.vectors[order], dtype=np.float32),
        colours=np.ascontiguousarray(features.colours[order], dtype=np.float32),
        recipe=features.recipe,
        gender_rows=gender_rows,
        positions={pid: row for row, pid in enumerate(rows["ProductId"])},
        codes={column: pd.Categorical(rows[column]) for column in FILTER_COLUMNS},
        groups=pd.factorize(rows["duplicate_group"])[0],
        feature_cache_dir=features.cache_dir,
        **(_attribute_fields(catalog, features, order) if attributes else {}),
    )
    if not index.is_reference and max(s.stop - s.start for s in gender_rows.values()) <= PAIR_SCORES_MAX_ROWS:
        index.pair_scores = {(s.start, s.stop): pair_similarities(index, s) for s in gender_rows.values()}
    return index


def _attribute_fields(catalog: pd.DataFrame, features: Features, order: np.ndarray) -> dict:
    out_of_fold, models = fit_attribute_probes(catalog, features)
    return {"attributes": {target: probabilities[order] for target, probabilities in out_of_fold.items()},
            "attribute_models": models}


def product_query(index: Index, position: int) -> Query:
    """The query for the product at `position`: its descriptors and held-out attribute probabilities."""
    attributes = None if index.attributes is None else {t: p[position] for t, p in index.attributes.items()}
    return Query(index.vectors[position], index.colours[position], attributes, position)


def describe_photo(index: Index, image) -> Query:
    """Run a photo (path, bytes, file object or PIL image) through exactly the catalogue's pipeline."""
    photo = load_image(image)
    vector = run_network(to_square(photo, index.recipe.geometry, index.recipe.image_size)[None], index.recipe)
    colour = colour_descriptor(photo)[None]
    attributes = None
    if index.attribute_models is not None:
        inputs = probe_inputs(vector, colour, index.recipe.pooling)
        attributes = {target: model.predict(inputs)[0] for target, model in index.attribute_models.items()}
    return Query(vector[0].astype(np.float32), colour[0], attributes)


def colour_aware_similarity(index: Index, rows, query: Query, visual: np.ndarray | None = None) -> np.ndarray:
    """Similarity in type-and-colour of the products at `rows` (a slice or positions) to the query.
    Given their visual similarities, a product showing the query's own photo counts as sharing both."""
    histogram = index.colours[rows] @ query.colour
    if index.attributes is None or query.attributes is None:
        return histogram
    shared = (index.attributes["ProductType"][rows] @ query.attributes["ProductType"]) \
        * (index.attributes["Colour"][rows] @ query.attributes["Colour"])
    if visual is not None:  # the probes judge two photos as independent draws; one photo is one product
        shared = np.where(visual >= SAME_PHOTO_SIMILARITY, 1.0, shared)
    return ATTRIBUTE_SHARE * shared + (1 - ATTRIBUTE_SHARE) * histogram


def load_index(catalog: pd.DataFrame | None = None, settings: Settings | None = None,
               recipe: FeatureRecipe | None = None, progress: bool = True, on_progress=None) -> Index:
    """Catalogue + cached features (computed where missing) -> Index: the one call most users need."""
    settings = settings or get_settings()
    catalog = load_catalog(settings.data_dir) if catalog is None else catalog
    features = extract_features(catalog, recipe or default_recipe(settings),
                                artifacts_dir=settings.artifacts_dir, progress=progress, on_progress=on_progress)
    return build_index(catalog, features)


def check_k(k) -> int:
    """k must be a whole number from 1 to MAX_RESULTS; more than the candidates simply returns them all."""
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer, str, float)):
        raise SearchError(f"k must be a whole number of results, got {k!r}.")
    try:
        value = int(str(k).strip()) if isinstance(k, str) else int(k)
    except ValueError:
        raise SearchError(f"k must be a whole number of results, got {k!r}.") from None
    if isinstance(k, float) and not k.is_integer():
        raise SearchError(f"k must be a whole number of results, got {k!r}.")
    if not 1 <= value <= MAX_RESULTS:
        raise SearchError(f"k must be between 1 and {MAX_RESULTS}, got {value}.")
    return value


def _filter_mask(index: Index, rows: slice, filters: dict) -> np.ndarray | None:
    """Boolean mask over `rows` for the chosen SubCategory/ProductType/Colour/Usage values."""
    mask = None
    for column, wanted in filters.items():
        if wanted is None or (not isinstance(wanted, str) and len(wanted) == 0):
            continue
        wanted = [wanted] if isinstance(wanted, str) else list(wanted)
        categories = index.codes[column].categories
        unknown = [value for value in wanted if value not in categories]
        if unknown:
            raise SearchError(f"No product has {column} {', '.join(map(repr, unknown))}; "
                              f"choose from {', '.join(categories[:30])}.")
        codes = index.codes[column].codes[rows]
        keep = np.isin(codes, [categories.get_loc(value) for value in wanted])
        mask = keep if mask is None else mask & keep
    return mask


def pair_similarities(index: Index, rows: slice) -> tuple[np.ndarray, np.ndarray]:
    """Visual and colour-aware similarities of every pair of products in `rows` (as
    colour_aware_similarity computes them, for all queries at once)."""
    vectors = index.vectors[rows]
    visual = vectors @ vectors.T
    colour = index.colours[rows] @ index.colours[rows].T
    if index.attributes is not None:
        shared = np.ones_like(colour)
        for probabilities in index.attributes.values():
            shared *= probabilities[rows] @ probabilities[rows].T
        shared[visual >= SAME_PHOTO_SIMILARITY] = 1.0
        colour = ATTRIBUTE_SHARE * shared + (1 - ATTRIBUTE_SHARE) * colour
    return visual.astype(np.float32), colour.astype(np.float32)


def _rank(index: Index, query: Query, rows: slice, k: int, exclude: np.ndarray | None,
          mask: np.ndarray | None, colour_weight: float) -> tuple[np.ndarray, dict]:
    """Top-k rows (absolute positions) within `rows`, best first, and their scores."""
    if uses_faiss(index):  # a large catalogue: FAISS candidates, exact scores (see FAISS_MIN_PRODUCTS)
        return _rank_with_faiss(index, query, rows, k, exclude, mask, colour_weight)
    candidates = index.vectors[rows]
    if index.is_reference:  # the article: Euclidean distance over the flattened maps
        from sklearn.metrics import pairwise_distances

        visual = -pairwise_distances(candidates, query.vector.reshape(1, -1)).ravel()
        colour = np.zeros_like(visual)
    elif index.pair_scores is not None and query.position is not None and (rows.start, rows.stop) in index.pair_scores:
        visual, colour = (matrix[query.position - rows.start] for matrix in index.pair_scores[(rows.start, rows.stop)])
    else:
        visual = candidates @ query.vector
        colour = colour_aware_similarity(index, rows, query, visual)
    score = (1 - colour_weight) * visual.astype(np.float64) + colour_weight * colour
    if mask is not None:
        score[~mask] = -np.inf
    if exclude is not None:
        score[exclude] = -np.inf
    count = min(k, int(np.isfinite(score).sum()))
    top = np.argpartition(-score, count - 1)[:count] if count else np.array([], dtype=np.int64)
    top = top[np.argsort(-score[top], kind="stable")]
    return rows.start + top, {"similarity": score[top], "visual_similarity": visual[top], "colour_similarity": colour[top]}


def _check_colour_weight(colour_weight) -> float:
    value = DEFAULT_COLOUR_WEIGHT if colour_weight is None else float(colour_weight)
    if not 0.0 <= value <= 1.0:
        raise SearchError(f"colour_weight must be between 0 (pure visual) and 1 (pure colour), got {colour_weight!r}.")
    return value


def similar_products(index: Index, product_id, k: int = 5, *, across_genders: bool = False,
                     subcategory=None, product_type=None, colour=None, usage=None,
                     colour_weight: float | None = None, min_similarity: float | None = None,
                     include_duplicates: bool = False) -> pd.DataFrame:
    """The k products that look most like `product_id`, best first.

    By default only products of the same gender are considered (the article's rule) and the
    product itself and its byte-identical copies are left out. The filters keep only the given
    SubCategory / ProductType / Colour / Usage values (a string or a list); `colour_weight`
    blends colour similarity into the ranking (0 = pure CNN, 1 = pure colour).

    >>> similar_products(index, "13683", k=5)  # doctest: +SKIP
    """
    product_id = normalize_product_id(product_id)
    if product_id not in index.positions:
        raise KeyError(unknown_product_message(index.catalog["ProductId"], product_id))
    position = index.positions[product_id]
    gender = index.catalog.at[position, "Gender"]
    rows = slice(0, len(index)) if across_genders else index.gender_rows[gender]
    exclude = np.flatnonzero(index.groups[rows] == index.groups[position]) if not include_duplicates \
        else np.array([position - rows.start])
    return _search(index, product_query(index, position), k, rows, exclude,
                   dict(SubCategory=subcategory, ProductType=product_type, Colour=colour, Usage=usage),
                   colour_weight, min_similarity)


def similar_to_image(index: Index, image, k: int = 5, *, gender: str | None = None,
                     subcategory=None, product_type=None, colour=None, usage=None,
                     colour_weight: float | None = None, min_similarity: float | None = None) -> pd.DataFrame:
    """The k catalogue products that look most like any photo (path, bytes, file object or PIL image).

    The photo goes through exactly the catalogue's pipeline. Without `gender`, all genders are searched.
    """
    return similar_to_query(index, describe_photo(index, image), k, gender=gender, subcategory=subcategory,
                            product_type=product_type, colour=colour, usage=usage,
                            colour_weight=colour_weight, min_similarity=min_similarity)


def similar_to_query(index: Index, query: Query, k: int = 5, *, gender: str | None = None,
                     subcategory=None, product_type=None, colour=None, usage=None,
                     colour_weight: float | None = None, min_similarity: float | None = None) -> pd.DataFrame:
    """The k products most like an already described photo (see describe_photo): re-ranking with
    other settings needs no second pass through the network."""
    if gender is not None and gender not in GENDERS:
        raise SearchError(f"Unknown gender {gender!r}; choose one of {', '.join(GENDERS)}.")
    rows = index.gender_rows[gender] if gender else slice(0, len(index))
    return _search(index, query, k, rows, None,
                   dict(SubCategory=subcategory, ProductType=product_type, Colour=colour, Usage=usage),
                   colour_weight, min_similarity)


def _search(index: Index, query: Query, k, rows: slice, exclude, filters: dict, colour_weight, min_similarity):
    k = check_k(k)
    colour_weight = 0.0 if index.is_reference else _check_colour_weight(colour_weight)
    mask = _filter_mask(index, rows, filters)
    positions, scores = _rank(index, query, rows, k, exclude, mask, colour_weight)
    results = index.catalog.loc[positions, ["ProductId", "ProductTitle", "Gender", *FILTER_COLUMNS, "image_path"]]
    results = results.assign(**scores).reset_index(drop=True)
    if min_similarity is not None:
        results = results[results["similarity"] >= float(min_similarity)].reset_index(drop=True)
    results.insert(0, "rank", np.arange(1, len(results) + 1))
    product = None if query.position is None else index.catalog.loc[query.position]
    results["why"] = [explain_similarity(product, row, index.colours[position], query.colour)
                      for position, (_, row) in zip(positions, results.iterrows())]
    return results


# Hue angles in the a*b* plane where each colour name ends (degrees, counter-clockwise from +a*).
_HUE_NAMES = [(20, "pink"), (45, "red"), (70, "orange"), (105, "yellow"), (170, "green"),
              (230, "teal"), (290, "blue"), (330, "purple"), (360, "pink")]


def lab_colour_name(lightness: float, a: float, b: float) -> str:
    """A plain colour word for an L*a*b* colour: 'navy', 'white', 'red', ..."""
    if np.hypot(a, b) < 15:  # unsaturated: a grey level
        for limit, name in ((20, "black"), (45, "dark grey"), (70, "grey"), (90, "light grey")):
            if lightness < limit:
                return name
        return "white"
    angle = float(np.degrees(np.arctan2(b, a)) % 360)
    name = next(name for limit, name in _HUE_NAMES if angle < limit)
    if lightness < 40:
        name = {"blue": "navy", "red": "maroon", "orange": "brown", "yellow": "olive"}.get(name, "dark " + name)
    return name


def colour_names(descriptor: np.ndarray, top: int = 2) -> list[str]:
    """The names of the `top` strongest colours of a colour descriptor (e.g. ['navy', 'white'])."""
    shares = np.asarray(descriptor, dtype=np.float64) ** 2  # undo the square root: each bin's share of pixels
    names: dict[str, float] = {}
    for bin_index in np.argsort(-shares):
        if shares[bin_index] < 0.05 or len(names) >= top:
            break
        l_bin, rest = divmod(int(bin_index), LAB_BINS[1] * LAB_BINS[2])
        a_bin, b_bin = divmod(rest, LAB_BINS[2])
        centre = [low + step * (high - low) / (count - 1)
                  for step, count, (low, high) in zip((l_bin, a_bin, b_bin), LAB_BINS, LAB_RANGES)]
        name = lab_colour_name(*centre)
        names[name] = names.get(name, 0.0) + shares[bin_index]
    return list(names)


def explain_similarity(query: pd.Series | None, result: pd.Series, result_colour, query_colour) -> str:
    """A short 'why similar': the attributes the two products share and their dominant colours."""
    parts = []
    if query is not None:
        shared = [f"{column} {result[column]}" for column in ("ProductType", "Colour", "Usage")
                  if query[column] == result[column]]
        if shared:
            parts.append("same " + ", ".join(shared))
    common = [name for name in colour_names(result_colour) if name in colour_names(query_colour, top=3)]
    parts.append(f"both {' and '.join(common)}" if common else f"colours: {', '.join(colour_names(result_colour))}")
    return "; ".join(parts)


# ----------------------------------------------------------------------------
# Large catalogues: a FAISS index proposes candidates, exact dot products rank them
# ----------------------------------------------------------------------------
# The exact search reads every descriptor of the query's slice (20 KB per product at 5120
# numbers): benchmark.py measured 0.8 to 2.3 ms per 1000 products scanned on 2 cores, idle to
# busy (10k: 7-23 ms, 100k: 78-255 ms), so from FAISS_MIN_PRODUCTS on (gender slices of ~5000,
# where the precomputed pair scores stop) a query would cost 4-12 ms and growing, while FAISS
# stays at 1-2 ms (similar_products at 100k: 27 ms exact, 6 ms FAISS). There a FAISS index,
# cached beside the features, proposes candidates: descriptors compressed by PCA to 256 numbers, an IVF with
# ~4 sqrt(N) lists, 32 of them visited (1M synthetic products: recall@10 0.993 at 1.9 ms/query,
# built in 2 min, 1 GB), and exact dot products on the full descriptors rank the candidates:
# same scores, filters and colour blend. Below the threshold the exact search stays exact and
# needs no index build.
FAISS_MIN_PRODUCTS = 20_000
FAISS_PCA_DIMENSIONS = 256  # keeps ~80 % of the variance; re-ranking restores the order (recall 0.86 -> 0.99)
FAISS_PROBES = 32           # inverted lists visited per query (of about 4 x sqrt(N))
FAISS_TRAINING_SAMPLE = 50_000
_FAISS_LOCK = threading.RLock()
_FAISS_SEARCH_LOCK = threading.Lock()


def faiss_index_spec(n_products: int) -> str:
    """The FAISS index a catalogue of `n_products` gets: "PCA256,IVF<lists>,Flat" (about 4 x sqrt(N)
    inverted lists, at least 39 training points each). "Flat" (exact inner product) also works."""
    lists = max(16, min(int(4 * np.sqrt(n_products)), n_products // 39))
    return f"PCA{FAISS_PCA_DIMENSIONS},IVF{lists},Flat"


def _pca_transform(sample: np.ndarray, dimensions: int, seed: int = 0):
    """PCA fitted with a randomized SVD (seconds; FAISS's own PCAMatrix takes minutes at 5120 numbers),
    as a FAISS LinearTransform y = A (x - mean). L2 distances survive centring, so do the rankings."""
    import faiss
    from sklearn.utils.extmath import randomized_svd

    mean = sample.mean(axis=0)
    _, _, components = randomized_svd(sample - mean, dimensions, n_iter=4, random_state=seed)
    transform = faiss.LinearTransform(sample.shape[1], dimensions, True)
    faiss.copy_array_to_vector(np.ascontiguousarray(components, dtype=np.float32).ravel(), transform.A)
    faiss.copy_array_to_vector((-components @ mean).astype(np.float32), transform.b)
    transform.is_trained = True
    return transform


def build_faiss_index(vectors: np.ndarray, spec: str = "auto", seed: int = 0, chunk: int = 65_536):
    """A FAISS index over `vectors` (float16 or float32, any size: read in chunks); its ids are row numbers.

    `spec` is a FAISS factory string, optionally starting with "PCA<d>," (fitted here), e.g.
    "PCA256,IVF4096,Flat" or "PCA256,HNSW32"; "Flat" is the exact inner-product index; "auto"
    picks faiss_index_spec(len(vectors)).
    """
    import faiss

    count, dimensions = vectors.shape
    if count == 0:
        raise SearchError("There are no products to index: compute the features first (load_index).")
    spec = faiss_index_spec(count) if spec == "auto" else spec
    if spec == "Flat":
        index = faiss.IndexFlatIP(dimensions)
    else:
        transform, rest = None, spec
        if spec.startswith("PCA"):
            head, rest = spec.split(",", 1)
            sample = np.sort(np.random.default_rng(seed).choice(count, min(count, 20_000), replace=False))
            transform = _pca_transform(np.asarray(vectors[sample], dtype=np.float32), int(head[3:]), seed)
        inner = faiss.index_factory(transform.d_out if transform else dimensions, rest, faiss.METRIC_L2)
        if not inner.is_trained:
            lists = re.search(r"IVF(\d+)", rest)  # k-means wants about 40 points per inverted list
            size = min(count, max(FAISS_TRAINING_SAMPLE, 40 * int(lists.group(1)) if lists else 0))
            sample = np.sort(np.random.default_rng(seed + 1).choice(count, size, replace=False))
            training = np.concatenate([_project(transform, vectors[sample[start:start + chunk]])
                                       for start in range(0, len(sample), chunk)])
            inner.train(training)
        index = faiss.IndexPreTransform(transform, inner) if transform else inner
    for start in range(0, count, chunk):
        index.add(np.ascontiguousarray(vectors[start:start + chunk], dtype=np.float32))
    return index


def _project(transform, vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return transform.apply(vectors) if transform is not None else vectors


def faiss_candidates(faiss_index, query_vector: np.ndarray, count: int, allowed: np.ndarray | None = None,
                     probes: int = FAISS_PROBES) -> np.ndarray:
    """Rows of about the `count` nearest vectors, best first; `allowed` (booleans over all rows)
    restricts the search inside FAISS. Fewer come back when the filter leaves few in reach.
    `probes`: the inverted lists an IVF visits, or an HNSW's efSearch (at least `count`)."""
    import faiss

    inner = faiss.downcast_index(faiss_index.index) if isinstance(faiss_index, faiss.IndexPreTransform) else faiss_index
    selector, bitmap = None, None
    if allowed is not None and not allowed.all():
        bitmap = np.packbits(allowed, bitorder="little")  # kept referenced while FAISS reads it
        selector = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bitmap))
    if isinstance(inner, faiss.IndexIVF):
        params = faiss.SearchParametersIVF(sel=selector, nprobe=min(int(probes), inner.nlist))
    elif isinstance(inner, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW(sel=selector, efSearch=max(min(int(probes), 4096), count))
    else:
        params = faiss.SearchParameters(sel=selector)
    if inner is not faiss_index:
        params = faiss.SearchParametersPreTransform(index_params=params)
    query = np.ascontiguousarray(query_vector, dtype=np.float32).reshape(1, -1)
    with _FAISS_SEARCH_LOCK:  # one query on one thread: two OpenMP threads only wait on each other (10x slower here)
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            _, labels = faiss_index.search(query, int(count), params=params)
        finally:
            faiss.omp_set_num_threads(threads)
    return labels[0][labels[0] >= 0]


def attach_faiss_index(index: Index, spec: str = "auto") -> Index:
    """Make `index` search through a FAISS index (built once, then read from the feature cache).

    similar_products and similar_to_image do this by themselves from FAISS_MIN_PRODUCTS products on;
    call it to build the index ahead of the first query, or with spec="Flat" to force the FAISS
    path with an exact index on a small catalogue. The cache file is named after the feature cache
    shards, the product ids and a sample of the vectors, so changed features get a new index.
    """
    import faiss

    with _FAISS_LOCK:
        path = _faiss_cache_path(index, spec)
        if path is not None and path.is_file():
            index.faiss_index = faiss.deserialize_index(np.fromfile(path, dtype=np.uint8))
            return index
        index.faiss_index = build_faiss_index(index.vectors, spec)
        if path is not None:
            with atomic_write(path) as handle:
                handle.write(memoryview(faiss.serialize_index(index.faiss_index)))
            for stale in path.parent.glob("faiss-*.index"):  # indexes of features since changed
                if stale != path:
                    stale.unlink(missing_ok=True)
    return index


def _faiss_cache_path(index: Index, spec: str) -> Path | None:
    if index.feature_cache_dir is None:
        return None
    import faiss

    manifest = _read_manifest(index.feature_cache_dir, index.recipe) or {"shards": []}
    step = max(1, len(index) // 256)
    identity = {
        "spec": faiss_index_spec(len(index)) if spec == "auto" else spec,
        "faiss": faiss.__version__,
        "shards": [[entry["file"], entry["sha256"]] for entry in manifest["shards"]],
        "ids": hashlib.sha256("\n".join(index.catalog["ProductId"]).encode()).hexdigest(),
        "vectors": hashlib.sha256(np.ascontiguousarray(index.vectors[::step]).tobytes()).hexdigest(),
        "shape": list(index.vectors.shape),
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return index.feature_cache_dir / f"faiss-{key}.index"


def uses_faiss(index: Index) -> bool:
    """Does a search over `index` go through FAISS? (attached, or a large catalogue)"""
    # the article's method ranks by Euclidean distance over raw maps: it always stays exact
    return not index.is_reference and (index.faiss_index is not None or len(index) >= FAISS_MIN_PRODUCTS)


def _rank_with_faiss(index: Index, query: Query, rows: slice, k: int, exclude: np.ndarray | None,
                     mask: np.ndarray | None, colour_weight: float) -> tuple[np.ndarray, dict]:
    """_rank's results for a large catalogue, without reading every descriptor.

    FAISS proposes the visually closest allowed products (gender slice, filters, query and its
    copies left out); their exact scores are computed. With a colour weight w, a product FAISS
    did not propose is no closer than the last one it did (visual <= v_last), so it can still
    enter the top k only if w * colour > kth best score - (1 - w) * v_last: those few are scored
    too (the threshold algorithm). The colour-aware score itself is cheap (about 330 numbers per
    product against 5120) and computed for the whole slice. With an exact FAISS index ("Flat")
    this returns exactly what _rank does.
    """
    if index.faiss_index is None:
        with _FAISS_LOCK:  # several app sessions may ask at once: build once
            if index.faiss_index is None:
                attach_faiss_index(index)
    allowed = np.ones(rows.stop - rows.start, dtype=bool) if mask is None else mask.copy()
    if exclude is not None:
        allowed[exclude] = False
    available = int(allowed.sum())
    if available == 0:
        empty = np.array([], dtype=np.int64)
        return empty, {"similarity": empty.astype(float), "visual_similarity": empty, "colour_similarity": empty}
    count = max(2 * k, k + 40, CANDIDATE_POOL if colour_weight > 0 else 0)  # spares: FAISS ranks compressed vectors
    if available <= count:  # so few products allowed that FAISS could not save any work
        seen = np.flatnonzero(allowed)
    else:
        everywhere = np.zeros(len(index), dtype=bool)
        everywhere[rows] = allowed
        # a gender slice or filter keeping a share f of the products: visit 1/sqrt(f) times more
        # lists (the allowed neighbours cluster near the query: 1/f would overdo it)
        probes = int(FAISS_PROBES * np.sqrt(len(index) / available))
        found = faiss_candidates(index.faiss_index, query.vector, count, everywhere, probes)
        if len(found) < count:  # the visited lists held too few allowed products: visit them all
            found = faiss_candidates(index.faiss_index, query.vector, count, everywhere, probes=len(index))
        seen = found - rows.start
    visual = exact_similarities(index.vectors, rows.start + seen, query.vector)
    if colour_weight > 0:
        colour = colour_aware_similarity(index, rows, query)
        if len(seen) < available:
            score = (1 - colour_weight) * visual + colour_weight * colour[seen]
            kth_best = np.partition(score, len(score) - k)[len(score) - k] if len(score) >= k else -np.inf
            needed = (kth_best - (1 - colour_weight) * visual.min()) / colour_weight
            unseen = allowed.copy()
            unseen[seen] = False
            extra = np.flatnonzero(unseen & (colour >= needed - 1e-6))
            seen = np.concatenate([seen, extra])
            visual = np.concatenate([visual, exact_similarities(index.vectors, rows.start + extra, query.vector)])
        colour = colour_aware_similarity(index, rows.start + seen, query, visual)
        score = (1 - colour_weight) * visual.astype(np.float64) + colour_weight * colour
    else:
        score = visual.astype(np.float64)
    top = np.argpartition(-score, min(k, len(score)) - 1)[:k]
    top = top[np.argsort(-score[top], kind="stable")]
    positions = rows.start + seen[top]
    colour = colour[top] if colour_weight > 0 else colour_aware_similarity(index, positions, query, visual[top])
    return positions, {"similarity": score[top], "visual_similarity": visual[top], "colour_similarity": colour}


def exact_similarities(vectors: np.ndarray, rows: np.ndarray, query_vector: np.ndarray, chunk: int = 32_768) -> np.ndarray:
    """Dot products of `query_vector` with the given rows (float16 rows are widened chunk by chunk).
    einsum, not BLAS: for a few hundred rows, BLAS threads cost more than they save (3x here)."""
    query = np.asarray(query_vector, dtype=np.float32)
    return np.concatenate([np.einsum("ij,j->i", np.asarray(vectors[rows[start:start + chunk]], dtype=np.float32), query)
                           for start in range(0, len(rows), chunk)] or [np.zeros(0, dtype=np.float32)])


SYNTHETIC_NEIGHBOURS = 8


def synthetic_vectors(real: np.ndarray, count: int, seed: int = 0, spread: float = 1.0, noise: float = 0.1,
                      chunk: int = 16_384) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """A synthetic catalogue clustered like `real` (L2-normalised descriptors), in chunks of
    (base rows, float32 vectors), generated on the fly: nothing is stored.

    Each vector is a real one moved at random within the span of its 8 nearest real neighbours,
    by about one neighbour distance (`spread`), plus `noise` in every direction, then normalised:
    the real catalogue's clusters and local directions, at any size. Uniform random vectors would
    have no neighbourhoods, and say nothing about an index.
    """
    real = np.ascontiguousarray(real, dtype=np.float32)
    neighbours = np.concatenate([
        np.argpartition(-_without_self(real[start:start + 4096] @ real.T, start), SYNTHETIC_NEIGHBOURS,
                        axis=1)[:, :SYNTHETIC_NEIGHBOURS]
        for start in range(0, len(real), 4096)])
    rng = np.random.default_rng(seed)
    for start in range(0, count, chunk):
        size = min(chunk, count - start)
        bases = rng.integers(len(real), size=size)
        steps = rng.standard_normal((size, SYNTHETIC_NEIGHBOURS)).astype(np.float32)
        steps *= np.float32(spread / np.sqrt(SYNTHETIC_NEIGHBOURS))
        vectors = real[bases] * (1 - steps.sum(axis=1, keepdims=True))
        for j in range(SYNTHETIC_NEIGHBOURS):
            vectors += steps[:, j:j + 1] * real[neighbours[bases, j]]
        vectors += rng.standard_normal(vectors.shape, dtype=np.float32) * np.float32(noise / np.sqrt(real.shape[1]))
        yield bases, l2_normalize(vectors)


def _without_self(similarities: np.ndarray, start: int) -> np.ndarray:
    rows = np.arange(len(similarities))
    similarities[rows, start + rows] = -np.inf
    return similarities


def synthetic_index(index: Index, count: int, seed: int = 0) -> Index:
    """An Index of `count` synthetic products made from `index` (see synthetic_vectors); each one
    takes the catalogue row (gender, type, colour...) and the colour descriptor of the real
    product it was made from, under a new ProductId. For scale tests and the benchmark."""
    parts = list(synthetic_vectors(index.vectors, count, seed))
    bases = np.concatenate([part[0] for part in parts])
    vectors = np.concatenate([part[1] for part in parts])
    del parts
    catalog = index.catalog.iloc[bases].reset_index(drop=True)
    catalog["ProductId"] = [str(10_000_000 + row) for row in range(count)]
    catalog["duplicate_group"] = catalog["ProductId"]
    catalog["is_duplicate"] = False
    features = Features(ids=catalog["ProductId"].to_numpy(dtype=str), vectors=vectors,
                        colours=index.colours[bases], recipe=index.recipe)
    return build_index(catalog, features)


# ============================================================================
# Evaluation
# ============================================================================

# A result is relevant when it shares these columns with the query.
RELEVANCE = {
    "SubCategory": ("SubCategory",),
    "ProductType": ("ProductType",),
    "Colour": ("Colour",),
    "ProductType and Colour": ("ProductType", "Colour"),
}


def rank_all(index: Index, k: int = 5, colour_weight: float | None = None) -> np.ndarray:
    """For every product, the rows of its k nearest products of the same gender (query and its
    byte-identical copies left out), as similar_products ranks them; -1 pads short lists."""
    colour_weight = 0.0 if index.is_reference else _check_colour_weight(colour_weight)
    ranks = np.full((len(index), k), -1, dtype=np.int64)
    for rows in index.gender_rows.values():
        vectors = index.vectors[rows]
        if rows.stop == rows.start:
            continue
        if index.is_reference:  # Euclidean, via |a|^2 + |b|^2 - 2ab: same order, one matrix product
            squared = (vectors.astype(np.float64) ** 2).sum(axis=1)
            scores = -np.sqrt(np.maximum(squared[:, None] + squared[None, :] - 2.0 * (vectors @ vectors.T), 0))
        else:
            visual, colour = (index.pair_scores or {}).get((rows.start, rows.stop)) or pair_similarities(index, rows)
            scores = (1 - colour_weight) * visual.astype(np.float64) + colour_weight * colour
        groups = index.groups[rows]
        scores[groups[:, None] == groups[None, :]] = -np.inf
        available = np.isfinite(scores).sum(axis=1)
        count = min(k, scores.shape[1])
        top = np.argpartition(-scores, count - 1, axis=1)[:, :count]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        chosen = np.take_along_axis(top, order, axis=1) + rows.start
        chosen[np.arange(count)[None, :] >= available[:, None]] = -1
        ranks[rows, :count] = chosen
    return ranks


def relevance_matrix(index: Index, ranks: np.ndarray, columns: tuple[str, ...]) -> np.ndarray:
    """(N, k) booleans: does the result at each rank share `columns` with its query?"""
    relevant = np.ones(ranks.shape, dtype=bool)
    for column in columns:
        values = index.catalog[column].to_numpy()
        relevant &= values[ranks] == values[:, None]
    return relevant & (ranks >= 0)


def relevant_counts(index: Index, columns: tuple[str, ...]) -> np.ndarray:
    """How many products of the query's gender are relevant to it (query and its copies excluded)."""
    key = index.catalog[["Gender", *columns]].astype(str).agg("|".join, axis=1)
    group_key = key + "|" + index.catalog["duplicate_group"]
    return (key.map(key.value_counts()) - group_key.map(group_key.value_counts())).to_numpy()


def precision_at_k(relevant: np.ndarray) -> float:
    """Mean over queries of the share of relevant results among the top k."""
    return float(np.asarray(relevant, dtype=float).mean()) if np.size(relevant) else float("nan")


def average_precision_at_k(relevant: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    """AP@k per query: mean of precision@i at each relevant rank i, over min(k, relevant items);
    NaN for queries with nothing relevant to find."""
    relevant = np.asarray(relevant, dtype=float)
    k = relevant.shape[1]
    precision_at_i = np.cumsum(relevant, axis=1) / np.arange(1, k + 1)
    denominator = np.minimum(k, np.asarray(n_relevant, dtype=float))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (precision_at_i * relevant).sum(axis=1) / denominator, np.nan)


def evaluate(index: Index, k: int = 5, colour_weight: float | None = None, ranks: np.ndarray | None = None) -> pd.Series:
    """precision@k and mAP@k of one method, for each kind of relevance, over every product as query."""
    ranks = rank_all(index, k, colour_weight) if ranks is None else ranks
    scores = {}
    for name, columns in RELEVANCE.items():
        relevant = relevance_matrix(index, ranks, columns)
        scores[f"P@{k} {name}"] = precision_at_k(relevant)
        scores[f"mAP@{k} {name}"] = float(np.nanmean(average_precision_at_k(relevant, relevant_counts(index, columns))))
    return pd.Series(scores)


def compare_methods(methods: dict, k: int = 5) -> pd.DataFrame:
    """Evaluate several methods side by side: {name: Index or (Index, colour_weight)} -> one row each."""
    rows = {}
    for name, method in methods.items():
        index, colour_weight = method if isinstance(method, tuple) else (method, None)
        rows[name] = evaluate(index, k, colour_weight)
    return pd.DataFrame(rows).T


# ============================================================================
# Display and widgets
# ============================================================================

def thumbnail(path_or_image, size: int = 256) -> Image.Image:
    """A small RGB copy of a photo for display (the shape kept)."""
    image = load_image(path_or_image).copy()
    image.thumbnail((size, size))
    return image


def _caption(row: pd.Series, width: int = 28) -> str:
    title = str(row.get("ProductTitle", ""))
    title = title if len(title) <= width else title[: width - 1] + "…"
    caption = f"{title}\n{row['ProductId']}"
    if "similarity" in row and pd.notna(row["similarity"]):
        caption += f"  sim {row['similarity']:.2f}"
    return caption


def show_products(products: pd.DataFrame, title: str | None = None, columns: int = 6, query=None):
    """Show products (catalogue rows or search results) as a grid of photos with titles.

    `query` (a catalogue row, or a photo path / bytes / PIL image) is drawn first, framed.
    Returns the matplotlib figure, which notebooks display inline.
    """
    import matplotlib.pyplot as plt

    panels = []
    if query is not None:
        if isinstance(query, pd.Series):
            panels.append((query["image_path"], "QUERY\n" + _caption(query.drop(labels="similarity", errors="ignore")), True))
        else:
            panels.append((query, "QUERY\n(your photo)", True))
    panels += [(row["image_path"], _caption(row), False) for _, row in products.iterrows()]
    if not panels:
        raise SearchError("Nothing to show: the result list is empty (loosen the filters or the minimum similarity).")
    columns = max(1, min(columns, len(panels)))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 3.6 * rows), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for axis, (image, caption, is_query) in zip(axes.ravel(), panels):
        axis.imshow(thumbnail(image))
        axis.set_title(caption, fontsize=8, color="darkred" if is_query else "black")
        if is_query:
            axis.axis("on"); axis.set_xticks([]); axis.set_yticks([])
            for spine in axis.spines.values():
                spine.set_edgecolor("darkred"); spine.set_linewidth(3)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    plt.close(figure)  # notebooks show the returned figure once, not twice
    return figure


# ---------------------------------------------------------------------------
# Charts for the notebooks: the catalogue, the features, the evaluation
# ---------------------------------------------------------------------------

def _value_order(catalog: pd.DataFrame, column: str) -> list:
    """The values of a column, genders in catalogue order, anything else most frequent first."""
    if column == "Gender":
        return [gender for gender in GENDERS if (catalog["Gender"] == gender).any()]
    return catalog[column].value_counts().index.tolist()


def count_plot(catalog: pd.DataFrame, column: str, hue: str | None = None, ax=None):
    """A seaborn count plot of one column, bars sorted by count (the reference's EDA charts); returns the figure.

    Columns with many values are drawn as horizontal bars so their names stay readable.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    order = _value_order(catalog, column)
    horizontal = len(order) > 6
    if ax is None:
        figure, ax = plt.subplots(figsize=(8, 1 + 0.3 * len(order)) if horizontal else (7, 3.5))
    else:
        figure = ax.figure
    sns.countplot(data=catalog, **{"y" if horizontal else "x": column}, order=order, hue=hue,
                  hue_order=_value_order(catalog, hue) if hue else None, ax=ax)
    for bars in ax.containers:
        ax.bar_label(bars, fontsize=7, padding=2)
    if hue:
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1))  # beside the bars, never over them
    ax.set_title(f"Products by {column}" + (f" and {hue}" if hue else ""))
    figure.tight_layout()
    plt.close(figure)
    return figure


def _plotly_for_notebooks() -> None:
    """Inside a Jupyter kernel plotly emits only its own mimetype, which JupyterLab draws but an HTML
    export drops: add HTML with plotly.js embedded once per notebook, so exports show the charts offline."""
    import plotly.io as pio

    if pio.renderers.default == "plotly_mimetype":  # plotly's own choice inside a Jupyter kernel
        pio.renderers.default = "plotly_mimetype+notebook"


def interactive_count_plot(catalog: pd.DataFrame, column: str, color: str | None = "Gender"):
    """The plotly version of count_plot: hover for exact counts, click a legend entry to hide it."""
    import plotly.express as px

    _plotly_for_notebooks()
    order = _value_order(catalog, column)
    keys = [column, color] if color else [column]
    counts = catalog.groupby(keys).size().reset_index(name="products")
    orders = {column: order, **({color: _value_order(catalog, color)} if color else {})}
    figure = px.bar(counts, x="products", y=column, color=color, orientation="h", category_orders=orders,
                    title=f"Products by {column}" + (f" and {color}" if color else ""))
    figure.update_layout(height=160 + 24 * len(order), yaxis_title=None, legend_title_text=color)
    return figure


def category_heatmap(catalog: pd.DataFrame, rows: str = "SubCategory", columns: str = "Gender"):
    """A heatmap of the number of products for each pair of values (e.g. SubCategory x Gender)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    table = pd.crosstab(catalog[rows], catalog[columns]).reindex(
        index=_value_order(catalog, rows), columns=_value_order(catalog, columns))
    figure, ax = plt.subplots(figsize=(1.5 + 1.2 * table.shape[1], 1 + 0.4 * table.shape[0]))
    sns.heatmap(table, annot=True, fmt="d", cmap="Blues", cbar=False, linewidths=0.5, ax=ax)
    ax.set_title(f"Products by {rows} and {columns}")
    figure.tight_layout()
    plt.close(figure)
    return figure


def show_samples(catalog: pd.DataFrame, by: str = "SubCategory", per_group: int = 6, seed: int = 0):
    """A grid of example photos: one row per value of `by` (most frequent first), the same
    `per_group` randomly chosen products on every run."""
    import matplotlib.pyplot as plt

    groups = _value_order(catalog, by)
    rng = np.random.default_rng(seed)
    figure, axes = plt.subplots(len(groups), per_group, figsize=(1.7 * per_group + 1.2, 2.3 * len(groups)), squeeze=False)
    for row, value in zip(axes, groups):
        members = catalog[catalog[by] == value]
        picks = members.iloc[np.sort(rng.choice(len(members), size=min(per_group, len(members)), replace=False))]
        for axis in row:
            axis.axis("off")
        for axis, (_, product) in zip(row, picks.iterrows()):
            axis.imshow(thumbnail(product["image_path"], 160))
            axis.set_title(f"{product['Gender']} · {product['ProductType']}", fontsize=7)
        row[0].text(-0.08, 0.5, f"{value}\n({len(members)})", transform=row[0].transAxes,
                    ha="right", va="center", fontsize=9, weight="bold")
    figure.tight_layout()
    plt.close(figure)
    return figure


def show_geometries(image, size: int = IMAGE_SIZE):
    """One photo as loaded, then as the network receives it with each geometry (stretch, pad, crop)."""
    import matplotlib.pyplot as plt

    photo = load_image(image)
    panels = [(f"photo {photo.width}x{photo.height}", np.asarray(photo))]
    panels += [(f"{geometry} -> {size}x{size}", to_square(photo, geometry, size)) for geometry in GEOMETRIES]
    figure, axes = plt.subplots(1, len(panels), figsize=(2.8 * len(panels), 3.4))
    for axis, (caption, pixels) in zip(axes, panels):
        axis.imshow(pixels)
        axis.set_title(caption, fontsize=9)
        axis.set_xticks([]); axis.set_yticks([])  # keep the frame: it shows where the square ends
    figure.tight_layout()
    plt.close(figure)
    return figure


EMBEDDING_METHODS = ("pca", "tsne")


def embedding_map(index: Index, method: str = "tsne", color: str = "SubCategory", seed: int = 0):
    """An interactive 2-D map of the descriptors (PCA, or t-SNE on 50 PCA components): one dot per
    product coloured by `color`, its title on hover. Products the network finds alike sit together."""
    import plotly.express as px
    from sklearn.decomposition import PCA

    _plotly_for_notebooks()
    if method not in EMBEDDING_METHODS:
        raise SettingsError(f"Unknown map method {method!r}; choose one of {', '.join(EMBEDDING_METHODS)}.")
    if len(index) < 4:
        raise SearchError(f"A map needs at least 4 products; this index has {len(index)}.")
    vectors = np.asarray(index.vectors, dtype=np.float32)
    if method == "pca":
        points = PCA(n_components=2, random_state=seed).fit_transform(vectors)
    else:
        from sklearn.manifold import TSNE

        reduced = PCA(n_components=min(50, *vectors.shape), random_state=seed).fit_transform(vectors)
        perplexity = min(30.0, (len(vectors) - 1) / 3)  # t-SNE needs fewer neighbours than points
        points = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(reduced)
    frame = index.catalog[["ProductId", "ProductTitle", "Gender", *FILTER_COLUMNS]].assign(x=points[:, 0], y=points[:, 1])
    figure = px.scatter(frame, x="x", y="y", color=color, hover_name="ProductTitle",
                        hover_data={"ProductId": True, "Gender": True, "ProductType": True, "Colour": True,
                                    "x": False, "y": False},
                        category_orders={color: _value_order(frame, color)}, render_mode="svg",
                        title=f"{index.recipe.name} descriptors, {method.upper()} map ({len(frame)} products)")
    figure.update_traces(marker={"size": 5, "opacity": 0.75})
    figure.update_layout(height=600, xaxis_title=None, yaxis_title=None)
    return figure


def precision_chart(table: pd.DataFrame, title: str | None = None):
    """Grouped bars of the precision@k columns of compare_methods: one group per kind of relevance,
    one bar per method."""
    import matplotlib.pyplot as plt

    columns = [column for column in table.columns if column.startswith("P@")]
    if not columns:
        raise SearchError("No precision column (named 'P@k ...') to draw: pass the table compare_methods returns.")
    data = table[columns].rename(columns=lambda column: column.split(" ", 1)[1]).T
    figure, ax = plt.subplots(figsize=(2 + 1.6 * len(data), 3.8))
    data.plot.bar(ax=ax, rot=0, width=0.8)
    for bars in ax.containers:
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel(columns[0].split(" ", 1)[0].replace("P@", "precision@"))
    ax.set_title(title or "Share of the top results that match the query")
    ax.legend(fontsize=8, loc="upper right")
    figure.tight_layout()
    plt.close(figure)
    return figure


def metric_curves(table: pd.DataFrame, xlabel: str, ylabel: str = "precision", title: str | None = None):
    """One line per column of `table` against its index (k, colour weight, ...), markers on the measured points."""
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(7, 3.8))
    table.plot(ax=ax, marker="o")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    figure.tight_layout()
    plt.close(figure)
    return figure


def show_ranked_queries(index: Index, ranks: np.ndarray, queries, columns=("ProductType", "Colour"),
                        title: str | None = None):
    """One row per query row number: the query (framed dark red) then its ranked results, each framed
    green when it shares `columns` with the query and grey when it does not."""
    import matplotlib.pyplot as plt

    queries = list(queries)
    if not queries:
        raise SearchError("No query to show.")
    catalog = index.catalog
    width = ranks.shape[1] + 1
    figure, axes = plt.subplots(len(queries), width, figsize=(1.9 * width, 2.7 * len(queries)), squeeze=False)
    for row, query in zip(axes, queries):
        cells = [(query, "darkred", "QUERY")] + [
            (result, "green" if all(catalog.at[result, c] == catalog.at[query, c] for c in columns) else "lightgrey",
             f"#{rank}") for rank, result in enumerate(ranks[query], start=1) if result >= 0]
        for axis in row:
            axis.axis("off")
        for axis, (position, colour, label) in zip(row, cells):
            product = catalog.loc[position]
            axis.imshow(thumbnail(product["image_path"], 160))
            axis.set_title(f"{label} {product['ProductId']}\n{product['ProductType']}, {product['Colour']}", fontsize=7)
            axis.axis("on"); axis.set_xticks([]); axis.set_yticks([])
            for spine in axis.spines.values():
                spine.set_edgecolor(colour); spine.set_linewidth(3)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    plt.close(figure)
    return figure


# ---------------------------------------------------------------------------
# The interactive recommender (ipywidgets): the recommender notebook's one call
# ---------------------------------------------------------------------------

ANY = "any"  # the filter choice that keeps every value
WIDGET_MAX_K = 20
MAX_MATCHES = 50  # products listed under the search box: more would make the list unusable
UPLOAD_TYPES = ".jpg,.jpeg,.png"


def jpeg_bytes(image: Image.Image, quality: int = 85) -> bytes:
    """A PIL image as JPEG bytes (what ipywidgets.Image and browsers display)."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@dataclasses.dataclass(eq=False)
class WidgetQuery:
    """What the recommender widget searches for: a catalogue product, or a photo embedded once."""

    gender: str
    product_id: str | None = None
    photo_name: str | None = None
    description: Query | None = None   # the photo's descriptors (never recomputed)
    jpeg: bytes | None = None          # the photo's thumbnail

    def same_as(self, other: WidgetQuery | None) -> bool:
        return other is not None and (self is other or (self.product_id is not None and self.product_id == other.product_id))


class RecommenderWidgetBase:
    """The recommender's behaviour; `recommender_widget` mixes it into an ipywidgets VBox.

    State a caller can read: `query` (WidgetQuery or None), `results` (the engine's DataFrame on
    screen), `history` (earlier queries, for Back), `message` (HTML widget: errors), and the
    controls `gender`, `search`, `matches`, `product_id`, `find_button`, `upload`, `k`,
    `subcategory`, `colour`, `usage`, `colour_weight`, `across_genders`, `back_button`; the
    result cards are `cards` (each with `.product_id`, `.image`, `.caption`, `.button`) inside `grid`.
    """

    def __init__(self, index: Index, product_id=None, k: int = 6, thumbnail_size: int = 150):
        import ipywidgets as widgets

        self.index = index
        self.thumbnail_size = thumbnail_size
        self.query: WidgetQuery | None = None
        self.results: pd.DataFrame | None = None
        self.history: list[WidgetQuery] = []
        self.cards: list = []
        self._thumbnails: dict[str, bytes] = {}
        self._quiet = 0  # > 0 while the widget sets its own controls: their observers stay silent
        wide = {"description_width": "initial"}

        genders = [gender for gender in GENDERS if index.gender_rows[gender].stop > index.gender_rows[gender].start]
        self.gender = widgets.Dropdown(options=genders, description="Gender", style=wide)
        self.search = widgets.Text(description="Search", placeholder="part of a title or a ProductId", style=wide)
        self.matches = widgets.Dropdown(description="Product", style=wide, layout=widgets.Layout(width="420px"))
        self.product_id = widgets.Text(description="ProductId", placeholder="e.g. 13683", continuous_update=False,
                                       style=wide, layout=widgets.Layout(width="200px"))
        self.find_button = widgets.Button(description="Show similar", icon="search")
        self.upload = widgets.FileUpload(accept=UPLOAD_TYPES, multiple=False, description="Your photo")
        if check_k(k) > WIDGET_MAX_K:
            raise SearchError(f"The widget shows at most {WIDGET_MAX_K} results; got k={k}.")
        self.k = widgets.IntSlider(value=check_k(k), min=1, max=WIDGET_MAX_K,
                                   description="Results", continuous_update=False, style=wide)
        self.colour_weight = widgets.FloatSlider(value=DEFAULT_COLOUR_WEIGHT, min=0.0, max=1.0, step=0.05,
                                                 description="Colour weight", continuous_update=False, style=wide,
                                                 disabled=index.is_reference)
        self.across_genders = widgets.Checkbox(value=False, description="across all genders", indent=False)
        self.subcategory, self.colour, self.usage = (
            widgets.Dropdown(options=[ANY, *sorted(index.catalog[column].unique())], description=column, style=wide)
            for column in ("SubCategory", "Colour", "Usage")
        )
        self.back_button = widgets.Button(description="Back", icon="arrow-left", disabled=True)
        self.message = widgets.HTML()
        self.message.add_class("fl-message")
        self.summary = widgets.HTML()
        self.query_image = widgets.Image(format="jpeg", layout=widgets.Layout(width=f"{thumbnail_size}px"))
        self.query_caption = widgets.HTML(layout=widgets.Layout(width=f"{thumbnail_size + 20}px"))
        query_panel = widgets.VBox([widgets.HTML("<b>Query</b>"), self.query_image, self.query_caption],
                                   layout=widgets.Layout(border="2px solid darkred", padding="6px", margin="4px",
                                                         display="none"))
        query_panel.add_class("fl-query")
        self.query_panel = query_panel
        self.grid = widgets.Box(layout=widgets.Layout(flex_flow="row wrap", align_items="flex-start"))
        self.grid.add_class("fl-results")
        for control, css_class in ((self.gender, "fl-gender"), (self.search, "fl-search"), (self.matches, "fl-matches"),
                                   (self.k, "fl-k")):
            control.add_class(css_class)  # handles for the browser test

        self._refresh_matches()
        self.gender.observe(self._on_gender, "value")
        self.search.observe(lambda change: self._refresh_matches(), "value")
        self.matches.observe(self._on_match, "value")
        self.product_id.observe(self._on_product_id, "value")
        self.find_button.on_click(lambda _: self.query_product(self.product_id.value))
        self.upload.observe(self._on_upload, "value")
        for control in (self.k, self.colour_weight, self.across_genders, self.subcategory, self.colour, self.usage):
            control.observe(self._on_setting, "value")
        self.back_button.on_click(lambda _: self.back())

        super().__init__(children=[
            widgets.HBox([self.gender, self.search, self.matches]),
            widgets.HBox([self.product_id, self.find_button, self.upload]),
            widgets.HBox([self.k, self.colour_weight, self.across_genders]),
            widgets.HBox([self.subcategory, self.colour, self.usage]),
            widgets.HBox([self.back_button, self.message], layout=widgets.Layout(align_items="center")),
            widgets.HBox([query_panel, widgets.VBox([self.summary, self.grid], layout=widgets.Layout(flex="1"))],
                         layout=widgets.Layout(align_items="flex-start")),
        ])
        self.add_class("fl-recommender")
        if product_id is not None:
            self.query_product(product_id)
        else:
            self._say("Choose a gender and a product (search by title or type its ProductId), or upload a photo.",
                      error=False)

    # ---- the actions (also the calls a test or the benchmark makes) ----

    def query_product(self, product_id) -> bool:
        """Make a catalogue product the query and show its most similar products."""
        text = str(product_id).strip()
        if not text:
            return self._say("Type a ProductId (digits, e.g. 13683) or search by title, then choose a product.")
        try:
            product_id = normalize_product_id(text)
        except KeyError as error:
            return self._say(error.args[0])
        if product_id not in self.index.positions:
            return self._say(unknown_product_message(self.index.catalog["ProductId"], product_id))
        gender = self.index.catalog.at[self.index.positions[product_id], "Gender"]
        return self._go(WidgetQuery(gender=gender, product_id=product_id))

    def query_photo(self, content: bytes, name: str = "the upload") -> bool:
        """Make a photo (JPEG/PNG bytes) the query: the network runs once on it, here."""
        try:
            photo = load_image(content, name=name)
            description = describe_photo(self.index, photo)
        except (ImageError, WeightsError, SettingsError) as error:
            return self._say(str(error))
        query = WidgetQuery(gender=self.gender.value, photo_name=name, description=description,
                            jpeg=jpeg_bytes(thumbnail(photo, self.thumbnail_size)))
        return self._go(query)

    def run_query(self) -> bool:
        """Answer the current query again with the current controls (k, filters, weight, genders)."""
        if self.query is None:
            return self._say("Choose a product or upload a photo first.")
        return self._go(self.query, remember=False)

    def back(self) -> bool:
        """Return to the previous query."""
        if not self.history:
            return self._say("Nothing to go back to: this is the first query.")
        previous = self.history.pop()
        if not self._go(previous, remember=False):
            self.history.append(previous)  # keep it: Back can be tried again after changing a filter
            return False
        return True

    def filters(self) -> dict:
        """The chosen filters, in similar_products' keyword names (None = any)."""
        return {name: None if control.value == ANY else control.value
                for name, control in (("subcategory", self.subcategory), ("colour", self.colour), ("usage", self.usage))}

    # ---- answering ----

    def _answer(self, query: WidgetQuery) -> pd.DataFrame | None:
        """The engine's results for `query` under the current controls; None after saying what is wrong."""
        filters = self.filters()
        try:
            if query.product_id is not None:
                results = similar_products(self.index, query.product_id, k=self.k.value,
                                           across_genders=self.across_genders.value,
                                           colour_weight=self.colour_weight.value, **filters)
            else:  # a photo: the search similar_to_image makes, from the description made at upload
                results = similar_to_query(self.index, query.description, self.k.value,
                                           gender=None if self.across_genders.value else query.gender,
                                           colour_weight=self.colour_weight.value, **filters)
        except KeyError as error:
            self._say(error.args[0] if error.args else str(error))
            return None
        except SearchError as error:
            self._say(str(error))
            return None
        if results.empty:
            chosen = [f"{control.description} {control.value}" for control in (self.subcategory, self.colour, self.usage)
                      if control.value != ANY]
            scope = "any gender" if self.across_genders.value else query.gender
            self._say(f"No product of {scope} has {' and '.join(chosen)}. Set a filter back to '{ANY}'"
                      f"{'' if self.across_genders.value else ' or tick across all genders'}; "
                      "the previous results are still shown.")
            return None
        return results

    def _go(self, query: WidgetQuery, remember: bool = True) -> bool:
        results = self._answer(query)
        if results is None:
            return False  # the message is shown; query, results and history are unchanged
        if remember and self.query is not None and not query.same_as(self.query):
            self.history.append(self.query)
        self.query, self.results = query, results
        self._draw()
        return True

    # ---- drawing ----

    def _thumbnail(self, path: str) -> bytes:
        if path not in self._thumbnails:
            self._thumbnails[path] = jpeg_bytes(thumbnail(path, self.thumbnail_size))
        return self._thumbnails[path]

    def _draw(self) -> None:
        query = self.query
        with self._quietly():
            self.gender.value = query.gender
            if query.product_id is not None:
                self.product_id.value = query.product_id
            listed = [product_id for _, product_id in self.matches.options]
            self.matches.value = query.product_id if query.product_id in listed else ""
        if query.product_id is not None:
            row = self.index.catalog.loc[self.index.positions[query.product_id]]
            self.query_image.value = self._thumbnail(row["image_path"])
            self.query_caption.value = _card_html(row["ProductTitle"], f"ProductId {row['ProductId']} · {row['Gender']}",
                                                  f"{row['ProductType']}, {row['Colour']}, {row['Usage']}")
            subject = f"{html.escape(row['ProductTitle'])} ({row['ProductId']})"
        else:
            self.query_image.value = query.jpeg
            self.query_caption.value = _card_html(query.photo_name, "your photo",
                                                  f"colours: {', '.join(colour_names(query.description.colour))}")
            subject = f"your photo {html.escape(query.photo_name)}"
        self.query_panel.layout.display = "flex"
        scope = "all genders" if self.across_genders.value else query.gender
        self.summary.value = f"<b>{len(self.results)} products most similar to {subject}</b> · {scope}"
        while len(self.cards) < len(self.results):
            self.cards.append(_ResultCard(self))
        for card, (_, row) in zip(self.cards, self.results.iterrows()):
            card.show(row, self._thumbnail(row["image_path"]))
        self.grid.children = tuple(card.box for card in self.cards[: len(self.results)])
        self.back_button.disabled = not self.history
        self._say("", error=False)

    def _say(self, text: str, error: bool = True) -> bool:
        colour = "#b00020" if error else "#555"
        self.message.value = f'<span style="color:{colour}">{html.escape(text)}</span>' if text else ""
        return False

    @contextlib.contextmanager
    def _quietly(self):
        self._quiet += 1
        try:
            yield
        finally:
            self._quiet -= 1

    # ---- control events ----

    def _refresh_matches(self) -> None:
        rows = self.index.catalog.iloc[self.index.gender_rows[self.gender.value]]
        text = self.search.value.strip()
        found = find_products(rows, text, limit=MAX_MATCHES + 1) if text else rows.head(MAX_MATCHES)
        if text and found.empty:
            prompt = f"no {self.gender.value} product matches {text!r}"
        elif len(found) > MAX_MATCHES:
            prompt, found = f"first {MAX_MATCHES} matches: choose one (or type more)", found.head(MAX_MATCHES)
        else:
            count = f"{len(found)} match" + ("es" if len(found) != 1 else "")
            prompt = f"{count}: choose one" if text else "choose a product (or type to search)"
        with self._quietly():
            self.matches.options = [(f"— {prompt} —", "")] + [  # "" not None: None would show a blank box
                (f"{title} · {pid}", pid) for pid, title in zip(found["ProductId"], found["ProductTitle"])]
            self.matches.value = ""

    def _on_gender(self, change) -> None:
        self._refresh_matches()
        if not self._quiet and self.query is not None and self.query.product_id is None:
            self._go(dataclasses.replace(self.query, gender=change["new"]), remember=False)

    def _on_match(self, change) -> None:
        if not self._quiet and change["new"]:
            self.query_product(change["new"])

    def _on_product_id(self, change) -> None:
        if not self._quiet and change["new"].strip():
            self.query_product(change["new"])

    def _on_upload(self, change) -> None:
        if self._quiet or not change["new"]:
            return
        upload = change["new"][0]
        self.query_photo(bytes(upload["content"]), upload.get("name") or "the upload")
        with self._quietly():
            self.upload.value = ()  # so that the same file can be chosen again

    def _on_setting(self, change) -> None:
        if not self._quiet and self.query is not None:
            self.run_query()


def _card_html(title: str, *lines: str) -> str:
    title = str(title)
    parts = [f'<div class="fl-title" title="{html.escape(title)}" style="font-weight:bold;line-height:1.2">'
             f'{html.escape(title if len(title) <= 60 else title[:59] + "…")}</div>']
    parts += [f'<div style="font-size:90%;line-height:1.25">{html.escape(line)}</div>' for line in lines]
    return "".join(parts)


class _ResultCard:
    """One result on screen: photo, title, ProductId, similarity, why, and a button to query it."""

    def __init__(self, owner: RecommenderWidgetBase):
        import ipywidgets as widgets

        self.product_id: str | None = None
        self.image = widgets.Image(format="jpeg", layout=widgets.Layout(width=f"{owner.thumbnail_size}px"))
        self.caption = widgets.HTML(layout=widgets.Layout(width=f"{owner.thumbnail_size + 20}px"))
        self.button = widgets.Button(description="Show similar", layout=widgets.Layout(width="auto"))
        self.button.on_click(lambda _: owner.query_product(self.product_id))
        self.box = widgets.VBox([self.image, self.caption, self.button],
                                layout=widgets.Layout(border="1px solid #ddd", padding="6px", margin="4px"))
        self.box.add_class("fl-result")

    def show(self, row: pd.Series, jpeg: bytes) -> None:
        self.product_id = row["ProductId"]
        self.image.value = jpeg
        self.caption.value = _card_html(row["ProductTitle"], f"#{row['rank']} · ProductId {row['ProductId']}",
                                        f"similarity {row['similarity']:.3f}", f"why: {row['why']}")


_RECOMMENDER_CLASS: type | None = None


def recommender_widget(index: Index, product_id=None, k: int = 6, thumbnail_size: int = 150):
    """The interactive recommender for JupyterLab: pick a product (or upload a photo), see the
    most similar products as photos; click one to follow it, Back to return.

    Every interaction ranks from the index's cached features; only an uploaded photo goes
    through the network, once. `widget.results` holds the DataFrame on screen.

    >>> widget = recommender_widget(index, product_id="13683"); widget  # doctest: +SKIP
    """
    import ipywidgets as widgets

    global _RECOMMENDER_CLASS
    if _RECOMMENDER_CLASS is None:  # built on first use: `import helpers` does not import ipywidgets
        class RecommenderWidget(RecommenderWidgetBase, widgets.VBox):
            __doc__ = RecommenderWidgetBase.__doc__

        _RECOMMENDER_CLASS = RecommenderWidget
    return _RECOMMENDER_CLASS(index, product_id=product_id, k=k, thumbnail_size=thumbnail_size)
