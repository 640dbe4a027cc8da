"""Who made a call: the agent or client, its version, its session, subagent and retry, from what the
request already says. Pure: no mitmproxy.

The hooks keep the values of `AGENT_HEADERS` only (none of them can carry a credential) and the kind
of credential sent (`auth_mode`, never its value); `identify` runs in the metering with those and the
request's parsed JSON body. `RECOGNISERS` is the table to extend: one entry per agent, tried in
order, the first that matches names the agent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

# Request headers whose values cross to the metering (lower case). Never a credential: no
# authorization, x-api-key, api-key, x-goog-api-key, cookie.
AGENT_HEADERS = frozenset({
    b"user-agent", b"x-app", b"originator", b"x-title",
    b"x-claude-code-session-id", b"x-claude-code-agent-id", b"x-claude-code-parent-agent-id",
    b"x-codex-turn-metadata", b"x-openai-subagent", b"x-codex-parent-thread-id", b"session_id",
    b"x-stainless-lang", b"x-stainless-package-version", b"x-stainless-retry-count", b"x-goog-api-client",
})

# Longest kept per value: a header is the client's to fill, the row's columns are bounded anyway.
_MAX_VALUE = 2000

API_KEY = "api_key"
OAUTH = "oauth"
NO_AUTH = "none"


class Identity(NamedTuple):
    agent: str | None = None  # normalised: claude-code, codex, gemini-cli, openai-python, curl, ...
    agent_version: str | None = None
    session_id: str | None = None  # the agent's own session id, as it sent it
    subagent_id: str | None = None
    parent_id: str | None = None
    request_kind: str | None = None  # as the agent says: Codex's `prewarm`, `turn`, ...
    retry_count: int | None = None  # the SDK's own retry counter: 0 for a first attempt
    auth_mode: str | None = None  # api_key, oauth or none; never the credential


def auth_mode(fields: tuple[tuple[bytes, bytes], ...], query_has_key: bool = False) -> str:
    """The kind of credential a request carries, from its headers (name, value) as on the wire:
    a subscription login's OAuth token, an API key, or none. Only the kind leaves this function."""
    bearer = api_key = oauth_marker = False
    for name, value in fields:
        name = name.lower()
        if name in (b"x-api-key", b"api-key", b"x-goog-api-key"):
            api_key = True
        elif name == b"authorization":
            token = value.split(None, 1)[-1].strip() if value.strip() else b""
            if token.startswith((b"eyJ", b"ya29.")):  # a JWT (ChatGPT login), a Google OAuth access token
                oauth_marker = True
            bearer = bearer or bool(token)
        elif name == b"chatgpt-account-id":
            oauth_marker = True
        elif name == b"anthropic-beta" and b"oauth-" in value.lower():
            oauth_marker = True  # Claude Code signed in with a subscription
    if bearer and oauth_marker:
        return OAUTH
    if api_key or bearer or query_has_key:
        return API_KEY
    return NO_AUTH


# -- recognisers ----------------------------------------------------------------------------------

Headers = Mapping[str, str]
Body = Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class Recogniser:
    """An agent is recognised by its User-Agent's product name (case-insensitive, before the `/`),
    by `x-title` (OpenRouter's attribution header, which several agents set) or by `originator`;
    `ids` reads its session, subagent, parent and request kind."""

    agent: str
    products: tuple[str, ...] = ()
    product_prefix: str | None = None
    titles: tuple[str, ...] = ()
    originators: tuple[str, ...] = ()
    ids: Callable[[Headers, Body], dict[str, str | None]] | None = None


def _claude_code_ids(headers: Headers, body: Body) -> dict[str, str | None]:
    session = headers.get("x-claude-code-session-id")
    if not session and body:
        session = _session_from_user_id(_dig(body, "metadata", "user_id"))
    return {"session_id": session, "subagent_id": headers.get("x-claude-code-agent-id"),
            "parent_id": headers.get("x-claude-code-parent-agent-id")}


_LEGACY_USER_ID = re.compile(r"_session_([0-9a-fA-F-]{8,64})$")


def _session_from_user_id(user_id: Any) -> str | None:
    """Claude Code's `metadata.user_id`: `user_<hash>_account_<uuid>_session_<uuid>`, or a JSON
    string with `session_id`. Only the session part is kept: the rest identifies the person."""
    if not isinstance(user_id, str):
        return None
    if user_id.startswith("{"):
        try:
            value = json.loads(user_id).get("session_id")
        except (ValueError, AttributeError):
            return None
        return value if isinstance(value, str) else None
    match = _LEGACY_USER_ID.search(user_id)
    return match.group(1) if match else None


def _codex_ids(headers: Headers, body: Body) -> dict[str, str | None]:
    meta: dict[str, Any] = {}
    raw = headers.get("x-codex-turn-metadata")
    if raw:
        try:
            loaded = json.loads(raw)
            meta = loaded if isinstance(loaded, dict) else {}
        except ValueError:
            pass
    session = _text(meta.get("session_id")) or _text(meta.get("thread_id")) or headers.get("session_id")
    return {"session_id": session, "subagent_id": headers.get("x-openai-subagent"),
            "parent_id": headers.get("x-codex-parent-thread-id"), "request_kind": _text(meta.get("request_kind"))}


def _gemini_cli_ids(headers: Headers, body: Body) -> dict[str, str | None]:
    # Code Assist requests carry `user_prompt_id`: `<session id>########<prompt number>` in an
    # interactive session; a one-shot run (`gemini -p`, 0.61) sends its session's id alone, the same
    # on every call of the run.
    prompt_id = _text(body.get("user_prompt_id")) if body else None
    return {"session_id": prompt_id.split("########", 1)[0] if prompt_id else None}


RECOGNISERS: tuple[Recogniser, ...] = (
    # Coding agents
    Recogniser("claude-code", products=("claude-cli", "claude-code"), ids=_claude_code_ids),
    Recogniser("codex", product_prefix="codex_", originators=("codex_exec", "codex_cli_rs", "codex_vscode"),
               ids=_codex_ids),
    Recogniser("gemini-cli", product_prefix="geminicli", ids=_gemini_cli_ids),
    Recogniser("opencode", products=("opencode",)),
    Recogniser("qwen-code", products=("qwencode", "qwen-code")),
    Recogniser("aider", products=("aider",), titles=("aider",)),
    Recogniser("cline", products=("cline",), titles=("cline",)),
    Recogniser("roo-code", products=("roo-code", "roocode"), titles=("roo code",)),
    Recogniser("kilo-code", products=("kilo-code", "kilocode"), titles=("kilo code",)),
    Recogniser("openhands", products=("openhands",)),
    Recogniser("swe-agent", products=("swe-agent",)),
    Recogniser("mini-swe-agent", products=("mini-swe-agent",)),
    Recogniser("smolagents", products=("smolagents",)),
    # Tools and frameworks on top of an SDK
    Recogniser("llm", products=("llm",)),
    Recogniser("litellm", products=("litellm",)),
    Recogniser("langchain", product_prefix="langchain"),
    # SDKs
    Recogniser("openai-python", products=("openai/python",)),
    Recogniser("openai-node", products=("openai/js",)),
    Recogniser("anthropic-python", products=("anthropic/python",)),
    Recogniser("anthropic-node", products=("anthropic/js",)),
    Recogniser("google-genai", products=("google-genai-sdk",)),
    # Plain HTTP clients
    Recogniser("curl", products=("curl",)),
    Recogniser("python-httpx", products=("python-httpx",)),
    Recogniser("python-requests", products=("python-requests",)),
)


def identify(headers: Headers, body: Body = None, auth: str | None = None) -> Identity:
    """The caller of one request: `headers` are the kept `AGENT_HEADERS` (lower-case names), `body`
    the request's parsed JSON object when there is one, `auth` what `auth_mode` said."""
    product, version = _product(headers.get("user-agent"))
    found, by_product = _recognise(product, headers)
    agent = found.agent if found is not None else None
    if not by_product:
        version = None  # none, or recognised by a title or originator: the User-Agent's version is another's
    if agent in ("openai-python", "openai-node", "anthropic-python", "anthropic-node") and not version:
        version = _text(headers.get("x-stainless-package-version"))
    ids = found.ids(headers, body) if found is not None and found.ids is not None else {}
    return Identity(
        agent=agent,
        agent_version=_clip(version),
        session_id=_clip(ids.get("session_id")),
        subagent_id=_clip(ids.get("subagent_id")),
        parent_id=_clip(ids.get("parent_id")),
        request_kind=_clip(ids.get("request_kind")),
        retry_count=_retry_count(headers.get("x-stainless-retry-count")),
        auth_mode=auth,
    )


def _recognise(product: str | None, headers: Headers) -> tuple[Recogniser | None, bool]:
    """The first recogniser that matches, and whether it matched by the User-Agent's product."""
    title = (headers.get("x-title") or "").strip().lower()
    originator = (headers.get("originator") or "").strip().lower()
    for recogniser in RECOGNISERS:
        if product and (product in recogniser.products
                        or (recogniser.product_prefix is not None and product.startswith(recogniser.product_prefix))):
            return recogniser, True
        if (title and title in recogniser.titles) or (originator and originator in recogniser.originators):
            return recogniser, False
    return None, False


_VERSION = re.compile(r"v?(\d+(?:\.\d+)*(?:[-.+][0-9A-Za-z.-]+)?)")


def _product(user_agent: str | None) -> tuple[str | None, str | None]:
    """`claude-cli/2.1.3 (external, cli)` -> ("claude-cli", "2.1.3"); the SDKs' `OpenAI/Python 1.54.0`
    -> ("openai/python", "1.54.0"); `GeminiCLI/0.6.1/gemini-2.5-pro (...)` -> ("geminicli", "0.6.1")."""
    words = user_agent.split() if user_agent else []
    if not words:
        return None, None
    first = words[0]
    name, _, rest = first.partition("/")
    lower = name.lower()
    if lower in ("openai", "anthropic") and rest.lower() in ("python", "js"):  # Stainless: product, then version
        version = words[1] if len(words) > 1 else None
        return f"{lower}/{rest.lower()}", _version(version)
    return lower, _version(rest.split("/", 1)[0])


def _version(text: str | None) -> str | None:
    match = _VERSION.fullmatch(text) if text else None
    return match.group(1) if match else None


def _retry_count(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None
    count = int(value.strip())
    return count if count <= 1000 else None


def _dig(body: Mapping[str, Any], *keys: str) -> Any:
    value: Any = body
    for key in keys:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _clip(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value[:_MAX_VALUE] or None
