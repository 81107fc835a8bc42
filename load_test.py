"""The app under load: users, each in a page of one headless Chromium, query products for a while.

    python load_test.py                          # 20 users for 60 s against `streamlit run app.py` on 127.0.0.1
    python load_test.py --users 5 --seconds 20 --think 0

Each user types a ProductId into the search box, waits until the app shows that product's results
with every photo loaded, pauses for a think time (random, around --think seconds), and queries the
next product. An answer's time runs from the Enter key to the last result photo loaded. Prints the
answers, the errors, the median and p95, and the server's memory after warm-up, at its largest and
at the end (flat memory: the end is close to the start). The catalogue's features must be cached
(`make demo` or one start of the app), so the test measures answers, not extraction.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

PROJECT_DIR = Path(__file__).resolve().parent
CHROMIUM = os.environ.get("FASHION_LENS_CHROMIUM", "/usr/bin/chromium")
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'
RESULTS = 5  # the app's default number of results
ALL_LOADED = """n => { const images = [...document.querySelectorAll('.st-key-results [data-testid="stImage"] img')];
    return images.length === n && images.every(image => image.complete && image.naturalWidth > 0); }"""


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_memory_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        return next(int(line.split()[1]) / 1024 for line in handle if line.startswith("VmRSS:"))


def start_app(log_path: Path, timeout: float = 120, environment: dict | None = None) -> tuple[subprocess.Popen, str]:
    """`streamlit run app.py` on a free port of 127.0.0.1, once its health check answers; `environment`
    adds to this process's (the settings the app reads)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
               "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false",
               "--server.fileWatcherType", "none", "--global.developmentMode", "false"]
    server = subprocess.Popen(command, cwd=PROJECT_DIR, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT,
                              start_new_session=True, env={**os.environ, **(environment or {})})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the app exited with {server.returncode}: see {log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as answer:
                if answer.status == 200:
                    return server, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    os.killpg(server.pid, signal.SIGKILL)
    raise RuntimeError(f"the app did not answer within {timeout:.0f} s: see {log_path}")


async def open_user(browser, url: str, errors: list):
    """A page showing the app's first answer, ready for queries."""
    page = await browser.new_page(viewport={"width": 1400, "height": 1500})
    page.on("pageerror", lambda error: errors.append(str(error)))
    await page.goto(url, timeout=120_000)
    await page.wait_for_function(ALL_LOADED, arg=RESULTS, timeout=180_000)
    await page.locator(IDLE).wait_for(timeout=60_000)
    return page


async def query_products(page, ids: list, until: float, think: float, seed: int, times: list, errors: list):
    """One user: query random products until `until` (time.monotonic), recording each answer's seconds."""
    rng = random.Random(seed)
    box = page.locator('[data-testid="stTextInput"] input')
    shown = None
    while time.monotonic() < until:
        product_id = rng.choice(ids)
        if product_id == shown:  # the page shows it already: nothing would change
            continue
        await box.fill(product_id)
        started = time.perf_counter()
        await box.press("Enter")
        try:
            await page.locator('[data-testid="stImageCaption"]', has_text=f"Query · {product_id}").wait_for(timeout=30_000)
            await page.locator(IDLE).wait_for(timeout=30_000)
            await page.wait_for_function(ALL_LOADED, arg=RESULTS, timeout=30_000)
        except Exception as error:  # a timeout: the answer never came
            errors.append(f"{product_id}: {str(error).splitlines()[0]}")
            continue
        times.append(time.perf_counter() - started)
        alerts = await page.locator('[data-testid="stAlert"]').all_inner_texts()
        errors.extend(f"{product_id}: the app said {text!r}" for text in alerts)
        shown = product_id
        if think:
            await asyncio.sleep(rng.uniform(0.5 * think, 1.5 * think))


async def run_load(url: str, server_pid: int, ids: list, users: int, seconds: float, think: float) -> dict:
    from playwright.async_api import async_playwright

    times, errors, memory = [], [], []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                   args=["--no-sandbox", "--disable-dev-shm-usage"])
        # one after another: the first loads the catalogue into the app's cache, and twenty pages
        # starting at once on 2 cores time out while loading, which measures nothing about answers
        pages = [await open_user(browser, url, errors) for _ in range(users)]
        memory.append(server_memory_mb(server_pid))
        cpu_start = cpu_seconds(server_pid)
        until = time.monotonic() + seconds

        async def sample_memory():
            while time.monotonic() < until:
                await asyncio.sleep(1)
                memory.append(server_memory_mb(server_pid))

        await asyncio.gather(sample_memory(), *(query_products(page, ids, until, think, seed, times, errors)
                                                for seed, page in enumerate(pages)))
        server_cpu = cpu_seconds(server_pid) - cpu_start
        await browser.close()
    milliseconds = np.array(times) * 1e3
    return {"users": users, "seconds": seconds, "think_s": think, "answers": len(times), "errors": len(errors),
            "error_examples": errors[:5],
            "median_ms": float(np.median(milliseconds)) if len(times) else None,
            "p95_ms": float(np.percentile(milliseconds, 95)) if len(times) else None,
            "server_mb_start": memory[0], "server_mb_peak": max(memory), "server_mb_end": memory[-1],
            # of the 2 cores' time, the share the app's server used (the rest: the browser, the system)
            "server_cpu_share": server_cpu / (seconds * (os.cpu_count() or 1)),
            "server_cpu_ms_per_answer": 1e3 * server_cpu / max(len(times), 1)}


def load_test(users: int = 20, seconds: float = 60, think: float = 2.0, log_path: Path | None = None,
              settings=None) -> dict:
    """Serve the app with `settings` (default: get_settings(), from the environment), put `users` on
    it for `seconds`, stop it; the figures of run_load."""
    from fashion_lens.catalog import load_catalog
    from fashion_lens.settings import ENVIRONMENT_VARIABLES, get_settings

    settings = settings or get_settings()
    environment = {ENVIRONMENT_VARIABLES[name]: str(getattr(settings, name))
                   for name in ("data_dir", "artifacts_dir", "backbone", "weights", "layout")}
    ids = load_catalog(settings.data_dir, layout=settings.layout)["ProductId"].sample(frac=1, random_state=0).tolist()
    log_path = log_path or PROJECT_DIR / "artifacts" / "bench" / "load-test-app.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    server, url = start_app(log_path, environment=environment)
    try:
        return asyncio.run(run_load(url, server.pid, ids, users, seconds, think))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=20, help="pages querying at the same time (default 20)")
    parser.add_argument("--seconds", type=float, default=60, help="how long they query (default 60)")
    parser.add_argument("--think", type=float, default=2.0, help="a user's pause between answers, s (default 2)")
    arguments = parser.parse_args(argv)
    figures = load_test(arguments.users, arguments.seconds, arguments.think)
    print(json.dumps(figures, indent=1))
    return 1 if figures["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
