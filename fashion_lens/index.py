"""The index: the catalogue joined with its descriptors, and the similarity formulas.

The score of a result blends two similarities, visual (the cosine of the CNN descriptors) and
colour-aware (the probes' probability that two products share type and colour, 5/6, plus the
colour histograms, 1/6):

    score = (1 - w) * visual + w * colour-aware

Every search path (a precomputed row, a matrix-vector product, FAISS candidates, rank_all)
first finds candidates with fast float32 arithmetic, then ranks them with exact_scores: the same
float64 arithmetic on the same numbers, scores rounded to SCORE_DECIMALS, ties broken by
ProductId. So the same query gives the same list whichever path answers it, on any machine and
with any number of BLAS threads.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from .catalog import FILTER_COLUMNS, genders_of, id_order, load_catalog
from .errors import CatalogError
from .feature_cache import Features, extract_features, photo_inputs
from .features import FeatureRecipe, in_batches, run_network
from .images import load_image
from .probes import ATTRIBUTE_MIN_PRODUCTS, AttributeModel, fit_attribute_probes, probe_inputs
from .settings import RANDOM_WEIGHTS, Settings, get_settings
from .tuning import serving_recipe, tune_network

# The default w = 0.4 is the largest weight that kept ProductType precision at its pure-visual
# level on a development half of the queries (README, "How it works").
DEFAULT_COLOUR_WEIGHT = 0.4
ATTRIBUTE_SHARE = 5 / 6
SAME_PHOTO_SIMILARITY = 0.999  # visual cosine of a photo with itself (up to float16 rounding)
PAIR_SCORES_MAX_ROWS = 5_000  # per gender: two float32 matrices of at most 100 MB
# From this many products on, a search asks an approximate index (FAISS) for candidates instead
# of reading every descriptor (see ann.py for the measurements behind it).
APPROXIMATE_SEARCH_MIN_PRODUCTS = 20_000
SCORE_DECIMALS = 6  # scores equal to 6 decimals are ties, ordered by ProductId
# float32 candidates are re-scored exactly within this margin of the k-th best (relative to the
# score's size): far wider than float32 rounding over 5120 numbers (about 1e-6)
CANDIDATE_MARGIN = 1e-3


@dataclasses.dataclass
class Index:
    """The searchable catalogue: rows grouped by gender, aligned with their descriptors.

    Each Gender value is a group searched on its own ("" gathers the products without one: in a
    catalogue without genders, that is every product). Products that could not be indexed are in
    `left_out` with the reason, so that a query for one says why instead of "not in the catalogue"."""

    catalog: pd.DataFrame
    vectors: np.ndarray            # float32 (N, D)
    colours: np.ndarray            # float32 (N, C)
    recipe: FeatureRecipe
    gender_rows: dict[str, slice]  # each gender's rows are contiguous (genders_of order): a query multiplies only its slice
    positions: dict[str, int]      # ProductId -> row
    codes: dict[str, pd.Categorical]
    groups: np.ndarray             # duplicate group of each row, as integer codes
    id_rank: np.ndarray            # each row's place in ProductId order: breaks ties between equal scores
    feature_cache_dir: Path | None = None  # where the FAISS index of a large catalogue is cached
    faiss_index: object | None = dataclasses.field(default=None, repr=False)  # see ann.attach_faiss_index
    attributes: dict[str, np.ndarray] | None = None          # out-of-fold attribute probabilities per row
    attribute_models: dict[str, AttributeModel] | None = None  # probes for new photos
    # per gender slice (start, stop): its (visual, colour-aware) similarity matrices, for catalogues
    # small enough to keep every pair: a product query then reads one row instead of multiplying
    pair_scores: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] | None = dataclasses.field(default=None, repr=False)
    network: Callable = dataclasses.field(default=run_network, repr=False)  # photos -> descriptors (describe_photo)
    approximate_from: int = APPROXIMATE_SEARCH_MIN_PRODUCTS  # catalogue size where FAISS takes over
    left_out: dict[str, str] = dataclasses.field(default_factory=dict, repr=False)  # ProductId -> why it is not indexed
    milvus_uri: str | None = None  # search through Milvus there (the milvus_uri setting; see milvus_search)
    milvus: object | None = dataclasses.field(default=None, repr=False)  # the connected collection (sync_milvus)
    # the colour_names of rows already shown as results (a result's "why" names its colours: cached, not
    # recounted); init=False: a copy made with dataclasses.replace starts with an empty cache
    named_colours: dict[int, list[str]] = dataclasses.field(default_factory=dict, init=False, repr=False)

    def __len__(self) -> int:
        return len(self.catalog)

    @property
    def metric(self) -> str:
        return self.recipe.metric


@dataclasses.dataclass(frozen=True)
class Query:
    """What a search compares: a descriptor, a colour histogram and (with probes) attribute probabilities."""

    vector: np.ndarray
    colour: np.ndarray
    attributes: dict[str, np.ndarray] | None = None
    position: int | None = None  # the index row of a product query (None for a photo)
    # a photo whose product could not be told apart from its background with confidence: why not
    # (images.separate_product); its colours are then uncertain
    doubt: str | None = None


def build_index(catalog: pd.DataFrame, features: Features, attributes: bool | None = None, *,
                network: Callable = run_network, approximate_from: int = APPROXIMATE_SEARCH_MIN_PRODUCTS,
                fit_probes: Callable = fit_attribute_probes) -> Index:
    """Join the catalogue with its features; products without features are left out (`Index.left_out`
    says why, with the products load_catalog left out), and a catalogue with none refused (CatalogError).

    Args:
        catalog: the products (load_catalog).
        features: their descriptors (extract_features).
        attributes: fit (or load) the attribute probes. By default they are used when the recipe
            compares by cosine, the catalogue has at least ATTRIBUTE_MIN_PRODUCTS products and
            the features come from a cache.
        network: turns uploaded photos into descriptors (run_network unless a test injects one).
        approximate_from: from this many products on, searches take candidates from FAISS.
        fit_probes: fits the probes (fit_attribute_probes unless a test injects one).

    Returns:
        The Index that similar_products, similar_to_image and evaluate search.

    >>> index = build_index(catalog, extract_features(catalog))  # doctest: +SKIP
    """
    if features.recipe.weights == RANDOM_WEIGHTS:
        warnings.warn("These features come from an untrained network (weights='random'): "
                      "use them to test shapes, never as recommendations.", stacklevel=2)
    row_of = {pid: row for row, pid in enumerate(features.ids)}
    rows = catalog[catalog["ProductId"].isin(row_of)].copy()
    left_out = left_out_products(catalog, features)
    if rows.empty:
        reasons = "; ".join(f"{pid}: {reason}" for pid, reason in list(left_out.items())[:5])
        total = len(set(catalog["ProductId"]) | set(left_out))
        raise CatalogError(f"None of the {total} products of the catalogue can be indexed "
                           f"({reasons or 'the catalogue is empty'}). "
                           "Fix the photos (or the catalogue) and load it again.")
    if attributes is None:
        attributes = (len(features) >= ATTRIBUTE_MIN_PRODUCTS and features.cache_dir is not None
                      and features.recipe.metric == "cosine" and features.recipe.weights != RANDOM_WEIGHTS
                      and all(rows[target].ne("").any() for target in ("ProductType", "Colour")))
    genders = genders_of(rows)
    rows["_gender"] = pd.Categorical(rows["Gender"], categories=genders)
    rows = rows.sort_values("_gender", kind="stable").drop(columns="_gender").reset_index(drop=True)
    order = np.array([row_of[pid] for pid in rows["ProductId"]], dtype=np.int64)
    gender_rows, start = {}, 0
    for gender in genders:
        count = int((rows["Gender"] == gender).sum())
        gender_rows[gender] = slice(start, start + count)
        start += count
    ids = rows["ProductId"].tolist()
    probes = {}
    if attributes:
        out_of_fold, models = fit_probes(catalog, features)
        probes = {"attributes": {target: probabilities[order] for target, probabilities in out_of_fold.items()},
                  "attribute_models": models}
    index = Index(
        catalog=rows,
        vectors=np.ascontiguousarray(features.vectors[order], dtype=np.float32),
        colours=np.ascontiguousarray(features.colours[order], dtype=np.float32),
        recipe=features.recipe,
        gender_rows=gender_rows,
        positions={pid: row for row, pid in enumerate(ids)},
        # blank labels get no category: no filter keeps them and no choice lists them
        codes={column: pd.Categorical(rows[column].mask(rows[column] == ""), categories=sorted(set(rows[column]) - {""}))
               for column in FILTER_COLUMNS},
        groups=pd.factorize(rows["duplicate_group"])[0],
        id_rank=id_order(ids),
        feature_cache_dir=features.cache_dir,
        network=network,
        approximate_from=approximate_from,
        left_out=left_out,
        **probes,
    )
    if index.metric == "cosine" and max(s.stop - s.start for s in gender_rows.values()) <= PAIR_SCORES_MAX_ROWS:
        index.pair_scores = {(s.start, s.stop): pair_similarities(index, s) for s in gender_rows.values()}
    return index


def left_out_products(catalog: pd.DataFrame, features: Features) -> dict[str, str]:
    """Why each product that has no features is left out: load_catalog's reasons (catalog.attrs),
    then the photos extract_features could not read."""
    left_out = dict(catalog.attrs.get("left_out", {}))
    left_out.update({pid: f"its photo could not be read ({reason})" for pid, reason in features.left_out.items()})
    with_features = set(features.ids)
    for product_id in catalog["ProductId"]:
        if product_id not in with_features and product_id not in left_out:
            left_out[product_id] = "it has no features (its photo was not among those described)"
    return left_out


def load_index(catalog: pd.DataFrame | None = None, settings: Settings | None = None,
               recipe: FeatureRecipe | None = None, progress: bool = True, on_progress=None, *,
               tune: Callable = tune_network) -> Index:
    """Catalogue + cached features (computed where missing) -> Index: the one call most users need.

    Args:
        catalog: the products (default: load_catalog() of the data, layout and columns settings).
        settings: folders, backbone and weights (default: get_settings()).
        recipe: how photos become descriptors (default: serving_recipe(catalog, settings), that is
            default_recipe(settings), or with weights="tuned" the network tuned on this catalogue's
            labels: tuned on the first load, minutes, then reused).
        progress: show a progress bar while features are computed (and the tuning's epochs).
        on_progress: called as on_progress(done, total) after each photo computed.
        tune: tunes the network for weights="tuned" (tune_network unless a test injects another).

    With the milvus_uri setting (FASHION_LENS_MILVUS_URI), searches take their candidates from
    Milvus: the first one syncs the collection with these features (milvus_search.sync_milvus).

    >>> index = load_index()  # doctest: +SKIP
    >>> similar_products(index, "13683", k=5)  # doctest: +SKIP
    """
    settings = settings or get_settings()
    if catalog is None:
        catalog = load_catalog(settings.data_dir, layout=settings.layout, columns=dict(settings.columns))
    features = extract_features(catalog, recipe or serving_recipe(catalog, settings, progress=progress, tune=tune),
                                artifacts_dir=settings.artifacts_dir, progress=progress, on_progress=on_progress)
    index = build_index(catalog, features)
    index.milvus_uri = settings.milvus_uri
    return index


def product_query(index: Index, position: int) -> Query:
    """The query for the product at `position`: its descriptors and held-out attribute probabilities."""
    attributes = None if index.attributes is None else {t: p[position] for t, p in index.attributes.items()}
    return Query(index.vectors[position], index.colours[position], attributes, position)


def describe_photo(index: Index, image) -> Query:
    """Run a photo (path, bytes, file object or PIL image) through exactly the catalogue's pipeline.
    The Query's `doubt` says when the product could not be told apart from its background."""
    return describe_photos(index, [image])[0]


def describe_photos(index: Index, images, batch_size: int = 32, progress: bool = False) -> list[Query]:
    """describe_photo for many photos at once (held-out evaluation searches hundreds as uploads): the
    same pipeline, with the photos read in parallel and the network run on batches of `batch_size`."""
    recipe = index.recipe
    with ThreadPoolExecutor(max_workers=min(len(images), os.cpu_count() or 2) or 1) as pool:
        inputs = list(pool.map(lambda image: photo_inputs(load_image(image), recipe), images))
    if not inputs:
        return []
    squares = np.stack([square for square, _, _ in inputs])
    colours = np.stack([colour for _, colour, _ in inputs])
    vectors = in_batches(lambda batch: np.asarray(index.network(batch, recipe), dtype=np.float32), squares, batch_size,
                         desc=f"{recipe.name}: photos described as uploads", progress=progress)
    attributes = {}
    if index.attribute_models is not None:
        probe_input = probe_inputs(vectors, colours, recipe.pooling)
        attributes = {target: model.predict(probe_input) for target, model in index.attribute_models.items()}
    return [Query(vectors[row], colours[row], {target: found[row] for target, found in attributes.items()} or None,
                  doubt=separation.doubt) for row, (_, _, separation) in enumerate(inputs)]


# ---- fast float32 similarities: for finding candidates --------------------------------------

def colour_aware_similarity(index: Index, rows, query: Query, visual: np.ndarray | None = None) -> np.ndarray:
    """Similarity in type-and-colour of the products at `rows` (a slice or positions) to the query.
    Given their visual similarities, a product showing the query's own photo counts as sharing both."""
    histogram = index.colours[rows] @ query.colour
    if index.attributes is None or query.attributes is None:
        return histogram
    shared = (index.attributes["ProductType"][rows] @ query.attributes["ProductType"]) \
        * (index.attributes["Colour"][rows] @ query.attributes["Colour"])
    if visual is not None:  # the probes judge two photos as independent draws; one photo is one product
        shared = np.where(visual >= SAME_PHOTO_SIMILARITY, 1.0, shared)
    return ATTRIBUTE_SHARE * shared + (1 - ATTRIBUTE_SHARE) * histogram


def pair_similarities(index: Index, rows: slice) -> tuple[np.ndarray, np.ndarray]:
    """Visual and colour-aware similarities of every pair of products in `rows` (as
    colour_aware_similarity computes them, for all queries at once)."""
    vectors = index.vectors[rows]
    visual = vectors @ vectors.T
    colour = index.colours[rows] @ index.colours[rows].T
    if index.attributes is not None:
        shared = np.ones_like(colour)
        for probabilities in index.attributes.values():
            shared *= probabilities[rows] @ probabilities[rows].T
        shared[visual >= SAME_PHOTO_SIMILARITY] = 1.0
        colour = ATTRIBUTE_SHARE * shared + (1 - ATTRIBUTE_SHARE) * colour
    return visual.astype(np.float32), colour.astype(np.float32)


def euclidean_similarities(vectors: np.ndarray, query_vector: np.ndarray) -> np.ndarray:
    """Minus the Euclidean distances of the rows of `vectors` to the query (the article's metric)."""
    squared = np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64) - 2.0 * (vectors @ query_vector) \
        + float(np.dot(query_vector, query_vector))
    return -np.sqrt(np.maximum(squared, 0.0))


# ---- exact scores: one rule for every path --------------------------------------------------

def _dots(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    # einsum in float64 sums in one fixed order (no BLAS threads): the same bits on every path
    return np.einsum("ij,j->i", np.asarray(matrix, dtype=np.float64), np.asarray(vector, dtype=np.float64))


def exact_scores(index: Index, query: Query, positions: np.ndarray, colour_weight: float) -> dict[str, np.ndarray]:
    """The ranking scores of the products at `positions`, computed the same way on every path:
    float64, rounded to SCORE_DECIMALS. Returns similarity, visual_similarity, colour_similarity."""
    positions = np.asarray(positions, dtype=np.int64)
    if index.metric == "euclidean":
        difference = np.asarray(index.vectors[positions], dtype=np.float64) - np.asarray(query.vector, dtype=np.float64)
        visual = -np.sqrt(np.einsum("ij,ij->i", difference, difference))
    else:
        visual = _dots(index.vectors[positions], query.vector)
    colour = _dots(index.colours[positions], query.colour)
    if index.attributes is not None and query.attributes is not None:
        shared = np.ones(len(positions))
        for target, probabilities in index.attributes.items():
            shared *= _dots(probabilities[positions], query.attributes[target])
        shared[visual >= SAME_PHOTO_SIMILARITY] = 1.0
        colour = ATTRIBUTE_SHARE * shared + (1 - ATTRIBUTE_SHARE) * colour
    score = np.round((1 - colour_weight) * visual + colour_weight * colour, SCORE_DECIMALS)
    return {"similarity": score, "visual_similarity": visual, "colour_similarity": colour}


def top_k(index: Index, query: Query, positions: np.ndarray, approximate: np.ndarray, k: int,
          colour_weight: float, approximate_visual: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """The k best of `positions`, best first, with their exact scores.

    `approximate` holds fast scores of the same positions (-inf: not allowed). Every position
    within CANDIDATE_MARGIN of the k-th best is re-scored by exact_scores, then sorted by score
    and, for equal scores, by ProductId: the one rule every search path ends with.
    """
    positions = np.asarray(positions, dtype=np.int64)
    approximate = np.asarray(approximate, dtype=np.float64)
    allowed = np.isfinite(approximate)
    count = min(int(k), int(allowed.sum()))
    if count == 0:
        empty = np.zeros(0)
        return np.zeros(0, dtype=np.int64), {"similarity": empty, "visual_similarity": empty, "colour_similarity": empty}
    kth = np.partition(approximate[allowed], allowed.sum() - count)[allowed.sum() - count]
    margin = CANDIDATE_MARGIN * max(1.0, abs(kth))
    keep = allowed & (approximate >= kth - margin)
    if approximate_visual is not None and colour_weight > 0 and index.attributes is not None:
        keep |= allowed & (approximate_visual >= SAME_PHOTO_SIMILARITY - margin)  # may gain the same-photo rule
    candidates = positions[keep]
    scores = exact_scores(index, query, candidates, colour_weight)
    order = np.lexsort((index.id_rank[candidates], -scores["similarity"]))[:count]
    return candidates[order], {name: values[order] for name, values in scores.items()}
