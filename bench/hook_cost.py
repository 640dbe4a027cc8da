"""Time spent inside the addon's hooks, per request and per streamed chunk (p50/p99).

    .venv/bin/python bench/hook_cost.py [--quick] [--requests N]

The addon is driven in-process with mitmproxy's own test helpers (taddons/tflow), hooks called in
flow order, each call timed with perf_counter_ns (wall clock) and thread_time_ns (the thread's CPU:
without the time it waited for the GIL or was preempted by other processes on this shared machine). A streamed response is fed to the stream
callable one network read at a time, each read holding one SSE event (as a token stream arrives
at an unloaded proxy): a role event, 20 content events, a finish event, a usage event, [DONE].

The hooks only stamp times and keep references to bytes in the outbox; every 10 ms (or once
1 MiB of stream pieces wait) a timer hands what waits to the metering
(`addon.handover.Handover.flush`, which calls `Metering.send`): that is timed too, and charged to
the calls it carried (its mean per call; its own p99 per hand-over). Two set-ups, alternating in blocks:
- "as deployed": `ChildProcess`, the metering in its own process at nice 10 (a frame written to a
  non-blocking pipe; what the pipe cannot take waits in memory, never in a hook), the real writer
  into a fresh SQLite file there, the one-line log per call on, log levels as mitmdump sets them.
- "metering on the loop" (`llm_metrics_worker=false`, `InProcess`): the hand-over runs the
  metering itself (parsing, rows, lines) on mitmproxy's loop, with the writer thread beside it;
  what the process takes off the loop.

Targets: p99 < 300 us per request (all hooks of one call), < 50 us per chunk.
mitmproxy itself spends about 1.8 ms of CPU per small request on this machine (bench/proxy_overhead.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import defaultdict

from _harness import bench_options, count_rows, parse_options, pct, print_start, scratch_dir, table
from mitmproxy import http
from mitmproxy.test import taddons, tflow, tutils

from addon.llm_metrics import LLMMetrics

CHAT = json.dumps({"model": "gpt-bench", "messages": [{"role": "system", "content": "Be brief."},
                                                       {"role": "user", "content": "Say hello in five words."}],
                   "max_tokens": 16, "temperature": 0.2}).encode()
STREAM = json.dumps({**json.loads(CHAT), "stream": True, "stream_options": {"include_usage": True}}).encode()
_BASE = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1, "model": "gpt-bench-2026-01-01",
         "system_fingerprint": "fp_0123456789"}


def _event(obj) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


ROLE = _event({**_BASE, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}], "usage": None})
CONTENT = [_event({**_BASE, "choices": [{"index": 0, "delta": {"content": f" word{i}"}, "logprobs": None, "finish_reason": None}],
                   "usage": None}) for i in range(20)]
FINISH = _event({**_BASE, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}], "usage": None})
USAGE = _event({**_BASE, "choices": [], "usage": {"prompt_tokens": 19, "completion_tokens": 20, "total_tokens": 39,
                                                   "prompt_tokens_details": {"cached_tokens": 0},
                                                   "completion_tokens_details": {"reasoning_tokens": 0}}})
CHUNKS = [("role", ROLE)] + [("content", c) for c in CONTENT] + [("finish", FINISH), ("usage", USAGE), ("done", b"data: [DONE]\n\n")]
COMPLETION = json.dumps({"id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": "gpt-bench-2026-01-01",
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there, nice to meet."},
                                      "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 19, "completion_tokens": 7, "total_tokens": 26}}).encode()


def _flow(body: bytes) -> http.HTTPFlow:
    request = tutils.treq(method=b"POST", host="127.0.0.1", port=8000, path=b"/v1/chat/completions", content=body)
    request.headers["user-agent"] = "OpenAI/Python 1.54.0"
    return tflow.tflow(req=request)


def _timed(samples, name, fn, *args, **kwargs):
    c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
    result = fn(*args, **kwargs)
    t1, c1 = time.perf_counter_ns(), time.thread_time_ns()
    samples[name].append(t1 - t0)
    samples["cpu " + name].append(c1 - c0)
    return result


def one_call(addon: LLMMetrics, streamed: bool, samples) -> None:
    flow = _flow(STREAM if streamed else CHAT)
    kind = "stream" if streamed else "plain"
    _timed(samples, f"{kind}:requestheaders", addon.requestheaders, flow)
    if streamed:
        flow.response = http.Response.make(200, b"", {"content-type": "text/event-stream; charset=utf-8"})
    else:
        flow.response = http.Response.make(200, COMPLETION, {"content-type": "application/json"})
    _timed(samples, f"{kind}:responseheaders", addon.responseheaders, flow)
    if streamed:
        on_chunk = flow.response.stream
        for name, data in CHUNKS:
            _timed(samples, f"chunk:{name}", on_chunk, data)
        _timed(samples, "chunk:end (b'')", on_chunk, b"")
    _timed(samples, f"{kind}:response", addon.response, flow)


def run_block(addon: LLMMetrics, n: int, samples, loop) -> None:
    async def block() -> None:
        # Hooks run on a running loop, as in mitmdump: hand-overs and per-call lines go by timers.
        for i in range(n):
            one_call(addon, streamed=bool(i % 2), samples=samples)
            if i % 5 == 4:
                # About 500 calls/s, what one proxy core passes: the hand-over timer (10 ms)
                # carries a few calls each time, as deployed.
                await asyncio.sleep(0.011)
        await asyncio.sleep(0.011)

    loop.run_until_complete(block())


class TimedHandOver:
    """Wraps the outbox's hand-over (`Handover.flush`): its wall clock and CPU per call, into the
    current samples. Each new metering comes with a new outbox: `wrap` it again."""

    def __init__(self) -> None:
        self.samples = defaultdict(list)  # hand-overs outside the timed blocks (set-up, switches)

    def wrap(self, addon: LLMMetrics) -> None:
        handover = addon.handover
        assert handover is not None, "the addon has no metering (see its log)"
        inner = handover.flush  # the timer and the stream callables look `flush` up on the instance

        def timed(*, closing: bool = False) -> None:
            _timed(self.samples, "hand-over (each)", inner, closing=closing)

        handover.flush = timed


async def _running(addon: LLMMetrics) -> None:
    """What the addon's `running` hook does for the metering once mitmdump's loop runs: the
    metering process's pipes are watched from then on (done here for each new metering)."""
    assert addon.metering is not None, "the addon has no metering (see its log)"
    addon.metering.watch()


def _log_levels_as_mitmdump() -> None:
    """mitmdump sets the root logger to DEBUG (mitmproxy/tools/main.py) and lets its handlers
    filter, so every library's debug call (peewee logs each query) builds and formats a record."""
    logging.getLogger().setLevel(logging.DEBUG)
    for name in ("tornado", "asyncio", "hpack", "quic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def measure(args) -> dict:
    _log_levels_as_mitmdump()
    work = scratch_dir("hooks")
    setups = {"as deployed": True, "metering on the loop": False}
    results = {setup: defaultdict(list) for setup in setups}
    calls = dict.fromkeys(setups, 0)
    addon = LLMMetrics()
    hand_over = TimedHandOver()
    with taddons.context(addon) as tctx:
        loop = tctx.master.event_loop
        tctx.configure(addon, llm_metrics_db=str(work / "metrics.db"))
        block = 1000
        for b in range(max(1, args.requests // block)):
            for setup in list(setups) if b % 2 == 0 else list(setups)[::-1]:
                hand_over.samples = defaultdict(list)  # the closing hand-over of the last metering: not timed
                tctx.options.update(llm_metrics_worker=setups[setup])  # a new metering: not timed
                loop.run_until_complete(_running(addon))
                hand_over.wrap(addon)
                hand_over.samples = results[setup]
                run_block(addon, block, results[setup], loop)
                calls[setup] += block
        addon.done()
    return {"results": results, "calls": calls, "written": count_rows(work / "metrics.db")}


def _per_request(samples, kind: str, prefix: str = "", calls: int = 0) -> list[int]:
    """All hooks of one call, plus its share of the hand-overs (their mean per call)."""
    hooks = [samples[f"{prefix}{kind}:{h}"] for h in ("requestheaders", "responseheaders", "response")]
    totals = [sum(parts) for parts in zip(*hooks)]
    if kind == "stream":  # the end-of-stream call of the stream callable closes the call too
        totals = [t + e for t, e in zip(totals, samples[f"{prefix}chunk:end (b'')"])]
    share = sum(samples[f"{prefix}hand-over (each)"]) / calls if calls else 0
    return [t + share for t in totals]


def _chunks(samples, prefix: str = "") -> list[int]:
    return [x for name, v in samples.items() if name.startswith(prefix + "chunk:") and "end" not in name for x in v]


def _row(label, wall, cpu) -> list:
    return [label, len(wall), pct(wall, 50) / 1000, pct(wall, 99) / 1000, sum(wall) / len(wall) / 1000,
            pct(cpu, 50) / 1000, pct(cpu, 99) / 1000]


def render(data: dict, args) -> str:
    out = []
    for setup, samples in data["results"].items():
        calls = data["calls"][setup]
        rows = [_row(name, v, samples["cpu " + name]) for name, v in samples.items() if not name.startswith("cpu ")]
        for kind, label in (("plain", "= per non-streamed request"), ("stream", "= per streamed request (no chunks)")):
            rows.append(_row(label, _per_request(samples, kind, calls=calls), _per_request(samples, kind, "cpu ", calls)))
        rows.append(_row("= per chunk, all kinds", _chunks(samples), _chunks(samples, "cpu ")))
        out.append(table(["hook", "calls", "p50 us", "p99 us", "mean us", "CPU p50 us", "CPU p99 us"], rows,
                         title=f"Loop time, {setup} (wall clock: what the event loop waits; CPU: the thread's own)"))
        req99 = max(pct(_per_request(samples, k, calls=calls), 99) for k in ("plain", "stream")) / 1000
        cpu99 = max(pct(_per_request(samples, k, "cpu ", calls), 99) for k in ("plain", "stream")) / 1000
        chunk99, chunk_cpu99 = pct(_chunks(samples), 99) / 1000, pct(_chunks(samples, "cpu "), 99) / 1000
        out.append(f"{setup}: per request p99 {req99:.0f} us wall, {cpu99:.0f} us CPU (target < 300: "
                   f"{'met' if req99 < 300 else 'NOT met'}); per chunk p99 {chunk99:.1f} us wall, {chunk_cpu99:.1f} us CPU "
                   f"(target < 50: {'met' if chunk99 < 50 else 'NOT met'})")
        out.append("")
    out.append(f"rows written by the real writer: {data['written']}")
    return "\n".join(out)


def main() -> None:
    parser = bench_options(__doc__, "2,000 calls per set-up")
    parser.add_argument("--requests", type=int, default=10_000, help="calls per set-up (half of them streamed)")
    args = parse_options(parser, requests=2_000)
    print_start()
    print(render(measure(args), args))


if __name__ == "__main__":
    main()
