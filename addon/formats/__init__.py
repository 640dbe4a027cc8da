"""The registry of wire formats: a new API is a new module plus one line in `FORMATS`."""

from __future__ import annotations

from typing import Any

from .anthropic_messages import AnthropicMessages
from .base import ResponseFacts, WireFormat
from .bedrock import BedrockConverse, BedrockInvokeAnthropic
from .gemini import STREAM as GEMINI_STREAM, GeminiGenerateContent
from .gemini_code_assist import GeminiCodeAssist
from .ollama import OllamaChat, OllamaGenerate
from .openai_chat import OpenAIChat, OpenAICompletions
from .openai_embeddings import OpenAIEmbeddings
from .openai_responses import OpenAIResponses

# Order matters only where two formats share a path suffix: most specific first
# (`/chat/completions` before `/completions`, Code Assist's `/v1internal:…` before Gemini's `…:…`,
# which a body too large to read would match by path alone). For hosts matched on body shape alone, the first
# format whose shape key the body has wins.
FORMATS: tuple[WireFormat, ...] = (
    OpenAIChat(),
    OpenAICompletions(),
    OpenAIResponses(),
    OpenAIEmbeddings(),
    AnthropicMessages(),
    GeminiCodeAssist(),
    GeminiGenerateContent(),
    OllamaChat(),
    OllamaGenerate(),
    BedrockConverse(),
    BedrockInvokeAnthropic(),
)

# Requests whose path ends with one of these are parsed to see whether they are LLM calls;
# every other request passes through without its body being looked at.
CANDIDATE_SUFFIXES: tuple[str, ...] = tuple(dict.fromkeys(
    [fmt.path_suffix for fmt in FORMATS] + [GEMINI_STREAM, "/converse", "/invoke"]
))

# The only requests whose streamed response may be a plain JSON array (`array_streams`): a
# streamed response is asked for in the path there, not the body.
ARRAY_STREAM_SUFFIXES: tuple[str, ...] = (GEMINI_STREAM,)


def recognise(path: str, body: dict[str, Any]) -> WireFormat | None:
    """The format of a request to `path` (query stripped) with JSON `body`, if any."""
    for fmt in FORMATS:
        if fmt.matches(path, body):
            return fmt
    return None


# A body that has every format's shape key: what an unread body could be.
_ANY_SHAPE: dict[str, Any] = {key: None for fmt in FORMATS for key in (fmt.shape_key, "model")}


def recognise_by_path(path: str) -> WireFormat | None:
    """For a body too large to read: the first format whose path this is, whatever its body."""
    return recognise(path, _ANY_SHAPE)


# Path endings that only LLM APIs use: a request there whose body is not a JSON object (the
# client's own mistake, which the upstream answers with an error) is still a call of that API.
# `/messages`, `/responses`, `/api/chat` and `/api/generate` are common in other APIs too: there
# the host must be a known LLM API as well. `/invoke` carries bodies of several formats (the body
# says which): never by path.
_LLM_ONLY_SUFFIXES = ("/chat/completions", "/completions", "/embeddings", GEMINI_STREAM, ":generateContent",
                      "/converse", "/converse-stream")
_BODY_NAMES_FORMAT = ("/invoke", "/invoke-with-response-stream")


def recognise_unreadable(path: str, *, llm_host: bool) -> WireFormat | None:
    """For a body that is not a JSON object: the format of `path` where it tells one without a
    body (`llm_host`: the host is a known LLM API, or one named in llm_metrics_hosts)."""
    if path.endswith(_BODY_NAMES_FORMAT) or not (llm_host or path.endswith(_LLM_ONLY_SUFFIXES)):
        return None
    return recognise_by_path(path)


def unknown_request_fields(fmt: WireFormat, path: str) -> dict[str, Any]:
    """The request columns of an unread body: only what the path says (Gemini's and Bedrock's model)."""
    fields = fmt.request_fields(path, {})
    return {"request_model": fields.get("request_model"), "is_streaming": None}


def recognise_by_shape(body: dict[str, Any]) -> WireFormat | None:
    """For hosts the user named as LLM APIs: match on body shape alone, whatever the path."""
    for fmt in FORMATS:
        if fmt.shape_key in body:
            return fmt
    return None


__all__ = [
    "FORMATS", "CANDIDATE_SUFFIXES", "ARRAY_STREAM_SUFFIXES", "ResponseFacts", "WireFormat", "recognise",
    "recognise_by_path", "recognise_by_shape", "recognise_unreadable", "unknown_request_fields",
]
