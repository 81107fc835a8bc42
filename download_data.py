"""Get the fashion catalogue (fashion.csv and its product photos) into the data folder.

    python download_data.py                  # download the originals and verify every file
    python download_data.py --from PATH      # copy a local catalogue folder instead
    python download_data.py --from PATH --link   # or make the data folder a symlink to it

The destination is the project's data folder (data/fashion, or $FASHION_LENS_DATA); --dest
overrides it. Every downloaded file is verified before it is moved into place:

- against --checksums FILE_OR_URL (lines "<sha256>  <path>", the ORIGINALS.sha256 format), or
- against ORIGINALS.sha256 in the destination folder, if there is one, or
- against the git blob ids of the pinned source commit, from the GitHub API.

After a complete download the sha256 of every file is written to ORIGINALS.sha256 in the
destination, so a re-run checks the files offline, skips the ones already in place and says
"already complete" when nothing is missing. Files are written as hidden `.<name>.part` files next
to their final place and renamed only once verified: an interrupted run never leaves half a file
under a real name, and the next run resumes the part (HTTP Range) where the server allows it.

A file already in the destination that does not verify is never overwritten without --replace.
A folder that already holds a complete catalogue of other files (every image present, none of
them an original: a resized copy, say) is kept and reported, so `make data` also works on a
folder named by FASHION_LENS_DATA; when only the GitHub API could tell, and it is unreachable,
a complete folder is kept with a note that it was not checked.

Only the standard library talks to the network (urllib, with a timeout).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import hashlib
import http.client
import json
import os
import re
import shutil
import ssl
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import helpers

SOURCE_REPO = "knowrohit/Fashion-Rec-Sys"
SOURCE_COMMIT = "21cc20f7c2c44833cca3089d09caf612849a0c1a"
SOURCE_FOLDER = "data"  # the catalogue's folder inside the source repository
DEFAULT_BASE_URL = f"https://raw.githubusercontent.com/{SOURCE_REPO}/{SOURCE_COMMIT}/{SOURCE_FOLDER}/"
DEFAULT_API_URL = "https://api.github.com"
CSV_NAME = "fashion.csv"
CHECKSUMS_NAME = "ORIGINALS.sha256"
# Besides fashion.csv and the images, --from also copies these small files when the source has them.
EXTRA_FILES = ("README.md", "duplicate_groups.csv")
PART_SUFFIX = ".part"
DEFAULT_WORKERS = 8
DEFAULT_TIMEOUT = 30.0  # seconds without an answer (per connection attempt and per read)
ATTEMPTS = 3  # tries per file for transient failures (timeouts, dropped connections, HTTP 5xx)
USER_AGENT = "fashion-lens-download/1.0 (+python urllib)"
OFFLINE_ADVICE = "if this machine is offline, copy a local catalogue with --from PATH or set FASHION_LENS_DATA"
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
MAX_LISTED = 10  # file names quoted in an error message
# A connection that timed out or broke during a transfer (local file errors are plain OSError).
TRANSFER_ERRORS = (TimeoutError, ConnectionError, http.client.HTTPException, ssl.SSLError)


class DownloadError(RuntimeError):
    """The catalogue could not be fetched, copied or verified; the message says what to do."""


class NetworkError(DownloadError):
    """A server could not be reached or the connection broke (not an HTTP error answer)."""


@dataclasses.dataclass(frozen=True)
class Expected:
    """What a file must hash to: a sha256 or a git blob id (sha1 of b"blob <size>\\0" + content)."""

    kind: str  # "sha256" or "git-blob"
    digest: str

    def matches(self, hashes: FileHashes) -> bool:
        actual = hashes.sha256 if self.kind == "sha256" else hashes.git_blob
        return actual == self.digest.lower()


@dataclasses.dataclass(frozen=True)
class FileHashes:
    sha256: str
    git_blob: str
    size: int


@dataclasses.dataclass
class Report:
    """What a download or copy did; str(report) is the summary printed by the command."""

    dest: Path
    files: int = 0  # files in the catalogue (fashion.csv + images)
    fetched: int = 0  # downloaded or copied by this run
    skipped: int = 0  # already in place and verified
    bytes_fetched: int = 0
    verified_with: str = ""
    message: str = ""

    def __str__(self) -> str:
        return self.message


# ============================================================================
# Hashing and checksum lists
# ============================================================================


def hash_file(path) -> FileHashes:
    """The sha256 and the git blob id of a file, in one read."""
    path = Path(path)
    size = path.stat().st_size
    sha256, git_blob = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % size)
    read = 0
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha256.update(block)
            git_blob.update(block)
            read += len(block)
    if read != size:  # the file changed while it was read: the git id would be wrong
        raise DownloadError(f"{path} changed while it was being verified; re-run when nothing else writes to it.")
    return FileHashes(sha256.hexdigest(), git_blob.hexdigest(), size)


def parse_checksums(text: str, source: str) -> dict[str, Expected]:
    """Read a sha256 list ("<sha256>  <path>" per line, as sha256sum writes it) into {path: Expected}."""
    expected = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([0-9a-fA-F]{64}) [ *](.+)", line)
        if not match:
            raise DownloadError(
                f"{source} line {number} is not '<sha256>  <path>': {line[:80]!r}. "
                f"Give a checksum list in the {CHECKSUMS_NAME} format (what `sha256sum` prints)."
            )
        path = match.group(2).strip().removeprefix("./")
        expected[path] = Expected("sha256", match.group(1).lower())
    if not expected:
        raise DownloadError(f"{source} lists no checksums. Give a list in the {CHECKSUMS_NAME} format.")
    return expected


def format_checksums(sha256_by_path: dict[str, str]) -> str:
    return "".join(f"{digest}  {path}\n" for path, digest in sorted(sha256_by_path.items()))


def load_checksums(checksums, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Expected]:
    """Read a checksum list from a file path or an http(s) URL."""
    text_source = str(checksums)
    if re.match(r"https?://", text_source):
        data = fetch_bytes(text_source, timeout, what="the checksum list")
        return parse_checksums(data.decode("utf-8", errors="replace"), text_source)
    path = Path(checksums).expanduser()
    if not path.is_file():
        raise DownloadError(f"Checksum list {path} does not exist. Give an existing file or an http(s) URL to --checksums.")
    return parse_checksums(path.read_text(encoding="utf-8", errors="replace"), str(path))


def git_tree_url(api_url: str = DEFAULT_API_URL, repo: str = SOURCE_REPO, commit: str = SOURCE_COMMIT) -> str:
    return f"{api_url.rstrip('/')}/repos/{repo}/git/trees/{commit}?recursive=1"


def load_git_tree(api_url: str = DEFAULT_API_URL, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Expected]:
    """The git blob id of every file of the source folder at the pinned commit, from the GitHub API."""
    url = git_tree_url(api_url)
    data = fetch_bytes(url, timeout, what="the file list of the source commit (GitHub API)", api=True)
    try:
        tree = json.loads(data)
        entries = tree["tree"]
    except (ValueError, KeyError, TypeError) as error:
        raise DownloadError(f"{url} did not answer with a git tree ({error}). Pass a checksum list with --checksums.") from error
    prefix = SOURCE_FOLDER + "/"
    expected = {
        entry["path"][len(prefix):]: Expected("git-blob", str(entry["sha"]).lower())
        for entry in entries
        if isinstance(entry, dict) and entry.get("type") == "blob" and str(entry.get("path", "")).startswith(prefix)
    }
    if tree.get("truncated"):
        # GitHub cuts very large trees; the files it left out are reported as unverifiable later.
        warnings.warn(f"{url} returned a truncated tree; files it leaves out cannot be verified.", stacklevel=2)
    if not expected:
        raise DownloadError(f"{url} lists no files under {prefix}. Pass a checksum list with --checksums.")
    return expected


# ============================================================================
# HTTP
# ============================================================================


def _request(url: str, headers: dict | None = None, timeout: float = DEFAULT_TIMEOUT):
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **(headers or {})})
    return urllib.request.urlopen(request, timeout=timeout)


def _unreachable(url: str, error) -> NetworkError:
    host = urllib.parse.urlsplit(url).netloc or url
    reason = getattr(error, "reason", None) or error
    return NetworkError(f"cannot reach {host}: {reason}; {OFFLINE_ADVICE}.")


def fetch_bytes(url: str, timeout: float = DEFAULT_TIMEOUT, what: str = "", api: bool = False) -> bytes:
    """GET a small resource in memory, turning failures into DownloadError with advice."""
    headers = {"Accept": "application/vnd.github+json"} if api else {}
    try:
        with _request(url, headers, timeout) as response:
            return response.read()
    except urllib.error.HTTPError as error:
        hint = " Pass a checksum list with --checksums." if api else ""
        if api and error.code in (403, 429):
            hint = " The GitHub API limits anonymous requests per hour: retry later, or pass a checksum list with --checksums."
        raise DownloadError(f"Could not get {what or url}: HTTP {error.code} {error.reason} from {url}.{hint}") from error
    except (urllib.error.URLError, *TRANSFER_ERRORS) as error:
        raise _unreachable(url, error) from error


def _part_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{PART_SUFFIX}")


def _download_to(url: str, part: Path, timeout: float, stop: threading.Event, counter) -> bool:
    """Download `url` into `part`, resuming an existing part with a Range request when the server
    allows it. Returns True when the bytes were appended to an earlier part."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        response = _request(url, headers, timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # the part already holds the whole file (or is bogus): verify it
            return True
        raise
    with response:
        resumed = bool(offset) and response.status == 206 and \
            response.headers.get("Content-Range", "").startswith(f"bytes {offset}-")
        length = response.headers.get("Content-Length")
        written = 0
        with open(part, "ab" if resumed else "wb") as handle:
            while block := response.read(1 << 16):
                if stop.is_set():
                    raise KeyboardInterrupt
                handle.write(block)
                written += len(block)
                counter(len(block))
            handle.flush()
            os.fsync(handle.fileno())  # on disk before it is renamed into place
        if length is not None and length.isdigit() and written != int(length):
            raise ConnectionError(f"the connection closed after {written} of {length} bytes")
    return resumed


# ============================================================================
# The catalogue's file list
# ============================================================================


def catalog_files(csv_path) -> list[str]:
    """The image paths (relative to the catalogue folder) that fashion.csv's rows refer to."""
    csv_path = Path(csv_path)
    try:
        with open(csv_path, encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (UnicodeDecodeError, csv.Error) as error:
        raise DownloadError(f"{csv_path} cannot be read as a UTF-8 CSV file ({error}).") from error
    needed = {"ProductId", "Gender", "Image"}
    if not rows or not needed <= set(rows[0]):
        raise DownloadError(f"{csv_path} has no products or lacks the columns {', '.join(sorted(needed))}.")
    paths = {}
    for number, row in enumerate(rows, start=2):
        gender = (row["Gender"] or "").strip()
        name = (row["Image"] or "").strip() or f"{(row['ProductId'] or '').strip()}.jpg"
        if gender not in helpers.GENDER_FOLDERS:
            raise DownloadError(f"{csv_path} line {number}: unknown Gender {gender!r} (expected one of {', '.join(helpers.GENDERS)}).")
        if not SAFE_NAME.fullmatch(name):
            raise DownloadError(f"{csv_path} line {number}: {name!r} is not a plain image file name; refusing to use it.")
        paths[f"{helpers.GENDER_FOLDERS[gender]}/{name}"] = None
    return list(paths)


def existing_catalog(folder) -> tuple[int, str] | None:
    """(number of products, "2906 products (Boys 759, ...)") when `folder` holds fashion.csv and
    every image it lists; None otherwise. Reads no image, so it is quick."""
    folder = Path(folder)
    try:
        images = catalog_files(folder / CSV_NAME)
    except (DownloadError, OSError):
        return None
    if not all((folder / relative).is_file() for relative in images):
        return None
    counts = {gender: 0 for gender in helpers.GENDERS}
    for relative in images:
        counts[next(g for g, f in helpers.GENDER_FOLDERS.items() if relative.startswith(f + "/"))] += 1
    return len(images), f"{len(images)} products ({', '.join(f'{gender} {count}' for gender, count in counts.items())})"


def _listing(paths, limit: int = MAX_LISTED) -> str:
    paths = list(paths)
    shown = ", ".join(paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _check_dest(dest: Path) -> None:
    if dest.is_symlink():
        raise DownloadError(
            f"{dest} is a symlink to {os.path.realpath(dest)} (made by --link?); downloading would write into that "
            "folder. Remove the link or choose another --dest."
        )
    if dest.exists() and not dest.is_dir():
        raise DownloadError(f"{dest} exists and is not a folder. Choose another --dest.")


# ============================================================================
# Download
# ============================================================================


def download_catalog(
    dest=None,
    base_url: str = DEFAULT_BASE_URL,
    checksums=None,
    workers: int = DEFAULT_WORKERS,
    api_url: str = DEFAULT_API_URL,
    timeout: float = DEFAULT_TIMEOUT,
    replace: bool = False,
    progress: bool = True,
) -> Report:
    """Download fashion.csv and every image it lists into `dest`, verifying each file.

    `checksums`: a file path or URL of a sha256 list (ORIGINALS.sha256 format); when None,
    dest/ORIGINALS.sha256 is used if present, else the pinned commit's git tree (GitHub API at
    `api_url`). Files already in place and verified are skipped. A file already in place that does
    NOT verify is left alone and reported unless `replace` is True. Raises DownloadError.
    """
    dest = Path(dest) if dest is not None else helpers.get_settings().data_dir
    dest = Path(os.path.abspath(dest.expanduser()))
    created = not os.path.lexists(dest)
    try:
        return _download_catalog(dest, base_url, checksums, workers, api_url, timeout, replace, progress)
    except BaseException:
        if created:  # leave no empty folder behind when nothing could be fetched
            with contextlib.suppress(OSError):
                dest.rmdir()
        raise


def _download_catalog(dest, base_url, checksums, workers, api_url, timeout, replace, progress) -> Report:
    base_url = base_url.rstrip("/") + "/"
    _check_dest(dest)

    local_list = dest / CHECKSUMS_NAME
    if checksums is not None:
        expected, verified_with = load_checksums(checksums, timeout), f"sha256 list {checksums}"
    elif local_list.is_file():
        expected, verified_with = load_checksums(local_list, timeout), f"sha256 list {local_list}"
    else:
        try:
            expected, verified_with = load_git_tree(api_url, timeout), f"git blob ids of {SOURCE_REPO}@{SOURCE_COMMIT[:12]}"
        except NetworkError as error:
            present = existing_catalog(dest)
            if present is None:
                raise
            # Nothing to download; only the comparison with the originals needs the network.
            return Report(dest=dest, files=1 + present[0], skipped=1 + present[0], message=(
                f"{dest} already holds a complete catalogue: {present[1]}, every image present; nothing to download. "
                f"It could not be checked against the originals ({str(error).split(';')[0]})."
            ))

    report = Report(dest=dest, verified_with=verified_with)
    stop = threading.Event()
    lock = threading.Lock()
    sha256_by_path: dict[str, str] = {}

    def count_bytes(n: int) -> None:
        with lock:
            report.bytes_fetched += n

    def fetch(relative: str) -> str:
        """Make dest/relative a verified copy; returns "skipped" or "fetched", raises on failure."""
        if stop.is_set():
            raise KeyboardInterrupt
        if relative not in expected:
            raise _FileFailure(relative, "no checksum for it in the list")
        target = dest / relative
        if target.is_file():
            hashes = hash_file(target)
            if expected[relative].matches(hashes):
                sha256_by_path[relative] = hashes.sha256
                return "skipped"
            if not replace:
                raise _FileFailure(relative, "a different file is already there", conflict=True)
        elif target.exists():
            raise _FileFailure(relative, "something that is not a file is in its place", conflict=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        part = _part_path(target)
        url = base_url + urllib.parse.quote(relative)
        for attempt in range(1, ATTEMPTS + 1):
            try:
                resumed = _download_to(url, part, timeout, stop, count_bytes)
            except urllib.error.HTTPError as error:
                part.unlink(missing_ok=True)
                if error.code == 404:
                    raise _FileFailure(relative, f"not found on the server (HTTP 404 for {url})") from None
                if error.code < 500 or attempt == ATTEMPTS:
                    raise _FileFailure(relative, f"HTTP {error.code} {error.reason} for {url}") from None
            except urllib.error.URLError as error:  # no connection at all: stop everything
                raise _unreachable(url, error) from None
            except TRANSFER_ERRORS as error:  # timeout or dropped connection: keep the part, retry
                if attempt == ATTEMPTS:
                    raise _unreachable(url, error) from None
            else:
                hashes = hash_file(part)
                if expected[relative].matches(hashes):
                    os.replace(part, target)
                    sha256_by_path[relative] = hashes.sha256
                    return "fetched"
                part.unlink(missing_ok=True)
                if not resumed or attempt == ATTEMPTS:  # a resumed part may be stale: retry once in full
                    raise _FileFailure(
                        relative,
                        f"its bytes do not match the expected checksum ({expected[relative].kind} "
                        f"{expected[relative].digest[:12]}..., got {hashes.size} bytes)",
                    )
            time.sleep(0.2 * attempt)
        raise AssertionError("unreachable")

    # fashion.csv first: it lists the images.
    try:
        status = fetch(CSV_NAME)
    except OSError as error:  # the folder cannot be created or written (nothing is written before this)
        raise DownloadError(
            f"Cannot write to {dest} ({error.strerror or error}): choose a writable folder with --dest or FASHION_LENS_DATA."
        ) from None
    except _FileFailure as failure:
        present = existing_catalog(dest) if failure.conflict else None
        if present is not None:
            report.files = report.skipped = 1 + present[0]
            report.message = _other_copy_message(dest, present[1], f"its {CSV_NAME} differs from the originals'", verified_with)
            return report
        raise DownloadError(_failure_message(dest, [failure])) from None
    report.fetched += status == "fetched"
    report.skipped += status == "skipped"
    images = catalog_files(dest / CSV_NAME)
    report.files = 1 + len(images)

    failures: list[_FileFailure] = []
    network_error: NetworkError | None = None
    executor = ThreadPoolExecutor(max_workers=max(1, int(workers)), thread_name_prefix="download")
    bar = _progress_bar(len(images), progress)
    try:
        futures = {executor.submit(fetch, relative): relative for relative in images}
        for future in as_completed(futures):
            try:
                status = future.result()
            except _FileFailure as failure:
                failures.append(failure)
            except NetworkError as error:
                network_error = network_error or error
                stop.set()  # the other downloads would fail the same way
            except KeyboardInterrupt:
                pass  # a worker saw the stop flag
            except OSError as error:  # a local problem (disk full, permissions) with this file
                failures.append(_FileFailure(futures[future], f"{error.strerror or error} ({error.filename or dest})"))
            else:
                report.fetched += status == "fetched"
                report.skipped += status == "skipped"
            bar.update(1)
            bar.set_postfix_str(f"{report.bytes_fetched / 1e6:.1f} MB", refresh=False)
    except KeyboardInterrupt:
        stop.set()
        raise DownloadError(f"Interrupted. Re-run the same command to resume; finished files are kept in {dest}.") from None
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        bar.close()

    if network_error is not None:
        raise DownloadError(f"{network_error} ({report.fetched} files were downloaded; re-run to resume).")
    if images and len(failures) == len(images) and all(failure.conflict for failure in failures):
        # Not one image is an original and none is missing: the folder holds another copy of the
        # catalogue (e.g. resized photos), not a damaged download. Keep it; it is usable as it is.
        report.message = _other_copy_message(
            dest, (existing_catalog(dest) or (0, f"{len(images)} products"))[1],
            f"all {len(images)} images differ from the originals", verified_with,
        )
        return report
    if failures:
        raise DownloadError(_failure_message(dest, failures))

    if not local_list.exists():
        # Record what was verified, so a re-run checks the files offline.
        with helpers.atomic_write(local_list, "w") as handle:
            handle.write(format_checksums(sha256_by_path))
    if report.fetched == 0:
        report.message = (
            f"The catalogue in {dest} is already complete: {report.files} files verified "
            f"({len(images)} images + {CSV_NAME}) against the {verified_with}. Nothing to download."
        )
    else:
        report.message = (
            f"Downloaded {report.fetched} files ({report.bytes_fetched / 1e6:.1f} MB) into {dest}; "
            f"{report.skipped} were already there. All {report.files} files ({len(images)} images + {CSV_NAME}) "
            f"verified against the {verified_with}."
        )
    return report


class _FileFailure(Exception):
    def __init__(self, relative: str, reason: str, conflict: bool = False):
        super().__init__(f"{relative}: {reason}")
        self.relative, self.reason, self.conflict = relative, reason, conflict


def _other_copy_message(dest: Path, present: str, difference: str, verified_with: str) -> str:
    return (
        f"{dest} already holds a complete catalogue, {present}, but not the original files: {difference} "
        f"(checked against the {verified_with}; a resized copy, for example). Kept as it is, nothing downloaded. "
        "To put the originals there instead, re-run with --replace, or choose another --dest."
    )


def _failure_message(dest: Path, failures: list[_FileFailure]) -> str:
    failures = sorted(failures, key=lambda failure: failure.relative)
    conflicts = [failure for failure in failures if failure.conflict]
    others = [failure for failure in failures if not failure.conflict]
    parts = []
    if others:
        details = "; ".join(str(failure) for failure in others[:MAX_LISTED])
        more = f"; and {len(others) - MAX_LISTED} more" if len(others) > MAX_LISTED else ""
        parts.append(
            f"{len(others)} file(s) could not be downloaded and verified: {details}{more}. Nothing was written "
            f"for them. Re-run later to retry (verified files are kept), check --base-url/--checksums, "
            f"or copy a local catalogue with --from PATH."
        )
    if conflicts:
        parts.append(
            f"{len(conflicts)} file(s) in {dest} differ from the expected originals: "
            f"{_listing([failure.relative for failure in conflicts])}. They were left untouched (the folder may "
            "hold another copy, e.g. the downscaled one); delete them, re-run with --replace, or choose another --dest."
        )
    return " ".join(parts)


def _progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="file", desc="images", disable=not enabled, dynamic_ncols=True)


# ============================================================================
# Local copy
# ============================================================================


def copy_catalog(source, dest=None, link: bool = False, progress: bool = True, workers: int = DEFAULT_WORKERS) -> Report:
    """Copy a local catalogue folder (fashion.csv + image folders) into `dest`, checked with
    helpers.load_catalog; with `link`, make `dest` a symlink to the source folder instead.
    Files already identical at `dest` are skipped. Raises DownloadError or helpers.CatalogError."""
    source = Path(source).expanduser()
    dest = Path(dest) if dest is not None else helpers.get_settings().data_dir
    dest = Path(os.path.abspath(dest.expanduser()))
    if not source.is_dir():
        raise DownloadError(f"--from {source}: no such folder. Give the folder that holds fashion.csv and the image folders.")
    source = source.resolve()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", helpers.MissingImagesWarning)
        catalog = helpers.load_catalog(source)
    missing = [str(w.message) for w in caught if issubclass(w.category, helpers.MissingImagesWarning)]
    if missing:
        raise DownloadError(f"The catalogue in {source} is incomplete: {missing[0]}")
    counts = catalog["Gender"].value_counts()
    summary = ", ".join(f"{gender} {int(counts.get(gender, 0))}" for gender in helpers.GENDERS)
    report = Report(dest=dest, files=1 + len(catalog), verified_with=f"helpers.load_catalog({source})")

    if os.path.realpath(dest) == str(source) and (link or not dest.is_symlink()):
        report.skipped = report.files
        report.message = f"{dest} already is the catalogue {source}: {len(catalog)} products ({summary}). Nothing to do."
        return report
    if dest.is_symlink():
        dest.unlink()  # only the link goes (one made by an earlier --link); the folder it pointed to is untouched
    if dest.exists() and not dest.is_dir():
        raise DownloadError(f"{dest} exists and is not a folder; remove it or choose another --dest.")

    if link:
        if dest.is_dir():
            if any(dest.iterdir()):
                raise DownloadError(f"{dest} already exists and is not empty; remove it or choose another --dest to link it to {source}.")
            dest.rmdir()
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            dest.symlink_to(source, target_is_directory=True)
        except OSError as error:
            raise DownloadError(f"Cannot create the symlink {dest} -> {source} ({error.strerror or error}); copy without --link.") from error
        report.fetched = report.files
        report.message = f"Linked {dest} -> {source}: {len(catalog)} products ({summary}), {len(catalog)} images + {CSV_NAME}."
        return report

    sha_by_relative = {CSV_NAME: helpers.file_sha256(source / CSV_NAME)}
    for path, digest in zip(catalog["image_path"], catalog["image_sha256"]):
        sha_by_relative[Path(path).relative_to(source).as_posix()] = digest
    for name in EXTRA_FILES:
        if (source / name).is_file():
            sha_by_relative[name] = helpers.file_sha256(source / name)

    def copy_one(relative: str, digest: str) -> int:
        """Copy one file atomically unless an identical one is there; returns the bytes copied."""
        target = dest / relative
        if target.is_file() and not target.is_symlink() and helpers.file_sha256(target) == digest:
            return -1
        with helpers.atomic_write(target, "wb") as handle, open(source / relative, "rb") as original:
            shutil.copyfileobj(original, handle, 1 << 20)
        return target.stat().st_size

    bar = _progress_bar(len(sha_by_relative), progress)
    try:
        with ThreadPoolExecutor(max_workers=max(1, int(workers)), thread_name_prefix="copy") as executor:
            futures = [executor.submit(copy_one, relative, digest) for relative, digest in sha_by_relative.items()]
            for future in as_completed(futures):
                copied = future.result()
                report.skipped += copied < 0
                report.fetched += copied >= 0
                report.bytes_fetched += max(copied, 0)
                bar.update(1)
    except OSError as error:
        raise DownloadError(f"Cannot copy into {dest}: {error.strerror or error} ({error.filename}). Free some space or choose another --dest.") from error
    except helpers.SettingsError as error:  # atomic_write found the folder not writable
        raise DownloadError(f"Cannot write to {dest}: choose a writable folder with --dest or FASHION_LENS_DATA.") from error
    finally:
        bar.close()
    report.message = (
        f"Copied {report.fetched} files ({report.bytes_fetched / 1e6:.1f} MB) from {source} into {dest}"
        f"{f'; {report.skipped} were already there' if report.skipped else ''}. "
        f"The catalogue has {len(catalog)} products ({summary}) with their images."
    )
    if report.fetched == 0:
        report.message = f"{dest} is already a complete copy of {source}: {len(catalog)} products ({summary}). Nothing to copy."
    return report


# ============================================================================
# Command line
# ============================================================================


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Get the fashion catalogue (fashion.csv + product photos) into the data folder, verified file by file.",
    )
    parser.add_argument("--dest", help="catalogue folder to fill (default: data/fashion, or $FASHION_LENS_DATA)")
    parser.add_argument("--from", dest="source", metavar="PATH", help="copy this local catalogue folder instead of downloading")
    parser.add_argument("--link", action="store_true", help="with --from: make the destination a symlink to PATH instead of copying")
    parser.add_argument("--base-url", default=DEFAULT_BASE_URL, help="where <path> of each file is fetched from (default: the pinned GitHub commit)")
    parser.add_argument("--checksums", metavar="FILE_OR_URL", help=f"sha256 list in the {CHECKSUMS_NAME} format to verify against")
    parser.add_argument("--api-url", default=DEFAULT_API_URL, help="GitHub API base URL for the git-tree verification")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="parallel downloads (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="network timeout in seconds (default: %(default)s)")
    parser.add_argument("--replace", action="store_true", help="overwrite files in the destination that do not verify")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.link and not args.source:
        build_parser().error("--link needs --from PATH")
    try:
        if args.source:
            report = copy_catalog(args.source, args.dest, link=args.link, progress=not args.no_progress, workers=args.workers)
        else:
            report = download_catalog(
                args.dest, base_url=args.base_url, checksums=args.checksums, workers=args.workers,
                api_url=args.api_url, timeout=args.timeout, replace=args.replace, progress=not args.no_progress,
            )
    except (DownloadError, helpers.CatalogError, helpers.SettingsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; re-run the same command to resume.", file=sys.stderr)
        return 130
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
