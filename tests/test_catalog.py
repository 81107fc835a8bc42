"""Loading and checking the catalogue."""

import shutil

import pandas as pd
import pytest

import helpers


def test_real_catalogue_loads_completely(catalog):
    assert len(catalog) == 2906
    assert catalog["Gender"].value_counts().to_dict() == {"Men": 811, "Women": 769, "Boys": 759, "Girls": 567}
    assert catalog["SubCategory"].nunique() == 9
    assert catalog["image_path"].map(lambda path: __import__("os").path.isfile(path)).all()


def test_product_ids_stay_strings(catalog):
    assert all(isinstance(pid, str) and pid.isdigit() for pid in catalog["ProductId"])
    assert helpers.product_row(catalog, 13683)["ProductId"] == "13683"
    assert helpers.product_row(catalog, " 13683 ")["ProductId"] == "13683"


def test_images_map_to_their_gender_folders(catalog, catalog_dir):
    for gender, folder in helpers.GENDER_FOLDERS.items():
        paths = catalog.loc[catalog["Gender"] == gender, "image_path"]
        assert paths.map(lambda path: path.startswith(str(catalog_dir / folder) + "/")).all()


def test_byte_identical_duplicates_are_grouped(catalog, catalog_dir):
    groups = catalog.groupby("duplicate_group")["ProductId"].size()
    assert (groups > 1).sum() == 204
    assert groups[groups > 1].sum() == 455
    assert catalog["is_duplicate"].sum() == 455 - 204
    # the catalogue's own list of groups agrees with the one computed from the bytes
    listed = pd.read_csv(catalog_dir / "duplicate_groups.csv", dtype=str)
    ours = catalog.set_index("ProductId")["duplicate_group"]
    for _, members in listed.groupby("group")["ProductId"]:
        assert ours[members].nunique() == 1


def test_duplicate_groups_table_lists_each_member(catalog):
    table = helpers.duplicate_groups(catalog)
    assert len(table) == 455 and table["duplicate_group"].nunique() == 204


def test_split_by_gender_gives_the_four_subsets(catalog, tmp_path):
    subsets = helpers.split_by_gender(catalog)
    assert {gender: len(rows) for gender, rows in subsets.items()} == {"Boys": 759, "Girls": 567, "Men": 811, "Women": 769}
    paths = helpers.save_gender_splits(catalog, tmp_path)
    assert len(pd.read_csv(paths["Girls"], dtype=str)) == 567


def _edit_csv(folder, edit):
    rows = pd.read_csv(folder / "fashion.csv", dtype=str, keep_default_na=False)
    edit(rows).to_csv(folder / "fashion.csv", index=False)


def test_missing_folder_says_how_to_get_the_catalogue(tmp_path):
    with pytest.raises(helpers.CatalogError, match="make data"):
        helpers.load_catalog(tmp_path / "nowhere")


def test_missing_column_is_named(catalog_copy):
    _edit_csv(catalog_copy, lambda rows: rows.drop(columns="Colour"))
    with pytest.raises(helpers.CatalogError, match="lacks the column\\(s\\) Colour"):
        helpers.load_catalog(catalog_copy)


def test_renamed_column_is_named(catalog_copy):
    _edit_csv(catalog_copy, lambda rows: rows.rename(columns={"ProductTitle": "Title"}))
    with pytest.raises(helpers.CatalogError, match="ProductTitle"):
        helpers.load_catalog(catalog_copy)


def test_extra_columns_are_accepted(catalog_copy):
    _edit_csv(catalog_copy, lambda rows: rows.assign(Season="Summer"))
    assert len(helpers.load_catalog(catalog_copy)) == 24


def test_duplicate_product_ids_are_rejected(catalog_copy):
    def repeat(rows):
        rows.loc[1, "ProductId"] = rows.loc[0, "ProductId"]
        return rows
    _edit_csv(catalog_copy, repeat)
    with pytest.raises(helpers.CatalogError, match="unique"):
        helpers.load_catalog(catalog_copy)


def test_unknown_gender_is_rejected(catalog_copy):
    def unisex(rows):
        rows.loc[0, "Gender"] = "Unisex"
        return rows
    _edit_csv(catalog_copy, unisex)
    with pytest.raises(helpers.CatalogError, match="'Unisex'"):
        helpers.load_catalog(catalog_copy)


def test_non_numeric_product_id_is_rejected_with_its_line(catalog_copy):
    def letters(rows):
        rows.loc[2, "ProductId"] = "A12"
        return rows
    _edit_csv(catalog_copy, letters)
    with pytest.raises(helpers.CatalogError, match="line 4: 'A12'"):
        helpers.load_catalog(catalog_copy)


def test_row_without_image_is_reported_and_the_rest_still_loads(catalog_copy):
    rows = pd.read_csv(catalog_copy / "fashion.csv", dtype=str)
    victim = rows.iloc[0]
    (catalog_copy / helpers.GENDER_FOLDERS[victim["Gender"]] / victim["Image"]).unlink()
    with pytest.warns(helpers.MissingImagesWarning, match=victim["ProductId"]):
        loaded = helpers.load_catalog(catalog_copy)
    assert len(loaded) == 23 and victim["ProductId"] not in set(loaded["ProductId"])


def test_missing_or_empty_or_non_utf8_csv_gets_a_clear_error(catalog_copy):
    csv = catalog_copy / "fashion.csv"
    original = csv.read_bytes()
    csv.write_bytes(b"")
    with pytest.raises(helpers.CatalogError, match="empty"):
        helpers.load_catalog(catalog_copy)
    csv.write_bytes(original.replace(b"Casual", "Cásual".encode("latin-1"), 1))
    with pytest.raises(helpers.CatalogError, match="not UTF-8"):
        helpers.load_catalog(catalog_copy)
    csv.unlink()
    with pytest.raises(helpers.CatalogError, match="fashion.csv is missing"):
        helpers.load_catalog(catalog_copy)


def test_find_products_searches_ids_and_titles(catalog):
    hits = helpers.find_products(catalog, "puma", limit=50)
    assert len(hits) > 0 and hits["ProductTitle"].str.lower().str.contains("puma").all()
    assert helpers.find_products(catalog, "1368")["ProductId"].str.startswith("1368").all()
    assert helpers.find_products(catalog, "   ").empty


def test_unknown_product_id_names_the_id_and_suggests_close_matches(catalog):
    with pytest.raises(KeyError, match="'13686'.*Close ids: 1368"):
        helpers.product_row(catalog, "13686")
