"""scale_out.py: feature extraction on a local Ray instance (2 workers) gives the single-process
features, in the same cache, sends out only what the cache lacks, and survives a lost worker.

Ray is an optional extra (requirements-scale.txt): without it these tests are skipped, unless
FASHION_LENS_REQUIRE_RAY=1 says the run must have it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings

import numpy as np
import pandas as pd
import pytest

import scale_out
from fashion_lens.errors import FeatureCacheWarning
from fashion_lens.feature_cache import extract_features, feature_cache_dir, read_feature_cache
from fashion_lens.features import default_recipe, resolve_recipe
from fashion_lens.storage import file_sha256


@pytest.fixture(scope="module", autouse=True)
def ray_installed():
    """Ray is imported only when a test here runs (it takes seconds): `pytest -m fast` never pays for it."""
    if os.environ.get("FASHION_LENS_REQUIRE_RAY") == "1":
        import ray  # noqa: F401  (a missing Ray fails the run here)
    else:
        pytest.importorskip("ray", reason="Ray is optional: pip install -r requirements-scale.txt")

WORKERS = 2
# Ray Data's own settings object warns about its deprecated fields whenever it is copied
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")


@pytest.fixture(scope="module")
def local_ray():
    import ray

    started = scale_out.connect_ray(cpus=WORKERS)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def recipe(settings):
    return resolve_recipe(default_recipe(settings))


@pytest.fixture(scope="module")
def rows(catalog):
    """64 real products spread over the whole catalogue (every gender and category)."""
    return catalog.iloc[::45].head(64).reset_index(drop=True)


@pytest.fixture(scope="module")
def single_process(rows, recipe, tmp_path_factory):
    return extract_features(rows, recipe, artifacts_dir=tmp_path_factory.mktemp("single"), progress=False)


@pytest.fixture(scope="module")
def distributed(local_ray, rows, recipe, tmp_path_factory):
    artifacts = tmp_path_factory.mktemp("ray")
    report = scale_out.extract_features_on_ray(rows, recipe, workers=WORKERS, artifacts_dir=artifacts, progress=False)
    return report, artifacts


def manifest_shards(cache_dir):
    return json.loads((cache_dir / "manifest.json").read_text())["shards"]


def read_cache_strictly(cache_dir, recipe):
    """The whole cache, with any damaged, missing or foreign shard turned into a test failure."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", FeatureCacheWarning)
        return read_feature_cache(cache_dir, recipe)


def assert_same_descriptors(stored, expected):
    """Every stored descriptor equals the single-process one of the same product."""
    position = {pid: row for row, pid in enumerate(expected.ids)}
    rows = [position[pid] for pid in stored["ids"]]
    # float16 on disk, largest values ~0.12 where one float16 step is 6e-5: allow a step or two of
    # rounding from other batch compositions and thread counts (on this machine they are identical)
    np.testing.assert_allclose(stored["vectors"].astype(np.float32), expected.vectors[rows].astype(np.float32), atol=1.5e-4)
    np.testing.assert_allclose(stored["colours"], expected.colours[rows], atol=1e-6)


def test_an_unreachable_cluster_address_is_explained_quickly(recipe, rows, tmp_path):
    import ray

    if ray.is_initialized():  # runs first, before the tests below start a local instance
        pytest.skip("Ray is already running in this process")
    with pytest.raises(scale_out.ScaleOutError, match="Cannot reach the Ray cluster at 127.0.0.1:1.*ray start --head"):
        scale_out.extract_features_on_ray(rows.head(4), recipe, address="127.0.0.1:1", artifacts_dir=tmp_path)
    assert not ray.is_initialized()


def test_ray_workers_compute_the_single_process_features_into_the_same_cache(distributed, rows, recipe, single_process):
    report, artifacts = distributed
    assert (report.requested, report.dispatched, report.computed, report.failures) == (len(rows), len(rows), len(rows), {})
    assert report.cache_dir == feature_cache_dir(recipe, artifacts)
    stored = read_cache_strictly(report.cache_dir, recipe)
    assert sorted(stored["ids"]) == sorted(rows["ProductId"])  # every product once, nothing else
    assert dict(zip(stored["ids"], stored["fingerprints"])) == dict(zip(rows["ProductId"], rows["image_sha256"]))
    assert stored["vectors"].dtype == np.float16 and stored["vectors"].shape == single_process.vectors.shape
    assert_same_descriptors(stored, single_process)


def test_a_second_run_sends_nothing_out_and_the_single_process_path_computes_nothing(distributed, rows, recipe):
    report, artifacts = distributed
    shards_before = manifest_shards(report.cache_dir)

    again = scale_out.extract_features_on_ray(rows, recipe, workers=WORKERS, artifacts_dir=artifacts, progress=False)
    features = extract_features(rows, recipe, artifacts_dir=artifacts, progress=False)

    assert (again.dispatched, again.computed) == (0, 0)
    assert "nothing sent out" in str(again)
    assert manifest_shards(report.cache_dir) == shards_before  # no shard added by either call
    assert list(features.ids) == list(rows["ProductId"])


def test_a_lost_worker_is_replaced_and_only_missing_photos_are_sent_out(local_ray, rows, recipe, single_process, tmp_path):
    artifacts, marker = tmp_path / "artifacts", tmp_path / "worker-crashed"
    some = rows
    # a cache that already holds 24 of them, written by the single-process path
    extract_features(some.head(24), recipe, artifacts_dir=artifacts, progress=False)
    # and one product whose photo is not an image
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"these bytes are not a JPEG")
    with_broken = pd.concat([some, pd.DataFrame([{"ProductId": "990001", "image_path": str(broken),
                                                  "image_sha256": file_sha256(broken)}])], ignore_index=True)

    with pytest.warns(UserWarning, match="1 photo.* could not be read.*990001"):
        report = scale_out.extract_features_on_ray(with_broken, recipe, workers=WORKERS, artifacts_dir=artifacts,
                                                   batch_size=8, shard_size=8, progress=False, fault_drill=marker)

    assert marker.exists(), "the fault drill did not make a worker crash"
    assert (report.dispatched, report.computed) == (41, 40)
    assert list(report.failures) == ["990001"] and "not an image" in report.failures["990001"]
    stored = read_cache_strictly(report.cache_dir, recipe)
    assert sorted(stored["ids"]) == sorted(some["ProductId"])  # complete, and no photo stored twice
    assert_same_descriptors(stored, single_process)
    assert sum(entry["count"] for entry in manifest_shards(report.cache_dir)) == len(some)


def test_workers_refuse_weights_other_than_the_drivers(local_ray, rows, recipe, tmp_path):
    # a cache keyed by another weights file than the one the workers hold must not receive their vectors
    other = dataclasses.replace(recipe, weights_id="imagenet:sha256=0000000000000000")
    with pytest.raises(scale_out.ScaleOutError, match="WeightsError.*differ from the driver's.*same weights file"):
        scale_out.extract_features_on_ray(rows.head(8), other, workers=1, artifacts_dir=tmp_path, progress=False)
    assert read_feature_cache(feature_cache_dir(other, tmp_path), other)["ids"].size == 0


def test_bad_arguments_are_refused_with_what_to_do(rows, recipe, tmp_path):
    with pytest.raises(scale_out.ScaleOutError, match="workers must be a whole number of at least 1"):
        scale_out.extract_features_on_ray(rows, recipe, workers=0, artifacts_dir=tmp_path)
    with pytest.raises(scale_out.ScaleOutError, match="lacks the column.*image_sha256.*load_catalog"):
        scale_out.extract_features_on_ray(rows.drop(columns="image_sha256"), recipe, artifacts_dir=tmp_path)
    assert not (tmp_path / "features").exists()
