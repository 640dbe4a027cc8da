"""Secrets out of every text the project stores or prints: `redact(text)`.

Every free text that reaches the database, a log line, a report or an export passes through
`redact` (paths through `redact_path`): error messages (the provider's, mitmproxy's), the stored
request path, the per-call log line, paths named in the exit summary, sample messages and path
groups in reports. It replaces with `***`:

- API keys by their shape: OpenAI and Anthropic `sk-…` (also OpenAI's masked echo
  `sk-abc***...wxyz`, whose tail is part of the key), Google `AIza…` and OAuth `ya29.…`, AWS
  access key ids `AKIA…`/`ASIA…`, GitHub `ghp_…`/`github_pat_…`, Slack `xox…-`, Hugging Face
  `hf_…`, Groq `gsk_…`, xAI `xai-…`, Perplexity `pplx-…`, Replicate `r8_…`, NVIDIA `nvapi-…`,
  Stripe `sk_live_…`, JSON web tokens `eyJ….….…`;
- credentials after an auth scheme: `Bearer …`, `Basic …`, `Token …`, `Digest …`;
- the password of a URL's user info (`postgresql://user:***@host`);
- the value after a marker: a word ending in key, token, secret, password (passwd, pwd,
  passphrase), authorization, auth, credential(s), signature or cookie, followed by `:` or `=`
  (`api_key=…`, `"x-api-key": "…"`, `aws_secret_access_key = …`, `X-Amz-Signature=…`), and
  after "password is"/"secret was" in prose.

It cannot know a secret of no known shape written without a marker (an Azure key is 32 bare hex
digits): such text is kept out by what is stored at all (no headers, no query strings, no bodies;
see `addon.formats.errors` for what of a provider's error message is kept).
"""

from __future__ import annotations

import logging
import re

MASK = "***"

# Keys by their shape (case-sensitive: the prefixes are the providers' own).
_SHAPES = (
    r"\b(?:"
    r"sk-[\w\-*.\u2026]{4,}"  # OpenAI (sk-, sk-proj-, sk-svcacct-), Anthropic sk-ant-, OpenRouter sk-or-; masked echoes
    r"|AIza[\w\-]{10,}"  # Google API keys
    r"|ya29\.[\w\-.]{10,}"  # Google OAuth access tokens
    r"|A(?:KIA|SIA|BIA|CCA|GPA|IDA|IPA|NPA|NVA|PKA|ROA)[A-Z0-9]{12,}"  # AWS key ids
    r"|gh[pousr]_[A-Za-z0-9]{16,}|github_pat_\w{16,}"  # GitHub
    r"|(?:xox[abposr]|xapp)-[\w\-]{8,}"  # Slack
    r"|(?:hf|gsk|r8|[sr]k_live|[sr]k_test)_[A-Za-z0-9]{16,}"  # Hugging Face, Groq, Replicate, Stripe
    r"|(?:xai|pplx|nvapi|csk)-[\w\-]{16,}"  # xAI, Perplexity, NVIDIA, Cerebras
    r"|eyJ[\w\-]{6,}(?:\.[\w\-]*){0,2}"  # JSON web tokens (base64url of '{"')
    r")"
)
_SCHEME = r"(?i:bearer|basic|token|digest)\s+[\w\-.~+/=*\u2026]{4,}"  # Authorization: <scheme> <credentials>
# The password of user:password@ in a URL; digits alone are a port (mitmproxy's mode specs end in
# "@listen-address": reverse:http://127.0.0.1:9@0.0.0.0:8081).
_USERINFO = r"(?P<user>://[^\s/:@]*:)(?!\d+@)[^\s@/]+(?=@)"
_WORDS = "key|token|secret|password|passwd|pwd|passphrase|authorization|auth|credentials?|signature|cookie"
# A marker word, then `:` or `=` (or "is"/"was" after a password or secret word), then its value:
# a quoted string, or an auth scheme and its credentials, or everything up to a separator.
_MARKER = (
    rf"(?P<marker>(?i:{_WORDS})\b[\"']?)"
    r"(?P<sep>\s*[:=]\s*|\s+(?i:is|was)\s+)"
    r"(?P<value>\"[^\"\n]*\"?|'[^'\n]*'?|(?i:(?:bearer|basic|token|digest)\s+)?[^\s\"'&,;<>()\[\]{}]+)"
)
_PATTERN = re.compile("|".join([_MARKER, _SCHEME, _USERINFO, _SHAPES]))
_PROSE_MARKER = re.compile(r"(?i:password|passwd|pwd|passphrase|secret)[\"']?$")

# What `_PATTERN` needs to match anything, found cheaply: most texts (a path, a model) have none,
# and `redact` then costs two short searches instead of the whole pattern's.
_SHAPE_CUE = re.compile(_SHAPES)
_WORD_CUE = re.compile(r"(?=[ktspacdb:])(?:key|token|secret|passw|pwd|passphrase|auth|credential|signature"
                       r"|cookie|bearer|basic|digest|://)")


def redact(text: str) -> str:
    """`text` with every secret it shows replaced by `***` (the module's docstring lists them)."""
    if not (_WORD_CUE.search(text.lower()) or _SHAPE_CUE.search(text)):
        return text
    return _PATTERN.sub(_replace, text)


def redact_path(path: str) -> str:
    """A request path with secrets in its segments replaced (`/v1/keys/***/chat/completions`):
    each segment on its own, so a marker's value never swallows the rest of the path."""
    if not (_WORD_CUE.search(path.lower()) or _SHAPE_CUE.search(path)):
        return path
    return "/".join(redact(segment) for segment in path.split("/"))


def _replace(match: re.Match[str]) -> str:
    marker = match.group("marker")
    if marker is None:
        user = match.group("user")
        return f"{user}{MASK}" if user else MASK
    sep, value = match.group("sep"), match.group("value")
    if ":" not in sep and "=" not in sep and not _PROSE_MARKER.search(marker):
        # "the signature is invalid": only a password or a secret is told in prose.
        return f"{marker}{sep}{redact(value)}"
    quote = value[0] if value[:1] in ("'", '"') else ""
    return f"{marker}{sep}{quote}{MASK}{quote}"


class RedactWarnings(logging.Filter):
    """A warning or an error carries others' text (an exception, a driver's or a provider's
    message): its message and traceback are redacted. Info lines (per call, the exit summary)
    are made from redacted values already, and cost nothing here."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
                record.exc_info, record.exc_text = None, None
            record.msg, record.args = redact(text), ()
        return True


REDACT_WARNINGS = RedactWarnings()
