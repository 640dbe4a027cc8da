"""`llm_metrics_retention_days`: while the proxy runs, calls older than that many days are deleted
once a day, their daily totals kept (`migrations.prune`: batches, each its own short transaction,
so the writer waits at most one batch). A thread of the metering process, on a connection of its
own; no backup and no VACUUM here (SQLite reuses the freed pages): `python -m migrations prune` is
the command for a one-off with both.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from migrations.prune import prune
from storage.db import display_location, hide_password, open_database
from storage.timestamps import utc_text

log = logging.getLogger(__name__)

FIRST_RUN_S = 5.0  # after the metering starts: a proxy started after days off prunes at once
EVERY_S = 86_400.0


class Retention:
    """Prunes `location` every EVERY_S while `days()` is above 0."""

    def __init__(self, location: str, days: Callable[[], int], *, first_run_s: float = FIRST_RUN_S) -> None:
        self.location = location
        self.days = days
        self.first_run_s = first_run_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="llm-metrics-retention")

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Asks it to stop between batches (a batch under way finishes: its transaction is whole)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        wait = self.first_run_s
        while not self._stop.wait(wait):
            wait = EVERY_S
            days = self.days()
            if days > 0:
                self.prune_once(days)

    def prune_once(self, days: int) -> int | None:
        cut = utc_text(datetime.now(UTC) - timedelta(days=days))
        try:
            db = open_database(self.location, create=False)
            try:
                done = prune(db, cut, stop=self._stop)
            finally:
                db.close()
        except Exception as exc:  # the next day tries again; the traffic never notices
            log.warning("llm-metrics: retention: could not delete calls older than %d days from %s: %s", days,
                        display_location(self.location), hide_password(str(exc), self.location)[:300])
            return None
        if done.rows:
            log.info("llm-metrics: retention: deleted %d call(s) older than %d days (before %s), their daily "
                     "totals kept", done.rows, days, cut[:19].replace("T", " "))
        return done.rows
