"""Loading and checking the catalogue."""


import pandas as pd
import pytest

from fashion_lens.catalog import GENDER_FOLDERS, duplicate_groups, find_products, load_catalog, product_row, save_gender_splits, split_by_gender
from fashion_lens.errors import CatalogError, MissingImagesWarning


def test_real_catalogue_loads_completely(catalog):
    assert len(catalog) == 2906
    assert catalog["Gender"].value_counts().to_dict() == {"Men": 811, "Women": 769, "Boys": 759, "Girls": 567}
    assert catalog["SubCategory"].nunique() == 9
    assert catalog["image_path"].map(lambda path: __import__("os").path.isfile(path)).all()


def test_product_ids_stay_strings(catalog):
    assert all(isinstance(pid, str) and pid.isdigit() for pid in catalog["ProductId"])
    assert product_row(catalog, 13683)["ProductId"] == "13683"
    assert product_row(catalog, " 13683 ")["ProductId"] == "13683"


def test_images_map_to_their_gender_folders(catalog, catalog_dir):
    for gender, folder in GENDER_FOLDERS.items():
        paths = catalog.loc[catalog["Gender"] == gender, "image_path"]
        assert paths.map(lambda path, folder=folder: path.startswith(str(catalog_dir / folder) + "/")).all()


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
    table = duplicate_groups(catalog)
    assert len(table) == 455 and table["duplicate_group"].nunique() == 204


def test_split_by_gender_gives_the_four_subsets(catalog, tmp_path):
    subsets = split_by_gender(catalog)
    assert {gender: len(rows) for gender, rows in subsets.items()} == {"Boys": 759, "Girls": 567, "Men": 811, "Women": 769}
    paths = save_gender_splits(catalog, tmp_path)
    assert len(pd.read_csv(paths["Girls"], dtype=str)) == 567


def _edit_csv(folder, edit):
    rows = pd.read_csv(folder / "fashion.csv", dtype=str, keep_default_na=False)
    edit(rows).to_csv(folder / "fashion.csv", index=False)


def test_missing_folder_says_how_to_get_the_catalogue(tmp_path):
    with pytest.raises(CatalogError, match="make data"):
        load_catalog(tmp_path / "nowhere")


def test_missing_column_is_named(catalog_copy):
    _edit_csv(catalog_copy, lambda rows: rows.drop(columns="Colour"))
    with pytest.raises(CatalogError, match="lacks the column\\(s\\) Colour"):
        load_catalog(catalog_copy)


def test_renamed_column_is_named(catalog_copy):
    _edit_csv(catalog_copy, lambda rows: rows.rename(columns={"ProductTitle": "Title"}))
    with pytest.raises(CatalogError, match="ProductTitle"):
        load_catalog(catalog_copy)


def test_extra_columns_are_accepted(catalog_copy):
    _edit_csv(catalog_copy, lambda rows: rows.assign(Season="Summer"))
    assert len(load_catalog(catalog_copy)) == 24


def test_duplicate_product_ids_are_rejected(catalog_copy):
    def repeat(rows):
        rows.loc[1, "ProductId"] = rows.loc[0, "ProductId"]
        return rows
    _edit_csv(catalog_copy, repeat)
    with pytest.raises(CatalogError, match="unique"):
        load_catalog(catalog_copy)


def test_a_gender_beyond_the_four_is_a_group_of_its_own(catalog_copy):
    from fashion_lens.catalog import genders_of

    def unisex(rows):
        rows.loc[0, "Gender"] = "Unisex"
        return rows
    _edit_csv(catalog_copy, unisex)
    loaded = load_catalog(catalog_copy)  # its photo stays where it was: found all the same
    assert len(loaded) == 24 and loaded.at[0, "Gender"] == "Unisex"
    assert genders_of(loaded) == ["Boys", "Girls", "Men", "Women", "Unisex"]


def test_ids_are_kept_as_written_and_a_blank_id_is_refused_with_its_line(catalog_copy):
    def sku(rows):
        rows.loc[2, "ProductId"] = "AB-12"  # its photo is still named in the Image column
        return rows
    _edit_csv(catalog_copy, sku)
    loaded = load_catalog(catalog_copy)
    assert len(loaded) == 24 and product_row(loaded, " AB-12 ")["ProductId"] == "AB-12"

    def blank(rows):
        rows.loc[2, "ProductId"] = " "
        return rows
    _edit_csv(catalog_copy, blank)
    with pytest.raises(CatalogError, match=r"ProductId is blank on 1 row\(s\) \(line 4\)"):
        load_catalog(catalog_copy)


def test_row_without_image_is_reported_and_the_rest_still_loads(catalog_copy):
    rows = pd.read_csv(catalog_copy / "fashion.csv", dtype=str)
    victim = rows.iloc[0]
    (catalog_copy / GENDER_FOLDERS[victim["Gender"]] / victim["Image"]).unlink()
    with pytest.warns(MissingImagesWarning, match=victim["ProductId"]):
        loaded = load_catalog(catalog_copy)
    assert len(loaded) == 23 and victim["ProductId"] not in set(loaded["ProductId"])


def test_missing_or_empty_or_non_utf8_csv_gets_a_clear_error(catalog_copy):
    csv = catalog_copy / "fashion.csv"
    original = csv.read_bytes()
    csv.write_bytes(b"")
    with pytest.raises(CatalogError, match="empty"):
        load_catalog(catalog_copy)
    csv.write_bytes(original.replace(b"Casual", "Cásual".encode("latin-1"), 1))
    with pytest.raises(CatalogError, match="not UTF-8"):
        load_catalog(catalog_copy)
    csv.unlink()
    with pytest.raises(CatalogError, match="fashion.csv is missing"):
        load_catalog(catalog_copy)


def test_find_products_searches_ids_and_titles(catalog):
    hits = find_products(catalog, "puma", limit=50)
    assert len(hits) > 0 and hits["ProductTitle"].str.lower().str.contains("puma").all()
    assert find_products(catalog, "1368")["ProductId"].str.startswith("1368").all()
    assert find_products(catalog, "   ").empty


def test_unknown_product_id_names_the_id_and_suggests_close_matches(catalog):
    with pytest.raises(KeyError, match="'13686'.*Close ids: 1368"):
        product_row(catalog, "13686")


# ---- fast: a small catalogue drawn in tmp_path, no real catalogue ------------------------------

def _drawn_catalogue(folder, per_gender=2, photos=None, edit=None):
    """`per_gender` drawn products of each gender (ids 100, 101, ... in gender order), each photo different."""
    from engine_support import catalogue_row, write_catalogue

    from fashion_lens.catalog import GENDERS

    colours = ("Red", "Blue", "Black", "White", "Green")
    rows = [catalogue_row(100 + 10 * g + i, gender=gender, colour=colours[i % len(colours)])
            for g, gender in enumerate(GENDERS) for i in range(per_gender)]
    if edit is not None:
        rows = edit(rows)
    return write_catalogue(folder, rows, photos)


@pytest.mark.fast
def test_fast_a_drawn_catalogue_loads_with_image_paths_fingerprints_and_string_ids(tmp_path):
    from fashion_lens.catalog import CATALOG_COLUMNS, GENDERS
    from fashion_lens.storage import file_sha256

    def untidy(rows):
        rows[0]["Colour"] = "  Red "     # stray spaces, as a spreadsheet leaves them
        rows[1]["Image"] = ""          # no file name: <ProductId>.jpg
        return rows

    folder = _drawn_catalogue(tmp_path / "fashion", edit=untidy)
    catalog = load_catalog(folder)
    assert len(catalog) == 8 and list(catalog.columns[: len(CATALOG_COLUMNS)]) == CATALOG_COLUMNS
    assert catalog["ProductId"].tolist() == ["100", "101", "110", "111", "120", "121", "130", "131"]
    assert catalog["Gender"].tolist() == [gender for gender in GENDERS for _ in range(2)]
    assert catalog.loc[0, "Colour"] == "Red"
    for _, row in catalog.iterrows():
        assert row["image_path"] == str(folder / GENDER_FOLDERS[row["Gender"]] / f"{row['ProductId']}.jpg")
        assert row["image_sha256"] == file_sha256(row["image_path"])
    assert catalog["image_sha256"].is_unique  # every drawn photo differs
    assert (catalog["duplicate_group"] == catalog["ProductId"]).all() and not catalog["is_duplicate"].any()
    assert duplicate_groups(catalog).empty
    assert product_row(catalog, 110.0)["Gender"] == "Girls"


@pytest.mark.fast
def test_fast_byte_identical_photos_form_one_group_named_by_the_smallest_id(tmp_path):
    import io

    from engine_support import product_photo

    photo = product_photo((40, 80, 170), variant=1)
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=90)
    shared = buffer.getvalue()
    other = io.BytesIO()
    photo.save(other, format="JPEG", quality=70)  # the same picture, other bytes: not a copy

    def ids(rows):
        for row, new_id in zip(rows, ["30", "9", "10", "21", "20", "40", "41", "42"]):
            row.update(ProductId=new_id, Image=f"{new_id}.jpg")
        return rows

    photos = {"30": shared, "9": shared, "10": shared, "41": other.getvalue()}  # 30 and 9 Boys, 10 Girls: across genders
    photos["21"] = photos["20"] = product_photo((25, 25, 25), variant=5)
    catalog = load_catalog(_drawn_catalogue(tmp_path / "fashion", photos=photos, edit=ids))
    groups = catalog.set_index("ProductId")["duplicate_group"].to_dict()
    # 9 < 10 < 30 as numbers (as text, "10" would come first)
    assert groups == {"30": "9", "9": "9", "10": "9", "21": "20", "20": "20", "40": "40", "41": "41", "42": "42"}
    copies = catalog.set_index("ProductId")["is_duplicate"]
    assert sorted(copies[copies].index, key=int) == ["10", "21", "30"]  # every copy but the first of its group
    table = duplicate_groups(catalog)
    assert table[["duplicate_group", "ProductId"]].values.tolist() == [
        ["9", "9"], ["9", "10"], ["9", "30"], ["20", "20"], ["20", "21"]]


@pytest.mark.fast
def test_fast_a_row_without_its_photo_is_reported_and_left_out(tmp_path):
    folder = _drawn_catalogue(tmp_path / "fashion", photos={"111": None})
    with pytest.warns(MissingImagesWarning, match=r"1 of 8 products have no image file.*111 \(") as warned:
        catalog = load_catalog(folder)
    assert "make data" in str(warned[0].message)
    assert len(catalog) == 7 and "111" not in set(catalog["ProductId"])
    assert catalog.index.tolist() == list(range(7))


@pytest.mark.fast
@pytest.mark.parametrize("case, message", [
    ("blank id", r"ProductId is blank on 1 row\(s\) \(line 3\)"),
    ("repeated id", r"1 id\(s\) appear more than once: 100"),
    ("image outside the folder", r"1 row\(s\) point outside it \(line 7: '../secret.jpg'\)"),
    ("missing column", r"lacks the column\(s\) Usage"),
    ("header only", r"has a header but no products"),
])
def test_fast_a_catalogue_that_cannot_be_used_says_what_to_fix(tmp_path, case, message):
    folder = _drawn_catalogue(tmp_path / "fashion")
    rows = pd.read_csv(folder / "fashion.csv", dtype=str, keep_default_na=False)
    if case == "blank id":
        rows.loc[1, "ProductId"] = "NaN"  # what a spreadsheet leaves for an empty cell
    elif case == "repeated id":
        rows.loc[1, "ProductId"] = "100"
    elif case == "image outside the folder":
        rows.loc[5, "Image"] = "../secret.jpg"
    elif case == "missing column":
        rows = rows.drop(columns="Usage")
    else:
        rows = rows.head(0)
    rows.to_csv(folder / "fashion.csv", index=False)
    with pytest.raises(CatalogError, match=message):
        load_catalog(folder)


@pytest.mark.fast
def test_fast_sample_catalog_takes_the_same_products_of_each_gender_every_time(tmp_path):
    from fashion_lens.catalog import GENDERS, sample_catalog

    catalog = load_catalog(_drawn_catalogue(tmp_path / "fashion", per_gender=5))
    sample = sample_catalog(catalog, per_gender=2)
    assert sample["Gender"].value_counts().to_dict() == {gender: 2 for gender in GENDERS}
    assert sample.index.tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    order = catalog.reset_index().set_index("ProductId").loc[sample["ProductId"], "index"]
    assert order.is_monotonic_increasing  # catalogue order kept
    assert sample.equals(sample_catalog(catalog, per_gender=2))  # the same on every run
    seeds = {tuple(sample_catalog(catalog, per_gender=2, seed=seed)["ProductId"]) for seed in range(6)}
    assert len(seeds) > 1  # the seed chooses
    assert sample_catalog(catalog, per_gender=None) is catalog
    assert sample_catalog(catalog, per_gender=50).equals(catalog.reset_index(drop=True))  # fewer than asked: all


@pytest.mark.fast
def test_fast_sample_catalog_keeps_the_products_asked_for_within_their_genders_share(tmp_path):
    from fashion_lens.catalog import sample_catalog

    catalog = load_catalog(_drawn_catalogue(tmp_path / "fashion", per_gender=5))
    for seed in range(4):
        sample = sample_catalog(catalog, per_gender=2, seed=seed, keep=[104, " 133 ", "132"])
        assert {"104", "132", "133"} <= set(sample["ProductId"])
        assert sample["Gender"].value_counts().to_dict() == {"Boys": 2, "Girls": 2, "Men": 2, "Women": 2}
    crowded = sample_catalog(catalog, per_gender=1, keep=["130", "131", "132"])  # more kept than the share
    assert sorted(crowded.loc[crowded["Gender"] == "Women", "ProductId"]) == ["130", "131", "132"]
    with pytest.raises(KeyError, match="ProductId '199' is not in the catalogue"):
        sample_catalog(catalog, per_gender=2, keep=["199"])


@pytest.mark.fast
@pytest.mark.parametrize("per_gender", [0, -3, 2.5, True, "2"])
def test_fast_sample_catalog_refuses_a_share_that_is_not_a_whole_number(tmp_path, per_gender):
    from fashion_lens.catalog import sample_catalog

    catalog = load_catalog(_drawn_catalogue(tmp_path / "fashion", per_gender=1))
    with pytest.raises(CatalogError, match="per_gender must be a whole number"):
        sample_catalog(catalog, per_gender=per_gender)
