"""The exit summary: per-model calls, errors, tokens, p50 latency and TTFT, and unparsed requests."""

from __future__ import annotations

from array import array

import pytest

from addon.formats import ResponseFacts, recognise
from addon.record import Call, build_row
from addon.run_summary import RunTotals, p50


def row(model="gpt-4o-mini", *, success=True, prompt=10, completion=5, latency=100, ttft=None):
    return {"model": model, "success": success, "prompt_tokens": prompt, "completion_tokens": completion,
            "response_time_ms": latency, "time_to_first_token_ms": ttft}


def summary_lines(rows: list[dict], unparsed: dict[str, int] | None = None) -> list[str]:
    """The exit summary of these rows (as `build_row` makes them), fed one at a time as the addon
    does, and these counts of requests that looked like LLM calls but were not parsed."""
    totals = RunTotals()
    for r in rows:
        totals.add(r)
    return totals.lines(unparsed)


def columns(line: str) -> list[str]:
    return line.split()


def test_no_calls_says_so_and_points_at_doctor():
    assert summary_lines([]) == [
        "llm-metrics: no LLM calls captured this run (`python -m addon doctor` checks the set-up)"
    ]


def test_totals_line_counts_calls_errors_and_tokens_over_all_models():
    rows = [row(), row(success=False, prompt=None, completion=None), row("llama3", prompt=7, completion=3)]
    assert summary_lines(rows)[0] == "llm-metrics: this run: 3 calls, 1 error, tokens 17 in / 8 out"


def test_one_call_is_singular():
    assert summary_lines([row()])[0] == "llm-metrics: this run: 1 call, 0 errors, tokens 10 in / 5 out"


def test_per_model_line_has_calls_errors_tokens_p50_latency_and_ttft():
    rows = [row(latency=300, ttft=120), row(latency=100, ttft=80), row(latency=200, ttft=None, success=False)]
    header, line = summary_lines(rows)[1:]
    assert columns(header) == ["model", "calls", "errors", "tokens", "in", "tokens", "out", "p50", "latency", "p50", "ttft"]
    assert columns(line) == ["gpt-4o-mini", "3", "1", "30", "15", "200ms", "80ms"]


def test_columns_line_up_under_the_header():
    lines = summary_lines([row("a"), row("a-much-longer-model-name", latency=12345, ttft=9)])
    ends = {len(line) for line in lines[1:]}
    assert len(ends) == 1, lines


def test_unknown_values_show_a_dash_never_zero():
    [_, _, line] = summary_lines([row(prompt=None, completion=None, latency=None, ttft=None)])
    assert columns(line) == ["gpt-4o-mini", "1", "0", "-", "-", "-", "-"]


def test_models_are_ordered_by_calls_then_name_and_a_missing_model_is_named():
    rows = [row("b"), row("a"), row("c"), row("c"), row(None)]
    names = [columns(line)[0] for line in summary_lines(rows)[2:]]
    assert names == ["c", "(no", "a", "b"]  # "(no model)" splits in two words


def test_long_model_names_are_cut_to_the_column():
    long = "x" * 80
    line = summary_lines([row(long)])[2]
    assert columns(line)[0] == "x" * 31 + "…"


def test_many_models_are_capped_with_a_pointer_to_reports():
    rows = [row(f"m{i:02}") for i in range(20)]
    lines = summary_lines(rows)
    assert len(lines) == 2 + 15 + 1
    assert lines[-1] == "  ... and 5 more model(s) with 5 call(s): python -m reports has them all"


@pytest.mark.parametrize(("values", "expected"), [
    ([], None), ([7], 7), ([3, 1], 1), ([5, 1, 3], 3), ([4, 1, 3, 2], 2), ([10, 10, 20, 30, 40, 50], 20),
])
def test_p50_is_the_nearest_rank_median_as_reports_use(values, expected):
    assert p50(array("q", values)) == expected


def test_unparsed_requests_are_counted_and_named_most_frequent_first():
    lines = summary_lines([row()], {"POST /v1/messages": 2, "POST /api/chat": 5, "POST /v1/other": 0})
    assert lines[-1] == ("llm-metrics: 7 requests looked like LLM calls but were not parsed (please report "
                         "them): POST /api/chat (5), POST /v1/messages (2)")


def test_unparsed_requests_show_even_when_no_call_was_captured():
    lines = summary_lines([], {"/v1/messages": 1})
    assert lines[0].startswith("llm-metrics: no LLM calls captured")
    assert lines[1] == "llm-metrics: 1 request looked like LLM calls but were not parsed (please report them): /v1/messages (1)"


def test_many_unparsed_paths_are_capped():
    line = summary_lines([], {f"/p{i}": 1 for i in range(8)})[-1]
    assert line.endswith("/p0 (1), /p1 (1), /p2 (1), /p3 (1), /p4 (1), and 3 more")


def test_rows_made_by_build_row_are_summarised():
    body = {"model": "gpt-fake", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    fmt = recognise("/v1/chat/completions", body)
    call = Call(fmt=fmt, started_at=1_700_000_000.0, t_start=10.0, host="127.0.0.1", port=8000,
                path="/v1/chat/completions", provider="openai-compatible", origin=None,
                request={"request_model": "gpt-fake", "is_streaming": True, "message_count": 1}, t_headers=10.05, t_first_token=10.1, t_last_token=10.3,
                streamed=True)
    facts = ResponseFacts(model="gpt-fake-2026", prompt_tokens=11, completion_tokens=6)
    built = build_row(call, facts, status_code=200, t_end=10.4)
    lines = summary_lines([built])
    assert lines[0] == "llm-metrics: this run: 1 call, 0 errors, tokens 11 in / 6 out"
    assert columns(lines[2]) == ["gpt-fake-2026", "1", "0", "11", "6", "400ms", "100ms"]
