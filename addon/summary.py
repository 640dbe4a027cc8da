"""The one-line summary printed per captured call, so a user sees the proxy working."""

from __future__ import annotations

from typing import Any

from .redact import redact

UNKNOWN = "-"  # a value the call did not report, here and in the exit summary (as in the report)


def ms_text(value: int | None) -> str:
    return UNKNOWN if value is None else f"{value}ms"


def count_text(value: int | None) -> str:
    return UNKNOWN if value is None else str(value)


def format_call_line(row: dict[str, Any]) -> str:
    """The row's own error type and path are stored redacted already (`addon.record.build_row`)."""
    status = row["status_code"] if row["status_code"] is not None else "---"
    parts = [
        f"llm {row['provider']} {redact(row['model'] or '?')} {status}",  # the model is the provider's text
        f"latency {ms_text(row['response_time_ms'])}",
    ]
    if row["is_streaming"]:
        parts.append(f"ttft {ms_text(row['time_to_first_token_ms'])}")
    about = "~" if row.get("usage_source") == "estimated" else ""  # addon/estimate.py
    parts.append(f"tokens {about}{count_text(row['prompt_tokens'])}→{about}{count_text(row['completion_tokens'])}")
    if not row["success"]:
        parts.append(f"error {row['error_type']}")
    return " | ".join(parts)
