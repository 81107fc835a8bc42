"""The feature cache: descriptors saved in shards beside a manifest, computed only where missing.

artifacts/features/<recipe name>-<hash>/ holds shards of (ids, photo fingerprints, descriptors,
colour histograms) and manifest.json listing each shard with its checksum. A rerun reads them
back; a new or changed photo is the only one recomputed; a damaged shard is recomputed; an
interrupted run keeps every finished shard.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from .colour import COLOUR_DESCRIPTOR_VERSION, colour_descriptor
from .errors import FeatureCacheWarning, ImageError
from .features import (
    FeatureRecipe,
    default_recipe,
    descriptors_from_maps,
    load_backbone,
    maps_recipe,
    network_input,
    resolve_recipe,
    run_network,
    unflatten_maps,
)
from .images import SEPARATION_VERSION, Separation, load_image, separate_product, to_square
from .settings import get_settings, show_versions
from .storage import atomic_write, file_sha256, folder_lock, writable_dir

CACHE_FORMAT = 2
SHARD_SIZE = 512  # photos per shard: what an interrupted run can lose at most


@dataclasses.dataclass
class Features:
    """Descriptors of a set of products, row for row with `ids`."""

    ids: np.ndarray          # ProductIds (str)
    vectors: np.ndarray      # (N, D) CNN descriptors
    colours: np.ndarray      # (N, C) colour descriptors of the product (background ignored)
    recipe: FeatureRecipe
    cache_dir: Path | None = None
    computed: int = 0        # photos this call ran through the network (the rest came from the cache)
    left_out: dict[str, str] = dataclasses.field(default_factory=dict)  # ProductId -> why its photo could not be read

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def megabytes(self) -> float:
        return self.vectors.nbytes / 1e6



def feature_cache_dir(recipe: FeatureRecipe, artifacts_dir=None) -> Path:
    """artifacts/features/<recipe name>-<hash of the recipe>: a cache per recipe, never shared."""
    recipe = resolve_recipe(recipe)
    key = hashlib.sha256(json.dumps(_cache_identity(recipe), sort_keys=True).encode()).hexdigest()[:12]
    return Path(artifacts_dir or get_settings().artifacts_dir) / "features" / f"{recipe.name}-{key}"


def _cache_identity(recipe: FeatureRecipe) -> dict:
    # the weights by their hash (weights_id), not by where the file lies
    fields = {name: value for name, value in dataclasses.asdict(recipe).items() if name != "weights"}
    return {"format": CACHE_FORMAT, "recipe": fields, "colour": COLOUR_DESCRIPTOR_VERSION,
            "separation": SEPARATION_VERSION}


def extract_features(catalog: pd.DataFrame, recipe: FeatureRecipe | None = None, *, artifacts_dir=None,
                     shard_size: int = SHARD_SIZE, progress: bool = True, on_progress=None,
                     network=run_network) -> Features:
    """Descriptors of every product in `catalog`, computed only where the cache has none.

    Args:
        catalog: the products (load_catalog or sample_catalog).
        recipe: how photos become descriptors (default_recipe() when None).
        artifacts_dir: where the cache lives (the artifacts setting when None).
        shard_size: photos saved together; an interrupted run resumes after the last shard.
        progress: show a progress bar.
        on_progress: called as on_progress(done, total) after each photo (the app's progress bar).
        network: the function (pixels, recipe) -> descriptors; run_network unless a test injects one.

    Returns:
        Features, row for row with the catalogue's products that have a readable photo.
        Unreadable photos are reported in a warning and left out (`left_out` keeps the reasons).

    >>> features = extract_features(catalog, default_recipe())  # doctest: +SKIP
    """
    return extract_recipes(catalog, [recipe or default_recipe()], artifacts_dir=artifacts_dir, shard_size=shard_size,
                           progress=progress, on_progress=on_progress, network=network)[0]


def extract_recipes(catalog: pd.DataFrame, recipes: list[FeatureRecipe], *, artifacts_dir=None,
                    shard_size: int = SHARD_SIZE, progress: bool = True, on_progress=None,
                    network=run_network) -> list[Features]:
    """extract_features for several recipes at once, one Features per recipe, in their order.

    Recipes that feed the network the same input (network_input: they differ only in pooling,
    metric or storage type) share one pass over the photos: the feature map is computed once and
    pooled each way. Each recipe keeps its own cache; a recipe given twice is extracted once.

    >>> gap, grid = extract_recipes(catalog, [default_recipe(pooling="gap"), default_recipe()])  # doctest: +SKIP
    """
    given = [resolve_recipe(recipe.check()) for recipe in recipes]
    recipes = list(dict.fromkeys(given))
    caches = [feature_cache_dir(recipe, artifacts_dir) for recipe in recipes]
    for cache_dir in caches:
        writable_dir(cache_dir)
    todo = [set(uncached_positions(catalog, cache_dir, recipe)) for recipe, cache_dir in zip(recipes, caches)]
    groups: dict[tuple, list[int]] = {}
    for number, recipe in enumerate(recipes):
        groups.setdefault(network_input(recipe), []).append(number)
    failures = {}
    for members in groups.values():
        positions = sorted(set().union(*(todo[number] for number in members)))
        if positions:
            targets = [(recipes[number], caches[number], todo[number]) for number in members]
            failures.update(_compute_into_cache(catalog.iloc[positions], positions, targets, shard_size, progress,
                                                on_progress, network))
            for recipe, cache_dir, _ in targets:
                _drop_damaged_shards(cache_dir, recipe)  # their products were just recomputed: later runs stay silent
    if failures:
        examples = "; ".join(f"{pid}: {reason}" for pid, reason in list(failures.items())[:5])
        warnings.warn(f"{len(failures)} photo(s) could not be read and are left out ({examples}).", stacklevel=3)
    ids = catalog["ProductId"].to_numpy(dtype=str)
    fingerprints = catalog["image_sha256"].to_numpy(dtype=str)
    results = []
    for recipe, cache_dir, wanted in zip(recipes, caches, todo):
        stored = read_feature_cache(cache_dir, recipe)
        known = _rows_by_id(stored)
        keep = [i for i, (pid, fp) in enumerate(zip(ids, fingerprints)) if known.get(pid, (None,))[0] == fp]
        rows = [known[ids[i]][1] for i in keep]
        results.append(Features(ids=ids[keep], vectors=stored["vectors"][rows], colours=stored["colours"][rows],
                                recipe=recipe, cache_dir=cache_dir,
                                computed=sum(ids[i] not in failures for i in wanted), left_out=failures))
    return [results[recipes.index(recipe)] for recipe in given]


def uncached_positions(catalog: pd.DataFrame, cache_dir: Path, recipe: FeatureRecipe) -> list[int]:
    """Positions of the catalogue rows the cache has no descriptor for: new products and changed photos."""
    known = _rows_by_id(read_feature_cache(cache_dir, recipe))
    pairs = zip(catalog["ProductId"].to_numpy(dtype=str), catalog["image_sha256"].to_numpy(dtype=str))
    return [i for i, (pid, fp) in enumerate(pairs) if known.get(pid, (None,))[0] != fp]


def _compute_into_cache(rows: pd.DataFrame, positions: list[int], targets: list, shard_size, progress, on_progress,
                        network) -> dict:
    """Run the photos at `positions` (`rows`) through the network once, and write each target
    (recipe, cache folder, positions it lacks) the descriptors it lacks."""
    from tqdm.auto import tqdm

    recipe = targets[0][0]  # every target sees the same network input
    # one target: the network gives its descriptors; several: the raw maps, pooled each target's way
    shared = maps_recipe(recipe) if len(targets) > 1 else None
    failures, finished = {}, 0
    names = ", ".join(target[0].name for target in targets)
    bar = tqdm(total=len(rows), desc=f"{names} features", unit="img", disable=not progress)
    # Network (and TensorFlow) first: importing TensorFlow while Pillow decodes in the threads below
    # crashed the process (segfault in ImageFile.load) when a fresh process computed its first features.
    load_backbone(recipe.backbone, recipe.weights)
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        for start in range(0, len(rows), shard_size):
            chunk = rows.iloc[start:start + shard_size]
            prepared = pool.map(lambda path: prepare_photo(path, recipe), chunk["image_path"])
            done, outputs, colours, pixels = [], [], [], []
            for position, pid, fp, (result, error) in zip(positions[start:start + shard_size], chunk["ProductId"],
                                                          chunk["image_sha256"], prepared):
                if error:
                    failures[pid] = error
                else:
                    done.append((position, pid, fp))
                    pixels.append(result[0])
                    colours.append(result[1])
                if len(pixels) == recipe.batch_size:
                    outputs.append(network(np.stack(pixels), shared or recipe))
                    pixels = []
                bar.update(1)
                finished += 1
                if on_progress is not None:
                    on_progress(finished, len(rows))
            if pixels:
                outputs.append(network(np.stack(pixels), shared or recipe))
            if not done:
                continue
            outputs, colours = np.concatenate(outputs), np.stack(colours).astype(np.float32)
            for target, cache_dir, wanted in targets:
                keep = [number for number, (position, _, _) in enumerate(done) if position in wanted]
                if keep:
                    vectors = outputs if shared is None else descriptors_from_maps(unflatten_maps(outputs, shared), target)
                    write_feature_shard(cache_dir, target, np.array([done[n][1] for n in keep]),
                                        np.array([done[n][2] for n in keep]), vectors[keep], colours[keep])
    bar.close()
    return failures


def prepare_photo(path: str, recipe: FeatureRecipe):
    """(square pixels, colour histogram) of one photo and None, or None and the reason it cannot be
    used (unreadable, too small)."""
    try:
        square, colour, _ = photo_inputs(load_image(path), recipe)
    except ImageError as error:
        return None, str(error)
    return (square, colour), None


def photo_inputs(image, recipe: FeatureRecipe) -> tuple[np.ndarray, np.ndarray, Separation]:
    """What the engine takes from a loaded photo, the same for catalogue photos and queries: the
    network's square input, the product's colour histogram and how the product was told from its
    background (separated once, used by both)."""
    separation = separate_product(image)
    square = to_square(image, recipe.geometry, recipe.image_size, separation=separation)
    return square, colour_descriptor(image, separation.colour_mask), separation


def write_feature_shard(cache_dir: Path, recipe: FeatureRecipe, ids, fingerprints, vectors, colours) -> None:
    """Save one shard (atomic), then add it to the manifest under the lock: a shard counts only once listed."""
    name = f"shard-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}.npz"
    with atomic_write(cache_dir / name) as handle:
        np.savez(handle, ids=ids, fingerprints=fingerprints, vectors=vectors.astype(recipe.dtype), colours=colours)
    entry = {"file": name, "sha256": file_sha256(cache_dir / name), "count": int(len(ids))}
    with folder_lock(cache_dir):
        manifest = read_manifest(cache_dir, recipe) or _new_manifest(recipe)
        manifest["shards"].append(entry)
        manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        with atomic_write(cache_dir / "manifest.json", "w") as out:
            json.dump(manifest, out, indent=1)


def _drop_damaged_shards(cache_dir: Path, recipe: FeatureRecipe) -> None:
    """Unlist (and delete) shards whose file is missing or no longer matches its checksum."""
    with folder_lock(cache_dir):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FeatureCacheWarning)  # already reported when the cache was read
            manifest = read_manifest(cache_dir, recipe)
        if manifest is None:
            return
        intact = [entry for entry in manifest["shards"]
                  if (cache_dir / entry["file"]).exists() and file_sha256(cache_dir / entry["file"]) == entry["sha256"]]
        if len(intact) == len(manifest["shards"]):
            return
        for entry in manifest["shards"]:
            if entry not in intact:
                (cache_dir / entry["file"]).unlink(missing_ok=True)
        manifest["shards"] = intact
        with atomic_write(cache_dir / "manifest.json", "w") as out:
            json.dump(manifest, out, indent=1)


def _new_manifest(recipe: FeatureRecipe) -> dict:
    return {**_cache_identity(recipe), "versions": show_versions(), "shards": []}


def read_manifest(cache_dir: Path, recipe: FeatureRecipe) -> dict | None:
    """The cache's manifest, or None (with a warning) when it is damaged or written by other settings."""
    path = cache_dir / "manifest.json"
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
        shards = manifest["shards"]
        if not all({"file", "sha256", "count"} <= set(entry) for entry in shards):
            raise ValueError("shard entries lack file, sha256 or count")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
        warnings.warn(f"Feature cache manifest {path} is damaged ({error}); the features are recomputed.",
                      FeatureCacheWarning, stacklevel=3)
        return None
    if {k: manifest.get(k) for k in _cache_identity(recipe)} != _cache_identity(recipe):
        warnings.warn(f"Feature cache {cache_dir} was written by other settings; it is not reused and is rebuilt.",
                      FeatureCacheWarning, stacklevel=3)
        return None
    return manifest


def _load_shard(cache_dir: Path, entry: dict) -> dict | None:
    path = cache_dir / entry["file"]
    try:
        if file_sha256(path) != entry["sha256"]:
            raise ValueError("its checksum does not match the manifest")
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in ("ids", "fingerprints", "vectors", "colours")}
        if not len(arrays["ids"]) == len(arrays["vectors"]) == len(arrays["colours"]) == entry["count"]:
            raise ValueError("its arrays do not have the listed length")
    except (OSError, ValueError, KeyError) as error:
        warnings.warn(f"Feature cache file {path} is damaged or missing ({error}); its products are recomputed.",
                      FeatureCacheWarning, stacklevel=4)
        return None
    return arrays


def read_feature_cache(cache_dir: Path, recipe: FeatureRecipe) -> dict[str, np.ndarray]:
    """Every valid shard of a cache, concatenated: arrays ids, fingerprints, vectors, colours.

    A shard that is damaged, missing or not listed in the manifest is ignored (with a warning
    for the first two); when an id appears in several shards the last one wins."""
    manifest = read_manifest(cache_dir, recipe) or {"shards": []}
    loaded = [arrays for arrays in (_load_shard(cache_dir, entry) for entry in manifest["shards"]) if arrays is not None]
    if not loaded:
        return {"ids": np.array([], dtype=str), "fingerprints": np.array([], dtype=str),
                "vectors": np.zeros((0, 0), dtype=recipe.dtype), "colours": np.zeros((0, 0), dtype=np.float32)}
    return {name: np.concatenate([arrays[name] for arrays in loaded]) for name in loaded[0]}


def _rows_by_id(stored: dict) -> dict[str, tuple[str, int]]:
    return {pid: (fp, row) for row, (pid, fp) in enumerate(zip(stored["ids"], stored["fingerprints"]))}

