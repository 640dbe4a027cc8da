"""Exact percentiles per group, by the nearest-rank method.

The p-th percentile of n values is the value at 1-based rank ceil(p/100 * n) in ascending order:
the smallest value with at least p % of the values at or below it. It is always one of the
recorded values (never interpolated), and it is what PostgreSQL's `percentile_disc` returns.

Every percentile is therefore "the value at rank k in group g", and two functions answer that:

- `ranked_pass` (portable SQL): one query reads the column sorted, with the group keys beside
  it, and counts ranks for any number of groupings at once while the rows stream past; nothing
  is kept but a counter per group and the values found.
- `ranked_in_memory`: the same for a selection small enough to hold, from one read of its rows.
- `reports.runs.merged_values_at_ranks` (the SQLite-specific part): walks through the index runs
  that migration m005 adds, for a whole table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .selection import TABLE, Selection
from .source import Source
from .stored import known, measure

METHOD = (
    "exact nearest rank: the p-th percentile is the smallest recorded value with at least p% of "
    "the selected calls at or below it (PostgreSQL's percentile_disc; never interpolated)"
)

Key = tuple
Wanted = dict[Key, set[int]]  # group key -> 1-based ranks wanted
Found = dict[Key, dict[int, object]]  # group key -> rank -> value


def nearest_rank(n: int, pct: int) -> int:
    """The 1-based rank of the pct-th percentile among n values (integer arithmetic: exact)."""
    return max(1, -(-pct * n // 100))


def ranked_pass(
    src: Source, selection: Selection, groupings: Sequence[Sequence[str]], value: str, wanted: Sequence[Wanted]
) -> list[Found]:
    """For each grouping (a list of SQL key expressions), the known `value`s (`reports.stored`)
    at the wanted ranks of each group. `wanted[i]` must list every group of grouping i that has
    values."""
    exprs = list(dict.fromkeys(e for grouping in groupings for e in grouping))
    where, params = selection.where(src.param, measure(value))
    sql = f"SELECT {', '.join(exprs)}, {value} FROM {TABLE}{where} ORDER BY {value}"
    # Per grouping: group key -> [rows seen so far, ranks wanted, values found]
    states: list[dict[Key, list[Any]]] = [{key: [0, ranks, {}] for key, ranks in w.items()} for w in wanted]
    positions = [[exprs.index(e) for e in grouping] for grouping in groupings]
    # Each combination of key values seen maps once to its group in every grouping, so a row
    # costs one dict lookup however many groupings there are.
    combos: dict[tuple, list] = {}
    for row in src.db.execute_sql(sql, params):
        combo = row[:-1]
        groups = combos.get(combo)
        if groups is None:
            groups = combos[combo] = [
                group for state, pos in zip(states, positions)
                if (group := state.get(tuple(combo[i] for i in pos))) is not None
            ]
        for group in groups:
            group[0] += 1
            if group[0] in group[1]:
                group[2][group[0]] = row[-1]
    return [{key: group[2] for key, group in state.items()} for state in states]


def ranked_in_memory(
    src: Source, selection: Selection, groupings: Sequence[Sequence[str]], values: Sequence[str], wanted: Sequence[Sequence[Wanted]]
) -> list[list[Found]]:
    """`ranked_pass` for every value at once, for a selection small enough to hold (a day of a
    busy proxy): one query reads the keys and values, each group's values are sorted here.
    `wanted[m][i]`: value m, grouping i; returns found values in the same shape."""
    exprs = list(dict.fromkeys(e for grouping in groupings for e in grouping))
    where, params = selection.where(src.param)
    positions = [[exprs.index(e) for e in grouping] for grouping in groupings]
    # value -> grouping -> group key -> values
    lists: list[list[dict]] = [[{} for _ in groupings] for _ in values]
    # Each combination of keys seen -> per value, the lists of its group in every grouping, so a
    # row costs one dict lookup and an append per value and grouping.
    combos: dict[tuple, list[list[list]]] = {}
    width = len(exprs)
    selected = ", ".join([*exprs, *(known(v) for v in values)])  # an unknown value reads as NULL
    for row in src.db.execute_sql(f"SELECT {selected} FROM {TABLE}{where}", params):
        combo = row[:width]
        targets = combos.get(combo)
        if targets is None:
            keys = [tuple(combo[i] for i in pos) for pos in positions]
            targets = combos[combo] = [
                [by_group.setdefault(key, []) for by_group, key in zip(per_value, keys)] for per_value in lists
            ]
        for v, into in zip(row[width:], targets):
            if v is not None:
                for values_of_group in into:
                    values_of_group.append(v)
    found: list[list[Found]] = []
    for per_value, wanted_per_grouping in zip(lists, wanted):
        found.append([])
        for by_group, w in zip(per_value, wanted_per_grouping):
            at: Found = {}
            for key, ranks in w.items():
                ordered = sorted(by_group.get(key, ()))
                at[key] = {rank: ordered[rank - 1] for rank in ranks if rank <= len(ordered)}
            found[-1].append(at)
    return found
