"""Repricing stored rows after the price data was upgraded (a newer `genai-prices`), or with a
prices file (`addon.prices`).

`cost_usd` is computed when a call is recorded, from the counts in its row and the price data
installed then. The counts stay in the row (reported or estimated), so after an upgrade every cost
can be computed again the same way (`addon.pricing.price_call`, as of each call's own timestamp),
except a Realtime call's, whose audio part is not stored. Rows whose usage is missing keep NULL;
rows recorded before costs existed (schema versions 1 and 2) are priced too when their counts
allow it. Counts and every other column are left as they are.
"""

from __future__ import annotations

from datetime import UTC, datetime

import peewee

from addon.prices import PriceBook
from addon.pricing import price_call

TABLE = "completion_requests"
BATCH_ROWS = 1000

_SELECT = (
    f"SELECT id, provider, host, model, prompt_tokens, completion_tokens, cached_tokens, "
    f"cache_creation_tokens, operation, timestamp, cost_usd, price_source FROM {TABLE} "
    f"WHERE prompt_tokens IS NOT NULL AND (usage_source IN ('reported', 'estimated') OR usage_source IS NULL) "
    # A Realtime call's audio part, priced apart, is not stored: its cost cannot be made again.
    f"AND (operation IS NULL OR operation <> 'realtime') ORDER BY id"
)


def reprice(db: peewee.Database, book: PriceBook | None = None) -> int:
    """Recomputes `cost_usd` and `price_source` of every row with reported usage, from `book` (a
    prices file) first, then genai-prices; returns how many rows changed."""
    changes = [(cost, source, row_id) for row_id, cost, source, old in _priced(db, book) if (cost, source) != old]
    update = f"UPDATE {TABLE} SET cost_usd = {db.param}, price_source = {db.param} WHERE id = {db.param}"
    with db.atomic():
        for start in range(0, len(changes), BATCH_ROWS):
            for cost, source, row_id in changes[start : start + BATCH_ROWS]:
                db.execute_sql(update, (cost, source, row_id))
    return len(changes)


def _priced(db: peewee.Database, book: PriceBook | None):
    """(id, new cost, its source, (stored cost, stored source)) per row that could have a cost."""
    rows = db.execute_sql(_SELECT).fetchall()
    for row_id, provider, host, model, prompt, completion, cached, written, operation, stamp, old, old_source in rows:
        if completion is None and operation != "embeddings":
            continue  # a stream cut before its usage: not a report, never priced
        cost, source = price_call(provider=provider, host=host, model=model, prompt_tokens=prompt,
                                  completion_tokens=completion, cached_tokens=cached, cache_creation_tokens=written,
                                  at=_when(stamp), book=book)
        if cost is not None and cost < 0:  # counts that do not add up
            cost, source = None, None
        yield row_id, cost, source, (old, old_source)


def _when(timestamp: str | None) -> datetime | None:
    """A row's `timestamp` as an aware datetime (None, meaning now, if it cannot be read)."""
    try:
        when = datetime.fromisoformat((timestamp or "").replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)
