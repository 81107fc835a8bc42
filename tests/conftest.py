"""Shared fixtures: the real catalogue, the real MobileNetV2 ImageNet weights, one feature cache.

Where the test inputs live (defaults: the workplace's shared folder beside the project):
  FASHION_LENS_TEST_CATALOG   the catalogue folder (fashion.csv + image folders), read-only
  FASHION_LENS_TEST_WEIGHTS   a folder holding mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5
  FASHION_LENS_TEST_ARTIFACTS where the tests' feature cache goes (default: a fresh temporary folder)
With CI set, a missing catalogue or weights file fails the run instead of skipping tests.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

pytest_plugins = ["browser_support"]

PROJECT_DIR = Path(__file__).resolve().parents[1]
SHARED_DIR = PROJECT_DIR.parent / "shared"
CATALOG_DIR = Path(os.environ.get("FASHION_LENS_TEST_CATALOG", SHARED_DIR / "data" / "fashion"))
WEIGHTS_DIR = Path(os.environ.get("FASHION_LENS_TEST_WEIGHTS", SHARED_DIR / "weights"))
MOBILENET_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
IN_CI = bool(os.environ.get("CI"))


def _missing(what: str):
    message = f"{what}. Set the FASHION_LENS_TEST_* variables described in tests/conftest.py."
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def pytest_configure(config):
    """Seed a private Keras cache with the real weights and point every setting at the test inputs
    before anything imports Keras (subprocesses: notebooks, app, JupyterLab inherit them)."""
    keras_home = Path(tempfile.mkdtemp(prefix="fashion-lens-keras-"))
    (keras_home / "models").mkdir()
    weights = WEIGHTS_DIR / MOBILENET_FILE
    if weights.is_file():
        shutil.copy(weights, keras_home / "models" / MOBILENET_FILE)
    elif IN_CI:
        raise pytest.UsageError(f"CI needs the MobileNetV2 ImageNet weights at {weights}.")
    if IN_CI and not (CATALOG_DIR / "fashion.csv").is_file():
        raise pytest.UsageError(f"CI needs the catalogue at {CATALOG_DIR}.")
    artifacts = os.environ.get("FASHION_LENS_TEST_ARTIFACTS") or tempfile.mkdtemp(prefix="fashion-lens-artifacts-")
    os.environ.update({
        "KERAS_HOME": str(keras_home),
        "FASHION_LENS_DATA": str(CATALOG_DIR),
        "FASHION_LENS_ARTIFACTS": str(artifacts),
        "FASHION_LENS_BACKBONE": "mobilenet_v2",
        "FASHION_LENS_WEIGHTS": "imagenet",
        "TF_CPP_MIN_LOG_LEVEL": "3",
    })


@pytest.fixture(scope="session")
def catalog_dir() -> Path:
    if not (CATALOG_DIR / "fashion.csv").is_file():
        _missing(f"The real catalogue is not at {CATALOG_DIR}")
    return CATALOG_DIR


@pytest.fixture(scope="session")
def mobilenet_weights() -> Path:
    path = Path(os.environ["KERAS_HOME"]) / "models" / MOBILENET_FILE
    if not path.is_file():
        _missing(f"The MobileNetV2 ImageNet weights are not at {WEIGHTS_DIR / MOBILENET_FILE}")
    return path


@pytest.fixture(scope="session")
def settings(catalog_dir, mobilenet_weights):
    import helpers

    return helpers.get_settings()


@pytest.fixture(scope="session")
def catalog(catalog_dir):
    import helpers

    return helpers.load_catalog(catalog_dir)


@pytest.fixture(scope="session")
def features(catalog, settings):
    """MobileNetV2 descriptors of the whole catalogue (computed once, about a minute on 2 cores)."""
    import helpers

    return helpers.extract_features(catalog, helpers.default_recipe(settings), progress=False)


@pytest.fixture(scope="session")
def index(catalog, features):
    import helpers

    return helpers.build_index(catalog, features)


@pytest.fixture
def catalog_copy(catalog_dir, tmp_path) -> Path:
    """A small, writable copy of the real catalogue: 6 products of each gender, images included."""
    import pandas as pd

    import helpers

    rows = pd.read_csv(catalog_dir / "fashion.csv", dtype=str, keep_default_na=False)
    rows = rows.groupby("Gender", sort=False).head(6)
    destination = tmp_path / "fashion"
    for _, row in rows.iterrows():
        folder = destination / helpers.GENDER_FOLDERS[row["Gender"]]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(catalog_dir / helpers.GENDER_FOLDERS[row["Gender"]] / row["Image"], folder / row["Image"])
    rows.to_csv(destination / "fashion.csv", index=False)
    return destination
