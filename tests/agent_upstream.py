"""A fake upstream for the real coding-agent CLIs (tests/agents.py), on 127.0.0.1.

It answers what Claude Code and Gemini CLI send when pointed at it, by path as the real APIs do:
Anthropic Messages (`HEAD /`, `…/messages` streamed or whole, `…/messages/count_tokens`), Gemini
(`…:streamGenerateContent?alt=sse`, `…:generateContent`, `…:countTokens`) and Gemini Code Assist,
what Gemini CLI signed in with a Google account calls (`/v1internal:loadCodeAssist` and the other
set-up methods, then the same generations with each answer inside `{"response": …, "traceId": …}`). A streamed
answer is the agent's main call: it waits `first_token_delay` before its first generated text
(and `chunk_delay` before each later piece) and reports the MAIN_* counts. A whole answer is a side call (Gemini CLI's routing, Claude Code's
title or quota checks) and reports the SIDE_* counts; where the request asks for JSON of a schema
(Gemini CLI's classifier), the text is an object with every required property of that schema.
Every request is kept in `served`, in order, so tests compare the rows with what was asked.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.upstream import LocalServer, Served, UpstreamHandler

WORDS = ("Hello", " from", " the", " agents'", " fake", " upstream", ".")
TEXT = "".join(WORDS)
MAIN_PROMPT_TOKENS = 2100  # all input, cache included
MAIN_CACHE_READ_TOKENS = 1500
MAIN_CACHE_WRITE_TOKENS = 300  # Anthropic only
MAIN_OUTPUT_TOKENS = 7  # Gemini: candidates, thoughts come on top
MAIN_THOUGHT_TOKENS = 5  # Gemini only
SIDE_PROMPT_TOKENS = 40
SIDE_OUTPUT_TOKENS = 3
COUNTED_TOKENS = 123  # what count_tokens / countTokens answer
ANTHROPIC_MODEL = "claude-fake-2026-01-01"
GEMINI_MODEL = "gemini-fake-2026-01-01"
CODE_ASSIST_PROJECT = "fake-project-4711"
_JSON_VALUES = {"STRING": "fake", "INTEGER": 1, "NUMBER": 1, "BOOLEAN": False, "ARRAY": [], "OBJECT": {}}


@dataclass
class AgentUpstream(LocalServer):
    first_token_delay: float = 0.0
    chunk_delay: float = 0.0  # between the main call's later pieces of text
    served: list[Served] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._listen(_handler_for(self))


def _handler_for(upstream: AgentUpstream) -> type[UpstreamHandler]:
    class Handler(UpstreamHandler):
        def do_HEAD(self) -> None:  # Claude Code's reachability check
            self._receive(upstream)
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            self._receive(upstream)
            self._whole({"error": {"type": "not_found_error", "message": "not found"}}, status=404)

        def do_POST(self) -> None:
            served = self._receive(upstream)
            body = served.body or {}
            path, _, query = self.path.partition("?")
            if "/v1internal:" in path:
                self._code_assist(served, body, path, query)
            elif path.endswith("/messages/count_tokens"):
                self._whole({"input_tokens": COUNTED_TOKENS})
            elif path.endswith("/messages"):
                self._anthropic_stream(served, body) if body.get("stream") else self._whole(_anthropic_whole())
            elif path.endswith(":streamGenerateContent") and "alt=sse" in query:
                self._gemini_stream(served)
            elif path.endswith(":generateContent"):
                self._whole(_gemini_whole(body))
            elif path.endswith(":countTokens"):
                self._whole({"totalTokens": COUNTED_TOKENS})
            else:
                self._whole({"error": {"code": 404, "message": "not found", "status": "NOT_FOUND"}}, status=404)

        def _code_assist(self, served: Served, body: dict[str, Any], path: str, query: str) -> None:
            method = path.rsplit(":", 1)[-1]
            if method == "streamGenerateContent" and "alt=sse" in query:
                self._gemini_stream(served, wrap=_code_assist)
            elif method == "generateContent":
                self._whole(_code_assist(_gemini_whole(body.get("request") or {})))
            elif method == "countTokens":
                self._whole({"totalTokens": COUNTED_TOKENS})
            elif method == "loadCodeAssist":  # a user of the free tier, with a project already
                self._whole({"currentTier": {"id": "free-tier", "name": "Gemini Code Assist for individuals"},
                             "allowedTiers": [{"id": "free-tier", "isDefault": True}],
                             "cloudaicompanionProject": CODE_ASSIST_PROJECT})
            elif method == "onboardUser":
                self._whole({"done": True, "response": {"cloudaicompanionProject": {"id": CODE_ASSIST_PROJECT}}})
            else:  # retrieveUserQuota, listExperiments, …: nothing to say
                self._whole({})

        def _whole(self, obj: Any, status: int = 200) -> None:
            self._send_whole(status, "application/json", json.dumps(obj).encode())

        def _sse(self, name: str | None, obj: dict[str, Any], eol: bytes = b"\n") -> None:
            head = b"event: %s%s" % (name.encode(), eol) if name else b""
            self._chunk(head + b"data: " + json.dumps(obj).encode() + eol + eol)

        def _anthropic_stream(self, served: Served, body: dict[str, Any]) -> None:
            self._start_chunked(200, "text/event-stream; charset=utf-8")
            usage = {"input_tokens": MAIN_PROMPT_TOKENS - MAIN_CACHE_READ_TOKENS - MAIN_CACHE_WRITE_TOKENS,
                     "cache_creation_input_tokens": MAIN_CACHE_WRITE_TOKENS,
                     "cache_read_input_tokens": MAIN_CACHE_READ_TOKENS, "output_tokens": 1}
            message = {"id": "msg_main", "type": "message", "role": "assistant", "model": ANTHROPIC_MODEL,
                       "content": [], "stop_reason": None, "stop_sequence": None, "usage": usage}
            self._sse("message_start", {"type": "message_start", "message": message})
            self._sse("content_block_start", {"type": "content_block_start", "index": 0,
                                              "content_block": {"type": "text", "text": ""}})
            for i, word in enumerate(WORDS):
                time.sleep(upstream.first_token_delay if i == 0 else upstream.chunk_delay)
                self._sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                  "delta": {"type": "text_delta", "text": word}})
                served.content_sent()
            self._sse("content_block_stop", {"type": "content_block_stop", "index": 0})
            self._sse("message_delta", {"type": "message_delta",
                                        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                        "usage": {"output_tokens": MAIN_OUTPUT_TOKENS}})
            self._sse("message_stop", {"type": "message_stop"})
            self._end_chunked()

        def _gemini_stream(self, served: Served, wrap: Callable[[dict[str, Any]], dict[str, Any]] = lambda c: c) -> None:
            self._start_chunked(200, "text/event-stream")
            last = len(WORDS) - 1
            for i, word in enumerate(WORDS):
                time.sleep(upstream.first_token_delay if i == 0 else upstream.chunk_delay)
                self._sse(None, wrap(_gemini_chunk(word, final=i == last)), eol=b"\r\n")
                served.content_sent()
            self._end_chunked()

    return Handler


def _anthropic_whole() -> dict[str, Any]:
    return {"id": "msg_side", "type": "message", "role": "assistant", "model": ANTHROPIC_MODEL,
            "content": [{"type": "text", "text": "Fake"}], "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": SIDE_PROMPT_TOKENS, "output_tokens": SIDE_OUTPUT_TOKENS}}


def _gemini_chunk(text: str, final: bool) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
    usage = {"promptTokenCount": MAIN_PROMPT_TOKENS, "cachedContentTokenCount": MAIN_CACHE_READ_TOKENS,
             "thoughtsTokenCount": MAIN_THOUGHT_TOKENS}
    if final:
        candidate["finishReason"] = "STOP"
        usage["candidatesTokenCount"] = MAIN_OUTPUT_TOKENS
    usage["totalTokenCount"] = MAIN_PROMPT_TOKENS + MAIN_THOUGHT_TOKENS + usage.get("candidatesTokenCount", 0)
    return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": GEMINI_MODEL, "responseId": "r-main"}


def _gemini_whole(body: dict[str, Any]) -> dict[str, Any]:
    config = body.get("generationConfig") or {}
    schema = config.get("responseJsonSchema") or config.get("responseSchema")
    text = json.dumps(_instance(schema)) if isinstance(schema, dict) else "Fake"
    return {"candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": SIDE_PROMPT_TOKENS, "candidatesTokenCount": SIDE_OUTPUT_TOKENS,
                              "totalTokenCount": SIDE_PROMPT_TOKENS + SIDE_OUTPUT_TOKENS},
            "modelVersion": GEMINI_MODEL, "responseId": "r-side"}


def _code_assist(response: dict[str, Any]) -> dict[str, Any]:
    return {"response": response, "traceId": "c0de0a551575"}


def _instance(schema: dict[str, Any]) -> Any:
    """A value of a (Gemini-style) JSON schema: every required property, the first enum value."""
    if schema.get("enum"):
        return schema["enum"][0]
    kind = str(schema.get("type", "OBJECT")).upper()
    if kind != "OBJECT":
        return _JSON_VALUES.get(kind, "fake")
    properties = schema.get("properties") or {}
    return {name: _instance(properties.get(name) or {}) for name in schema.get("required") or properties}
