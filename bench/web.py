"""How fast `python -m reports --serve` answers on big databases: a script, not a timed test.

Starts the real server (`python -m reports --serve`, a process of its own) on the N-call SQLite
databases `bench/reports.py` generates (30 days ending now, 20 models, with the report indexes),
and times each endpoint as a client waits for it (request sent to last byte read), median of
--runs; the dashboard's view of the last day makes three of these requests at once.

    python bench/web.py                            # 1M calls (generated once, then cached)
    python bench/web.py --sizes 100000,1000000 --runs 7
    python bench/web.py --screenshot docs/dashboard.png   # the README's picture, from a sample database

--screenshot writes a sample database (3,000 calls over the last day, as the README's terminal
example) and saves the dashboard's "1 d" view from Debian's headless chromium (Selenium).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.reports import database, generate  # noqa: E402

TARGET_S = 1.0  # "--since 24h on a million calls answers in well under a second"
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def endpoints() -> list[tuple[str, str]]:
    day_ago = (datetime.now(UTC) - timedelta(hours=24)).strftime("%Y-%m-%dT%H:%M:%S")
    return [
        ("/api/report?since=24h", "the report, last day (the dashboard's main request)"),
        ("/api/report?since=24h&group_by=agent", "by agent, last day"),
        ("/api/timeline?since=24h&bucket=hour", "timeline, last day, per hour"),
        ("/api/calls?since=24h&page_size=20", "newest 20 calls of the last day"),
        ("/api/calls?since=24h&page=500&page_size=20", "page 500 of them"),
        ("/api/report?since=1h", "the report, last hour"),
        ("/api/timeline?since=7d&bucket=hour", "timeline, last week, per hour"),
        (f"/metrics?start={day_ago}", "the original's /metrics, last day"),
        ("/completion_requests?limit=1000", "the original's /completion_requests, 1,000 rows"),
        ("/health", "health"),
        ("/api/report", "the report, everything (the terminal's default view)"),
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if k != "LLM_METRICS_DB"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "reports", "--db", str(path), "--serve", "--port", str(self.port)],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.get("/health")
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("the server did not answer within 30 s")

    def get(self, path: str) -> bytes:
        with NO_PROXY.open(self.url + path, timeout=120) as response:
            return response.read()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(15)


def time_endpoint(server: Server, path: str, runs: int) -> tuple[float, float, int]:
    server.get(path)  # once first: the file's pages in the OS cache, as for a dashboard that refreshes
    times, size = [], 0
    for _ in range(runs):
        started = time.perf_counter()
        size = len(server.get(path))
        times.append(time.perf_counter() - started)
    return statistics.median(times), min(times), size


# What the page requests for its "1 d" view, all at once (reports/web/app.js, load()).
PAGE_1D = ("/api/report?since=24h&top=10", "/api/timeline?since=24h&bucket=hour", "/api/calls?since=24h&page=1&page_size=20")


def time_page(server: Server, runs: int) -> tuple[float, float]:
    """Seconds from sending the page's three requests at once to the last one answered."""
    def once() -> float:
        started = time.perf_counter()
        with ThreadPoolExecutor(len(PAGE_1D)) as pool:
            list(pool.map(server.get, PAGE_1D))
        return time.perf_counter() - started

    once()
    times = [once() for _ in range(runs)]
    return statistics.median(times), min(times)


def bench(sizes: list[int], runs: int, cache: Path) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; {runs} runs each, median (min)")
    for n in sizes:
        path = database(cache, n, fresh=False)
        server = Server(path)
        try:
            print(f"\n{n:,} calls over 30 days ({path.stat().st_size / 2**20:,.0f} MB), python -m reports --serve")
            print(f"{'endpoint':<46} {'seconds':>14} {'bytes':>9}  what")
            for path_query, what in endpoints():
                median, fastest, size = time_endpoint(server, path_query, runs)
                mark = f"  < {TARGET_S:g} s {'ok' if median < TARGET_S else 'MISSED'}" if "since=24h" in path_query else ""
                print(f"{path_query:<46} {median:>6.3f} ({fastest:.3f}) {size:>9,}  {what}{mark}", flush=True)
            median, fastest = time_page(server, runs)
            print(f"{'the page, 1 d (its 3 requests at once)':<46} {median:>6.3f} ({fastest:.3f}) {'':>9}  "
                  f"what the dashboard waits for", flush=True)
        finally:
            server.stop()
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


def screenshot(out: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager never downloads anything
    sample = Path(tempfile.mkdtemp()) / "sample.db"
    generate(sample, 3000, days=1, models=6, seed=11)
    server = Server(sample)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900", "--hide-scrollbars"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "light"}]})
        driver.get(server.url + "/#1d")
        deadline = time.monotonic() + 30
        while driver.execute_script("return document.body.dataset.state") != "ready" and time.monotonic() < deadline:
            time.sleep(0.1)
        # The sample's path in the header would name this machine's temporary folder.
        driver.execute_script("document.getElementById('database').textContent = '~/.llm_metrics_proxy/metrics.db'")
        height = driver.execute_script("return document.querySelector('#error-kinds').closest('section').offsetTop")
        driver.set_window_size(1200, height - 4)
        chrome = height - 4 - driver.execute_script("return window.innerHeight")  # the window's own bars
        driver.set_window_size(1200, height - 4 + chrome)
        time.sleep(0.3)
        driver.save_screenshot(str(out))
    finally:
        driver.quit()
        server.stop()
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000000", help="comma-separated numbers of calls")
    parser.add_argument("--runs", type=int, default=5, help="timed requests per endpoint (median shown)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "llm-metrics-bench")
    parser.add_argument("--screenshot", type=Path, metavar="PNG", help="only save the dashboard of a sample database to PNG")
    args = parser.parse_args()
    if args.screenshot:
        screenshot(args.screenshot)
    else:
        bench([int(s) for s in args.sizes.split(",")], args.runs, args.cache)
    return 0


if __name__ == "__main__":
    sys.exit(main())
