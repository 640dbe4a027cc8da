"""What `--compare` shows of one figure: its value now and in the previous window, and the
change. Data and its text form only; `reports.compare` loads the two windows.

Unknown stays unknown: where either side is unknown (no call measured, none priced), there is no
change, in JSON (`null`), CSV (empty) and text (nothing shown).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, StrEnum

MINUS = "−"  # U+2212: a fall, never to be read as fmt.NONE's "-" (unknown)


class Kind(Enum):
    """How a change is shown in text."""

    RELATIVE = "relative"  # counts, tokens, cost: +12%
    POINTS = "points"  # a rate: +0.4 pp
    MS = "ms"  # a duration: −30 ms


@dataclass(frozen=True)
class Figure:
    name: str  # JSON and CSV name
    kind: Kind
    of: Callable  # GroupRow -> its value (None: unknown)


def _error_rate(row) -> float | None:
    return row.errors / row.requests if row.requests else None


FIGURES = (
    Figure("requests", Kind.RELATIVE, lambda r: r.requests),
    Figure("error_rate", Kind.POINTS, _error_rate),
    Figure("latency_p50_ms", Kind.MS, lambda r: r.latency_ms.get("p50")),
    Figure("latency_p95_ms", Kind.MS, lambda r: r.latency_ms.get("p95")),
    Figure("ttft_p50_ms", Kind.MS, lambda r: r.ttft_ms.get("p50")),
    Figure("ttft_p95_ms", Kind.MS, lambda r: r.ttft_ms.get("p95")),
    Figure("prompt_tokens", Kind.RELATIVE, lambda r: r.prompt_tokens),
    Figure("completion_tokens", Kind.RELATIVE, lambda r: r.completion_tokens),
    Figure("cost_usd", Kind.RELATIVE, lambda r: r.cost_usd),
)
KINDS = {f.name: f.kind for f in FIGURES}


@dataclass(frozen=True)
class Change:
    current: float | None
    previous: float | None
    change: float | None  # current - previous; None: either is unknown
    change_ratio: float | None  # change / previous; None: either is unknown, or previous is 0


def change(current: float | None, previous: float | None) -> Change:
    if current is None or previous is None:
        return Change(current, previous, None, None)
    diff = current - previous
    return Change(current, previous, diff, diff / previous if previous else None)


class Presence(StrEnum):
    BOTH = "both"  # calls in both windows
    NEW = "new"  # calls now, none in the previous window
    VANISHED = "vanished"  # calls in the previous window, none now


@dataclass
class Changes:
    """Every compared figure of the overview or of one group. Field names are FIGURES' names."""

    requests: Change
    error_rate: Change
    latency_p50_ms: Change
    latency_p95_ms: Change
    ttft_p50_ms: Change
    ttft_p95_ms: Change
    prompt_tokens: Change
    completion_tokens: Change
    cost_usd: Change


@dataclass
class RowChange(Changes):
    presence: Presence = Presence.BOTH


def _values(current_row, previous_row) -> dict[str, Change]:
    return {f.name: change(f.of(current_row), f.of(previous_row)) for f in FIGURES}


def changes_of(current_row, previous_row) -> Changes:
    """The change of each figure from `previous_row` to `current_row` (two GroupRows)."""
    return Changes(**_values(current_row, previous_row))


def row_change(current_row, previous_row, presence: Presence) -> RowChange:
    return RowChange(**_values(current_row, previous_row), presence=presence)


def text(name: str, c: Change, *, unit: bool = True) -> str:
    """`+12%`, `−0.4 pp`, `+30 ms` (`unit=False`: `+30`, for a column headed in ms); "" when
    there is no change to show. A count that was 0 changes by a number, not a ratio: `+5`."""
    if c.change is None:
        return ""
    kind = KINDS[name]
    if kind is Kind.POINTS:
        points = abs(c.change) * 100
        return _signed(f"{points:.1f}" if points < 10 else f"{points:.0f}", c.change) + (" pp" if unit else "pp")
    if kind is Kind.MS:
        return _signed(f"{abs(c.change):,.0f}", c.change) + (" ms" if unit else "")
    if c.change_ratio is None:  # from 0
        return "±0" if not c.change else _signed(_amount(name, abs(c.change)), c.change)
    ratio = abs(c.change_ratio)
    return _signed(f"{ratio:.1%}" if ratio < 0.1 else f"{ratio:,.0%}", c.change_ratio)


def _signed(magnitude: str, value: float) -> str:
    if value > 0:
        return "+" + magnitude
    return MINUS + magnitude if value < 0 else "±" + magnitude


def _amount(name: str, value: float) -> str:
    return f"${value:,.2f}" if name == "cost_usd" else f"{value:,.0f}"
