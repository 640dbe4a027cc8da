"""Ranks over a whole SQLite table, read from the index runs that migration m005 adds.

An index on (run keys…, value) (see `reports.indexes`) holds each combination of the run keys as
one run of values in order, so a report group (a model, an origin…) is a few sorted runs. SQLite
merges sorted `UNION ALL` arms without sorting, so the value at rank k of a group is a
`LIMIT 1 OFFSET k` walk through its merged runs, in C, where a sort of a million rows would take
seconds (SQLite has no percentile function and sorts slowly). A merged walk costs several times
a walk inside one run, so `merged_values_at_ranks` walks most of the way inside runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .percentiles import Found, Key, Wanted
from .selection import TABLE
from .source import Source
from .stored import known, measure

# SQLite's default limit on the arms of one compound SELECT (SQLITE_MAX_COMPOUND_SELECT).
MAX_RUNS_PER_GROUP = 500
SAMPLE_EVERY = 32  # 1 row in SAMPLE_EVERY is in the sample that bounds are taken from
SAMPLE_BLOCK = 64  # consecutive ids read together


def _run_arm(src: Source, keys: Sequence[str], value: str) -> str:
    match = " AND ".join(f"{k} IS {src.param}" for k in keys)  # IS: NULL-safe equality
    return f"SELECT {value} FROM {TABLE} WHERE {match} AND {measure(value)}"


def _merged_rank_sql(src: Source, keys: Sequence[str], value: str, runs: int, direction: str = "") -> str:
    arms = " UNION ALL ".join([_run_arm(src, keys, value)] * runs)
    return f"{arms} ORDER BY 1{direction} LIMIT 1 OFFSET {src.param}"


def runs_serve_ranks(src: Source, keys: Sequence[str], value: str) -> bool:
    """Whether SQLite walks `value` in order within each run of `keys` from an index alone, and
    merges several runs without sorting (checked on a merge of two runs, both directions)."""
    params = [None] * (2 * len(keys)) + [0]
    return all(
        streams_from_index(src, _merged_rank_sql(src, keys, value, 2, direction), params)
        for direction in ("", " DESC")
    )


def streams_from_index(src: Source, sql: str, params: list) -> bool:
    """SQLite's plan reads only indexes, in their order: no table rows, no sort."""
    steps = [str(row[-1]) for row in src.rows("EXPLAIN QUERY PLAN " + sql, params)]
    reads = [s for s in steps if s.startswith(("SCAN", "SEARCH"))]
    return bool(reads) and all("COVERING INDEX" in s for s in reads) and not any("TEMP B-TREE" in s for s in steps)


def run_samples(src: Source, keys: Sequence[str], values: Sequence[str]) -> dict[str, dict[Key, list]]:
    """A sample of the table (1 row in SAMPLE_EVERY), by run, sorted: value -> run -> sample. Only
    bounds come from it. It is read as blocks of consecutive ids: rows one by one every few ids
    would touch nearly every page of the table, blocks touch 1 page in SAMPLE_EVERY."""
    selected = ", ".join([*(f"c.{k}" for k in keys), *(known(f"c.{v}") for v in values)])
    stride = SAMPLE_EVERY * SAMPLE_BLOCK
    sql = (
        f"WITH RECURSIVE block(id) AS (SELECT min(id) FROM {TABLE} UNION ALL SELECT id + {stride} "
        f"FROM block WHERE id + {stride} <= (SELECT max(id) FROM {TABLE})) "
        f"SELECT {selected} FROM block JOIN {TABLE} AS c ON c.id >= block.id AND c.id < block.id + {SAMPLE_BLOCK}"
    )
    samples: dict[str, dict[Key, list]] = {v: {} for v in values}
    for row in src.rows(sql):
        run = tuple(row[: len(keys)])
        for value, v in zip(values, row[len(keys):]):
            if v is not None:
                samples[value].setdefault(run, []).append(v)
    for by_run in samples.values():
        for sample in by_run.values():
            sample.sort()
    return samples


@dataclass
class _Rank:
    """One wanted rank of one group, walked to from the end nearer to it."""

    group: Key
    rank: int
    members: list[Key]
    steps: int  # 1-based, from the start (ascending) or the top (descending)
    ascending: bool
    bound: object = None  # a value short of the rank, or None: walk the whole way
    skipped: int = 0  # values before the bound (exact)


def merged_values_at_ranks(
    src: Source,
    keys: Sequence[str],
    value: str,
    runs: Sequence[dict[Key, list[Key]]],
    wanted: Sequence[Wanted],
    counts: Sequence[dict[Key, int]],
    sample: dict[Key, list],
) -> list[Found]:
    """Whole table only; see `runs_serve_ranks`. Per grouping i: `runs[i][g]` lists the run keys
    (values of `keys`) making up group g, at most MAX_RUNS_PER_GROUP, `counts[i][g]` its non-NULL
    values; `sample` is `run_samples` of every run for `value`.

    Walking k values through a merge of runs costs several times a walk inside one run, so each
    rank is found in three steps: the sample gives a bound safely short of it; the values short
    of every bound are counted run by run in one plain walk per run and direction (bounds in
    order, each count starting where the last stopped); then only the short way from the bound to
    the rank is walked merged. If a bound was not short of its rank after all (an unlucky
    sample), the whole way is walked: the answer is exact either way. A rank past the middle is
    walked to from the top, so p99 of n steps over n/100 values, not 99n/100."""
    ranks = [
        _plan_rank(group, rank, members[group], n[group], sample)
        for members, w, n in zip(runs, wanted, counts)
        for group, group_ranks in w.items()
        for rank in sorted(group_ranks)
    ]
    short_of = _counts_short_of_bounds(src, keys, value, ranks)
    found: list[Found] = [{} for _ in wanted]
    plans = iter(ranks)
    for i, w in enumerate(wanted):
        for group, group_ranks in w.items():
            for _ in group_ranks:
                plan = next(plans)
                if plan.bound is not None:
                    plan.skipped = sum(short_of[(run, plan.ascending, plan.bound)] for run in plan.members)
                row = _walk(src, keys, value, plan)
                if row is not None:
                    found[i].setdefault(group, {})[plan.rank] = row[0]
    return found


def _plan_rank(group: Key, rank: int, members: list[Key], n: int, sample: dict[Key, list]) -> _Rank:
    ascending = rank <= n - rank
    plan = _Rank(group, rank, members, rank if ascending else n + 1 - rank, ascending)
    values = sorted(v for run in members for v in sample.get(run, ()))
    expected = plan.steps / SAMPLE_EVERY  # where the rank falls in the sample, from its end
    position = int(expected - 3 * expected**0.5 - 2)  # well short of it: sampling spreads ~sqrt
    if 0 <= position < len(values):
        plan.bound = values[position] if ascending else values[-1 - position]
    return plan


def _counts_short_of_bounds(src: Source, keys: Sequence[str], value: str, ranks: list[_Rank]) -> dict:
    """(run, ascending, bound) -> how many of the run's values lie before the bound (below it
    when ascending, above it when not), for every bound of every rank."""
    bounds: dict[tuple, set] = {}
    for plan in ranks:
        if plan.bound is not None:
            for run in plan.members:
                bounds.setdefault((run, plan.ascending), set()).add(plan.bound)
    arm = f"SELECT count(*) FROM {TABLE} WHERE " + " AND ".join([*(f"{k} IS {src.param}" for k in keys), measure(value)])
    short_of = {}
    for (run, ascending), wanted in bounds.items():
        ordered = sorted(wanted, reverse=not ascending)
        before, after = ("<", ">=") if ascending else (">", "<=")
        parts, params = [], []
        for i, bound in enumerate(ordered):  # each count covers only the span since the last bound
            since = f" AND {value} {after} {src.param}" if i else ""
            parts.append(f"({arm} AND {value} {before} {src.param}{since})")
            params += [*run, bound] + ([ordered[i - 1]] if i else [])
        total = 0
        for bound, n in zip(ordered, src.one(f"SELECT {', '.join(parts)}", params)):
            total += n
            short_of[(run, ascending, bound)] = total
    return short_of


def _walk(src: Source, keys: Sequence[str], value: str, plan: _Rank) -> tuple | None:
    arm = _run_arm(src, keys, value)
    direction = "" if plan.ascending else " DESC"
    params = [v for run in plan.members for v in run]
    if plan.bound is not None and plan.skipped < plan.steps:
        beyond = f" AND {value} {'>=' if plan.ascending else '<='} {src.param}"
        arms = " UNION ALL ".join([arm + beyond] * len(plan.members))
        params = [p for run in plan.members for p in (*run, plan.bound)]
        return src.one(f"{arms} ORDER BY 1{direction} LIMIT 1 OFFSET {src.param}", [*params, plan.steps - 1 - plan.skipped])
    return src.one(_merged_rank_sql(src, keys, value, len(plan.members), direction), [*params, plan.steps - 1])
