"""One call's timings and facts, turned into a `completion_requests` row. Pure: no mitmproxy.

All durations come from one monotonic clock (`time.perf_counter`) and are clamped at >= 0; the
wall clock is used only for the row's `timestamp`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from storage.timestamps import utc_text

from . import bounds, estimate
from .agents import Identity
from .formats import ResponseFacts, WireFormat
from .formats.finish import finish_category
from .prices import PriceBook
from .pricing import price_call
from .quota import Headroom
from .redact import redact, redact_path
from .wire import MAX_EVENT_BYTES

# Well-known API hosts name the provider; any other host (vLLM, llama.cpp, LM Studio, a gateway,
# a test's fake) is named after the API it speaks, `<family>-compatible` (`openai-compatible`,
# `anthropic-compatible`, `gemini-compatible`, ...), except Ollama's default port.
_PROVIDER_BY_HOST = {
    "api.openai.com": "openai",
    "api.anthropic.com": "anthropic",
    "generativelanguage.googleapis.com": "gemini",
    "cloudcode-pa.googleapis.com": "gemini-code-assist",  # Gemini CLI signed in with a Google account
    "aiplatform.googleapis.com": "vertex-ai",
    "openrouter.ai": "openrouter",
    "api.groq.com": "groq",
    "api.mistral.ai": "mistral",
    "api.deepseek.com": "deepseek",
    "api.together.xyz": "together",
    "api.fireworks.ai": "fireworks",
    "api.x.ai": "xai",
    "api.perplexity.ai": "perplexity",
    "api.cerebras.ai": "cerebras",
}
_PROVIDER_BY_HOST_SUFFIX = (
    (".openai.azure.com", "azure-openai"),
    (".cognitiveservices.azure.com", "azure-openai"),
    (".services.ai.azure.com", "azure-openai"),
    ("-aiplatform.googleapis.com", "vertex-ai"),
)
OLLAMA_PORT = 11434
COMPATIBLE = "-compatible"  # the ending of every name given after an API rather than a host


def known_provider(host: str, port: int, extra_hosts: dict[str, str] | None = None) -> str | None:
    """The provider a host is known as (named in `llm_metrics_hosts`, or a well-known API); None
    for any other host."""
    host = host.lower()
    if extra_hosts and extra_hosts.get(host):
        return extra_hosts[host]
    if host in _PROVIDER_BY_HOST:
        return _PROVIDER_BY_HOST[host]
    if host.startswith("bedrock-runtime.") and host.endswith(".amazonaws.com"):
        return "aws-bedrock"
    for suffix, name in _PROVIDER_BY_HOST_SUFFIX:
        if host.endswith(suffix):
            return name
    if port == OLLAMA_PORT:
        return "ollama"
    return None


def provider_for(host: str, port: int, extra_hosts: dict[str, str] | None = None, family: str = "openai") -> str:
    """The provider a row names: the host's, else the API `family` the call speaks, as
    `<family>-compatible` (an Anthropic Messages call to a local server is `anthropic-compatible`)."""
    return known_provider(host, port, extra_hosts) or family + COMPATIBLE


def origin_from_user_agent(user_agent: str | None) -> str | None:
    """The client's product: `OpenAI/Python 1.54.0` -> `OpenAI/Python`, `curl/8.5.0` -> `curl`."""
    words = user_agent.split(None, 1) if user_agent else []
    if not words:  # absent, empty or only whitespace
        return None
    first = words[0]
    name, sep, version = first.partition("/")
    if sep and version[:1].isdigit():
        return name[:100]
    return first[:100]


def _ms(start: float, end: float | None) -> int | None:
    if end is None:
        return None
    return bounds.measured(max(0, round((end - start) * 1000)))


@dataclass(slots=True)
class Call:
    """A recognised LLM call in flight: what the request said, and when things happened."""

    fmt: WireFormat
    started_at: float  # wall clock, epoch seconds
    t_start: float  # perf_counter at request start
    host: str
    port: int
    path: str
    provider: str
    origin: str | None
    request: dict[str, Any]
    t_headers: float | None = None
    status_code: int | None = None  # once the response headers arrived
    content_type: str | None = None  # of the response, once its headers arrived
    content_encoding: str | None = None
    t_end_marker: float | None = None  # when a stream's own end marker went through
    t_first_token: float | None = None
    t_last_token: float | None = None
    streamed: bool = False
    meter: Any = None  # a StreamMeter while streaming
    buffered: bytearray | None = None  # a body passed on as a stream but metered whole at its end
    metering_failed: bool = False
    notes: list[str] = field(default_factory=list)  # what was not read or stored, and why (metering_note)
    identity: Identity = Identity()  # who made it (addon.agents)
    prices: PriceBook | None = None  # the user's prices file (llm_metrics_prices), first
    headroom: Headroom = Headroom()  # what its response said is left (addon.quota)

    def stamp_token(self, now: float) -> None:
        if self.t_first_token is None:
            self.t_first_token = now
        self.t_last_token = now


def build_row(
    call: Call,
    facts: ResponseFacts,
    *,
    status_code: int | None,
    t_end: float,
    error_type: str | None = None,
    error_message: str | None = None,
) -> dict[str, Any]:
    """The row for `completion_requests`. Failure comes from the transport error if any, then
    an error the body or stream carried (more specific than its status), then the HTTP status.
    Every free text of the row (path, origin, error type and message) is stored without secrets;
    the model is kept as named (stored rows are repriced by it), and is redacted where printed.
    Every value is brought within what it may be (`addon.bounds`) here, the one place: text
    valid and cut to its column's limit, numbers no call can have left out with a note."""
    if error_type is None and facts.error_type is not None:
        error_type, error_message = facts.error_type, facts.error_message
    if error_type is None and status_code is not None and status_code >= 400:
        error_type = f"http_{status_code}"
    notes = call.notes + _unread(facts)
    before = len(notes)
    counts = _counts(facts, notes)
    implausible = len(notes) > before  # a reported count was left out
    streamed_times = call.streamed
    ttft = _ms(call.t_start, call.t_first_token) if streamed_times else None
    ttlt = _ms(call.t_start, call.t_last_token) if streamed_times else None
    model = facts.model or call.request.get("request_model")
    usage_reported = not implausible and _usage_reported(call, counts)
    # A failed call's counts stay unknown: what a cut stream carried is not what it would have used.
    estimated = error_type is None and not (implausible or usage_reported) and _estimate(call, facts, counts)
    row = {
        "timestamp": utc_text(call.started_at),
        "success": error_type is None,
        "status_code": bounds.status_or_none(status_code, notes),
        "response_time_ms": _ms(call.t_start, t_end),
        "model": model,
        "request_model": call.request.get("request_model"),
        "provider": call.provider,
        "host": call.host,
        "path": redact_path(call.path),
        "origin": call.origin and redact(call.origin),  # the client's own text (a tag, a User-Agent)
        "is_streaming": bool(call.request.get("is_streaming") or call.streamed),
        "max_tokens": bounds.count_or_none(call.request.get("max_tokens"), "max_tokens", notes),
        "temperature": bounds.setting_or_none(call.request.get("temperature"), "temperature", notes),
        "top_p": bounds.setting_or_none(call.request.get("top_p"), "top_p", notes),
        "message_count": bounds.count_or_none(call.request.get("message_count"), "message_count", notes),
        **counts,
        "finish_reason": facts.finish_reason,
        "finish_category": finish_category(
            facts.finish_reason, failed=error_type is not None, tool_calls=facts.tool_calls,
            override=facts.finish_category,
        ),
        "operation": call.fmt.operation,
        "usage_source": _usage_source(implausible, usage_reported, estimated),
        **_cost(call, counts, model, facts, usage_reported or estimated),
        "prompt_eval_duration_ms": bounds.server_ms_or_none(facts.prompt_eval_duration_ns,
                                                            "prompt_eval_duration", notes),
        "eval_duration_ms": bounds.server_ms_or_none(facts.eval_duration_ns, "eval_duration", notes),
        "time_to_first_byte_ms": _ms(call.t_start, call.t_headers),
        "time_to_first_token_ms": ttft,
        "time_to_last_token_ms": ttlt,
        # A rate is a measurement: never made of estimated counts.
        "tokens_per_second": _tokens_per_second(call, counts) if streamed_times and not estimated else None,
        "chunk_count": bounds.measured(facts.events) if call.streamed else None,
        "error_type": error_type and redact(error_type),
        "error_message": error_message and redact(error_message),
        "metering_note": "; ".join(notes) or None,
        **call.identity._asdict(),
        **call.headroom._asdict(),
    }
    row["retry_count"] = bounds.count_or_none(row["retry_count"], "retry_count", notes)
    row["metering_note"] = "; ".join(notes) or None
    for column, limit in bounds.TEXT_LIMITS.items():
        row[column] = bounds.clean_text(row[column], limit)
    return row


def _unread(facts: ResponseFacts) -> list[str]:
    """What of a streamed response was not read (a bound of addon/wire, addon/metering)."""
    notes = []
    if facts.read_limit is not None:
        notes.append(f"response read up to {facts.read_limit >> 20} MiB once decompressed: the rest was not metered")
    if facts.oversized_events:
        notes.append(f"{facts.oversized_events} stream event(s) longer than {MAX_EVENT_BYTES >> 20} MiB not read")
    return notes


# Token counts of a row, as the response reported them.
_COUNTS = ("prompt_tokens", "completion_tokens", "cached_tokens", "cache_creation_tokens", "reasoning_tokens")


def _counts(facts: ResponseFacts, notes: list[str]) -> dict[str, int | None]:
    """The reported token counts that are plausible (`addon.bounds.MAX_COUNT`), and the total:
    as reported, else the sum of the two it is made of."""
    counts = {name: bounds.count_or_none(getattr(facts, name), name, notes) for name in _COUNTS}
    total = bounds.count_or_none(facts.total_tokens, "total_tokens", notes)
    if total is None and facts.total_tokens is None:
        prompt, completion = counts["prompt_tokens"], counts["completion_tokens"]
        if prompt is not None and completion is not None:
            total = prompt + completion
    counts["total_tokens"] = total
    return counts


def _usage_reported(call: Call, counts: dict[str, int | None]) -> bool:
    """The provider reported the call's usage: its input, and its output unless the operation
    has none (embeddings). Counts from a stream cut before its final usage are not a report."""
    if counts["prompt_tokens"] is None:
        return False
    return counts["completion_tokens"] is not None or call.fmt.operation == "embeddings"


# Streams that may lack their usage by the client's choice (stream_options.include_usage).
_ESTIMATED_OPERATIONS = ("chat", "text_completion")


def _estimate(call: Call, facts: ResponseFacts, counts: dict[str, int | None]) -> bool:
    """A successful stream of generated content that reported no count at all gets estimated counts
    (`addon.estimate`): its output always, its input where the request was text alone."""
    if not call.streamed or call.fmt.operation not in _ESTIMATED_OPERATIONS or any(v is not None for v in counts.values()):
        return False
    output = estimate.output_tokens(facts.content_events, facts.output_chars)
    if output is None:
        return False
    prompt = call.request.get("prompt_tokens_estimate")
    counts["completion_tokens"], counts["prompt_tokens"] = output, prompt
    counts["total_tokens"] = None if prompt is None else prompt + output
    return True


def _usage_source(implausible: bool, reported: bool, estimated: bool) -> str:
    if implausible:
        return "implausible"
    return "reported" if reported else "estimated" if estimated else "missing"


def _cost(call: Call, counts: dict[str, int | None], model: str | None, facts: ResponseFacts,
          usage_known: bool) -> dict[str, Any]:
    """The call's cost and where its price came from, of reported or estimated counts."""
    unknown: dict[str, Any] = {"cost_usd": None, "price_source": None}
    if not usage_known:
        return unknown
    audio_in, audio_out = facts.audio_input_tokens, facts.audio_output_tokens
    if call.fmt.operation == "realtime" and (audio_in is None or audio_out is None):
        return unknown  # its audio part, priced several times text, is not known: nor is its price
    if (audio_in or 0) > (counts["prompt_tokens"] or 0) or (audio_out or 0) > (counts["completion_tokens"] or 0):
        return unknown  # parts larger than their whole: counts that do not add up
    cost, source = price_call(
        provider=call.provider,
        host=call.host,
        model=model,
        prompt_tokens=counts["prompt_tokens"],
        completion_tokens=counts["completion_tokens"],
        cached_tokens=counts["cached_tokens"],
        cache_creation_tokens=counts["cache_creation_tokens"],
        audio_input_tokens=audio_in,
        cached_audio_tokens=facts.cached_audio_tokens,
        audio_output_tokens=audio_out,
        at=datetime.fromtimestamp(call.started_at, UTC),
        book=call.prices,
    )
    if cost is None or cost < 0:  # negative: counts that do not add up
        return unknown
    return {"cost_usd": cost, "price_source": source}


def _tokens_per_second(call: Call, counts: dict[str, int | None]) -> float | None:
    """The decode rate, as AIPerf and vLLM define it: the N - 1 output tokens after the first over
    the time from first to last token, (N - 1) / (t_last - t_first). The first token's own time is
    in the time to first token, never here; prompt tokens never count. None below two tokens."""
    completion = counts["completion_tokens"]
    if completion is None or completion < 2 or call.t_first_token is None or call.t_last_token is None:
        return None
    seconds = call.t_last_token - call.t_first_token
    if seconds <= 0:
        return None
    return bounds.finite_or_none(round((completion - 1) / seconds, 3))
