"""Exact percentiles per group, by the nearest-rank method.

The p-th percentile of n values is the value at 1-based rank ceil(p/100 * n) in ascending order:
the smallest value with at least p % of the values at or below it. It is always one of the
recorded values (never interpolated), and it is what PostgreSQL's `percentile_disc` returns.

Every percentile is therefore "the value at rank k in group g", and two functions answer that:

- `ranked_pass` (portable SQL): one query reads the column sorted, with the group keys beside
  it, and counts ranks for any number of groupings at once while the rows stream past; nothing
  is kept but a counter per group and the values found.
- `indexed_values_at_ranks` (the SQLite-specific part): when an index on (group…, value) holds
  the whole table, each rank is one `LIMIT 1 OFFSET k` step inside that index, in milliseconds,
  where a sort of a million rows would take a second (SQLite has no percentile function and
  sorts slowly).
"""

from __future__ import annotations

from collections.abc import Sequence

from .selection import TABLE, Selection
from .source import Source

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
    """For each grouping (a list of SQL key expressions), the non-NULL `value`s at the wanted
    ranks of each group. `wanted[i]` must list every group of grouping i that has values."""
    exprs = list(dict.fromkeys(e for grouping in groupings for e in grouping))
    where, params = selection.where(src.param, f"{value} IS NOT NULL")
    sql = f"SELECT {', '.join(exprs)}, {value} FROM {TABLE}{where} ORDER BY {value}"
    # Per grouping: group key -> [rows seen so far, ranks wanted, values found]
    states = [{key: [0, ranks, {}] for key, ranks in w.items()} for w in wanted]
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


def _rank_sql(src: Source, dims: Sequence[str], value: str, direction: str = "") -> str:
    match = " AND ".join(f"{d} IS {src.param}" for d in dims)  # IS: NULL-safe equality
    return (
        f"SELECT {value} FROM {TABLE} WHERE {match} AND {value} IS NOT NULL "
        f"ORDER BY {value}{direction} LIMIT 1 OFFSET {src.param}"
    )


def index_serves_ranks(src: Source, dims: Sequence[str], value: str) -> bool:
    """Whether SQLite answers a rank lookup of `value` per group of `dims` from an index alone."""
    return all(
        streams_from_index(src, _rank_sql(src, dims, value, direction), [None] * len(dims) + [0])
        for direction in ("", " DESC")
    )


def streams_from_index(src: Source, sql: str, params: list) -> bool:
    """SQLite's plan reads only indexes, in their order: no table rows, no sort."""
    steps = [str(row[-1]) for row in src.rows("EXPLAIN QUERY PLAN " + sql, params)]
    reads = [s for s in steps if s.startswith(("SCAN", "SEARCH"))]
    return bool(reads) and all("COVERING INDEX" in s for s in reads) and not any("TEMP B-TREE" in s for s in steps)


def indexed_values_at_ranks(src: Source, dims: Sequence[str], value: str, wanted: Wanted, counts: dict[Key, int]) -> Found:
    """Whole table only (the index holds no filter columns); see `index_serves_ranks`. A rank
    past the middle is walked to from the top, so p99 of n steps over n/100 entries, not 99n/100."""
    ascending, descending = _rank_sql(src, dims, value), _rank_sql(src, dims, value, " DESC")
    found: Found = {}
    for key, ranks in wanted.items():
        n = counts[key]
        for rank in ranks:
            row = src.one(ascending, [*key, rank - 1]) if rank <= n - rank else src.one(descending, [*key, n - rank])
            if row is not None:
                found.setdefault(key, {})[rank] = row[0]
    return found
