"""Fault injection on the engine: interrupted runs, damaged caches, concurrent writers, hostile files.
Each test works on copies of real catalogue files in a temporary folder."""

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from engine_support import CountingNetwork

from fashion_lens.catalog import load_catalog
from fashion_lens.errors import FeatureCacheWarning, SettingsError
from fashion_lens.feature_cache import extract_features, feature_cache_dir
from fashion_lens.features import default_recipe, resolve_recipe
from fashion_lens.storage import file_sha256

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture
def small_catalog(catalog_copy):
    return load_catalog(catalog_copy)


@pytest.fixture
def recipe(settings):
    return resolve_recipe(default_recipe(settings))


def _extract_script(catalog_dir, artifacts, shard_size=4, batch_size=4, seconds_per_batch=0.0):
    """A child process filling a cache; `seconds_per_batch` slows its network so a kill lands part-way."""
    return textwrap.dedent(f"""
        import dataclasses, time
        from fashion_lens.catalog import load_catalog
        from fashion_lens.feature_cache import extract_features
        from fashion_lens.features import default_recipe, run_network
        def slow_network(pixels, recipe):
            time.sleep({seconds_per_batch})
            return run_network(pixels, recipe)
        catalog = load_catalog({str(catalog_dir)!r})
        extract_features(catalog, dataclasses.replace(default_recipe(), batch_size={batch_size}),
                         artifacts_dir={str(artifacts)!r}, shard_size={shard_size}, progress=False, network=slow_network)
    """)


def test_interrupted_extraction_resumes_without_recomputing_finished_batches(small_catalog, recipe, tmp_path):
    recipe = dataclasses.replace(recipe, batch_size=4)
    interrupted = CountingNetwork(fail_on_call=3)
    with pytest.raises(KeyboardInterrupt):
        extract_features(small_catalog, recipe, artifacts_dir=tmp_path, shard_size=8, progress=False, network=interrupted)
    assert sum(interrupted.calls[:2]) == 8  # the first shard (two batches) was saved before the interruption
    resumed = CountingNetwork()
    features = extract_features(small_catalog, recipe, artifacts_dir=tmp_path, shard_size=8, progress=False, network=resumed)
    assert sum(resumed.calls) == 16 and len(features) == 24


def test_killed_process_leaves_a_cache_that_is_valid_and_completes_on_rerun(small_catalog, catalog_copy, tmp_path, recipe):
    artifacts = tmp_path / "artifacts"
    script = _extract_script(catalog_copy, artifacts, shard_size=4, batch_size=2, seconds_per_batch=0.5)
    process = subprocess.Popen([sys.executable, "-c", script], cwd=PROJECT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cache_dir = feature_cache_dir(dataclasses.replace(recipe, batch_size=2), artifacts)
    manifest = cache_dir / "manifest.json"
    deadline = time.monotonic() + 240
    while not (manifest.exists() and json.loads(manifest.read_text())["shards"]) and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # no clean-up of any kind
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the child finished before the kill: the test proved nothing"
    stored = sum(entry["count"] for entry in json.loads(manifest.read_text())["shards"])
    assert 0 < stored < 24, f"the kill should land part-way, with some shards written and not all ({stored} of 24)"
    resumed = CountingNetwork()
    with _no_cache_warnings():
        features = extract_features(small_catalog, dataclasses.replace(recipe, batch_size=2), artifacts_dir=artifacts,
                                    progress=False, network=resumed)
    assert len(features) == 24 and sum(resumed.calls) == 24 - stored  # only what the kill left undone
    fresh = extract_features(small_catalog, recipe, artifacts_dir=tmp_path / "fresh", progress=False)
    order = [list(fresh.ids).index(pid) for pid in features.ids]
    assert np.allclose(features.vectors.astype(np.float32), fresh.vectors[order].astype(np.float32), atol=2e-3)


@contextlib.contextmanager
def _no_cache_warnings():
    """Fails if any FeatureCacheWarning is raised inside the block (a kill must leave no damage)."""
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        yield
    damaged = [str(r.message) for r in records if issubclass(r.category, FeatureCacheWarning)]
    assert not damaged, damaged


def test_two_processes_writing_one_cache_leave_one_valid_cache(small_catalog, catalog_copy, tmp_path, recipe):
    artifacts = tmp_path / "artifacts"
    script = _extract_script(catalog_copy, artifacts, shard_size=4, batch_size=4)
    writers = [subprocess.Popen([sys.executable, "-c", script], cwd=PROJECT, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    for writer in writers:
        _, errors = writer.communicate(timeout=600)
        assert writer.returncode == 0, errors
    cache_dir = feature_cache_dir(dataclasses.replace(recipe, batch_size=4), artifacts)
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    for entry in manifest["shards"]:
        assert file_sha256(cache_dir / entry["file"]) == entry["sha256"]
    with _no_cache_warnings():
        features = extract_features(small_catalog, dataclasses.replace(recipe, batch_size=4), artifacts_dir=artifacts,
                                    progress=False)
    assert len(features) == 24 and sorted(features.ids) == sorted(small_catalog["ProductId"])


def test_damaged_manifest_is_detected_and_rebuilt(small_catalog, recipe, tmp_path):
    features = extract_features(small_catalog, recipe, artifacts_dir=tmp_path, progress=False)
    manifest = features.cache_dir / "manifest.json"
    manifest.write_text(manifest.read_text()[:40])
    network = CountingNetwork()
    with pytest.warns(FeatureCacheWarning, match="manifest .* is damaged"):
        again = extract_features(small_catalog, recipe, artifacts_dir=tmp_path, progress=False, network=network)
    assert sum(network.calls) == 24 and len(again) == 24
    assert json.loads(manifest.read_text())["shards"]


def test_edited_shard_with_same_size_is_never_loaded_as_garbage(small_catalog, recipe, tmp_path):
    features = extract_features(small_catalog, recipe, artifacts_dir=tmp_path, progress=False)
    shard = next(features.cache_dir.glob("shard-*.npz"))
    data = bytearray(shard.read_bytes())
    data[-200] ^= 0xFF
    shard.write_bytes(bytes(data))
    network = CountingNetwork()
    with pytest.warns(FeatureCacheWarning, match="checksum does not match"):
        again = extract_features(small_catalog, recipe, artifacts_dir=tmp_path, progress=False, network=network)
    assert sum(network.calls) == 24
    assert np.allclose(again.vectors.astype(np.float32), features.vectors.astype(np.float32), atol=2e-3)


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(os.environ["FASHION_LENS_PICKLE_PROBE"]),))


def test_cache_files_are_never_unpickled(small_catalog, recipe, tmp_path, monkeypatch):
    features = extract_features(small_catalog, recipe, artifacts_dir=tmp_path, progress=False)
    probe = tmp_path / "unpickled"
    monkeypatch.setenv("FASHION_LENS_PICKLE_PROBE", str(probe))
    hostile = features.cache_dir / "shard-hostile.npz"
    payload = np.empty(1, dtype=object)
    payload[0] = _Payload()
    np.savez(hostile, ids=payload, fingerprints=payload, vectors=payload, colours=payload)
    manifest_path = features.cache_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["shards"].append({"file": hostile.name, "sha256": file_sha256(hostile), "count": 1})
    manifest_path.write_text(json.dumps(manifest))
    with pytest.warns(FeatureCacheWarning, match="damaged"):
        again = extract_features(small_catalog, recipe, artifacts_dir=tmp_path, progress=False)
    assert not probe.exists() and len(again) == 24


def test_unreadable_photo_in_the_catalogue_is_reported_and_the_rest_extracted(catalog_copy, recipe, tmp_path):
    catalog = load_catalog(catalog_copy)
    victim = catalog.iloc[5]
    data = Path(victim["image_path"]).read_bytes()
    Path(victim["image_path"]).write_bytes(data[: len(data) // 3])
    catalog = load_catalog(catalog_copy)
    with pytest.warns(UserWarning, match=f"1 photo\\(s\\) could not be read.*{victim['ProductId']}"):
        features = extract_features(catalog, recipe, artifacts_dir=tmp_path, progress=False)
    assert len(features) == 23 and victim["ProductId"] not in set(features.ids)


def test_unwritable_artifacts_folder_fails_before_any_work(small_catalog, recipe, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SettingsError, match="Cannot write to the artifacts folder"):
        extract_features(small_catalog, recipe, artifacts_dir=blocker / "artifacts", progress=False)


def test_importing_the_project_touches_no_network():
    script = textwrap.dedent("""
        import socket, sys
        def refuse(*args, **kwargs):
            raise SystemExit("network used at import time")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        socket.getaddrinfo = refuse
        import helpers, download_data, fashion_lens.widget
        assert "tensorflow" not in sys.modules, "importing helpers must not load TensorFlow"
        assert "faiss" not in sys.modules, "importing helpers must not load FAISS"
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
