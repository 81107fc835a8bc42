"""The feature cache on drawn photos with an untrained MobileNetV2 (weights="random"): no weights
file and no catalogue, only the shapes and the bookkeeping of the cache are real.

Building the random network takes about ten seconds once per process (importing TensorFlow is
most of it), so the photos are few and the first extraction is shared by the module."""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from engine_support import CountingNetwork, catalogue_row, product_photo, write_catalogue

from fashion_lens.catalog import load_catalog
from fashion_lens.colour import colour_descriptor
from fashion_lens.errors import FeatureCacheWarning
from fashion_lens.feature_cache import extract_features, extract_recipes, feature_cache_dir
from fashion_lens.features import FeatureRecipe, embed_images, resolve_recipe
from fashion_lens.images import load_image

RECIPE = FeatureRecipe(backbone="mobilenet_v2", weights="random")
DESCRIPTOR_SIZE = 4 * 1280  # MobileNetV2's 1280 channels, pooled over a 2x2 grid
SHARD_SIZE = 2


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """Four drawn products (one per gender) and their features, in a cache of two shards."""
    root = tmp_path_factory.mktemp("feature-cache")
    rows = [catalogue_row(200 + number, gender=gender, colour=colour)
            for number, (gender, colour) in enumerate([("Boys", "Red"), ("Girls", "Blue"), ("Men", "Black"), ("Women", "Green")])]
    folder = write_catalogue(root / "fashion", rows)
    catalog = load_catalog(folder)
    network = CountingNetwork()
    features = extract_features(catalog, RECIPE, artifacts_dir=root / "artifacts", shard_size=SHARD_SIZE,
                                progress=False, network=network)
    return SimpleNamespace(root=root, catalog=catalog, features=features, network=network)


def _copy(extracted, tmp_path) -> tuple[Path, Path]:
    """A writable copy of the module's catalogue folder and its artifacts (cache included)."""
    shutil.copytree(extracted.root / "fashion", tmp_path / "fashion")
    shutil.copytree(extracted.root / "artifacts", tmp_path / "artifacts")
    return tmp_path / "fashion", tmp_path / "artifacts"


@pytest.mark.fast
def test_descriptors_have_the_recipe_shape_and_type(extracted):
    features, catalog = extracted.features, extracted.catalog
    assert features.ids.tolist() == catalog["ProductId"].tolist()
    assert features.vectors.shape == (4, DESCRIPTOR_SIZE) and features.vectors.dtype == np.float16
    assert np.allclose(np.linalg.norm(features.vectors.astype(np.float32), axis=1), 1.0, atol=1e-2)
    vectors = features.vectors.astype(np.float32)
    assert not np.allclose(vectors[0], vectors[1:], atol=1e-3)  # different photos, different descriptors
    assert features.colours.dtype == np.float32
    expected_colours = np.stack([colour_descriptor(load_image(path)) for path in catalog["image_path"]])
    assert np.array_equal(features.colours, expected_colours)
    assert features.computed == 4 and extracted.network.photos == 4 and max(extracted.network.calls) <= SHARD_SIZE
    assert features.recipe.weights_id == "random"
    assert features.cache_dir == feature_cache_dir(RECIPE, extracted.root / "artifacts")


@pytest.mark.fast
def test_the_cache_holds_listed_shards_and_no_temporary_files(extracted):
    cache = extracted.features.cache_dir
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["recipe"]["backbone"] == "mobilenet_v2" and manifest["recipe"]["weights_id"] == "random"
    assert [entry["count"] for entry in manifest["shards"]] == [SHARD_SIZE, SHARD_SIZE]
    assert sorted(entry["file"] for entry in manifest["shards"]) == sorted(path.name for path in cache.glob("shard-*.npz"))
    assert not [path.name for path in cache.iterdir() if path.name.endswith(".tmp")]


@pytest.mark.fast
def test_a_photo_query_goes_through_the_catalogues_pipeline(extracted):
    again = embed_images([Path(extracted.catalog.at[2, "image_path"]).read_bytes()], resolve_recipe(RECIPE))
    assert np.allclose(again[0].astype(np.float32), extracted.features.vectors[2].astype(np.float32), atol=2e-3)


@pytest.mark.fast
def test_a_rerun_or_a_subset_computes_nothing(extracted):
    network = CountingNetwork()
    again = extract_features(extracted.catalog, RECIPE, artifacts_dir=extracted.root / "artifacts", progress=False,
                             network=network)
    assert network.calls == [] and again.computed == 0
    assert np.array_equal(again.vectors, extracted.features.vectors)
    assert np.array_equal(again.colours, extracted.features.colours)
    subset = extracted.catalog.iloc[[3, 1]]
    part = extract_features(subset, RECIPE, artifacts_dir=extracted.root / "artifacts", progress=False, network=network)
    assert network.calls == [] and part.ids.tolist() == subset["ProductId"].tolist()
    assert np.array_equal(part.vectors, extracted.features.vectors[[3, 1]])


@pytest.mark.fast
def test_only_a_changed_or_added_photo_is_recomputed(extracted, tmp_path):
    folder, artifacts = _copy(extracted, tmp_path)
    changed = extracted.catalog.iloc[2]  # the black Men's product, redrawn in red
    product_photo((215, 35, 45), variant=6).save(Path(folder, "Footwear", "Men", changed["Image"]), quality=90)
    rows = pd.read_csv(folder / "fashion.csv", dtype=str, keep_default_na=False).to_dict("records")
    write_catalogue(folder, rows + [catalogue_row(299, gender="Men", colour="White")],
                    photos={row["ProductId"]: None for row in rows})  # a new product; the others' photos stay
    catalog = load_catalog(folder)
    network = CountingNetwork()
    after = extract_features(catalog, RECIPE, artifacts_dir=artifacts, progress=False, network=network)
    assert network.photos == 2 and after.computed == 2
    assert after.ids.tolist() == ["200", "201", "202", "203", "299"]
    before = extracted.features
    assert np.array_equal(after.vectors[[0, 1, 3]], before.vectors[[0, 1, 3]])
    assert not np.allclose(after.vectors[2].astype(np.float32), before.vectors[2].astype(np.float32), atol=1e-3)
    assert float(after.colours[2] @ before.colours[2]) < 0.5  # black before, red now


@pytest.mark.fast
def test_recipes_that_differ_after_the_network_share_one_pass_and_give_their_own_descriptors(extracted, tmp_path):
    _, artifacts = _copy(extracted, tmp_path)
    after_the_network = [dataclasses.replace(RECIPE, pooling="gap"), dataclasses.replace(RECIPE, metric="euclidean"),
                         dataclasses.replace(RECIPE, pooling="flatten", dtype="float32")]
    other_input = dataclasses.replace(RECIPE, geometry="stretch")
    network = CountingNetwork()
    together = extract_recipes(extracted.catalog, [RECIPE, *after_the_network, other_input], artifacts_dir=artifacts,
                               progress=False, network=network)
    # RECIPE is cached; the three others that see its input share one pass, the stretched photos need their own
    assert network.photos == 2 * len(extracted.catalog) and [f.computed for f in together] == [0, 4, 4, 4, 4]
    assert [f.vectors.shape[1] for f in together] == [DESCRIPTOR_SIZE, 1280, DESCRIPTOR_SIZE, 7 * 7 * 1280, DESCRIPTOR_SIZE]
    for recipe, shared in zip([*after_the_network, other_input], together[1:]):
        alone = extract_features(extracted.catalog, recipe, artifacts_dir=tmp_path / "alone", progress=False)
        assert alone.computed == 4 and shared.vectors.dtype == alone.vectors.dtype, recipe.name
        assert np.allclose(shared.vectors.astype(np.float32), alone.vectors.astype(np.float32), atol=1e-6), recipe.name
        assert np.array_equal(shared.colours, alone.colours), recipe.name
    again = extract_recipes(extracted.catalog, after_the_network, artifacts_dir=artifacts, progress=False, network=network)
    assert network.photos == 2 * len(extracted.catalog) and [f.computed for f in again] == [0, 0, 0]


@pytest.mark.fast
def test_a_truncated_shard_is_detected_and_only_its_products_are_recomputed(extracted, tmp_path):
    _, artifacts = _copy(extracted, tmp_path)
    cache = feature_cache_dir(RECIPE, artifacts)
    first = json.loads((cache / "manifest.json").read_text())["shards"][0]["file"]
    shard = cache / first
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    network = CountingNetwork()
    with pytest.warns(FeatureCacheWarning, match=f"{first} is damaged or missing"):
        again = extract_features(extracted.catalog, RECIPE, artifacts_dir=artifacts, progress=False, network=network)
    assert network.photos == SHARD_SIZE and again.computed == SHARD_SIZE
    assert again.ids.tolist() == extracted.features.ids.tolist()
    assert np.allclose(again.vectors.astype(np.float32), extracted.features.vectors.astype(np.float32), atol=2e-3)


@pytest.mark.fast
def test_once_a_damaged_shard_is_recomputed_later_runs_are_silent(extracted, tmp_path):
    _, artifacts = _copy(extracted, tmp_path)
    cache = feature_cache_dir(RECIPE, artifacts)
    shard = cache / json.loads((cache / "manifest.json").read_text())["shards"][0]["file"]
    shard.write_bytes(shard.read_bytes()[:100])
    blank = CountingNetwork(network=lambda pixels, recipe: np.zeros((len(pixels), DESCRIPTOR_SIZE), np.float16))
    with pytest.warns(FeatureCacheWarning):  # the numbers do not matter here, only the bookkeeping
        extract_features(extracted.catalog, RECIPE, artifacts_dir=artifacts, progress=False, network=blank)
    assert blank.photos == SHARD_SIZE
    network = CountingNetwork()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FeatureCacheWarning)
        again = extract_features(extracted.catalog, RECIPE, artifacts_dir=artifacts, progress=False, network=network)
    assert network.calls == [] and len(again) == 4


@pytest.mark.fast
def test_an_unreadable_photo_is_reported_and_left_out(extracted, tmp_path):
    folder, artifacts = _copy(extracted, tmp_path)
    broken = extracted.catalog.iloc[1]
    Path(folder, "Apparel", "Women", broken["Image"]).write_text("not a photo any more")
    network = CountingNetwork()
    with pytest.warns(UserWarning, match=f"1 photo\\(s\\) could not be read and are left out \\({broken['ProductId']}: "):
        features = extract_features(load_catalog(folder), RECIPE, artifacts_dir=artifacts, progress=False, network=network)
    assert network.calls == []
    assert features.ids.tolist() == ["200", "202", "203"]
    assert np.array_equal(features.vectors, extracted.features.vectors[[0, 2, 3]])


@pytest.mark.fast
def test_a_catalogue_photo_too_small_or_in_heic_is_reported_with_its_reason_and_left_out(extracted, tmp_path):
    folder, artifacts = _copy(extracted, tmp_path)
    tiny, heic = extracted.catalog.iloc[0], extracted.catalog.iloc[3]
    product_photo(size=(24, 32)).save(Path(folder, "Apparel", "Men", tiny["Image"]), quality=90)  # a thumbnail
    Path(folder, "Footwear", "Women", heic["Image"]).write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic"
                                                                 + bytes(512))
    network = CountingNetwork()
    with pytest.warns(UserWarning, match="2 photo\\(s\\) could not be read and are left out") as caught:
        features = extract_features(load_catalog(folder), RECIPE, artifacts_dir=artifacts, progress=False, network=network)
    message = " ".join(str(warning.message) for warning in caught)
    assert f"{tiny['ProductId']}: " in message and "is only 24x32 pixels: too small to show a product" in message
    assert f"{heic['ProductId']}: " in message and "is an HEIC (HEIF) photo" in message
    assert network.calls == []  # nothing silently indexed
    assert features.ids.tolist() == ["201", "202"]
