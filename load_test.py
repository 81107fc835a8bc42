"""The app under load: simulated users query products for a while.

    python load_test.py                          # 20 users for 60 s against `streamlit run app.py` on 127.0.0.1
    python load_test.py --users 5 --seconds 20 --think 0
    python load_test.py --client chromium        # each user a page of one headless Chromium

Two clients. The default, `protocol`, speaks Streamlit's own protocol from Python, as the page's
JavaScript does: a websocket to /_stcore/stream carrying protobufs (up: BackMsg.rerun_script, a
ClientState with the widget states; down: ForwardMsg deltas until script_finished), and the result
photos fetched over HTTP from the media URLs the deltas name, at most 6 at a time over kept-alive
connections, each URL once per user (a page does not fetch again an image it has already loaded).
It costs little CPU, so its figures are the server's. `chromium` drives pages of one headless
Chromium (Playwright, /usr/bin/chromium): it proves the real page works, but twenty pages take
most of 2 cores, so its times measure the browser as much as the server.

Each user sets a ProductId in the search box, waits until the app has answered with every result
photo loaded, pauses for a think time (random, around --think seconds), and queries the next
product; the users start at random instants within one think time, not all at once. An answer's
time runs from the query leaving the client (the Enter key) to the last result photo loaded.
Prints the answers, the errors, the median and p95, the server's memory after warm-up, at its
largest and at the end (flat memory: the end is close to the start), and the CPU the server,
this client and the whole machine used. The catalogue's features must be cached (`make demo` or
one start of the app), so the test measures answers, not extraction.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

PROJECT_DIR = Path(__file__).resolve().parent
CHROMIUM = os.environ.get("FASHION_LENS_CHROMIUM", "/usr/bin/chromium")
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'
RESULTS = 5  # the app's default number of results
ALL_LOADED = """n => { const images = [...document.querySelectorAll('.st-key-results [data-testid="stImage"] img')];
    return images.length === n && images.every(image => image.complete && image.naturalWidth > 0); }"""
CLIENTS = ("protocol", "chromium")
STREAM = "/_stcore/stream"  # Streamlit's websocket
QUERY_CAPTION = "Query · "  # the app's caption under the query product's photo
BROWSER_CONNECTIONS = 6  # HTTP/1.1 connections a browser opens to one host at most
ANSWER_TIMEOUT = 30  # s: an answer not there by then is an error
FIRST_PAGE_TIMEOUT = 180  # s: the first page loads the catalogue and its features


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[int, int]:
    """The machine's busy and total CPU time so far (clock ticks, all cores, every process)."""
    with open("/proc/stat") as handle:
        ticks = [int(value) for value in handle.readline().split()[1:]]
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)  # busy: all but idle and iowait


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


def stop_app(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=15)


@contextlib.contextmanager
def served_app(log_path: Path, environment: dict | None = None):
    """start_app, yielding (server process, URL); the server is stopped on the way out, whatever happens."""
    server, url = start_app(log_path, environment=environment)
    try:
        yield server, url
    finally:
        stop_app(server)


# ---------------------------------------------------------------------------
# The protocol client: what the page's JavaScript says to the server, without a browser
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class Answer:
    """What one run of the app's script sent a user: the photos (caption, media URL) in page order,
    the alerts (errors, warnings), the text boxes (widget id, id of the fragment holding it or ""),
    and how the run finished."""

    photos: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    alerts: list[str] = dataclasses.field(default_factory=list)
    text_inputs: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    status: str = ""
    seconds: float = 0.0  # from the rerun sent to the last photo loaded
    fetched: int = 0  # photos fetched over HTTP for this answer (the others were loaded before)

    @property
    def query(self) -> str | None:
        """The query product's id, as the caption under its photo names it."""
        return next((caption[len(QUERY_CAPTION):] for caption, _ in self.photos if caption.startswith(QUERY_CAPTION)), None)

    @property
    def results(self) -> list[tuple[str, str]]:
        return [(caption, url) for caption, url in self.photos if not caption.startswith(QUERY_CAPTION)]

    @property
    def result_ids(self) -> list[str]:
        """The results' ProductIds (each caption starts with the id)."""
        return [caption.split(" · ")[0] for caption, _ in self.results]


class MediaFetcher:
    """HTTP/1.1 GETs to one server over kept-alive connections, at most BROWSER_CONNECTIONS at a time."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.slots = asyncio.Semaphore(BROWSER_CONNECTIONS)

    async def get(self, path: str) -> bytes:
        async with self.slots:
            for attempt in range(2):  # a kept-alive connection the server has closed meanwhile: once more on a new one
                reused = bool(self.idle) and attempt == 0
                reader, writer = self.idle.pop() if reused else await asyncio.open_connection(self.host, self.port)
                try:
                    writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n\r\n".encode())
                    status = (await reader.readline()).split()
                    if not status:
                        raise ConnectionResetError("closed by the server")
                    headers = {}
                    while (line := await reader.readline()) not in (b"\r\n", b""):
                        name, _, value = line.decode("latin-1").partition(":")
                        headers[name.strip().lower()] = value.strip()
                    if "content-length" not in headers:  # the app's server gives every media file's length
                        raise ConnectionResetError("an answer without Content-Length")
                    body = await reader.readexactly(int(headers["content-length"]))
                except (ConnectionError, asyncio.IncompleteReadError) as error:
                    writer.close()
                    if reused:  # the server closes idle connections after a few seconds: the others are likely closed too
                        self.close()
                        continue
                    raise OSError(f"GET {path}: {error}") from error
                except BaseException:
                    writer.close()
                    raise
                if headers.get("connection", "").lower() == "close":
                    writer.close()
                else:
                    self.idle.append((reader, writer))
                if status[1:2] != [b"200"]:
                    raise OSError(f"GET {path}: {b' '.join(status[1:]).decode('latin-1')}")
                return body
            raise AssertionError("unreachable: the second attempt returns or raises")

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


class ProtocolUser:
    """One user's page, seen from the server: a websocket session, and the photos the page has loaded.

    open() asks for the first page (an empty ClientState, as a page does when it connects) and finds
    the search box's widget id in its deltas; query() sets the box to a ProductId and reruns, as
    the page does: only the fragment holding the box when it is in one (st.fragment), else the app."""

    def __init__(self, url: str):
        parts = urllib.parse.urlsplit(url)
        self.base = f"{parts.scheme}://{parts.netloc}"
        self.stream_url = f"ws://{parts.netloc}{STREAM}"
        self.media = MediaFetcher(parts.hostname, parts.port)
        self.loaded: set[str] = set()
        self.websocket = None
        self.box: tuple[str, str] | None = None  # the search box's widget id and fragment id

    async def open(self, timeout: float = FIRST_PAGE_TIMEOUT) -> Answer:
        import websockets
        from streamlit.proto.ClientState_pb2 import ClientState

        self.websocket = await websockets.connect(self.stream_url, subprotocols=["streamlit"], proxy=None,
                                                  max_size=None, open_timeout=timeout)
        first = await self.rerun(ClientState(), timeout)
        if not first.text_inputs:
            raise RuntimeError(f"the app's first page has no text box (alerts: {first.alerts})")
        self.box = first.text_inputs[0]
        return first

    async def query(self, product_id: str, timeout: float = ANSWER_TIMEOUT) -> Answer:
        """The answer to `product_id` typed into the search box (then Enter)."""
        from streamlit.proto.ClientState_pb2 import ClientState

        state = ClientState(fragment_id=self.box[1])
        box = state.widget_states.widgets.add()
        box.id, box.string_value = self.box[0], product_id
        try:
            return await self.rerun(state, timeout)
        except Exception:  # a timeout, a broken connection: a new session for the next query, as a page reconnects
            await self.close()
            with contextlib.suppress(Exception):
                await self.open()
            raise

    async def rerun(self, state, timeout: float) -> Answer:
        """Run the app's script with the ClientState `state`; its answer once the script has finished
        and every photo it shows is loaded."""
        return await asyncio.wait_for(self._rerun(state), timeout)

    async def _rerun(self, state) -> Answer:
        from streamlit.proto.BackMsg_pb2 import BackMsg
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        message = BackMsg()
        message.rerun_script.CopyFrom(state)
        answer, fetches = Answer(), []
        started = time.perf_counter()
        await self.websocket.send(message.SerializeToString())
        try:
            while True:
                forward = ForwardMsg()
                forward.ParseFromString(await self.websocket.recv())
                kind = forward.WhichOneof("type")
                if kind == "delta" and forward.delta.WhichOneof("type") == "new_element":
                    fetches += self._read(forward.delta.new_element, forward.delta.fragment_id, answer)
                elif kind == "script_finished":
                    answer.status = ForwardMsg.ScriptFinishedStatus.Name(forward.script_finished)
                    break
            await asyncio.gather(*fetches)
        finally:
            for fetch in fetches:
                fetch.cancel()
        answer.seconds = time.perf_counter() - started
        answer.fetched = len(fetches)
        return answer

    def _read(self, element, fragment_id: str, answer: Answer) -> list[asyncio.Task]:
        """Note what an element shows; start fetching its photos the page has not loaded yet, as a
        browser does when the element arrives."""
        kind = element.WhichOneof("type")
        fetches = []
        if kind == "imgs":
            for image in element.imgs.imgs:
                answer.photos.append((image.caption, image.url))
                if image.url not in self.loaded:
                    self.loaded.add(image.url)
                    path = urllib.parse.urlsplit(urllib.parse.urljoin(self.base, image.url))
                    fetches.append(asyncio.ensure_future(self.media.get(path.path + (f"?{path.query}" if path.query else ""))))
        elif kind == "alert":
            answer.alerts.append(element.alert.body)
        elif kind == "exception":
            answer.alerts.append(f"{element.exception.type}: {element.exception.message}")
        elif kind == "text_input":
            answer.text_inputs.append((element.text_input.id, fragment_id))
        return fetches

    async def ask(self, product_id: str) -> tuple[float, list[str]]:
        """The seconds of one query's answer, and what is wrong with that answer."""
        answer = await self.query(product_id)
        problems = [f"the app said {alert!r}" for alert in answer.alerts]
        if answer.status not in ("FINISHED_SUCCESSFULLY", "FINISHED_FRAGMENT_RUN_SUCCESSFULLY"):
            problems.append(f"the script ended with {answer.status}")
        if answer.query != product_id:
            problems.append(f"the page shows the query {answer.query!r}")
        if len(answer.results) != RESULTS:
            problems.append(f"{len(answer.results)} result photos instead of {RESULTS}")
        return answer.seconds, problems

    async def close(self) -> None:
        self.media.close()
        if self.websocket is not None:
            with contextlib.suppress(Exception):
                await self.websocket.close()
            self.websocket = None


@contextlib.asynccontextmanager
async def protocol_users(url: str, users: int, errors: list):
    """`users` ProtocolUsers showing the app's first page, opened one after another (the first loads
    the catalogue into the app's cache); all closed on the way out."""
    people = []
    try:
        for _ in range(users):
            people.append(ProtocolUser(url))
            first = await people[-1].open()
            errors.extend(f"first page: the app said {alert!r}" for alert in first.alerts)
        yield people
    finally:
        for user in people:
            await user.close()


# ---------------------------------------------------------------------------
# The Chromium client: pages of one headless Chromium
# ---------------------------------------------------------------------------

class ChromiumUser:
    def __init__(self, page):
        self.page = page
        self.box = page.locator('[data-testid="stTextInput"] input')

    async def ask(self, product_id: str) -> tuple[float, list[str]]:
        """The seconds of one query's answer (the Enter key to the last result photo loaded), and the
        alerts the page shows."""
        await self.box.fill(product_id)
        started = time.perf_counter()
        await self.box.press("Enter")
        await self.page.locator('[data-testid="stImageCaption"]', has_text=f"{QUERY_CAPTION}{product_id}").wait_for(timeout=30_000)
        await self.page.locator(IDLE).wait_for(timeout=30_000)
        await self.page.wait_for_function(ALL_LOADED, arg=RESULTS, timeout=30_000)
        seconds = time.perf_counter() - started
        alerts = await self.page.locator('[data-testid="stAlert"]').all_inner_texts()
        return seconds, [f"the app said {text!r}" for text in alerts]


async def open_page(browser, url: str, errors: list):
    """A page showing the app's first answer, ready for queries."""
    page = await browser.new_page(viewport={"width": 1400, "height": 1500})
    page.on("pageerror", lambda error: errors.append(str(error)))
    await page.goto(url, timeout=120_000)
    await page.wait_for_function(ALL_LOADED, arg=RESULTS, timeout=180_000)
    await page.locator(IDLE).wait_for(timeout=60_000)
    return page


@contextlib.asynccontextmanager
async def chromium_users(url: str, users: int, errors: list):
    """`users` pages of one headless Chromium showing the app's first page."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                   args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            # one after another: the first loads the catalogue into the app's cache, and twenty pages
            # starting at once on 2 cores time out while loading, which measures nothing about answers
            yield [ChromiumUser(await open_page(browser, url, errors)) for _ in range(users)]
        finally:
            await browser.close()


# ---------------------------------------------------------------------------
# The load
# ---------------------------------------------------------------------------

async def query_products(user, ids: list, until: float, think: float, seed: int, times: list, errors: list):
    """One user: query random products until `until` (time.monotonic), recording each answer's seconds.
    The user starts thinking, for a random part of a think time: users do not all press Enter at
    the same instant (twenty first queries at once measure a burst no steady load has)."""
    rng = random.Random(seed)
    shown = None
    await asyncio.sleep(rng.uniform(0, think))
    while time.monotonic() < until:
        product_id = rng.choice(ids)
        if product_id == shown:  # the page shows it already: nothing would change
            continue
        try:
            seconds, problems = await user.ask(product_id)
        except Exception as error:  # a timeout, a lost connection: the answer never came
            errors.append(f"{product_id}: {type(error).__name__}: {(str(error).splitlines() or [''])[0]}")
            shown = None
        else:
            times.append(seconds)
            errors.extend(f"{product_id}: {problem}" for problem in problems)
            shown = product_id
        if think:
            await asyncio.sleep(rng.uniform(0.5 * think, 1.5 * think))


async def run_load(url: str, server_pid: int, ids: list, users: int, seconds: float, think: float,
                   client: str = "protocol") -> dict:
    if client not in CLIENTS:
        raise ValueError(f"client is one of {', '.join(CLIENTS)}, not {client!r}")
    times, errors, memory = [], [], []
    open_users = protocol_users if client == "protocol" else chromium_users
    async with open_users(url, users, errors) as people:
        memory.append(server_memory_mb(server_pid))
        cpu_start, own_start, machine_start = cpu_seconds(server_pid), time.process_time(), machine_cpu()
        until = time.monotonic() + seconds

        async def sample_memory():
            while time.monotonic() < until:
                await asyncio.sleep(1)
                memory.append(server_memory_mb(server_pid))

        await asyncio.gather(sample_memory(), *(query_products(user, ids, until, think, seed, times, errors)
                                                for seed, user in enumerate(people)))
        server_cpu, own_cpu = cpu_seconds(server_pid) - cpu_start, time.process_time() - own_start
        machine_end = machine_cpu()
    milliseconds = np.array(times) * 1e3
    cores = os.cpu_count() or 1
    return {"client": client, "users": users, "seconds": seconds, "think_s": think, "answers": len(times),
            "errors": len(errors), "error_examples": errors[:5],
            "median_ms": float(np.median(milliseconds)) if len(times) else None,
            "p95_ms": float(np.percentile(milliseconds, 95)) if len(times) else None,
            "server_mb_start": memory[0], "server_mb_peak": max(memory), "server_mb_end": memory[-1],
            # of the cores' time, the share the app's server used
            "server_cpu_share": server_cpu / (seconds * cores),
            "server_cpu_ms_per_answer": 1e3 * server_cpu / max(len(times), 1),
            # this Python process (with Chromium, not the browser's own processes)
            "client_cpu_share": own_cpu / (seconds * cores),
            # every process on the machine (the server, the client, other jobs)
            "machine_cpu_share": (machine_end[0] - machine_start[0]) / max(machine_end[1] - machine_start[1], 1)}


def load_test(users: int = 20, seconds: float = 60, think: float = 2.0, log_path: Path | None = None,
              settings=None, client: str = "protocol") -> dict:
    """Serve the app with `settings` (default: get_settings(), from the environment), put `users` of
    `client` (protocol or chromium) on it for `seconds`, stop it; the figures of run_load."""
    from fashion_lens.catalog import load_catalog
    from fashion_lens.images import build_thumbnails, thumbnail_store
    from fashion_lens.settings import ENVIRONMENT_VARIABLES, get_settings

    settings = settings or get_settings()
    environment = {ENVIRONMENT_VARIABLES[name]: str(getattr(settings, name))
                   for name in ("data_dir", "artifacts_dir", "backbone", "weights", "layout")}
    catalog = load_catalog(settings.data_dir, layout=settings.layout)
    ids = catalog["ProductId"].sample(frac=1, random_state=0).tolist()
    # the thumbnails are made once per catalogue (the app starts it in the background at its first
    # start): the load is measured on a server that has them, as after any restart
    started = time.perf_counter()
    build_thumbnails(catalog["image_path"], thumbnail_store(settings.artifacts_dir))
    thumbnails_s = round(time.perf_counter() - started, 1)
    log_path = log_path or PROJECT_DIR / "artifacts" / "bench" / f"load-test-app-{client}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with served_app(log_path, environment) as (server, url):
        return {**asyncio.run(run_load(url, server.pid, ids, users, seconds, think, client)), "thumbnails_ready_s": thumbnails_s}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=20, help="users querying at the same time (default 20)")
    parser.add_argument("--seconds", type=float, default=60, help="how long they query (default 60)")
    parser.add_argument("--think", type=float, default=2.0, help="a user's pause between answers, s (default 2)")
    parser.add_argument("--client", choices=CLIENTS, default="protocol",
                        help="protocol: Streamlit's websocket protocol from Python (default); chromium: headless Chromium pages")
    arguments = parser.parse_args(argv)
    figures = load_test(arguments.users, arguments.seconds, arguments.think, client=arguments.client)
    print(json.dumps(figures, indent=1))
    return 1 if figures["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
