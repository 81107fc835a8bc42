"""The errors and warnings fashion-lens raises: each says what is wrong and what to do.

They all derive from FashionLensError, so a front end (the app, the widget) can show any of
them as a message instead of a traceback.
"""

from __future__ import annotations


class FashionLensError(Exception):
    """Base class: a problem the user can fix, explained in the message."""


class SettingsError(FashionLensError, ValueError):
    """A setting (argument or environment variable) has a value the project cannot use."""


class CatalogError(FashionLensError, ValueError):
    """The catalogue (folder or fashion.csv) cannot be used as it is."""


class ImageError(FashionLensError, ValueError):
    """A file or upload that cannot be read as a product photo."""


class WeightsError(FashionLensError, RuntimeError):
    """The backbone's weights cannot be found or loaded."""


class SearchError(FashionLensError, ValueError):
    """A query the engine cannot answer as given (bad k, unknown filter value, unreadable image)."""


class SearchBackendError(FashionLensError, RuntimeError):
    """The search backend (a Milvus server or Milvus Lite file) cannot be reached or used."""


class MissingImagesWarning(UserWarning):
    """Some catalogue rows have no image file (they are left out), or several candidate files."""


class FeatureCacheWarning(UserWarning):
    """Part of the feature cache was damaged or written by other settings; it is recomputed."""


class BlankLabelsWarning(UserWarning):
    """Some catalogue rows have blank (or NaN) labels; they are kept but match no filter on that column."""
