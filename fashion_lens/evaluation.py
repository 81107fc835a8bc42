"""Evaluation: a result is relevant when it shares the query's labels.

Two protocols. `evaluate`: every catalogue product is a query (its own labels never enter its
score: the probes' probabilities are out-of-fold). `evaluate_uploads`: products held out of the
index (split_by_group's dev or test part) are searched by their photo, as a shopper's upload; the
protocol for anything trained on the labels, such as a tuned network.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .catalog import id_order
from .errors import SettingsError
from .feature_cache import extract_features
from .features import FeatureRecipe
from .index import Index, build_index, describe_photos, pair_similarities, product_query, top_k
from .search import check_colour_weight, query_positions
from .tuning import WEIGHTS_FILE as TUNED_WEIGHTS_FILE
from .tuning import split_by_group

# The "labels used" column of every precision table: a row that learnt from the catalogue's labels
# stands beside the network alone ("none"), so nobody mistakes a label-trained score for the network's.
NO_LABELS = "none"

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


def relevance_matrix(index: Index, ranks: np.ndarray, columns: tuple[str, ...], queries: pd.DataFrame | None = None) -> np.ndarray:
    """(N, k) booleans: does the result at each rank share `columns` with its query? The queries are
    the index's products, row for row (rank_all), or the rows of `queries` (held-out uploads)."""
    queries = index.catalog if queries is None else queries
    relevant = np.ones(ranks.shape, dtype=bool)
    for column in columns:
        relevant &= index.catalog[column].to_numpy()[ranks] == queries[column].to_numpy()[:, None]
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


def evaluate(index: Index, k: int = 5, colour_weight: float | None = None, ranks: np.ndarray | None = None,
             queries=None) -> pd.Series:
    """precision@k and mAP@k of one method, for each kind of relevance, over every product as query
    (or only the products `queries` names: a boolean mask over the index's rows, or ProductIds)."""
    ranks = rank_all(index, k, colour_weight) if ranks is None else ranks
    chosen = query_rows(index, queries)
    scores = {}
    for name, columns in RELEVANCE.items():
        relevant = relevance_matrix(index, ranks, columns)[chosen]
        scores[f"P@{k} {name}"] = precision_at_k(relevant)
        per_query = average_precision_at_k(relevant, relevant_counts(index, columns)[chosen])
        # NaN when no query has anything relevant to find (a small gender on a small sample)
        scores[f"mAP@{k} {name}"] = float(np.nanmean(per_query)) if np.isfinite(per_query).any() else float("nan")
    return pd.Series(scores)


def query_rows(index: Index, queries=None) -> np.ndarray:
    """The index rows to score: all of them, a boolean mask over the rows, or the rows of some ProductIds."""
    if queries is None:
        return np.ones(len(index), dtype=bool)
    queries = np.asarray(queries)
    if queries.dtype == bool:
        if queries.shape != (len(index),):
            raise SettingsError(f"A query mask needs one value per indexed product ({len(index)}), got {queries.shape}.")
        return queries
    unknown = [pid for pid in queries.astype(str) if pid not in index.positions]
    if unknown:
        raise SettingsError(f"{len(unknown)} query ProductId(s) are not in the index (e.g. {unknown[:3]}).")
    chosen = np.zeros(len(index), dtype=bool)
    chosen[[index.positions[pid] for pid in queries.astype(str)]] = True
    return chosen


def labels_used(index: Index, colour_weight: float | None = None) -> str:
    """What of the catalogue's labels a ranking learnt from: "none" (the network alone), "probes"
    (the colour-aware blend, colour_weight > 0), "tuned network" (weights tuned on the labels), or both."""
    used = []
    if Path(index.recipe.weights).name == TUNED_WEIGHTS_FILE:  # tune_network's weights file
        used.append("tuned network")
    if index.attributes is not None and check_colour_weight(index, colour_weight) > 0:
        used.append("probes")
    return " + ".join(used) or NO_LABELS


def compare_methods(methods: dict, k: int = 5, queries=None) -> pd.DataFrame:
    """Evaluate several methods side by side: {name: Index or (Index, colour_weight)} -> one row
    each, with a "labels used" column (labels_used); `queries` as in evaluate."""
    rows = {}
    for name, method in methods.items():
        index, colour_weight = method if isinstance(method, tuple) else (method, None)
        rows[name] = pd.concat([pd.Series({"labels used": labels_used(index, colour_weight)}),
                                evaluate(index, k, colour_weight, queries=queries)])
    return pd.DataFrame(rows).T.infer_objects()


def query_halves(catalog: pd.DataFrame, seed: int = 0) -> pd.Series:
    """"dev" or "test" for each product, half and half by a hash of its photo (copies on one side):
    choose a setting on the "dev" queries, report it on the "test" ones."""
    return split_by_group(catalog, dev=0.0, test=0.5, seed=seed).replace({"train": "dev"})



# Which products an index holds when the held-out part is searched: the development part is
# searched against the training products only; the test part against training and development.
INDEXED_PARTS = {"dev": ("train",), "test": ("train", "dev")}


def heldout_index(catalog: pd.DataFrame, split: pd.Series, part: str, recipe: FeatureRecipe, artifacts_dir=None,
                  progress: bool = True) -> Index:
    """The index the `part` ("dev" or "test") of split_by_group is searched against: the other
    parts (INDEXED_PARTS), with their own probes; the held-out photos are not in it."""
    if part not in INDEXED_PARTS:
        raise SettingsError(f"part must be one of {', '.join(INDEXED_PARTS)}, not {part!r}.")
    indexed = catalog[split.isin(INDEXED_PARTS[part])].reset_index(drop=True)
    return build_index(indexed, extract_features(indexed, recipe, artifacts_dir=artifacts_dir, progress=progress))


def check_held_out(index: Index, queries: pd.DataFrame, noun: str) -> None:
    """Refuse held-out queries whose photo (or a copy of it) the index holds: they would find themselves."""
    leaked = queries["ProductId"][queries["image_sha256"].isin(set(index.catalog["image_sha256"]))].tolist()
    if leaked:
        raise SettingsError(f"{len(leaked)} {noun} photo(s) are also in the index (e.g. {leaked[:3]}): held-out "
                            "queries must be left out of it, copies included (use split_by_group and heldout_index).")


def evaluate_uploads(index: Index, queries: pd.DataFrame, k: int = 5,
                     colour_weights: dict[str, float | None] | None = None, progress: bool = True) -> pd.DataFrame:
    """precision@k of held-out photos searched as uploads (describe_photos, then within the query's
    gender), one row per colour weight: {row name: weight}, by default the network alone (0) and
    the project's default. The index must not hold any query's photo (build it with heldout_index).

    >>> evaluate_uploads(heldout_index(catalog, split, "test", recipe), catalog[split == "test"])  # doctest: +SKIP
    """
    check_held_out(index, queries, "query")
    if colour_weights is None:
        colour_weights = {"network only (w = 0)": 0.0, "default": None}
    if index.metric == "euclidean":  # raw distances do not blend: only the network's ranking exists
        colour_weights = {name: weight for name, weight in colour_weights.items() if weight == 0.0}
    queries = queries[queries["Gender"].isin(list(index.gender_rows))]
    described = describe_photos(index, list(queries["image_path"]), progress=progress)
    scores = {}
    for name, weight in colour_weights.items():
        found = upload_results(index, queries["Gender"], described, k, weight)
        scores[name] = {"labels used": labels_used(index, weight)}
        for relevance, columns in RELEVANCE.items():
            scores[name][f"P@{k} {relevance}"] = precision_at_k(relevance_matrix(index, found, columns, queries))
    return pd.DataFrame(scores).T.infer_objects()


def upload_results(index: Index, genders, described: list, k: int, colour_weight) -> np.ndarray:
    """(N, k) index rows of the results of described uploads, each searched within its gender; -1 pads short lists."""
    found = np.full((len(described), k), -1, dtype=np.int64)
    for row, (gender, query) in enumerate(zip(genders, described, strict=True)):
        positions = query_positions(index, query, k, gender=gender, colour_weight=colour_weight)
        found[row, :len(positions)] = positions
    return found


def choose_colour_weight(index: Index, queries: pd.DataFrame, k: int = 5, weights=(0.0, 0.2, 0.4, 0.6, 0.8),
                         relevance: str = "ProductType and Colour", progress: bool = True) -> tuple[float, pd.DataFrame]:
    """The colour weight whose held-out uploads score best on `relevance`, and the table it was read
    from: run it on the development part, then report the weight on the test part."""
    named = {f"w = {weight:g}" + (" (network only)" if weight == 0 else ""): weight for weight in weights}
    table = evaluate_uploads(index, queries, k, named, progress)
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



# ---- failure analysis: why the worst queries fail, and which types are taken for which ----------

LABEL_NOISE = "label noise / near-duplicate labelled differently"
COLOUR_NAMED_DIFFERENTLY = "colour named differently"
WRONG_TYPE = "wrong type"
WRONG_COLOUR = "wrong colour"
TOO_FEW_RESULTS = "fewer results than k"
# The reasons, in the order failure_reasons groups them and breaks ties.
FAILURE_REASONS = (LABEL_NOISE, COLOUR_NAMED_DIFFERENTLY, WRONG_TYPE, WRONG_COLOUR, TOO_FEW_RESULTS)
# A result is a near-duplicate photo of its query when it is a byte-identical copy, or when both its
# descriptor and its colours are nearly the query's. Measured on the catalogue (MobileNetV2, grid2x2):
# result pairs above 0.95 visual and 0.98 colour similarity are one photo re-cut or re-saved; the
# same design in another colour (Red and Magenta tops at 0.989 visual, Brown and Maroon flats at
# 0.992) has a colour similarity of 0.44 to 0.976.
NEAR_DUPLICATE_VISUAL = 0.95
NEAR_DUPLICATE_COLOUR = 0.98
# Two photos' colours are close when their colour descriptors (Bhattacharyya coefficient, 1 = the
# same colours) reach this: as alike as the median pair of top-5 results sharing a Colour label (0.89).
CLOSE_COLOUR = 0.9
NO_RESULT = "(no result)"  # confusion_table's column for the places of a short result list


def _answers(index: Index, k: int, colour_weight, ranks, queries, uploads) -> dict:
    """Each query's labels, descriptors and results (index rows, -1 padding): catalogue products
    ranked as rank_all does (or by the given `ranks`), or held-out photos searched as uploads."""
    if uploads is not None and (ranks is not None or queries is not None):
        raise SettingsError("Give held-out `uploads`, or catalogue `ranks`/`queries`, not both: uploads are searched here.")
    if uploads is None:
        ranks = rank_all(index, k, colour_weight) if ranks is None else np.asarray(ranks)
        if ranks.ndim != 2 or len(ranks) != len(index):
            raise SettingsError(f"ranks must hold one row of results per indexed product ({len(index)}), "
                                f"got shape {ranks.shape}: pass what rank_all returns.")
        chosen = np.flatnonzero(query_rows(index, queries))
        return {"labels": index.catalog.iloc[chosen].reset_index(drop=True), "query": chosen,
                "found": ranks[chosen], "vectors": index.vectors[chosen], "colours": index.colours[chosen],
                "groups": index.groups[chosen]}
    check_held_out(index, uploads, "upload")
    uploads = uploads[uploads["Gender"].isin(list(index.gender_rows))].reset_index(drop=True)
    described = describe_photos(index, list(uploads["image_path"]))
    width = (index.vectors.shape[1], index.colours.shape[1])
    return {"labels": uploads, "query": np.full(len(uploads), -1),
            "found": upload_results(index, uploads["Gender"], described, k, colour_weight),
            "vectors": np.reshape([query.vector for query in described], (-1, width[0])),
            "colours": np.reshape([query.colour for query in described], (-1, width[1])),
            "groups": np.full(len(uploads), -1)}


def failure_reasons(index: Index, k: int = 5, colour_weight: float | None = None, *, worst: int | None = 20,
                    relevance: str = "ProductType and Colour", ranks: np.ndarray | None = None, queries=None,
                    uploads: pd.DataFrame | None = None) -> pd.DataFrame:
    """The worst queries (fewest relevant results in their top k), each with the likeliest reason.

    Each result that misses (does not share the `relevance` labels, RELEVANCE) gets the first of:
      1. LABEL_NOISE: it is a near-duplicate photo of the query (a byte-identical copy, or visual
         similarity >= NEAR_DUPLICATE_VISUAL and colour similarity >= NEAR_DUPLICATE_COLOUR) whose
         ProductType or Colour differs: one photo, two labellings;
      2. WRONG_TYPE: its ProductType (or SubCategory) differs;
      3. COLOUR_NAMED_DIFFERENTLY: same type, another Colour label, colours close (colour similarity >= CLOSE_COLOUR);
      4. WRONG_COLOUR: same type, another Colour label, colours not close;
      5. TOO_FEW_RESULTS: an empty place (fewer than k candidates).
    A query's reason is LABEL_NOISE when any of its misses is one; otherwise its misses' most
    frequent reason, ties broken in FAILURE_REASONS order.

    Args:
        index: the searchable catalogue.
        k, colour_weight: the ranking judged (as rank_all and similar_products).
        worst: how many queries: the lowest precision first, then the most confident misses (highest
            mean visual similarity), then ProductId. None: every query with a miss.
        relevance: the RELEVANCE kind a result must share to count (chapter 05 ranks queries by
            "ProductType and Colour").
        ranks: rank_all's answer when already computed (k is then its width).
        queries: only these catalogue queries (a boolean mask over the index's rows, or ProductIds).
        uploads: held-out products (split_by_group's dev or test part) searched by their photo as
            uploads, as evaluate_uploads does, against an index without them (heldout_index).

    Returns:
        One row per query, grouped by reason (FAILURE_REASONS order), then as chosen: query (its
        index row; -1 for an upload), ProductId, Gender, ProductType, Colour, precision, reason,
        detail (a sentence), evidence (the results behind the reason), results (all, best first).

    >>> failure_reasons(index, k=5, worst=12)  # doctest: +SKIP
    """
    if relevance not in RELEVANCE:
        raise SettingsError(f"Unknown relevance {relevance!r}; choose one of {', '.join(RELEVANCE)}.")
    answers = _answers(index, k, colour_weight, ranks, queries, uploads)
    labels, found = answers["labels"], answers["found"]
    k = found.shape[1]  # the width of the given ranks, if any
    catalog, valid = index.catalog, found >= 0
    rows = np.where(valid, found, 0)
    visual, colour = (np.stack([np.einsum("nd,nd->n", mine, theirs[rows[:, slot]]) for slot in range(found.shape[1])],
                               axis=1) for mine, theirs in ((answers["vectors"], index.vectors),
                                                            (answers["colours"], index.colours)))
    differs = {column: catalog[column].to_numpy()[rows] != labels[column].to_numpy()[:, None]
               for column in ("SubCategory", "ProductType", "Colour")}
    relevant = valid & ~np.any([differs[column] for column in RELEVANCE[relevance]], axis=0)
    same_photo = answers["groups"][:, None] == index.groups[rows]
    near_duplicate = same_photo | ((visual >= NEAR_DUPLICATE_VISUAL) & (colour >= NEAR_DUPLICATE_COLOUR))
    wrong_type = differs["SubCategory"] | differs["ProductType"]
    slot_reason = np.select(
        [~valid, near_duplicate & (wrong_type | differs["Colour"]), wrong_type, colour >= CLOSE_COLOUR],
        [FAILURE_REASONS.index(reason) for reason in (TOO_FEW_RESULTS, LABEL_NOISE, WRONG_TYPE, COLOUR_NAMED_DIFFERENTLY)],
        FAILURE_REASONS.index(WRONG_COLOUR))
    precision = relevant.mean(axis=1)
    shown_misses = ~relevant & valid  # how sure the ranking was of its misses: their mean visual similarity
    confidence = np.where(shown_misses.any(axis=1), (visual * shown_misses).sum(axis=1) / np.maximum(shown_misses.sum(axis=1), 1), -1.0)
    ids = labels["ProductId"].to_numpy()
    order = [row for row in np.lexsort((id_order(ids), -confidence, precision)) if precision[row] < 1]
    order = order if worst is None else order[:max(0, int(worst))]
    result = {column: catalog[column].to_numpy() for column in ("ProductId", "ProductType", "Colour")}
    table = []
    for row in order:
        misses = np.flatnonzero(~relevant[row])
        counts = np.bincount(slot_reason[row, misses], minlength=len(FAILURE_REASONS))
        reason = FAILURE_REASONS[0 if counts[0] else int(np.argmax(counts))]  # argmax: the first of equal counts
        chosen = misses[slot_reason[row, misses] == FAILURE_REASONS.index(reason)]
        shown = [slot for slot in chosen if found[row, slot] >= 0]
        table.append({"query": int(answers["query"][row]), "ProductId": ids[row],
                      **{column: labels.at[row, column] for column in ("Gender", "ProductType", "Colour")},
                      "precision": float(precision[row]), "reason": reason,
                      "detail": _failure_detail(reason, result, found[row], shown, visual[row], colour[row],
                                                same_photo[row], k),
                      "evidence": [result["ProductId"][found[row, slot]] for slot in shown],
                      "results": [result["ProductId"][position] for position in found[row] if position >= 0]})
    table = pd.DataFrame(table, columns=["query", "ProductId", "Gender", "ProductType", "Colour", "precision", "reason",
                                         "detail", "evidence", "results"])
    table["reason"] = pd.Categorical(table["reason"], categories=list(FAILURE_REASONS), ordered=True)
    return table.sort_values("reason", kind="stable").reset_index(drop=True)


def _failure_detail(reason: str, result: dict, found: np.ndarray, slots: list, visual: np.ndarray,
                    colour: np.ndarray, same_photo: np.ndarray, k: int) -> str:
    """One sentence on the results behind a query's reason (`slots`: their places in `found`;
    `result`: the catalogue's ProductId, ProductType and Colour arrays)."""
    if reason == TOO_FEW_RESULTS:
        return f"only {int((found >= 0).sum())} of {k} places are filled: too few candidates"
    if reason == LABEL_NOISE:
        slot, position = slots[0], found[slots[0]]
        photo = "a copy of its photo" if same_photo[slot] else "a near-duplicate photo"
        return (f"#{slot + 1} {result['ProductId'][position]} is {photo} (visual {visual[slot]:.3f}, colour "
                f"{colour[slot]:.3f}) labelled {result['ProductType'][position]}, {result['Colour'][position]}")
    share = f"{len(slots)} of {k} results"
    if reason == WRONG_TYPE:
        return f"{share} are another type: {', '.join(dict.fromkeys(result['ProductType'][found[slots]]))}"
    closeness = "close to" if reason == COLOUR_NAMED_DIFFERENTLY else "unlike"
    return (f"{share} share its type in colours {closeness} its own (colour similarity "
            f"{', '.join(f'{value:.3f}' for value in colour[slots])}) but are labelled "
            f"{', '.join(dict.fromkeys(result['Colour'][found[slots]]))}")


def confusion_table(index: Index, k: int = 5, colour_weight: float | None = None, *, column: str = "ProductType",
                    ranks: np.ndarray | None = None, queries=None, uploads: pd.DataFrame | None = None) -> pd.DataFrame:
    """How often the top k results of each kind of query carry each value of `column`: one row per
    query value (most queries first), one column per result value, each row summing to 1 over its
    queries' k places (NO_RESULT: places left empty). The diagonal is the per-value precision@k.

    Queries as in failure_reasons (every catalogue product, `queries`, or held-out `uploads`);
    `table.attrs["queries"]` holds the number of queries of each row.

    >>> confusion_table(index, k=5).round(2)  # doctest: +SKIP
    """
    if column not in ("SubCategory", "ProductType", "Colour", "Usage"):
        raise SettingsError(f"column must be SubCategory, ProductType, Colour or Usage, not {column!r}.")
    answers = _answers(index, k, colour_weight, ranks, queries, uploads)
    found = answers["found"]
    query_values = answers["labels"][column].to_numpy()
    result_values = np.where(found >= 0, index.catalog[column].to_numpy()[np.maximum(found, 0)], NO_RESULT)
    pairs = pd.DataFrame({"query": np.repeat(query_values, found.shape[1]), "result": result_values.ravel()})
    counts = pd.crosstab(pairs["query"], pairs["result"])
    queries_per_value = pd.Series(query_values).value_counts()
    order = sorted(queries_per_value.index, key=lambda value: (-queries_per_value[value], value))
    others = sorted(set(counts.columns) - set(order) - {NO_RESULT}) + [NO_RESULT] * (NO_RESULT in counts.columns)
    table = counts.reindex(index=order, columns=order + others, fill_value=0)
    table = table.div(table.sum(axis=1), axis=0)
    table.index.name, table.columns.name = f"query {column}", f"result {column}"
    table.attrs["queries"] = {value: int(queries_per_value[value]) for value in order}
    return table
