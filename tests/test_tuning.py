"""Tuning the network on the catalogue's labels, and the held-out protocol that measures it."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from fashion_lens.catalog import sample_catalog
from fashion_lens.errors import SettingsError
from fashion_lens.evaluation import evaluate_uploads, heldout_index
from fashion_lens.features import default_recipe, embed_images
from fashion_lens.tuning import TuningConfig, split_by_group, tune_network


def test_split_keeps_copies_on_one_side_and_products_on_theirs(catalog):
    split = split_by_group(catalog)
    assert catalog.assign(split=split).groupby("duplicate_group")["split"].nunique().max() == 1
    assert catalog["is_duplicate"].any()  # there are copies to keep together
    shares = split.value_counts(normalize=True)
    assert 0.15 < shares["test"] < 0.25 and 0.15 < shares["dev"] < 0.25
    fewer = catalog.sample(frac=0.5, random_state=0)
    assert split_by_group(fewer).equals(split[fewer.index])  # others leaving moves no product
    assert not split_by_group(catalog, seed=1).equals(split)
    with pytest.raises(SettingsError, match="together below 1"):
        split_by_group(catalog, dev=0.5, test=0.5)


@pytest.fixture
def tiny(catalog, settings, tmp_path):
    """A small sample split three ways, and settings that tune into a private folder."""
    sample = sample_catalog(catalog, per_gender=40)
    return sample, split_by_group(sample), dataclasses.replace(settings, artifacts_dir=tmp_path)


def test_tuning_learns_from_the_training_products_only_and_is_reused(tiny, catalog):
    sample, split, settings = tiny
    config = TuningConfig(epochs=1, batch_size=16)
    train, dev = sample[split == "train"], sample[split == "dev"]
    tuned = tune_network(train, settings, config=config, validation=dev, progress=False)
    trained = set(tuned.manifest["trained_ids"])
    assert trained == set(train["ProductId"])
    held_out = catalog[catalog["image_sha256"].isin(sample.loc[split != "train", "image_sha256"])]
    assert trained.isdisjoint(held_out["ProductId"])  # no dev or test product, nor any copy of one
    assert set(tuned.history.columns) == {"loss", "ProductType accuracy", "Colour accuracy", "SubCategory accuracy"}

    again = tune_network(train, settings, config=config, validation=dev, progress=False,
                         train=lambda *args: pytest.fail("retrained although nothing changed"))
    assert again.weights == tuned.weights and again.manifest == tuned.manifest

    calls = []

    def record(products, labels, recipe, config, validation, destination, progress):
        calls.append(labels["Colour"][0])
        destination.write_bytes(b"stand-in weights")
        return {"loss": [0.0]}

    relabelled = train.assign(Colour=train["Colour"].where(train.index != train.index[0], "Purple"))
    tune_network(relabelled, settings, config=config, validation=dev, progress=False, train=record)
    assert len(calls) == 1  # a changed label retrains


def test_tuning_is_deterministic_and_changes_the_descriptors(tiny, tmp_path):
    sample, split, settings = tiny
    config = TuningConfig(epochs=1, batch_size=16)
    train = sample[split == "train"]
    first = tune_network(train, settings, config=config, progress=False)
    second = tune_network(train, dataclasses.replace(settings, artifacts_dir=tmp_path / "again"), config=config,
                          progress=False)
    photo = sample["image_path"].iloc[0]
    tuned, repeated = (embed_images([photo], network.recipe) for network in (first, second))
    assert np.allclose(tuned, repeated, atol=1e-5)
    untuned = embed_images([photo], default_recipe(settings))
    assert float(tuned[0] @ untuned[0]) < 0.999  # the weights really moved


def test_held_out_uploads_are_searched_against_an_index_without_them(catalog, features, settings):
    split = split_by_group(catalog)
    index = heldout_index(catalog, split, "test", default_recipe(settings), artifacts_dir=settings.artifacts_dir)
    assert not set(index.catalog["image_sha256"]) & set(catalog.loc[split == "test", "image_sha256"])
    queries = sample_catalog(catalog[split == "test"], per_gender=25)
    table = evaluate_uploads(index, queries)
    assert list(table.index) == ["network only (w = 0)", "default"]
    assert table.loc["network only (w = 0)", "P@5 ProductType"] > 0.5
    # the probes, trained on the indexed products' labels, lift colour well beyond the network alone
    assert table.loc["default", "P@5 Colour"] > table.loc["network only (w = 0)", "P@5 Colour"] + 0.1
    with pytest.raises(SettingsError, match="also in the index"):
        evaluate_uploads(index, pd.concat([queries, index.catalog.head(2)]))
