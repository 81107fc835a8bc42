"""The extractor, the descriptors and the feature cache, on real photos and real weights."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

import helpers


@pytest.fixture
def small_catalog(catalog_copy):
    return helpers.load_catalog(catalog_copy)


@pytest.fixture
def recipe(settings):
    return helpers.default_recipe(settings)


@pytest.fixture
def network_calls(monkeypatch):
    """Counts the photos that go through the network."""
    calls = []
    real = helpers.run_network

    def counting(pixels, recipe):
        calls.append(len(pixels))
        return real(pixels, recipe)

    monkeypatch.setattr(helpers, "run_network", counting)
    return calls


def test_features_are_pooled_normalised_and_small(small_catalog, recipe, tmp_path):
    features = helpers.extract_features(small_catalog, recipe, artifacts_dir=tmp_path, progress=False)
    assert list(features.ids) == list(small_catalog["ProductId"])
    assert features.vectors.shape == (24, 4 * 1280) and features.vectors.dtype == np.float16
    assert np.allclose(np.linalg.norm(features.vectors.astype(np.float32), axis=1), 1, atol=1e-2)
    assert features.colours.shape[0] == 24
    # far smaller than the article's flattened 7x7x1280 float32 maps
    assert 7 * 7 * 1280 * 4 / (features.vectors.shape[1] * 4) >= 12


def test_second_run_reads_the_cache_and_computes_nothing(small_catalog, recipe, tmp_path, network_calls):
    first = helpers.extract_features(small_catalog, recipe, artifacts_dir=tmp_path, progress=False)
    assert sum(network_calls) == 24
    second = helpers.extract_features(small_catalog, recipe, artifacts_dir=tmp_path, progress=False)
    assert sum(network_calls) == 24
    assert np.array_equal(first.vectors, second.vectors)


def test_only_a_changed_or_added_photo_is_recomputed(catalog_copy, recipe, tmp_path, network_calls):
    catalog = helpers.load_catalog(catalog_copy)
    before = helpers.extract_features(catalog, recipe, artifacts_dir=tmp_path, progress=False)
    changed = catalog.iloc[3]
    Image.open(changed["image_path"]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(changed["image_path"], quality=90)
    calls_before = sum(network_calls)
    after = helpers.extract_features(helpers.load_catalog(catalog_copy), recipe, artifacts_dir=tmp_path, progress=False)
    assert sum(network_calls) - calls_before == 1
    row = list(after.ids).index(changed["ProductId"])
    assert not np.array_equal(before.vectors[row], after.vectors[row])
    others = [i for i in range(24) if i != row]
    assert np.array_equal(before.vectors[others], after.vectors[others])


def test_a_subset_of_a_cached_catalogue_computes_nothing(small_catalog, recipe, tmp_path, network_calls):
    helpers.extract_features(small_catalog, recipe, artifacts_dir=tmp_path, progress=False)
    calls = sum(network_calls)
    subset = small_catalog[small_catalog["Gender"] == "Girls"]
    features = helpers.extract_features(subset, recipe, artifacts_dir=tmp_path, progress=False)
    assert sum(network_calls) == calls and list(features.ids) == list(subset["ProductId"])


def test_each_recipe_has_its_own_cache(recipe, tmp_path):
    folders = {helpers.feature_cache_dir(recipe, tmp_path),
               helpers.feature_cache_dir(helpers.dataclasses.replace(recipe, pooling="gap"), tmp_path),
               helpers.feature_cache_dir(helpers.dataclasses.replace(recipe, geometry="stretch"), tmp_path),
               helpers.feature_cache_dir(helpers.dataclasses.replace(recipe, preprocessing="rescale"), tmp_path),
               helpers.feature_cache_dir(helpers.reference_recipe(helpers.get_settings()), tmp_path)}
    assert len(folders) == 5


def test_cache_written_by_other_settings_is_never_reused(small_catalog, recipe, tmp_path, network_calls):
    features = helpers.extract_features(small_catalog, recipe, artifacts_dir=tmp_path, progress=False)
    manifest_path = features.cache_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["recipe"]["pooling"] = "gap"  # as if another recipe had written here
    manifest_path.write_text(json.dumps(manifest))
    with pytest.warns(helpers.FeatureCacheWarning, match="other settings"):
        again = helpers.extract_features(small_catalog, recipe, artifacts_dir=tmp_path, progress=False)
    assert sum(network_calls) == 48
    assert np.allclose(again.vectors.astype(np.float32), features.vectors.astype(np.float32), atol=2e-3)


def test_damaged_shard_is_detected_and_recomputed(small_catalog, recipe, tmp_path, network_calls):
    features = helpers.extract_features(small_catalog, recipe, artifacts_dir=tmp_path, progress=False)
    shard = next(features.cache_dir.glob("shard-*.npz"))
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.warns(helpers.FeatureCacheWarning, match="damaged"):
        again = helpers.extract_features(small_catalog, recipe, artifacts_dir=tmp_path, progress=False)
    assert sum(network_calls) == 48 and len(again) == 24


def test_cache_writes_leave_no_temporary_files(small_catalog, recipe, tmp_path):
    features = helpers.extract_features(small_catalog, recipe, artifacts_dir=tmp_path, progress=False, shard_size=10)
    names = sorted(path.name for path in features.cache_dir.iterdir())
    assert names.count("manifest.json") == 1 and len([n for n in names if n.startswith("shard-")]) == 3
    assert not [name for name in names if name.endswith(".tmp")]
    manifest = json.loads((features.cache_dir / "manifest.json").read_text())
    assert manifest["recipe"]["backbone"] == "mobilenet_v2" and manifest["versions"]["keras"]
    assert sum(entry["count"] for entry in manifest["shards"]) == 24


def test_query_photo_goes_through_the_catalogue_pipeline(small_catalog, recipe, tmp_path):
    features = helpers.extract_features(small_catalog, recipe, artifacts_dir=tmp_path, progress=False)
    again = helpers.embed_images(small_catalog["image_path"].head(4), helpers.resolve_recipe(recipe))
    assert np.allclose(again.astype(np.float32), features.vectors[:4].astype(np.float32), atol=2e-3)


def test_resnet50_shapes_and_preprocessing_with_random_weights(small_catalog, tmp_path):
    recipe = helpers.default_recipe(helpers.get_settings(backbone="resnet50"), weights=helpers.RANDOM_WEIGHTS)
    pixels = np.stack([helpers.to_square(helpers.load_image(p)) for p in small_catalog["image_path"].head(2)])
    batch = helpers.preprocess_batch(pixels, recipe)
    # ResNet50's own preprocessing: RGB -> BGR and the ImageNet mean removed, no scaling to [0, 1]
    expected_blue = pixels[..., 2].astype(np.float32) - 103.939
    assert np.allclose(batch[..., 0], expected_blue, atol=1e-3)
    assert batch.min() < -50 and batch.max() > 100
    with pytest.warns(UserWarning, match="untrained"):
        features = helpers.extract_features(small_catalog.head(3), recipe, artifacts_dir=tmp_path, progress=False)
        helpers.build_index(small_catalog.head(3), features)
    assert features.vectors.shape == (3, 4 * 2048)
    gap = helpers.dataclasses.replace(helpers.resolve_recipe(recipe), pooling="gap")
    assert helpers.embed_images(small_catalog["image_path"].head(1), gap).shape == (1, 2048)
    assert helpers.feature_cache_dir(recipe, tmp_path).name.startswith("resnet50-crop-backbone-grid2x2")


def test_mobilenet_preprocessing_maps_pixels_to_minus_one_one(recipe):
    pixels = np.array([[[[0, 128, 255]]]], dtype=np.uint8)
    assert np.allclose(helpers.preprocess_batch(pixels, recipe).ravel(), [-1, 128 / 127.5 - 1, 1], atol=1e-6)


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
    features = helpers.extract_features(rows, helpers.reference_recipe(settings), artifacts_dir=tmp_path, progress=False)
    assert features.vectors.shape == (6, 7 * 7 * 1280) and features.vectors.dtype == np.float32
    assert np.allclose(features.vectors, article, rtol=1e-3, atol=1e-3)

    index = helpers.build_index(rows, features)
    query = rows["ProductId"].iloc[0]
    distances = pairwise_distances(article, article[:1]).ravel()
    article_order = [pid for _, pid in sorted(zip(distances, rows["ProductId"]))][1:]
    ours = helpers.similar_products(index, query, k=5, include_duplicates=True)
    assert list(ours["ProductId"]) == article_order
    assert np.allclose(-ours["similarity"], np.sort(distances)[1:], rtol=1e-3)
