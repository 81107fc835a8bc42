"""Features: the recipe that turns a photo into a descriptor, the backbone network, pooling.

A FeatureRecipe names every choice that changes the numbers; the feature cache is keyed by it.
"""

from __future__ import annotations

import dataclasses
import functools
import http.client
import os
import sys
import threading
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .errors import SettingsError, WeightsError
from .images import GEOMETRIES, IMAGE_SIZE, load_image, to_square
from .settings import BACKBONES, ENVIRONMENT_VARIABLES, RANDOM_WEIGHTS, TUNED_WEIGHTS, Settings, get_settings
from .storage import atomic_write, file_sha256

POOLINGS = ("gap", "grid2x2", "flatten")
PREPROCESSINGS = ("backbone", "rescale")
# "cosine": descriptors are L2-normalised and compared by dot product (the project);
# "euclidean": raw descriptors compared by Euclidean distance (the article's pairwise_distances)
METRICS = ("cosine", "euclidean")
KERAS_WEIGHT_FILES = {
    "resnet50": "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "mobilenet_v2": "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
}
# Where Keras itself downloads them (keras.applications); the download is done here, with time limits.
KERAS_WEIGHT_URLS = {
    "resnet50": "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + KERAS_WEIGHT_FILES["resnet50"],
    "mobilenet_v2": "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
                    + KERAS_WEIGHT_FILES["mobilenet_v2"],
}
DOWNLOAD_TIMEOUT = 30    # seconds without an answer (connecting or reading) before a download gives up
DOWNLOAD_DEADLINE = 900  # seconds for the whole file (ResNet50's is 94 MB)


@dataclasses.dataclass(frozen=True)
class FeatureRecipe:
    """Everything that decides the numbers in a feature vector; the cache is keyed by it.

    The project's default: ImageNet backbone with its own preprocess_input, photo cropped to the
    product and padded to a square on white, feature map pooled over a 2x2 grid (keeps the
    garment's layout), L2-normalised and compared by cosine, batches of 32, stored as float16.
    reference_recipe() gives the article's recipe instead; each field can be changed alone.

    >>> FeatureRecipe(backbone="mobilenet_v2", pooling="gap").name
    'mobilenet_v2-crop-backbone-gap-cosine'
    """

    backbone: str = "resnet50"
    weights: str = "imagenet"      # "imagenet", "random" or a weights file's path ("tuned" is resolved to one first)
    geometry: str = "crop"
    preprocessing: str = "backbone"  # "backbone": the network's own preprocess_input; "rescale": pixels / 255
    pooling: str = "grid2x2"
    metric: str = "cosine"
    batch_size: int = 32           # photos per network call (the article: 1, through model.predict)
    image_size: int = IMAGE_SIZE
    dtype: str = "float16"
    weights_id: str | None = None  # set by resolve_recipe: the weights file's name and hash

    @property
    def name(self) -> str:
        return f"{self.backbone}-{self.geometry}-{self.preprocessing}-{self.pooling}-{self.metric}"

    def check(self) -> FeatureRecipe:
        choices = {"backbone": BACKBONES, "geometry": GEOMETRIES, "preprocessing": PREPROCESSINGS,
                   "pooling": POOLINGS, "metric": METRICS, "dtype": ("float16", "float32")}
        for field, allowed in choices.items():
            if getattr(self, field) not in allowed:
                raise SettingsError(f"Unknown {field} {getattr(self, field)!r}; choose one of {', '.join(allowed)}.")
        if self.weights == TUNED_WEIGHTS:
            raise SettingsError(unresolved_tuned_message())
        if self.image_size != IMAGE_SIZE:
            raise SettingsError(f"image_size must be {IMAGE_SIZE}: the weights on offer are trained at that size.")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise SettingsError(f"batch_size must be a whole number of photos (1 or more), got {self.batch_size!r}.")
        return self


def default_recipe(settings: Settings | None = None, **changes) -> FeatureRecipe:
    """The project's recipe for the configured backbone and weights; keyword arguments change fields.
    With weights="tuned" it raises SettingsError: that network depends on the catalogue, so
    tuning.serving_recipe(catalog, settings) (or load_index) resolves it.

    >>> default_recipe(get_settings(backbone="mobilenet_v2"), pooling="gap").pooling
    'gap'
    """
    settings = settings or get_settings()
    return dataclasses.replace(FeatureRecipe(backbone=settings.backbone, weights=settings.weights), **changes).check()


def reference_recipe(settings: Settings | None = None) -> FeatureRecipe:
    """The reference article's recipe: stretch (nearest), pixels / 255, the 7x7xC map flattened,
    Euclidean distance, one photo per network call, float32.

    >>> reference_recipe(get_settings(backbone="mobilenet_v2")).metric
    'euclidean'
    """
    return default_recipe(settings, geometry="stretch", preprocessing="rescale", pooling="flatten",
                          metric="euclidean", batch_size=1, dtype="float32")


def one_change_path(start: FeatureRecipe, steps) -> dict[str, FeatureRecipe]:
    """{row name: recipe}: `start`, then each (field, value) of `steps` applied in turn, so that every
    recipe differs from the one before it in exactly one field: an ablation whose rows can be read
    one change at a time.

    >>> path = one_change_path(default_recipe(pooling="gap"), [("pooling", "grid2x2")])  # doctest: +SKIP
    >>> list(path)  # doctest: +SKIP
    ['start', 'pooling → grid2x2']
    """
    path, recipe = {"start": start.check()}, start
    for field, value in steps:
        if field not in {item.name for item in dataclasses.fields(FeatureRecipe)}:
            raise SettingsError(f"A recipe has no field {field!r}; choose one of geometry, preprocessing, pooling, metric.")
        if getattr(recipe, field) == value:
            raise SettingsError(f"The step {field} → {value} changes nothing: the recipe before it already has it.")
        recipe = dataclasses.replace(recipe, **{field: value}).check()
        path[f"{field} → {value}"] = recipe
    return path


def unresolved_tuned_message() -> str:
    """Why weights="tuned" cannot be used without the catalogue, and what to call instead."""
    return (f"weights='tuned' ({ENVIRONMENT_VARIABLES['weights']}=tuned) is the backbone tuned on the labels of the "
            "catalogue being served, so only a function given the catalogue can resolve it: load_index(catalog, "
            "settings) or fashion_lens.tuning.serving_recipe(catalog, settings), which tune it on the first call and "
            "reuse it afterwards. default_recipe, reference_recipe and load_backbone get no catalogue: give them "
            "weights='imagenet', or the tuned weights file's path (serving_recipe(...).weights).")


def keras_cache_dir() -> Path:
    """Where Keras keeps downloaded weights: $KERAS_HOME/models, else ~/.keras/models.

    Keras reads KERAS_HOME once, when it is imported; after that its own answer counts."""
    config = sys.modules.get("keras.src.backend.config")
    if config is not None:
        return Path(config.keras_home()) / "models"
    home = Path.home() if os.access(Path.home(), os.W_OK) else Path("/tmp")
    return Path(os.environ.get("KERAS_HOME") or home / ".keras") / "models"


def weights_file(backbone: str, weights: str) -> Path:
    """Where the weights setting's file is: the given path, or the ImageNet file in the Keras cache."""
    return Path(weights) if weights != "imagenet" else keras_cache_dir() / KERAS_WEIGHT_FILES[backbone]


def resolve_recipe(recipe: FeatureRecipe) -> FeatureRecipe:
    """The recipe with `weights_id` filled in: the weights file's name and hash, so that a cache
    is never reused with other weights (downloads the ImageNet file first when it is missing)."""
    if recipe.weights_id is not None:
        return recipe
    if recipe.weights == RANDOM_WEIGHTS:
        return dataclasses.replace(recipe, weights_id=RANDOM_WEIGHTS)
    path = weights_file(recipe.backbone, recipe.weights)
    if not path.is_file():
        load_backbone(recipe.backbone, recipe.weights)  # downloads into the Keras cache, or explains why not
    return dataclasses.replace(recipe, weights_id=f"{path.name}:sha256={file_sha256(path)[:16]}")


_BACKBONE_LOCK = threading.Lock()  # two threads asking at once build the network once


def load_backbone(backbone: str, weights: str = "imagenet", *, weights_url: str | None = None,
                  download_timeout: float = DOWNLOAD_TIMEOUT):
    """The Keras ImageNet backbone without its classifier (include_top=False): photo -> 7x7xC feature map.

    Built once per process. With weights="imagenet", Keras reads its cache (~/.keras/models or
    $KERAS_HOME/models); a missing file is downloaded first (download_imagenet_weights, from
    `weights_url` when given), giving up after `download_timeout` seconds without an answer.
    """
    if backbone not in BACKBONES:
        raise SettingsError(f"Unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}.")
    if weights == TUNED_WEIGHTS:  # no file yet: the recipe serving_recipe resolves names it
        raise WeightsError(unresolved_tuned_message())
    with _BACKBONE_LOCK:
        if weights == "imagenet":
            download_imagenet_weights(backbone, url=weights_url, timeout=download_timeout)
        return _build_backbone(backbone, weights)


def download_imagenet_weights(backbone: str, *, url: str | None = None, folder: Path | None = None,
                              timeout: float = DOWNLOAD_TIMEOUT, deadline: float = DOWNLOAD_DEADLINE) -> Path:
    """The backbone's ImageNet weights file in the Keras cache (or `folder`), downloaded when missing.

    A server that does not answer for `timeout` seconds, or a file not complete after `deadline`
    seconds, is given up with a WeightsError that lists the fixes (as when offline). Written
    atomically: an interrupted download never leaves half a file where Keras looks.
    """
    destination = Path(folder or keras_cache_dir()) / KERAS_WEIGHT_FILES[backbone]
    if destination.is_file():
        return destination
    url = url or KERAS_WEIGHT_URLS[backbone]
    started = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, atomic_write(destination) as out:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                if time.monotonic() - started > deadline:
                    raise TimeoutError(f"the download was not complete after {deadline:g} s")
    except (OSError, http.client.HTTPException) as error:  # URLError and socket timeouts are OSErrors
        reason = getattr(error, "reason", None) or error
        if isinstance(reason, TimeoutError) and str(reason) in ("timed out", ""):
            reason = f"{url} did not answer within {timeout:g} s"
        raise WeightsError(missing_weights_message(backbone, str(reason)[:200])) from error
    return destination


def missing_weights_message(backbone: str, reason: str) -> str:
    """Why the ImageNet weights are missing and the three ways to fix it (a lighter backbone is
    suggested only to users not already on it)."""
    lighter = ("" if backbone == "mobilenet_v2" else
               f"; or use the light backbone with {ENVIRONMENT_VARIABLES['backbone']}=mobilenet_v2")
    return (f"The ImageNet weights for {backbone} are not in the Keras cache ({keras_cache_dir()}) and could not "
            f"be downloaded ({reason}). Fix one of: connect to the internet once (Keras then keeps the file); "
            f"copy {KERAS_WEIGHT_FILES[backbone]} into {keras_cache_dir()}; set {ENVIRONMENT_VARIABLES['weights']} "
            f"to the path of a weights file{lighter}.")


def import_keras():
    """Keras, with TensorFlow set up for this kind of machine before its first import."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # oneDNN kernels: TensorFlow turns them on by itself only on CPUs with AVX-512 VNNI or AMX; on an
    # AVX2 CPU they run MobileNetV2 about twice as fast, with feature maps equal to 1e-4.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    import keras

    return keras


@functools.cache
def _build_backbone(backbone: str, weights: str):
    keras = import_keras()

    build = {"resnet50": keras.applications.ResNet50, "mobilenet_v2": keras.applications.MobileNetV2}[backbone]
    try:
        return build(include_top=False, weights=None if weights == RANDOM_WEIGHTS else weights,
                     input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3))
    except Exception as error:  # Keras raises a bare Exception when the download fails
        if weights != "imagenet":
            raise WeightsError(
                f"Cannot load the {backbone} weights from {weights} ({error}). Give a weights file saved "
                f"for {backbone} with include_top=False, or use weights='imagenet'."
            ) from error
        raise WeightsError(missing_weights_message(backbone, str(error)[:200])) from error


@functools.cache
def _compiled(model):
    """The backbone as one TensorFlow graph for any batch size: about twice as fast as calling it eagerly."""
    import tensorflow as tf

    spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)
    return tf.function(lambda batch: model(batch, training=False), input_signature=[spec])


def preprocess_batch(pixels: np.ndarray, recipe: FeatureRecipe) -> np.ndarray:
    """uint8 RGB batch -> the network's input. ResNet50 expects BGR with the ImageNet mean removed
    (its own preprocess_input), MobileNetV2 expects [-1, 1]: scaling by 1/255 (the article) fits neither."""
    batch = pixels.astype(np.float32)
    if recipe.preprocessing == "rescale":
        return batch / 255.0
    keras = import_keras()
    module = {"resnet50": keras.applications.resnet50, "mobilenet_v2": keras.applications.mobilenet_v2}[recipe.backbone]
    return module.preprocess_input(batch)


def l2_normalize(vectors: np.ndarray, axis: int = -1) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=axis, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def pool_feature_maps(maps: np.ndarray, pooling: str) -> np.ndarray:
    """(N, H, W, C) feature maps -> (N, D) descriptors.

    - "gap": global average, L2-normalised (C numbers);
    - "grid2x2": averages over four overlapping quadrants, each normalised, then the whole (4C):
      the top of a garment stays apart from its bottom;
    - "flatten": every number of the map, unnormalised (the article's H*W*C numbers).
    """
    maps = np.asarray(maps, dtype=np.float32)
    if pooling == "flatten":
        return maps.reshape(len(maps), -1)
    if pooling == "gap":
        return l2_normalize(maps.mean(axis=(1, 2)))
    cells = [l2_normalize(maps[:, rows, cols, :].mean(axis=(1, 2))) for rows, cols in grid_quadrants(*maps.shape[1:3])]
    return l2_normalize(np.concatenate(cells, axis=1))


def grid_quadrants(height: int, width: int) -> list[tuple[slice, slice]]:
    """The cells of each quadrant of the grid2x2 pooling, in its order (top-left, top-right,
    bottom-left, bottom-right): adaptive pooling bounds, so with 7 cells the middle row and
    column belong to two quadrants (7 -> cells 0..3 and 3..6)."""
    def half(size: int, part: int) -> slice:
        return slice((part * size) // 2, -(-((part + 1) * size) // 2))

    return [(half(height, row), half(width, col)) for row in range(2) for col in range(2)]



def in_batches(call, pixels: np.ndarray, batch_size: int, *, desc: str, progress: bool) -> np.ndarray:
    """call(batch) over `pixels` in batches of `batch_size`, the outputs concatenated; a progress bar
    (with its estimate of the time left) when `progress`."""
    from tqdm.auto import tqdm

    outputs = []
    with tqdm(total=len(pixels), desc=desc, unit="img", disable=not progress) as bar:
        for start in range(0, len(pixels), batch_size):
            outputs.append(call(pixels[start:start + batch_size]))
            bar.update(len(outputs[-1]))
    return np.concatenate(outputs)


def run_network(pixels: np.ndarray, recipe: FeatureRecipe, *, compiled: bool = True) -> np.ndarray:
    """A batch of square uint8 photos (N, size, size, 3) -> (N, D) descriptors, as the recipe says.
    compiled=False calls the Keras model eagerly (the benchmark's "before")."""
    model = load_backbone(recipe.backbone, recipe.weights)
    batch = preprocess_batch(pixels, recipe)
    if recipe.batch_size == 1:  # the article: model.predict, one photo at a time
        maps = np.concatenate([model.predict(batch[i:i + 1], verbose=0) for i in range(len(batch))])
    else:
        maps = np.asarray(_compiled(model)(batch) if compiled else model(batch, training=False))
    return descriptors_from_maps(maps, recipe)


def descriptors_from_maps(maps: np.ndarray, recipe: FeatureRecipe) -> np.ndarray:
    """(N, H, W, C) feature maps -> (N, D) descriptors: pooled, normalised and stored as the recipe says."""
    vectors = pool_feature_maps(maps, recipe.pooling)
    if recipe.metric == "cosine":  # a dot product of unit vectors is their cosine
        vectors = l2_normalize(vectors)
    return vectors.astype(recipe.dtype)


def network_input(recipe: FeatureRecipe) -> tuple:
    """What the network sees and how it is called: recipes equal in this share one pass over the photos."""
    return (recipe.backbone, recipe.weights, recipe.weights_id, recipe.geometry, recipe.preprocessing,
            recipe.image_size, recipe.batch_size)


def maps_recipe(recipe: FeatureRecipe) -> FeatureRecipe:
    """The recipe whose descriptors are the raw feature maps (flattened, float32): pooled later, several ways."""
    return dataclasses.replace(recipe, pooling="flatten", metric="euclidean", dtype="float32")


def unflatten_maps(vectors: np.ndarray, recipe: FeatureRecipe) -> np.ndarray:
    """maps_recipe descriptors back to (N, H, W, C) maps: both backbones shrink the photo 32 times."""
    side = recipe.image_size // 32
    return vectors.reshape(len(vectors), side, side, -1)


def embed_images(images: Iterable, recipe: FeatureRecipe, network=run_network) -> np.ndarray:
    """Descriptors for a few photos (paths, bytes or PIL images), through exactly the catalogue's pipeline."""
    pixels = np.stack([to_square(load_image(image), recipe.geometry, recipe.image_size) for image in images])
    return network(pixels, recipe)
