"""Tuning the network on the catalogue's labels, and the held-out protocol that measures it."""

import dataclasses
import functools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fashion_lens.catalog import sample_catalog
from fashion_lens.errors import SettingsError
from fashion_lens.evaluation import evaluate_uploads, heldout_index
from fashion_lens.features import default_recipe, embed_images, import_keras, load_backbone
from fashion_lens.index import load_index
from fashion_lens.settings import get_settings
from fashion_lens.tuning import TUNING_MIN_PRODUCTS, TuningConfig, serving_recipe, split_by_group, tune_network


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


TINY_CONFIG = TuningConfig(epochs=1, batch_size=16)


@pytest.fixture(scope="module")
def tiny(catalog, settings, tmp_path_factory):
    """A small sample split three ways, and settings that tune into a private folder."""
    sample = sample_catalog(catalog, per_gender=30)
    return sample, split_by_group(sample), dataclasses.replace(settings, artifacts_dir=tmp_path_factory.mktemp("tuned"))


@pytest.fixture(scope="module")
def tuned_once(tiny):
    """One real tuning of the tiny sample's training products (one epoch), with the dev products as validation."""
    sample, split, settings = tiny
    return tune_network(sample[split == "train"], settings, config=TINY_CONFIG, validation=sample[split == "dev"],
                        progress=False)


def test_tuning_learns_from_the_training_products_only_and_is_reused(tiny, tuned_once, catalog, tmp_path):
    sample, split, settings = tiny
    config = TINY_CONFIG
    train, dev = sample[split == "train"], sample[split == "dev"]
    tuned = tuned_once
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
    tune_network(relabelled, dataclasses.replace(settings, artifacts_dir=tmp_path), config=config, validation=dev,
                 progress=False, train=record)
    assert len(calls) == 1  # a changed label retrains


def test_tuning_is_deterministic_and_changes_the_descriptors(tiny, tuned_once, tmp_path):
    sample, split, settings = tiny
    first = tuned_once
    second = tune_network(sample[split == "train"], dataclasses.replace(settings, artifacts_dir=tmp_path / "again"),
                          config=TINY_CONFIG, validation=sample[split == "dev"], progress=False)
    assert second.weights != first.weights  # tuned afresh in its own folder
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


# ---- weights="tuned": the network tuned on the served catalogue, as a setting ------------------

def test_weights_tuned_serves_the_network_tuned_on_every_labelled_product_and_reuses_it(catalog, settings, tmp_path):
    sample = sample_catalog(catalog, per_gender=50)  # 200 products, each with all three labels
    assert len(sample) >= TUNING_MIN_PRODUCTS
    served = get_settings(weights="tuned", artifacts_dir=tmp_path)
    trained_on = []

    def stand_in_trainer(products, labels, recipe, config, validation, destination, progress):
        """What train_top_blocks leaves, in seconds: the whole backbone's weights, its top convolution
        changed (train_top_blocks itself is tested above)."""
        trained_on.append(set(products["ProductId"]))
        network = import_keras().applications.MobileNetV2(include_top=False, weights=None, input_shape=(224, 224, 3))
        network.set_weights(load_backbone(recipe.backbone, recipe.weights).get_weights())
        top = network.get_layer("Conv_1")
        rng = np.random.default_rng(config.seed)
        top.set_weights([weights * rng.uniform(0.0, 2.0, weights.shape).astype(weights.dtype)
                         for weights in top.get_weights()])
        network.save_weights(destination)
        return {"loss": [0.0]}

    tune = functools.partial(tune_network, train=stand_in_trainer)
    index = load_index(sample, served, progress=False, tune=tune)
    assert trained_on == [set(sample["ProductId"])]  # tuned once, on every labelled product
    tuned_file = Path(index.recipe.weights)
    assert tuned_file.is_file() and tuned_file.parent.parent == tmp_path / "tuned"
    assert index.recipe.weights_id.startswith(f"{tuned_file.name}:sha256=")
    assert index.recipe == dataclasses.replace(default_recipe(settings, weights=str(tuned_file)),
                                               weights_id=index.recipe.weights_id)
    photos = sample["image_path"].head(4).tolist()
    served_vectors = index.vectors[[index.positions[pid] for pid in sample["ProductId"].head(4)]]
    assert np.allclose(served_vectors, embed_images(photos, index.recipe).astype(np.float32), atol=1e-3)
    imagenet = embed_images(photos, default_recipe(settings)).astype(np.float32)
    assert (np.einsum("ij,ij->i", served_vectors, imagenet) < 0.99).all()  # not the ImageNet descriptors

    again = load_index(sample, served, progress=False, tune=tune)
    assert len(trained_on) == 1  # the saved tuning is reused: no retraining
    assert again.recipe == index.recipe and np.array_equal(again.vectors, index.vectors)
    assert serving_recipe(sample, served, tune=tune) == dataclasses.replace(index.recipe, weights_id=None)
    assert serving_recipe(sample, settings) == default_recipe(settings)  # other weights: as before


def test_weights_tuned_refuses_a_catalogue_too_poorly_labelled_to_tune(catalog, tmp_path):
    served = get_settings(weights="tuned", artifacts_dir=tmp_path)
    never = functools.partial(tune_network, train=lambda *args: pytest.fail("tuned a catalogue it should refuse"))
    sample = sample_catalog(catalog, per_gender=60)
    few = sample_catalog(catalog, per_gender=10)
    with pytest.raises(SettingsError, match=rf"40 products have a ProductType \(at least {TUNING_MIN_PRODUCTS}") as raised:
        load_index(few, served, progress=False, tune=never)
    assert "FASHION_LENS_WEIGHTS=imagenet" in str(raised.value)
    unlabelled = sample.assign(Colour=sample["Colour"].where(sample.index < 100, ""))
    with pytest.raises(SettingsError, match="100 products have a Colour"):
        load_index(unlabelled, served, progress=False, tune=never)
    with pytest.raises(SettingsError, match="every SubCategory is 'Topwear'.*FASHION_LENS_WEIGHTS=imagenet"):
        load_index(sample.assign(SubCategory="Topwear"), served, progress=False, tune=never)
    assert not (tmp_path / "features").exists()  # refused before any photo was described
