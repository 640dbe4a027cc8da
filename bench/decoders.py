"""MB/s of each wire format's incremental parser on the recorded fixtures in ../shared/fixtures.

    .venv/bin/python bench/decoders.py [--quick] [--per-file]

Each recorded body is fed to a fresh parser in pieces, as the proxy's stream callable would get
it, in three piece shapes: random 1-16 KiB (bulk network reads: most bodies then arrive whole),
one SSE event or NDJSON line per piece (a token stream read as it is produced, the common case),
and random 1-64 bytes (worst case). Layers:
- SSE framing (`addon.wire.sse.SSEDecoder`) on every .sse fixture;
- NDJSON framing (`addon.wire.ndjson.NDJSONDecoder`) on .ndjson / .jsonl;
- the whole metering path (`addon.metering.StreamMeter`: framing + json.loads + the OpenAI chat
  format) on the OpenAI-compatible chat and completions streams, plain and gzip-compressed
  (compressed once per event, flushed, as a server streams it).
Bodies with no incremental parser in the addon yet (Bedrock eventstream, Gemini's streamed JSON
array) are listed as skipped. Pieces are cut before timing; only feed/close calls are timed.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import zlib

from _harness import FIXTURES, busy_processes, machine_state, table

from addon.formats import FORMATS
from addon.metering import StreamMeter
from addon.wire.ndjson import NDJSONDecoder
from addon.wire.sse import SSEDecoder

OPENAI_APIS = ("chat.completions", "completions")
SHAPES = ("1-16 KiB", "one event", "1-64 B")


def _pieces(body: bytes, shape: str, rng: random.Random) -> list[bytes]:
    if shape == "one event":
        sep = b"\n\n" if b"\n\n" in body else b"\n"
        parts = body.split(sep)
        return [p + sep for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
    lo, hi = (1024, 16 * 1024) if shape == "1-16 KiB" else (1, 64)
    out, i = [], 0
    while i < len(body):
        n = rng.randint(lo, hi)
        out.append(body[i : i + n])
        i += n
    return out


def _gzip_per_event(pieces: list[bytes]) -> list[bytes]:
    c = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    out = [c.compress(p) + c.flush(zlib.Z_SYNC_FLUSH) for p in pieces]
    out[-1] += c.flush(zlib.Z_FINISH)
    return out


def _run_framer(make, pieces):
    d = make()
    for p in pieces:
        d.feed(p)
    d.close()


def _run_meter(make, pieces):
    m = make()
    for p in pieces:
        m.feed(p)
    m.close()


def _rate(fn, make, pieces_list, nbytes: int, min_s: float) -> float:
    """MB/s of plain (decoded) body bytes, best of repeated passes over every body."""
    best = 0.0
    deadline = time.perf_counter() + min_s
    while True:
        t0 = time.perf_counter()
        for pieces in pieces_list:
            fn(make, pieces)
        elapsed = time.perf_counter() - t0
        best = max(best, nbytes / elapsed / 1e6)
        if time.perf_counter() > deadline:
            return best


def layers(index: dict) -> dict[str, tuple]:
    """name -> (fixture files, run function, factory, gzip?)"""
    sse = sorted(f for f in index if f.endswith(".sse"))
    nd = sorted(f for f in index if f.endswith((".ndjson", ".jsonl")))
    oai = [f for f in sse if index[f].get("api", "").split(" ")[0] in OPENAI_APIS]
    chat = next(f for f in FORMATS if f.operation == "chat")
    comp = next(f for f in FORMATS if f.operation == "text_completion")

    def meter_for(name):
        fmt = comp if index[name].get("api", "").startswith("completions") else chat
        return lambda: StreamMeter(fmt, "text/event-stream", None)

    def gz_meter_for(name):
        fmt = comp if index[name].get("api", "").startswith("completions") else chat
        return lambda: StreamMeter(fmt, "text/event-stream", "gzip")

    return {
        "SSE framing": (sse, _run_framer, lambda name: SSEDecoder, False),
        "NDJSON framing": (nd, _run_framer, lambda name: NDJSONDecoder, False),
        "StreamMeter, OpenAI chat": (oai, _run_meter, meter_for, False),
        "StreamMeter, OpenAI chat, gzip": (oai, _run_meter, gz_meter_for, True),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 5 s budget instead of 30 s")
    parser.add_argument("--per-file", action="store_true", help="also one line per fixture (one-event pieces)")
    args = parser.parse_args()
    budget_s = 5.0 if args.quick else 30.0
    if not (FIXTURES / "index.json").exists():
        print(f"skipped: no recorded fixtures at {FIXTURES} (they live in the shared folder beside the repository)")
        return
    print(machine_state())
    print(f"other busy processes at start: {busy_processes()}")
    index = {e["file"]: e for e in json.loads((FIXTURES / "index.json").read_text())}
    rng = random.Random(7)
    cells = {}  # (layer, shape) -> (run, [(factory, pieces)], decoded bytes)
    info = {}
    for name, (files, run, factory_for, gz) in layers(index).items():
        bodies = {f: (FIXTURES / f).read_bytes() for f in files}
        nbytes = sum(len(b) for b in bodies.values())
        info[name] = (len(files), nbytes, sum(b.count(b"\ndata:") + b.startswith(b"data:") for b in bodies.values()))
        for shape in SHAPES:
            pieces = []
            for f, body in bodies.items():
                p = _pieces(body, shape, rng)
                pieces.append((factory_for(f), _gzip_per_event(p) if gz else p))
            cells[(name, shape)] = (run, pieces, nbytes)
    # Every cell once per pass, passes repeated until the budget is spent; the best pass counts
    # (on a shared machine the slow passes are other processes' time, not the parser's).
    best = {key: float("inf") for key in cells}
    deadline = time.perf_counter() + budget_s
    passes = 0
    while passes < 5 or time.perf_counter() < deadline:
        for key, (run, pieces, _) in cells.items():
            t0 = time.perf_counter()
            for make, p in pieces:
                run(make, p)
            best[key] = min(best[key], time.perf_counter() - t0)
        passes += 1
    rows = []
    for name, (nfiles, nbytes, events) in info.items():
        rates = [nbytes / best[(name, shape)] / 1e6 for shape in SHAPES]
        per_event = best[(name, "one event")] / events * 1e6 if events else None
        rows.append([name, nfiles, nbytes / 1024, *rates, per_event])
    print(table(["parser", "fixtures", "KiB", *[f"MB/s {s}" for s in SHAPES], "us/SSE event (one-event pieces)"], rows,
                title=f"Incremental parsers on the recorded fixtures (MB/s of decoded body; best of {passes} passes)"))
    skipped = sorted(f for f in index if f.endswith(".bin") or (f.startswith("gemini_stream_array")))
    print(f"skipped, no incremental parser in the addon yet: {', '.join(skipped)}")
    if args.per_file:
        print()
        _per_file(index, layers(index), budget_s / 10)


def _per_file(index, lays, min_s) -> None:
    files, run, factory_for, _ = lays["StreamMeter, OpenAI chat"]
    rows = []
    for f in files:
        body = (FIXTURES / f).read_bytes()
        p = _pieces(body, "one event", random.Random(1))
        t = _rate(run, factory_for(f), [p], len(body), min_s / 4)
        rows.append([f, len(body) / 1024, len(p), t, len(body) / (t * 1e6) / len(p) * 1e6])
    print(table(["fixture", "KiB", "pieces", "MB/s", "us/piece"], rows, title="StreamMeter per fixture, one event per piece"))


if __name__ == "__main__":
    sys.exit(main())
