"""OpenAI Embeddings (`POST /v1/embeddings`), and every server that copies it (Azure, vLLM,
Ollama's /v1, Mistral, Together). Never streamed; usage has only `prompt_tokens` and
`total_tokens`: an embedding has no output tokens, so `completion_tokens` stays unknown."""

from __future__ import annotations

from typing import Any

from .azure import requested_model
from .base import ResponseFacts, as_int, request_fields
from .errors import read_error


class OpenAIEmbeddings:
    operation = "embeddings"
    family = "openai"
    path_suffix = "/embeddings"
    shape_key = "input"
    array_streams = False

    def matches(self, path: str, body: dict[str, Any]) -> bool:
        return path.endswith(self.path_suffix) and self.shape_key in body

    def request_fields(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return request_fields(requested_model(path, body), False)  # no sampling settings

    def on_event(self, facts: ResponseFacts, event: str | None, obj: Any) -> bool:
        self.on_body(facts, obj)  # no API streams embeddings; read one anyway
        return False

    def on_body(self, facts: ResponseFacts, obj: Any) -> None:
        if not isinstance(obj, dict):
            return
        read_error(facts, obj)
        facts.set_model(obj.get("model"))
        usage = obj.get("usage")
        if isinstance(usage, dict):
            facts.prompt_tokens = as_int(usage.get("prompt_tokens"))
            facts.total_tokens = as_int(usage.get("total_tokens"))
