"""The JSON API of `python -m reports --serve` (docs/api.md): each endpoint turns its query
parameters into the CLI's `Selection` and reads the database through the report's own loaders,
so `/api/report` is `--format json` for the same filters, number for number.

An endpoint is a function of (location, query) that returns a `Reply`; a bad parameter raises
`BadRequest`, which the server answers with a 400 and one line of JSON. Nothing here writes: the
database is opened through `reports.source.read` (read-only, never migrated).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from migrations import CURRENT_SCHEMA_VERSION, current_version
from storage.db import display_location

from . import compat
from .calls import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, load_calls
from .cli import MAX_FILTER_VALUES
from .groups import DIMENSIONS
from .overview import edges
from .report import DEFAULT_TOP, empty_report, load_report
from .selection import TABLE, Selection, parse_when, utc_text
from .source import NothingYet, read
from .stored import utc
from .timeline import BUCKETS, Timeline, load_timeline

MAX_API_TOP = 1_000  # slowest calls and error kinds in one /api/report
Query = Mapping[str, Sequence[str]]  # as urllib.parse.parse_qs gives it


class BadRequest(Exception):
    """A parameter the API cannot take: 400, `{"error": message}`."""


@dataclass
class Reply:
    status: int
    body: object  # JSON
    headers: dict[str, str] = field(default_factory=dict)


# -- parameters -----------------------------------------------------------------------------

FILTERS = ("since", "until", "model", "provider", "host", "origin", "agent", "session", "errors_only", "streamed")
COMPAT_FILTERS = ("start", "end", *(f for f in FILTERS if f not in ("since", "until")))
PARAMETERS: dict[str, tuple[str, ...]] = {  # what each endpoint takes (docs/api.md lists them)
    "/api/report": (*FILTERS, "group_by", "top"),
    "/api/calls": (*FILTERS, "page", "page_size"),
    "/api/timeline": (*FILTERS, "bucket"),
    "/health": (),
    "/metrics": COMPAT_FILTERS,
    "/completion_requests": (*COMPAT_FILTERS, "limit"),
}
_LISTS = {"model": "models", "provider": "providers", "host": "hosts", "origin": "origins", "agent": "agents",
          "session": "sessions"}
_TRUE, _FALSE = ("", "1", "true", "yes"), ("0", "false", "no")


def check_names(query: Query, allowed: Sequence[str]) -> None:
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        raise BadRequest(f"unknown parameter {unknown[0]!r}; this endpoint takes {', '.join(allowed) or 'none'}")


def single(query: Query, name: str) -> str | None:
    values = query.get(name, ())
    if len(values) > 1:
        raise BadRequest(f"{name} given {len(values)} times; give it once")
    return values[0] if values else None


def flag(query: Query, name: str) -> bool | None:
    value = single(query, name)
    if value is None:
        return None
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise BadRequest(f"{name}={value!r}: expected true or false")


def whole_number(query: Query, name: str, default: int, low: int, high: int) -> int:
    value = single(query, name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        number = low - 1
    if not low <= number <= high:
        raise BadRequest(f"{name}={value!r}: expected a whole number from {low:,} to {high:,}")
    return number


def _when(query: Query, name: str, now: datetime) -> str | None:
    value = single(query, name)
    if value is None:
        return None
    try:
        return parse_when(value, now)
    except ValueError as exc:
        raise BadRequest(f"{name}: {exc}") from None


def selection_from(
    query: Query, now: datetime, *, since: str = "since", until: str = "until", until_inclusive: bool = False,
) -> Selection:
    """The CLI's filters from query parameters (a list filter repeats: `model=a&model=b`).
    `until_inclusive`: the upper bound selects calls at that time too (one microsecond past it,
    the rows' precision, is the report's exclusive bound)."""
    lists = {}
    for name, attribute in _LISTS.items():
        lists[attribute] = tuple(dict.fromkeys(query.get(name, ())))  # the same value twice is one filter
    if sum(len(v) for v in lists.values()) > MAX_FILTER_VALUES:
        raise BadRequest(f"at most {MAX_FILTER_VALUES:,} values of model, provider, host, origin, agent and session together")
    if any(not v for values in lists.values() for v in values):
        raise BadRequest("an empty filter value: leave the parameter out to select every value")
    if any("\x00" in v for values in lists.values() for v in values):
        raise BadRequest("a filter value holds a NUL character, which no stored value does")
    selection = Selection(
        since_utc=_when(query, since, now), until_utc=_when(query, until, now), errors_only=bool(flag(query, "errors_only")),
        streamed=flag(query, "streamed"), **lists,
    )
    if until_inclusive and selection.until_utc is not None:
        end = datetime.fromisoformat(selection.until_utc.replace("Z", "+00:00"))
        try:
            selection = replace(selection, until_utc=utc_text(end + timedelta(microseconds=1)))
        except OverflowError:  # the last microsecond of year 9999: no upper bound
            selection = replace(selection, until_utc=None)
    if selection.since_utc and selection.until_utc and selection.since_utc >= selection.until_utc:
        raise BadRequest(f"{since} ({selection.since_utc}) must be before {until} ({selection.until_utc})")
    return selection


def group_by(query: Query) -> str | None:
    value = single(query, "group_by")
    if value is not None and value not in DIMENSIONS:
        raise BadRequest(f"group_by={value!r}: expected one of {', '.join(DIMENSIONS)}")
    return value


# -- endpoints ------------------------------------------------------------------------------

def report(location: str, query: Query) -> Reply:
    """`/api/report`: the report's JSON (docs/report-json.md) for these filters."""
    check_names(query, PARAMETERS["/api/report"])
    now = datetime.now(UTC)
    selection = selection_from(query, now)
    grouping, top = group_by(query), whole_number(query, "top", DEFAULT_TOP, 1, MAX_API_TOP)
    try:
        return Reply(200, read(location, lambda src: load_report(src, selection, group_by=grouping, top=top, now=now)).as_dict())
    except NothingYet as note:
        return Reply(200, {**empty_report(location, selection, False, utc_text(now)).as_dict(), "note": str(note)})


def calls(location: str, query: Query) -> Reply:
    """`/api/calls`: one page of the selected calls, newest first."""
    check_names(query, PARAMETERS["/api/calls"])
    selection = selection_from(query, datetime.now(UTC))
    page = whole_number(query, "page", 1, 1, 1_000_000)
    size = whole_number(query, "page_size", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
    try:
        return Reply(200, read(location, lambda src: load_calls(src, selection, page, size)).as_dict())
    except NothingYet as note:
        return Reply(200, {"total": 0, "page": page, "page_size": size, "pages": 0, "calls": [], "note": str(note)})


def timeline(location: str, query: Query) -> Reply:
    """`/api/timeline`: calls and errors per bucket, from the first selected call's to the last's."""
    check_names(query, PARAMETERS["/api/timeline"])
    now = datetime.now(UTC)
    selection = selection_from(query, now)
    bucket = single(query, "bucket")
    if bucket is not None and bucket not in BUCKETS:
        raise BadRequest(f"bucket={bucket!r}: expected one of {', '.join(BUCKETS)}")

    def load(src) -> Timeline:
        """The report's timeline, from the first and last call's time and the count of calls
        (what the overview gives it; the overview's sums would cost more than the timeline)."""
        with src.db.atomic():
            first, last = edges(src, selection)
            where, params = selection.where(src.param)
            requests = int(src.one(f"SELECT count(*) FROM {TABLE}{where}", params)[0])
            start, end = utc(first), utc(last)
            span = None if start is None or end is None else (end - start).total_seconds()
            return load_timeline(src, selection, first, last, span, requests, bucket)

    head = {"generated_at_utc": utc_text(now), "filters": selection.as_dict()}
    try:
        return Reply(200, {**head, **read(location, load).as_dict()})
    except NothingYet as note:
        return Reply(200, {**head, **Timeline(bucket or "minute", []).as_dict(), "note": str(note)})


def health(location: str, query: Query) -> Reply:
    """`/health`: whether the database can be read, and its schema version."""
    check_names(query, PARAMETERS["/health"])
    shown = display_location(location)
    try:
        version = read(location, lambda src: current_version(src.db), check=False)
    except NothingYet as note:
        return Reply(200, {"status": "ok", "database": shown, "schema_version": None, "note": str(note)})
    if version != CURRENT_SCHEMA_VERSION:
        fix = "run `python -m migrations upgrade` first" if version < CURRENT_SCHEMA_VERSION else "upgrade llm-metrics-proxy"
        return Reply(503, {"status": "error", "database": shown, "schema_version": version,
                           "error": f"schema version {version}, this build reads {CURRENT_SCHEMA_VERSION}: {fix}"})
    return Reply(200, {"status": "ok", "database": shown, "schema_version": version})


# -- the original LLM Metrics Proxy's endpoints ------------------------------------------------

def _compat_selection(query: Query, now: datetime) -> Selection:
    """`start` and `end` are the original's: ISO times, UTC unless they say otherwise, `end`
    inclusive (its `timestamp <= end`): one microsecond past it is the report's exclusive bound."""
    for name in ("start", "end"):
        value = single(query, name)
        if value is not None and not _iso_only(value):
            raise BadRequest(f"{name}={value!r}: expected an ISO time like 2026-11-22T14:00:00")
    return selection_from(query, now, since="start", until="end", until_inclusive=True)


def _iso_only(value: str) -> bool:
    try:
        datetime.fromisoformat(value.strip().replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def metrics(location: str, query: Query) -> Reply:
    """`/metrics`: the original's summary (`reports.compat.metrics`)."""
    check_names(query, PARAMETERS["/metrics"])
    now = datetime.now(UTC)
    selection = _compat_selection(query, now)
    try:
        return Reply(200, read(location, lambda src: compat.metrics(src, selection, now)))
    except NothingYet:
        return Reply(200, compat.no_metrics(selection, now))


def completion_requests(location: str, query: Query) -> Reply:
    """`/completion_requests`: the original's per-call rows, newest first, at most `limit`."""
    check_names(query, PARAMETERS["/completion_requests"])
    selection = _compat_selection(query, datetime.now(UTC))
    limit = whole_number(query, "limit", compat.DEFAULT_LIMIT, 1, compat.MAX_LIMIT)
    try:
        page = read(location, lambda src: load_calls(src, selection, 1, limit))
    except NothingYet:
        return Reply(200, [], {"X-Total-Count": "0"})
    return Reply(200, [compat.completion_request(c) for c in page.calls], {"X-Total-Count": str(page.total)})


ENDPOINTS: dict[str, Callable[[str, Query], Reply]] = {
    "/api/report": report,
    "/api/calls": calls,
    "/api/timeline": timeline,
    "/health": health,
    "/metrics": metrics,
    "/completion_requests": completion_requests,
}

