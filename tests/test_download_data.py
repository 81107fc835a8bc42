"""Tests of download_data.py against a local HTTP server serving a few real catalogue files.

The served files come from a local copy of the catalogue, found through FASHION_LENS_TEST_CATALOG
(default: the shared data folder next to the project). Without it the tests are skipped, or fail
when the CI environment variable is set.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

PROJECT_DIR = Path(__file__).resolve().parents[1]
if str(PROJECT_DIR) not in sys.path:
    sys.path.insert(0, str(PROJECT_DIR))

import download_data  # noqa: E402
from download_data import DownloadError, copy_catalog, download_catalog  # noqa: E402
from fashion_lens.catalog import GENDER_FOLDERS, GENDERS, load_catalog  # noqa: E402

CATALOG_ENV = "FASHION_LENS_TEST_CATALOG"
ROWS_PER_GENDER = {"Boys": 2, "Girls": 1, "Men": 1, "Women": 1}  # 5 products, every folder


@pytest.fixture(scope="session")
def local_catalog() -> Path:
    default = Path(__file__).resolve().parents[1].parent / "shared/data/fashion"
    path = Path(os.environ.get(CATALOG_ENV) or default)
    if not (path / "fashion.csv").is_file():
        message = f"no local catalogue copy at {path} (set {CATALOG_ENV})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


class Handler(SimpleHTTPRequestHandler):
    """http.server's file handler that records requested paths and can break a transfer: for a
    path in server.faults ({path under /data/: [kind, times]}), the next `times` answers send the
    headers and half the file, then close the connection ("truncate") or send nothing more
    until the test ends ("stall")."""

    def log_message(self, format, *args):  # keep the test output clean
        pass

    def do_GET(self):
        self.server.log.append(self.path)
        fault = self.server.faults.get(self.path.removeprefix("/data/"))
        if not fault or fault[1] <= 0:
            return super().do_GET()
        fault[1] -= 1
        data = Path(self.translate_path(self.path)).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        if fault[0] == "stall":
            self.server.release.wait(30)
        self.close_connection = True


@dataclasses.dataclass
class Served:
    httpd: ThreadingHTTPServer
    data: Path  # the served catalogue folder (site/data)
    site: Path
    files: list[str]  # paths relative to `data`: fashion.csv first, then the images
    checksums: Path  # sha256 list of the served files (ORIGINALS.sha256 format), outside the site
    root_url: str

    @property
    def base_url(self) -> str:
        return self.root_url + "data/"

    def requested(self) -> list[str]:
        return list(self.httpd.log)


def build_subset(local_catalog: Path, folder: Path) -> list[str]:
    """Write a small fashion.csv (a few real rows) and their real images into `folder`."""
    with open(local_catalog / "fashion.csv", encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        header, rows = reader.fieldnames, list(reader)
    wanted = dict(ROWS_PER_GENDER)
    chosen = []
    for row in rows:
        if wanted.get(row["Gender"], 0) > 0:
            wanted[row["Gender"]] -= 1
            chosen.append(row)
    assert len(chosen) == sum(ROWS_PER_GENDER.values())
    folder.mkdir(parents=True)
    with open(folder / "fashion.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(chosen)
    files = ["fashion.csv"]
    for row in chosen:
        relative = f"{GENDER_FOLDERS[row['Gender']]}/{row['Image']}"
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local_catalog / relative, folder / relative)
        files.append(relative)
    return files


def sha256_list(folder: Path, files) -> str:
    return "".join(f"{hashlib.sha256((folder / name).read_bytes()).hexdigest()}  {name}\n" for name in files)


@pytest.fixture
def served(local_catalog, tmp_path):
    site = tmp_path / "site"
    files = build_subset(local_catalog, site / "data")
    checksums = tmp_path / "checks.sha256"
    checksums.write_text(sha256_list(site / "data", files))
    shutil.copyfile(checksums, site / "checks.sha256")  # also served, for --checksums URL
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(site)))
    httpd.daemon_threads = True
    httpd.log, httpd.faults, httpd.release = [], {}, threading.Event()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Served(httpd, site / "data", site, files, checksums, f"http://127.0.0.1:{httpd.server_address[1]}/")
    finally:
        httpd.release.set()  # ends stalled answers
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def parse_list(path: Path) -> dict[str, str]:
    pairs = [line.split("  ", 1) for line in path.read_text().splitlines()]
    return {name: digest for digest, name in pairs}


def leftovers(dest: Path) -> list[str]:
    """Temporary (hidden) files anywhere under dest."""
    return sorted(str(path.relative_to(dest)) for path in dest.rglob(".*"))


def assert_complete_copy(served: Served, dest: Path) -> None:
    mask = os.umask(0)
    os.umask(mask)
    for name in served.files:
        assert (dest / name).read_bytes() == (served.data / name).read_bytes(), name
        assert (dest / name).stat().st_mode & 0o777 == 0o666 & ~mask, f"{name} is not readable like a file created here"
    assert leftovers(dest) == []


def real_files(dest: Path) -> list[str]:
    """Files under their real names (outside hidden folders)."""
    return sorted(str(path.relative_to(dest)) for path in dest.rglob("*")
                  if path.is_file() and not any(part.startswith(".") for part in path.relative_to(dest).parts))


def corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte differs
    path.write_bytes(bytes(data))


def download(served: Served, dest: Path, **options):
    options.setdefault("checksums", str(served.checksums))
    options.setdefault("timeout", 10)
    return download_catalog(dest, base_url=served.base_url, workers=3, progress=False, **options)


# ============================================================================
# Download with a sha256 list
# ============================================================================


def test_download_verifies_every_file_and_a_rerun_skips_them(served, tmp_path):
    dest = tmp_path / "dest"
    report = download(served, dest)
    assert (report.fetched, report.skipped, report.files) == (6, 0, 6)
    assert "Downloaded 6 files" in report.message
    assert_complete_copy(served, dest)
    assert sorted(served.requested()) == sorted(f"/data/{name}" for name in served.files)
    catalog = load_catalog(dest)
    assert len(catalog) == 5 and set(catalog["Gender"]) == set(GENDERS)
    # What was verified is recorded, so a re-run needs no checksum argument and no network.
    assert parse_list(dest / "ORIGINALS.sha256") == parse_list(served.checksums)

    served.httpd.log.clear()
    again = download(served, dest, checksums=None)
    assert (again.fetched, again.skipped) == (0, 6)
    assert "already complete" in again.message and "Nothing to download" in again.message
    assert served.requested() == []

    # A file lost locally is fetched again, and only that one.
    lost = served.files[3]
    (dest / lost).unlink()
    served.httpd.log.clear()
    third = download(served, dest, checksums=None)
    assert (third.fetched, third.skipped) == (1, 5)
    assert served.requested() == [f"/data/{lost}"]
    assert_complete_copy(served, dest)


def test_checksum_list_can_be_a_url(served, tmp_path):
    report = download(served, tmp_path / "dest", checksums=served.root_url + "checks.sha256")
    assert report.fetched == 6
    assert_complete_copy(served, tmp_path / "dest")


def test_a_corrupted_file_is_named_and_nothing_is_left_for_it(served, tmp_path):
    bad = served.files[2]
    corrupt(served.data / bad)
    dest = tmp_path / "dest"
    with pytest.raises(DownloadError) as caught:
        download(served, dest)
    message = str(caught.value)
    assert bad in message and "do not match the expected checksum" in message
    assert "1 file(s)" in message and "--from PATH" in message
    assert served.requested().count(f"/data/{bad}") == 1  # a wrong checksum is final: no retry, no waits
    assert not (dest / bad).exists()
    assert leftovers(dest) == []
    assert not (dest / "ORIGINALS.sha256").exists()  # only written after a complete download
    good = [name for name in served.files if name != bad]
    for name in good:  # the verified files are kept for the next run
        assert (dest / name).read_bytes() == (served.data / name).read_bytes()

    # Once the server has the right bytes, a re-run fetches just that file.
    corrupt(served.data / bad)  # flipping the byte again restores the original
    served.httpd.log.clear()
    report = download(served, dest)
    assert (report.fetched, report.skipped) == (1, 5)
    assert served.requested() == [f"/data/{bad}"]
    assert_complete_copy(served, dest)


def test_a_file_missing_on_the_server_is_named_and_nothing_is_half_written(served, tmp_path):
    missing = served.files[-1]
    (served.data / missing).unlink()
    dest = tmp_path / "dest"
    with pytest.raises(DownloadError) as caught:
        download(served, dest)
    message = str(caught.value)
    assert missing in message and "HTTP 404" in message and "Nothing was written for them" in message
    assert not (dest / missing).exists()
    assert leftovers(dest) == []
    assert served.requested().count(f"/data/{missing}") == 1  # a 404 is final: not retried


def test_a_missing_fashion_csv_stops_before_any_image(served, tmp_path):
    (served.data / "fashion.csv").unlink()
    with pytest.raises(DownloadError, match=r"fashion\.csv: not found on the server \(HTTP 404"):
        download(served, tmp_path / "dest")
    assert served.requested() == ["/data/fashion.csv"]
    assert leftovers(tmp_path / "dest") == [] and not (tmp_path / "dest" / "fashion.csv").exists()


def test_a_file_without_a_checksum_is_refused(served, tmp_path):
    unlisted = served.files[1]
    lines = [line for line in served.checksums.read_text().splitlines(True) if not line.endswith(f"  {unlisted}\n")]
    served.checksums.write_text("".join(lines))
    with pytest.raises(DownloadError, match=f"{unlisted}: no checksum for it"):
        download(served, tmp_path / "dest")
    assert not (tmp_path / "dest" / unlisted).exists()


def test_a_different_file_in_place_is_left_alone_unless_replace(served, tmp_path):
    dest, name = tmp_path / "dest", served.files[1]
    (dest / name).parent.mkdir(parents=True)
    (dest / name).write_bytes(b"another copy of the photo")
    with pytest.raises(DownloadError) as caught:
        download(served, dest)
    assert name in str(caught.value) and "--replace" in str(caught.value)
    assert (dest / name).read_bytes() == b"another copy of the photo"

    report = download(served, dest, replace=True)
    assert report.fetched == 1 and report.skipped == 5
    assert_complete_copy(served, dest)


def test_a_folder_holding_another_complete_copy_is_kept(served, tmp_path):
    """A resized copy (every image differs, none missing) is usable as it is: kept, not an error;
    one damaged image among originals is an error; --replace fetches the originals."""
    dest = tmp_path / "dest"
    shutil.copytree(served.data, dest)
    for name in served.files[1:]:
        corrupt(dest / name)
    before = {name: (dest / name).read_bytes() for name in served.files}
    report = download(served, dest)
    assert "already holds a complete catalogue, 5 products (Boys 2, Girls 1, Men 1, Women 1)" in report.message
    assert "all 5 images differ from the originals" in report.message and "--replace" in report.message
    assert report.fetched == 0 and served.requested() == []
    assert {name: (dest / name).read_bytes() for name in served.files} == before
    assert not (dest / "ORIGINALS.sha256").exists()

    # The same folder with its own fashion.csv (another catalogue) is kept as well.
    (dest / "fashion.csv").write_text((dest / "fashion.csv").read_text().replace("\n", "\r\n"))
    assert "its fashion.csv differs" in download(served, dest).message
    shutil.copyfile(served.data / "fashion.csv", dest / "fashion.csv")

    # Some images are the originals and one is not: damage, reported.
    for name in served.files[2:]:
        corrupt(dest / name)  # back to the original bytes
    with pytest.raises(DownloadError) as caught:
        download(served, dest)
    assert served.files[1] in str(caught.value) and "1 file(s)" in str(caught.value)
    assert (dest / served.files[1]).read_bytes() == before[served.files[1]]

    report = download(served, dest, replace=True)
    assert (report.fetched, report.skipped) == (1, 5)
    assert_complete_copy(served, dest)


def test_offline_a_complete_folder_is_kept_unchecked_and_an_incomplete_one_fails(served, tmp_path):
    with socket.socket() as probe:  # a port nobody listens on: the GitHub API is unreachable
        probe.bind(("127.0.0.1", 0))
        offline_api = f"http://127.0.0.1:{probe.getsockname()[1]}"
    dest = tmp_path / "dest"
    shutil.copytree(served.data, dest)
    report = download(served, dest, checksums=None, api_url=offline_api)
    assert "already holds a complete catalogue: 5 products" in report.message
    assert "could not be checked against the originals (cannot reach 127.0.0.1" in report.message
    assert served.requested() == []

    (dest / served.files[-1]).unlink()
    with pytest.raises(DownloadError, match="cannot reach 127.0.0.1.*--from PATH"):
        download(served, dest, checksums=None, api_url=offline_api)


# ============================================================================
# Interrupted, broken and stalled transfers
# ============================================================================


def test_a_broken_transfer_is_retried(served, tmp_path):
    name = served.files[2]
    served.httpd.faults[name] = ["truncate", 1]  # the first answer breaks off halfway
    report = download(served, tmp_path / "dest")
    assert report.fetched == 6
    assert served.requested().count(f"/data/{name}") == 2
    assert_complete_copy(served, tmp_path / "dest")


def test_a_transfer_that_keeps_breaking_leaves_nothing_half_written_and_a_rerun_fetches_the_rest(served, tmp_path):
    dest, name = tmp_path / "dest", served.files[2]
    served.httpd.faults[name] = ["truncate", 99]
    with pytest.raises(DownloadError) as caught:
        download(served, dest)
    message = str(caught.value)
    assert "broke off the transfer" in message and name in message and "re-run" in message.lower()
    assert served.requested().count(f"/data/{name}") == download_data.ATTEMPTS
    assert not (dest / name).exists() and leftovers(dest) == []
    present = real_files(dest)
    for relative in present:  # whatever is under its real name is a complete original
        assert (dest / relative).read_bytes() == (served.data / relative).read_bytes()

    served.httpd.faults.clear()
    served.httpd.log.clear()
    report = download(served, dest)
    assert sorted(served.requested()) == sorted(f"/data/{n}" for n in served.files if n not in present)
    assert report.fetched == 6 - len(present)
    assert_complete_copy(served, dest)


def test_a_stalled_download_gives_up_after_a_bounded_time(served, tmp_path):
    dest, name = tmp_path / "dest", served.files[3]
    served.httpd.faults[name] = ["stall", 99]  # headers and half the photo, then silence
    started = time.monotonic()
    with pytest.raises(DownloadError) as caught:
        download(served, dest, timeout=1)
    elapsed = time.monotonic() - started
    message = str(caught.value)
    assert "sent nothing for 1 s" in message and "stalled" in message and "--timeout" in message and name in message
    assert served.requested().count(f"/data/{name}") == download_data.ATTEMPTS
    assert elapsed < download_data.ATTEMPTS * 1 + 3 + 6  # tries x timeout + pooch's waits (1 s, 2 s) + slack
    assert not (dest / name).exists() and leftovers(dest) == []


def test_a_killed_run_leaves_no_half_file_and_the_next_run_fetches_only_what_is_missing(served, tmp_path):
    dest, stalled = tmp_path / "dest", served.files[3]
    served.httpd.faults[stalled] = ["stall", 1]
    command = [sys.executable, str(PROJECT_DIR / "download_data.py"), "--no-progress", "--workers", "1", "--dest", str(dest),
               "--base-url", served.base_url, "--checksums", str(served.checksums)]
    process = subprocess.Popen(command, cwd=PROJECT_DIR, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while f"/data/{stalled}" not in served.requested() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert f"/data/{stalled}" in served.requested(), "the download never reached the stalled file"
        time.sleep(0.2)  # half the photo is written by now
    finally:
        process.kill()
        process.wait(10)
    done = served.files[:3]  # --workers 1: fashion.csv, then the images in order
    assert real_files(dest) == sorted(done)  # nothing half-written under a real name
    for relative in done:
        assert (dest / relative).read_bytes() == (served.data / relative).read_bytes()

    served.httpd.log.clear()
    report = download(served, dest)
    assert sorted(served.requested()) == sorted(f"/data/{name}" for name in served.files[3:])
    assert (report.fetched, report.skipped) == (3, 3)
    assert_complete_copy(served, dest)  # the killed run's temporary files are gone too


# ============================================================================
# Verification against the git tree of the source commit
# ============================================================================


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def write_fake_tree(served: Served) -> None:
    """The GitHub API's answer for the pinned commit, for the served files."""
    entries = [{"path": "data", "mode": "040000", "type": "tree", "sha": "0" * 40},
               {"path": "data/.DS_Store", "mode": "100644", "type": "blob", "sha": "1" * 40, "size": 6148},
               {"path": "README.md", "mode": "100644", "type": "blob", "sha": "2" * 40, "size": 10}]
    for name in served.files:
        data = (served.data / name).read_bytes()
        entries.append({"path": f"data/{name}", "mode": "100644", "type": "blob", "sha": git_blob_id(data), "size": len(data)})
    tree_path = served.site / "repos" / download_data.SOURCE_REPO / "git" / "trees" / download_data.SOURCE_COMMIT
    tree_path.parent.mkdir(parents=True, exist_ok=True)
    tree_path.write_text(json.dumps({"sha": download_data.SOURCE_COMMIT, "tree": entries, "truncated": False}))


def test_git_blob_ids_match_git_itself(served):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    for name in served.files[:2]:
        path = served.data / name
        expected = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True, check=True).stdout.strip()
        assert download_data.hash_file(path).git_blob == expected == git_blob_id(path.read_bytes())


def test_without_a_checksum_list_files_are_verified_against_the_git_tree(served, tmp_path):
    write_fake_tree(served)
    dest = tmp_path / "dest"
    report = download(served, dest, checksums=None, api_url=served.root_url)
    assert report.fetched == 6 and "git blob ids" in report.verified_with
    assert_complete_copy(served, dest)
    tree_requests = [path for path in served.requested() if path.startswith("/repos/")]
    assert tree_requests == [f"/repos/{download_data.SOURCE_REPO}/git/trees/{download_data.SOURCE_COMMIT}?recursive=1"]
    # The sha256 of the verified files are recorded for offline re-runs.
    assert parse_list(dest / "ORIGINALS.sha256") == parse_list(served.checksums)

    bad = served.files[4]
    corrupt(served.data / bad)
    dest2 = tmp_path / "dest2"
    with pytest.raises(DownloadError) as caught:
        download(served, dest2, checksums=None, api_url=served.root_url)
    assert bad in str(caught.value) and "git-blob" in str(caught.value)
    assert not (dest2 / bad).exists() and leftovers(dest2) == []


def test_a_missing_git_tree_says_what_to_do(served, tmp_path):
    with pytest.raises(DownloadError, match=r"HTTP 404.*--checksums"):
        download(served, tmp_path / "dest", checksums=None, api_url=served.root_url)


def test_an_unreachable_server_gives_offline_advice(served, tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DownloadError) as caught:
        download_catalog(tmp_path / "dest", base_url=f"http://127.0.0.1:{port}/data/",
                         checksums=str(served.checksums), progress=False, timeout=5)
    message = str(caught.value)
    assert f"cannot reach 127.0.0.1:{port}" in message
    assert "--from PATH" in message and "FASHION_LENS_DATA" in message


# ============================================================================
# --from: copy or link a local catalogue
# ============================================================================


def test_copy_from_a_local_folder(served, tmp_path):
    dest = tmp_path / "copy"
    report = copy_catalog(served.data, dest, progress=False)
    assert report.fetched == 6
    assert "5 products" in report.message and "Boys 2, Girls 1, Men 1, Women 1" in report.message
    assert_complete_copy(served, dest)
    assert not any(path.is_symlink() for path in dest.rglob("*"))
    assert len(load_catalog(dest)) == 5

    again = copy_catalog(served.data, dest, progress=False)
    assert (again.fetched, again.skipped) == (0, 6) and "Nothing to copy" in again.message


def test_copy_refuses_an_incomplete_or_invalid_source(served, tmp_path):
    (served.data / served.files[-1]).unlink()
    with pytest.raises(DownloadError, match="incomplete.*1 of 5 products have no image file"):
        copy_catalog(served.data, tmp_path / "copy", progress=False)
    (served.data / "fashion.csv").unlink()
    with pytest.raises(DownloadError, match="fashion.csv is missing"):
        copy_catalog(served.data, tmp_path / "copy", progress=False)
    with pytest.raises(DownloadError, match="no such folder"):
        copy_catalog(tmp_path / "nowhere", tmp_path / "copy", progress=False)
    assert not (tmp_path / "copy").exists()


def test_link_makes_the_destination_a_symlink(served, tmp_path):
    dest = tmp_path / "data" / "fashion"
    report = copy_catalog(served.data, dest, link=True, progress=False)
    assert dest.is_symlink() and dest.resolve() == served.data.resolve()
    assert "Linked" in report.message and "5 products" in report.message
    assert len(load_catalog(dest)) == 5

    # A download must not write through the link into the linked folder.
    with pytest.raises(DownloadError, match="symlink"):
        download(served, dest)
    # Copying replaces the link by a real folder and leaves the linked folder alone.
    before = sorted(path.name for path in served.data.rglob("*"))
    copy_catalog(served.data, dest, progress=False)
    assert not dest.is_symlink() and dest.is_dir()
    assert_complete_copy(served, dest)
    assert sorted(path.name for path in served.data.rglob("*")) == before

    # Linking over a non-empty real folder is refused.
    with pytest.raises(DownloadError, match="not empty"):
        copy_catalog(served.data, dest, link=True, progress=False)


# ============================================================================
# The command line
# ============================================================================


def run_cli(*arguments):
    return subprocess.run([sys.executable, str(PROJECT_DIR / "download_data.py"), "--no-progress", *arguments],
                          capture_output=True, text=True, timeout=60, cwd=PROJECT_DIR)


def test_cli_fails_with_one_clear_line(served, tmp_path):
    missing = served.files[2]
    (served.data / missing).unlink()
    dest = tmp_path / "dest"
    result = run_cli("--dest", str(dest), "--base-url", served.base_url, "--checksums", str(served.checksums))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr
    assert missing in lines[0] and "HTTP 404" in lines[0]
    assert not (dest / missing).exists() and leftovers(dest) == []


def test_cli_copies_and_downloads(served, tmp_path):
    copied = run_cli("--from", str(served.data), "--dest", str(tmp_path / "copy"))
    assert copied.returncode == 0, copied.stderr
    assert "Copied 6 files" in copied.stdout and "5 products" in copied.stdout

    args = ("--dest", str(tmp_path / "dest"), "--base-url", served.base_url, "--checksums", str(served.checksums))
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert "Downloaded 6 files" in first.stdout
    second = run_cli(*args[:4])  # no --checksums: the list recorded in the destination is used
    assert second.returncode == 0 and "already complete" in second.stdout
