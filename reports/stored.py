"""What the report reads of a stored value, whatever the database holds.

SQLite lets any column hold any type: text or a blob in a number column, a number past 2**63 as
a real, an infinity; PostgreSQL keeps NaN and infinities in float columns. Whatever a row holds,
the report reads what it can, treats the rest as unknown (as it treats NULL), and never sums or
ranks a value it cannot trust:

- A measure (a duration, a token count, tokens/s, a cost, a count of dropped rows) is known when
  it is a number from 0 to MAX_STORED. `measure(column)` is that test in SQL both databases run
  alike: SQLite sorts text and blobs after every number, so the upper bound leaves them out with
  the infinities, and NaN (PostgreSQL sorts it above them) fails it too.
- Sums of integers are exact: SQLite's sum() fails with "integer overflow" past 2**63 - 1 (two
  calls of 2**62 tokens are enough), so `exact_sum_sql` sums the two 32-bit halves of each value,
  which cannot overflow before 2**32 rows, and `exact_sum` puts them together in Python.
- A time is text in the row's form (2026-11-22T14:03:07.123456Z): `time_like(column)` keeps the
  values that start like a date, `utc` reads one.
- Text (model, origin, error_type, …) is what was stored; a blob is shown as SQLite writes one,
  X'…' in hex, so it stays apart from the text it might decode to.
"""

from __future__ import annotations

from datetime import UTC, datetime

MAX_STORED = 2**63 - 1  # the largest SQLite integer, and PostgreSQL's bigint
_HALF = 2**32

# A status code as a whole number (0 included: the original proxy stored 0 for "no response").
STATUS_CODE = "CASE WHEN status_code >= 0 AND status_code <= 999 THEN CAST(status_code AS INTEGER) END"
# A success flag read the same way wherever it is used (`CASE WHEN success` in the totals).
SUCCESS = "CASE WHEN success THEN 1 ELSE 0 END"


def measure(column: str) -> str:
    """SQL: whether `column` holds a known measure."""
    return f"({column} >= 0 AND {column} <= {MAX_STORED})"


def known(column: str) -> str:
    """SQL: `column` when it holds a known measure, else NULL."""
    return f"CASE WHEN {measure(column)} THEN {column} END"


def exact_sum_sql(column: str) -> tuple[str, str]:
    """SQL: the sums of the high and low 32 bits of the known values of an integer column."""
    value = f"CASE WHEN {measure(column)} THEN CAST({column} AS BIGINT) END"
    high = f"{value} / {_HALF}"
    return f"sum({high})", f"sum({value} - {high} * {_HALF})"  # no `%`: psycopg's placeholder


def exact_sum(high, low) -> int:
    """`exact_sum_sql`'s two sums (NULL for none; PostgreSQL's sum(bigint) is a Decimal) as one."""
    return int(high or 0) * _HALF + int(low or 0)


def time_like(column: str) -> str:
    """SQL: whether `column` starts like a date (any character per place: LIKE's `_`). No `%`
    in the pattern: psycopg would read it as a placeholder."""
    return f"substr({column}, 1, 10) LIKE '____-__-__'"


def utc(value) -> datetime | None:
    """A stored time in UTC (UTC unless it says otherwise); None if it is not one."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    except (ValueError, OverflowError):  # OverflowError: year 1 or 9999 once in UTC
        return None


def text(value) -> str | None:
    """A stored text value as text: a blob as X'…', a number as it reads."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return f"X'{value.hex().upper()}'"
    return str(value)
