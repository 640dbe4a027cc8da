"""MB/s of each wire format's incremental parser on the recorded fixtures in ../shared/fixtures.

    .venv/bin/python bench/decoders.py [--quick]

Each recorded streamed body is fed to a fresh parser in pieces, as the proxy's stream callable
would get it, in three piece shapes: random 1-16 KiB (bulk network reads: most bodies then arrive
whole), one event per piece (an SSE event, NDJSON line, JSON-array element or event-stream frame:
a token stream read as it is produced, the common case), and random 1-64 bytes (worst case).
Two kinds of layer:
- framing alone: SSE, NDJSON, streamed JSON array, AWS event stream;
- the whole metering path (`addon.metering.StreamMeter`: decompression, framing, json.loads and
  the format's handler) for each API format that has streamed fixtures, and once more for the
  OpenAI-compatible chat streams gzip-compressed (flushed per event, as a server streams it).
Pieces are cut before timing; only feed/close calls are timed. Every cell runs once per pass,
passes repeat until the time budget is spent, and the best pass counts (on a shared machine the
slow passes are other processes' time, not the parser's).
"""

from __future__ import annotations

import json
import random
import struct
import sys
import time
import zlib

from _harness import FIXTURES, bench_options, parse_options, print_start, table

from addon import metering
from addon.formats import FORMATS
from addon.wire.eventstream import EventStreamDecoder
from addon.wire.json_array import JSONArrayDecoder
from addon.wire.ndjson import NDJSONDecoder
from addon.wire.sse import SSEDecoder

SHAPES = ("1-16 KiB", "one event", "1-64 B")
FORMAT_BY_NAME = {type(f).__name__: f for f in FORMATS}

# fixture file prefix -> (format class name, framing); first match wins.
STREAMS = (
    ("openai_completions_stream", "OpenAICompletions", metering.SSE),
    ("vllm_completions_stream", "OpenAICompletions", metering.SSE),
    ("openai_responses_stream_error", "OpenAIResponses", metering.NDJSON),
    ("openai_responses_stream", "OpenAIResponses", metering.SSE),
    ("anthropic_messages_stream", "AnthropicMessages", metering.SSE),
    ("gemini_stream_array", "GeminiGenerateContent", metering.JSON_ARRAY),
    ("gemini_stream_sse", "GeminiGenerateContent", metering.SSE),
    ("vertex_stream_sse", "GeminiGenerateContent", metering.SSE),
    ("ollama_chat_stream", "OllamaChat", metering.NDJSON),
    ("ollama_generate_stream", "OllamaGenerate", metering.NDJSON),
    ("bedrock_converse_stream", "BedrockConverse", metering.EVENTSTREAM),
    ("bedrock_invoke_anthropic_stream", "BedrockInvokeAnthropic", metering.EVENTSTREAM),
    ("", "OpenAIChat", metering.SSE),  # openai, azure, deepseek, groq, mistral, openrouter, vllm chat
)
FRAMERS = {metering.SSE: SSEDecoder, metering.NDJSON: NDJSONDecoder,
           metering.JSON_ARRAY: JSONArrayDecoder, metering.EVENTSTREAM: EventStreamDecoder}
CONTENT_TYPES = {metering.SSE: "text/event-stream", metering.NDJSON: "application/x-ndjson",
                 metering.JSON_ARRAY: "application/json", metering.EVENTSTREAM: "application/vnd.amazon.eventstream"}


def streamed_fixtures(index: dict) -> dict[str, tuple[str, str]]:
    """file -> (format name, framing) for every streamed body."""
    out = {}
    for name, entry in sorted(index.items()):
        if not entry.get("streaming"):
            continue
        fmt, framing = next((f, fr) for prefix, f, fr in STREAMS if name.startswith(prefix))
        if fmt in FORMAT_BY_NAME:
            out[name] = (fmt, framing)
    return out


def _events(body: bytes, framing: str) -> list[bytes]:
    """The body cut after each event, separators kept: joined, they give the body back."""
    if framing == metering.EVENTSTREAM:
        out, i = [], 0
        while i + 4 <= len(body):
            n = struct.unpack(">I", body[i : i + 4])[0] or len(body) - i
            out.append(body[i : i + n])
            i += n
        return out + ([body[i:]] if i < len(body) else [])
    sep = {metering.SSE: b"\n\n", metering.NDJSON: b"\n", metering.JSON_ARRAY: b"\n,"}[framing]
    if framing == metering.SSE and sep not in body:
        sep = b"\r\n\r\n"
    parts = body.split(sep)
    return [p + sep for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def _pieces(body: bytes, framing: str, shape: str, rng: random.Random) -> list[bytes]:
    if shape == "one event":
        return _events(body, framing)
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


def _run(make, pieces) -> None:
    parser = make()
    for p in pieces:
        parser.feed(p)
    parser.close()


def layers(fixtures: dict[str, tuple[str, str]]) -> dict[str, list[tuple[str, object, bool]]]:
    """layer name -> [(file, factory, gzip?)]"""
    out: dict[str, list] = {}
    for framing, framer in FRAMERS.items():
        files = [f for f, (_, fr) in fixtures.items() if fr == framing]
        if files:
            out[f"framing: {framing}"] = [(f, framer, False) for f in files]
    for file, (fmt_name, framing) in fixtures.items():
        fmt, ctype = FORMAT_BY_NAME[fmt_name], CONTENT_TYPES[framing]
        def make(fmt=fmt, ctype=ctype, framing=framing):
            return metering.StreamMeter(fmt, ctype, None, framing)
        out.setdefault(f"StreamMeter: {fmt_name} ({framing})", []).append((file, make, False))
        if fmt_name == "OpenAIChat":
            def gz(fmt=fmt):
                return metering.StreamMeter(fmt, "text/event-stream", "gzip", metering.SSE)
            out.setdefault("StreamMeter: OpenAIChat (sse, gzip)", []).append((file, gz, True))
    return out


def main() -> None:
    args = parse_options(bench_options(__doc__, "a 5 s budget instead of 30 s"))
    budget_s = 5.0 if args.quick else 30.0
    if not (FIXTURES / "index.json").exists():
        print(f"skipped: no recorded fixtures at {FIXTURES} (they live in the shared folder beside the repository)")
        return
    print_start()
    index = {e["file"]: e for e in json.loads((FIXTURES / "index.json").read_text())}
    fixtures = streamed_fixtures(index)
    rng = random.Random(7)
    cells, info = {}, {}
    for name, members in layers(fixtures).items():
        bodies = {f: (FIXTURES / f).read_bytes() for f, _, _ in members}
        nbytes = sum(len(b) for b in bodies.values())
        events = sum(len(_events(bodies[f], fixtures[f][1])) for f, _, _ in members)
        info[name] = (len(members), nbytes, events)
        for shape in SHAPES:
            work = []
            for f, make, gz in members:
                p = _pieces(bodies[f], fixtures[f][1], shape, rng)
                work.append((make, _gzip_per_event(p) if gz else p))
            cells[(name, shape)] = work
    best = {key: float("inf") for key in cells}
    deadline = time.perf_counter() + budget_s
    passes = 0
    while passes < 5 or time.perf_counter() < deadline:
        for key, work in cells.items():
            t0 = time.perf_counter()
            for make, pieces in work:
                _run(make, pieces)
            best[key] = min(best[key], time.perf_counter() - t0)
        passes += 1
    rows = []
    for name, (nfiles, nbytes, events) in info.items():
        rates = [nbytes / best[(name, shape)] / 1e6 for shape in SHAPES]
        rows.append([name, nfiles, nbytes / 1024, events, *rates, best[(name, "one event")] / events * 1e6])
    print(table(["parser", "fixtures", "KiB", "events", *[f"MB/s {s}" for s in SHAPES], "us/event (one-event pieces)"],
                rows, title=f"Incremental parsers on the recorded streamed fixtures (MB/s of decoded body; best of {passes} passes)"))
    unused = sorted(f for f, e in index.items() if e.get("streaming") and f not in fixtures)
    if unused:
        print(f"streamed fixtures with no format in the addon: {', '.join(unused)}")


if __name__ == "__main__":
    sys.exit(main())
