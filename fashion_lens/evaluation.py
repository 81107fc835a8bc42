"""Evaluation: a result is relevant when it shares the query's labels.

Two protocols. `evaluate`: every catalogue product is a query (its own labels never enter its
score: the probes' probabilities are out-of-fold). `evaluate_uploads`: products held out of the
index (split_by_group's dev or test part) are searched by their photo, as a shopper's upload; the
protocol for anything trained on the labels, such as a tuned network.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import SettingsError
from .feature_cache import extract_features
from .features import FeatureRecipe
from .index import Index, build_index, describe_photo, pair_similarities, product_query, top_k
from .search import check_colour_weight, similar_to_query

# A result is relevant when it shares these columns with the query.
RELEVANCE = {
    "SubCategory": ("SubCategory",),
    "ProductType": ("ProductType",),
    "Colour": ("Colour",),
    "ProductType and Colour": ("ProductType", "Colour"),
}


def rank_all(index: Index, k: int = 5, colour_weight: float | None = None) -> np.ndarray:
    """For every product, the rows of its k nearest products of the same gender (query and its
    byte-identical copies left out), exactly as similar_products ranks them; -1 pads short lists.

    >>> ranks = rank_all(index, k=5, colour_weight=0)  # doctest: +SKIP
    """
    colour_weight = check_colour_weight(index, colour_weight)
    ranks = np.full((len(index), k), -1, dtype=np.int64)
    for rows in index.gender_rows.values():
        if rows.stop == rows.start:
            continue
        positions = np.arange(rows.start, rows.stop)
        visual = None
        if index.metric == "cosine":
            visual, colour = (index.pair_scores or {}).get((rows.start, rows.stop)) or pair_similarities(index, rows)
            scores = (1 - colour_weight) * visual.astype(np.float64) + colour_weight * colour
        else:  # Euclidean, via |a|^2 + |b|^2 - 2ab: one matrix product for the whole slice
            vectors = index.vectors[rows]
            squared = np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64)
            scores = -np.sqrt(np.maximum(squared[:, None] + squared[None, :] - 2.0 * (vectors @ vectors.T), 0))
        groups = index.groups[rows]
        scores[groups[:, None] == groups[None, :]] = -np.inf
        for offset, position in enumerate(positions):
            found, _ = top_k(index, product_query(index, position), positions, scores[offset], k, colour_weight,
                             None if visual is None else visual[offset])
            ranks[position, :len(found)] = found
    return ranks


def relevance_matrix(index: Index, ranks: np.ndarray, columns: tuple[str, ...]) -> np.ndarray:
    """(N, k) booleans: does the result at each rank share `columns` with its query?"""
    relevant = np.ones(ranks.shape, dtype=bool)
    for column in columns:
        values = index.catalog[column].to_numpy()
        relevant &= values[ranks] == values[:, None]
    return relevant & (ranks >= 0)


def relevant_counts(index: Index, columns: tuple[str, ...]) -> np.ndarray:
    """How many products of the query's gender are relevant to it (query and its copies excluded)."""
    key = index.catalog[["Gender", *columns]].astype(str).agg("|".join, axis=1)
    group_key = key + "|" + index.catalog["duplicate_group"]
    return (key.map(key.value_counts()) - group_key.map(group_key.value_counts())).to_numpy()


def precision_at_k(relevant: np.ndarray) -> float:
    """Mean over queries of the share of relevant results among the top k."""
    return float(np.asarray(relevant, dtype=float).mean()) if np.size(relevant) else float("nan")


def average_precision_at_k(relevant: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    """AP@k per query: mean of precision@i at each relevant rank i, over min(k, relevant items);
    NaN for queries with nothing relevant to find."""
    relevant = np.asarray(relevant, dtype=float)
    k = relevant.shape[1]
    precision_at_i = np.cumsum(relevant, axis=1) / np.arange(1, k + 1)
    denominator = np.minimum(k, np.asarray(n_relevant, dtype=float))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (precision_at_i * relevant).sum(axis=1) / denominator, np.nan)


def evaluate(index: Index, k: int = 5, colour_weight: float | None = None, ranks: np.ndarray | None = None) -> pd.Series:
    """precision@k and mAP@k of one method, for each kind of relevance, over every product as query."""
    ranks = rank_all(index, k, colour_weight) if ranks is None else ranks
    scores = {}
    for name, columns in RELEVANCE.items():
        relevant = relevance_matrix(index, ranks, columns)
        scores[f"P@{k} {name}"] = precision_at_k(relevant)
        scores[f"mAP@{k} {name}"] = float(np.nanmean(average_precision_at_k(relevant, relevant_counts(index, columns))))
    return pd.Series(scores)


def compare_methods(methods: dict, k: int = 5) -> pd.DataFrame:
    """Evaluate several methods side by side: {name: Index or (Index, colour_weight)} -> one row each."""
    rows = {}
    for name, method in methods.items():
        index, colour_weight = method if isinstance(method, tuple) else (method, None)
        rows[name] = evaluate(index, k, colour_weight)
    return pd.DataFrame(rows).T



# Which products an index holds when the held-out part is searched: the development part is
# searched against the training products only; the test part against training and development.
INDEXED_PARTS = {"dev": ("train",), "test": ("train", "dev")}


def heldout_index(catalog: pd.DataFrame, split: pd.Series, part: str, recipe: FeatureRecipe, artifacts_dir=None,
                  progress: bool = False) -> Index:
    """The index the `part` ("dev" or "test") of split_by_group is searched against: the other
    parts (INDEXED_PARTS), with their own probes; the held-out photos are not in it."""
    if part not in INDEXED_PARTS:
        raise SettingsError(f"part must be one of {', '.join(INDEXED_PARTS)}, not {part!r}.")
    indexed = catalog[split.isin(INDEXED_PARTS[part])].reset_index(drop=True)
    return build_index(indexed, extract_features(indexed, recipe, artifacts_dir=artifacts_dir, progress=progress))


def evaluate_uploads(index: Index, queries: pd.DataFrame, k: int = 5,
                     colour_weights: dict[str, float | None] | None = None) -> pd.DataFrame:
    """precision@k of held-out photos searched as uploads (describe_photo, then within the query's
    gender), one row per colour weight: {row name: weight}, by default the network alone (0) and
    the project's default. The index must not hold any query's photo (build it with heldout_index).

    >>> evaluate_uploads(heldout_index(catalog, split, "test", recipe), catalog[split == "test"])  # doctest: +SKIP
    """
    seen = set(index.catalog["image_sha256"])
    leaked = queries["ProductId"][queries["image_sha256"].isin(seen)].tolist()
    if leaked:
        raise SettingsError(f"{len(leaked)} query photo(s) are also in the index (e.g. {leaked[:3]}): held-out "
                            "queries must be left out of it, copies included (use split_by_group and heldout_index).")
    if colour_weights is None:
        colour_weights = {"network only (w = 0)": 0.0, "default": None}
    if index.metric == "euclidean":  # raw distances do not blend: only the network's ranking exists
        colour_weights = {name: weight for name, weight in colour_weights.items() if weight == 0.0}
    hits = {name: {relevance: [] for relevance in RELEVANCE} for name in colour_weights}
    labels = index.catalog.set_index("ProductId")
    for _, query_row in queries.iterrows():
        if query_row["Gender"] not in index.gender_rows:
            continue
        query = describe_photo(index, query_row["image_path"])
        for name, weight in colour_weights.items():
            found = similar_to_query(index, query, k, gender=query_row["Gender"], colour_weight=weight)
            results = labels.loc[found["ProductId"]]
            for relevance, columns in RELEVANCE.items():
                shares = np.ones(len(results), dtype=bool)
                for column in columns:
                    shares &= results[column].to_numpy() == query_row[column]
                hits[name][relevance].append(np.pad(shares, (0, k - len(shares))).mean())
    return pd.DataFrame({name: {f"P@{k} {relevance}": float(np.mean(values)) if values else float("nan")
                                for relevance, values in by_relevance.items()}
                         for name, by_relevance in hits.items()}).T



def choose_colour_weight(index: Index, queries: pd.DataFrame, k: int = 5, weights=(0.0, 0.2, 0.4, 0.6, 0.8),
                         relevance: str = "ProductType and Colour") -> tuple[float, pd.DataFrame]:
    """The colour weight whose held-out uploads score best on `relevance`, and the table it was read
    from: run it on the development part, then report the weight on the test part."""
    named = {f"w = {weight:g}": weight for weight in weights}
    table = evaluate_uploads(index, queries, k, named)
    return float(named[table[f"P@{k} {relevance}"].idxmax()]), table


_GREY_LEVELS = ("dark grey", "grey", "light grey")
# The colour names (colour.colour_names) that agree with each catalogue Colour label; labels with
# no plain colour word of their own (Beige, Gold, Multi, ...) are not scored.
LABEL_COLOUR_NAMES = {
    "Black": ("black",), "White": ("white",), "Off White": ("white",), "Grey": _GREY_LEVELS, "Silver": _GREY_LEVELS,
    "Charcoal": ("dark grey",), "Blue": ("blue",), "Navy Blue": ("navy",), "Turquoise Blue": ("teal", "blue"),
    "Teal": ("teal", "dark teal"), "Red": ("red",), "Maroon": ("maroon",), "Orange": ("orange",),
    "Pink": ("pink", "dark pink"), "Magenta": ("pink", "dark pink", "purple"), "Green": ("green", "dark green"),
    "Olive": ("olive",), "Yellow": ("yellow",), "Brown": ("brown",), "Purple": ("purple", "dark purple"),
    "Lavender": ("purple",),
}


def colour_name_agreement(labels, names) -> pd.DataFrame:
    """How often the colour names of the products agree with their Colour labels, per label.

    `labels`: each product's Colour label; `names`: each product's colour names, largest first
    (colour.colour_names of its colour descriptor). One row per scored label (LABEL_COLOUR_NAMES):
    `products`, `first` (share whose first name agrees) and `top2` (share with an agreeing name
    among the first two), most frequent label first.
    """
    table = pd.DataFrame({"label": list(labels), "names": [list(found) for found in names]})
    table = table[table["label"].isin(list(LABEL_COLOUR_NAMES))]
    agree = table.apply(lambda row: [name in LABEL_COLOUR_NAMES[row["label"]] for name in row["names"][:2]], axis=1)
    table = table.assign(first=[bool(hits[:1]) and hits[0] for hits in agree], top2=[any(hits) for hits in agree])
    summary = table.groupby("label").agg(products=("label", "size"), first=("first", "mean"), top2=("top2", "mean"))
    return summary.sort_values("products", ascending=False, kind="stable")
