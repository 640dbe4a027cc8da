"""How numbers and stored text look in the text report (JSON and CSV carry them unformatted)."""

from __future__ import annotations

# Re-exported: the report writes stored text and errors as the commands do.
from addon.cli import one_line as one_line, printable as printable

NONE = "-"


def count(n: int | None) -> str:
    return NONE if n is None else f"{n:,}"


def compact(n: int | float | None) -> str:
    """Token counts in a narrow column: 9,999 then 3 significant digits, 12.3k, 4.56M, 789G."""
    if n is None:
        return NONE
    if abs(n) < 10_000:
        return f"{n:,}"
    for divisor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= divisor:
            text = f"{n / divisor:.3g}"
            return (f"{n / divisor:,.0f}" if "e" in text else text) + suffix
    return f"{n:,}"


def ms(value: int | float | None) -> str:
    return NONE if value is None else f"{value:,.0f}"


def decimal(value: float | None, places: int = 1) -> str:
    return NONE if value is None else f"{value:,.{places}f}"


def share(part: int, whole: int) -> str:
    return NONE if not whole else f"{part / whole:.1%}"


def usd(value: float | None) -> str:
    if value is None:
        return NONE
    return f"${value:,.2f}" if abs(value) >= 1 or value == 0 else f"${value:.4f}"


AT_LEAST = "≥"
ABOUT = "~"
COST_NOTE = f"cost {AT_LEAST}$x: the priced calls cost $x, some others are unpriced; {NONE}: no call priced"
ESTIMATED_NOTE = f"{ABOUT}: includes estimated usage (streams that reported none: usage_source estimated)"


def cost(value: float | None, unpriced_calls: int | None, estimated_calls: int = 0) -> str:
    """A cost that leaves out unpriced calls says so: at least this much; one that includes
    calls with estimated usage says that too: about this much."""
    return about(estimated_calls if value is not None else 0) + (AT_LEAST if value is not None and unpriced_calls else "") + usd(value)


def about(estimated_calls: int | None) -> str:
    """`~` before a sum that includes estimated counts (addon/estimate.py)."""
    return ABOUT if estimated_calls else ""


def when(utc: str | None) -> str:
    """`2026-11-22T14:03:07.123456Z` -> `2026-11-22 14:03:07`."""
    return NONE if utc is None else utc[:19].replace("T", " ")
