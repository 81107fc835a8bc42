"""Catalogue layouts: which table describes the products, what its columns are called, and where
each product's photo sits under the catalogue folder.

The photos are found with one walk of the folder. A product's photo is, in this order:
  1. its `Image` value as a path relative to the catalogue folder (images/42419.jpg);
  2. a file named like its `Image` value anywhere under the folder, in any case (42419.JPG);
  3. a file named <ProductId>.<jpg|jpeg|png|...> anywhere under the folder, in any case.
When several files qualify, the one under the product's gender folder of the project's own
catalogue (Apparel/Men for Boys, ...) wins, then the shallowest, then the first by name; a
warning lists the choices. An `Image` value that points outside the folder is refused.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from .errors import CatalogError
from .settings import ENVIRONMENT_VARIABLES

# The project's own catalogue (`make data`): photos in folders named by category and adult gender;
# kids' apparel sits under them. Any other folder layout is found as well.
GENDER_FOLDERS = {
    "Boys": "Apparel/Men",
    "Girls": "Apparel/Women",
    "Men": "Footwear/Men",
    "Women": "Footwear/Women",
}
# Photos are looked for with these extensions, in any case (HEIC is listed so that an iPhone photo
# is reported as unreadable, with the reason, rather than as missing).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic", ".heif")
PHOTO_RULE = (
    "each product's photo is its Image value (a path relative to the catalogue folder, or a file name "
    "found anywhere under it), else a file named <ProductId>.jpg (or .jpeg, .png, .webp, any case) "
    "anywhere under the catalogue folder"
)
SHOWN = 5  # examples a message lists


@dataclasses.dataclass(frozen=True)
class CatalogLayout:
    """Where a catalogue's table is and what its columns are called.

    Attributes:
        name: how load_catalog(layout=...) and FASHION_LENS_LAYOUT name it.
        table: the CSV file, relative to the catalogue folder.
        columns: {the table's column: the project's column} for the columns named otherwise.
        commas_in_last_column: a row with more fields than the header has unquoted commas in its
            last column (the Kaggle table's titles), which are joined back instead of refused.
    """

    name: str
    table: str
    columns: Mapping[str, str] = dataclasses.field(default_factory=dict)
    commas_in_last_column: bool = False


LAYOUTS = {
    "fashion-lens": CatalogLayout("fashion-lens", "fashion.csv"),
    # Kaggle "Fashion Product Images" (paramaggarwal): styles.csv, photos in images/<id>.jpg
    "kaggle": CatalogLayout("kaggle", "styles.csv", {
        "id": "ProductId", "gender": "Gender", "masterCategory": "Category", "subCategory": "SubCategory",
        "articleType": "ProductType", "baseColour": "Colour", "usage": "Usage", "productDisplayName": "ProductTitle",
    }, commas_in_last_column=True),
}


def catalog_layout(layout: str | CatalogLayout = "fashion-lens", columns: Mapping[str, str] | None = None,
                   table: str | None = None) -> CatalogLayout:
    """The layout to read: a named one (LAYOUTS) or a CatalogLayout, with the user's own column
    names and table file on top. A column the user maps replaces the layout's mapping to the same name."""
    if isinstance(layout, CatalogLayout):
        chosen = layout
    else:
        name = str(layout or "fashion-lens").strip().lower()
        if name not in LAYOUTS:
            raise CatalogError(
                f"Unknown catalogue layout {layout!r}; choose one of {', '.join(LAYOUTS)} (argument layout= or "
                f"{ENVIRONMENT_VARIABLES['layout']}), or name your own columns with columns=."
            )
        chosen = LAYOUTS[name]
    columns = dict(columns or {})
    mapping = {source: target for source, target in chosen.columns.items() if target not in columns.values()}
    return dataclasses.replace(chosen, table=table or chosen.table, columns={**mapping, **columns})


# ---- the photos under a catalogue folder -----------------------------------------------------

@dataclasses.dataclass
class FolderFiles:
    """Every file under a catalogue folder, from one walk: relative paths ('/'-separated) and indexes
    by lower-case path, file name and (for photos) file name without extension."""

    root: Path
    paths: list[str]
    by_path: dict[str, str]
    by_name: dict[str, list[str]]
    by_stem: dict[str, list[str]]

    def describe(self) -> str:
        """What the folder holds: counts by extension and a few example photos (or files)."""
        if not self.paths:
            return "The folder holds no file at all besides the table."
        counts = collections.Counter(os.path.splitext(path)[1].lower() or "(no extension)" for path in self.paths)
        listed = ", ".join(f"{count} {extension}" for extension, count in counts.most_common(8))
        photos = [path for path in self.paths if path.lower().endswith(IMAGE_EXTENSIONS)] or self.paths
        return f"The folder holds {len(self.paths)} files ({listed}), for example {', '.join(photos[:SHOWN])}."


def scan_folder(root: Path, skip: Sequence[str] = ()) -> FolderFiles:
    """One walk of `root` (following linked folders once each; hidden files and folders skipped)."""
    root = Path(root)
    paths, seen = [], set()
    for folder, subfolders, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link back up the tree: walk each real folder once
            subfolders[:] = []
            continue
        seen.add(real)
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        relative = os.path.relpath(folder, root).replace(os.sep, "/")
        prefix = "" if relative == "." else relative + "/"
        paths += [prefix + name for name in sorted(files) if not name.startswith(".")]
    skipped = {name.lower() for name in skip}
    paths = [path for path in paths if path.lower() not in skipped]
    by_path = {path.lower(): path for path in paths}
    by_name, by_stem = collections.defaultdict(list), collections.defaultdict(list)
    for path in paths:
        name = path.rsplit("/", 1)[-1].lower()
        by_name[name].append(path)
        stem, extension = os.path.splitext(name)
        if extension in IMAGE_EXTENSIONS:
            by_stem[stem].append(path)
    return FolderFiles(root, paths, by_path, dict(by_name), dict(by_stem))


def outside_folder(image: str, root: Path) -> bool:
    """Does an Image value point outside the catalogue folder (an absolute path elsewhere, or ../)?
    Decided on the text alone: a link inside the folder is the owner's choice."""
    if os.path.isabs(image):
        return os.path.commonpath([os.path.normpath(image), os.path.normpath(os.path.abspath(root))]) \
            != os.path.normpath(os.path.abspath(root))
    return os.path.normpath(image).replace(os.sep, "/").split("/")[0] == ".."


def locate_photos(files: FolderFiles, product_ids: Sequence[str], images: Sequence[str],
                  genders: Sequence[str]) -> tuple[list[str | None], dict[str, list[str]]]:
    """Each product's photo (absolute path, or None when nothing qualifies) by the rule in the
    module's docstring, and the products for which several files qualified: {id: candidates, chosen first}."""
    root = os.path.abspath(files.root)
    found, ambiguous = [], {}
    for product_id, image, gender in zip(product_ids, images, genders):
        candidates = []
        if image:
            relative = os.path.relpath(os.path.normpath(os.path.join(root, image)), root).replace(os.sep, "/")
            exact = files.by_path.get(relative.lower())
            candidates = [exact] if exact else files.by_name.get(os.path.basename(relative).lower(), [])
        if not candidates:
            candidates = files.by_stem.get(product_id.lower(), [])
        if len(candidates) > 1:
            own = GENDER_FOLDERS.get(gender, "\0").lower() + "/"
            candidates = sorted(candidates, key=lambda path: (not path.lower().startswith(own), path.count("/"), path))
            ambiguous[product_id] = candidates
        found.append(os.path.join(str(files.root), candidates[0]) if candidates else None)
    return found, ambiguous


def missing_photo_reason(product_id: str, image: str) -> str:
    looked = f"its Image {image!r} nor " if image else ""
    return (f"no photo was found: neither {looked}a file named {product_id}.jpg (or .jpeg, .png, ...) "
            "is under the catalogue folder")
