"""Files that are never half-written, locks between processes, and content hashes."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from .errors import SettingsError
from .settings import ENVIRONMENT_VARIABLES


def writable_dir(path: Path) -> Path:
    """Create `path` if needed and make sure files can be written there (fail early, with advice)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as error:
        raise SettingsError(
            f"Cannot write to the artifacts folder {path} ({error.strerror or error}). "
            f"Choose a writable folder with artifacts_dir= or {ENVIRONMENT_VARIABLES['artifacts_dir']}."
        ) from error
    return path


@contextlib.contextmanager
def atomic_write(path: Path, mode: str = "wb") -> Iterator[io.IOBase]:
    """Write `path` through a temporary file in the same folder, renamed into place only when
    complete: a reader never sees half a file and a crash leaves the old file untouched.

    >>> with atomic_write(Path("artifacts/notes.txt"), "w") as out:  # doctest: +SKIP
    ...     out.write("done")
    """
    path = Path(path)
    writable_dir(path.parent)
    temporary = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    # os.open applies the process umask to 0o666, so the result gets the usual permissions
    # (tempfile's files are private, 0o600)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def file_sha256(path) -> str:
    """The sha256 of a file's bytes, read in 1 MB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_lock(folder: Path):
    """An exclusive lock on `folder` between processes and threads (a notebook and the app filling
    one cache take turns). Use as `with folder_lock(path): ...`."""
    from filelock import FileLock

    return FileLock(str(Path(folder) / ".lock"))
