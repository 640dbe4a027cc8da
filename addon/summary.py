"""The one-line summary printed per captured call, so a user sees the proxy working."""

from __future__ import annotations

from typing import Any

from .redact import redact


def _ms(value: int | None) -> str:
    return "-" if value is None else f"{value}ms"


def _n(value: int | None) -> str:
    return "?" if value is None else str(value)


def format_call_line(row: dict[str, Any]) -> str:
    """The row's own error type and path are stored redacted already (`addon.record.build_row`)."""
    status = row["status_code"] if row["status_code"] is not None else "---"
    parts = [
        f"llm {row['provider']} {redact(row['model'] or '?')} {status}",  # the model is the provider's text
        f"latency {_ms(row['response_time_ms'])}",
    ]
    if row["is_streaming"]:
        parts.append(f"ttft {_ms(row['time_to_first_token_ms'])}")
    about = "~" if row.get("usage_source") == "estimated" else ""  # addon/estimate.py
    parts.append(f"tokens {about}{_n(row['prompt_tokens'])}→{about}{_n(row['completion_tokens'])}")
    if not row["success"]:
        parts.append(f"error {row['error_type']}")
    return " | ".join(parts)
