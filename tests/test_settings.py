"""Settings, pinned dependencies and the offline weights."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import helpers

PROJECT = Path(helpers.__file__).resolve().parent


def _pins(lines):
    pins = {}
    for line in lines:
        line = line.split("#")[0].strip()
        match = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)\s*(==|~=)\s*([^\s;]+)", line)
        if match:
            pins[match.group(1).lower()] = match.group(2) + match.group(3)
    return pins


def test_requirements_and_environment_yml_pin_the_same_packages_and_versions():
    pip = _pins((PROJECT / "requirements.txt").read_text().splitlines())
    pip |= _pins((PROJECT / "requirements-test.txt").read_text().splitlines())
    conda = _pins(line.strip().lstrip("- ") for line in (PROJECT / "environment.yml").read_text().splitlines())
    assert len(pip) >= 20
    assert pip == conda


def test_every_requirement_is_pinned():
    for name in ("requirements.txt", "requirements-test.txt"):
        for line in (PROJECT / name).read_text().splitlines():
            line = line.split("#")[0].strip()
            if line and not line.startswith("-r"):
                assert re.search(r"(==|~=)", line), f"{name}: {line!r} is not pinned"


def test_defaults_are_the_reference_backbone_and_project_folders(monkeypatch):
    for variable in helpers.ENVIRONMENT_VARIABLES.values():
        monkeypatch.delenv(variable, raising=False)
    settings = helpers.get_settings()
    assert settings.backbone == "resnet50"
    assert settings.weights == "imagenet"
    assert settings.data_dir == PROJECT / "data" / "fashion"
    assert settings.artifacts_dir == PROJECT / "artifacts"


def test_argument_beats_environment_beats_default(monkeypatch, tmp_path):
    monkeypatch.setenv("FASHION_LENS_BACKBONE", "mobilenet_v2")
    monkeypatch.setenv("FASHION_LENS_ARTIFACTS", str(tmp_path / "from-env"))
    assert helpers.get_settings().backbone == "mobilenet_v2"
    assert helpers.get_settings().artifacts_dir == tmp_path / "from-env"
    assert helpers.get_settings(backbone="resnet50").backbone == "resnet50"
    assert helpers.get_settings(artifacts_dir=tmp_path / "arg").artifacts_dir == tmp_path / "arg"


def test_unknown_backbone_names_the_choices():
    with pytest.raises(helpers.SettingsError, match="resnet50, mobilenet_v2"):
        helpers.get_settings(backbone="vgg16")


def test_weights_path_must_exist_and_be_a_weights_file(tmp_path):
    with pytest.raises(helpers.SettingsError, match="does not exist"):
        helpers.get_settings(weights=str(tmp_path / "missing.h5"))
    text = tmp_path / "notes.h5"
    text.write_text("not weights")
    with pytest.raises(helpers.SettingsError, match="not a Keras weights file"):
        helpers.get_settings(weights=str(text))


def test_weights_path_to_a_real_weights_file_is_accepted(mobilenet_weights):
    assert helpers.get_settings(weights=str(mobilenet_weights)).weights == str(mobilenet_weights)


def test_unwritable_artifacts_folder_is_reported(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(helpers.SettingsError, match="Cannot write to the artifacts folder"):
        helpers.writable_dir(blocker / "artifacts")


def test_resnet50_without_weights_explains_the_three_fixes(tmp_path):
    # Keras reads KERAS_HOME when imported, so an empty cache needs a fresh process.
    script = "import helpers; helpers.load_backbone('resnet50', 'imagenet')"
    env = {**os.environ, "KERAS_HOME": str(tmp_path / "empty-keras")}
    result = subprocess.run([sys.executable, "-c", script], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("helpers.WeightsError: The ImageNet weights for resnet50 are not in the Keras cache")
    assert "internet" in message and "FASHION_LENS_WEIGHTS" in message and "mobilenet_v2" in message


def test_mobilenet_v2_builds_offline_from_the_seeded_cache_and_embeds_real_photos(catalog, mobilenet_weights):
    recipe = helpers.resolve_recipe(helpers.default_recipe(helpers.get_settings(backbone="mobilenet_v2")))
    assert recipe.weights.startswith("imagenet:sha256=71e4c4ec4aa24c9c")
    model = helpers.load_backbone("mobilenet_v2", "imagenet")
    assert model.output_shape == (None, 7, 7, 1280)
    vectors = helpers.embed_images(catalog["image_path"].head(3), recipe)
    assert vectors.shape == (3, 4 * 1280)
    assert np.allclose(np.linalg.norm(vectors.astype(np.float32), axis=1), 1.0, atol=1e-2)
    assert not np.allclose(vectors[0], vectors[1])
