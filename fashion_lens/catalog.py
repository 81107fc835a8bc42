"""The catalogue: fashion.csv checked, each product joined to its photo, copies grouped."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from .colour import GRAYSCALE_TOLERANCE, colour_spread
from .errors import CatalogError, MissingImagesWarning
from .settings import ENVIRONMENT_VARIABLES, get_settings
from .storage import atomic_write, file_sha256

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
MAX_MATCHES = 50  # products a title search lists: more would make a choice list unusable


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

