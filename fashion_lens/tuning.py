"""Teach the network this catalogue: fine-tune the backbone's top blocks on the catalogue's own labels.

The ImageNet network was never shown what matters here (a Tshirt is not a Top, Navy Blue is not
Blue). Tuning trains its top blocks, with one softmax head per label (ProductType, Colour,
SubCategory) on the pooled feature map, then throws the heads away: the tuned backbone is one more
recipe (its weights file), so its descriptors go through the same feature cache, index, search,
widget and app unchanged.

It runs on a CPU in minutes: the photos go once through the frozen lower blocks and those
activations are cached; only the top blocks train, on mirrored and shifted copies of them (shape
augmentations only: colour is a label, so it is never jittered). It is deterministic with a seed,
and saved with a manifest of what it learnt from (products, photos, labels, recipe, settings and
code version): nothing retrains when nothing changed.

Serving it is a setting: with weights="tuned" (FASHION_LENS_WEIGHTS=tuned), serving_recipe, which
load_index calls, tunes on every labelled product of the catalogue being served (the first time)
and returns the tuned recipe. Evaluation instead tunes on the training split only (chapter 06).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import SettingsError
from .feature_cache import prepare_photo
from .features import FeatureRecipe, default_recipe, import_keras, in_batches, load_backbone, preprocess_batch, resolve_recipe
from .settings import ENVIRONMENT_VARIABLES, TUNED_WEIGHTS, Settings, get_settings
from .storage import atomic_write, file_sha256, folder_lock, writable_dir

TUNING_VERSION = "top-blocks-multitask-cosine-v3"
TUNED_LABELS = ("ProductType", "Colour", "SubCategory")
# Where the frozen lower blocks end: the last 14x14 block; everything after it (the 7x7 blocks and
# the last convolution, most of the weights) is tuned.
CUT_LAYERS = {"mobilenet_v2": "block_12_add", "resnet50": "conv4_block6_out"}
WEIGHTS_FILE = "backbone.weights.h5"
SPLITS = ("train", "dev", "test")
# Serving a tuned network (weights="tuned") needs this many products carrying each label: with fewer,
# the heads learn the few products by heart and the tuned descriptors serve worse than ImageNet's.
TUNING_MIN_PRODUCTS = 200


@dataclasses.dataclass(frozen=True)
class TuningConfig:
    """How the top blocks are tuned (chosen on the development split; see chapter 06)."""

    epochs: int = 15
    learning_rate: float = 3e-4
    batch_size: int = 32
    dropout: float = 0.3
    label_smoothing: float = 0.1
    seed: int = 0


@dataclasses.dataclass
class TunedNetwork:
    """A tuned backbone: its weights file, the recipe that uses it and what it learnt from."""

    weights: Path
    recipe: FeatureRecipe
    manifest: dict

    @property
    def history(self) -> pd.DataFrame:
        """Per epoch: the training loss, and each label's accuracy on the validation products."""
        return pd.DataFrame(self.manifest["history"]).rename_axis("epoch")


def split_by_group(catalog: pd.DataFrame, dev: float = 0.2, test: float = 0.2, seed: int = 0) -> pd.Series:
    """"train", "dev" or "test" for each product, by a seeded hash of its photo: byte-identical
    copies always land on the same side, and a product keeps its side when others join or leave.
    Settings are chosen on "dev"; figures are reported on "test", which no training step sees."""
    if not (0 <= dev and 0 <= test and dev + test < 1):
        raise SettingsError(f"dev ({dev}) and test ({test}) are shares of the catalogue: each at least 0, together below 1.")
    place = np.array([int(hashlib.sha256(f"{seed}:{photo}".encode()).hexdigest()[:12], 16) / 16 ** 12
                      for photo in catalog["image_sha256"]])
    return pd.Series(np.where(place < test, "test", np.where(place < test + dev, "dev", "train")),
                     index=catalog.index, name="split")


def tuned_dir(settings: Settings | None = None) -> Path:
    return (settings or get_settings()).artifacts_dir / "tuned"


def tune_network(catalog: pd.DataFrame, settings: Settings | None = None, *, config: TuningConfig = TuningConfig(),
                 validation: pd.DataFrame | None = None, progress: bool = True, train=None) -> TunedNetwork:
    """Fine-tune the backbone's top blocks on the labels of every product in `catalog` (pass only
    the training products to keep others unseen), or reuse the tuning already saved for exactly
    these products, photos, labels and settings.

    Args:
        catalog: the products to learn from (ProductType, Colour and SubCategory labels).
        settings: backbone, starting weights (weights="tuned" starts from ImageNet's) and artifacts
            folder (default: get_settings()).
        config: epochs, learning rate and the rest (TuningConfig).
        validation: products whose accuracy is recorded after each epoch (the learning curves);
            never trained on.
        progress: say when tuning starts, then show progress bars (the photos' lower-block pass, the epochs,
            each with an estimate of the time left and the epochs with the latest dev accuracies).
        train: trains the network (train_top_blocks unless a test injects another).

    >>> tuned = tune_network(catalog[split == "train"], validation=catalog[split == "dev"])  # doctest: +SKIP
    >>> index = load_index(catalog, recipe=tuned.recipe)  # doctest: +SKIP
    """
    settings = settings or get_settings()
    if settings.weights == TUNED_WEIGHTS:  # "tuned" means ImageNet's weights, tuned: start from them
        settings = dataclasses.replace(settings, weights="imagenet")
    base = resolve_recipe(default_recipe(settings))
    if base.backbone not in CUT_LAYERS:
        raise SettingsError(f"Tuning knows the backbones {', '.join(CUT_LAYERS)}, not {base.backbone!r}.")
    catalog = catalog.sort_values("ProductId", kind="stable")
    labels = {target: catalog[target].fillna("").astype(str).to_numpy() for target in TUNED_LABELS}
    for target, values in labels.items():
        if len(set(values) - {""}) < 2:
            raise SettingsError(f"Tuning needs at least two {target} labels among the products; "
                                f"found {sorted(set(values) - {''})}. Give more labelled products.")
    identity = {"version": TUNING_VERSION, "config": dataclasses.asdict(config), "base": base.weights_id,
                "backbone": base.backbone, "geometry": base.geometry, "preprocessing": base.preprocessing,
                "products": catalog["ProductId"].astype(str).tolist(), "photos": catalog["image_sha256"].tolist(),
                "labels": {target: values.tolist() for target, values in labels.items()},
                "validation": None if validation is None else sorted(validation["ProductId"].astype(str))}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    folder = writable_dir(tuned_dir(settings) / f"{base.backbone}-{key}")
    with folder_lock(folder):
        found = _saved(folder)
        if found is None:
            if progress:
                print(f"tuning {base.backbone} on {len(catalog)} products (minutes; saved in {folder}, "
                      "reused while they and their labels stay the same)", flush=True)
            started = time.perf_counter()
            history = (train or train_top_blocks)(catalog, labels, base, config, validation, folder / WEIGHTS_FILE, progress)
            manifest = {"version": TUNING_VERSION, "key": key, "config": dataclasses.asdict(config),
                        "base": base.weights_id, "products": len(catalog),
                        "validation_products": 0 if validation is None else len(validation),
                        "trained_ids": identity["products"], "history": history,
                        "seconds": round(time.perf_counter() - started, 1),
                        "weights_sha256": file_sha256(folder / WEIGHTS_FILE)}
            with atomic_write(folder / "manifest.json", "w") as out:
                json.dump(manifest, out, indent=1)
            found = manifest
    weights = folder / WEIGHTS_FILE
    return TunedNetwork(weights, default_recipe(settings, weights=str(weights)), found)


def serving_recipe(catalog: pd.DataFrame, settings: Settings | None = None, *, progress: bool = True,
                   tune=tune_network) -> FeatureRecipe:
    """The recipe that serves `catalog` with these settings: default_recipe(settings), except with
    weights="tuned", where it is the recipe of the backbone tuned on every labelled product of
    `catalog` (tune_network: tuned and saved on the first call, reused while the products, photos,
    labels and settings stay the same). A catalogue too poorly labelled to tune raises SettingsError.

    Args:
        catalog: the catalogue being served (load_catalog).
        settings: backbone, weights and artifacts folder (default: get_settings()).
        progress: print what tuning does (only when it has to tune).
        tune: tunes the network (tune_network unless a test injects another).

    >>> recipe = serving_recipe(catalog, get_settings(weights="tuned"))  # doctest: +SKIP
    >>> index = load_index(catalog, get_settings(weights="tuned"))  # doctest: +SKIP
    """
    settings = settings or get_settings()
    if settings.weights != TUNED_WEIGHTS:
        return default_recipe(settings)
    labelled = catalog[tuning_labels(catalog).ne("").any(axis=1)]
    check_tunable(labelled)
    return tune(labelled, settings, progress=progress).recipe


def tuning_labels(catalog: pd.DataFrame) -> pd.DataFrame:
    """The labels tuning learns (TUNED_LABELS) of each product, "" where missing."""
    return pd.DataFrame({target: (catalog[target].fillna("").astype(str) if target in catalog
                                  else pd.Series("", index=catalog.index)) for target in TUNED_LABELS})


def check_tunable(catalog: pd.DataFrame, min_products: int = TUNING_MIN_PRODUCTS) -> None:
    """Refuse (SettingsError) to tune for serving on a catalogue with fewer than `min_products`
    products carrying one of TUNED_LABELS, or with a single value of one: saying what to do."""
    labels = tuning_labels(catalog)
    problems = []
    for target in TUNED_LABELS:
        given = labels[target][labels[target] != ""]
        classes = sorted(set(given))
        if len(given) < min_products:
            problems.append(f"{len(given)} products have a {target} (at least {min_products} are needed)")
        elif len(classes) < 2:
            problems.append(f"every {target} is {classes[0]!r} (a label with one value teaches nothing)")
    if problems:
        raise SettingsError(
            f"Cannot tune the network on this catalogue ({ENVIRONMENT_VARIABLES['weights']}=tuned): "
            + "; ".join(problems) + f". Label more products (each of {', '.join(TUNED_LABELS)}, with at least "
            f"two values), or serve the ImageNet network: {ENVIRONMENT_VARIABLES['weights']}=imagenet "
            "(or weights='imagenet')."
        )


def _saved(folder: Path) -> dict | None:
    """The manifest of a finished tuning in `folder` whose weights file is intact, else None."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        return manifest if file_sha256(folder / WEIGHTS_FILE) == manifest["weights_sha256"] else None
    except (OSError, ValueError, KeyError):
        return None


def lower_activations(catalog: pd.DataFrame, recipe: FeatureRecipe, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The frozen lower blocks' output for every usable photo (float16, N x 14 x 14 x C), and which
    products had one (a photo that cannot be read is left out, as extraction does). Computed once
    per tuning, so each epoch runs only the top blocks. Photos are squared exactly as for descriptors."""
    import tensorflow as tf

    keras = import_keras()
    backbone = load_backbone(recipe.backbone, recipe.weights)
    lower = keras.Model(backbone.input, backbone.get_layer(CUT_LAYERS[recipe.backbone]).output)
    call = tf.function(lambda batch: lower(batch, training=False))
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        prepared = list(pool.map(lambda path: prepare_photo(path, recipe), catalog["image_path"]))
    usable = np.array([error is None for _, error in prepared])
    pixels = np.stack([result[0] for result, error in prepared if error is None])
    activations = in_batches(lambda batch: np.asarray(call(preprocess_batch(batch, recipe))).astype(np.float16), pixels, 32,
                             desc="photos through the frozen lower blocks", progress=progress)
    return activations, usable


def train_top_blocks(catalog: pd.DataFrame, labels: dict, recipe: FeatureRecipe, config: TuningConfig,
                     validation: pd.DataFrame | None, destination: Path, progress: bool) -> dict:
    """Train the backbone's top blocks with one softmax head per label, save the whole backbone's
    weights to `destination` (atomically) and return the history (loss and validation accuracy
    per epoch)."""
    import tensorflow as tf
    from tqdm.auto import tqdm

    keras = import_keras()
    # a fresh copy of the starting network: the shared one (load_backbone) stays untouched
    start = keras.applications.MobileNetV2 if recipe.backbone == "mobilenet_v2" else keras.applications.ResNet50
    shared = load_backbone(recipe.backbone, recipe.weights)
    # seeded after the shared network is loaded: building it on a first call draws random numbers,
    # which would give the heads other starting weights than a later tuning in the same process
    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
    backbone = start(include_top=False, weights=None, input_shape=shared.input_shape[1:])
    backbone.set_weights(shared.get_weights())
    cut = backbone.get_layer(CUT_LAYERS[recipe.backbone]).output
    top = keras.Model(cut, backbone.output)
    for layer in top.layers:  # batch statistics stay ImageNet's: a small catalogue would shake them
        layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)

    classes = {target: np.unique(values[values != ""]) for target, values in labels.items()}
    inputs = keras.Input(top.input_shape[1:])
    augmented = keras.layers.RandomFlip("horizontal", seed=config.seed)(inputs)
    augmented = keras.layers.RandomTranslation(0.08, 0.08, fill_mode="nearest", seed=config.seed)(augmented)
    pooled = keras.layers.GlobalAveragePooling2D()(top(augmented, training=False))
    pooled = keras.layers.Dropout(config.dropout, seed=config.seed)(pooled)
    heads = {target: keras.layers.Dense(len(classes[target]), name=target)(pooled) for target in TUNED_LABELS}
    model = keras.Model(inputs, heads)
    # the learning rate falls along a cosine to zero by the last epoch: the last epochs settle instead of jumping
    steps = config.epochs * -(-len(catalog) // config.batch_size)
    model.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(config.learning_rate, steps)),
                  loss={target: _masked_loss(keras, config.label_smoothing, len(classes[target])) for target in TUNED_LABELS})

    def encode(frame: pd.DataFrame) -> dict:
        codes = {}
        for target in TUNED_LABELS:
            values = frame[target].fillna("").astype(str).to_numpy()
            found = np.searchsorted(classes[target], values)
            known = (found < len(classes[target])) & (classes[target][np.minimum(found, len(classes[target]) - 1)] == values)
            codes[target] = np.where(known, found, -1).astype(np.int32)  # -1: no label, or one training never saw
        return codes

    activations, usable = lower_activations(catalog, recipe, progress)
    activations = activations.astype(np.float32)  # once: 75 KB per photo, read every epoch
    targets = {target: codes[usable] for target, codes in encode(catalog).items()}
    held_out = None
    if validation is not None and len(validation):
        seen, usable = lower_activations(validation, recipe, progress)
        held_out = (seen.astype(np.float32), {target: codes[usable] for target, codes in encode(validation).items()})
    history = []
    # the order of each epoch is drawn here, from the seed: fit's own shuffling draws from TensorFlow's
    # process-wide random state, which a tuning earlier in the same process has moved on
    order = np.random.default_rng(config.seed)
    epochs = tqdm(range(config.epochs), desc="tuning", unit="epoch", disable=not progress)  # its estimate: time left
    for _ in epochs:
        shuffled = order.permutation(len(activations))
        fitted = model.fit(activations[shuffled], {target: codes[shuffled] for target, codes in targets.items()},
                           batch_size=config.batch_size, epochs=1, shuffle=False, verbose=0)
        row = {"loss": float(fitted.history["loss"][0])}
        if held_out is not None:
            predicted = model.predict(held_out[0], batch_size=64, verbose=0)
            for target in TUNED_LABELS:
                known = held_out[1][target] >= 0
                row[f"{target} accuracy"] = float((predicted[target].argmax(axis=1)[known] == held_out[1][target][known]).mean())
        history.append(row)
        epochs.set_postfix({name.replace(" accuracy", ""): f"{value:.3f}" for name, value in row.items()})
    temporary = destination.with_name(f".{uuid.uuid4().hex}-{destination.name}")  # Keras wants the .weights.h5 ending
    try:
        backbone.save_weights(temporary)
        os.replace(temporary, destination)  # all or nothing: a killed run leaves no half-written weights
    finally:
        temporary.unlink(missing_ok=True)
    return {name: [row.get(name) for row in history] for name in history[0]}


def _masked_loss(keras, smoothing: float, classes: int):
    """Softmax cross-entropy that ignores products without this label (code -1)."""
    import tensorflow as tf

    def loss(codes, logits):
        codes = tf.reshape(tf.cast(codes, tf.int32), [-1])
        known = tf.cast(codes >= 0, logits.dtype)
        target = tf.one_hot(tf.maximum(codes, 0), classes) * (1 - smoothing) + smoothing / classes
        per_product = keras.losses.categorical_crossentropy(target, logits, from_logits=True)
        return tf.reduce_sum(per_product * known) / tf.maximum(tf.reduce_sum(known), 1.0)

    return loss
