"""Settings: which catalogue (folder, layout, column names), where generated files go, which backbone and weights,
where the search runs.

Each setting is read in one place, get_settings: an argument wins, then the environment
variable, then the default.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from .errors import SettingsError

PROJECT_DIR = Path(__file__).resolve().parents[1]

BACKBONES = ("resnet50", "mobilenet_v2")
ENVIRONMENT_VARIABLES = {
    "data_dir": "FASHION_LENS_DATA",
    "artifacts_dir": "FASHION_LENS_ARTIFACTS",
    "backbone": "FASHION_LENS_BACKBONE",
    "weights": "FASHION_LENS_WEIGHTS",
    "layout": "FASHION_LENS_LAYOUT",
    "columns": "FASHION_LENS_COLUMNS",
    "milvus_uri": "FASHION_LENS_MILVUS_URI",
}
DEFAULT_SETTINGS = {
    "data_dir": PROJECT_DIR / "data" / "fashion",
    "artifacts_dir": PROJECT_DIR / "artifacts",
    "backbone": "resnet50",  # the reference article's backbone
    "weights": "imagenet",
    "layout": "fashion-lens",  # fashion.csv, as `make data` gets it; "kaggle": the Kaggle styles.csv layout
    "columns": "",  # the catalogue's own column names, e.g. "id=ProductId, name=ProductTitle"
    "milvus_uri": None,  # search in this process (exact, or FAISS for large catalogues)
}
# "random" builds the network untrained: for shape tests only, never for recommendations.
RANDOM_WEIGHTS = "random"
# "tuned": the backbone fine-tuned on the labels of the catalogue being served. It names no file
# until the catalogue is known: tuning.serving_recipe (called by index.load_index) resolves it.
TUNED_WEIGHTS = "tuned"
WEIGHT_CHOICES = ("imagenet", TUNED_WEIGHTS, RANDOM_WEIGHTS)


@dataclasses.dataclass(frozen=True)
class Settings:
    data_dir: Path
    artifacts_dir: Path
    backbone: str
    weights: str  # "imagenet", "tuned", "random" or the path of a Keras weights file
    layout: str = DEFAULT_SETTINGS["layout"]  # the catalogue's layout (catalog_layout.LAYOUTS)
    columns: tuple[tuple[str, str], ...] = ()  # (the catalogue's column, the project's column) pairs
    milvus_uri: str | None = None  # None: search in-process; a .db file: Milvus Lite; http(s)://host:port: a Milvus server


def read_setting(name: str, value=None):
    """One setting, unchecked: the argument unless None or "", then the environment variable, then the default."""
    if value is None or value == "":
        value = os.environ.get(ENVIRONMENT_VARIABLES[name]) or DEFAULT_SETTINGS[name]
    return value


def get_settings(data_dir=None, artifacts_dir=None, backbone=None, weights=None, layout=None, columns=None,
                 milvus_uri=None) -> Settings:
    """Read the settings: an argument wins, then the environment variable, then the default.

    >>> get_settings(backbone="mobilenet_v2").backbone
    'mobilenet_v2'
    """
    given = {"data_dir": data_dir, "artifacts_dir": artifacts_dir, "backbone": backbone, "weights": weights,
             "layout": layout, "columns": columns, "milvus_uri": milvus_uri}
    values = {name: read_setting(name, value) for name, value in given.items()}
    backbone_name = str(values["backbone"]).strip().lower()
    if backbone_name not in BACKBONES:
        raise SettingsError(
            f"Unknown backbone {values['backbone']!r}. Choose one of {', '.join(BACKBONES)} "
            f"(argument backbone= or environment variable {ENVIRONMENT_VARIABLES['backbone']})."
        )
    return Settings(
        data_dir=Path(values["data_dir"]).expanduser().resolve(),
        artifacts_dir=Path(values["artifacts_dir"]).expanduser().resolve(),
        backbone=backbone_name,
        weights=_check_weights(str(values["weights"])),
        layout=str(values["layout"]).strip().lower(),
        columns=tuple(parse_columns(values["columns"]).items()),
        milvus_uri=check_milvus_uri(values["milvus_uri"]),
    )


def parse_columns(columns) -> dict[str, str]:
    """A column mapping {the catalogue's column: the project's column}, from a dict or from text
    "id=ProductId, name=ProductTitle" (how FASHION_LENS_COLUMNS gives it)."""
    if isinstance(columns, dict):
        return {str(source).strip(): str(target).strip() for source, target in columns.items()}
    if isinstance(columns, (tuple, list)):
        return parse_columns(dict(columns))
    mapping = {}
    for entry in filter(None, (part.strip() for part in str(columns or "").split(","))):
        source, equals, target = (part.strip() for part in entry.partition("="))
        if not equals or not source or not target:
            raise SettingsError(
                f"Cannot read the column mapping entry {entry!r}: write each entry as <your column>=<fashion-lens "
                f"column>, separated by commas, e.g. {ENVIRONMENT_VARIABLES['columns']}='id=ProductId, name=ProductTitle'."
            )
        mapping[source] = target
    return mapping


MILVUS_SERVER = re.compile(r"^(https?|tcp)://", re.IGNORECASE)


def is_milvus_server(uri: str) -> bool:
    """Does `uri` name a Milvus server (http://, https://, tcp://) rather than a Milvus Lite file?"""
    return bool(MILVUS_SERVER.match(uri))


def check_milvus_uri(uri) -> str | None:
    """The Milvus setting as the search uses it: None (in-process), a server URI as given, or the
    absolute path of a Milvus Lite file (Milvus Lite only opens paths ending in .db)."""
    if uri is None or not str(uri).strip():
        return None
    uri = str(uri).strip()
    if is_milvus_server(uri):
        return uri
    if "://" in uri or not uri.endswith(".db"):
        raise SettingsError(
            f"{ENVIRONMENT_VARIABLES['milvus_uri']}={uri!r} names neither a Milvus server nor a Milvus Lite file. "
            "Give http(s)://host:19530 for a server, or a file path ending in .db for Milvus Lite "
            "(for example artifacts/milvus/catalogue.db); leave it empty to search in-process."
        )
    return str(Path(uri).expanduser().resolve())


def _check_weights(weights: str) -> str:
    if weights.strip().lower() in WEIGHT_CHOICES:
        return weights.strip().lower()
    path = Path(weights).expanduser()
    if not path.is_file():
        raise SettingsError(
            f"Weights file {weights!r} does not exist. Choose one of imagenet (the default), tuned (the backbone "
            f"tuned on the served catalogue's labels), random (untrained, for shape tests only), or give the path "
            f"of a Keras weights file (.h5) via weights= or {ENVIRONMENT_VARIABLES['weights']}."
        )
    with open(path, "rb") as handle:
        signature = handle.read(8)
    if signature != b"\x89HDF\r\n\x1a\n" and not zipfile_signature(signature):
        raise SettingsError(
            f"{weights!r} is not a Keras weights file (expected an HDF5 .h5 or a .keras/.weights.h5 file). "
            "Point the weights setting at the file Keras saved or downloaded."
        )
    return str(path.resolve())



def zipfile_signature(first_bytes: bytes) -> bool:
    return first_bytes.startswith(b"PK\x03\x04")


def show_versions() -> dict:
    """The versions of the libraries that shape the results (printed by each notebook's setup cell)."""
    from importlib.metadata import PackageNotFoundError, version

    names = ["python", "numpy", "pandas", "pillow", "tensorflow", "keras", "scikit-learn", "faiss-cpu"]
    found = {}
    for name in names:
        if name == "python":
            import platform

            found[name] = platform.python_version()
            continue
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found
