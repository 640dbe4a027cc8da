"""Where the addon's CPU goes under load: py-spy samples of a real mitmdump, summed per function.

    .venv/bin/python bench/profile_addon.py [--quick] [--mode chat|stream] [--seconds S] [--py-spy PATH]

Starts the fake upstream and `mitmdump -s addon/llm_metrics.py`, drives it with the load client
(chat: 16 concurrent small non-streamed requests; stream: 50 concurrent streams of 100 events),
and records it with py-spy (`pip install py-spy` anywhere, e.g. a scratch venv; this script only
runs the binary) in --gil mode: only the thread holding the GIL is sampled, so a thread waiting for
the GIL is not counted as working. Prints, per thread, the share of samples in each part of the
work (scaled by that thread's measured CPU per request or per event) and the addon functions with
the most samples. C code that releases the GIL (SQLite's own work in the writer) is not sampled.
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
import time

from _harness import Proxy, Upstream, bench_options, parse_options, print_start, run_client, scratch_dir, table

# Parts of the work, by the innermost frame that names one (frames look like `func (addon/x.py:12)`).
PARTS = (
    ("(storage/", "addon: storage (writer thread; queue put on the loop)"),
    ("(logging/", "logging (the addon's line per call, mitmproxy's connection lines)"),
    ("(mitmproxy/log.py", "logging (the addon's line per call, mitmproxy's connection lines)"),
    ("(mitmproxy/addons/termlog.py", "logging (the addon's line per call, mitmproxy's connection lines)"),
    ("(addon/summary.py", "logging (the addon's line per call, mitmproxy's connection lines)"),
    ("(json/", "addon: json.loads (request body, stream events)"),
    ("(addon/wire/sse.py", "addon: SSE framing"),
    ("(addon/wire/encoding.py", "addon: decompression"),
    ("(addon/formats/", "addon: format handler"),
    ("(addon/record.py", "addon: building the row"),
    ("(addon/metering.py", "addon: metering glue"),
    ("(addon/llm_metrics.py", "addon: hook bodies"),
)
OURS = ("(addon/", "(storage/")


def _part(frames: list[str]) -> str:
    ours = any(o in f for f in frames for o in OURS)
    for frame in reversed(frames):
        for needle, label in PARTS:
            if needle in frame and (ours or label.startswith("logging")):
                return label if ours or not label.startswith("logging") else "mitmproxy: logging (connection lines)"
    return "mitmproxy and asyncio (proxying itself)"


def _function(frame: str) -> str:
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})"


def parse(raw: str):
    """py-spy --format raw: `thread (...);frame;frame... count` lines, outermost frame first."""
    threads = collections.defaultdict(collections.Counter)
    self_time, total_time = collections.Counter(), collections.Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        c = int(count)
        frames = stack.split(";")
        thread = "main" if "MainThread" in frames[0] else "other"
        threads[thread][_part(frames[1:])] += c
        ours = [_function(f) for f in frames[1:] if any(o in f for o in OURS)]
        if ours:
            self_time[ours[-1]] += c
            for f in dict.fromkeys(ours):
                total_time[f] += c
    return threads, self_time, total_time


def main() -> None:
    parser = bench_options(__doc__, "10 s of load", seconds=30.0)
    parser.add_argument("--mode", choices=("chat", "stream"), default="chat")
    parser.add_argument("--py-spy", default=shutil.which("py-spy"), help="path of the py-spy binary")
    args = parse_options(parser, seconds=10.0)
    if not args.py_spy:
        print("skipped: py-spy not found (pip install py-spy, then pass --py-spy PATH)")
        return
    print_start()
    upstream = Upstream()
    work = scratch_dir("profile")
    proxy = Proxy("addon", work / "addon")
    raw_path = work / "profile.txt"
    try:
        run_client({"target": proxy.port, "upstream_port": upstream.port, "mode": "chat", "concurrency": 4, "seconds": 0.5})
        spy = subprocess.Popen([args.py_spy, "record", "--pid", str(proxy.proc.pid), "--format", "raw", "--threads",
                                "--rate", "250", "--nonblocking", "--gil", "--output", str(raw_path),
                                "--duration", str(int(args.seconds) + 2)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)
        cpu0 = proxy.thread_cpu_s()
        if args.mode == "chat":
            out = run_client({"target": proxy.port, "upstream_port": upstream.port, "mode": "chat",
                              "concurrency": 16, "seconds": args.seconds})
            units, unit = out["done"], "request"
        else:
            out = run_client({"target": proxy.port, "upstream_port": upstream.port, "mode": "stream",
                              "concurrency": 50, "seconds": args.seconds, "stream_headers": {"x-bench-words": "100"}})
            units, unit = out["events_in_window"], "event"
        cpu1 = proxy.thread_cpu_s()
        cpu = {t: cpu1[t] - cpu0[t] for t in cpu0}
        spy.wait(args.seconds + 60)
    finally:
        proxy.stop()
        upstream.stop()
    threads, self_time, total_time = parse(raw_path.read_text())
    per = {t: cpu[t] * 1e6 / max(units, 1) for t in cpu}
    print(f"{units:,} {unit}s in {args.seconds:g} s; proxy CPU per {unit}: event loop {per['main']:,.0f} us, "
          f"other threads {per['other']:,.0f} us (py-spy's sampling adds a little)")
    names = {"main": "event loop (main thread)", "other": "other threads (the addon's writer)"}
    for thread in ("main", "other"):
        parts = threads[thread]
        total = sum(parts.values()) or 1
        rows = [[label, c, f"{100 * c / total:.1f} %", per[thread] * c / total] for label, c in parts.most_common()]
        print(table(["part", "samples", "share", f"~us per {unit}"], rows, title=f"\n{names[thread]}: {total:,} samples"))
    print(table(["addon/storage function, self", "samples"], [[k, v] for k, v in self_time.most_common(12)],
                title="\nInnermost addon/storage frame (its own code and what it calls outside the project)"))
    print(table(["addon/storage function, total", "samples"], [[k, v] for k, v in total_time.most_common(12)],
                title="\nAny addon/storage frame on the stack"))


if __name__ == "__main__":
    sys.exit(main())
