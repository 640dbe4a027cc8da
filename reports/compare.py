"""`--compare`: the previous window of the same length, loaded as the report loads its own (the
same totals and group loaders, on the selection moved back), and the change of each figure.

The window compared with [since, until) is [since - (until - since), since); with --since alone,
until is the report's now. Group tables by hour or day are not compared row by row (no hour
recurs in the window before); their rows carry no change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime

from .change import Changes, Presence, changes_of, row_change
from .groups import (
    TIME_DIMENSIONS,
    GroupRow,
    GroupTable,
    empty_row,
    load_agent_table,
    load_groups,
    totals_keys,
)
from .selection import Selection, utc_text
from .source import Source
from .stored import utc
from .totals import load_totals

OVERALL: tuple[str, ...] = ()  # the grouping by no key: one row of every selected call


@dataclass
class Comparison:
    previous: Selection  # the selection, moved back to the window before
    overview: Changes  # of every selected call

    def as_dict(self) -> dict:
        return {
            "previous_since_utc": self.previous.since_utc,
            "previous_until_utc": self.previous.until_utc,
            "overview": asdict(self.overview),
        }


def previous_window(selection: Selection, now: datetime) -> Selection:
    """The selection moved back by its window's length. Raises ValueError, fit for `error: …`,
    when it has no window to move."""
    since = utc(selection.since_utc)
    if since is None:
        raise ValueError("--compare needs a window: give --since (and --until, or it ends now)")
    until = utc(selection.until_utc) or now
    if until <= since:
        raise ValueError(f"--compare needs a window that has a length: --since ({selection.since_utc}) is not before now")
    try:
        start = since - (until - since)
    except OverflowError:
        raise ValueError(f"--compare: the window before {selection.since_utc} would start before year 1") from None
    return replace(selection, since_utc=utc_text(start), until_utc=selection.since_utc)


def overall_row(src: Source, selection: Selection, groupings: Sequence[tuple[str, ...]], keys, combos) -> tuple[list[GroupTable], GroupRow]:
    """`load_groups` for `groupings` and the row of every call (its percentiles are the
    overview's), in one pass."""
    tables = load_groups(src, selection, [*groupings, OVERALL], keys, combos)
    whole = tables.pop().rows
    return tables, whole[0] if whole else empty_row({}, src.has_cost)


def load_comparison(
    src: Source, previous: Selection, groupings: Sequence[tuple[str, ...]], tables: list[GroupTable], overall: GroupRow,
) -> Comparison:
    """Loads `previous` as the report loaded the window itself, marks each row of `tables` (the
    report's, by `groupings`, then by agent when there is one more) with its change, and appends
    the groups that had calls then and have none now."""
    keys = totals_keys(src, previous, groupings)
    before, before_overall = overall_row(src, previous, groupings, keys, load_totals(src, previous, keys))
    if len(tables) > len(before):  # the report added a table by agent
        before.append(load_agent_table(src, previous))
    for table, then in zip(tables, before):
        if not set(table.dims) & TIME_DIMENSIONS:
            _mark(table, then, src.has_cost)
    return Comparison(previous, changes_of(overall, before_overall))


def _mark(table: GroupTable, then: GroupTable, has_cost: bool) -> None:
    earlier = {_key(row): row for row in then.rows}
    for row in table.rows:
        was = earlier.pop(_key(row), None)
        if was is None:
            row.change = row_change(row, empty_row(row.key, has_cost), Presence.NEW)
        else:
            row.change = row_change(row, was, Presence.BOTH)
    for was in earlier.values():  # most calls first, as that table ran
        gone = empty_row(was.key, has_cost)
        gone.change = row_change(gone, was, Presence.VANISHED)
        table.rows.append(gone)


def _key(row: GroupRow) -> tuple:
    return tuple(row.key.values())
