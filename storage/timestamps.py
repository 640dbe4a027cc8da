"""The one text form of every timestamp the database holds."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_text(moment: float | datetime) -> str:
    """`2026-11-22T14:03:07.123456Z`, from epoch seconds or an aware datetime: UTC and fixed width,
    so rows sort and compare as text. The year is padded: strftime's %Y gives "999", not "0999",
    for years before 1000, which would sort after "2026"."""
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, UTC)
    moment = moment.astimezone(UTC)
    return f"{moment.year:04d}" + moment.strftime("-%m-%dT%H:%M:%S.%fZ")
