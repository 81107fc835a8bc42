"""Benchmark fashion-lens against the reference article's method, side by side in one run.

    python benchmark.py                # full: the whole catalogue; synthetic catalogues of 10k, 100k, 1M; Milvus Lite at 100k
    python benchmark.py --quick        # a few minutes: 64 products per gender; synthetic 10k and 100k; Milvus Lite at 100k
    python benchmark.py --backbone mobilenet_v2
    python benchmark.py --only milvus  # one section: exact, FAISS and Milvus Lite side by side on synthetic 100k

Both methods run on the same machine, the same photos and the same backbone, each from a cold
feature cache (fresh temporary folders). Prints a table and writes artifacts/bench/results.json
(atomically, after each figure, so an interrupted run keeps what it measured).
Figures vary by about +-30 % between runs on shared machines: compare within one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pandas as pd

from fashion_lens.ann import (
    FAISS_PCA_DIMENSIONS,
    FAISS_PROBES,
    attach_faiss_index,
    build_faiss_index,
    candidate_count,
    exact_similarities,
    faiss_candidates,
    faiss_index_spec,
)
from fashion_lens.catalog import load_catalog
from fashion_lens.errors import WeightsError
from fashion_lens.evaluation import choose_colour_weight, compare_methods, evaluate, evaluate_uploads, heldout_index
from fashion_lens.feature_cache import Features, extract_features
from fashion_lens.features import default_recipe, load_backbone, reference_recipe, resolve_recipe, run_network
from fashion_lens.images import IMAGE_SIZE
from fashion_lens.index import APPROXIMATE_SEARCH_MIN_PRODUCTS, DEFAULT_COLOUR_WEIGHT, Index, build_index, load_index, product_query
from fashion_lens.milvus_search import INSTALL, sync_milvus
from fashion_lens.probes import PROBE_DIMENSIONS, fit_attribute_probes
from fashion_lens.search import check_colour_weight, filter_mask, rank, similar_products
from fashion_lens.settings import BACKBONES, get_settings, show_versions
from fashion_lens.storage import atomic_write
from fashion_lens.tuning import TuningConfig, split_by_group, tune_network
from fashion_lens.widget import recommender_widget
from load_test import CHROMIUM, load_test
from synthetic import synthetic_index, synthetic_vectors

PROJECT_DIR = Path(__file__).resolve().parent
RESULTS_FORMAT = 1
QUERIES = 200
NEIGHBOURS = 10  # recall@10
TARGETS = {"extraction": 2.5, "memory": 12.0, "latency": 1000.0, "scale_recall": 0.95, "scale_ms": 5.0}
IVF_PROBES = (8, 16, 32, 64)
MILVUS_QUERIES = 50  # Milvus Lite answers in Python: a few hundred ms a query at 100k products
SECTIONS = ("side_by_side", "speed", "app_load", "main_job", "tuned", "scale", "milvus")
HNSW_EF = (64, 128, 256)  # efSearch: at least the 50 candidates asked for


# ---------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------

def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def latencies_ms(call, items, warm_up: int = 20) -> dict:
    """Median and p95 of one call per item, after a few untimed calls (BLAS threads start lazily)."""
    for item in items[:warm_up]:
        call(item)
    times = []
    for item in items:
        start = time.perf_counter()
        call(item)
        times.append((time.perf_counter() - start) * 1e3)
    return {"median": float(np.median(times)), "p95": float(np.percentile(times, 95)), "queries": len(times)}


def ratio(slow, fast):
    return float(slow / fast) if slow and fast else None


def available_memory_bytes() -> int:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def peak_memory_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_memory_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def tree_memory_mb(root: int) -> float:
    """Resident memory of a process and all its descendants (the notebook kernels run in their own sessions)."""
    parents, resident = {}, {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:  # the process ended meanwhile
            continue
        pid = int(status.parent.name)
        parents[pid] = int(fields["PPid"])
        resident[pid] = int(fields.get("VmRSS", "0 kB").split()[0]) / 1024
    tree, frontier = {root}, [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier and pid not in tree]
        tree.update(children)
        frontier = children
    return sum(resident.get(pid, 0.0) for pid in tree)


def folder_mb(path: Path) -> float:
    return sum(file.stat().st_size for file in Path(path).rglob("*") if file.is_file()) / 1e6


class Report:
    """The results, rewritten atomically after every figure."""

    def __init__(self, path: Path, meta: dict):
        self.path = path
        self.data = {"format": RESULTS_FORMAT, "meta": meta, "figures": {}}

    def add(self, key: str, figure: dict) -> None:
        self.data["figures"][key] = figure
        self.save()
        print(f"  [{key}] saved", flush=True)

    def save(self) -> None:
        self.data["meta"]["peak_memory_mb"] = round(peak_memory_mb(), 1)
        with atomic_write(self.path, "w") as handle:
            json.dump(self.data, handle, indent=1, default=_plain)


def _plain(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    raise TypeError(f"{type(value)} is not JSON")


# ---------------------------------------------------------------------------
# The figures
# ---------------------------------------------------------------------------

def sample_catalog(catalog: pd.DataFrame, per_gender: int | None, seed: int = 0) -> pd.DataFrame:
    if per_gender is None:
        return catalog
    parts = [rows.sample(min(per_gender, len(rows)), random_state=seed) for _, rows in catalog.groupby("Gender")]
    return pd.concat(parts).sort_index()


def extraction(products: pd.DataFrame, settings, scratch: Path) -> tuple[dict, Features, Features]:
    """Images/s of the article's recipe (batch 1, model.predict, 1/255, flatten) and the project's
    (batch 32, threaded decoding, preprocess_input, 2x2 grid), each into an empty cache."""
    recipes = {"article": reference_recipe(settings), "project": default_recipe(settings)}
    warm = np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for recipe, batch in ((recipes["article"], 1), (recipes["project"], 32)):  # build the network and
        run_network(np.repeat(warm, batch, axis=0), resolve_recipe(recipe))  # its kernels first
    features, seconds = {}, {}
    for name, recipe in recipes.items():
        print(f"  extracting {len(products)} photos the {name}'s way ...", flush=True)
        features[name], seconds[name] = timed(extract_features, products, recipe,
                                              artifacts_dir=scratch / name, progress=False)
    rates = {name: len(products) / seconds[name] for name in recipes}
    figure = {
        "unit": "images/s", "images": len(products),
        "article": rates["article"], "project": rates["project"],
        "ratio": ratio(rates["project"], rates["article"]), "target_ratio": TARGETS["extraction"],
        "article_seconds": seconds["article"], "project_seconds": seconds["project"],
        "article_recipe": recipes["article"].name + " batch 1 (model.predict per image)",
        "project_recipe": recipes["project"].name + " batch 32 (threaded decoding)",
    }
    figure["meets_target"] = figure["ratio"] >= TARGETS["extraction"]
    return figure, features["article"], features["project"]


def memory(article: Features, project_index: Index, project: Features) -> dict:
    count = len(article)
    figure = {
        "unit": "MB", "products": count,
        "article_dimensions": int(article.vectors.shape[1]), "project_dimensions": int(project.vectors.shape[1]),
        "article_float32": article.vectors.astype(np.float32, copy=False).nbytes / 1e6,
        "project_float32_in_memory": project_index.vectors.nbytes / 1e6,
        "project_float16_on_disk": project.vectors.astype(np.float16, copy=False).nbytes / 1e6,
        "resnet50_article_per_product_kb": 7 * 7 * 2048 * 4 / 1e3,
        "target_ratio": TARGETS["memory"],
    }
    figure["ratio_in_memory"] = ratio(figure["article_float32"], figure["project_float32_in_memory"])
    figure["ratio_on_disk"] = ratio(figure["article_float32"], figure["project_float16_on_disk"])
    figure["meets_target"] = figure["ratio_in_memory"] >= TARGETS["memory"]
    return figure


def query_latency(article_index: Index, project_index: Index, seed: int = 0) -> dict:
    """The article's search (pairwise_distances over flattened maps, recomputed per query) against
    the project's, on the same query products. "core": ranking a catalogue product (the project
    reads its row of precomputed within-gender similarities); "photo core": ranking a described
    photo (one matrix-vector product over the gender slice); "full call": similar_products,
    which also builds the result DataFrame."""
    rng = np.random.default_rng(seed)
    ids = list(rng.choice(project_index.catalog["ProductId"], QUERIES, replace=QUERIES > len(project_index)))

    def core(index, filtered, photo=False):
        def call(product_id):
            position = index.positions[product_id]
            rows = index.gender_rows[index.catalog.at[position, "Gender"]]
            exclude = np.flatnonzero(index.groups[rows] == index.groups[position])
            filters = {"SubCategory": None, "ProductType": index.catalog.at[position, "ProductType"] if filtered else None,
                       "Colour": None, "Usage": None}
            mask = filter_mask(index, rows, filters)
            weight = check_colour_weight(index, None)
            query = product_query(index, position)
            if photo:  # the same descriptors, as an uploaded photo: no precomputed row to read
                query = dataclasses.replace(query, position=None)
            rank(index, query, rows, 5, exclude, mask, weight)
        return call

    def full(index, filtered):
        def call(product_id):
            product_type = index.catalog.at[index.positions[product_id], "ProductType"] if filtered else None
            similar_products(index, product_id, k=5, product_type=product_type)
        return call

    figure = {"unit": "ms", "queries": QUERIES, "products": len(project_index), "target_ratio": TARGETS["latency"],
              "filter": "ProductType = the query's own"}
    photo_core = lambda index, filtered: core(index, filtered, photo=True)  # noqa: E731
    for kind, make in (("core", core), ("photo_core", photo_core), ("full_call", full)):
        for filtered in (False, True):
            key = f"{kind}{'_filtered' if filtered else ''}"
            print(f"  timing {key} ...", flush=True)
            article = latencies_ms(make(article_index, filtered), ids)
            project = latencies_ms(make(project_index, filtered), ids)
            figure[key] = {"article_median": article["median"], "article_p95": article["p95"],
                           "project_median": project["median"], "project_p95": project["p95"],
                           "ratio_median": ratio(article["median"], project["median"]),
                           "ratio_p95": ratio(article["p95"], project["p95"])}
    figure["meets_target"] = figure["core"]["ratio_median"] >= TARGETS["latency"]
    return figure


def widget_latency(project_index: Index, seed: int = 0) -> dict:
    """Kernel-side time of the recommender widget's interactions, from the cached features."""
    rng = np.random.default_rng(seed)
    ids = list(rng.choice(project_index.catalog["ProductId"], QUERIES, replace=QUERIES > len(project_index)))
    widget = recommender_widget(project_index, product_id=ids[0])
    figure = {"unit": "ms", "interactions": QUERIES, "products": len(project_index), "target_ms": 100}
    for name, call in (("new product", widget.query_product), ("same query, new settings", lambda _: widget.run_query()),
                       ("back", lambda _: widget.back())):
        figure[name] = latencies_ms(call, ids)
    figure["meets_target"] = all(figure[name]["p95"] < 100 for name in ("new product", "same query, new settings", "back"))
    return figure


def plain_row(row: pd.Series) -> dict:
    """A table row for JSON: scores as floats, the "labels used" text as it is."""
    return {column: value if isinstance(value, str) else float(value) for column, value in row.items()}


def quality(article_index: Index, project_index: Index) -> dict:
    table = compare_methods({"article": article_index, "project": project_index})
    return {"unit": "precision@5 / mAP@5 (within gender, query and its copies excluded)",
            "products": len(project_index), "colour_weight": DEFAULT_COLOUR_WEIGHT,
            **{method: plain_row(row) for method, row in table.iterrows()}}


# ---------------------------------------------------------------------------
# Speed: the main job's steps as they were and as they are, side by side
# ---------------------------------------------------------------------------

EXTRACTION_PATHS = {  # TensorFlow reads TF_ENABLE_ONEDNN_OPTS once, at import: each path runs in its own process
    "before": {"TF_ENABLE_ONEDNN_OPTS": "0", "compiled": False},  # the Keras model called eagerly, default kernels
    "now": {"TF_ENABLE_ONEDNN_OPTS": "1", "compiled": True},      # one compiled graph, oneDNN kernels
}
ADDED_PRODUCTS = 10


def extraction_worker(request: dict) -> dict:
    """One extraction path in this process (see extraction_paths): seconds for the photos, into an empty cache."""
    settings = get_settings(backbone=request["backbone"])
    products = load_catalog(settings.data_dir).set_index("ProductId").loc[request["ids"]].reset_index()
    recipe = resolve_recipe(default_recipe(settings))
    network = functools.partial(run_network, compiled=request["compiled"])
    network(np.zeros((recipe.batch_size, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8), recipe)  # build and warm up first
    features, seconds = timed(extract_features, products, recipe, artifacts_dir=request["artifacts"],
                              progress=False, network=network)
    np.save(request["vectors"], features.vectors.astype(np.float32))
    return {"seconds": seconds, "images": len(features)}


def extraction_paths(products: pd.DataFrame, settings, scratch: Path) -> dict:
    """Images/s of the project's extraction before and now, on the same photos, each path in a fresh
    process; the descriptors must agree to 1e-3."""
    figure = {"unit": "images/s", "images": len(products), "target_ratio": 1.5}
    for name, path in EXTRACTION_PATHS.items():
        print(f"  extracting {len(products)} photos, {name} ...", flush=True)
        request = {"ids": products["ProductId"].tolist(), "compiled": path["compiled"], "backbone": settings.backbone,
                   "artifacts": str(scratch / f"extraction-{name}"), "vectors": str(scratch / f"vectors-{name}.npy")}
        done = subprocess.run([sys.executable, __file__, "--extraction-worker", json.dumps(request)],
                              env={**os.environ, "TF_ENABLE_ONEDNN_OPTS": path["TF_ENABLE_ONEDNN_OPTS"]},
                              capture_output=True, text=True, cwd=PROJECT_DIR)
        if done.returncode != 0:
            return {**figure, "skipped": f"the {name} path failed: {(done.stderr or done.stdout).strip()[-300:]}"}
        result = json.loads(done.stdout.strip().splitlines()[-1])
        figure[name] = result["images"] / result["seconds"]
    difference = np.abs(np.load(scratch / "vectors-before.npy") - np.load(scratch / "vectors-now.npy")).max()
    figure.update(ratio=ratio(figure["now"], figure["before"]), largest_difference=float(difference))
    figure["meets_target"] = figure["ratio"] >= figure["target_ratio"] and difference <= 1e-3
    return figure


def probe_fitting(catalog: pd.DataFrame, settings, scratch: Path) -> dict:
    """Seconds to fit the attribute probes on the whole catalogue, on the whole inputs (before) and on
    their principal components (now), with the quality each gives; then the index rebuild after
    ADDED_PRODUCTS products join a cached catalogue (their photos through the network, the probes
    updated), beside the same rebuild with the probes fitted afresh."""
    features = extract_features(catalog, default_recipe(settings), progress=False)
    uncached = dataclasses.replace(features, cache_dir=None)  # no probe file: every fit is timed
    figure = {"unit": "s", "products": len(features), "target_s": 20, "rebuild_target_s": 10}
    for name, dimensions in (("before", None), ("now", PROBE_DIMENSIONS)):
        print(f"  fitting the probes, {name} ...", flush=True)
        fit = functools.partial(fit_attribute_probes, dimensions=dimensions)
        index, seconds = timed(build_index, catalog, uncached, attributes=True, fit_probes=fit)
        figure[name] = {"seconds": seconds, **{column: float(value) for column, value in evaluate(index).items()
                                                if column.startswith("P@")}}
    figure["network_only"] = {column: float(value) for column, value in evaluate(index, colour_weight=0).items()
                              if column.startswith("P@")}  # the row without anything label-trained
    figure["ratio"] = ratio(figure["before"]["seconds"], figure["now"]["seconds"])
    added = np.random.default_rng(0).choice(len(catalog), ADDED_PRODUCTS, replace=False)
    updated, afresh = (dataclasses.replace(settings, artifacts_dir=scratch / f"rebuild-{name}") for name in ("updated", "afresh"))
    print(f"  caching the catalogue without {ADDED_PRODUCTS} products ...", flush=True)
    load_index(catalog.drop(catalog.index[added]), updated, progress=False)
    shutil.copytree(updated.artifacts_dir, afresh.artifacts_dir)
    for probes in afresh.artifacts_dir.rglob("attributes-*.npz"):
        probes.unlink()  # the same cached photos, no earlier probes: they are fitted afresh
    print(f"  rebuilding the index after {ADDED_PRODUCTS} products are added ...", flush=True)
    _, figure["rebuild_s"] = timed(load_index, catalog, updated, progress=False)
    _, figure["rebuild_afresh_s"] = timed(load_index, catalog, afresh, progress=False)
    figure["meets_target"] = figure["now"]["seconds"] <= figure["target_s"] and figure["rebuild_s"] <= figure["rebuild_target_s"]
    return figure


def main_job(settings, quick: bool, sample: int, scratch: Path) -> dict:
    """Seconds of `run_notebooks.py` into an empty artifacts folder, then a rerun, then a forced rerun."""
    script = PROJECT_DIR / "run_notebooks.py"
    arguments = ["--sample", str(sample)] if quick else []
    figure = {"unit": "s", "command": " ".join(["run_notebooks.py", *arguments])}
    if not script.is_file():
        return {**figure, "skipped": "run_notebooks.py does not exist yet"}
    environment = {**os.environ, "FASHION_LENS_ARTIFACTS": str(scratch / "main-job"),
                   "FASHION_LENS_BACKBONE": settings.backbone, "FASHION_LENS_DATA": str(settings.data_dir)}
    # a rerun executes only the chapters whose inputs changed (none here); a forced rerun executes
    # them all again, reading the features, probes and tuning from the caches
    for run, extra in (("first_run", []), ("rerun", []), ("forced_rerun", ["--force"])):
        print(f"  main job, {run.replace('_', ' ')} ...", flush=True)
        start = time.perf_counter()
        process = subprocess.Popen([sys.executable, str(script), *arguments, *extra], env=environment, cwd=PROJECT_DIR,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        with ThreadPoolExecutor(1) as pool:  # read its output while the memory of its processes is sampled
            output = pool.submit(process.communicate)
            peak = 0.0
            while process.poll() is None:
                peak = max(peak, tree_memory_mb(process.pid))
                time.sleep(0.5)
            stdout, stderr = output.result()
        done = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        figure[run] = time.perf_counter() - start
        figure[f"{run}_peak_mb"] = peak
        # run_notebooks.py prints "  01_explore_the_catalogue.ipynb ... done in 25 s" for each chapter
        figure[f"{run}_chapters"] = {match[0]: int(match[1]) for match in
                                     re.findall(r"(\d\d)_\S+\.ipynb \.\.\. done in (\d+) s", done.stdout)}
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            return {**figure, "skipped": f"run_notebooks.py failed ({done.returncode}): {' | '.join(tail)}"}
    figure["ratio"] = ratio(figure["first_run"], figure["rerun"])
    return figure


# ---------------------------------------------------------------------------
# Tuned: the network taught the catalogue's labels, on photos no training step saw
# ---------------------------------------------------------------------------

def tuned(catalog: pd.DataFrame, settings, quick: bool) -> dict:
    """Held-out uploads (split_by_group's test part, searched as photos within their gender) for the
    reference, today's default and the tuned recipe, in one run. Tuning reads the training part only;
    each colour weight is chosen on the development part. The network-only row stands beside every
    blended one. Also: the tuning's seconds and the query time with each index."""
    split = split_by_group(catalog)
    config = TuningConfig(epochs=2) if quick else TuningConfig()
    print(f"  tuning on {int((split == 'train').sum())} training products ...", flush=True)
    network, seconds = timed(tune_network, catalog[split == "train"], settings, config=config,
                             validation=catalog[split == "dev"], progress=False)
    figure = {"unit": "precision@5, held-out uploads within gender", "split": split.value_counts().to_dict(),
              "config": dataclasses.asdict(config), "tuning_s": network.manifest["seconds"], "call_s": seconds,
              "history": network.manifest["history"], "rows": {}, "query_ms": {}}
    # Once the settings are chosen on dev, the network is tuned again with them on train and dev
    # together (more labelled photos), and searched with the colour weight chosen for the train-only
    # tuning: the test part still reaches no choice and no training step.
    print(f"  tuning again on {int((split != 'test').sum())} training and dev products ...", flush=True)
    final = tune_network(catalog[split != "test"], settings, config=config, progress=False)
    figure["tuning_train_dev_s"] = final.manifest["seconds"]
    recipes = {"reference": reference_recipe(settings), "default": default_recipe(settings), "tuned": network.recipe,
               "tuned on train + dev": final.recipe}
    queries = catalog[split == "test"]
    chosen = {}
    for name, recipe in recipes.items():
        print(f"  held-out uploads, {name} ...", flush=True)
        weights = {"network only": 0.0}
        if name == "tuned on train + dev":
            weights[f"w = {chosen['tuned']:g} (chosen on dev for the train-only tuning)"] = chosen["tuned"]
        elif name != "reference":  # raw distances do not blend
            development = heldout_index(catalog, split, "dev", recipe, artifacts_dir=settings.artifacts_dir)
            chosen[name], _ = choose_colour_weight(development, catalog[split == "dev"])
            weights[f"w = {chosen[name]:g} (chosen on dev)"] = chosen[name]
            if name == "default":
                weights[f"w = {DEFAULT_COLOUR_WEIGHT:g} (today's default)"] = DEFAULT_COLOUR_WEIGHT
        index = heldout_index(catalog, split, "test", recipe, artifacts_dir=settings.artifacts_dir)
        for row, scores in evaluate_uploads(index, queries, colour_weights=weights).iterrows():
            figure["rows"][f"{name}, {row}"] = plain_row(scores)
        ids = index.catalog["ProductId"].sample(200, random_state=0).tolist()
        figure["query_ms"][name] = latencies_ms(lambda product_id, index=index: similar_products(index, product_id, k=NEIGHBOURS), ids)
    return figure


# ---------------------------------------------------------------------------
# Scale: synthetic catalogues, exact search against FAISS indexes
# ---------------------------------------------------------------------------

def exact_top(vectors: np.ndarray, query: np.ndarray, k: int = NEIGHBOURS, chunk: int = 65_536) -> np.ndarray:
    """The exact top k by dot product (float16 storage is converted chunk by chunk)."""
    if vectors.dtype == np.float32:
        scores = vectors @ query
    else:
        scores = np.concatenate([vectors[start:start + chunk].astype(np.float32) @ query
                                 for start in range(0, len(vectors), chunk)])
    best = np.argpartition(-scores, k)[:k]
    return best[np.argsort(-scores[best])]


def running_top(queries: np.ndarray, vectors: np.ndarray, offset: int, best: tuple | None, k: int = NEIGHBOURS):
    """Merge the exact top k of `queries` over one chunk of the catalogue into the running top k."""
    scores = queries @ vectors.T
    rows = np.argpartition(-scores, k, axis=1)[:, :k]
    found = (np.take_along_axis(scores, rows, axis=1), rows + offset)
    if best is not None:
        found = (np.concatenate([best[0], found[0]], axis=1), np.concatenate([best[1], found[1]], axis=1))
    order = np.argsort(-found[0], axis=1)[:, :k]
    return np.take_along_axis(found[0], order, axis=1), np.take_along_axis(found[1], order, axis=1)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a[a >= 0]) & set(b)) / len(b) for a, b in zip(found, truth)]))


def index_bytes(faiss_index) -> int:
    import faiss

    return int(faiss.serialize_index(faiss_index).nbytes)


def measure_index(name, faiss_index, settings_list, vectors, queries, truth) -> list[dict]:
    """recall@10 and ms/query as the engine searches: FAISS proposes 50 candidates, the exact dot
    products on the full descriptors re-rank them."""
    pool = candidate_count(NEIGHBOURS)
    rows = []
    for setting in settings_list:
        found, faiss_only = [], []

        def search(query, setting=setting, found=found, faiss_only=faiss_only):
            candidates = faiss_candidates(faiss_index, query, pool, probes=setting)
            exact = exact_similarities(vectors, candidates, query)
            found.append(candidates[np.argsort(-exact)[:NEIGHBOURS]])
            faiss_only.append(candidates[:NEIGHBOURS])

        timing = latencies_ms(search, list(queries))
        found, faiss_only = found[-len(queries):], faiss_only[-len(queries):]
        rows.append({"index": name, "setting": setting, "recall_at_10": recall_at_k(np.array(found), truth),
                     "recall_at_10_before_reranking": recall_at_k(np.array(faiss_only), truth),
                     "ms_per_query_median": timing["median"], "ms_per_query_p95": timing["p95"]})
        print(f"    {name} {setting}: recall@10 {rows[-1]['recall_at_10']:.3f}, {timing['median']:.2f} ms/query", flush=True)
    return rows


def scale(real_index: Index, sizes: list[int], seed: int = 1) -> Iterator[dict]:
    """Synthetic catalogues grown from the real descriptors: yields the figure after each size."""
    figure = {"unit": "ms/query, MB, s", "dimensions": int(real_index.vectors.shape[1]),
              "generator": "synthetic_vectors: real descriptors moved within their 8-neighbour span "
                           "(spread 1.0) plus noise 0.1, L2-normalised",
              "queries": QUERIES, "rerank_pool": candidate_count(NEIGHBOURS),
              "threshold_products": APPROXIMATE_SEARCH_MIN_PRODUCTS, "product_index": faiss_index_spec(10**6),
              "product_probes": FAISS_PROBES, "target_recall": TARGETS["scale_recall"],
              "target_ms": TARGETS["scale_ms"], "sizes": {}}
    real = real_index.vectors
    real_similarities = real @ real.T
    real_similarities[real_index.groups[:, None] == real_index.groups[None, :]] = -np.inf
    real_top = -np.sort(-real_similarities, axis=1)[:, :NEIGHBOURS]
    figure["real_neighbour_similarity_median"] = {"1st": float(np.median(real_top[:, 0])),
                                                  "10th": float(np.median(real_top[:, -1]))}
    del real_similarities
    queries = np.concatenate([part[1] for part in synthetic_vectors(real, QUERIES, seed=seed + 1000)])
    for size in sizes:
        print(f"  synthetic catalogue of {size:,} products ...", flush=True)
        need = size * real.shape[1] * 2 * 1.4 + 3e9
        if size > 100_000 and available_memory_bytes() < need:
            figure["sizes"][str(size)] = {"skipped": f"needs about {need / 2**30:.0f} GiB free, "
                                                      f"{available_memory_bytes() / 2**30:.0f} GiB available"}
        else:
            figure["sizes"][str(size)] = scale_one(real_index, size, queries, seed)
            _extrapolate_exact(figure["sizes"])
        yield figure


def _extrapolate_exact(sizes: dict) -> None:
    """float16 storage slows the exact search (conversion per query): also give the float32 time
    a machine with room for it would see, from the largest float32 size measured (linear in N)."""
    measured = [entry for entry in sizes.values() if entry.get("storage") == "float32"]
    if not measured:
        return
    base = max(measured, key=lambda entry: entry["products"])
    for entry in sizes.values():
        if entry.get("storage") == "float16":
            entry["exact"]["float32_extrapolated_ms"] = \
                base["exact"]["ms_per_query_median"] * entry["products"] / base["products"]


def scale_one(real_index: Index, size: int, queries: np.ndarray, seed: int) -> dict:
    """Up to 100k: a synthetic Index (float32, as the engine holds it), also searched through
    similar_products; above: float16 vectors generated in chunks (float32 would need 20 GB at 1M)."""
    entry = {"products": size}
    synthetic = None
    start = time.perf_counter()
    if size <= 100_000:
        synthetic = synthetic_index(real_index, size, seed=seed)
        vectors = synthetic.vectors
        truth = None
        for offset in range(0, size, 65_536):
            truth = running_top(queries, vectors[offset:offset + 65_536], offset, truth)
    else:
        vectors = np.empty((size, real_index.vectors.shape[1]), dtype=np.float16)
        truth, offset = None, 0
        for _, part in synthetic_vectors(real_index.vectors, size, seed=seed, chunk=32_768):
            vectors[offset:offset + len(part)] = part
            truth = running_top(queries, part, offset, truth)
            offset += len(part)
    entry["generate_and_ground_truth_s"] = time.perf_counter() - start
    entry["storage"] = str(vectors.dtype)
    entry["vectors_mb"] = vectors.nbytes / 1e6
    entry["neighbour_similarity_median"] = {"1st": float(np.median(truth[0][:, 0])),
                                            "10th": float(np.median(truth[0][:, -1]))}
    truth = truth[1]

    exact_queries = list(queries[: QUERIES if size <= 10_000 else (50 if size <= 100_000 else 5)])
    timing = latencies_ms(functools.partial(exact_top, vectors), exact_queries, warm_up=2)
    entry["exact"] = {"ms_per_query_median": timing["median"], "ms_per_query_p95": timing["p95"],
                      "queries": timing["queries"], "recall_at_10": 1.0,
                      "note": "numpy matrix-vector product" if vectors.dtype == np.float32
                      else "float16 converted in 65k-row chunks per query"}

    entry["indexes"] = []
    ivf_spec = faiss_index_spec(size)
    hnsw_spec = f"PCA{FAISS_PCA_DIMENSIONS},HNSW32"
    for spec, settings_list in ((ivf_spec, IVF_PROBES), (hnsw_spec, HNSW_EF)):
        print(f"    building {spec} ...", flush=True)
        faiss_index, build_seconds = timed(build_faiss_index, vectors, spec)
        rows = measure_index(spec, faiss_index, settings_list, vectors, queries, truth)
        memory_mb = index_bytes(faiss_index) / 1e6
        for row in rows:
            row.update(build_s=build_seconds, index_mb=memory_mb)
        entry["indexes"] += rows
        if synthetic is not None and spec == ivf_spec:
            synthetic.faiss_index = faiss_index  # the engine's own index at this size: reuse it
            entry["engine"] = engine_search(synthetic)
        del faiss_index
    chosen = [row for row in entry["indexes"] if row["index"] == ivf_spec and row["setting"] == FAISS_PROBES]
    entry["chosen"] = chosen[0] if chosen else None
    entry["speedup_chosen_vs_exact"] = ratio(entry["exact"]["ms_per_query_median"],
                                             chosen[0]["ms_per_query_median"]) if chosen else None
    del vectors, synthetic
    return entry


def search_paths_side_by_side(paths: dict, ids: list, filtered: bool, warm_up: int = 20) -> tuple[dict, dict]:
    """similar_products (k=10, optionally filtered on the product's own ProductType) through each of
    `paths` (name -> Index) for the same products: each path's answers and its latencies."""
    answers, timings = {}, {}
    for name, index in paths.items():
        def call(product_id, index=index):
            product_type = index.catalog.at[index.positions[product_id], "ProductType"] if filtered else None
            return similar_products(index, product_id, k=NEIGHBOURS, product_type=product_type)

        answers[name] = [call(product_id)["ProductId"].tolist() for product_id in ids]
        timings[name] = latencies_ms(call, ids, warm_up=warm_up)
    return answers, timings


def recall(answers: list, exact: list) -> float:
    """Mean share of the exact answers that a path also returned."""
    return float(np.mean([len(set(a) & set(e)) / max(1, len(e)) for a, e in zip(answers, exact)]))


def engine_search(synthetic: Index, seed: int = 0) -> dict:
    """similar_products on a synthetic catalogue (full call, k=10): the exact product against the
    FAISS path (same API, gender slice, filters, colour blend); recall@10 of the FAISS path's answers."""
    rng = np.random.default_rng(seed)
    ids = list(rng.choice(synthetic.catalog["ProductId"], 100, replace=False))
    # the same products two ways: an exact copy (never approximate) beside the FAISS path
    paths = {"exact": dataclasses.replace(synthetic, faiss_index=None, approximate_from=10**12), "faiss": synthetic}
    result = {"queries": len(ids)}
    for filtered in (False, True):
        answers, timings = search_paths_side_by_side(paths, ids, filtered)
        for path, timing in timings.items():
            result[f"{path}{'_filtered' if filtered else ''}_ms"] = timing
        result[f"recall_at_10{'_filtered' if filtered else ''}"] = recall(answers["exact"], answers["faiss"])
    return result


def milvus_side_by_side(real_index: Index, size: int, scratch: Path, seed: int = 1) -> dict:
    """One synthetic catalogue searched three ways in one run, each through similar_products (k=10,
    gender slice, default colour weight, with and without a ProductType filter): exact (every
    descriptor read), FAISS (PCA256 + IVF in this process) and Milvus Lite (PCA256 in a local
    Milvus file, IVF_FLAT above 20,000 products), both with exact re-ranking. recall@10 against
    the exact answers, ms per call, build or sync time, memory."""
    try:
        import milvus_lite  # noqa: F401
        import pymilvus  # noqa: F401
    except ImportError:
        return {"skipped": f"pymilvus and milvus-lite are not installed: {INSTALL}"}
    print(f"  Milvus Lite, FAISS and exact on a synthetic catalogue of {size:,} products ...", flush=True)
    synthetic, generate_seconds = timed(synthetic_index, real_index, size, seed=seed)
    ids = list(np.random.default_rng(seed).choice(synthetic.catalog["ProductId"], MILVUS_QUERIES, replace=False))
    figure = {"products": size, "queries": len(ids), "k": NEIGHBOURS, "generate_s": generate_seconds,
              "descriptors_mb": synthetic.vectors.nbytes / 1e6}

    paths = {"exact": dataclasses.replace(synthetic, faiss_index=None, approximate_from=10**12)}
    before = current_memory_mb()
    paths["faiss"], build_seconds = timed(attach_faiss_index, dataclasses.replace(synthetic, faiss_index=None))
    figure["faiss"] = {"build_s": build_seconds, "index_mb": index_bytes(paths["faiss"].faiss_index) / 1e6,
                       "process_growth_mb": current_memory_mb() - before, "index": faiss_index_spec(size)}

    paths["milvus_lite"] = dataclasses.replace(synthetic, faiss_index=None, approximate_from=10**12)
    before = current_memory_mb()
    report = sync_milvus(paths["milvus_lite"], str(scratch / "milvus" / "synthetic.db"), state_dir=scratch / "milvus")
    backend = paths["milvus_lite"].milvus
    figure["milvus_lite"] = {"sync_s": report.seconds, "added": report.added, "index": backend.describe(),
                             "process_growth_mb": current_memory_mb() - before,
                             "disk_mb": folder_mb(scratch / "milvus" / "synthetic.db")}
    print(f"    {report}", flush=True)
    again = sync_milvus(paths["milvus_lite"], state_dir=scratch / "milvus")
    figure["milvus_lite"]["second_sync_s"] = again.seconds
    figure["milvus_lite"]["second_sync_sent"] = again.added + again.changed + again.removed

    for filtered in (False, True):
        answers, timings = search_paths_side_by_side(paths, ids, filtered, warm_up=5)
        for name, timing in timings.items():
            key = "ms_filtered" if filtered else "ms"
            figure.setdefault(name, {})[key] = {"median": timing["median"], "p95": timing["p95"]}
            if name != "exact":
                figure[name]["recall_at_10" + ("_filtered" if filtered else "")] = recall(answers[name], answers["exact"])
            print(f"    {name}{' filtered' if filtered else ''}: {timing['median']:.1f} ms/call", flush=True)
    backend.close()
    return figure


# ---------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------

def print_table(data: dict) -> None:
    figures = data["figures"]
    lines = [("figure", "article", "project", "ratio", "target")]

    def add(name, article, project, value, target=""):
        lines.append((name, article, project, value, target))

    if "extraction" in figures:
        f = figures["extraction"]
        add(f"extraction, images/s ({f['images']} photos)", f"{f['article']:.1f}", f"{f['project']:.1f}",
            f"{f['ratio']:.1f}x", f">= {f['target_ratio']}x")
    if "memory" in figures:
        f = figures["memory"]
        add(f"features, MB ({f['products']} products, float32 in memory)", f"{f['article_float32']:.0f}",
            f"{f['project_float32_in_memory']:.1f}", f"{f['ratio_in_memory']:.1f}x", f">= {f['target_ratio']}x")
        add("features, MB (float16 on disk)", "", f"{f['project_float16_on_disk']:.1f}", f"{f['ratio_on_disk']:.1f}x")
    if "query_latency" in figures:
        f = figures["query_latency"]
        for key, label in (("core", "ranking"), ("core_filtered", "ranking, filtered"),
                           ("photo_core", "ranking a photo"), ("photo_core_filtered", "ranking a photo, filtered"),
                           ("full_call", "similar_products call"), ("full_call_filtered", "call, filtered")):
            row = f[key]
            add(f"query {label}, ms median / p95", f"{row['article_median']:.2f} / {row['article_p95']:.2f}",
                f"{row['project_median']:.3f} / {row['project_p95']:.3f}", f"{row['ratio_median']:.0f}x",
                f">= {f['target_ratio']:.0f}x" if key == "core" else "")
    if "widget_latency" in figures:
        f = figures["widget_latency"]
        for name in ("new product", "same query, new settings", "back"):
            add(f"widget: {name}, ms median / p95", "", f"{f[name]['median']:.1f} / {f[name]['p95']:.1f}", "",
                f"< {f['target_ms']} ms")
    if "quality" in figures:
        f = figures["quality"]
        for column in f["project"]:
            add(f"quality {column} ({f['products']} products)", f"{f['article'][column]:.3f}", f"{f['project'][column]:.3f}",
                f"{f['project'][column] - f['article'][column]:+.3f}")
    if "extraction_paths" in figures:
        f = figures["extraction_paths"]
        if "skipped" in f:
            add("extraction paths", "", f"skipped: {f['skipped']}"[:70], "")
        else:
            add(f"extraction, images/s: before / now ({f['images']} photos)", "", f"{f['before']:.1f} / {f['now']:.1f}",
                f"{f['ratio']:.1f}x", f">= {f['target_ratio']}x, vectors within {f['largest_difference']:.0e}")
    if "probes" in figures:
        f = figures["probes"]
        add(f"probes, s: before / now ({f['products']} products)", "", f"{f['before']['seconds']:.1f} / {f['now']['seconds']:.1f}",
            f"{f['ratio']:.1f}x", f"<= {f['target_s']} s")
        for column in f["network_only"]:
            add(f"  {column}: before / now", "", f"{f['before'][column]:.3f} / {f['now'][column]:.3f}", "",
                f"network only {f['network_only'][column]:.3f}")
        add(f"index rebuild after adding {ADDED_PRODUCTS} products, s: probes fitted afresh / updated", "",
            f"{f['rebuild_afresh_s']:.1f} / {f['rebuild_s']:.1f}", f"{ratio(f['rebuild_afresh_s'], f['rebuild_s']):.1f}x",
            f"<= {f['rebuild_target_s']} s")
    for key in ("app_load", "app_load_chromium"):
        if key not in figures:
            continue
        f = figures[key]
        if "skipped" in f:
            add("app, headless Chromium pages", "", f"skipped: {f['skipped']}"[:70], "")
            continue
        client = "Chromium pages" if f.get("client", "chromium") == "chromium" else "protocol clients"
        add(f"app, {f['users']} users ({client}) for {f['seconds']:.0f} s: answers, errors", "", f"{f['answers']}, {f['errors']}", "",
            f"think time ~{f['think_s']:g} s")
        add("  answer ms: median / p95", "", f"{f['median_ms']:.0f} / {f['p95_ms']:.0f}", "", f"p95 <= {f['target_p95_ms']}")
        add("  server MB: start / peak / end", "", f"{f['server_mb_start']:.0f} / {f['server_mb_peak']:.0f} / "
            f"{f['server_mb_end']:.0f}", "")
        if "machine_cpu_share" in f:
            add("  CPU share: server / Python client / whole machine", "", f"{f['server_cpu_share']:.0%} / {f['client_cpu_share']:.0%} / "
                f"{f['machine_cpu_share']:.0%}", "", f"server {f['server_cpu_ms_per_answer']:.0f} ms CPU per answer")
    if "main_job" in figures:
        f = figures["main_job"]
        if "skipped" in f:
            add(f"main job ({f['command']})", "", f"skipped: {f['skipped']}"[:70], "")
        else:
            add(f"main job, s: first run / rerun / forced rerun ({f['command']})", "",
                f"{f['first_run']:.0f} / {f['rerun']:.0f} / {f['forced_rerun']:.0f}",
                f"{f['ratio']:.1f}x", "first <= 480 s, rerun <= 60 s")
            add("main job, peak memory MB: first run / rerun / forced rerun", "",
                f"{f['first_run_peak_mb']:.0f} / {f['rerun_peak_mb']:.0f} / {f['forced_rerun_peak_mb']:.0f}", "", "<= 4000")
            elapsed = 0
            for chapter, seconds in f.get("first_run_chapters", {}).items():
                elapsed += seconds
                add(f"  chapter {chapter}, s: first run / forced rerun (first run up to here)", "",
                    f"{seconds} / {f['forced_rerun_chapters'].get(chapter, '?')} ({elapsed})", "")
    if "tuned" in figures:
        f = figures["tuned"]
        columns = ["P@5 SubCategory", "P@5 ProductType", "P@5 Colour", "P@5 ProductType and Colour"]
        add(f"held-out uploads ({f['split'].get('test', 0)} test photos): {' / '.join(c[4:] for c in columns)}", "", "", "")
        for name, row in f["rows"].items():
            add(f"  {name}", "", " / ".join(f"{row[c]:.3f}" for c in columns), "")
        add("tuning, s: on the training part / again on train + dev", "",
            f"{f['tuning_s']:.0f} / {f.get('tuning_train_dev_s', float('nan')):.0f}", "", "<= 900")
        add("query, ms median: default / tuned", "", f"{f['query_ms']['default']['median']:.2f} / {f['query_ms']['tuned']['median']:.2f}", "")
    if "scale" in figures:
        f = figures["scale"]
        for size, entry in f["sizes"].items():
            if "skipped" in entry:
                add(f"scale {int(size):,}", "", f"skipped: {entry['skipped']}", "")
                continue
            extrapolated = entry["exact"].get("float32_extrapolated_ms")
            add(f"scale {int(size):,}: exact, ms/query ({entry['storage']})", "", f"{entry['exact']['ms_per_query_median']:.1f}", "",
                f"float32 would be ~{extrapolated:.0f} (extrapolated)" if extrapolated else "")
            best = {}
            for row in entry["indexes"]:
                add(f"  {row['index']} {row['setting']}: recall@10, ms/query",
                    "", f"{row['recall_at_10']:.3f}, {row['ms_per_query_median']:.2f}",
                    f"{ratio(entry['exact']['ms_per_query_median'], row['ms_per_query_median']):.0f}x",
                    f"build {row['build_s']:.0f} s, {row['index_mb']:.0f} MB")
                best.setdefault(row["index"], row)
            if "engine" in entry:
                e = entry["engine"]
                add("  similar_products exact vs FAISS, ms", f"{e['exact_ms']['median']:.1f}",
                    f"{e['faiss_ms']['median']:.1f}", f"{ratio(e['exact_ms']['median'], e['faiss_ms']['median']):.0f}x",
                    f"recall@10 {e['recall_at_10']:.3f} / filtered {e['recall_at_10_filtered']:.3f}")
    if "milvus" in figures:
        f = figures["milvus"]
        if "skipped" in f:
            add("Milvus Lite", "", f"skipped: {f['skipped']}", "")
        else:
            exact = f["exact"]["ms"]["median"]
            add(f"search {f['products']:,}: exact similar_products, ms", "", f"{exact:.1f}",
                "", f"filtered {f['exact']['ms_filtered']['median']:.1f}")
            for name, label, built in (("faiss", "FAISS", "build_s"), ("milvus_lite", "Milvus Lite", "sync_s")):
                row = f[name]
                memory = f"index {row['index_mb']:.0f} MB" if "index_mb" in row else f"on disk {row['disk_mb']:.0f} MB"
                add(f"  {label}: recall@10 / filtered, ms", f"{row['recall_at_10']:.3f} / {row['recall_at_10_filtered']:.3f}",
                    f"{row['ms']['median']:.1f} / {row['ms_filtered']['median']:.1f}", f"{ratio(exact, row['ms']['median']):.1f}x",
                    f"{built[:-2]} {row[built]:.0f} s, {memory}, process +{row['process_growth_mb']:.0f} MB")
    widths = [max(len(str(line[i])) for line in lines) for i in range(5)]
    for number, line in enumerate(lines):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip())
        if number == 0:
            print("  ".join("-" * width for width in widths))


# ---------------------------------------------------------------------------

def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few minutes: a sample of products, 10k and 100k synthetic")
    parser.add_argument("--backbone", choices=BACKBONES, default=None,
                        help="the backbone both methods use (default: the project's setting)")
    parser.add_argument("--sample", type=int, default=None, metavar="N",
                        help="products per gender for the side-by-side figures (quick default 64; full: all)")
    parser.add_argument("--sizes", default=None, metavar="10000,100000",
                        help="synthetic catalogue sizes (quick default 10000,100000; full adds 1000000)")
    parser.add_argument("--skip", default="", metavar="side_by_side,main_job,scale,milvus",
                        help="figures to leave out (side_by_side: extraction, memory, latency and quality)")
    parser.add_argument("--only", default="", metavar="milvus",
                        help=f"run only these sections ({', '.join(SECTIONS)})")
    parser.add_argument("--milvus-size", type=int, default=100_000, metavar="N",
                        help="synthetic products for the Milvus Lite section (default 100000)")
    parser.add_argument("--output", type=Path, default=None, help="results file (default artifacts/bench/results.json)")
    parser.add_argument("--extraction-worker", default=None, help=argparse.SUPPRESS)  # one path of extraction_paths
    return parser.parse_args(argv)


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    if arguments.extraction_worker:
        print(json.dumps(extraction_worker(json.loads(arguments.extraction_worker))))
        return 0
    settings = get_settings(backbone=arguments.backbone)
    per_gender = arguments.sample if arguments.sample else (64 if arguments.quick else None)
    sizes = [int(size) for size in arguments.sizes.split(",")] if arguments.sizes \
        else ([10_000, 100_000] if arguments.quick else [10_000, 100_000, 1_000_000])
    skip = {name.strip() for name in arguments.skip.split(",") if name.strip()}
    only = {name.strip() for name in arguments.only.split(",") if name.strip()}
    if only - set(SECTIONS) or skip - set(SECTIONS):
        print(f"benchmark.py: sections are {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    skip |= set(SECTIONS) - only if only else set()
    output = arguments.output or settings.artifacts_dir / "bench" / "results.json"
    try:
        load_backbone(settings.backbone, settings.weights)
    except WeightsError as error:
        print(f"benchmark.py: {error}", file=sys.stderr)
        return 2
    catalog = load_catalog(settings.data_dir)
    products = sample_catalog(catalog, per_gender)
    meta = {"mode": "quick" if arguments.quick else "full", "backbone": settings.backbone,
            "catalog_products": len(catalog), "products": len(products), "cpus": os.cpu_count(),
            "machine": platform.platform(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "versions": show_versions()}
    report = Report(output, meta)
    print(f"fashion-lens benchmark ({meta['mode']}): {settings.backbone}, {len(products)} products, "
          f"results in {output}", flush=True)
    with tempfile.TemporaryDirectory(prefix="fashion-lens-bench-") as scratch:
        scratch = Path(scratch)
        project_index = None
        if "side_by_side" not in skip:
            figure, article_features, project_features = extraction(products, settings, scratch)
            report.add("extraction", figure)
            article_index = build_index(products, article_features)
            project_index = build_index(products, project_features)
            report.add("memory", memory(article_features, project_index, project_features))
            del article_features
            report.add("query_latency", query_latency(article_index, project_index))
            report.add("widget_latency", widget_latency(project_index))
            report.add("quality", quality(article_index, project_index))
            del article_index
        if "speed" not in skip:
            report.add("extraction_paths", extraction_paths(products, settings, scratch))
            report.add("probes", probe_fitting(catalog, settings, scratch))
        if "app_load" not in skip:
            # the figure: clients speaking Streamlit's protocol from Python, light enough that the
            # server is measured; then the same load in pages of one headless Chromium, which shows
            # the real page working but takes most of 2 cores itself
            print("  the app under load: 20 users for 60 s (Streamlit's protocol from Python) ...", flush=True)
            report.add("app_load", {**load_test(users=20, seconds=60, settings=settings), "target_p95_ms": 300})
            print("  the app under load: 20 pages of one headless Chromium for 60 s ...", flush=True)
            report.add("app_load_chromium", {**load_test(users=20, seconds=60, settings=settings, client="chromium"),
                                             "target_p95_ms": 300} if Path(CHROMIUM).exists()
                       else {"skipped": f"no Chromium at {CHROMIUM} (FASHION_LENS_CHROMIUM)"})
        if "main_job" not in skip:
            report.add("main_job", main_job(settings, arguments.quick, 20, scratch))
        if "tuned" not in skip:
            report.add("tuned", tuned(products, settings, arguments.quick))
        if {"scale", "milvus"} - skip:
            # the synthetic catalogues grow from the whole catalogue's descriptors (cached in the
            # project's artifacts folder, computed there once if missing)
            real_index = project_index if per_gender is None and project_index is not None \
                else load_index(catalog, settings, progress=False)
        if "scale" not in skip:
            for figure in scale(real_index, sizes):
                report.add("scale", figure)
        if "milvus" not in skip:
            report.add("milvus", milvus_side_by_side(real_index, arguments.milvus_size, scratch))
    report.data["meta"]["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    report.save()
    print()
    print_table(report.data)
    print(f"\nresults: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
