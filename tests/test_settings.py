"""Settings, pinned dependencies and the offline weights."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from engine_support import imagenet_weights_downloadable

from fashion_lens.errors import SettingsError
from fashion_lens.features import KERAS_WEIGHT_FILES, default_recipe, embed_images, load_backbone, resolve_recipe
from fashion_lens.settings import ENVIRONMENT_VARIABLES, get_settings
from fashion_lens.storage import writable_dir

PROJECT = Path(__file__).resolve().parents[1]


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
    for name in ("requirements.txt", "requirements-test.txt", "requirements-scale.txt"):
        for line in (PROJECT / name).read_text().splitlines():
            line = line.split("#")[0].strip()
            if line and not line.startswith("-r"):
                assert re.search(r"(==|~=)", line), f"{name}: {line!r} is not pinned"


def test_defaults_are_the_reference_backbone_and_project_folders(monkeypatch):
    for variable in ENVIRONMENT_VARIABLES.values():
        monkeypatch.delenv(variable, raising=False)
    settings = get_settings()
    assert settings.backbone == "resnet50"
    assert settings.weights == "imagenet"
    assert settings.data_dir == PROJECT / "data" / "fashion"
    assert settings.artifacts_dir == PROJECT / "artifacts"


def test_argument_beats_environment_beats_default(monkeypatch, tmp_path):
    monkeypatch.setenv("FASHION_LENS_BACKBONE", "mobilenet_v2")
    monkeypatch.setenv("FASHION_LENS_ARTIFACTS", str(tmp_path / "from-env"))
    assert get_settings().backbone == "mobilenet_v2"
    assert get_settings().artifacts_dir == tmp_path / "from-env"
    assert get_settings(backbone="resnet50").backbone == "resnet50"
    assert get_settings(artifacts_dir=tmp_path / "arg").artifacts_dir == tmp_path / "arg"


def test_unknown_backbone_names_the_choices():
    with pytest.raises(SettingsError, match="resnet50, mobilenet_v2"):
        get_settings(backbone="vgg16")


def test_weights_path_must_exist_and_be_a_weights_file(tmp_path):
    with pytest.raises(SettingsError, match="does not exist"):
        get_settings(weights=str(tmp_path / "missing.h5"))
    text = tmp_path / "notes.h5"
    text.write_text("not weights")
    with pytest.raises(SettingsError, match="not a Keras weights file"):
        get_settings(weights=str(text))


def test_weights_path_to_a_real_weights_file_is_accepted(mobilenet_weights):
    assert get_settings(weights=str(mobilenet_weights)).weights == str(mobilenet_weights)


def test_unwritable_artifacts_folder_is_reported(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(SettingsError, match="Cannot write to the artifacts folder"):
        writable_dir(blocker / "artifacts")


def test_resnet50_without_weights_explains_the_three_fixes(tmp_path):
    if imagenet_weights_downloadable():  # as the app's twin test: online, Keras would simply download them
        pytest.skip("ResNet50 ImageNet weights can be downloaded from this machine")
    # Keras reads KERAS_HOME when imported, so an empty cache needs a fresh process.
    script = "from fashion_lens.features import load_backbone; load_backbone('resnet50', 'imagenet')"
    env = {**os.environ, "KERAS_HOME": str(tmp_path / "empty-keras")}
    result = subprocess.run([sys.executable, "-c", script], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("fashion_lens.errors.WeightsError: The ImageNet weights for resnet50 are not in the Keras cache")
    assert "internet" in message and "FASHION_LENS_WEIGHTS" in message and "mobilenet_v2" in message


def test_mobilenet_v2_builds_offline_from_the_seeded_cache_and_embeds_real_photos(catalog, mobilenet_weights):
    recipe = resolve_recipe(default_recipe(get_settings(backbone="mobilenet_v2")))
    assert recipe.weights == "imagenet"
    assert recipe.weights_id.startswith(f"{KERAS_WEIGHT_FILES['mobilenet_v2']}:sha256=71e4c4ec4aa24c9c")
    model = load_backbone("mobilenet_v2", "imagenet")
    assert model.output_shape == (None, 7, 7, 1280)
    vectors = embed_images(catalog["image_path"].head(3), recipe)
    assert vectors.shape == (3, 4 * 1280)
    assert np.allclose(np.linalg.norm(vectors.astype(np.float32), axis=1), 1.0, atol=1e-2)
    assert not np.allclose(vectors[0], vectors[1])


# ---- fast: no catalogue, no weights ------------------------------------------------------------

@pytest.mark.fast
def test_fast_each_setting_comes_from_the_argument_then_the_environment_then_the_default(monkeypatch, tmp_path):
    from fashion_lens.settings import DEFAULT_SETTINGS

    for variable in ENVIRONMENT_VARIABLES.values():
        monkeypatch.delenv(variable, raising=False)
    weights_file = tmp_path / "env.h5"
    weights_file.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    defaults = get_settings()
    assert (defaults.data_dir, defaults.artifacts_dir) == (DEFAULT_SETTINGS["data_dir"], DEFAULT_SETTINGS["artifacts_dir"])
    assert (defaults.backbone, defaults.weights) == ("resnet50", "imagenet")

    monkeypatch.setenv("FASHION_LENS_DATA", str(tmp_path / "env-data"))
    monkeypatch.setenv("FASHION_LENS_ARTIFACTS", str(tmp_path / "env-artifacts"))
    monkeypatch.setenv("FASHION_LENS_BACKBONE", "mobilenet_v2")
    monkeypatch.setenv("FASHION_LENS_WEIGHTS", str(weights_file))
    from_env = get_settings()
    assert from_env.data_dir == tmp_path / "env-data" and from_env.artifacts_dir == tmp_path / "env-artifacts"
    assert (from_env.backbone, from_env.weights) == ("mobilenet_v2", str(weights_file))
    # an empty argument is no argument: the environment still counts
    assert get_settings(data_dir="", backbone="", weights="") == from_env

    from_arguments = get_settings(data_dir=tmp_path / "arg-data", artifacts_dir=str(tmp_path / "arg-artifacts"),
                                  backbone="resnet50", weights="random")
    assert from_arguments.data_dir == tmp_path / "arg-data" and from_arguments.artifacts_dir == tmp_path / "arg-artifacts"
    assert (from_arguments.backbone, from_arguments.weights) == ("resnet50", "random")

    # an empty environment variable is no setting: the default counts
    monkeypatch.setenv("FASHION_LENS_BACKBONE", "")
    monkeypatch.setenv("FASHION_LENS_WEIGHTS", "")
    assert (get_settings().backbone, get_settings().weights) == ("resnet50", "imagenet")


@pytest.mark.fast
def test_fast_folders_become_absolute_paths(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    settings = get_settings(data_dir="catalogue", artifacts_dir="~/artifacts")
    assert settings.data_dir == tmp_path / "catalogue"
    assert settings.artifacts_dir == tmp_path / "home" / "artifacts"


@pytest.mark.fast
def test_fast_backbone_names_ignore_case_and_spaces_and_unknown_ones_name_the_choices(monkeypatch):
    assert get_settings(backbone=" MobileNet_V2 ").backbone == "mobilenet_v2"
    monkeypatch.setenv("FASHION_LENS_BACKBONE", "vgg16")
    with pytest.raises(SettingsError, match="Unknown backbone 'vgg16'") as raised:
        get_settings()
    assert "resnet50, mobilenet_v2" in str(raised.value) and "FASHION_LENS_BACKBONE" in str(raised.value)
    assert get_settings(backbone="resnet50").backbone == "resnet50"  # the argument overrides the bad variable


@pytest.mark.fast
def test_fast_weights_must_name_an_existing_keras_weights_file(monkeypatch, tmp_path):
    with pytest.raises(SettingsError, match="does not exist") as raised:
        get_settings(weights=str(tmp_path / "missing.h5"))
    assert "FASHION_LENS_WEIGHTS" in str(raised.value)
    with pytest.raises(SettingsError, match="does not exist"):
        get_settings(weights=str(tmp_path))  # a folder is not a weights file
    for name, content in (("notes.h5", b"these are not weights"), ("empty.h5", b""),
                          ("photo.h5", b"\xff\xd8\xff\xe0" + bytes(20))):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(SettingsError, match="is not a Keras weights file"):
            get_settings(weights=str(tmp_path / name))

    hdf5 = tmp_path / "mine.h5"
    hdf5.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    keras_zip = tmp_path / "mine.weights.keras"
    keras_zip.write_bytes(b"PK\x03\x04" + bytes(100))
    assert get_settings(weights=str(hdf5)).weights == str(hdf5)
    assert get_settings(weights=str(keras_zip)).weights == str(keras_zip)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert get_settings(weights="~/mine.h5").weights == str(hdf5)  # expanded and made absolute
    assert get_settings(weights="random").weights == "random"
    assert get_settings(weights="imagenet").weights == "imagenet"


@pytest.mark.fast
def test_fast_weights_tuned_is_a_choice_that_only_a_function_given_the_catalogue_resolves(monkeypatch):
    from fashion_lens.errors import WeightsError
    from fashion_lens.features import reference_recipe

    assert get_settings(weights="tuned").weights == "tuned"
    monkeypatch.setenv("FASHION_LENS_WEIGHTS", " Tuned ")
    assert get_settings().weights == "tuned"
    with pytest.raises(SettingsError, match="does not exist") as raised:
        get_settings(weights="tunned")
    for choice in ("imagenet", "tuned", "random", "FASHION_LENS_WEIGHTS"):
        assert choice in str(raised.value)
    # without the catalogue there is nothing to tune on: the error names the functions that can
    for without_catalogue in (default_recipe, reference_recipe):
        with pytest.raises(SettingsError, match=r"load_index\(catalog, settings\).*serving_recipe"):
            without_catalogue(get_settings())
    with pytest.raises(WeightsError, match="serving_recipe"):
        load_backbone("mobilenet_v2", "tuned")
    assert default_recipe(get_settings(), weights="/some/tuned.weights.h5").weights == "/some/tuned.weights.h5"


@pytest.mark.fast
def test_fast_an_unwritable_artifacts_folder_is_reported_with_the_setting_to_change(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for folder in (blocker, blocker / "artifacts"):  # a file where the folder should be, or above it
        with pytest.raises(SettingsError, match="Cannot write to the artifacts folder") as raised:
            writable_dir(folder)
        assert str(folder) in str(raised.value) and "FASHION_LENS_ARTIFACTS" in str(raised.value)
    assert blocker.read_text() == "x"
    created = writable_dir(tmp_path / "new" / "artifacts")
    assert created.is_dir() and list(created.iterdir()) == []  # the write test leaves nothing behind


@pytest.mark.fast
def test_fast_the_milvus_setting_names_a_server_or_a_milvus_lite_file(monkeypatch, tmp_path):
    monkeypatch.delenv("FASHION_LENS_MILVUS_URI", raising=False)
    assert get_settings().milvus_uri is None  # the default: search in-process
    monkeypatch.setenv("FASHION_LENS_MILVUS_URI", "http://milvus.internal:19530")
    assert get_settings().milvus_uri == "http://milvus.internal:19530"
    monkeypatch.chdir(tmp_path)
    assert get_settings(milvus_uri="artifacts/catalogue.db").milvus_uri == str(tmp_path / "artifacts" / "catalogue.db")
    monkeypatch.setenv("FASHION_LENS_MILVUS_URI", "")
    assert get_settings().milvus_uri is None
    for wrong in ("catalogue.sqlite", "ftp://milvus.internal:19530"):
        with pytest.raises(SettingsError, match="FASHION_LENS_MILVUS_URI=.*names neither a Milvus server nor a Milvus Lite file"):
            get_settings(milvus_uri=wrong)


@pytest.fixture
def silent_server():
    """A server on 127.0.0.1 that takes connections and never answers (a stalled download)."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)  # the kernel completes the connection; nobody ever reads or writes
    yield f"http://127.0.0.1:{server.getsockname()[1]}/weights.h5"
    server.close()


@pytest.mark.fast
@pytest.mark.parametrize("backbone", ["resnet50", "mobilenet_v2"])
def test_fast_a_stalled_weights_download_gives_up_in_bounded_time_with_the_three_fixes(silent_server, tmp_path, backbone):
    import time

    from fashion_lens.errors import WeightsError
    from fashion_lens.features import download_imagenet_weights

    started = time.monotonic()
    with pytest.raises(WeightsError) as raised:
        download_imagenet_weights(backbone, url=silent_server, folder=tmp_path, timeout=0.5)
    assert time.monotonic() - started < 10
    message = str(raised.value)
    assert f"The ImageNet weights for {backbone} are not in the Keras cache" in message
    assert f"{silent_server} did not answer within 0.5 s" in message
    assert "connect to the internet once" in message and KERAS_WEIGHT_FILES[backbone] in message
    assert "FASHION_LENS_WEIGHTS" in message
    # the light backbone is suggested only to those not already using it
    assert ("FASHION_LENS_BACKBONE=mobilenet_v2" in message) == (backbone != "mobilenet_v2")
    assert list(tmp_path.iterdir()) == []  # no half-written file where Keras looks


@pytest.mark.fast
def test_fast_load_backbone_passes_its_download_limits_on(silent_server, tmp_path):
    """load_backbone fetches missing ImageNet weights through the bounded download, not Keras' own
    (which waits forever): with an empty Keras cache it gives up as quickly."""
    # Keras reads KERAS_HOME when imported, so an empty cache needs a fresh process.
    script = ("from fashion_lens.features import load_backbone; "
              f"load_backbone('mobilenet_v2', 'imagenet', weights_url={silent_server!r}, download_timeout=0.5)")
    env = {**os.environ, "KERAS_HOME": str(tmp_path / "empty-keras")}
    result = subprocess.run([sys.executable, "-c", script], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("fashion_lens.errors.WeightsError: The ImageNet weights for mobilenet_v2")
    assert f"{silent_server} did not answer within 0.5 s" in message
    assert "FASHION_LENS_BACKBONE=mobilenet_v2" not in message
