"""Retention: delete the calls older than a cut, keeping their daily totals.

Rows go in batches, each one transaction that adds the batch to `daily_totals` (per UTC day,
model, provider and agent) and deletes it: the totals always equal the sums of what was deleted,
whenever a run stops, and a proxy writing to the same database waits at most one batch for the
lock (a pause between batches lets it in). Only rows whose `timestamp` is a time are candidates.

Sums follow the report's rule (`reports/stored.py`): a value is counted when it is a number from 0
to 2**63 - 1; a sum no deleted call reported stays NULL, never 0.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import peewee

TABLE = "completion_requests"
TOTALS = "daily_totals"
BATCH_ROWS = 5000
PAUSE_S = 0.05  # between batches: a running proxy's writer gets the database
_DELETE_CHUNK = 500  # ids per DELETE … IN (…): within every SQLite's parameter limit
_MAX_STORED = 2**63 - 1
_TIME_LIKE = "substr(timestamp, 1, 10) LIKE '____-__-__'"
_AGE = re.compile(r"^\s*(\d+)\s*([dw])\s*$")

_SELECT = (f"SELECT id, timestamp, model, provider, agent, success, is_streaming, prompt_tokens, completion_tokens, "
           f"cached_tokens, reasoning_tokens, cost_usd, response_time_ms, time_to_first_token_ms FROM {TABLE} ")
_SUMS = ("prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens", "cost_usd",
         "response_time_ms_sum", "ttft_ms_sum")
_COUNTS = ("requests", "errors", "streamed", "unpriced_calls", "response_time_count", "ttft_count")


def cutoff(age: str, now: datetime | None = None) -> str:
    """`90d` or `12w` before `now`, as the rows' timestamp text. ValueError says what is wrong."""
    match = _AGE.match(age)
    if not match or int(match.group(1)) < 1:
        raise ValueError(f"expected an age like 90d or 12w (at least 1 day), got {age!r}")
    days = int(match.group(1)) * (7 if match.group(2) == "w" else 1)
    if days > 100 * 366:
        raise ValueError(f"{age!r} is more than a hundred years")
    moment = (now or datetime.now(UTC)) - timedelta(days=days)
    # storage.timestamps.utc_text's form, written here: a migration module never imports storage.
    return f"{moment.year:04d}" + moment.strftime("-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Plan:
    rows: int  # calls older than the cut
    first_utc: str | None
    last_utc: str | None
    days: int  # UTC days they fall on


def plan(db: peewee.Database, cut: str) -> Plan:
    rows, first, last, days = db.execute_sql(
        f"SELECT count(*), min(timestamp), max(timestamp), count(DISTINCT substr(timestamp, 1, 10)) FROM {TABLE} "
        f"WHERE {_TIME_LIKE} AND timestamp < {db.param}", (cut,)).fetchone()
    return Plan(int(rows), first, last, int(days or 0))


@dataclass
class Pruned:
    rows: int = 0
    batches: int = 0
    totals_rows: set[tuple] = field(default_factory=set)  # the daily_totals keys touched
    stopped: bool = False  # asked to stop before the end


def prune(db: peewee.Database, cut: str, *, batch_rows: int = BATCH_ROWS, pause_s: float = PAUSE_S,
          stop: threading.Event | None = None, on_batch: Callable[[Pruned], None] | None = None) -> Pruned:
    """Deletes every call whose timestamp is before `cut`, batch by batch (see the module)."""
    done = Pruned()
    select = f"{_SELECT}WHERE {_TIME_LIKE} AND timestamp < {db.param} LIMIT {int(batch_rows)}"
    while True:
        if stop is not None and stop.is_set():
            done.stopped = True
            return done
        # SQLite: the write lock from the start (BEGIN IMMEDIATE). A read that then writes fails at
        # once when a proxy wrote in between, whatever the busy timeout.
        with db.atomic("IMMEDIATE") if isinstance(db, peewee.SqliteDatabase) else db.atomic():
            rows = db.execute_sql(select, (cut,)).fetchall()
            if not rows:
                return done
            totals = _add_up(rows)
            for key, values in totals.items():
                _merge(db, key, values)
            ids = [row[0] for row in rows]
            for start in range(0, len(ids), _DELETE_CHUNK):
                chunk = ids[start : start + _DELETE_CHUNK]
                db.execute_sql(f"DELETE FROM {TABLE} WHERE id IN ({', '.join([db.param] * len(chunk))})", chunk)
        done.rows += len(rows)
        done.batches += 1
        done.totals_rows.update(totals)
        if on_batch is not None:
            on_batch(done)
        if pause_s:
            time.sleep(pause_s)


def _known(value) -> int | float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if 0 <= value <= _MAX_STORED else None  # NaN fails too


def _add_up(rows) -> dict[tuple, dict]:
    totals: dict[tuple, dict] = {}
    for _, stamp, model, provider, agent, success, streamed, prompt, completion, cached, reasoning, cost, ms, ttft in rows:
        key = (stamp[:10], model, provider, agent)
        t = totals.get(key)
        if t is None:
            t = totals[key] = {**dict.fromkeys(_SUMS), **dict.fromkeys(_COUNTS, 0)}
        t["requests"] += 1
        t["errors"] += 0 if success else 1
        t["streamed"] += 1 if streamed else 0
        for name, value in (("prompt_tokens", prompt), ("completion_tokens", completion), ("cached_tokens", cached),
                            ("reasoning_tokens", reasoning), ("cost_usd", cost)):
            t[name] = _plus(t[name], _known(value))
        if success and _known(cost) is None:
            t["unpriced_calls"] += 1
        if _known(ms) is not None:
            t["response_time_ms_sum"] = _plus(t["response_time_ms_sum"], int(ms))
            t["response_time_count"] += 1
        if _known(ttft) is not None:
            t["ttft_ms_sum"] = _plus(t["ttft_ms_sum"], int(ttft))
            t["ttft_count"] += 1
    return totals


def _plus(total, value):
    if value is None:
        return total
    return value if total is None else total + value


def _merge(db: peewee.Database, key: tuple, values: dict) -> None:
    """Adds `values` to the totals row of `key`, or makes it."""
    p = db.param
    day, model, provider, agent = key
    terms, params = [f"day = {p}"], [day]
    for column, value in (("model", model), ("provider", provider), ("agent", agent)):
        if value is None:
            terms.append(f"{column} IS NULL")
        else:
            terms.append(f"{column} = {p}")
            params.append(value)
    names = (*_SUMS, *_COUNTS)
    found = db.execute_sql(f"SELECT id, {', '.join(names)} FROM {TOTALS} WHERE {' AND '.join(terms)} LIMIT 1",
                           params).fetchone()
    if found is None:
        columns = ("day", "model", "provider", "agent", *names)
        db.execute_sql(f"INSERT INTO {TOTALS} ({', '.join(columns)}) VALUES ({', '.join([p] * len(columns))})",
                       [day, model, provider, agent, *(values[n] for n in names)])
        return
    merged = [_plus(old, values[n]) for n, old in zip(names, found[1:])]
    db.execute_sql(f"UPDATE {TOTALS} SET {', '.join(f'{n} = {p}' for n in names)} WHERE id = {p}", [*merged, found[0]])


def vacuum(db: peewee.Database) -> None:
    """Gives the space of deleted rows back to the file system (SQLite; PostgreSQL's autovacuum
    reuses it by itself)."""
    if isinstance(db, peewee.SqliteDatabase):
        db.execute_sql("VACUUM")
        # In WAL mode the vacuumed file is written back at a checkpoint: ask for one now (it is put
        # off, harmlessly, while another connection still reads an older snapshot).
        db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
