"""Real-browser test support: a free port, a server process that is always stopped, headless Chromium.

Follows the recipe verified on these machines (Playwright for Python driving Debian's chromium;
Playwright's own browser download is blocked here, so the system browser is used).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("FASHION_LENS_CHROMIUM", "/usr/bin/chromium")


def ensure_chromium() -> str:
    """The system Chromium, installed from Debian when missing (as CI's root can)."""
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        if os.geteuid() != 0:
            pytest.fail("Chromium is missing: install it with `apt-get install -y chromium`.", pytrace=False)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env)
    return CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(command: list[str], health_url: str, log_path: Path, *, cwd=None, env=None,
                   timeout: float = 90, stop=None):
    """Start `command`, wait until `health_url` answers 200, yield the process; always stop it.

    `stop` is an optional polite shutdown (a callable); then SIGTERM, then SIGKILL of the group.
    """
    log = open(log_path, "wb")
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}; log:\n{Path(log_path).read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(health_url, timeout=2) as response:
                    if response.status == 200:
                        break
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after {timeout} s; log:\n{Path(log_path).read_text()[-3000:]}")
            time.sleep(0.2)
        yield process
    finally:
        if stop is not None:
            with contextlib.suppress(Exception):
                stop()
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        log.close()


@pytest.fixture(scope="session")
def browser():
    """Headless system Chromium driven by Playwright, shared by the browser tests."""
    from playwright.sync_api import sync_playwright

    executable = ensure_chromium()
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=executable, headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        yield instance
        instance.close()
