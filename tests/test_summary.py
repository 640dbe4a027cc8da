"""The line printed per captured call (addon/summary.py)."""

from __future__ import annotations

from addon.summary import format_call_line


def row(**values) -> dict:
    return {"provider": "openai", "model": "gpt-4o", "status_code": 200, "response_time_ms": 812, "is_streaming": True,
            "time_to_first_token_ms": 240, "prompt_tokens": 11, "completion_tokens": 6, "success": True, **values}


def test_a_call_is_one_line_with_its_timings_and_tokens():
    assert format_call_line(row()) == "llm openai gpt-4o 200 | latency 812ms | ttft 240ms | tokens 11→6"


def test_unknown_values_are_a_dash_as_in_the_exit_summary_and_the_report():
    line = format_call_line(row(time_to_first_token_ms=None, prompt_tokens=None, completion_tokens=None))
    assert line == "llm openai gpt-4o 200 | latency 812ms | ttft - | tokens -→-"


def test_estimated_counts_are_marked_and_a_failure_names_its_error():
    line = format_call_line(row(usage_source="estimated", is_streaming=False, success=False, status_code=None,
                                error_type="upstream_disconnected"))
    assert line == "llm openai gpt-4o --- | latency 812ms | tokens ~11→~6 | error upstream_disconnected"
