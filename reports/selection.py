"""Which calls a report covers: the filters, turned into one portable SQL WHERE clause.

Times are compared as text: the proxy writes `timestamp` as fixed-width UTC
(`2026-11-22T14:03:07.123456Z`), so text order is time order on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from storage.timestamps import utc_text  # the rows' form: a bound compares with them as text

from .stored import time_like

TABLE = "completion_requests"

_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_when(text: str, now: datetime) -> str:
    """`15m`, `24h`, `7d`, `2w` before `now`, or an ISO date/time (UTC unless it has an offset).
    Raises ValueError with a message fit for `error: …`."""
    spec = text.strip()
    try:
        relative = _RELATIVE.match(spec)
        if relative:
            amount, unit = int(relative.group(1)), relative.group(2)
            return utc_text(now - timedelta(seconds=amount * _UNIT_SECONDS[unit]))
        moment = _iso(text, spec)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return utc_text(moment)
    except OverflowError:  # before year 1 or after 9999, once ago or in UTC
        raise ValueError(f"{text!r} is out of range: a time must fall between {FIRST_DAY} and {LAST_DAY} UTC") from None


FIRST_DAY, LAST_DAY = "0001-01-01", "9999-12-31"


def _iso(text: str, spec: str) -> datetime:
    try:
        return datetime.fromisoformat(spec.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: use a duration like 15m, 24h, 7d, 2w or an ISO time like "
            "2026-11-22 or 2026-11-22T14:00Z"
        ) from None


@dataclass(frozen=True)
class Selection:
    """The filters. Each tuple is "any of these"; empty means no filter on that column."""

    since_utc: str | None = None  # inclusive
    until_utc: str | None = None  # exclusive
    models: tuple[str, ...] = ()
    providers: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    origins: tuple[str, ...] = ()
    errors_only: bool = False
    agents: tuple[str, ...] = ()
    sessions: tuple[str, ...] = ()  # the agents' own session ids (`session_id`)
    streamed: bool | None = None  # only streamed (True) or only non-streamed (False) calls

    @property
    def is_everything(self) -> bool:
        return self == Selection()

    @property
    def filters_calls(self) -> bool:
        """Filters beyond the time range: they select calls by what was stored of them."""
        return bool(self.models or self.providers or self.hosts or self.origins or self.errors_only
                    or self.agents or self.sessions or self.streamed is not None)

    def time_terms(self, column: str, param: str) -> tuple[list[str], list]:
        """`--since`/`--until` as conditions on `column`, and their parameters. A stored value that
        is not a time is in no time range, though "garbage" sorts after every "2026-…"."""
        terms: list[str] = []
        params: list = []
        if self.since_utc is not None or self.until_utc is not None:
            terms.append(time_like(column))
        if self.since_utc is not None:
            terms.append(f"{column} >= {param}")
            params.append(self.since_utc)
        if self.until_utc is not None:
            terms.append(f"{column} < {param}")
            params.append(self.until_utc)
        return terms, params

    def where(self, param: str, *extra: str) -> tuple[str, list]:
        """` WHERE …` (or "") and its parameters; `param` is the driver's placeholder."""
        terms, params = self.time_terms("timestamp", param)
        for column, values in (
            ("model", self.models), ("provider", self.providers), ("host", self.hosts), ("origin", self.origins),
            ("agent", self.agents), ("session_id", self.sessions),
        ):
            if values:
                terms.append(f"{column} IN ({', '.join([param] * len(values))})")
                params.extend(values)
        if self.errors_only:
            terms.append("NOT success")
        if self.streamed is not None:
            terms.append("is_streaming" if self.streamed else "NOT is_streaming")
        terms.extend(extra)
        return (" WHERE " + " AND ".join(terms) if terms else ""), params

    def as_dict(self) -> dict:
        return {
            "since_utc": self.since_utc,
            "until_utc": self.until_utc,
            "model": list(self.models),
            "provider": list(self.providers),
            "host": list(self.hosts),
            "origin": list(self.origins),
            "errors_only": self.errors_only,
            "agent": list(self.agents),
            "session": list(self.sessions),
            "streamed": self.streamed,
        }
