"""Shared fixtures: the real catalogue, the real MobileNetV2 ImageNet weights, one feature cache.

Where the test inputs are looked for (the first place that has them wins):
  catalogue (a folder holding fashion.csv and the image folders, read-only):
    FASHION_LENS_TEST_CATALOG, then ../shared/data/fashion beside the project, then the project's
    own data folder (FASHION_LENS_DATA, else data/fashion: where `make data` puts it)
  MobileNetV2 weights (mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5):
    the folder FASHION_LENS_TEST_WEIGHTS, then ../shared/weights, then the user's Keras cache
    ($KERAS_HOME/models, else ~/.keras/models), then a download from Keras' own URL when online
    (20 s timeout; into the run's private Keras cache, only when a test needs the weights)
  FASHION_LENS_TEST_ARTIFACTS   where the tests' feature cache goes (default: a temporary folder)

Outside CI a missing input skips the tests that need it, and the run ends with a block saying how
many were skipped, where the inputs were looked for and the command that enables them. In CI (CI set
to anything but "", 0, false, no, off) a missing catalogue or weights file fails the run instead.
The run's temporary folders (private Keras cache, default artifacts folder) are removed at its end.
"""

from __future__ import annotations

import dataclasses
import http.client
import os
import re
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from filelock import FileLock

pytest_plugins = ["browser_support"]
pytest.register_assert_rewrite("browser_support")  # imported here before pytest loads it as a plugin

from browser_support import CHROMIUM, CHROMIUM_INSTALL, MISSING_INPUT_TAG, in_ci, missing_input  # noqa: E402

PROJECT_DIR = Path(__file__).resolve().parents[1]
SHARED_DIR = PROJECT_DIR.parent / "shared"
MOBILENET_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
MOBILENET_URL = f"https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/{MOBILENET_FILE}"
DOWNLOAD_TIMEOUT = 20  # seconds without an answer (connect or read) before the download is given up
DOWNLOAD_DEADLINE = 180  # seconds for the whole file (9.4 MB)
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


@dataclasses.dataclass
class Inputs:
    """What pytest_configure found, and where it looked (shown when something is missing)."""

    catalog: Path | None = None
    catalog_places: list[str] = dataclasses.field(default_factory=list)
    weights_places: list[str] = dataclasses.field(default_factory=list)
    keras_home: Path | None = None
    data_folder: Path | None = None  # the project's data folder, where `make data` puts the catalogue
    artifacts: Path | None = None  # only when this run created it (then it is removed at the end)
    download_tried: bool = False

    @property
    def cached_weights(self) -> Path:
        return self.keras_home / "models" / MOBILENET_FILE


INPUTS = Inputs()


def _place(path: Path, note: str = "") -> str:
    return f"{path}{f'  ({note})' if note else ''}"


def _find_catalog() -> tuple[Path | None, list[str], Path]:
    """The first folder holding fashion.csv, the places looked at and the project's data folder (read
    before the run overrides FASHION_LENS_DATA)."""
    candidates: list[tuple[Path | None, str]] = []
    given = os.environ.get("FASHION_LENS_TEST_CATALOG")
    candidates.append((Path(given).expanduser() if given else None, "FASHION_LENS_TEST_CATALOG"))
    candidates.append((SHARED_DIR / "data" / "fashion", "the shared folder beside the project"))
    data = os.environ.get("FASHION_LENS_DATA")
    data_folder = (Path(data).expanduser() if data else PROJECT_DIR / "data" / "fashion").resolve()
    candidates.append((data_folder, "FASHION_LENS_DATA" if data else "the project's data folder"))
    places = []
    for path, note in candidates:
        if path is None:
            places.append(f"{note}: not set")
            continue
        if (path / "fashion.csv").is_file():
            return path.resolve(), places, data_folder
        places.append(_place(path, note))
    return None, places, data_folder


def _find_weights() -> tuple[Path | None, list[str]]:
    """The first local copy of the MobileNetV2 weights file, and the places looked at."""
    candidates: list[tuple[Path | None, str]] = []
    given = os.environ.get("FASHION_LENS_TEST_WEIGHTS")
    candidates.append((Path(given).expanduser() if given else None, "FASHION_LENS_TEST_WEIGHTS"))
    candidates.append((SHARED_DIR / "weights", "the shared folder beside the project"))
    keras_home = os.environ.get("KERAS_HOME")
    candidates.append((Path(keras_home).expanduser() / "models" if keras_home else Path("~/.keras/models").expanduser(),
                       "your Keras cache"))
    places = []
    for folder, note in candidates:
        if folder is None:
            places.append(f"{note}: not set")
            continue
        # FASHION_LENS_TEST_WEIGHTS names a folder; the file itself is accepted too.
        path = folder if folder.name == MOBILENET_FILE else folder / MOBILENET_FILE
        if path.is_file():
            return path, places
        places.append(_place(folder, note))
    return None, places


def _download_weights(destination: Path) -> str | None:
    """Fetch Keras' own weights file into `destination`; None when it worked, else why not (quietly:
    offline machines are expected)."""
    part = destination.with_name(destination.name + ".part")
    try:
        deadline = time.monotonic() + DOWNLOAD_DEADLINE
        with urllib.request.urlopen(MOBILENET_URL, timeout=DOWNLOAD_TIMEOUT) as response, open(part, "wb") as out:
            expected = int(response.headers.get("Content-Length") or 0)
            while chunk := response.read(1 << 20):
                out.write(chunk)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"not complete after {DOWNLOAD_DEADLINE} s")
        size = part.stat().st_size
        if expected and size != expected:
            raise OSError(f"got {size} of {expected} bytes")
        with open(part, "rb") as handle:
            if handle.read(8) != HDF5_SIGNATURE:
                raise OSError("the answer is not an HDF5 weights file")
        part.replace(destination)
        return None
    except (OSError, ValueError, http.client.HTTPException) as error:  # URLError and timeouts are OSErrors
        part.unlink(missing_ok=True)
        reason = getattr(error, "reason", None) or error
        return f"{type(error).__name__}: {reason}"


def _try_download() -> bool:
    """One download attempt per run; its outcome joins the places looked at."""
    if not INPUTS.download_tried:
        INPUTS.download_tried = True
        failure = _download_weights(INPUTS.cached_weights)
        INPUTS.weights_places.append(f"download from {MOBILENET_URL}: {failure or 'done'}")
    return INPUTS.cached_weights.is_file()


def _looked_in(places: list[str]) -> str:
    return "; ".join(places)


def pytest_configure(config):
    """Find the test inputs, seed a private Keras cache with the weights and point every setting at
    the test inputs before anything imports Keras (subprocesses: notebooks, app, JupyterLab inherit them)."""
    INPUTS.catalog, INPUTS.catalog_places, INPUTS.data_folder = _find_catalog()
    weights, INPUTS.weights_places = _find_weights()
    INPUTS.keras_home = Path(tempfile.mkdtemp(prefix="fashion-lens-keras-"))
    (INPUTS.keras_home / "models").mkdir()
    if weights is not None:
        shutil.copy(weights, INPUTS.cached_weights)
    if in_ci():
        # Outside CI the download waits until a test needs the weights (a fast run never goes online).
        problems = []
        if INPUTS.catalog is None:
            problems.append(f"CI needs the catalogue (a folder holding fashion.csv); "
                            f"looked in: {_looked_in(INPUTS.catalog_places)}.")
        if weights is None and not _try_download():
            problems.append(f"CI needs the MobileNetV2 ImageNet weights {MOBILENET_FILE}; "
                            f"looked in: {_looked_in(INPUTS.weights_places)}.")
        if problems:
            raise pytest.UsageError("\n".join(problems))
    artifacts = os.environ.get("FASHION_LENS_TEST_ARTIFACTS")
    if not artifacts:
        INPUTS.artifacts = Path(tempfile.mkdtemp(prefix="fashion-lens-artifacts-"))
        artifacts = str(INPUTS.artifacts)
        # the test processes of `pytest -n` (started after this) share it: the catalogue's features are made once
        os.environ["FASHION_LENS_TEST_ARTIFACTS"] = artifacts
    os.environ.update({
        "KERAS_HOME": str(INPUTS.keras_home),
        # Without a catalogue, a folder that does not exist: no test reads or writes the user's data folder.
        "FASHION_LENS_DATA": str(INPUTS.catalog or INPUTS.keras_home / "no-catalogue"),
        "FASHION_LENS_ARTIFACTS": artifacts,
        "FASHION_LENS_BACKBONE": "mobilenet_v2",
        "FASHION_LENS_WEIGHTS": "imagenet",
        "TF_CPP_MIN_LOG_LEVEL": "3",
    })


def pytest_unconfigure(config):
    """Remove the run's temporary folders (a FASHION_LENS_TEST_ARTIFACTS folder is the user's: kept)."""
    for folder in (INPUTS.keras_home, INPUTS.artifacts):
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    INPUTS.keras_home = INPUTS.artifacts = None


SUMMARY_TITLE = "skipped: test inputs missing"
SEE_SUMMARY = f"where it was looked for and how to get it: see '{SUMMARY_TITLE}' above"
# What enables the tests skipped for each missing input, shown at the end of the run.
_WHAT = {
    "catalogue": "the catalogue (a folder holding fashion.csv and the product photos)",
    "weights": f"the MobileNetV2 ImageNet weights ({MOBILENET_FILE})",
    "chromium": "Chromium (the real-browser tests)",
}


def _places(kind: str) -> list[str]:
    if kind == "catalogue":
        return INPUTS.catalog_places
    if kind == "weights":
        return INPUTS.weights_places
    given = "FASHION_LENS_CHROMIUM" in os.environ
    return [_place(Path(CHROMIUM), "FASHION_LENS_CHROMIUM" if given else "the default; FASHION_LENS_CHROMIUM overrides it"),
            "chromium on PATH"]


def _commands(kind: str) -> tuple[str, str]:
    """The command that enables the tests, and one line for the other way."""
    if kind == "catalogue":
        return ("make data && make test",
                f"`make data` downloads it into {INPUTS.data_folder}; "
                "to use a copy elsewhere: FASHION_LENS_TEST_CATALOG=/path/to/fashion make test")
    if kind == "weights":
        return ("FASHION_LENS_TEST_WEIGHTS=/folder/holding/the/file make test",
                "or just `make test` on a machine that is online: the file is then downloaded")
    return (f"sudo {CHROMIUM_INSTALL}", "or point FASHION_LENS_CHROMIUM at a Chromium: "
                                        "FASHION_LENS_CHROMIUM=/path/to/chromium make test")


_KIND = re.compile(re.escape(MISSING_INPUT_TAG) + r" \((\w+)\)")


def _skip_kind(report) -> str | None:
    """The missing input a skipped test report names, if any."""
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    match = _KIND.search(text)
    return match.group(1) if match else None


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Outside CI: how many tests skipped for a missing input, where it was looked for, how to enable them."""
    if in_ci():
        return
    counts: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        kind = _skip_kind(report)
        if kind is not None:
            counts[kind] = counts.get(kind, 0) + 1
    if not counts:
        return
    total = sum(counts.values())
    write = terminalreporter.write_line
    terminalreporter.write_sep("=", SUMMARY_TITLE, yellow=True, bold=True)
    write(f"{total} test{'s were' if total != 1 else ' was'} skipped because a test input is missing on this "
          f"machine (in CI they would fail).")
    for kind in sorted(counts, key=lambda kind: list(_WHAT).index(kind) if kind in _WHAT else len(_WHAT)):
        count = counts[kind]
        write("")
        write(f"{count} test{' needs' if count == 1 else 's need'} {_WHAT.get(kind, kind)}. Not found in:")
        for place in _places(kind):
            write(f"    {place}")
        command, other = _commands(kind)
        write(f"  To run {'it' if count == 1 else 'them'}:  {command}", bold=True)
        write(f"    ({other})")


@pytest.fixture(scope="session")
def catalog_dir() -> Path:
    if INPUTS.catalog is None:
        missing_input("catalogue", f"no folder holding fashion.csv was found ({SEE_SUMMARY})")
    return INPUTS.catalog


@pytest.fixture(scope="session")
def mobilenet_weights() -> Path:
    if not INPUTS.cached_weights.is_file() and not _try_download():
        missing_input("weights", f"{MOBILENET_FILE} was not found ({SEE_SUMMARY})")
    return INPUTS.cached_weights


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

    # one test process extracts; another one (pytest -n) waits, then reads the cache it wrote
    settings.artifacts_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(settings.artifacts_dir / "test-features.lock"):
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


# ---- the chapters executed on a sample: run by test_notebooks.py, read again by test_book.py ------

@pytest.fixture(scope="session")
def sample_artifacts(tmp_path_factory, catalog_dir, mobilenet_weights) -> Path:
    """A feature cache of the chapters' runs' own (shared by the chapters, in order, like `make demo`)."""
    return tmp_path_factory.mktemp("notebook-artifacts")


@pytest.fixture(scope="session")
def executed_dir(tmp_path_factory) -> Path:
    """Where test_notebooks.py writes the executed chapters (session-wide: the book is built from them)."""
    return tmp_path_factory.mktemp("executed")


# `pytest -n N` (make test): each test file runs whole in one process, so that its module fixtures (a
# Ray instance, a Milvus server, a tuning) are made once; these files share one process, as the book
# is built from the chapters test_notebooks.py executed.
TOGETHER = {"test_notebooks.py": "chapters", "test_book.py": "chapters"}
# The longest files start first, so that the processes finish about together.
LONGEST_FIRST = ["test_notebooks.py", "test_book.py", "test_scale_out.py", "test_browser_jupyterlab.py",
                 "test_ann.py", "test_milvus.py", "test_tuning.py"]


def pytest_collection_modifyitems(config, items):
    """The longest test files first, test_book.py right after test_notebooks.py (the book reuses the
    chapters executed there instead of executing them once more); the order is otherwise kept."""
    items.sort(key=lambda item: LONGEST_FIRST.index(item.path.name) if item.path.name in LONGEST_FIRST
               else len(LONGEST_FIRST))


def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's scheduling by scope, a scope being a test file (or TOGETHER's group), in the
    order above."""
    from xdist.scheduler import LoadScopeScheduling

    class ByFile(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return TOGETHER.get(Path(path).name, path)

    config.option.loadscopereorder = False  # keep LONGEST_FIRST's order, not the files' test counts
    return ByFile(config, log)
