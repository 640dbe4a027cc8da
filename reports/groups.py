"""Per-group tables (by model, provider/host, origin, path, hour or day): counts, tokens, cost and
exact latency / TTFT / time-per-token / tokens-per-second percentiles."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from addon.redact import redact_path

from . import change, fmt
from .change import Presence, RowChange
from .indexes import RUN_KEYS
from .layout import Column, FitTable
from .percentiles import nearest_rank, ranked_in_memory, ranked_pass
from .runs import MAX_RUNS_PER_GROUP, merged_values_at_ranks, run_samples, runs_serve_ranks, streams_from_index
from .selection import Selection
from .source import Source
from .stored import text, time_like
from .totals import Totals, load_totals, merge, totals_sql

# What `--group-by` accepts, and the SQL that gives each group's key.
DIMENSIONS = {
    "model": "model",
    "provider": "provider",
    "host": "host",
    "origin": "origin",
    "path": "path",
    "agent": "agent",
    "session": "session_id",
    "streamed": "CASE WHEN is_streaming THEN 'streamed' ELSE 'non_streamed' END",
    # A call whose timestamp is not a time is in the group of no hour (NULL), not in "garbage".
    "hour": f"CASE WHEN {time_like('timestamp')} THEN substr(timestamp, 1, 13) END",
    "day": f"CASE WHEN {time_like('timestamp')} THEN substr(timestamp, 1, 10) END",
}
DEFAULT_GROUPINGS: tuple[tuple[str, ...], ...] = (("model",), ("provider", "host"), ("origin",))
# Up to this many selected calls, percentiles without index runs are sorted in memory from one
# read of the rows (a day of a million-call month: 33k); beyond it, streamed by sorted passes.
IN_MEMORY_MAX_CALLS = 250_000
TIME_DIMENSIONS = {"hour", "day"}  # their tables run in time order; the others, most calls first


@dataclass(frozen=True)
class Metric:
    field: str  # GroupRow attribute and JSON name
    column: str
    pcts: tuple[int, ...]


LATENCY = Metric("latency_ms", "response_time_ms", (50, 95, 99))
TTFT = Metric("ttft_ms", "time_to_first_token_ms", (50, 95))  # only streamed calls have one
TOKENS_PER_SECOND = Metric("output_tokens_per_second", "tokens_per_second", (50,))
# Time per output token = (t_last - t_first) / (N - 1) = 1000 / tokens_per_second (the row's decode
# rate, (N - 1) / (t_last - t_first), AIPerf's and vLLM's definition, addon/record.py): its p-th
# percentile is 1000 over the tokens/s value at the mirrored rank n + 1 - k, so one ranking of
# tokens_per_second gives both.
TIME_PER_TOKEN_PCTS = (50,)
METRICS = (LATENCY, TTFT, TOKENS_PER_SECOND)


@dataclass
class GroupRow:
    key: dict[str, str | None]
    requests: int
    errors: int
    prompt_tokens: int | None  # None: no call of the group reported it
    completion_tokens: int | None
    cost_usd: float | None = None  # of the priced calls; None: none priced, or no cost column
    unpriced_calls: int | None = None  # successful calls without a cost; None: no cost column
    estimated_calls: int = 0  # calls whose tokens and cost are estimates (usage_source estimated)
    latency_ms: dict[str, float | None] = field(default_factory=dict)
    ttft_ms: dict[str, float | None] = field(default_factory=dict)
    time_per_output_token_ms: dict[str, float | None] = field(default_factory=dict)
    output_tokens_per_second: dict[str, float | None] = field(default_factory=dict)
    # How many calls each figure rests on: those with a known value (see `reports.stored`).
    calls_with: dict[str, int | None] = field(default_factory=dict)
    change: RowChange | None = None  # with --compare: against the previous window

    def label(self) -> list[str]:
        return [key_label(dim, value) for dim, value in self.key.items()]


@dataclass
class GroupTable:
    dims: tuple[str, ...]
    rows: list[GroupRow]


def key_label(dim: str, value: str | None) -> str:
    if value is None:
        return "(no time)" if dim in TIME_DIMENSIONS else "(none)"
    if dim == "hour":
        return f"{value[:10]} {value[11:13]}:00"
    if dim == "day":
        return value[:10]
    return value


def key_value(dim: str, raw: str | None) -> str | None:
    """JSON/CSV form of a key: hours and days as the ISO time they start at; stored text as
    `reports.stored.text` reads it."""
    if raw is None:
        return None
    if dim in TIME_DIMENSIONS and not isinstance(raw, str):  # a blob that LIKE read as a date
        return None
    if dim == "hour":
        return f"{raw}:00:00Z"
    if dim == "day":
        return f"{raw}T00:00:00Z"
    value = text(raw)
    if dim == "path" and value is not None:
        return redact_path(value)  # rows stored before paths were redacted on the way in
    return value


def load_groups(
    src: Source,
    selection: Selection,
    groupings: Sequence[tuple[str, ...]],
    keys: Sequence[str],
    combos: dict[tuple, Totals],
) -> list[GroupTable]:
    """One table per grouping. `combos` are the totals per combination of `keys` (see `totals_keys`)."""
    exprs = [tuple(DIMENSIONS[d] for d in dims) for dims in groupings]
    positions = [[list(keys).index(e) for e in dims] for dims in exprs]
    totals = [merge(combos, pos) for pos in positions]
    found: list[dict[str, dict]] = [{} for _ in groupings]
    wanted = {metric: [_wanted(t, metric) for t in totals] for metric in METRICS}
    runs = {metric: [_runs(combos, pos, metric) for pos in positions] for metric in METRICS}
    walked = [m for m in METRICS if _runs_usable(src, selection, keys, m, runs[m])]
    if walked:  # one sample serves every metric
        samples = run_samples(src, keys, [m.column for m in METRICS])
    for metric in walked:
        counts = [{k: _count(t[k], metric) for k in w} for t, w in zip(totals, wanted[metric])]
        values = merged_values_at_ranks(src, keys, metric.column, runs[metric], wanted[metric], counts, samples[metric.column])
        for per_grouping, v in zip(found, values):
            per_grouping[metric.field] = v
    rest = [m for m in METRICS if m not in walked]
    if rest and sum(c.requests for c in combos.values()) <= IN_MEMORY_MAX_CALLS:
        per_metric = ranked_in_memory(src, selection, exprs, [m.column for m in rest], [wanted[m] for m in rest])
        for metric, values in zip(rest, per_metric):
            for per_grouping, v in zip(found, values):
                per_grouping[metric.field] = v
    else:
        for metric in rest:
            values = ranked_pass(src, selection, exprs, metric.column, wanted[metric])
            for per_grouping, v in zip(found, values):
                per_grouping[metric.field] = v
    return [_table(src, dims, t, f) for dims, t, f in zip(groupings, totals, found)]


def combo_keys(groupings: Sequence[tuple[str, ...]]) -> list[str]:
    """The SQL key expressions of every grouping, once each, in order."""
    return list(dict.fromkeys(DIMENSIONS[d] for dims in groupings for d in dims))


def totals_keys(src: Source, selection: Selection, groupings: Sequence[tuple[str, ...]]) -> list[str]:
    """What to count and sum by: the index's run keys when SQLite reads a whole table's totals
    from that index in order and every grouping is made of runs, else the groupings' own keys."""
    keys = combo_keys(groupings)
    if not (src.walks_runs and selection.is_everything and set(keys) <= set(RUN_KEYS)):
        return keys
    sql, params = totals_sql(src, selection, RUN_KEYS)
    return list(RUN_KEYS) if streams_from_index(src, sql, params) else keys


def reads_indexes_only(src: Source, selection: Selection, groupings: Sequence[tuple[str, ...]]) -> bool:
    """Whether this report reads SQLite's indexes only: totals in one ordered index scan and
    every percentile by walks through merged index runs (what the benchmark and tests check)."""
    keys = totals_keys(src, selection, groupings)
    return keys == list(RUN_KEYS) and all(runs_serve_ranks(src, keys, m.column) for m in METRICS)


def _runs(combos: dict[tuple, Totals], positions: Sequence[int], metric: Metric) -> dict[tuple, list[tuple]]:
    """Group key -> the combinations in it that have values of `metric`."""
    runs: dict[tuple, list[tuple]] = {}
    for key, group in combos.items():
        if _count(group, metric):
            runs.setdefault(tuple(key[i] for i in positions), []).append(key)
    return runs


def _runs_usable(src: Source, selection: Selection, keys, metric: Metric, runs: list[dict]) -> bool:
    """SQLite, whole table, totals by run, an index serving runs of this metric, and no group of
    more runs than one merge takes."""
    return (
        src.walks_runs and selection.is_everything and list(keys) == list(RUN_KEYS)
        and all(len(members) <= MAX_RUNS_PER_GROUP for r in runs for members in r.values())
        and runs_serve_ranks(src, keys, metric.column)
    )


def _count(group: Totals, metric: Metric) -> int:
    if metric is LATENCY:
        return group.with_latency
    return group.with_ttft if metric is TTFT else group.with_tokens_per_second


def _wanted(totals: dict[tuple, Totals], metric: Metric) -> dict[tuple, set[int]]:
    wanted = {}
    for key, group in totals.items():
        n = _count(group, metric)
        if n:
            ranks = {nearest_rank(n, p) for p in metric.pcts}
            if metric is TOKENS_PER_SECOND:
                ranks |= {n + 1 - nearest_rank(n, p) for p in TIME_PER_TOKEN_PCTS}
            wanted[key] = ranks
    return wanted


def _table(src: Source, dims: tuple[str, ...], totals: dict[tuple, Totals], found: dict[str, dict]) -> GroupTable:
    rows = []
    for key, group in totals.items():
        row = GroupRow(
            {d: key_value(d, k) for d, k in zip(dims, key)},
            group.requests, group.errors, group.tokens("prompt_tokens"), group.tokens("completion_tokens"),
            estimated_calls=group.estimated_calls,
        )
        if src.has_cost:
            row.cost_usd, row.unpriced_calls = group.cost(), group.unpriced_calls
        row.calls_with = calls_with(group, src.has_cost)
        for metric in METRICS:
            n, at = _count(group, metric), found[metric.field].get(key, {})
            setattr(row, metric.field, {f"p{p}": at.get(nearest_rank(n, p)) if n else None for p in metric.pcts})
        n, at = group.with_tokens_per_second, found[TOKENS_PER_SECOND.field].get(key, {})
        row.time_per_output_token_ms = {
            f"p{p}": _per_token_ms(at.get(n + 1 - nearest_rank(n, p))) if n else None for p in TIME_PER_TOKEN_PCTS
        }
        rows.append(row)
    if set(dims) & TIME_DIMENSIONS:
        return GroupTable(dims, sorted(rows, key=lambda r: [v or "" for v in r.key.values()]))
    return GroupTable(dims, sorted(rows, key=_order))


def calls_with(group: Totals, has_cost: bool) -> dict[str, int | None]:
    return {
        "latency_ms": group.with_latency, "ttft_ms": group.with_ttft,
        "time_per_output_token_ms": group.with_tokens_per_second,
        "output_tokens_per_second": group.with_tokens_per_second,
        "prompt_tokens": group.with_prompt_tokens, "completion_tokens": group.with_completion_tokens,
        "cost_usd": group.priced_calls if has_cost else None,
    }


def empty_row(key: dict[str, str | None], has_cost: bool) -> GroupRow:
    """A group of no calls (one that had calls in the previous window only): counts and sums 0,
    as of no calls at all, percentiles unknown."""
    none = Totals()
    row = GroupRow(dict(key), 0, 0, none.tokens("prompt_tokens"), none.tokens("completion_tokens"))
    if has_cost:
        row.cost_usd, row.unpriced_calls = none.cost(), 0
    row.calls_with = calls_with(none, has_cost)
    for metric in METRICS:
        setattr(row, metric.field, {f"p{p}": None for p in metric.pcts})
    row.time_per_output_token_ms = {f"p{p}": None for p in TIME_PER_TOKEN_PCTS}
    return row


def load_agent_table(src: Source, selection: Selection) -> GroupTable:
    """The table by agent, from totals of its own: the other tables keep reading the index runs."""
    grouping = (("agent",),)
    keys = totals_keys(src, selection, grouping)
    [table] = load_groups(src, selection, grouping, keys, load_totals(src, selection, keys))
    return table


def _per_token_ms(tokens_per_second: float | None) -> float | None:
    return None if not tokens_per_second else 1000.0 / tokens_per_second


def _order(row: GroupRow) -> tuple:
    return (-row.requests, [(v is None, v or "") for v in row.key.values()])


def group_title(dims: tuple[str, ...]) -> str:
    return "By " + "/".join(dims)


@dataclass(frozen=True)
class _Shown:
    """A numeric column of the text table."""

    header: str
    keep: int  # when space runs out, the lowest `keep` is left out first
    cell: Callable[[GroupRow], str]
    figure: str | None = None  # the compared figure shown under it (`reports.change`)


def few_calls(n: int, pct: int) -> bool:
    """Whether a p-th percentile over n values is simply their largest: below 100 / (100 - p)
    values (p50: 2, p95: 20, p99: 100), nearest rank is n."""
    return 0 < n and n * (100 - pct) < 100


FEW = "*"


def _pct(values: dict, pct: int, n: int | None, show: Callable = fmt.ms, name: str | None = None) -> str:
    value = values.get(name or f"p{pct}")
    return show(value) + (FEW if value is not None and n is not None and few_calls(n, pct) else "")


_COLUMNS = (
    _Shown("calls", 90, lambda r: fmt.count(r.requests), "requests"),
    _Shown("err", 80, lambda r: fmt.count(r.errors), "error_rate"),
    _Shown("p50\nms", 85, lambda r: _pct(r.latency_ms, 50, r.calls_with.get("latency_ms")), "latency_p50_ms"),
    _Shown("p95\nms", 75, lambda r: _pct(r.latency_ms, 95, r.calls_with.get("latency_ms")), "latency_p95_ms"),
    _Shown("p99\nms", 50, lambda r: _pct(r.latency_ms, 99, r.calls_with.get("latency_ms"))),
    _Shown("TTFT\np50", 70, lambda r: _pct(r.ttft_ms, 50, r.calls_with.get("ttft_ms")), "ttft_p50_ms"),
    _Shown("TTFT\np95", 40, lambda r: _pct(r.ttft_ms, 95, r.calls_with.get("ttft_ms")), "ttft_p95_ms"),
    _Shown("ms/tok", 30, lambda r: _pct(r.time_per_output_token_ms, 50, r.calls_with.get("output_tokens_per_second"), fmt.decimal)),
    _Shown("tok/s", 60, lambda r: _pct(r.output_tokens_per_second, 50, r.calls_with.get("output_tokens_per_second"), fmt.decimal)),
    _Shown("in", 44, lambda r: _tokens(r, r.prompt_tokens, "prompt_tokens"), "prompt_tokens"),
    _Shown("out", 45, lambda r: _tokens(r, r.completion_tokens, "completion_tokens"), "completion_tokens"),
)
_COST = _Shown("cost", 65, lambda r: fmt.cost(r.cost_usd, r.unpriced_calls, r.estimated_calls), "cost_usd")


def _tokens(row: GroupRow, tokens: int | None, name: str) -> str:
    """`≥` when fewer calls reported the count than succeeded (the sum is of those that did);
    `~` when it includes estimates."""
    if tokens is None:
        return fmt.compact(tokens)
    reported = row.calls_with.get(name)
    partial = reported is not None and reported < row.requests - row.errors
    return fmt.about(row.estimated_calls) + (fmt.AT_LEAST if partial else "") + fmt.compact(tokens)


GROUP_TABLE_NOTE = (
    "latency and TTFT in ms; ms/tok (time per output token) and tok/s are p50s; "
    "TTFT, ms/tok and tok/s cover streamed calls only"
)
FEW_NOTE = (
    f"{FEW}: a percentile over so few calls that it is their largest value (p50 of 1, p95 of under 20, "
    "p99 of under 100; --format json gives each figure's count, calls_with)"
)
PARTIAL_TOKENS_NOTE = f"{fmt.AT_LEAST} before tokens: fewer calls reported them than succeeded; the sum is of those that did"


def compare_note() -> str:
    """The footnote of the first table whose rows have a second line of changes."""
    return (
        "second line: change against the window before (see the overview): calls, tokens and cost in %, "
        "err as the error rate's change in points, latency and TTFT in ms; new: no calls then; vanished: none now"
    )


def render_group_table(
    table: GroupTable, cost_known: bool, note: str | None = None, changes_note: str | None = None,
    explained: set[str] | None = None,
) -> FitTable:
    """`note`: the footnote of the last table, which explains the tables above it as well (they
    group the same calls, so each has an unpriced group when one has). `changes_note`: with
    --compare, what the second line under each row is (None: no second lines). Notes in `explained` (shown under a table
    above) are left out; those shown here are added to it."""
    shown = _COLUMNS + ((_COST,) if cost_known else ())
    compared = changes_note is not None and any(r.change is not None for r in table.rows)
    labels: list[list[str]] = [[] for _ in table.dims]
    cells: list[list[str]] = [[] for _ in shown]
    for row in table.rows:
        for into, label in zip(labels, row.label()):
            into.append(label)
        for into, column in zip(cells, shown):
            into.append(column.cell(row))
        if compared:
            _change_line(row, shown, labels, cells)
    columns = [
        Column(dim, labels[i], keep=100, numeric=False, min_width=20 if i == 0 else 12)
        for i, dim in enumerate(table.dims)
    ]
    columns += [Column(s.header, c, keep=s.keep) for s, c in zip(shown, cells)]
    if note and cost_known and any(r.unpriced_calls or r.cost_usd is None for r in table.rows):
        columns[-1].note = fmt.COST_NOTE  # shown with the cost column only
    notes = [note] if note else []
    if note and any(r.estimated_calls for r in table.rows):
        notes.append(fmt.ESTIMATED_NOTE)
    tokens = [c for s, c in zip(shown, cells) if s.figure in ("prompt_tokens", "completion_tokens")]
    explained = set() if explained is None else explained
    for needed, said in (
        (compared, changes_note),
        (any(FEW in c for column in cells for c in column), FEW_NOTE),
        (any(fmt.AT_LEAST in c for column in tokens for c in column), PARTIAL_TOKENS_NOTE),
    ):
        if needed and said and said not in explained:
            notes.append(said)
            explained.add(said)
    return FitTable(group_title(table.dims), columns, "\n".join(notes) or None)


def _change_line(row: GroupRow, shown: tuple[_Shown, ...], labels: list[list[str]], cells: list[list[str]]) -> None:
    """The row's second line: its presence under the key, each figure's change under its column."""
    presence = row.change.presence if row.change is not None else None
    for i, into in enumerate(labels):
        into.append(f"  {presence}" if i == 0 and presence not in (None, Presence.BOTH) else "")
    for into, column in zip(cells, shown):
        shown_change = ""
        if row.change is not None and presence is not Presence.NEW and column.figure is not None:
            shown_change = change.text(column.figure, getattr(row.change, column.figure), unit=False)
        into.append(shown_change)
