"""The catalogue: its table checked, each product joined to its photo, copies grouped.

The table and photo layout are described in catalog_layout: fashion.csv with the photos under
<Apparel|Footwear>/<Men|Women>/ as `make data` gets it, the Kaggle "Fashion Product Images"
layout, or any folder whose table names the columns below (directly or through a column mapping).
"""

from __future__ import annotations

import csv
import io
import os
import warnings
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from .catalog_layout import (
    GENDER_FOLDERS,
    LAYOUTS,
    PHOTO_RULE,
    SHOWN,
    CatalogLayout,
    catalog_layout,
    locate_photos,
    missing_photo_reason,
    outside_folder,
    scan_folder,
)
from .colour import GRAYSCALE_TOLERANCE, colour_spread
from .errors import BlankLabelsWarning, CatalogError, MissingImagesWarning
from .settings import ENVIRONMENT_VARIABLES, get_settings, parse_columns, read_setting
from .storage import atomic_write, file_sha256

CATALOG_COLUMNS = [
    "ProductId", "Gender", "Category", "SubCategory", "ProductType",
    "Colour", "Usage", "ProductTitle", "Image", "ImageURL",
]
# Without these a catalogue cannot be searched or filtered; the others are filled in blank when absent
# (no Gender: one group, every search runs over the whole catalogue; no Image: <ProductId>.jpg).
REQUIRED_COLUMNS = ("ProductId", "SubCategory", "ProductType", "Colour", "Usage", "ProductTitle")
LABEL_COLUMNS = ("Gender", "Category", "SubCategory", "ProductType", "Colour", "Usage", "ProductTitle")
# What spreadsheets and pandas write for "no value": read as blank
BLANK_MARKERS = frozenset({"", "nan", "na", "n/a", "null", "none", "<na>", "#n/a"})
GENDERS = tuple(GENDER_FOLDERS)  # the project's catalogue's four; any other Gender value is a group too
FILTER_COLUMNS = ("SubCategory", "ProductType", "Colour", "Usage")
MAX_MATCHES = 50  # products a title search lists: more would make a choice list unusable


def normalize_product_id(product_id) -> str:
    """ProductIds are kept as the catalogue writes them (digits, SKUs such as 'AB-12', ...), as text:
    13683, ' 13683 ' and '13683' are the same product."""
    if isinstance(product_id, (bool, np.bool_)) or product_id is None:
        raise KeyError(f"{product_id!r} is not a ProductId: give the id as the catalogue writes it, for example '13683'.")
    if isinstance(product_id, (int, np.integer)):
        return str(int(product_id))
    if isinstance(product_id, (float, np.floating)) and float(product_id).is_integer():
        return str(int(product_id))
    text = str(product_id).strip()
    if not text:
        raise KeyError("An empty text is not a ProductId: give the id as the catalogue writes it, for example '13683'.")
    return text


def id_sort_key(product_id: str) -> tuple[int, str]:
    """ProductIds in numeric order when they are numbers, and in a fixed order whatever they are."""
    return len(product_id), product_id


def id_order(ids) -> np.ndarray:
    """Each id's place in id_sort_key order (0 = first): numeric order for numbers, fixed for any text."""
    ids = list(ids)
    places = np.empty(len(ids), dtype=np.int64)
    places[sorted(range(len(ids)), key=lambda row: id_sort_key(ids[row]))] = np.arange(len(ids))
    return places


def _lines(rows: pd.Index) -> str:
    """Table line numbers of DataFrame rows (line 1 is the header), a few at most."""
    listed = ", ".join(str(row + 2) for row in rows[:SHOWN])
    return f"line{'s' if len(rows) > 1 else ''} {listed}{' ...' if len(rows) > SHOWN else ''}"


def load_catalog(data_dir=None, *, layout: str | CatalogLayout | None = None, columns: Mapping[str, str] | None = None,
                 table: str | None = None) -> pd.DataFrame:
    """Read a catalogue's table, check it, and add each product's photo and duplicate group.

    Args:
        data_dir: the catalogue folder (default: the data setting, FASHION_LENS_DATA).
        layout: "fashion-lens" (fashion.csv with the columns below, as `make data` gets it) or
            "kaggle" (the Kaggle "Fashion Product Images" styles.csv, photos in images/<id>.jpg);
            default: the layout setting, FASHION_LENS_LAYOUT.
        columns: {your column: the project's column} for a table whose columns are named otherwise,
            e.g. {"sku": "ProductId", "name": "ProductTitle"} (default: FASHION_LENS_COLUMNS).
        table: the CSV file inside the folder, when not the layout's (fashion.csv, styles.csv).

    The table needs the columns ProductId, SubCategory, ProductType, Colour, Usage and ProductTitle;
    Gender, Category, Image and ImageURL are optional (without Gender, every search runs over the
    whole catalogue; each Gender value is a group of its own). ProductIds are kept as written (any
    text). The photos may sit anywhere under the folder: each product's photo is its Image value
    (a path relative to the folder, or a file name found anywhere under it), else a file named
    <ProductId>.jpg (.jpeg, .png, .webp, ...; any case) anywhere under it (catalog_layout.PHOTO_RULE).

    Columns added: `image_path` (str), `image_sha256` (fingerprint of the file's bytes),
    `duplicate_group` (the first ProductId, in id order, sharing a byte-identical image; the product's
    own id when its image is unique) and `is_duplicate` (True for every copy but the first).
    Rows whose photo is missing are reported (MissingImagesWarning) and left out; the reasons stay in
    `catalog.attrs["left_out"]` ({ProductId: reason}). Blank labels are reported (BlankLabelsWarning).

    >>> load_catalog("data/kaggle-fashion", layout="kaggle")  # doctest: +SKIP
    >>> load_catalog("my-shop", columns={"sku": "ProductId", "name": "ProductTitle"})  # doctest: +SKIP
    """
    data_dir = Path(data_dir) if data_dir is not None else get_settings().data_dir
    own_columns = parse_columns(read_setting("columns", columns))
    chosen = catalog_layout(read_setting("layout", layout), own_columns, table)
    if not data_dir.is_dir():
        raise CatalogError(
            f"The catalogue folder {data_dir} does not exist. Run `make data` to get the catalogue, "
            f"or point {ENVIRONMENT_VARIABLES['data_dir']} (or data_dir=) at the folder that holds {chosen.table}."
        )
    csv_path = data_dir / chosen.table
    if not csv_path.is_file():
        raise CatalogError(f"{csv_path} is missing. {_other_tables_hint(data_dir, chosen)}")
    catalog = _named_columns(_read_table(csv_path, chosen), chosen, own_columns, csv_path)
    _check_ids(catalog)
    _report_blank_labels(catalog, csv_path)
    catalog = _attach_photos(catalog, data_dir, csv_path)

    catalog["image_sha256"] = [file_sha256(path) for path in catalog["image_path"]]
    place = id_order(catalog["ProductId"])  # each id's place in id order
    ids_in_order = catalog["ProductId"].to_numpy()[np.argsort(place)]
    first = pd.Series(place).groupby(catalog["image_sha256"].to_numpy()).transform("min").to_numpy()
    catalog["duplicate_group"] = ids_in_order[first]  # the group's first id
    catalog["is_duplicate"] = first != place
    return catalog


def _other_tables_hint(data_dir: Path, chosen: CatalogLayout) -> str:
    """What to do when the layout's table is not there: name the layout whose table is."""
    for layout in LAYOUTS.values():
        if layout.table != chosen.table and (data_dir / layout.table).is_file():
            return (f"The folder holds {layout.table}: load it with layout={layout.name!r} "
                    f"(or {ENVIRONMENT_VARIABLES['layout']}={layout.name}).")
    if chosen.table == LAYOUTS["fashion-lens"].table:
        return ("The catalogue folder must hold fashion.csv and the photos; run `make data` to get a complete copy, "
                "or name your own table with table= and its columns with columns=.")
    return "Name the table with table= (the CSV file inside the catalogue folder)."


def _read_table(csv_path: Path, chosen: CatalogLayout) -> pd.DataFrame:
    """The table as text (UTF-8, with or without a byte-order mark), every value a string."""
    try:
        text = csv_path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise CatalogError(
            f"{csv_path} is not UTF-8 text (byte {error.start}: {error.reason}). Save it as UTF-8, "
            "or run `make data` to restore the original file."
        ) from error
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header, *records = (record for record in reader if record)  # blank lines are skipped
    except csv.Error as error:
        raise CatalogError(f"{csv_path} is not a readable CSV file (line {reader.line_num}: {error}). "
                           "Fix that line (or run `make data` to restore the project's file).") from error
    except ValueError:  # not even a header
        raise CatalogError(f"{csv_path} is empty. Run `make data` to restore the original file.") from None
    header = [name.strip() for name in header]
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise CatalogError(f"{csv_path} names the column(s) {', '.join(map(repr, repeated))} more than once in its "
                           "header; give each column its own name.")
    width = len(header)
    too_long = [number for number, record in enumerate(records) if len(record) > width]
    if too_long and not chosen.commas_in_last_column:
        number = too_long[0]
        raise CatalogError(
            f"{csv_path} has more values than columns on {len(too_long)} row(s) (line {number + 2}: "
            f"{len(records[number])} values for {width} columns). A value that holds a comma must be in double quotes."
        )
    # Kaggle's titles hold unquoted commas: the extra values belong to the last column.
    records = [record[: width - 1] + [",".join(record[width - 1:])] if len(record) > width
               else record + [""] * (width - len(record)) for record in records]
    return pd.DataFrame(records, columns=header, dtype=str)


def _named_columns(catalog: pd.DataFrame, chosen: CatalogLayout, own_columns: dict, csv_path: Path) -> pd.DataFrame:
    """The table with the project's column names, every CATALOG_COLUMNS column present, values stripped
    and the usual "no value" markers (NaN, N/A, null, ...) read as blank."""
    found = ", ".join(map(str, catalog.columns))
    unknown = sorted(target for target in chosen.columns.values() if target not in CATALOG_COLUMNS)
    if unknown:
        raise CatalogError(f"The column mapping names {', '.join(map(repr, unknown))}, which fashion-lens does not use; "
                           f"map your columns to {', '.join(CATALOG_COLUMNS)}.")
    mapping = {source: target for source, target in chosen.columns.items() if source in catalog.columns}
    absent = [source for source in own_columns if source not in catalog.columns]  # a layout's may be absent
    if absent:
        raise CatalogError(f"The column mapping names {', '.join(map(repr, absent))}, which {csv_path} lacks; "
                           f"its columns are {found}.")
    renamed = [mapping.get(column, column) for column in catalog.columns]
    repeated = sorted({name for name in renamed if renamed.count(name) > 1})
    if repeated:
        raise CatalogError(f"{csv_path} would have the column(s) {', '.join(repeated)} twice after the column mapping "
                           f"({found}); map only one column to each name.")
    catalog = catalog.rename(columns=mapping)
    missing = [column for column in REQUIRED_COLUMNS if column not in catalog.columns]
    if missing:
        example = f"columns={{'your name': {missing[0]!r}}}"
        raise CatalogError(
            f"{csv_path} lacks the column(s) {', '.join(missing)}. fashion-lens needs {', '.join(REQUIRED_COLUMNS)} "
            f"(Gender, Category, Image and ImageURL are optional); found {found}. Rename the columns in the file, "
            f"or map yours: load_catalog(..., {example}) or {ENVIRONMENT_VARIABLES['columns']}='your name={missing[0]}'."
        )
    if catalog.empty:
        raise CatalogError(f"{csv_path} has a header but no products. Add products (or run `make data` to restore "
                           "the project's file).")
    for column in CATALOG_COLUMNS:
        values = catalog[column].astype(str).str.strip() if column in catalog.columns else pd.Series("", index=catalog.index)
        catalog[column] = values.where(~values.str.lower().isin(BLANK_MARKERS), "")
    return catalog[[*CATALOG_COLUMNS, *(column for column in catalog.columns if column not in CATALOG_COLUMNS)]]


def _check_ids(catalog: pd.DataFrame) -> None:
    blank = catalog.index[catalog["ProductId"] == ""]
    if len(blank):
        raise CatalogError(f"ProductId is blank on {len(blank)} row(s) ({_lines(blank)}). Give every product an id.")
    repeated = catalog.loc[catalog["ProductId"].duplicated(keep=False), "ProductId"].unique()
    if len(repeated):
        raise CatalogError(
            f"ProductId must be unique; {len(repeated)} id(s) appear more than once: "
            f"{', '.join(repeated[:10])}. Remove or renumber the repeated rows."
        )


def _report_blank_labels(catalog: pd.DataFrame, csv_path: Path) -> None:
    """Warn about blank labels, with their lines: such products are kept but match no filter on that column."""
    found = []
    for column in LABEL_COLUMNS:
        blank = catalog.index[catalog[column] == ""]
        if 0 < len(blank) < len(catalog) or (len(blank) and column in REQUIRED_COLUMNS):  # a column left out entirely is no news
            found.append(f"{column} on {len(blank)} row(s) ({_lines(blank)})")
    if found:
        warnings.warn(
            f"{csv_path} has blank (or NaN) labels: {'; '.join(found)}. Those products are kept; they match no "
            "filter on that column and are left out of its choices. Fill the values in to use them.",
            BlankLabelsWarning, stacklevel=3,
        )


def _attach_photos(catalog: pd.DataFrame, data_dir: Path, csv_path: Path) -> pd.DataFrame:
    """Add `image_path` from one walk of the folder; refuse Image values outside it; leave out (and
    report) products without a photo, and refuse a catalogue where none has one."""
    outside = catalog.index[[bool(image) and outside_folder(image, data_dir) for image in catalog["Image"]]]
    if len(outside):
        examples = ", ".join(f"line {row + 2}: {catalog.at[row, 'Image']!r}" for row in outside[:SHOWN])
        raise CatalogError(
            f"Image must name a file inside the catalogue folder {data_dir}; {len(outside)} row(s) point outside it "
            f"({examples}). Move the photos under the folder and give their paths relative to it (images/123.jpg), "
            "or leave Image blank: <ProductId>.jpg is then looked for anywhere under the folder."
        )
    files = scan_folder(data_dir, skip=[csv_path.relative_to(data_dir).as_posix()])
    paths, ambiguous = locate_photos(files, catalog["ProductId"], catalog["Image"], catalog["Gender"])
    catalog["image_path"] = paths
    found = catalog["image_path"].notna().to_numpy()
    if not found.any():
        raise CatalogError(
            f"No photo was found for any of the {len(catalog)} products of {csv_path}. Looked for: {PHOTO_RULE}. "
            f"{files.describe()} The first ProductIds are {', '.join(catalog['ProductId'].head(SHOWN))}: name each "
            "photo after its ProductId, or give each product's file in an Image column."
        )
    if ambiguous:
        examples = "; ".join(f"{pid}: {candidates[0]} (not {', '.join(candidates[1:])})"
                             for pid, candidates in list(ambiguous.items())[:SHOWN])
        warnings.warn(f"{len(ambiguous)} product(s) have several candidate photos under {data_dir}; each uses the one "
                      f"under its gender folder, else the shallowest: {examples}. Give the path in the Image column "
                      "to choose another.", MissingImagesWarning, stacklevel=3)
    left_out = {}
    if not found.all():
        absent = catalog.loc[~found]
        left_out = {pid: missing_photo_reason(pid, image) for pid, image in zip(absent["ProductId"], absent["Image"])}
        examples = ", ".join(f"{pid} ({image or pid + '.jpg'})" for pid, image in
                             zip(absent["ProductId"].head(SHOWN), absent["Image"].head(SHOWN)))
        warnings.warn(
            f"{len(absent)} of {len(catalog)} products have no image file and are left out: {examples}"
            f"{' ...' if len(absent) > SHOWN else ''}. Looked for: {PHOTO_RULE}. If this is the project's "
            "catalogue, run `make data` to fetch the missing images.",
            MissingImagesWarning, stacklevel=3,
        )
        catalog = catalog.loc[found].reset_index(drop=True)
    catalog.attrs["left_out"] = left_out
    return catalog


def genders_of(catalog: pd.DataFrame) -> list[str]:
    """The Gender values present, each a group searched on its own: the project's four first (in
    their usual order), then the others by name, then "" (products without a Gender) when any."""
    present = set(catalog["Gender"])
    others = sorted(present - set(GENDERS) - {""})
    return [gender for gender in GENDERS if gender in present] + others + ([""] if "" in present else [])


def gender_label(gender: str, genders: Iterable[str]) -> str:
    """How a front end names a group: its Gender value; "all products" in a catalogue without
    genders, "no gender" for the products without one beside others."""
    if gender:
        return gender
    return "all products" if set(genders) <= {""} else "no gender"


def duplicate_groups(catalog: pd.DataFrame) -> pd.DataFrame:
    """The products that share a byte-identical image, one row per product, with its group."""
    grouped = catalog[catalog.groupby("duplicate_group")["ProductId"].transform("size") > 1]
    return grouped[["duplicate_group", "ProductId", "Gender", "SubCategory", "ProductType", "Colour", "ProductTitle"]] \
        .sort_values(["duplicate_group", "ProductId"], key=_in_id_order).reset_index(drop=True)


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
    return table.sort_values("duplicate_group", key=_in_id_order, kind="stable").reset_index(drop=True)


def _in_id_order(ids: pd.Series) -> pd.Series:
    """A sort key (for sort_values) putting ids in id_sort_key order, equal ids equal."""
    place = {product_id: rank for rank, product_id in enumerate(sorted(set(ids), key=id_sort_key))}
    return ids.map(place)


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
    """The same `per_gender` products of each gender (genders_of) on every run, for quick runs (None: the whole catalogue).

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
    for gender in genders_of(catalog):
        positions = np.flatnonzero(genders == gender)
        forced = positions[np.isin(ids[positions], list(kept))]
        others = rng.permutation(np.setdiff1d(positions, forced))
        chosen += [*forced, *others[: max(0, per_gender - len(forced))]]
    return catalog.iloc[np.sort(np.asarray(chosen, dtype=np.int64))].reset_index(drop=True)


def split_by_gender(catalog: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """One subset per Gender value (products without one are left out): in the project's catalogue,
    the reference article's four, Boys and Girls apparel, Men and Women footwear."""
    return {gender: catalog[catalog["Gender"] == gender].reset_index(drop=True)
            for gender in genders_of(catalog) if gender}


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
    hits = catalog["ProductId"].str.lower().str.startswith(words[0]) if len(words) == 1 else False
    in_title = np.logical_and.reduce([titles.str.contains(word, regex=False) for word in words])
    return catalog[hits | in_title].head(limit)


def product_row(catalog: pd.DataFrame, product_id) -> pd.Series:
    """The catalogue row of one product; an unknown id raises KeyError naming close ids, or why the
    product was left out (catalog.attrs["left_out"], see load_catalog)."""
    product_id = normalize_product_id(product_id)
    match = catalog.index[catalog["ProductId"] == product_id]
    if len(match) == 0:
        raise KeyError(unknown_product_message(catalog["ProductId"], product_id, catalog.attrs.get("left_out")))
    return catalog.loc[match[0]]


def unknown_product_message(known_ids, product_id: str, left_out: Mapping[str, str] | None = None) -> str:
    """Why `product_id` cannot be searched: left out (with the reason), or not in the catalogue (with close ids)."""
    if left_out and product_id in left_out:
        return (f"ProductId {product_id!r} is in the catalogue but was left out because {left_out[product_id]}. "
                "Fix its photo and load the catalogue again.")
    known = pd.Series(np.asarray(known_ids, dtype=str))
    close = known[known.str.startswith(product_id[: max(1, len(product_id) - 1)])].head(5).tolist()
    hint = f" Close ids: {', '.join(close)}." if close else " Search by title to find an id."
    return f"ProductId {product_id!r} is not in the catalogue.{hint}"

