"""Naming what went wrong at the connection level, from mitmproxy's error message."""

from __future__ import annotations

# (substring of mitmproxy's message, lower-cased) -> error_type, first match wins.
_PATTERNS = (
    ("client disconnected", "client_disconnected"),
    ("connection killed", "connection_killed"),
    ("refused", "connection_refused"),
    ("connect call failed", "connection_refused"),
    ("name or service not known", "dns_error"),
    ("nodename nor servname", "dns_error"),
    ("timed out", "upstream_timeout"),
    ("timeout", "upstream_timeout"),
    ("certificate", "tls_error"),
    ("tls", "tls_error"),
    ("ssl", "tls_error"),
    ("body exceeds", "body_too_large"),
    ("reset", "upstream_disconnected"),
    ("server disconnected", "upstream_disconnected"),
    ("server closed", "upstream_disconnected"),
    ("peer closed", "upstream_disconnected"),
    ("eof", "upstream_disconnected"),
)


def classify_flow_error(message: str, had_response: bool) -> tuple[str, str]:
    """(error_type, error_message) for a flow that ended in mitmproxy's `error` hook."""
    lowered = message.lower()
    error_type = next((kind for needle, kind in _PATTERNS if needle in lowered), "proxy_error")
    if had_response and error_type != "client_disconnected":
        message = f"{message} (after the response had started)"
    return error_type, message[:500]
