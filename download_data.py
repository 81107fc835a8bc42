"""Get the fashion catalogue (fashion.csv and its product photos) into the data folder.

    python download_data.py                  # download the originals and verify every file
    python download_data.py --from PATH      # copy a local catalogue folder instead
    python download_data.py --from PATH --link   # or make the data folder a symlink to it

The destination is data/fashion (or $FASHION_LENS_DATA, or --dest). pooch fetches each file and
retries a dropped, stalled or 5xx transfer; every file is verified before it goes into place,
against --checksums FILE_OR_URL (the ORIGINALS.sha256 format), else dest/ORIGINALS.sha256, else the
git blob ids of the pinned source commit (GitHub API). A complete download records ORIGINALS.sha256,
so a re-run checks offline and fetches only what is missing. Files are written under the hidden
dest/.download and renamed into place once verified: an interrupted run leaves no half file under
a real name. A file in place that does not verify is kept unless --replace; a folder holding a
complete other copy (resized photos, say) is kept and reported.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import csv
import dataclasses
import filecmp
import hashlib
import io
import json
import logging
import os
import re
import shutil
import sys
import urllib.parse
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import pooch
import requests

from fashion_lens.catalog import GENDER_FOLDERS, GENDERS
from fashion_lens.settings import get_settings

SOURCE_REPO = "knowrohit/Fashion-Rec-Sys"
SOURCE_COMMIT = "21cc20f7c2c44833cca3089d09caf612849a0c1a"
SOURCE_FOLDER = "data"  # the catalogue's folder inside the source repository
DEFAULT_BASE_URL = f"https://raw.githubusercontent.com/{SOURCE_REPO}/{SOURCE_COMMIT}/{SOURCE_FOLDER}/"
DEFAULT_API_URL = "https://api.github.com"
CSV_NAME = "fashion.csv"
CHECKSUMS_NAME = "ORIGINALS.sha256"
STAGING_NAME = ".download"  # hidden folder in the destination where files are written first
EXTRA_FILES = ("README.md", "duplicate_groups.csv")  # --from also copies these when the source has them
DEFAULT_WORKERS = 8
DEFAULT_TIMEOUT = 30.0  # seconds without an answer or data before a try counts as stalled
ATTEMPTS = 3  # tries per file (pooch's retry_if_failed + 1): a stall gives up after ~ATTEMPTS x timeout + 3 s
USER_AGENT = f"fashion-lens-download/2.0 (pooch {pooch.__version__})"
OFFLINE_ADVICE = "if this machine is offline, copy a local catalogue with --from PATH or set FASHION_LENS_DATA"
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
MAX_LISTED = 10  # file names quoted in an error message

FileHashes = collections.namedtuple("FileHashes", "sha256 git_blob size")


class DownloadError(RuntimeError):
    """The catalogue could not be fetched, copied or verified; the message says what to do."""


class NetworkError(DownloadError):
    """A server could not be reached, or the connection broke or stalled (not an HTTP error answer)."""


class _FileFailure(Exception):
    """One file could not be put in place. Not a ValueError or RequestException: pooch passes it on untried."""

    def __init__(self, relative: str, reason: str, conflict: bool = False):
        super().__init__(f"{relative}: {reason}")
        self.relative, self.reason, self.conflict = relative, reason, conflict


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

    def tally(self, relative: str, status: str) -> None:
        if status == "fetched":
            self.fetched += 1
            self.bytes_fetched += (self.dest / relative).stat().st_size
        else:
            self.skipped += 1


# -- Hashes and checksum lists: {path: "sha256:<hex>" or "git-blob:<hex>"} --------------------------


def hash_file(path) -> FileHashes:
    """The sha256 and the git blob id (sha1 of b"blob <size>\\0" + content) of a file, in one read."""
    size = os.stat(path).st_size
    sha256, git_blob, read = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % size), 0
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha256.update(block)
            git_blob.update(block)
            read += len(block)
    if read != size:  # the file changed while it was read: the git id would be wrong
        raise DownloadError(f"{path} changed while it was being verified; re-run when nothing else writes to it.")
    return FileHashes(sha256.hexdigest(), git_blob.hexdigest(), size)


def _matches(expected: str, hashes: FileHashes) -> bool:
    kind, digest = expected.split(":")
    return (hashes.sha256 if kind == "sha256" else hashes.git_blob) == digest


def parse_checksums(text: str, source: str) -> dict[str, str]:
    """Read a sha256 list ("<sha256>  <path>" per line, as sha256sum writes it)."""
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
        expected[match.group(2).strip().removeprefix("./")] = f"sha256:{match.group(1).lower()}"
    if not expected:
        raise DownloadError(f"{source} lists no checksums. Give a list in the {CHECKSUMS_NAME} format.")
    return expected


def load_checksums(checksums, timeout: float = DEFAULT_TIMEOUT) -> dict[str, str]:
    """Read a checksum list from a file path or an http(s) URL."""
    if re.match(r"https?://", str(checksums)):
        text = fetch_bytes(str(checksums), timeout, what="the checksum list").decode("utf-8", errors="replace")
        return parse_checksums(text, str(checksums))
    path = Path(checksums).expanduser()
    if not path.is_file():
        raise DownloadError(f"Checksum list {path} does not exist. Give an existing file or an http(s) URL to --checksums.")
    return parse_checksums(path.read_text(encoding="utf-8", errors="replace"), str(path))


def load_git_tree(api_url: str = DEFAULT_API_URL, timeout: float = DEFAULT_TIMEOUT) -> dict[str, str]:
    """The git blob id of every file of the source folder at the pinned commit, from the GitHub API."""
    url = f"{api_url.rstrip('/')}/repos/{SOURCE_REPO}/git/trees/{SOURCE_COMMIT}?recursive=1"
    data = fetch_bytes(url, timeout, what="the file list of the source commit (GitHub API)", api=True)
    try:
        tree = json.loads(data)
        entries = tree["tree"]
    except (ValueError, KeyError, TypeError) as error:
        raise DownloadError(f"{url} did not answer with a git tree ({error}). Pass a checksum list with --checksums.") from error
    prefix = SOURCE_FOLDER + "/"
    expected = {
        entry["path"][len(prefix):]: f"git-blob:{str(entry['sha']).lower()}"
        for entry in entries
        if isinstance(entry, dict) and entry.get("type") == "blob" and str(entry.get("path", "")).startswith(prefix)
    }
    if tree.get("truncated"):  # GitHub cuts very large trees; the files left out are reported unverifiable
        warnings.warn(f"{url} returned a truncated tree; files it leaves out cannot be verified.", stacklevel=2)
    if not expected:
        raise DownloadError(f"{url} lists no files under {prefix}. Pass a checksum list with --checksums.")
    return expected


# -- HTTP: pooch's HTTPDownloader (requests) --------------------------------------------------------


def _http_downloader(timeout: float, **headers) -> pooch.HTTPDownloader:
    # requests' timeout bounds the connection and every read: a server that stops sending fails the try.
    return pooch.HTTPDownloader(chunk_size=1 << 16, timeout=timeout, headers={"User-Agent": USER_AGENT, **headers})


def _http_text(error: requests.HTTPError, url: str) -> str:
    status, reason = error.response.status_code, error.response.reason
    return f"not found on the server (HTTP 404 for {url})" if status == 404 else f"HTTP {status} {reason} for {url}"


def _network_error(url: str, error: requests.RequestException, timeout: float, tries: int = 1) -> NetworkError:
    host, tried = urllib.parse.urlsplit(url).netloc or url, f"{tries} tr{'ies' if tries > 1 else 'y'}"
    if isinstance(error, requests.Timeout) or "timed out" in str(error).lower():
        return NetworkError(
            f"{host} sent nothing for {timeout:g} s ({tried}, {url}): the download stalled. Re-run later to resume "
            f"(finished files are kept) or allow longer with --timeout; {OFFLINE_ADVICE}."
        )
    if isinstance(error, requests.exceptions.ChunkedEncodingError):
        return NetworkError(f"{host} broke off the transfer of {url} ({tried}). Re-run later to resume (finished files are kept); {OFFLINE_ADVICE}.")
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", str(error))  # requests nests the OS's reason deep in its text
    return NetworkError(f"cannot reach {host}: {found.group(1) if found else type(error).__name__}; {OFFLINE_ADVICE}.")


def fetch_bytes(url: str, timeout: float = DEFAULT_TIMEOUT, what: str = "", api: bool = False) -> bytes:
    """GET a small resource in memory, turning failures into DownloadError with advice."""
    buffer = io.BytesIO()
    try:
        _http_downloader(timeout, **({"Accept": "application/vnd.github+json"} if api else {}))(url, buffer, None)
    except requests.HTTPError as error:
        status = error.response.status_code
        hint = " Pass a checksum list with --checksums." if api else ""
        if api and status in (403, 429):
            hint = " The GitHub API limits anonymous requests per hour: retry later, or pass a checksum list with --checksums."
        raise DownloadError(f"Could not get {what or url}: HTTP {status} {error.response.reason} from {url}.{hint}") from error
    except requests.RequestException as error:
        raise _network_error(url, error, timeout) from error
    return buffer.getvalue()


class _Downloader:
    """pooch's HTTPDownloader for one file, then its check. pooch retries every failure, a 404 and a
    checksum mismatch too (3 downloads and 3 s of waits per file: some 20 minutes for a checksum list
    that does not fit the server); raising _FileFailure here makes those final. The check also covers
    git blob ids, which pooch's known_hash cannot express."""

    def __init__(self, http: pooch.HTTPDownloader, relative: str, expected: str):
        self.http, self.relative, self.expected, self.sha256 = http, relative, expected, ""

    def __call__(self, url: str, output_file: str, pooch_instance) -> None:
        try:
            self.http(url, output_file, pooch_instance)
        except requests.HTTPError as error:
            if error.response.status_code < 500 and error.response.status_code not in (408, 429):
                raise _FileFailure(self.relative, _http_text(error, url)) from None
            raise
        hashes = hash_file(output_file)
        if not _matches(self.expected, hashes):
            kind, digest = self.expected.split(":")
            raise _FileFailure(self.relative, f"its bytes do not match the expected checksum ({kind} {digest[:12]}..., got {hashes.size} bytes from {url})")
        self.sha256 = hashes.sha256


@contextlib.contextmanager
def _quiet_pooch():
    """pooch logs every download on stderr; the progress bar and the summary say enough."""
    logger, level = pooch.get_logger(), pooch.get_logger().level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


# -- The destination ---------------------------------------------------------------------------------


class _Staging:
    """dest/.download, where files are written before they are renamed into place. A killed run
    leaves only this folder; entering and leaving the `with` block deletes it."""

    def __init__(self, dest: Path):
        self.dest, self.root = dest, dest / STAGING_NAME
        mask = os.umask(0)  # the only way to read the umask; done before any worker thread starts
        os.umask(mask)
        self.file_mode = 0o666 & ~mask

    def __enter__(self) -> _Staging:
        shutil.rmtree(self.root, ignore_errors=True)
        return self

    def __exit__(self, *exc_info) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def path(self, relative: str) -> Path:
        # Its folder is made here: pooch's check-then-create of the folder races between threads.
        staged = self.root / relative
        staged.parent.mkdir(parents=True, exist_ok=True)
        return staged

    def commit(self, staged: Path, relative: str) -> None:
        """Rename a complete file into place, once on disk and readable like any other file."""
        with open(staged, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(staged, self.file_mode)  # pooch's temporary files are private (0600)
        (self.dest / relative).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, self.dest / relative)


def _resolve_dest(dest) -> Path:
    if dest is None:
        try:
            dest = get_settings().data_dir
        except ValueError as error:  # SettingsError: a FASHION_LENS_* variable it cannot use
            raise DownloadError(f"{error} Or name the catalogue folder with --dest.") from None
    return Path(os.path.abspath(Path(dest).expanduser()))


def _check_dest(dest: Path) -> None:
    if dest.is_symlink():
        raise DownloadError(
            f"{dest} is a symlink to {os.path.realpath(dest)} (made by --link?); downloading would write into that "
            "folder. Remove the link or choose another --dest."
        )
    if dest.exists() and not dest.is_dir():
        raise DownloadError(f"{dest} exists and is not a folder. Choose another --dest.")


def catalog_files(csv_path) -> list[str]:
    """The image paths (relative to the catalogue folder) that fashion.csv's rows refer to."""
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
        if gender not in GENDER_FOLDERS:
            raise DownloadError(f"{csv_path} line {number}: unknown Gender {gender!r} (expected one of {', '.join(GENDERS)}).")
        if not SAFE_NAME.fullmatch(name):  # it becomes a path and a URL: no "..", no "/"
            raise DownloadError(f"{csv_path} line {number}: {name!r} is not a plain image file name; refusing to use it.")
        paths[f"{GENDER_FOLDERS[gender]}/{name}"] = None
    return list(paths)


def existing_catalog(folder) -> tuple[int, str] | None:
    """(number of products, "2906 products (Boys 759, ...)") when `folder` holds fashion.csv and
    every image it lists; None otherwise. Reads no image, so it is quick."""
    try:
        images = catalog_files(Path(folder) / CSV_NAME)
    except (DownloadError, OSError):
        return None
    if not all((Path(folder) / relative).is_file() for relative in images):
        return None
    gender_of = {subfolder + "/": gender for gender, subfolder in GENDER_FOLDERS.items()}
    counts = collections.Counter(gender_of[image[: image.rindex("/") + 1]] for image in images)
    return len(images), f"{len(images)} products ({', '.join(f'{gender} {counts[gender]}' for gender in GENDERS)})"


def _listing(paths, limit: int = MAX_LISTED) -> str:
    return ", ".join(paths[:limit]) + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _run_parallel(work, items, workers: int, bar):
    """Yield (item, work(item) or the exception it raised) as each finishes, on a thread pool.
    Closing the generator cancels what has not started and waits for what has."""
    executor = ThreadPoolExecutor(max_workers=max(1, int(workers)), thread_name_prefix="fetch")
    try:
        futures = {executor.submit(work, item): item for item in items}
        for future in as_completed(futures):
            bar.update(1)
            error = future.exception()
            yield futures[future], (future.result() if error is None else error)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        bar.close()


def _progress_bar(total: int, enabled: bool, unit: str):
    # One bar over all files: pooch's bar is per file, and thousands of them would scroll by.
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=unit, desc=f"{unit}s", disable=not enabled, dynamic_ncols=True)


# -- Download ----------------------------------------------------------------------------------------


class _Fetcher:
    """Puts each file of the catalogue in place as a verified original; fetch() runs in threads."""

    def __init__(self, staging: _Staging, base_url: str, expected: dict[str, str], timeout: float, replace: bool):
        self.dest, self.staging, self.expected, self.timeout, self.replace = staging.dest, staging, expected, timeout, replace
        # pooch checks each sha256 once more before its move (known_hash; None for git blob ids)
        # and retries a dropped or stalled connection or a 5xx answer.
        registry = {path: hashes if hashes.startswith("sha256:") else None for path, hashes in expected.items()}
        self.pooch = pooch.Pooch(path=staging.root, base_url=base_url, registry=registry, retry_if_failed=ATTEMPTS - 1)
        self.http = _http_downloader(timeout)
        self.sha256: dict[str, str] = {}  # of every verified file, for ORIGINALS.sha256

    def fetch(self, relative: str) -> str:
        """Make dest/relative a verified original: "skipped" or "fetched"; raises _FileFailure or NetworkError."""
        expected = self.expected.get(relative)
        if expected is None:
            raise _FileFailure(relative, "no checksum for it in the list")
        target = self.dest / relative
        if target.is_file():
            hashes = hash_file(target)
            if _matches(expected, hashes):
                self.sha256[relative] = hashes.sha256
                return "skipped"
            if not self.replace:  # it may be a resized copy the user wants
                raise _FileFailure(relative, "a different file is already there", conflict=True)
        elif os.path.lexists(target):
            raise _FileFailure(relative, "something that is not a file is in its place", conflict=True)
        url, downloader = self.pooch.get_url(relative), _Downloader(self.http, relative, expected)
        self.staging.path(relative)
        try:
            staged = Path(self.pooch.fetch(relative, downloader=downloader))
        except requests.HTTPError as error:  # a server error (5xx) on every try
            raise _FileFailure(relative, _http_text(error, url)) from None
        except requests.RequestException as error:
            raise _network_error(url, error, self.timeout, ATTEMPTS) from None
        self.sha256[relative] = downloader.sha256
        self.staging.commit(staged, relative)
        return "fetched"


def download_catalog(
    dest=None, base_url: str = DEFAULT_BASE_URL, checksums=None, workers: int = DEFAULT_WORKERS, api_url: str = DEFAULT_API_URL,
    timeout: float = DEFAULT_TIMEOUT, replace: bool = False, progress: bool = True,
) -> Report:
    """Download fashion.csv and every image it lists into `dest`, verifying each file.

    `checksums`: a file path or URL of a sha256 list (ORIGINALS.sha256 format); when None,
    dest/ORIGINALS.sha256 is used if present, else the pinned commit's git tree (GitHub API at
    `api_url`). Files already in place and verified are skipped. A file already in place that does
    NOT verify is left alone and reported unless `replace` is True. Raises DownloadError.
    """
    dest = _resolve_dest(dest)
    created = not os.path.lexists(dest)
    try:
        with _quiet_pooch():
            return _download(dest, base_url, checksums, workers, api_url, timeout, replace, progress)
    except BaseException:
        if created:  # leave no empty folder behind when nothing could be fetched
            with contextlib.suppress(OSError):
                dest.rmdir()
        raise


def _download(dest: Path, base_url, checksums, workers, api_url, timeout, replace, progress) -> Report:
    _check_dest(dest)
    try:
        expected, verified_with = _expected_hashes(dest, checksums, api_url, timeout)
    except NetworkError as error:
        present = existing_catalog(dest)
        if present is None or checksums is not None:
            raise
        # Nothing to download; only the comparison with the originals needs the network.
        return Report(dest=dest, files=1 + present[0], skipped=1 + present[0], message=(
            f"{dest} already holds a complete catalogue: {present[1]}, every image present; nothing to download. "
            f"It could not be checked against the originals ({str(error).split(';')[0]})."
        ))
    report = Report(dest=dest, verified_with=verified_with)
    with _Staging(dest) as staging:
        fetcher = _Fetcher(staging, base_url.rstrip("/") + "/", expected, timeout, replace)
        if _fetch_csv(fetcher, report):
            return report
        images = catalog_files(dest / CSV_NAME)
        report.files = 1 + len(images)
        failures = _fetch_images(fetcher, images, report, workers, progress)
        if images and len(failures) == len(images) and all(failure.conflict for failure in failures):
            # Not one image is an original and none is missing: the folder holds another copy of the
            # catalogue (e.g. resized photos), not a damaged download. Keep it; it is usable as it is.
            present = (existing_catalog(dest) or (0, f"{len(images)} products"))[1]
            report.message = _other_copy_message(dest, present, f"all {len(images)} images differ from the originals", verified_with)
            return report
        if failures:
            raise DownloadError(_failure_message(dest, failures))
        note = _record_checksums(staging, fetcher.sha256)
    checked = f"{report.files} files ({len(images)} images + {CSV_NAME})"
    if report.fetched == 0:
        report.message = f"The catalogue in {dest} is already complete: {checked} verified against the {verified_with}. Nothing to download."
    else:
        report.message = (
            f"Downloaded {report.fetched} files ({report.bytes_fetched / 1e6:.1f} MB) into {dest}; "
            f"{report.skipped} were already there. All {checked} verified against the {verified_with}."
        )
    report.message += note
    return report


def _expected_hashes(dest: Path, checksums, api_url: str, timeout: float) -> tuple[dict[str, str], str]:
    if checksums is not None:
        return load_checksums(checksums, timeout), f"sha256 list {checksums}"
    if (dest / CHECKSUMS_NAME).is_file():
        return load_checksums(dest / CHECKSUMS_NAME, timeout), f"sha256 list {dest / CHECKSUMS_NAME}"
    return load_git_tree(api_url, timeout), f"git blob ids of {SOURCE_REPO}@{SOURCE_COMMIT[:12]}"


def _fetch_csv(fetcher: _Fetcher, report: Report) -> bool:
    """fashion.csv first, as it lists the images. True when the folder holds another complete
    catalogue, kept as it is (the report is then final)."""
    dest = fetcher.dest
    try:
        report.tally(CSV_NAME, fetcher.fetch(CSV_NAME))
    except OSError as error:  # the folder cannot be created or written (nothing is written before this)
        raise DownloadError(
            f"Cannot write to {dest} ({error.strerror or error}): choose a writable folder with --dest or FASHION_LENS_DATA."
        ) from None
    except _FileFailure as failure:
        present = existing_catalog(dest) if failure.conflict else None
        if present is None:
            raise DownloadError(_failure_message(dest, [failure])) from None
        report.files = report.skipped = 1 + present[0]
        report.message = _other_copy_message(dest, present[1], f"its {CSV_NAME} differs from the originals'", report.verified_with)
        return True
    return False


def _fetch_images(fetcher: _Fetcher, images: list[str], report: Report, workers: int, progress: bool) -> list[_FileFailure]:
    """Fetch the images in parallel; returns the files that failed, raises when the server is lost."""
    failures, bar = [], _progress_bar(len(images), progress, "image")
    try:
        with contextlib.closing(_run_parallel(fetcher.fetch, images, workers, bar)) as outcomes:
            for relative, outcome in outcomes:
                if isinstance(outcome, NetworkError):  # the other downloads would fail the same way: stop
                    raise DownloadError(f"{outcome} ({report.fetched} files were downloaded; re-run to resume).")
                if isinstance(outcome, _FileFailure):
                    failures.append(outcome)
                elif isinstance(outcome, OSError):  # a local problem (disk full, permissions) with this file
                    failures.append(_FileFailure(relative, f"{outcome.strerror or outcome} ({outcome.filename or fetcher.dest})"))
                elif isinstance(outcome, BaseException):
                    raise outcome
                else:
                    report.tally(relative, outcome)
                    bar.set_postfix_str(f"{report.bytes_fetched / 1e6:.1f} MB", refresh=False)
    except KeyboardInterrupt:
        raise DownloadError(f"Interrupted. Re-run the same command to resume; finished files are kept in {fetcher.dest}.") from None
    return failures


def _record_checksums(staging: _Staging, sha256_by_path: dict[str, str]) -> str:
    """Write ORIGINALS.sha256 so a re-run checks the files offline; returns a note if it cannot."""
    if (staging.dest / CHECKSUMS_NAME).exists():
        return ""
    try:
        staged = staging.path(CHECKSUMS_NAME)
        staged.write_text("".join(f"{digest}  {path}\n" for path, digest in sorted(sha256_by_path.items())), encoding="utf-8")
        staging.commit(staged, CHECKSUMS_NAME)
    except OSError as error:  # a read-only complete folder: it only loses the offline re-check
        return f" {CHECKSUMS_NAME} could not be written ({error.strerror or error}): the next run checks against the originals again."
    return ""


def _other_copy_message(dest: Path, present: str, difference: str, verified_with: str) -> str:
    return (
        f"{dest} already holds a complete catalogue, {present}, but not the original files: {difference} "
        f"(checked against the {verified_with}; a resized copy, for example). Kept as it is, nothing downloaded. "
        "To put the originals there instead, re-run with --replace, or choose another --dest."
    )


def _failure_message(dest: Path, failures: list[_FileFailure]) -> str:
    failures = sorted(failures, key=lambda failure: failure.relative)
    conflicts = [failure.relative for failure in failures if failure.conflict]
    others = [failure for failure in failures if not failure.conflict]
    parts = []
    if others:
        more = f"; and {len(others) - MAX_LISTED} more" if len(others) > MAX_LISTED else ""
        parts.append(
            f"{len(others)} file(s) could not be downloaded and verified: {'; '.join(map(str, others[:MAX_LISTED]))}{more}. "
            "Nothing was written for them. Re-run later to retry (verified files are kept), check --base-url/--checksums, "
            "or copy a local catalogue with --from PATH."
        )
    if conflicts:
        parts.append(
            f"{len(conflicts)} file(s) in {dest} differ from the expected originals: {_listing(conflicts)}. They were left "
            "untouched (the folder may hold another copy, e.g. the downscaled one); delete them, re-run with --replace, or choose another --dest."
        )
    return " ".join(parts)


# -- Local copy --------------------------------------------------------------------------------------


def copy_catalog(source, dest=None, link: bool = False, progress: bool = True, workers: int = DEFAULT_WORKERS) -> Report:
    """Copy a local catalogue folder (fashion.csv + image folders) into `dest` once it is checked
    complete; with `link`, make `dest` a symlink to it instead. Files already identical at `dest`
    are skipped. Raises DownloadError."""
    source, dest = Path(source).expanduser(), _resolve_dest(dest)
    if not source.is_dir():
        raise DownloadError(f"--from {source}: no such folder. Give the folder that holds fashion.csv and the image folders.")
    source = source.resolve()
    if not (source / CSV_NAME).is_file():
        raise DownloadError(f"{source / CSV_NAME} is missing. The folder given to --from must hold fashion.csv and the image folders.")
    images = catalog_files(source / CSV_NAME)
    missing = [relative for relative in images if not (source / relative).is_file()]
    if missing:
        raise DownloadError(
            f"The catalogue in {source} is incomplete: {len(missing)} of {len(images)} products have no image file "
            f"({_listing(missing)}). Copy those photos there, or run without --from to download the originals."
        )
    products = existing_catalog(source)[1]
    report = Report(dest=dest, files=1 + len(images), verified_with=f"the file list of {source / CSV_NAME}")
    if os.path.realpath(dest) == str(source) and (link or not dest.is_symlink()):
        report.skipped = report.files
        report.message = f"{dest} already is the catalogue {source}: {products}. Nothing to do."
        return report
    if dest.is_symlink():
        dest.unlink()  # only the link goes (one made by an earlier --link); the folder it pointed to is untouched
    if dest.exists() and not dest.is_dir():
        raise DownloadError(f"{dest} exists and is not a folder; remove it or choose another --dest.")
    if link:
        _link(source, dest)
        report.fetched = report.files
        report.message = f"Linked {dest} -> {source}: {products}, {len(images)} images + {CSV_NAME}."
        return report
    _copy_files(source, [CSV_NAME, *images, *(name for name in EXTRA_FILES if (source / name).is_file())], report, workers, progress)
    report.message = (
        f"Copied {report.fetched} files ({report.bytes_fetched / 1e6:.1f} MB) from {source} into {dest}"
        f"{f'; {report.skipped} were already there' if report.skipped else ''}. The catalogue has {products} with their images."
    )
    if report.fetched == 0:
        report.message = f"{dest} is already a complete copy of {source}: {products}. Nothing to copy."
    return report


def _link(source: Path, dest: Path) -> None:
    if dest.is_dir():
        if any(dest.iterdir()):
            raise DownloadError(f"{dest} already exists and is not empty; remove it or choose another --dest to link it to {source}.")
        dest.rmdir()
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        dest.symlink_to(source, target_is_directory=True)
    except OSError as error:
        raise DownloadError(f"Cannot create the symlink {dest} -> {source} ({error.strerror or error}); copy without --link.") from error


def _copy_files(source: Path, files: list[str], report: Report, workers: int, progress: bool) -> None:
    def copy_one(relative: str) -> str:
        target = staging.dest / relative
        if target.is_file() and not target.is_symlink() and filecmp.cmp(source / relative, target, shallow=False):
            return "skipped"
        staged = staging.path(relative)
        shutil.copyfile(source / relative, staged)
        staging.commit(staged, relative)
        return "fetched"

    try:
        with _Staging(report.dest) as staging, contextlib.closing(
            _run_parallel(copy_one, files, workers, _progress_bar(len(files), progress, "file"))
        ) as outcomes:
            for relative, outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome
                report.tally(relative, outcome)
    except OSError as error:
        raise DownloadError(
            f"Cannot copy into {report.dest}: {error.strerror or error} ({error.filename}). Free some space or choose another --dest."
        ) from error


# -- Command line ------------------------------------------------------------------------------------


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
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT,
        help=f"seconds without an answer or data before a try counts as stalled; each file gets {ATTEMPTS} tries (default: %(default)s)",
    )
    parser.add_argument("--replace", action="store_true", help="overwrite files in the destination that do not verify")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.link and not args.source:
        parser.error("--link needs --from PATH")
    try:
        if args.source:
            report = copy_catalog(args.source, args.dest, link=args.link, progress=not args.no_progress, workers=args.workers)
        else:
            report = download_catalog(
                args.dest, base_url=args.base_url, checksums=args.checksums, workers=args.workers,
                api_url=args.api_url, timeout=args.timeout, replace=args.replace, progress=not args.no_progress,
            )
    except DownloadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; re-run the same command to resume.", file=sys.stderr)
        return 130
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
