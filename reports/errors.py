"""Errors by status code and error_type: how many, when last seen, and a sample message."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from addon.redact import redact

from . import fmt
from .layout import Column, FitTable
from .selection import TABLE, Selection
from .source import Source
from .stored import STATUS_CODE, text, time_like, utc

SAMPLE_CHARS = 300  # of a sample message kept in the data; the table shortens it further


@dataclass
class ErrorKind:
    status_code: int | None
    error_type: str | None
    count: int
    last_seen_utc: str | None  # None: no call of this kind has a timestamp that is a time
    sample_message: str | None  # the message of the most recent call of this kind


@dataclass
class Errors:
    kinds: list[ErrorKind]  # most frequent first, at most --top
    total_kinds: int
    total_errors: int

    def as_dict(self) -> dict:
        return {
            "total_errors": self.total_errors,
            "total_kinds": self.total_kinds,
            "kinds": [asdict(k) for k in self.kinds],
        }


def load_errors(src: Source, selection: Selection, top: int) -> Errors:
    where, params = selection.where(src.param, "NOT success")
    # A status code that is not a whole number from 0 to 999 reads as none (`reports.stored`).
    kinds = src.rows(
        f"SELECT {STATUS_CODE}, error_type, count(*), max(CASE WHEN {time_like('timestamp')} THEN timestamp END) "
        f"FROM {TABLE}{where} GROUP BY 1, 2",
        params,
    )
    # Most frequent first, then most recent, then by code and type (stable sorts, last key first).
    kinds.sort(key=lambda k: (k[0] is None, k[0] or 0, text(k[1]) or ""))
    kinds.sort(key=lambda k: _time(k[3]) or "", reverse=True)
    kinds.sort(key=lambda k: k[2], reverse=True)
    shown = [
        ErrorKind(code, text(kind), int(n), _time(last), _sample(src, selection, code, kind, last))
        for code, kind, n, last in kinds[:top]
    ]
    return Errors(shown, len(kinds), sum(int(k[2]) for k in kinds))


def _time(stored) -> str | None:
    return stored if utc(stored) is not None else None


def _sample(src: Source, selection: Selection, code: int | None, kind, last) -> str | None:
    """The latest message of this kind; the timestamp index finds its row directly (`last`, the
    kind's latest stored timestamp; None when none is a time: then the latest row)."""
    p = src.param
    match = [
        *([f"timestamp = {p}"] if last is not None else []),
        f"{STATUS_CODE} IS NULL" if code is None else f"{STATUS_CODE} = {p}",
        "error_type IS NULL" if kind is None else f"error_type = {p}",
        "NOT success",
    ]
    where, params = selection.where(p, *match)
    # The match terms come after the selection's own terms in the SQL: parameters in that order.
    params += [v for v in (last, code, kind) if v is not None]
    row = src.one(f"SELECT error_message FROM {TABLE}{where} ORDER BY error_message IS NULL, id DESC LIMIT 1", params)
    message = text(row[0]) if row else None
    # Rows stored before messages were redacted on the way in may still hold a key.
    return redact(message)[:SAMPLE_CHARS] if message else message


def render_errors(errors: Errors) -> FitTable:
    more = errors.total_kinds - len(errors.kinds)
    kinds = errors.kinds
    columns = [
        Column("status", ["-" if k.status_code is None else str(k.status_code) for k in kinds], keep=90),
        Column("error_type", [k.error_type or "-" for k in kinds], keep=100, numeric=False, min_width=16),
        Column("count", [fmt.count(k.count) for k in kinds], keep=95),
        Column("last seen (UTC)", [fmt.when(k.last_seen_utc) for k in kinds], keep=80, numeric=False, min_width=19),
        Column("sample message", [_one_line(k.sample_message) for k in kinds], keep=70, numeric=False, min_width=20),
    ]
    caption = f"{more} more kind(s) not shown (--top)" if more > 0 else None
    return FitTable(f"Errors ({fmt.count(errors.total_errors)})", columns, caption)


def _one_line(message: str | None, limit: int = 120) -> str:
    text = " ".join((message or "-").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
