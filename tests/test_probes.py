"""Attribute probes: held-out probabilities, cached with the features, updated when the catalogue changes."""

import dataclasses

import numpy as np
import pytest

from fashion_lens.catalog import load_catalog, product_row
from fashion_lens.errors import FeatureCacheWarning, SettingsError
from fashion_lens.feature_cache import extract_features
from fashion_lens.features import default_recipe
from fashion_lens.index import build_index, describe_photo, describe_photos
from fashion_lens.probes import (
    ATTRIBUTE_FOLDS,
    ATTRIBUTE_PROBES,
    fit_attribute_probes,
    fit_probe,
    probe_accuracy,
    probe_guesses,
    probe_inputs,
    stable_folds,
)


def _accuracy(probabilities, classes, labels):
    return float((classes[probabilities.argmax(axis=1)] == labels).mean())


def test_catalogue_probabilities_are_held_out_not_fitted_on_the_product(index, features):
    inputs = probe_inputs(index.vectors, index.colours, index.recipe.pooling)
    for target, model in index.attribute_models.items():
        labels = index.catalog[target].to_numpy(dtype=str)
        held_out = _accuracy(index.attributes[target], model.classes, labels)
        in_sample = _accuracy(model.predict(inputs), model.classes, labels)
        assert 0.5 < held_out < in_sample  # the probes learn, and what they saw they know better
        assert np.allclose(index.attributes[target].sum(axis=1), 1, atol=1e-4)


def test_uploaded_photo_gets_probabilities_from_the_full_probes(index):
    row = product_row(index.catalog, "13683")
    query = describe_photo(index, row["image_path"])
    for target, probabilities in query.attributes.items():
        classes = index.attribute_models[target].classes
        assert classes[probabilities.argmax()] == row[target]


def test_photos_described_together_get_what_each_gets_alone(index):
    """The batched description (held-out evaluation) is the upload path: same vector, colours and probabilities."""
    photos = [product_row(index.catalog, pid)["image_path"] for pid in ("13683", *index.catalog["ProductId"].iloc[[5, 900]])]
    together = describe_photos(index, photos, batch_size=2)  # a full batch and a part one
    for photo, query in zip(photos, together, strict=True):
        alone = describe_photo(index, photo)
        assert np.abs(query.vector - alone.vector).max() < 1e-4
        assert np.array_equal(query.colour, alone.colour) and query.doubt == alone.doubt
        for target, probabilities in alone.attributes.items():
            assert np.abs(query.attributes[target] - probabilities).max() < 1e-4
    assert describe_photos(index, []) == []


@pytest.fixture
def small(catalog_copy, settings, tmp_path):
    catalog = load_catalog(catalog_copy)
    features = extract_features(catalog, default_recipe(settings), artifacts_dir=tmp_path, progress=False)
    return catalog, features


def test_probes_are_cached_beside_the_features_and_reused(small):
    catalog, features = small
    first = fit_attribute_probes(catalog, features)
    assert len(list(features.cache_dir.glob("attributes-*.npz"))) == 1
    second = fit_attribute_probes(catalog, features, fit=lambda *args: pytest.fail("refitted although cached"))
    for target in ATTRIBUTE_PROBES:
        assert np.array_equal(first[0][target], second[0][target])


def test_changed_labels_refit_the_probes(small):
    catalog, features = small
    fit_attribute_probes(catalog, features)
    relabelled = catalog.copy()
    relabelled.loc[0, "Colour"] = "Purple" if relabelled.loc[0, "Colour"] != "Purple" else "Black"
    out_of_fold, models = fit_attribute_probes(relabelled, features)
    assert len(list(features.cache_dir.glob("attributes-*.npz"))) == 2
    assert relabelled.loc[0, "Colour"] in models["Colour"].classes


def test_damaged_probe_file_is_refitted(small):
    catalog, features = small
    fit_attribute_probes(catalog, features)
    path = next(features.cache_dir.glob("attributes-*.npz"))
    path.write_bytes(b"garbage")
    with pytest.warns(FeatureCacheWarning, match="damaged"):
        out_of_fold, _ = fit_attribute_probes(catalog, features)
    assert out_of_fold["ProductType"].shape[0] == len(features)


def test_small_catalogues_and_reference_features_search_without_probes(small):
    catalog, features = small
    assert build_index(catalog, features).attributes is None  # fewer than ATTRIBUTE_MIN_PRODUCTS
    forced = build_index(catalog, features, attributes=True)
    assert set(forced.attributes) == set(ATTRIBUTE_PROBES)


def test_folds_follow_the_photo_so_copies_share_one_and_products_keep_theirs(catalog):
    folds = stable_folds(catalog["image_sha256"])
    copies = catalog.assign(fold=folds).groupby("duplicate_group")["fold"].nunique()
    assert (copies == 1).all() and (catalog["is_duplicate"]).any()
    assert np.bincount(folds, minlength=ATTRIBUTE_FOLDS).min() > len(catalog) / 8  # no fold is starved
    fewer = catalog.sample(frac=0.5, random_state=0)  # half the catalogue leaves: the rest stay put
    assert np.array_equal(stable_folds(fewer["image_sha256"]), folds[fewer.index.to_numpy()])


def _subset(features, keep, cache_dir):
    return dataclasses.replace(features, ids=features.ids[keep], vectors=features.vectors[keep],
                               colours=features.colours[keep], cache_dir=cache_dir)


def test_added_products_update_the_earlier_probes_as_well_as_a_fresh_fit(catalog, features, tmp_path):
    added = np.random.default_rng(0).choice(len(features), 10, replace=False)
    before = np.setdiff1d(np.arange(len(features)), added)
    fit_attribute_probes(catalog, _subset(features, before, tmp_path))
    starts = []

    def fit(inputs, labels, C, classes, start):
        starts.append(start)
        return fit_probe(inputs, labels, C, classes, start)

    everything = np.arange(len(features))
    updated, _ = fit_attribute_probes(catalog, _subset(features, everything, tmp_path), fit=fit)
    assert len(starts) == len(ATTRIBUTE_PROBES) * (ATTRIBUTE_FOLDS + 1) and all(s is not None for s in starts)
    fresh, models = fit_attribute_probes(catalog, _subset(features, everything, None))
    rows = catalog.set_index("ProductId").loc[features.ids]
    for target, model in models.items():
        labels = rows[target].to_numpy(dtype=str)
        assert abs(_accuracy(updated[target], model.classes, labels) - _accuracy(fresh[target], model.classes, labels)) < 0.01
        assert _accuracy(updated[target][added], model.classes, labels[added]) >= 0.5  # the new products too


def test_probe_accuracy_reports_the_out_of_fold_score_beside_the_most_common_label(index):
    table = probe_accuracy(index)
    for target, model in index.attribute_models.items():
        labels = index.catalog[target].to_numpy(dtype=str)
        assert table.loc[target, "accuracy"] == pytest.approx(_accuracy(index.attributes[target], model.classes, labels))
        assert table.loc[target, "accuracy"] <= table.loc[target, "top-3 accuracy"]
        # the probes learn: far better than always guessing the most common label
        assert table.loc[target, "accuracy"] > table.loc[target, "always guessing it"] + 0.2
        assert table.loc[target, "most common label"] == index.catalog[target].value_counts().index[0]


def test_probe_guesses_for_13683_come_from_probes_that_never_saw_it(index):
    guesses = probe_guesses(index, "13683", top=3)
    position = index.positions["13683"]
    for target, model in index.attribute_models.items():
        rows = guesses.loc[target]
        assert list(rows.index) == [1, 2, 3] and rows["probability"].is_monotonic_decreasing
        best = model.classes[index.attributes[target][position].argmax()]  # the out-of-fold row, not the full probe's
        assert rows.loc[1, "label"] == best
        assert rows.loc[1, "is its label"] == (best == index.catalog[target].iloc[position])
    with pytest.raises(SettingsError, match="not in this index"):
        probe_guesses(index, "no-such-product")


def test_an_index_without_probes_says_so(index):
    bare = dataclasses.replace(index, attributes=None, attribute_models=None)
    with pytest.raises(SettingsError, match="no attribute probes"):
        probe_accuracy(bare)
