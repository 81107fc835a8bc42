"""The extractor, the descriptors and the feature cache, on real photos and real weights."""

import dataclasses
import json

import numpy as np
import pytest
from engine_support import CountingNetwork
from PIL import Image

from fashion_lens.catalog import load_catalog
from fashion_lens.errors import FeatureCacheWarning, SettingsError
from fashion_lens.feature_cache import extract_features, feature_cache_dir
from fashion_lens.features import default_recipe, embed_images, one_change_path, preprocess_batch, reference_recipe, resolve_recipe
from fashion_lens.images import load_image, to_square
from fashion_lens.index import build_index
from fashion_lens.search import similar_products
from fashion_lens.settings import RANDOM_WEIGHTS, get_settings


@pytest.fixture
def small_catalog(catalog_copy):
    return load_catalog(catalog_copy)


@pytest.fixture
def recipe(settings):
    return default_recipe(settings)


@pytest.fixture
def network_calls():
    """The network, counting the photos that go through it (pass it as network=)."""
    return CountingNetwork()


def test_features_are_pooled_normalised_and_small(small_catalog, recipe, tmp_path):
    features = extract_features(small_catalog, recipe, artifacts_dir=tmp_path, progress=False)
    assert list(features.ids) == list(small_catalog["ProductId"])
    assert features.vectors.shape == (24, 4 * 1280) and features.vectors.dtype == np.float16
    assert np.allclose(np.linalg.norm(features.vectors.astype(np.float32), axis=1), 1, atol=1e-2)
    assert features.colours.shape[0] == 24


def test_second_run_reads_the_cache_and_computes_nothing(small_catalog, recipe, tmp_path, network_calls):
    first = extract_features(small_catalog, recipe, artifacts_dir=tmp_path, progress=False, network=network_calls)
    assert network_calls.photos == 24
    second = extract_features(small_catalog, recipe, artifacts_dir=tmp_path, progress=False, network=network_calls)
    assert network_calls.photos == 24
    assert np.array_equal(first.vectors, second.vectors)


def test_only_a_changed_or_added_photo_is_recomputed(catalog_copy, recipe, tmp_path, network_calls):
    catalog = load_catalog(catalog_copy)
    before = extract_features(catalog, recipe, artifacts_dir=tmp_path, progress=False, network=network_calls)
    changed = catalog.iloc[3]
    Image.open(changed["image_path"]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(changed["image_path"], quality=90)
    calls_before = network_calls.photos
    after = extract_features(load_catalog(catalog_copy), recipe, artifacts_dir=tmp_path, progress=False, network=network_calls)
    assert network_calls.photos - calls_before == 1
    row = list(after.ids).index(changed["ProductId"])
    assert not np.array_equal(before.vectors[row], after.vectors[row])
    others = [i for i in range(24) if i != row]
    assert np.array_equal(before.vectors[others], after.vectors[others])


def test_a_subset_of_a_cached_catalogue_computes_nothing(small_catalog, recipe, tmp_path, network_calls):
    extract_features(small_catalog, recipe, artifacts_dir=tmp_path, progress=False, network=network_calls)
    calls = network_calls.photos
    subset = small_catalog[small_catalog["Gender"] == "Girls"]
    features = extract_features(subset, recipe, artifacts_dir=tmp_path, progress=False, network=network_calls)
    assert network_calls.photos == calls and list(features.ids) == list(subset["ProductId"])


def test_each_recipe_has_its_own_cache(recipe, tmp_path):
    folders = {feature_cache_dir(recipe, tmp_path),
               feature_cache_dir(dataclasses.replace(recipe, pooling="gap"), tmp_path),
               feature_cache_dir(dataclasses.replace(recipe, geometry="stretch"), tmp_path),
               feature_cache_dir(dataclasses.replace(recipe, preprocessing="rescale"), tmp_path),
               feature_cache_dir(reference_recipe(get_settings()), tmp_path)}
    assert len(folders) == 5


def test_cache_written_by_other_settings_is_never_reused(small_catalog, recipe, tmp_path, network_calls):
    features = extract_features(small_catalog, recipe, artifacts_dir=tmp_path, progress=False, network=network_calls)
    manifest_path = features.cache_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["recipe"]["pooling"] = "gap"  # as if another recipe had written here
    manifest_path.write_text(json.dumps(manifest))
    with pytest.warns(FeatureCacheWarning, match="other settings"):
        again = extract_features(small_catalog, recipe, artifacts_dir=tmp_path, progress=False, network=network_calls)
    assert network_calls.photos == 48
    assert np.allclose(again.vectors.astype(np.float32), features.vectors.astype(np.float32), atol=2e-3)


def test_damaged_shard_is_detected_and_recomputed(small_catalog, recipe, tmp_path, network_calls):
    features = extract_features(small_catalog, recipe, artifacts_dir=tmp_path, progress=False, network=network_calls)
    shard = next(features.cache_dir.glob("shard-*.npz"))
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.warns(FeatureCacheWarning, match="damaged"):
        again = extract_features(small_catalog, recipe, artifacts_dir=tmp_path, progress=False, network=network_calls)
    assert network_calls.photos == 48 and len(again) == 24


def test_cache_writes_leave_no_temporary_files(small_catalog, recipe, tmp_path):
    features = extract_features(small_catalog, recipe, artifacts_dir=tmp_path, progress=False, shard_size=10)
    names = sorted(path.name for path in features.cache_dir.iterdir())
    assert names.count("manifest.json") == 1 and len([n for n in names if n.startswith("shard-")]) == 3
    assert not [name for name in names if name.endswith(".tmp")]
    manifest = json.loads((features.cache_dir / "manifest.json").read_text())
    assert manifest["recipe"]["backbone"] == "mobilenet_v2" and manifest["versions"]["keras"]
    assert sum(entry["count"] for entry in manifest["shards"]) == 24


def test_query_photo_goes_through_the_catalogue_pipeline(small_catalog, recipe, tmp_path):
    features = extract_features(small_catalog, recipe, artifacts_dir=tmp_path, progress=False)
    again = embed_images(small_catalog["image_path"].head(4), resolve_recipe(recipe))
    assert np.allclose(again.astype(np.float32), features.vectors[:4].astype(np.float32), atol=2e-3)


def test_resnet50_shapes_and_preprocessing_with_random_weights(small_catalog, tmp_path):
    recipe = default_recipe(get_settings(backbone="resnet50"), weights=RANDOM_WEIGHTS)
    pixels = np.stack([to_square(load_image(p)) for p in small_catalog["image_path"].head(2)])
    batch = preprocess_batch(pixels, recipe)
    # ResNet50's own preprocessing: RGB -> BGR and the ImageNet mean removed, no scaling to [0, 1]
    expected_blue = pixels[..., 2].astype(np.float32) - 103.939
    assert np.allclose(batch[..., 0], expected_blue, atol=1e-3)
    assert batch.min() < -50 and batch.max() > 100
    with pytest.warns(UserWarning, match="untrained"):
        features = extract_features(small_catalog.head(3), recipe, artifacts_dir=tmp_path, progress=False)
        build_index(small_catalog.head(3), features)
    assert features.vectors.shape == (3, 4 * 2048)
    gap = dataclasses.replace(resolve_recipe(recipe), pooling="gap")
    assert embed_images(small_catalog["image_path"].head(1), gap).shape == (1, 2048)
    assert feature_cache_dir(recipe, tmp_path).name.startswith("resnet50-crop-backbone-grid2x2-cosine")


def test_mobilenet_preprocessing_maps_pixels_to_minus_one_one(recipe):
    pixels = np.array([[[[0, 128, 255]]]], dtype=np.uint8)
    assert np.allclose(preprocess_batch(pixels, recipe).ravel(), [-1, 128 / 127.5 - 1, 1], atol=1e-6)


def test_reference_mode_matches_a_direct_reimplementation_of_the_article(small_catalog, settings, tmp_path):
    """The article: load_img(target_size=(224, 224)), img_to_array, rescale 1/255, predict with batch 1,
    flatten, then sklearn pairwise_distances to rank."""
    import keras
    from sklearn.metrics import pairwise_distances

    rows = small_catalog[small_catalog["Gender"] == "Men"]
    model = keras.applications.MobileNetV2(include_top=False, weights="imagenet", input_shape=(224, 224, 3))
    article = np.concatenate([
        model.predict(keras.utils.img_to_array(keras.utils.load_img(path, target_size=(224, 224)))[None] / 255.0, verbose=0)
        for path in rows["image_path"]
    ]).reshape(len(rows), -1)
    features = extract_features(rows, reference_recipe(settings), artifacts_dir=tmp_path, progress=False)
    assert features.vectors.shape == (6, 7 * 7 * 1280) and features.vectors.dtype == np.float32
    assert np.allclose(features.vectors, article, rtol=1e-3, atol=1e-3)
    # the memory the two methods' descriptors of the same photos really take
    project = extract_features(rows, default_recipe(settings), artifacts_dir=tmp_path, progress=False)
    assert features.vectors.nbytes / project.vectors.nbytes >= 24, (features.megabytes, project.megabytes)

    index = build_index(rows, features)
    query = rows["ProductId"].iloc[0]
    distances = pairwise_distances(article, article[:1]).ravel()
    article_order = [pid for _, pid in sorted(zip(distances, rows["ProductId"]))][1:]
    ours = similar_products(index, query, k=5, include_duplicates=True)
    assert list(ours["ProductId"]) == article_order
    assert np.allclose(-ours["similarity"], np.sort(distances)[1:], rtol=1e-3)


@pytest.mark.fast
def test_one_change_path_walks_from_the_reference_to_the_project_one_field_per_step():
    start = default_recipe(get_settings(backbone="mobilenet_v2"), geometry="stretch", preprocessing="rescale",
                           pooling="flatten", metric="euclidean")
    steps = [("metric", "cosine"), ("pooling", "grid2x2"), ("preprocessing", "backbone"), ("geometry", "crop")]
    path = one_change_path(start, steps)
    assert list(path) == ["start", "metric → cosine", "pooling → grid2x2", "preprocessing → backbone", "geometry → crop"]
    recipes = list(path.values())
    for before, after in zip(recipes, recipes[1:]):
        changed = [field.name for field in dataclasses.fields(before) if getattr(before, field.name) != getattr(after, field.name)]
        assert len(changed) == 1
    assert recipes[-1] == default_recipe(get_settings(backbone="mobilenet_v2"))
    with pytest.raises(SettingsError, match="changes nothing"):
        one_change_path(start, [("metric", "euclidean")])
    with pytest.raises(SettingsError, match="Unknown pooling"):
        one_change_path(start, [("pooling", "max")])
