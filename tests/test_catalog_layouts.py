"""Catalogues as people have them, each built from the real catalogue in a temporary folder (the
photos linked, never copied beside the original): other folder layouts, the Kaggle table, other
column names, SKU ids, no Gender, blank labels, photos that are missing or unreadable. Each bad case
is checked in the engine, the widget and the app (AppTest)."""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from fashion_lens.catalog import GENDER_FOLDERS, genders_of, load_catalog, product_row
from fashion_lens.errors import BlankLabelsWarning, CatalogError, MissingImagesWarning, SearchError
from fashion_lens.feature_cache import extract_features
from fashion_lens.features import default_recipe
from fashion_lens.index import build_index
from fashion_lens.search import filter_choices, similar_products, similar_to_image
from fashion_lens.storage import file_sha256
from fashion_lens.widget import recommender_widget

APP = Path(__file__).resolve().parents[1] / "app.py"
COMPARED = ["ProductId", "Gender", "Category", "SubCategory", "ProductType", "Colour", "Usage", "ProductTitle",
            "image_sha256", "duplicate_group", "is_duplicate"]
# The Kaggle "Fashion Product Images" styles.csv: its columns, and the project's column each carries
KAGGLE_COLUMNS = {"id": "ProductId", "gender": "Gender", "masterCategory": "Category", "subCategory": "SubCategory",
                  "articleType": "ProductType", "baseColour": "Colour", "season": None, "year": None, "usage": "Usage",
                  "productDisplayName": "ProductTitle"}


# ---- building catalogues from the real one ----------------------------------------------------

def real_rows(catalog_dir: Path, per_gender: int | None = None) -> pd.DataFrame:
    rows = pd.read_csv(catalog_dir / "fashion.csv", dtype=str, keep_default_na=False)
    return rows if per_gender is None else rows.groupby("Gender", sort=False).head(per_gender).reset_index(drop=True)


def original_photo(catalog_dir: Path, row) -> str:
    return os.path.join(catalog_dir, GENDER_FOLDERS[row["Gender"]], row["Image"])


def build_catalogue(catalog_dir: Path, folder: Path, rows: pd.DataFrame, place, table: str = "fashion.csv",
                    skip: tuple = (), photos: list[Path] | None = None, drop: tuple = ()) -> Path:
    """`folder` with `rows` as its table (less the columns in `drop`) and each product's real photo
    (`photos`, by default the one its row names in the real catalogue) linked at place(row), a path
    relative to the folder; the products in `skip` get no photo."""
    records = rows.to_dict("records")
    photos = photos or [original_photo(catalog_dir, row) for row in records]
    made = set()
    for row, photo in zip(records, photos):
        if row["ProductId"] in skip:
            continue
        target = os.path.join(folder, place(row))
        parent = os.path.dirname(target)
        if parent not in made:
            os.makedirs(parent, exist_ok=True)
            made.add(parent)
        os.symlink(photo, target)
    folder.mkdir(parents=True, exist_ok=True)
    rows.drop(columns=list(drop)).to_csv(folder / table, index=False)
    return folder


def write_kaggle_table(folder: Path, rows: pd.DataFrame, comma_title: str | None = None) -> Path:
    """The Kaggle layout's styles.csv, written as Kaggle's is (unquoted). With `comma_title`, the
    first product's title holds a comma, unquoted, as some of Kaggle's do."""
    lines = [",".join(KAGGLE_COLUMNS)]
    for number, row in enumerate(rows.to_dict("records")):
        values = {"season": "Summer", "year": "2012"}
        values.update({column: row[ours] for column, ours in KAGGLE_COLUMNS.items() if ours})
        if number == 0 and comma_title:
            values["productDisplayName"] = comma_title
        lines.append(",".join(values[column] for column in KAGGLE_COLUMNS))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "styles.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def loaded_quietly(folder, **options) -> pd.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a layout that loads completely says nothing
        return load_catalog(folder, **options)


def index_of(catalog: pd.DataFrame, settings):
    """The index of a catalogue, with features from the tests' cache (computed where missing)."""
    return build_index(catalog, extract_features(catalog, default_recipe(settings), progress=False))


# Where each layout puts a product's photo, relative to the catalogue folder
LAYOUTS = {
    "original <Apparel|Footwear>/<Men|Women>/": lambda row: f"{GENDER_FOLDERS[row['Gender']]}/{row['Image']}",
    "an extra Images/images_with_product_ids/ level":
        lambda row: f"{GENDER_FOLDERS[row['Gender']]}/Images/images_with_product_ids/{row['Image']}",
    "upper-case .JPG": lambda row: f"{GENDER_FOLDERS[row['Gender']]}/{row['ProductId']}.JPG",
    "one flat images/ folder": lambda row: f"images/{row['Image']}",
}


@pytest.fixture(scope="module")
def photo_trees(tmp_path_factory, catalog_dir) -> dict[str, Path]:
    """The real photos linked once, file by file, as two layouts need them: all in one folder
    (<id>.jpg), and in the gender folders with upper-case names. The catalogues below link these
    folders (and the real catalogue's own) instead of 2906 files each."""
    rows = real_rows(catalog_dir)
    root = tmp_path_factory.mktemp("photo-trees")
    build_catalogue(catalog_dir, root / "flat", rows, lambda row: row["Image"])
    build_catalogue(catalog_dir, root / "upper", rows, LAYOUTS["upper-case .JPG"])
    return {"flat": root / "flat", "upper": root / "upper"}


def linked_catalogue(folder: Path, links: dict[str, Path], table: pd.DataFrame | None = None) -> Path:
    """`folder` whose sub-folders `links` (relative path -> folder) are links to photo folders."""
    for relative, target in links.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).symlink_to(target, target_is_directory=True)
    if table is not None:
        table.to_csv(folder / "fashion.csv", index=False)
    return folder


def layout_folder(layout: str, folder: Path, catalog_dir: Path, photo_trees: dict, table: pd.DataFrame) -> Path:
    if layout.startswith("original"):
        links = {category: catalog_dir / category for category in ("Apparel", "Footwear")}
    elif layout.startswith("an extra"):
        links = {f"{gender_folder}/Images/images_with_product_ids": catalog_dir / gender_folder
                 for gender_folder in GENDER_FOLDERS.values()}
    elif layout.startswith("upper-case"):
        links = {category: photo_trees["upper"] / category for category in ("Apparel", "Footwear")}
    else:
        links = {"images": photo_trees["flat"]}
    return linked_catalogue(folder, links, table)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_folder_layout_loads_all_2906_products(catalog_dir, catalog, photo_trees, tmp_path, layout):
    rows = real_rows(catalog_dir)
    folder = layout_folder(layout, tmp_path / "shop", catalog_dir, photo_trees, rows)
    loaded = loaded_quietly(folder)
    assert len(loaded) == 2906 and loaded.attrs["left_out"] == {}
    pd.testing.assert_frame_equal(loaded[COMPARED], catalog[COMPARED])  # the same products, photos and copies
    assert loaded["image_path"].tolist() == [os.path.join(folder, LAYOUTS[layout](row)) for row in rows.to_dict("records")]


def test_image_paths_in_the_table_and_products_without_an_image_value_are_found(catalog_dir, tmp_path):
    rows = real_rows(catalog_dir, per_gender=10)
    photos = [original_photo(catalog_dir, row) for row in rows.to_dict("records")]
    rows["Image"] = [f"by-colour/{colour}/{pid}.jpg" if number % 2 else "" for number, (pid, colour)
                     in enumerate(zip(rows["ProductId"], rows["Colour"]))]
    place = lambda row: row["Image"] or f"any/Where/{row['ProductId']}.png"
    folder = build_catalogue(catalog_dir, tmp_path / "shop", rows, place, photos=photos)
    loaded = loaded_quietly(folder)
    assert loaded["image_path"].tolist() == [os.path.join(folder, place(row)) for row in rows.to_dict("records")]
    assert loaded["image_sha256"].tolist() == [file_sha256(photo) for photo in photos]


def test_the_kaggle_layout_loads_all_2906_products(catalog_dir, catalog, photo_trees, tmp_path):
    title = "Puma Men Black, Grey Sports Shoes"  # an unquoted comma, as in Kaggle's own table
    folder = write_kaggle_table(linked_catalogue(tmp_path / "kaggle", {"images": photo_trees["flat"]}),
                                real_rows(catalog_dir), comma_title=title)
    loaded = loaded_quietly(folder, layout="kaggle")
    assert len(loaded) == 2906
    expected = catalog[COMPARED].copy()
    expected.loc[0, "ProductTitle"] = title
    pd.testing.assert_frame_equal(loaded[COMPARED], expected)
    assert loaded["image_path"].tolist() == [os.path.join(folder, "images", f"{pid}.jpg") for pid in catalog["ProductId"]]
    assert set(loaded["season"]) == {"Summer"}  # the table's other columns are kept
    with pytest.raises(CatalogError, match=r"fashion.csv is missing. The folder holds styles.csv: load it with "
                                           r"layout='kaggle' \(or FASHION_LENS_LAYOUT=kaggle\)"):
        load_catalog(folder)
    with pytest.raises(CatalogError, match=r"more values than columns on 1 row\(s\) \(line 2: 11 values for 10 columns\)"):
        load_catalog(folder, table="styles.csv", columns=dict(item for item in KAGGLE_COLUMNS.items() if item[1]))


def test_own_column_names_load_through_a_column_mapping(catalog_dir, catalog, tmp_path, monkeypatch):
    own = {"ProductId": "sku", "Gender": "department", "ProductType": "type", "Colour": "color", "ProductTitle": "name"}
    rows = real_rows(catalog_dir).rename(columns=own)
    folder = build_catalogue(catalog_dir, tmp_path / "shop", rows.rename(columns={v: k for k, v in own.items()}),
                             lambda row: f"photos/{row['ProductId']}.jpg")
    rows.to_csv(folder / "products.csv", index=False)
    (folder / "fashion.csv").unlink()
    mapping = {theirs: ours for ours, theirs in own.items()}
    loaded = loaded_quietly(folder, table="products.csv", columns=mapping)
    pd.testing.assert_frame_equal(loaded[COMPARED], catalog[COMPARED])
    monkeypatch.setenv("FASHION_LENS_COLUMNS", ", ".join(f"{theirs}={ours}" for theirs, ours in mapping.items()))
    assert loaded_quietly(folder, table="products.csv")[COMPARED].equals(loaded[COMPARED])


@pytest.mark.parametrize("columns, message", [
    ({"sku": "ProductId", "colour": "Shade"}, r"names 'Shade', which fashion-lens does not use; map your columns to ProductId"),
    ({"code": "ProductId"}, r"names 'code', which .*products.csv lacks; its columns are sku, Gender"),
    ({"sku": "ProductId", "Usage": "ProductTitle"}, r"would have the column\(s\) ProductTitle twice"),
    ({}, r"lacks the column\(s\) ProductId\. fashion-lens needs ProductId, SubCategory, ProductType, Colour, Usage, "
         r"ProductTitle .* or map yours: load_catalog\(\.\.\., columns=\{'your name': 'ProductId'\}\)"),
])
def test_a_column_mapping_that_does_not_fit_says_what_to_fix(catalog_dir, tmp_path, columns, message):
    rows = real_rows(catalog_dir, per_gender=2)
    folder = build_catalogue(catalog_dir, tmp_path / "shop", rows, lambda row: row["Image"])
    rows.rename(columns={"ProductId": "sku"}).to_csv(folder / "products.csv", index=False)
    with pytest.raises(CatalogError, match=message):
        load_catalog(folder, table="products.csv", columns=columns)


def test_no_photo_found_states_the_layout_looked_for_and_what_the_folder_holds(catalog_dir, tmp_path):
    rows = real_rows(catalog_dir, per_gender=6)
    numbered = {pid: f"img_{number:04d}" for number, pid in enumerate(rows["ProductId"])}
    folder = build_catalogue(catalog_dir, tmp_path / "shop", rows,
                             lambda row: f"photos/{numbered[row['ProductId']]}.PNG")
    (folder / "photos" / "notes.txt").write_text("shot in May")
    with pytest.raises(CatalogError) as raised:
        load_catalog(folder)
    message = str(raised.value)
    assert "No photo was found for any of the 24 products" in message
    assert "a file named <ProductId>.jpg (or .jpeg, .png, .webp, any case) anywhere under the catalogue folder" in message
    assert "The folder holds 25 files (24 .png, 1 .txt), for example photos/img_0000.PNG, photos/img_0001.PNG" in message
    assert f"The first ProductIds are {', '.join(rows['ProductId'].head(5))}" in message
    assert "make data" not in message

    empty = tmp_path / "empty"
    empty.mkdir()
    rows.to_csv(empty / "fashion.csv", index=False)
    with pytest.raises(CatalogError, match="The folder holds no file at all besides the table"):
        load_catalog(empty)


def test_several_candidate_photos_prefer_the_gender_folder_and_are_reported(catalog_dir, tmp_path):
    rows = real_rows(catalog_dir, per_gender=3)
    folder = build_catalogue(catalog_dir, tmp_path / "shop", rows, LAYOUTS["original <Apparel|Footwear>/<Men|Women>/"])
    victim = rows.iloc[4]
    stray = folder / "thumbnails" / victim["Image"]
    stray.parent.mkdir()
    stray.symlink_to(original_photo(catalog_dir, rows.iloc[0]))  # another photo under the same name
    with pytest.warns(MissingImagesWarning, match=rf"1 product\(s\) have several candidate photos .* {victim['ProductId']}: "
                                                  rf"{GENDER_FOLDERS[victim['Gender']]}/{victim['Image']} \(not thumbnails/"):
        loaded = load_catalog(folder)
    assert product_row(loaded, victim["ProductId"])["image_path"] == str(folder / LAYOUTS[
        "original <Apparel|Footwear>/<Men|Women>/"](victim))


@pytest.mark.parametrize("image", ["../elsewhere/{pid}.jpg", "/tmp/{pid}.jpg", "photos/../../{pid}.jpg"])
def test_an_image_outside_the_catalogue_folder_is_refused(catalog_dir, tmp_path, image):
    rows = real_rows(catalog_dir, per_gender=2)
    folder = build_catalogue(catalog_dir, tmp_path / "shop", rows, lambda row: row["Image"])
    rows.loc[3, "Image"] = image.format(pid=rows.at[3, "ProductId"])
    rows.to_csv(folder / "fashion.csv", index=False)
    with pytest.raises(CatalogError, match=rf"Image must name a file inside the catalogue folder {folder}; 1 row\(s\) point "
                                           rf"outside it \(line 5: '{rows.at[3, 'Image']}'\)"):
        load_catalog(folder)
    rows.loc[3, "Image"] = str(folder / rows.at[3, "Image"].rsplit("/", 1)[-1])  # absolute, but inside: fine
    rows.to_csv(folder / "fashion.csv", index=False)
    assert len(loaded_quietly(folder)) == 8


# ---- fast: settings, layouts and the folder walk, on drawn photos ----------------------------

@pytest.mark.fast
def test_fast_the_layout_and_column_settings_come_from_the_argument_then_the_environment(monkeypatch):
    from fashion_lens.errors import SettingsError
    from fashion_lens.settings import get_settings, parse_columns

    monkeypatch.delenv("FASHION_LENS_LAYOUT", raising=False)
    monkeypatch.delenv("FASHION_LENS_COLUMNS", raising=False)
    assert (get_settings().layout, get_settings().columns) == ("fashion-lens", ())
    monkeypatch.setenv("FASHION_LENS_LAYOUT", " Kaggle ")
    monkeypatch.setenv("FASHION_LENS_COLUMNS", "sku=ProductId,  name = ProductTitle")
    assert get_settings().layout == "kaggle"
    assert get_settings().columns == (("sku", "ProductId"), ("name", "ProductTitle"))
    assert get_settings(layout="fashion-lens", columns={"code": "ProductId"}).columns == (("code", "ProductId"),)
    assert parse_columns("") == {} and parse_columns(None) == {}
    with pytest.raises(SettingsError, match="Cannot read the column mapping entry 'sku': write each entry as "
                                            "<your column>=<fashion-lens column>"):
        parse_columns("sku, name=ProductTitle")


@pytest.mark.fast
def test_fast_a_layout_combines_with_the_users_columns_and_an_unknown_one_names_the_choices(tmp_path):
    from fashion_lens.catalog_layout import catalog_layout

    kaggle = catalog_layout("kaggle", {"title": "ProductTitle"})
    assert kaggle.table == "styles.csv" and kaggle.columns["title"] == "ProductTitle"
    assert "productDisplayName" not in kaggle.columns and kaggle.columns["id"] == "ProductId"
    assert catalog_layout("fashion-lens", table="shop.csv").table == "shop.csv"
    with pytest.raises(CatalogError, match="Unknown catalogue layout 'amazon'; choose one of fashion-lens, kaggle"):
        load_catalog(tmp_path, layout="amazon")


@pytest.mark.fast
def test_fast_the_folder_walk_skips_hidden_files_and_survives_a_link_loop(tmp_path):
    from engine_support import product_photo

    from fashion_lens.catalog_layout import locate_photos, scan_folder

    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / ".ipynb_checkpoints").mkdir()
    product_photo().save(tmp_path / "a" / "b" / "P-1.JPEG")
    product_photo().save(tmp_path / ".ipynb_checkpoints" / "P-2.jpg")
    product_photo().save(tmp_path / "a" / "._P-3.jpg")  # what macOS leaves beside a copied photo
    (tmp_path / "a" / "b" / "up").symlink_to(tmp_path / "a", target_is_directory=True)  # a loop
    files = scan_folder(tmp_path)
    assert files.paths == ["a/b/P-1.JPEG"]
    found, ambiguous = locate_photos(files, ["P-1", "p-1", "P-2"], ["", "", ""], ["", "", ""])
    assert found == [str(tmp_path / "a" / "b" / "P-1.JPEG")] * 2 + [None] and ambiguous == {}


# ---- catalogues that differ from the project's: engine, widget, app ----------------------------

@pytest.fixture(scope="module")
def catalogues(tmp_path_factory, catalog_dir) -> dict:
    """Small catalogues from the real one, 6 products of each gender, photos in images/ (ids kept,
    so that their features come from the tests' cache; the SKU one gets its own)."""
    root = tmp_path_factory.mktemp("catalogues")
    rows = real_rows(catalog_dir, per_gender=6)
    photos = [original_photo(catalog_dir, row) for row in rows.to_dict("records")]
    flat = lambda row: f"images/{row['Image']}"
    made = {"rows": rows, "missing": rows.at[2, "ProductId"], "damaged": rows.at[8, "ProductId"]}
    made["no gender"] = build_catalogue(catalog_dir, root / "no-gender", rows, flat, drop=("Gender", "Category"))
    sku = rows.assign(ProductId=[f"{category[:2].upper()}-{pid}" for category, pid in zip(rows["Category"], rows["ProductId"])],
                      Image="")
    made["sku"] = build_catalogue(catalog_dir, root / "sku", sku, lambda row: f"Photos/{row['ProductId']}.Jpg", photos=photos)
    blank = rows.copy()
    blank.loc[[1, 7], "Colour"] = ["", "NaN"]  # an empty cell, and what pandas writes for one
    blank.loc[13, "Usage"] = "N/A"
    made["blank labels"] = build_catalogue(catalog_dir, root / "blank-labels", blank, flat)
    made["left out"] = build_catalogue(catalog_dir, root / "left-out", rows, flat, skip=(made["missing"],))
    damaged = made["left out"] / flat(rows.iloc[8])
    damaged.unlink()
    damaged.write_bytes(Path(photos[8]).read_bytes()[:300])  # a photo cut short
    made["unreadable"] = build_catalogue(catalog_dir, root / "unreadable", rows.head(3), flat)
    for row in rows.head(3).to_dict("records"):
        (made["unreadable"] / flat(row)).unlink()
        (made["unreadable"] / flat(row)).write_bytes(b"not a photo at all")
    made["renamed"] = build_catalogue(catalog_dir, root / "renamed", rows, lambda row: f"photos/IMG_{row['ProductId'][::-1]}.jpg")
    made["outside"] = build_catalogue(catalog_dir, root / "outside", rows.assign(Image=[f"../shared/{name}" for name in rows["Image"]]),
                                      lambda row: row["Image"].replace("../shared/", "images/"))
    made["sku artifacts"] = root / "sku-artifacts"
    return made


@pytest.fixture(scope="module")
def no_gender_index(catalogues, features, settings):
    return index_of(loaded_quietly(catalogues["no gender"]), settings)


@pytest.fixture(scope="module")
def sku_index(catalogues, settings):
    catalog = loaded_quietly(catalogues["sku"])
    features = extract_features(catalog, default_recipe(settings), artifacts_dir=catalogues["sku artifacts"], progress=False)
    return build_index(catalog, features)


@pytest.fixture(scope="module")
def blank_label_index(catalogues, features, settings):
    with pytest.warns(BlankLabelsWarning):
        return index_of(load_catalog(catalogues["blank labels"]), settings)


@pytest.fixture(scope="module")
def left_out_index(catalogues, features, settings):
    with pytest.warns(MissingImagesWarning):
        catalog = load_catalog(catalogues["left out"])
    with pytest.warns(UserWarning, match="1 photo\\(s\\) could not be read"):
        return index_of(catalog, settings)


def _visual_ranking(index, product_id: str) -> list[str]:
    """The products most like `product_id` by the documented rule at colour weight 0, from scratch:
    the cosine in float64, rounded to 6 decimals, ties by ProductId order; its own photo's copies left out."""
    from fashion_lens.catalog import id_sort_key

    position = index.positions[product_id]
    scores = (index.vectors.astype("float64") @ index.vectors[position].astype("float64")).round(6)
    own = index.catalog.at[position, "duplicate_group"]
    rows = [row for row in range(len(index)) if index.catalog.at[row, "duplicate_group"] != own]
    rows.sort(key=lambda row: (-scores[row], id_sort_key(index.catalog.at[row, "ProductId"])))
    return index.catalog.loc[rows, "ProductId"].tolist()


def test_a_catalogue_without_gender_searches_the_whole_catalogue(catalogues, no_gender_index):
    index = no_gender_index
    assert set(index.catalog["Gender"]) == {""} and genders_of(index.catalog) == [""]
    assert index.gender_rows == {"": slice(0, 24)}
    for product_id in index.catalog["ProductId"].iloc[::5]:
        results = similar_products(index, product_id, k=30, colour_weight=0)
        assert results["ProductId"].tolist() == _visual_ranking(index, product_id)  # every other product, in order
    original_gender = catalogues["rows"].set_index("ProductId")["Gender"]
    top = similar_products(index, index.catalog["ProductId"].iloc[0], k=23)
    assert original_gender[top["ProductId"]].nunique() == 4  # nothing held the search to one gender
    with pytest.raises(SearchError, match="Unknown gender 'Men'; choose one of '' \\(the products without a gender\\), "
                                          "or None for the whole catalogue"):
        similar_to_image(index, index.catalog.at[0, "image_path"], gender="Men")


def test_sku_ids_are_kept_as_written_end_to_end(catalogues, sku_index):
    index = sku_index
    assert index.catalog["ProductId"].str.fullmatch(r"(AP|FO)-\d+").all()
    query = index.catalog.at[index.gender_rows["Men"].start, "ProductId"]
    results = similar_products(index, f" {query} ", k=5)
    assert len(results) == 5 and results["ProductId"].isin(index.catalog["ProductId"]).all()
    assert product_row(index.catalog, query.lower().upper())["ProductId"] == query
    photo = index.catalog.loc[index.positions[query], "image_path"]
    assert similar_to_image(index, photo, k=1, colour_weight=0)["ProductId"].iloc[0] == query  # its own photo
    with pytest.raises(KeyError, match="ProductId 'ZZ-1' is not in the catalogue. Search by title"):
        similar_products(index, "ZZ-1")
    with pytest.raises(KeyError, match=f"ProductId '{query[:-1]}9' is not in the catalogue. Close ids: {query[:-1]}"):
        similar_products(index, query[:-1] + "9")


@pytest.mark.fast
def test_fast_ids_sort_as_numbers_when_they_are_numbers_and_in_a_fixed_order_otherwise():
    from fashion_lens.catalog import id_order

    ids = ["30", "9", "AB-12", "100", "AB-2", "ab-1", "10"]
    assert [ids[row] for row in sorted(range(len(ids)), key=lambda row: id_order(ids)[row])] == \
        ["9", "10", "30", "100", "AB-2", "ab-1", "AB-12"]  # shorter first, then by character


def test_blank_and_nan_labels_are_reported_with_their_lines_and_are_no_filter_choice(catalogues, blank_label_index):
    with pytest.warns(BlankLabelsWarning, match=r"blank \(or NaN\) labels: Colour on 2 row\(s\) \(lines 3, 9\); "
                                                r"Usage on 1 row\(s\) \(line 15\)"):
        catalog = load_catalog(catalogues["blank labels"])
    assert catalog.loc[[1, 7], "Colour"].tolist() == ["", ""] and catalog.at[13, "Usage"] == ""
    index = blank_label_index
    assert filter_choices(index, "Colour") == sorted(set(catalog["Colour"]) - {""})
    assert "" not in filter_choices(index, "Usage")
    with pytest.raises(SearchError, match="No product has Colour ''"):
        similar_products(index, catalog.at[0, "ProductId"], colour="")
    blank_ids = catalog.loc[[1, 7], "ProductId"].tolist()
    results = similar_products(index, blank_ids[0], k=23, across_genders=True)
    other = results[results["ProductId"] == blank_ids[1]]
    assert len(other) == 1 and "Colour" not in other["why"].iloc[0].split(";")[0]  # two blanks share no colour


def test_a_left_out_product_is_reported_as_left_out_with_the_reason(catalogues, left_out_index):
    index, missing, damaged = left_out_index, catalogues["missing"], catalogues["damaged"]
    assert len(index) == 22 and set(index.left_out) == {missing, damaged}
    with pytest.raises(KeyError, match=f"ProductId '{missing}' is in the catalogue but was left out because no photo "
                                       f"was found: neither its Image '{missing}.jpg' nor a file named {missing}.jpg"):
        similar_products(index, missing)
    with pytest.raises(KeyError, match=f"ProductId '{damaged}' is in the catalogue but was left out because its photo "
                                       "could not be read \\(.*images/" + damaged + ".jpg"):
        similar_products(index, int(damaged))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        catalog = load_catalog(catalogues["left out"])
    with pytest.raises(KeyError, match=f"'{missing}' is in the catalogue but was left out because no photo was found"):
        product_row(catalog, missing)


def test_a_catalogue_whose_photos_all_fail_never_reaches_the_index(catalogues, settings):
    catalog = loaded_quietly(catalogues["unreadable"])
    with pytest.warns(UserWarning, match="3 photo\\(s\\) could not be read"):
        features = extract_features(catalog, default_recipe(settings), progress=False)
    with pytest.raises(CatalogError, match=f"None of the 3 products of the catalogue can be indexed \\({catalog.at[0, 'ProductId']}: "
                                           "its photo could not be read"):
        build_index(catalog, features)


# ---- the widget ---------------------------------------------------------------------------------

def test_the_widget_on_a_catalogue_without_gender_lists_and_searches_every_product(no_gender_index):
    index = no_gender_index
    widget = recommender_widget(index, k=5)
    assert widget.gender.layout.display == "none" and widget.across_genders.layout.display == "none"
    assert list(widget.gender.options) == [("all products", "")]
    assert [pid for _, pid in widget.matches.options if pid] == index.catalog["ProductId"].tolist()
    assert "Choose a product" in widget.message.value
    product_id = index.catalog.at[17, "ProductId"]
    widget.product_id.value = product_id
    pd.testing.assert_frame_equal(widget.results, similar_products(index, product_id, k=5))
    assert "most similar to" in widget.summary.value and "all products" in widget.summary.value
    widget.search.value = index.catalog.at[20, "ProductTitle"].split()[0]
    assert index.catalog.at[20, "ProductId"] in [pid for _, pid in widget.matches.options]


def test_the_widget_takes_sku_ids(sku_index):
    index = sku_index
    widget = recommender_widget(index, k=4)
    assert widget.product_id.placeholder == f"e.g. {index.catalog.at[0, 'ProductId']}"
    query = index.catalog.at[index.gender_rows["Women"].start, "ProductId"]
    widget.product_id.value = query
    pd.testing.assert_frame_equal(widget.results, similar_products(index, query, k=4))
    widget.gender.value = "Men"
    widget.search.value = "fo-"  # the start of an id, in any case
    men = index.catalog.iloc[index.gender_rows["Men"]]
    assert [pid for _, pid in widget.matches.options if pid] == men["ProductId"].tolist()
    widget.product_id.value = "ZZ-1"
    assert "ProductId &#x27;ZZ-1&#x27; is not in the catalogue" in widget.message.value
    assert widget.query.product_id == query


def test_the_widget_says_a_product_was_left_out_and_why(catalogues, left_out_index):
    widget = recommender_widget(left_out_index, product_id=left_out_index.catalog.at[0, "ProductId"])
    before = widget.results.copy()
    for product_id, reason in ((catalogues["missing"], "left out because no photo was found"),
                               (catalogues["damaged"], "left out because its photo could not be read")):
        widget.product_id.value = product_id
        assert f"ProductId &#x27;{product_id}&#x27; is in the catalogue but was {reason}" in widget.message.value
        pd.testing.assert_frame_equal(widget.results, before)


def test_the_widget_offers_no_blank_label_as_a_filter_choice(blank_label_index):
    widget = recommender_widget(blank_label_index)
    assert list(widget.colour.options) == ["any", *filter_choices(blank_label_index, "Colour")]
    assert "" not in widget.colour.options and "" not in widget.usage.options


def test_the_widget_refuses_an_index_without_products(no_gender_index):
    empty = dataclasses.replace(no_gender_index, catalog=no_gender_index.catalog.head(0), gender_rows={})
    with pytest.raises(CatalogError, match="The index holds no product"):
        recommender_widget(empty)


# ---- the app ------------------------------------------------------------------------------------

def start_app(monkeypatch, data_dir: Path, **environment) -> AppTest:
    monkeypatch.setenv("FASHION_LENS_DATA", str(data_dir))
    for name, value in environment.items():
        monkeypatch.setenv(name, str(value))
    app = AppTest.from_file(str(APP), default_timeout=240).run()
    assert not app.exception, app.exception
    return app


def search(app: AppTest, text: str) -> AppTest:
    app.text_input(key="product_query").input(text).run()
    assert not app.exception, app.exception
    return app


def shown_result_ids(app: AppTest) -> list[str]:
    return [caption.split(" · ")[0] for image in app.image for caption in image.captions][1:]


def texts(elements) -> list[str]:
    return [element.value for element in elements]


def test_the_app_runs_on_the_kaggle_layout(monkeypatch, tmp_path, catalog_dir, photo_trees, index):
    folder = write_kaggle_table(linked_catalogue(tmp_path / "kaggle", {"images": photo_trees["flat"]}), real_rows(catalog_dir))
    with pytest.raises(CatalogError) as expected:
        load_catalog(folder, layout="fashion-lens")
    app = start_app(monkeypatch, folder)
    assert texts(app.error) == [str(expected.value)] and "layout='kaggle'" in app.error[0].value

    app = start_app(monkeypatch, folder, FASHION_LENS_LAYOUT="kaggle")
    assert "2906 products indexed" in " ".join(texts(app.sidebar.caption)) and "(kaggle layout)" in " ".join(texts(app.sidebar.caption))
    product_id = index.catalog.at[index.gender_rows["Girls"].start + 4, "ProductId"]
    search(app, product_id)
    assert shown_result_ids(app) == similar_products(index, product_id, k=5)["ProductId"].tolist()


def test_the_app_runs_on_a_catalogue_without_gender(monkeypatch, catalogues, no_gender_index):
    app = start_app(monkeypatch, catalogues["no gender"])
    assert not any(box.key == "across_genders" for box in app.checkbox)
    product_id = no_gender_index.catalog.at[11, "ProductId"]
    search(app, product_id)
    assert shown_result_ids(app) == similar_products(no_gender_index, product_id, k=5)["ProductId"].tolist()
    assert any("Searching **all products**." in text for text in texts(app.markdown))
    app.radio(key="mode").set_value("Your photo").run()
    assert not app.exception and not any(box.key == "photo_gender" for box in app.selectbox)


def test_the_app_takes_sku_ids(monkeypatch, catalogues, sku_index):
    app = start_app(monkeypatch, catalogues["sku"], FASHION_LENS_ARTIFACTS=catalogues["sku artifacts"])
    query = sku_index.catalog.at[sku_index.gender_rows["Boys"].start + 1, "ProductId"]
    search(app, query)
    assert shown_result_ids(app) == similar_products(sku_index, query, k=5)["ProductId"].tolist()
    search(app, "ZZ-1")
    assert texts(app.error) == ["ProductId 'ZZ-1' is not in the catalogue. Search by title to find an id."]


def test_the_app_says_a_product_was_left_out_and_why(monkeypatch, catalogues, left_out_index):
    app = start_app(monkeypatch, catalogues["left out"])
    notes = " ".join(texts(app.sidebar.warning))
    assert "1 of 24 products have no image file" in notes and "1 photo(s) could not be read" in notes
    for product_id in (catalogues["missing"], catalogues["damaged"]):
        with pytest.raises(KeyError) as expected:
            similar_products(left_out_index, product_id)
        search(app, product_id)
        assert texts(app.error) == [expected.value.args[0]] and "was left out because" in app.error[0].value


def test_the_app_offers_no_blank_label_as_a_filter_choice(monkeypatch, catalogues, blank_label_index):
    app = start_app(monkeypatch, catalogues["blank labels"])
    assert app.multiselect(key="filter_Colour").options == filter_choices(blank_label_index, "Colour")
    assert "" not in app.multiselect(key="filter_Usage").options
    assert any("Colour on 2 row(s) (lines 3, 9)" in text for text in texts(app.sidebar.warning))


@pytest.mark.parametrize("case, message", [
    ("renamed", "No photo was found for any of the 24 products"),
    ("outside", "Image must name a file inside the catalogue folder"),
    ("unreadable", "None of the 3 products of the catalogue can be indexed"),
])
def test_the_app_shows_why_a_catalogue_cannot_be_used(monkeypatch, catalogues, settings, case, message):
    from fashion_lens.index import load_index
    from fashion_lens.settings import get_settings

    monkeypatch.setenv("FASHION_LENS_DATA", str(catalogues[case]))
    with pytest.raises(CatalogError) as expected, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_index(settings=get_settings(), progress=False)
    app = start_app(monkeypatch, catalogues[case])
    assert texts(app.error) == [str(expected.value)] and message in app.error[0].value
    assert not app.image  # nothing shown as a result
