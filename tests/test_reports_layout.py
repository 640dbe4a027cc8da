"""Tables that fit the terminal lose no character of any cell they show, at any width: text
folds onto more lines, numbers stay whole, and a column that does not fit is left out and named."""

from __future__ import annotations

import io
import re
from collections import Counter

import pytest
from rich.console import Console

from reports.errors import ErrorKind, Errors, render_errors
from reports.groups import GroupRow, GroupTable, render_group_table
from reports.layout import Column, FitTable
from reports.slowest import SlowCall, render_slowest

WIDTHS = [60, 80, 100, 140]


def draw(renderable, width: int) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(renderable)
    return console.file.getvalue()


def ink(text: str) -> Counter:
    """Every character that is not blank or the table's rule."""
    return Counter(c for c in text if not c.isspace() and c != "─")


def assert_nothing_lost(table: FitTable, width: int) -> str:
    text = draw(table, width)
    assert max(map(len, text.splitlines())) <= width
    hidden = re.search(r"too narrow for: (.*) \(see --format json\)", " ".join(text.split()))
    gone = set(hidden.group(1).split(", ")) if hidden else set()
    shown = [c for c in table.columns if c.header.replace("\n", " ") not in gone]
    expected = ink(table.title) + ink(table.caption or "") + ink(hidden.group(0) if hidden else "")
    for column in shown:
        expected += ink(column.header) + ink("".join(column.cells)) + ink(column.note or "")
    assert ink(text) == expected, (expected - ink(text), ink(text) - expected)
    return text


SLOW = [
    SlowCall("2026-11-01T00:00:00.000000Z", 123_456, "gpt-4o-mini-2024-07-18", "openai", "api.openai.com",
             "OpenAI/Python 1.2.3", 500, False, "http_500"),
    SlowCall("2026-11-01T00:00:01.000000Z", 1_234, "m", "anthropic", "api.anthropic.com", "o", None, False,
             "internal_server_error"),
    SlowCall("2026-11-01T00:00:02.000000Z", 12, "claude-3-5-sonnet-latest with a long suffix", "p", "h",
             "billing-job-that-has-a-very-long-name", 200, True, None),
]


@pytest.mark.parametrize("width", WIDTHS)
def test_the_slowest_calls_table_loses_no_character_at_any_width(width):
    text = assert_nothing_lost(render_slowest(SLOW), width)
    assert "http_500" in text.replace("\n", " ") or width < 80  # the outcome is there whole


@pytest.mark.parametrize("width", [60, 80])
def test_an_outcome_that_wraps_keeps_every_character(width):
    lines = draw(render_slowest(SLOW), width).splitlines()
    header = next(i for i, line in enumerate(lines) if "outcome" in line)
    start = lines[header].index("outcome")  # a text column: its cells start under its header
    column = "".join(line[start:].strip() for line in lines[header + 2:] if not line.startswith("too narrow"))
    assert column.replace(" ", "") == "500http_500internal_server_error200ok"


@pytest.mark.parametrize("width", WIDTHS)
def test_the_errors_table_loses_no_character_at_any_width(width):
    errors = Errors([
        ErrorKind(429, "rate_limit_exceeded", 8, "2026-11-03T16:30:00.000000Z", "Rate limit reached for requests"),
        ErrorKind(None, "connection_refused_by_the_upstream_server", 16, None, None),
        ErrorKind(500, "http_500", 3, "2026-11-03T16:30:00.000000Z", "upstream exploded " * 5),
    ], 3, 27)
    text = assert_nothing_lost(render_errors(errors), width)
    if width >= 100:
        assert "requests" in text


@pytest.mark.parametrize("width", WIDTHS)
def test_the_group_tables_lose_no_character_at_any_width(width):
    rows = [
        GroupRow({"provider": "openai", "host": "api.openai.com"}, 1234, 56, 1_234_567, 89_012, 12.3456, 3,
                 {"p50": 812, "p95": 2410, "p99": 41000}, {"p50": 240, "p95": 910}, {"p50": 12.5}, {"p50": 80.0}),
        GroupRow({"provider": "a-provider-with-a-long-name", "host": "gateway.internal.example.com"}, 1, 0, None, None,
                 None, 1, {"p50": 5, "p95": 5, "p99": 5}, {"p50": None, "p95": None}, {"p50": None}, {"p50": None}),
    ]
    assert_nothing_lost(render_group_table(GroupTable(("provider", "host"), rows), True, "a note"), width)


def test_a_lone_number_wider_than_the_terminal_folds_rather_than_being_cut():
    table = FitTable("T", [Column("n", ["1" * 30])])
    text = draw(table, 12)
    assert ink(text)["1"] == 30 and max(map(len, text.splitlines())) <= 12


def test_a_columns_note_is_shown_only_with_its_column():
    table = FitTable("T", [Column("key", ["abcdefghij"], keep=100, numeric=False), Column("cost", ["≥$1.00"], keep=1, note="cost ≥: …")])
    assert "cost ≥: …" in draw(table, 40)
    narrow = " ".join(draw(table, 16).split())
    assert "cost ≥: …" not in narrow and "too narrow for: cost" in narrow
