"""Files never half-written, their permissions, content hashes and the lock between writers."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from filelock import Timeout

from fashion_lens.errors import SettingsError
from fashion_lens.storage import atomic_write, file_sha256, folder_lock

PROJECT = Path(__file__).resolve().parents[1]


def _umask() -> int:
    """The process umask, read without changing it."""
    for line in open("/proc/self/status"):
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    raise RuntimeError("no Umask line in /proc/self/status")


def _leftovers(folder):
    return sorted(path.name for path in folder.iterdir() if path.name.endswith(".tmp"))


@pytest.mark.fast
def test_atomic_write_replaces_the_file_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("old")
    with atomic_write(target, "w") as out:
        out.write("new text")
        assert target.read_text() == "old"  # a reader sees the old file until the write completes
    assert target.read_text() == "new text"
    with atomic_write(tmp_path / "data.bin") as out:
        out.write(b"\x00\x01binary")
    assert (tmp_path / "data.bin").read_bytes() == b"\x00\x01binary"
    assert _leftovers(tmp_path) == []


@pytest.mark.fast
def test_atomic_write_that_fails_keeps_the_old_file_and_removes_its_temporary_file(tmp_path):
    target = tmp_path / "manifest.json"
    target.write_text('{"shards": []}')
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_write(target, "w") as out:
            out.write('{"shards": [half')
            raise RuntimeError("disk on fire")
    assert target.read_text() == '{"shards": []}'
    assert _leftovers(tmp_path) == []
    with pytest.raises(KeyboardInterrupt):  # an interrupted kernel too
        with atomic_write(tmp_path / "new.json", "w") as out:
            out.write("{")
            raise KeyboardInterrupt
    assert not (tmp_path / "new.json").exists() and _leftovers(tmp_path) == []


@pytest.mark.fast
def test_atomic_write_gives_the_usual_permissions_not_private_ones(tmp_path):
    target = tmp_path / "features.npz"
    with atomic_write(target) as out:
        out.write(b"x")
    expected = 0o666 & ~_umask()
    assert stat.S_IMODE(target.stat().st_mode) == expected
    plain = tmp_path / "plain.txt"  # what an ordinary open() creates under the same umask
    plain.write_text("x")
    assert stat.S_IMODE(plain.stat().st_mode) == expected


@pytest.mark.fast
def test_atomic_write_creates_the_folder_or_explains_why_it_cannot(tmp_path):
    with atomic_write(tmp_path / "a" / "b" / "file.txt", "w") as out:
        out.write("deep")
    assert (tmp_path / "a" / "b" / "file.txt").read_text() == "deep"
    (tmp_path / "blocker").write_text("a file, not a folder")
    with pytest.raises(SettingsError, match="Cannot write to the artifacts folder"):
        with atomic_write(tmp_path / "blocker" / "file.txt", "w") as out:
            out.write("never")


@pytest.mark.fast
def test_file_sha256_is_the_sha256_of_the_bytes_across_read_blocks(tmp_path):
    data = os.urandom((5 << 20) // 2)  # 2.5 MB: three 1 MB reads
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    assert file_sha256(str(path)) == file_sha256(path)
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit changed in the last block
    assert file_sha256(path) != hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert file_sha256(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


@pytest.mark.fast
def test_folder_lock_keeps_a_second_holder_out_until_released(tmp_path):
    first = folder_lock(tmp_path)
    second = folder_lock(tmp_path)
    outcome = {}

    def try_to_take(name):
        try:
            with second.acquire(timeout=0.2):
                outcome[name] = "took it"
        except Timeout:
            outcome[name] = "kept out"

    (tmp_path / "other").mkdir()
    with first:
        thread = threading.Thread(target=try_to_take, args=("while held",))
        thread.start()
        thread.join()
        with folder_lock(tmp_path / "other").acquire(timeout=0.2):  # another folder's lock is independent
            pass
    thread = threading.Thread(target=try_to_take, args=("after release",))
    thread.start()
    thread.join()
    assert outcome == {"while held": "kept out", "after release": "took it"}
    assert (tmp_path / ".lock").exists()


@pytest.mark.fast
def test_folder_lock_keeps_another_process_out(tmp_path):
    script = ("import sys; from filelock import Timeout; from fashion_lens.storage import folder_lock\n"
              "try:\n    folder_lock(sys.argv[1]).acquire(timeout=0.2); print('took it')\n"
              "except Timeout:\n    print('kept out')\n")

    def other_process():
        result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=PROJECT, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    with folder_lock(tmp_path):
        assert other_process() == "kept out"
    assert other_process() == "took it"
