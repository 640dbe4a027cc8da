"""A fake upstream speaking every non-chat-completions API the proxy meters, on 127.0.0.1.

OpenAI Responses and Embeddings, Anthropic Messages, Gemini generateContent (SSE with CRLF
framing, and the gzip-encoded streamed JSON array), Gemini Code Assist (the same answers, each inside
`{"response": …, "traceId": …}`, as gemini-cli's converter reads them), Ollama's native NDJSON. Each API is chosen by
request path, like the real servers; each stream waits `first_token_delay` before its first
generated content and records when it sent it, so tests compare recorded time to first token
with the truth. Counts are the module constants below, so tests can assert them.
"""

from __future__ import annotations

import base64
import json
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.upstream import LocalServer, Served, UpstreamHandler

WORDS = ("Hello", " from", " the", " fake", " upstream", ".")
TEXT = "".join(WORDS)
PROMPT_TOKENS = 1300  # all input
CACHE_READ_TOKENS = 1000
CACHE_WRITE_TOKENS = 200  # Anthropic only
REASONING_TOKENS = 4  # Responses, Gemini
OUTPUT_TOKENS = 6  # visible output (Gemini adds its thoughts to this; others include them)
EMBEDDING_TOKENS = 8
CODE_ASSIST_MODEL = "gemini-2.5-pro"
OLLAMA_PROMPT_EVAL_NS = 313_560_000
OLLAMA_EVAL_NS = 1_577_990_123


@dataclass
class ProviderUpstream(LocalServer):
    first_token_delay: float = 0.0
    chunk_delay: float = 0.0
    served: list[Served] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._listen(_handler_for(self))


def _handler_for(upstream: ProviderUpstream) -> type[BaseHTTPRequestHandler]:
    class Handler(UpstreamHandler):
        def do_POST(self) -> None:
            self.served = self._receive(upstream)
            body = self.served.body
            path, _, query = self.path.partition("?")
            if path.endswith("/responses"):
                self._responses(body)
            elif path.endswith("/embeddings"):
                self._whole(_embeddings(body))
            elif path.endswith("/messages"):
                self._anthropic(body)
            elif path.endswith("/v1internal:generateContent"):
                self._whole(_code_assist(_gemini_chunk(TEXT, final=True)))
            elif path.endswith("/v1internal:streamGenerateContent"):
                self._gemini_stream(sse="alt=sse" in query, wrap=_code_assist)
            elif path.endswith(":generateContent"):
                self._whole(_gemini_chunk(TEXT, final=True))
            elif path.endswith(":streamGenerateContent"):
                self._gemini_stream(sse="alt=sse" in query)
            elif path.endswith(("/api/chat", "/api/generate")):
                self._ollama(body, chat=path.endswith("/api/chat"))
            else:
                self._whole({"error": "not found"}, status=404)

        # -- writing ---------------------------------------------------------------------

        def _whole(self, obj: Any, status: int = 200) -> None:
            self._send_whole(status, "application/json", json.dumps(obj).encode())

        def _start_stream(self, content_type: str, gzip: bool = False) -> None:
            self._start_chunked(200, content_type, "gzip" if gzip else None)

        def _event(self, name: str | None, obj: dict[str, Any], eol: bytes = b"\n") -> None:
            head = b"event: %s%s" % (name.encode(), eol) if name else b""
            self._chunk(head + b"data: " + json.dumps(obj).encode() + eol + eol)

        def _content(self, i: int) -> None:
            """Waits as a model would before the i-th piece of generated content."""
            time.sleep(upstream.first_token_delay if i == 0 else upstream.chunk_delay)

        # -- the APIs --------------------------------------------------------------------

        def _responses(self, body: dict[str, Any]) -> None:
            model = "gpt-4o-mini-2024-07-18"
            if not body.get("stream"):
                self._whole(_response_object(model, "completed", TEXT))
                return
            self._start_stream("text/event-stream; charset=utf-8")
            seq = iter(range(1000))

            def event(kind: str, **fields: Any) -> None:
                self._event(kind, {"type": kind, "sequence_number": next(seq), **fields})

            event("response.created", response=_response_object(model, "in_progress", None))
            event("response.in_progress", response=_response_object(model, "in_progress", None))
            event("response.output_item.added", output_index=0,
                  item={"id": "msg_1", "type": "message", "status": "in_progress", "content": [], "role": "assistant"})
            event("response.content_part.added", item_id="msg_1", output_index=0, content_index=0, part={"type": "output_text", "annotations": [], "text": ""})
            for i, word in enumerate(WORDS):
                self._content(i)
                event("response.output_text.delta", item_id="msg_1", output_index=0, content_index=0, delta=word, logprobs=[])
                self.served.content_sent()
            event("response.output_text.done", item_id="msg_1", output_index=0, content_index=0, text=TEXT, logprobs=[])
            event("response.completed", response=_response_object(model, "completed", TEXT))
            self._end_chunked()  # no [DONE]: the terminal event ends a Responses stream

        def _anthropic(self, body: dict[str, Any]) -> None:
            model = "claude-3-5-sonnet-20240620"
            if not body.get("stream"):
                self._whole(_anthropic_message(model, TEXT, OUTPUT_TOKENS, "end_turn"))
                return
            self._start_stream("text/event-stream; charset=utf-8")
            start = _anthropic_message(model, "", 1, None)
            self._event("message_start", {"type": "message_start", "message": start})
            self._event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
            self._event("ping", {"type": "ping"})
            for i, word in enumerate(WORDS):
                self._content(i)
                self._event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word}})
                self.served.content_sent()
            self._event("content_block_stop", {"type": "content_block_stop", "index": 0})
            self._event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                          "usage": {"output_tokens": OUTPUT_TOKENS}})
            self._event("message_stop", {"type": "message_stop"})
            self._end_chunked()

        def _gemini_stream(self, sse: bool, wrap: Callable[[dict[str, Any]], dict[str, Any]] = lambda c: c) -> None:
            gzip = not sse and "gzip" in self.headers.get("accept-encoding", "")
            self._start_stream("text/event-stream" if sse else "application/json; charset=UTF-8", gzip=gzip)
            last = len(WORDS) - 1
            for i, word in enumerate(WORDS):
                self._content(i)
                chunk = wrap(_gemini_chunk(word, final=i == last))
                if sse:
                    self._chunk(b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n")
                else:  # one array, written element by element, as Gemini lays it out
                    text = json.dumps(chunk, indent=2).encode()
                    self._chunk((b"[" if i == 0 else b"\n,\r\n") + text + (b"\n]" if i == last else b""))
                self.served.content_sent()
            self._end_chunked()

        def _ollama(self, body: dict[str, Any], chat: bool) -> None:
            model = body.get("model", "llama3")
            if body.get("stream") is False:
                self._whole(_ollama_line(model, TEXT, chat, done=True))
                return
            self._start_stream("application/x-ndjson")
            for i, word in enumerate(WORDS):
                self._content(i)
                self._chunk(json.dumps(_ollama_line(model, word, chat, done=False)).encode() + b"\n")
                self.served.content_sent()
            self._chunk(json.dumps(_ollama_line(model, "", chat, done=True)).encode() + b"\n")
            self._end_chunked()

    return Handler


def _response_object(model: str, status: str, text: str | None) -> dict[str, Any]:
    done = status == "completed"
    output = [{"id": "msg_1", "type": "message", "status": "completed", "role": "assistant",
               "content": [{"type": "output_text", "annotations": [], "text": text}]}] if done else []
    usage = {"input_tokens": PROMPT_TOKENS, "input_tokens_details": {"cached_tokens": CACHE_READ_TOKENS},
             "output_tokens": OUTPUT_TOKENS, "output_tokens_details": {"reasoning_tokens": REASONING_TOKENS},
             "total_tokens": PROMPT_TOKENS + OUTPUT_TOKENS}
    return {"id": "resp_1", "object": "response", "created_at": 1, "status": status, "model": model,
            "output": output, "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
            "usage": usage if done else None, "error": None, "incomplete_details": None}


def _embeddings(body: dict[str, Any]) -> dict[str, Any]:
    vector = [0.25, -0.5, 0.125]
    if body.get("encoding_format") == "base64":  # what the openai SDK asks for by default
        embedding: Any = base64.b64encode(struct.pack("<3f", *vector)).decode()
    else:
        embedding = vector
    return {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": embedding}],
            "model": "text-embedding-ada-002",
            "usage": {"prompt_tokens": EMBEDDING_TOKENS, "total_tokens": EMBEDDING_TOKENS}}


def _anthropic_message(model: str, text: str, output_tokens: int, stop: str | None) -> dict[str, Any]:
    # Anthropic's input_tokens leaves the cache out: the proxy adds the cache counts back.
    usage = {"input_tokens": PROMPT_TOKENS - CACHE_READ_TOKENS - CACHE_WRITE_TOKENS,
             "cache_creation_input_tokens": CACHE_WRITE_TOKENS, "cache_read_input_tokens": CACHE_READ_TOKENS,
             "output_tokens": output_tokens}
    content = [{"type": "text", "text": text}] if text else []
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": stop, "stop_sequence": None, "usage": usage}


def _gemini_chunk(text: str, final: bool) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
    usage = {"promptTokenCount": PROMPT_TOKENS, "cachedContentTokenCount": CACHE_READ_TOKENS,
             "thoughtsTokenCount": REASONING_TOKENS}
    if final:
        candidate["finishReason"] = "STOP"
        usage["candidatesTokenCount"] = OUTPUT_TOKENS
    usage["totalTokenCount"] = PROMPT_TOKENS + REASONING_TOKENS + usage.get("candidatesTokenCount", 0)
    return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": "gemini-2.5-flash", "responseId": "r1"}


def _code_assist(response: dict[str, Any]) -> dict[str, Any]:
    """Gemini Code Assist's envelope around one answer (the model is Code Assist's own choice)."""
    return {"response": {**response, "modelVersion": CODE_ASSIST_MODEL}, "traceId": "5e1f0c2a9b7d4e36"}


def _ollama_line(model: str, text: str, chat: bool, done: bool) -> dict[str, Any]:
    line: dict[str, Any] = {"model": model, "created_at": "2026-01-01T00:00:00Z"}
    if chat:
        line["message"] = {"role": "assistant", "content": text}
    else:
        line["response"] = text
    line["done"] = done
    if done:
        line.update(done_reason="stop", total_duration=2_000_000_000, load_duration=1_000_000,
                    prompt_eval_count=17, prompt_eval_duration=OLLAMA_PROMPT_EVAL_NS,
                    eval_count=OUTPUT_TOKENS, eval_duration=OLLAMA_EVAL_NS)
    return line
