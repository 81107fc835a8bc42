"""Attribute probes: the product type and colour a photo shows, learned from the catalogue's labels.

Two logistic regressions read a photo's descriptors (and colour histogram), through their 256
leading principal components, and give the probability of each ProductType and each Colour. They are trained on the catalogue's own
labels: every catalogue product's probabilities come from probes that never saw it (5 folds),
so a query's own labels never enter its score.

When the catalogue changes a little, the probes are updated rather than refitted: each product keeps
its fold (a hash of its photo), the earlier principal components are kept, and every probe starts
from the earlier one, so a few added products cost a few iterations instead of a full fit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import FeatureCacheWarning, SettingsError
from .feature_cache import Features
from .features import l2_normalize
from .storage import atomic_write

# Logistic regressions on the frozen descriptors, one per attribute (C tuned on a held-out half of
# the queries). They read pixels only: a query's own labels never enter its score.
ATTRIBUTE_PROBES = {"ProductType": 0.01, "Colour": 0.1}
ATTRIBUTE_FOLDS = 5
ATTRIBUTE_MIN_PRODUCTS = 300  # fewer labelled products teach the probes too little to help
PROBE_DIMENSIONS = 256  # the probes read the inputs' leading principal components: as good, and fitted in seconds
ATTRIBUTES_VERSION = "logreg-lookmean+lab-pca-stablefolds-v4"
REUSE_SHARE = 0.9  # an earlier fit that knew this share of the products is updated; otherwise all is refitted
MODEL_PARTS = ("classes", "mean", "scale", "coef", "intercept")
MISSING_CLASS = -1e4  # the intercept of a class a probe never saw: no probability


@dataclasses.dataclass
class AttributeModel:
    """One fitted probe as plain arrays: standardise, then a softmax over `classes`."""

    classes: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        logits = ((np.asarray(inputs, np.float32) - self.mean) / self.scale) @ self.coef.T + self.intercept
        logits -= logits.max(axis=1, keepdims=True)
        odds = np.exp(logits)
        return (odds / odds.sum(axis=1, keepdims=True)).astype(np.float32)


def probe_inputs(vectors: np.ndarray, colours: np.ndarray, pooling: str) -> np.ndarray:
    """What the probes read: the overall look (the mean of the 2x2 grid cells) and the colour histogram."""
    vectors = np.asarray(vectors, dtype=np.float32)
    look = l2_normalize(vectors.reshape(len(vectors), 4, -1).mean(axis=1)) if pooling == "grid2x2" else vectors
    return np.concatenate([look, np.asarray(colours, dtype=np.float32)], axis=1)


def principal_components(inputs: np.ndarray, dimensions: int = PROBE_DIMENSIONS) -> tuple[np.ndarray, np.ndarray]:
    """(mean, components): the leading directions of the probes' inputs. Fitted on pixels alone, never on labels,
    so every product can share them while its own probabilities still come from probes that never saw its labels."""
    from sklearn.decomposition import PCA

    pca = PCA(min(dimensions, *inputs.shape), svd_solver="randomized", random_state=0).fit(inputs)
    return pca.mean_.astype(np.float32), pca.components_.astype(np.float32)


def in_input_space(model: AttributeModel, mean: np.ndarray, components: np.ndarray) -> AttributeModel:
    """A probe fitted on principal components, as one probe on the inputs themselves (both steps are linear)."""
    weights = (model.coef / model.scale) @ components
    intercept = model.intercept - (model.coef / model.scale) @ model.mean
    return AttributeModel(model.classes, mean, np.ones_like(mean), weights.astype(np.float32), intercept.astype(np.float32))


def fit_probe(inputs: np.ndarray, labels: np.ndarray, C: float, classes: np.ndarray,
              start: AttributeModel | None = None) -> AttributeModel:
    """One probe: a logistic regression on standardised inputs, as plain arrays over `classes`.
    Given an earlier probe on the same inputs (`start`), it keeps that standardisation and starts
    from its weights: converged to the same tolerance, in a fraction of the iterations."""
    from sklearn.linear_model import LogisticRegression

    present = np.unique(labels)
    # tol 1e-3: the same rankings as a tight fit, in a fraction of the iterations
    model = LogisticRegression(C=C, max_iter=2000, tol=1e-3, warm_start=True)
    start_rows = None if start is None else _rows_of(start, present)
    if start_rows is None:
        mean, scale = inputs.mean(axis=0), inputs.std(axis=0) + 1e-6
    else:
        mean, scale = start.mean, start.scale
        model.coef_, model.intercept_ = start.coef[start_rows].astype(np.float64), start.intercept[start_rows].astype(np.float64)
    fitted = model.fit((inputs - mean) / scale, labels)
    # classes missing from this training fold get no probability
    coef = np.zeros((len(classes), inputs.shape[1]), np.float32)
    intercept = np.full(len(classes), MISSING_CLASS, np.float32)
    rows = np.searchsorted(classes, fitted.classes_)
    if len(fitted.classes_) == 2:  # a binary fit returns one row: the second class against the first
        coef[rows[1]], intercept[rows[1]] = fitted.coef_[0], fitted.intercept_[0]
        coef[rows[0]], intercept[rows[0]] = 0.0, 0.0
    else:
        coef[rows], intercept[rows] = fitted.coef_, fitted.intercept_
    return AttributeModel(classes, np.asarray(mean, np.float32), np.asarray(scale, np.float32), coef, intercept)


def _rows_of(start: AttributeModel, present: np.ndarray) -> np.ndarray | None:
    """Where each present class sits in an earlier probe, when that probe learnt all of them from
    more than two classes (a binary fit keeps one row, so it cannot start a multinomial one)."""
    if len(present) <= 2 or not np.isin(present, start.classes).all():
        return None
    rows = np.searchsorted(start.classes, present)
    return rows if (start.intercept[rows] > MISSING_CLASS / 2).all() else None


def stable_folds(photo_hashes) -> np.ndarray:
    """Each product's fold, from a hash of its photo: byte-identical copies share a fold, and a
    product keeps its fold when others join or leave the catalogue."""
    return np.array([int(hashlib.sha256(str(photo).encode()).hexdigest()[:8], 16) % ATTRIBUTE_FOLDS
                     for photo in photo_hashes], dtype=np.int64)


def _earlier_fit(cache_dir: Path, ids: np.ndarray, version: str) -> dict | None:
    """The arrays of the newest cached fit of this version that knew at least REUSE_SHARE of `ids`."""
    for path in sorted(Path(cache_dir).glob("attributes-*.npz"), key=lambda p: p.stat().st_mtime, reverse=True)[:5]:
        try:
            with np.load(path, allow_pickle=False) as data:
                if "version" not in data.files or str(data["version"]) != version:
                    continue
                if np.isin(ids, data["basis.ids"]).mean() >= REUSE_SHARE:
                    return {name: data[name] for name in data.files}
        except (OSError, ValueError, KeyError):
            continue  # a damaged earlier fit is simply not used
    return None


def _model(arrays: dict, prefix: str) -> AttributeModel:
    return AttributeModel(*(arrays[f"{prefix}.{part}"] for part in MODEL_PARTS))


def fit_attribute_probes(catalog: pd.DataFrame, features: Features, fit=fit_probe,
                         dimensions: int | None = PROBE_DIMENSIONS) -> tuple[dict, dict]:
    """Out-of-fold probabilities of each attribute for every product, and probes fitted on all of them.

    Each product's probabilities come from probes that never saw it (5 folds, byte-identical
    copies kept in one fold), so catalogue queries and evaluation stay honest; the probes fitted
    on the whole catalogue serve new photos. Cached beside the features, keyed by the products,
    their photos and labels: updated whenever any of them changes, from the newest earlier fit that
    knew most of the products (else fitted afresh). `fit` fits one probe (fit_probe unless a test
    injects another; called as fit(inputs, labels, C, classes, start)); `dimensions`: how many principal components the
    probes read (None: the whole inputs, five times slower, as the benchmark compares).
    """
    rows = catalog.set_index("ProductId").loc[features.ids]
    version = f"{ATTRIBUTES_VERSION}:{dimensions}"
    key = hashlib.sha256(json.dumps([version, ATTRIBUTE_PROBES, ATTRIBUTE_FOLDS, features.ids.tolist(),
                                     rows["image_sha256"].tolist(), rows["ProductType"].tolist(),
                                     rows["Colour"].tolist()]).encode()).hexdigest()[:16]
    path = Path(features.cache_dir) / f"attributes-{key}.npz" if features.cache_dir else None
    if path is not None and path.exists():
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
            return ({target: arrays[f"{target}.oof"] for target in ATTRIBUTE_PROBES},
                    {target: _model(arrays, target) for target in ATTRIBUTE_PROBES})
        except (OSError, ValueError, KeyError) as error:
            warnings.warn(f"Attribute probes {path} are damaged ({error}); they are refitted.", FeatureCacheWarning, stacklevel=2)
    earlier = _earlier_fit(path.parent, features.ids, version) if path is not None and dimensions is not None else None

    inputs = probe_inputs(features.vectors, features.colours, features.recipe.pooling)
    if dimensions is None:
        mean, components = np.zeros(inputs.shape[1], np.float32), np.eye(inputs.shape[1], dtype=np.float32)
    elif earlier is not None:  # the earlier directions still describe a catalogue that changed this little
        mean, components = earlier["basis.mean"], earlier["basis.components"]
    else:
        mean, components = principal_components(inputs, dimensions)
    inputs = (inputs - mean) @ components.T  # the probes are fitted on these, then mapped back (in_input_space)
    folds = stable_folds(rows["image_sha256"])
    arrays = {"version": np.array(version), "basis.ids": np.asarray(features.ids, dtype=str)}
    if dimensions is not None:
        arrays.update({"basis.mean": mean, "basis.components": components})
    out_of_fold, models = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a warm start may stop at max_iter on a tiny fold: expected
        for target, C in ATTRIBUTE_PROBES.items():
            labels = rows[target].to_numpy(dtype=str)
            labelled = labels != ""  # a blank label teaches nothing; its product still gets probabilities
            classes = np.unique(labels[labelled])
            out_of_fold[target] = np.zeros((len(inputs), len(classes)), np.float32)
            for fold in [*range(ATTRIBUTE_FOLDS), "all"]:
                train = labelled & (folds != fold) if fold != "all" else labelled
                prefix = f"{target}.fold-{fold}"
                start = _model(earlier, prefix) if earlier is not None else None
                model = fit(inputs[train], labels[train], C, classes, start)
                arrays.update({f"{prefix}.{part}": getattr(model, part) for part in MODEL_PARTS})
                if fold != "all":
                    out_of_fold[target][folds == fold] = model.predict(inputs[folds == fold])
            models[target] = in_input_space(model, mean, components)
            arrays[f"{target}.oof"] = out_of_fold[target]
            arrays.update({f"{target}.{part}": getattr(models[target], part) for part in MODEL_PARTS})
    if path is not None:
        with atomic_write(path) as handle:
            np.savez(handle, **arrays)
    return out_of_fold, models


def _probes_of(index) -> dict:
    if index.attributes is None or index.attribute_models is None:
        raise SettingsError(f"This index has no attribute probes: they are fitted for {ATTRIBUTE_MIN_PRODUCTS} or more "
                            "products with a feature cache (build_index(..., attributes=True)).")
    return {target: (index.attribute_models[target].classes, probabilities) for target, probabilities in index.attributes.items()}


def probe_accuracy(index) -> pd.DataFrame:
    """How often each probe's guess is the product's own label, judged out of fold (every product by
    probes that never saw it), beside the score of always guessing the most common label."""
    rows = {}
    for target, (classes, probabilities) in _probes_of(index).items():
        labels = index.catalog[target].to_numpy(dtype=str)
        labelled = labels != ""
        top3 = classes[np.argsort(-probabilities, axis=1)[:, :3]]
        common = pd.Series(labels[labelled]).value_counts()
        rows[target] = {"labels": len(classes), "products": int(labelled.sum()),
                        "accuracy": float((classes[probabilities.argmax(axis=1)] == labels)[labelled].mean()),
                        "top-3 accuracy": float((top3 == labels[:, None]).any(axis=1)[labelled].mean()),
                        "most common label": common.index[0],
                        "always guessing it": float(common.iloc[0] / labelled.sum())}
    return pd.DataFrame(rows).T.infer_objects()


def probe_guesses(index, product_id, top: int = 3) -> pd.DataFrame:
    """The probes' `top` guesses for one catalogue product, with their probabilities, beside its labels.
    Out of fold: the probes that judge it never saw its labels."""
    position = index.positions.get(str(product_id))
    if position is None:
        raise SettingsError(f"ProductId {product_id} is not in this index.")
    rows = []
    for target, (classes, probabilities) in _probes_of(index).items():
        order = np.argsort(-probabilities[position])[:top]
        label = index.catalog[target].iloc[position]
        rows += [{"attribute": target, "guess": rank, "label": classes[column],
                  "probability": float(probabilities[position, column]), "is its label": classes[column] == label}
                 for rank, column in enumerate(order, start=1)]
    return pd.DataFrame(rows).set_index(["attribute", "guess"])
