"""The decode rate end to end: an upstream sending one token every 10 ms (100 tokens/s) through a
real mitmdump gives `tokens_per_second` of (N - 1) / (t_last - t_first), and the report's ms/tok
is its inverse.

What the test can know of the times the proxy stamped, whatever the machine's load: the proxy
saw the first token after the upstream began sending it and before the client received it, and
the same for the last. So the span it measured lies between (last sent - first received) and
(last received - first sent), and its rate between (N - 1) over each. That window is the
tolerance: on an idle machine it is within a fraction of a percent of 100 tokens/s, and a run is
used only where it is narrow enough to tell (N - 1) / span from N / span apart (one token's worth:
2 % at 48 tokens); a run on a machine too busy for that is repeated, never judged.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from rich.console import Console

from reports.cli import main as report_main
from tests.clients import httpx
from tests.upstream import LocalServer, Served, UpstreamHandler

pytestmark = pytest.mark.e2e

GAP_S = 0.010  # one token every 10 ms: 100 tokens/s
ATTEMPTS = 10  # runs per token count at most, while the machine's delays hide the difference a token makes


@dataclass
class PacedUpstream(LocalServer):
    """Anthropic Messages SSE with one token per `content_block_delta`, each due GAP_S after the
    one before on a fixed schedule (a late one does not delay the rest); `sent_at` holds when the
    writing of each began, per request."""

    served: list[Served] = field(default_factory=list)
    sent_at: list[list[float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._listen(_handler_for(self))


def _handler_for(upstream: PacedUpstream) -> type[UpstreamHandler]:
    class Handler(UpstreamHandler):
        def do_POST(self) -> None:
            body = self._receive(upstream).body or {}
            tokens = int(body["max_tokens"])  # the test asks for exactly this many
            sent: list[float] = []
            upstream.sent_at.append(sent)
            self._start_chunked(200, "text/event-stream; charset=utf-8")
            message = {"id": "msg_1", "type": "message", "role": "assistant", "model": body["model"], "content": [],
                       "stop_reason": None, "usage": {"input_tokens": 9, "output_tokens": 1}}
            self._event("message_start", {"message": message})
            self._event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
            start = time.perf_counter() + 0.05
            for i in range(tokens):
                _sleep_until(start + i * GAP_S)
                sent.append(time.perf_counter())
                self._event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": f" t{i}"}})
            self._event("content_block_stop", {"index": 0})
            self._event("message_delta", {"delta": {"stop_reason": "max_tokens", "stop_sequence": None},
                                          "usage": {"output_tokens": tokens}})
            self._event("message_stop", {})
            self._end_chunked()

        def _event(self, name: str, obj: dict[str, Any]) -> None:
            self._chunk(b"event: %s\ndata: %s\n\n" % (name.encode(), json.dumps({"type": name, **obj}).encode()))

    return Handler


def _sleep_until(deadline: float) -> None:
    while (left := deadline - time.perf_counter()) > 0:
        time.sleep(left)


@pytest.fixture
def upstream():
    with PacedUpstream() as server:
        yield server


def stream_through(proxy, upstream: PacedUpstream, tokens: int, model: str) -> list[float]:
    """One streamed call of `tokens` tokens; when the client had each token's event whole."""
    received: list[float] = []
    body = {"model": model, "max_tokens": tokens, "stream": True,
            "messages": [{"role": "user", "content": "count"}]}
    buffer = b""
    with httpx.Client(proxy=proxy.url, timeout=30) as client:
        with client.stream("POST", f"{upstream.url}/v1/messages", json=body) as response:
            assert response.status_code == 200
            for piece in response.iter_raw():
                now = time.perf_counter()
                buffer += piece
                *events, buffer = buffer.split(b"\n\n")
                received.extend(now for event in events if event.startswith(b"event: content_block_delta"))
    assert len(received) == tokens
    return received


def report_ms_per_token(db_path) -> dict[str, float | None]:
    console = Console(file=io.StringIO(), width=100, color_system=None)
    assert report_main(["--db", str(db_path), "--format", "json", "--group-by", "model"], console) == 0
    [table] = json.loads(console.file.getvalue())["groups"]
    return {row["key"]["model"]: row["time_per_output_token_ms"]["p50"] for row in table["rows"]}


@pytest.mark.parametrize("tokens", [2, 4, 48])
def test_one_token_every_10_ms_is_100_tokens_per_second_and_the_report_says_10_ms_per_token(
        start_proxy, upstream, capsys, tokens):
    proxy = start_proxy()
    for attempt in range(1, ATTEMPTS + 1):
        model = f"paced-{tokens}-run-{attempt}"  # the report's group of this run's row alone
        received = stream_through(proxy, upstream, tokens, model)
        sent = upstream.sent_at[-1]
        shortest, longest = sent[-1] - received[0], received[-1] - sent[0]  # the span the proxy saw lies between
        row = proxy.rows(attempt)[-1]
        assert (row["model"], row["completion_tokens"], row["usage_source"], row["is_streaming"]) == (
            model, tokens, "reported", 1)
        # One token more or less changes the rate by the factor tokens / (tokens - 1): a window
        # narrower than that tells the definitions apart; a wider one (a busy machine) tells nothing.
        if shortest > 0 and longest / shortest < tokens / (tokens - 1):
            break
    else:
        pytest.fail(f"in {ATTEMPTS} runs the machine's delays never let the times bound the rate within one token's worth")
    rate = row["tokens_per_second"]
    assert rate is not None
    low, high = (tokens - 1) / longest, (tokens - 1) / shortest
    assert low - 0.001 <= rate <= high + 0.001, (low, rate, high)  # the row keeps 3 decimals
    # The report's time per output token is the same definition: 1000 / tokens_per_second.
    assert report_ms_per_token(proxy.db_path)[model] == pytest.approx(1000 / rate, rel=1e-9)


def test_one_output_token_has_no_decode_rate(start_proxy, upstream, capsys):
    proxy = start_proxy()
    stream_through(proxy, upstream, 1, "paced-1")
    [row] = proxy.rows(1)
    assert (row["completion_tokens"], row["tokens_per_second"]) == (1, None)
    assert row["time_to_first_token_ms"] is not None
    assert report_ms_per_token(proxy.db_path) == {"paced-1": None}
