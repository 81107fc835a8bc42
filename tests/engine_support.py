"""What several engine tests inject or build: a network that counts the photos it sees, a hand-built
index, and drawn product photos and catalogues (for the fast tests, which need no real catalogue)."""

from __future__ import annotations

from fashion_lens.features import run_network


class CountingNetwork:
    """The real network (run_network), counting the photos of each call; it can stop on a chosen
    call, as a killed kernel would. Injected through the `network=` arguments of the engine."""

    def __init__(self, fail_on_call: int | None = None, network=run_network):
        self.calls: list[int] = []
        self.fail_on_call = fail_on_call
        self.network = network

    def __call__(self, pixels, recipe):
        self.calls.append(len(pixels))
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise KeyboardInterrupt("simulated kill")
        return self.network(pixels, recipe)

    @property
    def photos(self) -> int:
        return sum(self.calls)


def hand_built_index(count: int = 60, dimensions: int = 64, seed: int = 0, genders=("Men",), ids=None,
                     vectors=None, colours=None, image_dir=None, **build):
    """A small Index built from random unit vectors (rounded to float16, like the feature cache),
    with a catalogue of made-up labels: for tests that need no photo, weights or catalogue.

    With `image_dir`, each product gets a real small JPEG there (a blob of its Colour label's colour
    on white, see product_photo) as its image_path, and, unless `colours` is given, the colour
    descriptors of those photos (what the widget's thumbnails and a photo query need)."""
    import numpy as np
    import pandas as pd

    from fashion_lens.feature_cache import Features
    from fashion_lens.features import FeatureRecipe
    from fashion_lens.index import build_index

    rng = np.random.default_rng(seed)
    count = len(vectors) if vectors is not None else len(ids) if ids is not None else count
    if vectors is None:
        vectors = random_unit_vectors(rng, count, dimensions)
    ids = [str(1000 + row) for row in range(count)] if ids is None else list(ids)
    if colours is None and image_dir is None:
        colours = random_colour_descriptors(rng, count)
    catalog = pd.DataFrame({
        "ProductId": ids,
        "Gender": [genders[row % len(genders)] for row in range(count)],
        "Category": "Footwear",
        "SubCategory": [("Shoes", "Sandal")[row % 2] for row in range(count)],
        "ProductType": [("Casual Shoes", "Sports Shoes", "Sandals")[row % 3] for row in range(count)],
        "Colour": [("Black", "White", "Blue", "Red")[row % 4] for row in range(count)],
        "Usage": [("Casual", "Sports")[row % 2] for row in range(count)],
        "ProductTitle": [f"Product {pid}" for pid in ids],
        "image_path": [f"/nowhere/{pid}.jpg" for pid in ids],
    })
    catalog["duplicate_group"] = catalog["ProductId"]
    if image_dir is not None:
        catalog["image_path"] = write_product_photos(image_dir, catalog["ProductId"], catalog["Colour"])
        if colours is None:
            from fashion_lens.colour import colour_descriptor
            from fashion_lens.images import load_image

            colours = np.stack([colour_descriptor(load_image(path)) for path in catalog["image_path"]])
    recipe = FeatureRecipe(backbone="mobilenet_v2", weights="imagenet", weights_id="hand-built")
    features = Features(ids=np.array(ids), vectors=vectors.astype(np.float16), colours=colours, recipe=recipe)
    return build_index(catalog, features, attributes=False, **build)


def random_unit_vectors(rng, count: int, dimensions: int):
    import numpy as np

    vectors = rng.standard_normal((count, dimensions)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def random_colour_descriptors(rng, count: int):
    """Made-up colour descriptors of the engine's shape: non-negative unit vectors over its Lab bins."""
    import numpy as np

    from fashion_lens.colour import LAB_BINS

    return np.abs(random_unit_vectors(rng, count, int(np.prod(LAB_BINS))))


def imagenet_weights_downloadable(timeout: float = 3.0) -> bool:
    """Can Keras download ImageNet weights from here? (its host answers on port 443)"""
    import socket

    try:
        socket.create_connection(("storage.googleapis.com", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


# ---- synthetic photos and catalogues: for tests that need no real catalogue ------------------

# what a product labelled with each Colour looks like in the drawn photos
PHOTO_COLOURS = {"Black": (25, 25, 25), "White": (236, 236, 236), "Blue": (40, 80, 170), "Red": (215, 35, 45),
                 "Green": (30, 150, 50)}


def product_photo(colour=(215, 35, 45), size=(120, 160), variant: int = 0):
    """A product shot on white, like the catalogue's (3:4 portrait): a shoe-like blob (an upper
    and a sole) of `colour`, a little larger and lower for each `variant`, so photos differ."""
    from PIL import Image, ImageDraw

    width, height = size
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    grow = variant % 7
    left, right = width // 8 - grow, width - width // 8 + grow
    top, bottom = height // 3 + grow, height * 2 // 3 + grow
    draw.ellipse([left, top, right, bottom], fill=colour)                       # the upper
    draw.rectangle([left, bottom - height // 12, right, bottom], fill=colour)   # the sole
    return image


def write_product_photos(folder, ids, colour_labels) -> list[str]:
    """A JPEG per product, `folder`/<id>.jpg, drawn in the colour of its label; returns the paths."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for variant, (product_id, label) in enumerate(zip(ids, colour_labels)):
        path = folder / f"{product_id}.jpg"
        product_photo(PHOTO_COLOURS.get(label, (128, 128, 128)), variant=variant).save(path, quality=90)
        paths.append(str(path))
    return paths


def with_duplicate_groups(index, groups: dict):
    """`index` rebuilt with some products declared copies of one photo: {ProductId: its group's id}."""
    from fashion_lens.feature_cache import Features
    from fashion_lens.index import build_index

    catalog = index.catalog.copy()
    catalog["duplicate_group"] = [groups.get(pid, pid) for pid in catalog["ProductId"]]
    features = Features(ids=catalog["ProductId"].to_numpy(), vectors=index.vectors, colours=index.colours,
                        recipe=index.recipe)
    return build_index(catalog, features, attributes=False, network=index.network)


def catalogue_row(product_id, gender="Men", colour="Red", product_type="Casual Shoes", usage="Casual",
                  sub_category=None, image=None) -> dict:
    """One row of fashion.csv, every column filled the way the real catalogue does."""
    from fashion_lens.catalog import GENDER_FOLDERS

    category = GENDER_FOLDERS[gender].split("/")[0]
    sub_category = sub_category or ("Shoes" if category == "Footwear" else "Topwear")
    return {"ProductId": str(product_id), "Gender": gender, "Category": category, "SubCategory": sub_category,
            "ProductType": product_type, "Colour": colour, "Usage": usage,
            "ProductTitle": f"Drawn {gender} {colour} {product_type} {product_id}",
            "Image": f"{product_id}.jpg" if image is None else image,
            "ImageURL": f"http://img.example.invalid/{product_id}.jpg"}


def write_catalogue(folder, rows, photos: dict | None = None):
    """A catalogue folder like the real one: fashion.csv with `rows` (catalogue_row) and each
    product's photo under its gender's folder (Footwear/Men/<Image>, ...).

    `photos` maps a ProductId to its photo (a PIL image or the file's bytes; None: no file);
    products not in it get a drawn photo of their Colour, each different. Returns the folder."""
    from pathlib import Path

    import pandas as pd

    from fashion_lens.catalog import CATALOG_COLUMNS, GENDER_FOLDERS

    folder = Path(folder)
    photos = photos or {}
    for variant, row in enumerate(rows):
        photo = photos.get(row["ProductId"], product_photo(PHOTO_COLOURS.get(row["Colour"], (128, 128, 128)),
                                                           variant=variant))
        if photo is None:
            continue
        path = folder / GENDER_FOLDERS[row["Gender"]] / (row["Image"] or f"{row['ProductId']}.jpg")
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(photo, bytes):
            path.write_bytes(photo)
        else:
            photo.save(path, format="JPEG", quality=90)
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=CATALOG_COLUMNS).to_csv(folder / "fashion.csv", index=False)
    return folder


# Search cases every candidate path (exact, FAISS, Milvus) must answer identically.
FILTER_CASES = [
    {},
    {"colour_weight": 0.0},
    {"colour_weight": 0.6, "k": 20},
    {"across_genders": True},
    {"same_product_type": True},
    {"colour": "Black", "colour_weight": 0.5},
    {"usage": "Casual", "min_similarity": 0.5},
    {"include_duplicates": True, "k": 8},
]


def query_case(index, product_id, case):
    """similar_products for one of FILTER_CASES ("same_product_type" filters on the product's own type)."""
    from fashion_lens.search import similar_products

    case = dict(case)
    if case.pop("same_product_type", False):
        case["product_type"] = index.catalog.at[index.positions[product_id], "ProductType"]
    return similar_products(index, product_id, **{"k": 10, **case})


def assert_same_results(expected, other, label):
    """The same products in the same order with the same scores: every path ranks by one rule
    (exact scores, rounded, ties by ProductId), so even equal scores come out in one order."""
    import numpy as np

    assert expected["ProductId"].tolist() == other["ProductId"].tolist(), label
    np.testing.assert_array_equal(other["similarity"].to_numpy(), expected["similarity"].to_numpy(), err_msg=label)


def assert_every_case_agrees(index, other, product_ids):
    """Each product under each of FILTER_CASES gives the same results through `other` as through `index`,
    or the same SearchError (e.g. no Black product of that gender)."""
    import pytest

    from fashion_lens.errors import SearchError

    for product_id in product_ids:
        for case in FILTER_CASES:
            try:
                expected = query_case(index, product_id, case)
            except SearchError:
                with pytest.raises(SearchError):
                    query_case(other, product_id, case)
                continue
            assert_same_results(expected, query_case(other, product_id, case), f"{product_id} {case}")
