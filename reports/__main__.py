"""`python -m reports`: what the proxy recorded, in the terminal. Opens the database read-only."""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys

import peewee
from rich.console import Console

from storage.db import default_location, sqlite_path

from .data import load_report
from .render import render


def _open_read_only(location: str) -> peewee.Database | None:
    path = sqlite_path(location)
    if path is None:
        from playhouse.db_url import connect

        return connect(location)
    if not path.exists():
        return None
    db = peewee.SqliteDatabase(f"file:{path}?mode=ro", uri=True)
    db.connect()
    return db


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reports", description=__doc__)
    parser.add_argument("--db", default=None, help="SQLite path or database URL (default: $LLM_METRICS_DB, else ~/.llm_metrics_proxy/metrics.db)")
    parser.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    args = parser.parse_args(argv)
    location = args.db or default_location()
    console = Console()
    db = _open_read_only(location)
    if db is None:
        print(f"No database at {location} yet: start the proxy (python3 dev.py run) and send it some LLM calls.")
        return 0
    try:
        if "completion_requests" not in db.get_tables():
            print(f"{location} holds no LLM calls yet: start the proxy (python3 dev.py run) and send it some.")
            return 0
        report = load_report(db, location)
    except (peewee.DatabaseError, sqlite3.DatabaseError) as exc:
        print(f"error: cannot read {location}: {exc}", file=sys.stderr)
        return 2
    if report.overview.requests == 0:
        print(f"{location} holds no LLM calls yet: start the proxy (python3 dev.py run) and send it some.")
        return 0
    if args.format == "json":
        print(json.dumps(report.as_dict(), indent=2))
    else:
        console.print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
