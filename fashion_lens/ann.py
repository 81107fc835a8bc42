"""Large catalogues: a FAISS index proposes candidates, exact scores rank them.

The exact search reads every descriptor of the query's slice (20 KB per product at 5120
numbers): benchmark.py measured 0.8 to 2.3 ms per 1000 products scanned on 2 cores, idle to
busy (10k: 7-23 ms, 100k: 78-255 ms), so from APPROXIMATE_SEARCH_MIN_PRODUCTS on (gender slices
of ~5000, where the precomputed pair scores stop) a query would cost 4-12 ms and growing, while
FAISS stays at 1-2 ms (similar_products at 100k: 27 ms exact, 6 ms FAISS). There a FAISS index,
cached beside the features, proposes candidates: descriptors compressed by PCA to 256 numbers,
an IVF with ~4 sqrt(N) lists, 32 of them visited (1M synthetic products: recall@10 0.993 at
1.9 ms/query, built in 2 min, 1 GB), and the exact scores rank the candidates: same scores,
filters and colour blend. Below the threshold the search stays exact and needs no index build.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import warnings
from pathlib import Path

import numpy as np

from .errors import FeatureCacheWarning, SearchError
from .feature_cache import read_manifest
from .index import Index, Query, colour_aware_similarity, top_k
from .storage import atomic_write

FAISS_PCA_DIMENSIONS = 256  # keeps ~80 % of the variance; re-ranking restores the order (recall 0.86 -> 0.99)
FAISS_PROBES = 32           # inverted lists visited per query (of about 4 x sqrt(N))
FAISS_TRAINING_SAMPLE = 50_000
_FAISS_LOCK = threading.RLock()
_FAISS_SEARCH_LOCK = threading.Lock()
CANDIDATE_POOL = 100  # with a colour weight, FAISS proposes this many visual candidates to re-rank
CANDIDATE_SLACK = 1e-3  # float32 scores: a product this close to the bar is scored too


def faiss_index_spec(n_products: int) -> str:
    """The FAISS index a catalogue of `n_products` gets: "PCA256,IVF<lists>,Flat" (about 4 x sqrt(N)
    inverted lists, at least 39 training points each). "Flat" (exact inner product) also works."""
    return f"PCA{FAISS_PCA_DIMENSIONS},IVF{ivf_lists(n_products)},Flat"


def ivf_lists(n_products: int) -> int:
    """Inverted lists of an IVF index over `n_products`: about 4 x sqrt(N), at least 39 training points each."""
    return max(16, min(int(4 * np.sqrt(n_products)), n_products // 39))


def fit_pca(sample: np.ndarray, dimensions: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(mean, components) of a PCA fitted with a randomized SVD (seconds; FAISS's own PCAMatrix takes
    minutes at 5120 numbers): y = components @ (x - mean). L2 distances survive centring, so do the
    rankings. The FAISS and the Milvus paths compress descriptors with it."""
    from sklearn.utils.extmath import randomized_svd

    sample = np.asarray(sample, dtype=np.float32)
    mean = sample.mean(axis=0)
    _, _, components = randomized_svd(sample - mean, dimensions, n_iter=4, random_state=seed)
    return mean.astype(np.float32), np.ascontiguousarray(components, dtype=np.float32)


def _pca_transform(sample: np.ndarray, dimensions: int, seed: int = 0):
    """fit_pca as a FAISS LinearTransform y = A (x - mean)."""
    import faiss

    mean, components = fit_pca(sample, dimensions, seed)
    transform = faiss.LinearTransform(sample.shape[1], dimensions, True)
    faiss.copy_array_to_vector(components.ravel(), transform.A)
    faiss.copy_array_to_vector((-components @ mean).astype(np.float32), transform.b)
    transform.is_trained = True
    return transform


def build_faiss_index(vectors: np.ndarray, spec: str = "auto", seed: int = 0, chunk: int = 65_536):
    """A FAISS index over `vectors` (float16 or float32, any size: read in chunks); its ids are row numbers.

    `spec` is a FAISS factory string, optionally starting with "PCA<d>," (fitted here), e.g.
    "PCA256,IVF4096,Flat" or "PCA256,HNSW32"; "Flat" is the exact inner-product index; "auto"
    picks faiss_index_spec(len(vectors)).
    """
    import faiss

    count, dimensions = vectors.shape
    if count == 0:
        raise SearchError("There are no products to index: compute the features first (load_index).")
    spec = faiss_index_spec(count) if spec == "auto" else spec
    if spec == "Flat":
        index = faiss.IndexFlatIP(dimensions)
    else:
        transform, rest = None, spec
        if spec.startswith("PCA"):
            head, rest = spec.split(",", 1)
            sample = np.sort(np.random.default_rng(seed).choice(count, min(count, 20_000), replace=False))
            transform = _pca_transform(np.asarray(vectors[sample], dtype=np.float32), int(head[3:]), seed)
        inner = faiss.index_factory(transform.d_out if transform else dimensions, rest, faiss.METRIC_L2)
        if not inner.is_trained:
            lists = re.search(r"IVF(\d+)", rest)  # k-means wants about 40 points per inverted list
            size = min(count, max(FAISS_TRAINING_SAMPLE, 40 * int(lists.group(1)) if lists else 0))
            sample = np.sort(np.random.default_rng(seed + 1).choice(count, size, replace=False))
            training = np.concatenate([_project(transform, vectors[sample[start:start + chunk]])
                                       for start in range(0, len(sample), chunk)])
            inner.train(training)
        index = faiss.IndexPreTransform(transform, inner) if transform else inner
    for start in range(0, count, chunk):
        index.add(np.ascontiguousarray(vectors[start:start + chunk], dtype=np.float32))
    return index


def _project(transform, vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return transform.apply(vectors) if transform is not None else vectors


def faiss_candidates(faiss_index, query_vector: np.ndarray, count: int, allowed: np.ndarray | None = None,
                     probes: int = FAISS_PROBES) -> np.ndarray:
    """Rows of about the `count` nearest vectors, best first; `allowed` (booleans over all rows)
    restricts the search inside FAISS. Fewer come back when the filter leaves few in reach.
    `probes`: the inverted lists an IVF visits, or an HNSW's efSearch (at least `count`)."""
    import faiss

    inner = faiss.downcast_index(faiss_index.index) if isinstance(faiss_index, faiss.IndexPreTransform) else faiss_index
    selector, bitmap = None, None
    if allowed is not None and not allowed.all():
        bitmap = np.packbits(allowed, bitorder="little")  # kept referenced while FAISS reads it
        selector = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bitmap))
    if isinstance(inner, faiss.IndexIVF):
        params = faiss.SearchParametersIVF(sel=selector, nprobe=min(int(probes), inner.nlist))
    elif isinstance(inner, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW(sel=selector, efSearch=max(min(int(probes), 4096), count))
    else:
        params = faiss.SearchParameters(sel=selector)
    if inner is not faiss_index:
        params = faiss.SearchParametersPreTransform(index_params=params)
    query = np.ascontiguousarray(query_vector, dtype=np.float32).reshape(1, -1)
    with _FAISS_SEARCH_LOCK:  # one query on one thread: two OpenMP threads only wait on each other (10x slower here)
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            _, labels = faiss_index.search(query, int(count), params=params)
        finally:
            faiss.omp_set_num_threads(threads)
    return labels[0][labels[0] >= 0]


def attach_faiss_index(index: Index, spec: str = "auto") -> Index:
    """Make `index` search through a FAISS index (built once, then read from the feature cache).

    similar_products and similar_to_image do this by themselves from index.approximate_from products on;
    call it to build the index ahead of the first query, or with spec="Flat" to force the FAISS
    path with an exact index on a small catalogue. The cache file is named after the feature cache
    shards, the product ids and a sample of the vectors, so changed features get a new index.
    """
    import faiss

    with _FAISS_LOCK:
        path = _faiss_cache_path(index, spec)
        if path is not None and path.is_file():
            try:
                loaded = faiss.deserialize_index(np.fromfile(path, dtype=np.uint8))
                if loaded.ntotal != len(index) or loaded.d != index.vectors.shape[1]:
                    raise ValueError(f"it holds {loaded.ntotal} vectors of {loaded.d} numbers")
                index.faiss_index = loaded
                return index
            except (RuntimeError, ValueError) as error:  # FAISS raises RuntimeError on a damaged file
                warnings.warn(f"FAISS index {path} is damaged ({str(error)[:120]}); it is rebuilt.",
                              FeatureCacheWarning, stacklevel=3)
        index.faiss_index = build_faiss_index(index.vectors, spec)
        if path is not None:
            with atomic_write(path) as handle:
                handle.write(memoryview(faiss.serialize_index(index.faiss_index)))
            for stale in path.parent.glob("faiss-*.index"):  # indexes of features since changed
                if stale != path:
                    stale.unlink(missing_ok=True)
    return index


def _faiss_cache_path(index: Index, spec: str) -> Path | None:
    if index.feature_cache_dir is None:
        return None
    import faiss

    manifest = read_manifest(index.feature_cache_dir, index.recipe) or {"shards": []}
    step = max(1, len(index) // 256)
    identity = {
        "spec": faiss_index_spec(len(index)) if spec == "auto" else spec,
        "faiss": faiss.__version__,
        "shards": [[entry["file"], entry["sha256"]] for entry in manifest["shards"]],
        "ids": hashlib.sha256("\n".join(index.catalog["ProductId"]).encode()).hexdigest(),
        "vectors": hashlib.sha256(np.ascontiguousarray(index.vectors[::step]).tobytes()).hexdigest(),
        "shape": list(index.vectors.shape),
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return index.feature_cache_dir / f"faiss-{key}.index"



def candidate_count(k: int, colour_weight: float = 0.0) -> int:
    """How many candidates FAISS proposes for a top k: spares, since FAISS ranks compressed vectors."""
    return max(2 * k, k + 40, CANDIDATE_POOL if colour_weight > 0 else 0)


def uses_faiss(index: Index) -> bool:
    """Does a search over `index` go through FAISS? (attached, or a large catalogue)"""
    # Euclidean distances over raw maps (the article's method) always stay exact
    return index.metric == "cosine" and (index.faiss_index is not None or len(index) >= index.approximate_from)


def rank_with_faiss(index: Index, query: Query, rows: slice, k: int, exclude: np.ndarray | None,
                    mask: np.ndarray | None, colour_weight: float) -> tuple[np.ndarray, dict]:
    """search.rank's results for a large catalogue, without reading every descriptor.

    FAISS proposes the visually closest allowed products (gender slice, filters, query and its
    copies left out); rank_candidates scores them, and the few others a colour weight can lift, exactly.
    With an exact FAISS index ("Flat") this returns exactly what the exact search does.
    """
    if index.faiss_index is None:
        with _FAISS_LOCK:  # several app sessions may ask at once: build once
            if index.faiss_index is None:
                attach_faiss_index(index)
    allowed = allowed_rows(rows, exclude, mask)
    available = int(allowed.sum())
    count = candidate_count(k, colour_weight)
    if available <= count:  # so few products allowed that FAISS could not save any work
        seen = np.flatnonzero(allowed)
    else:
        everywhere = np.zeros(len(index), dtype=bool)
        everywhere[rows] = allowed
        found = faiss_candidates(index.faiss_index, query.vector, count, everywhere, filtered_probes(len(index), available))
        if len(found) < count:  # the visited lists held too few allowed products: visit them all
            found = faiss_candidates(index.faiss_index, query.vector, count, everywhere, probes=len(index))
        seen = found - rows.start
    return rank_candidates(index, query, rows, k, allowed, seen, colour_weight)


def allowed_rows(rows: slice, exclude: np.ndarray | None, mask: np.ndarray | None) -> np.ndarray:
    """Booleans over `rows`: the products a search may return (filters passed, query and copies left out)."""
    allowed = np.ones(rows.stop - rows.start, dtype=bool) if mask is None else mask.copy()
    if exclude is not None:
        allowed[exclude] = False
    return allowed


def filtered_probes(products: int, available: int, probes: int = FAISS_PROBES) -> int:
    """Inverted lists to visit when a gender slice or filter keeps `available` of `products`: a share f
    needs 1/sqrt(f) times more lists (the allowed neighbours cluster near the query: 1/f would overdo it)."""
    return int(probes * np.sqrt(products / max(1, available)))


def rank_candidates(index: Index, query: Query, rows: slice, k: int, allowed: np.ndarray, seen: np.ndarray,
                    colour_weight: float) -> tuple[np.ndarray, dict]:
    """The one ranking of an approximate index's candidates (FAISS or Milvus): `seen` (positions within
    `rows`, the visually closest allowed products, best first) are scored exactly. With a colour
    weight w, a product not proposed is no closer than the last one proposed (visual <= v_last), so
    it can still enter the top k only if w * colour > kth best score - (1 - w) * v_last: those few
    are scored too (the threshold algorithm). The colour-aware score itself is cheap (about 330
    numbers per product against 5120) and computed for the whole slice."""
    seen = np.asarray(seen, dtype=np.int64)
    available = int(allowed.sum())
    visual = exact_similarities(index.vectors, rows.start + seen, query.vector)
    if colour_weight > 0 and 0 < len(seen) < available:
        colour = colour_aware_similarity(index, rows, query)
        score = (1 - colour_weight) * visual + colour_weight * colour[seen]
        kth_best = np.partition(score, len(score) - k)[len(score) - k] if len(score) >= k else -np.inf
        needed = (kth_best - (1 - colour_weight) * visual.min()) / colour_weight
        unseen = allowed.copy()
        unseen[seen] = False
        extra = np.flatnonzero(unseen & (colour >= needed - CANDIDATE_SLACK))
        seen = np.concatenate([seen, extra])
        visual = np.concatenate([visual, exact_similarities(index.vectors, rows.start + extra, query.vector)])
    positions = rows.start + seen
    approximate = visual.astype(np.float64)
    if colour_weight > 0:
        colour = colour_aware_similarity(index, positions, query, visual)
        approximate = (1 - colour_weight) * approximate + colour_weight * colour
    return top_k(index, query, positions, approximate, k, colour_weight, approximate_visual=visual)


def exact_similarities(vectors: np.ndarray, rows: np.ndarray, query_vector: np.ndarray, chunk: int = 32_768) -> np.ndarray:
    """Dot products of `query_vector` with the given rows (float16 rows are widened chunk by chunk).
    einsum, not BLAS: for a few hundred rows, BLAS threads cost more than they save (3x here)."""
    query = np.asarray(query_vector, dtype=np.float32)
    return np.concatenate([np.einsum("ij,j->i", np.asarray(vectors[rows[start:start + chunk]], dtype=np.float32), query)
                           for start in range(0, len(rows), chunk)] or [np.zeros(0, dtype=np.float32)])
