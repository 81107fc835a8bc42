"""Real-browser test support: a free port, a server process that is always stopped, headless Chromium,
the screenshot folder; and the rule every missing test input follows (shared with conftest.py).

Follows the recipe verified on these machines (Playwright for Python driving Debian's chromium;
Playwright's own browser download is blocked here, so the system browser is used). A test never
installs system packages: without Chromium the browser tests skip (fail in CI) and say how to install it.
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

PROJECT_DIR = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("FASHION_LENS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_INSTALL = "apt-get install -y chromium"
# Screenshots a person looks at after the run; kept (git-ignored through /artifacts/*).
SCREENSHOT_DIR = PROJECT_DIR / "artifacts" / "test-screenshots"

# Every skip for a missing test input starts with this tag and the input's kind ("catalogue",
# "weights", "chromium"): conftest.py counts them in the summary at the end of the run.
MISSING_INPUT_TAG = "Missing test input"
NOT_CI = ("", "0", "false", "no", "off")


def in_ci() -> bool:
    """CI is set to something other than "", 0, false, no or off (any case): CI=false is not CI."""
    return os.environ.get("CI", "").strip().lower() not in NOT_CI


def missing_input(kind: str, message: str):
    """A test input is missing: in CI the test fails, elsewhere it skips (and is counted)."""
    text = f"{MISSING_INPUT_TAG} ({kind}): {message}"
    if in_ci():
        pytest.fail(text, pytrace=False)
    pytest.skip(text)


def ensure_chromium() -> str:
    """The system Chromium (FASHION_LENS_CHROMIUM, else /usr/bin/chromium, else chromium on PATH).
    Never installs it: skips (fails in CI) with the command that does."""
    if Path(CHROMIUM).exists():
        return CHROMIUM
    found = shutil.which("chromium")
    if found is None:
        missing_input("chromium", f"Chromium is not at {CHROMIUM} nor on PATH; install it with "
                                  f"`{CHROMIUM_INSTALL}` (as root) or set FASHION_LENS_CHROMIUM to its path.")
    return found


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


@pytest.fixture(scope="session")
def screenshot_dir() -> Path:
    """artifacts/test-screenshots/ under the project (created): where browser tests save what they saw."""
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    return SCREENSHOT_DIR
