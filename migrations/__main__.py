"""`python -m migrations`: the metrics database's schema version, upgrades and backups.

    status     current and target version, pending steps (exit 1 when steps are pending)
    upgrade    apply pending steps (a verified backup is taken first)
    backup     take a verified backup now
    backups    list backups with sizes and times
    restore    replace the database with a backup (a safety backup is taken first)
    verify     full integrity check and schema check
    prune      delete calls older than --older-than AGE (90d, 12w), keeping their daily totals
               (a verified backup first; --dry-run says what it would do)
    reprice    recompute cost_usd of stored rows (after an upgrade of the price data, or with
               --prices FILE: your own prices ahead of genai-prices)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import peewee

from addon.cli import ArgumentParser, add_db_argument, one_line
from storage.db import (
    NotSQLiteError,
    default_location,
    display_location,
    enable_wal,
    hide_password,
    open_database,
    sqlite_path,
)

from .backup import DEFAULT_KEEP, PARTIAL, BackupError, check_file, list_backups, list_incomplete, make_backup, restore
from .registry import STEPS
from .runner import CURRENT_SCHEMA_VERSION, MigrationError, current_version, pending, upgrade
from .schema import differences, promised, snapshot


def _keep(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


class UsageError(Exception):
    """Bad input: reported as one `error:` line, exit 2."""


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m migrations", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    for name in ("status", "upgrade", "backup", "backups", "restore", "verify", "reprice", "prune"):
        cmd = sub.add_parser(name)
        add_db_argument(cmd)
        if name in ("upgrade", "backup", "restore", "prune"):
            cmd.add_argument("--keep", type=_keep, default=DEFAULT_KEEP, help=f"backups to keep (default {DEFAULT_KEEP})")
        if name == "restore":
            cmd.add_argument("file", type=Path, help="the backup file to restore")
        if name == "prune":
            cmd.add_argument("--older-than", metavar="AGE", required=True, type=_age,
                             help="delete calls that started more than AGE ago: 90d, 12w")
            cmd.add_argument("--dry-run", action="store_true", help="say what would be deleted; change nothing")
            cmd.add_argument("--no-vacuum", action="store_true", help="SQLite: leave the freed space in the file")
            cmd.add_argument("--no-backup", action="store_true",
                             help="no backup first (PostgreSQL needs it: take a pg_dump yourself)")
        if name == "reprice":
            cmd.add_argument("--prices", metavar="FILE", help="a TOML prices file (as llm_metrics_prices) ahead of genai-prices")
    return parser


def _open(location: str, *, create: bool = False) -> peewee.Database:
    try:
        db = open_database(location, create=create, wal=False)  # never changes the file by itself
        db.connect(reuse_if_open=True)  # a server database: refused, unknown host, bad credentials
        return db
    except FileNotFoundError:
        raise UsageError(f"no database at {location}") from None
    except (NotSQLiteError, peewee.DatabaseError) as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:  # not a file we may open: permissions, a directory
        raise UsageError(f"cannot open {location}: {exc.strerror or exc}") from None
    except RuntimeError as exc:  # playhouse.db_url: a scheme it does not know
        raise UsageError(f"cannot open {location}: {exc}") from None


def _sqlite_file(location: str, what: str) -> Path:
    path = sqlite_path(location)
    if path is None:
        raise UsageError(f"{what} works on SQLite files; for PostgreSQL use pg_dump / pg_restore")
    if not path.exists():
        raise UsageError(f"no database at {location}")
    return path


def cmd_status(args) -> int:
    path = sqlite_path(args.location)
    if path is not None and not path.exists():
        print(f"no database at {args.location} yet: the proxy creates it at version {CURRENT_SCHEMA_VERSION}")
        return 0
    db = _open(args.location)
    todo = pending(db)
    print(f"database {display_location(args.location)}: schema version {current_version(db)}, this build's is {CURRENT_SCHEMA_VERSION}")
    for step in todo:
        print(f"  pending: {step.version} {step.name}: {step.description}")
    if not todo:
        print("  up to date")
    return 1 if todo else 0


def cmd_upgrade(args) -> int:
    db = _open(args.location, create=True)
    result = upgrade(db, keep_backups=args.keep)
    enable_wal(db)
    if result.backup:
        print(f"backup: {result.backup}")
    if result.adopted:
        print(result.adopted)
    for step in result.applied:
        print(f"applied {step.version} {step.name}")
    print(f"schema version {current_version(db)}")
    return 0


def cmd_backup(args) -> int:
    print(make_backup(_sqlite_file(args.location, "backup"), keep=args.keep))
    return 0


def cmd_backups(args) -> int:
    path = sqlite_path(args.location)
    if path is None:
        raise UsageError("backups are listed for SQLite files; for PostgreSQL use pg_dump")
    found = list_backups(path)
    if not found:
        print(f"no backups of {path}")
    for b in found:
        print(f"{b.modified_utc}  {b.size_bytes:>12,} bytes  {b.path}")
    for b in list_incomplete(path):
        print(f"incomplete            {b.size_bytes:>12,} bytes  {b.path}  (not a backup: interrupted, or still "
              "being written; the next backup removes an interrupted one)")
    return 0


def cmd_restore(args) -> int:
    path = sqlite_path(args.location)
    if path is None:
        raise UsageError("restore works on SQLite files; for PostgreSQL use pg_restore")
    if not args.file.is_file():
        raise UsageError(f"no backup file at {args.file}")
    if PARTIAL in args.file.name:
        raise UsageError(f"{args.file} is not a backup: one that was interrupted, or is still being written")
    safety = restore(path, args.file, keep=args.keep)
    if safety:
        print(f"safety backup of the replaced contents: {safety}")
    print(f"restored {path} from {args.file}")
    return 0


def cmd_verify(args) -> int:
    db = _open(args.location)
    problems = []
    path = sqlite_path(args.location)
    if path is not None:
        try:
            check_file(path)
        except BackupError as exc:
            problems.append(str(exc))
    expected = promised({}, [p for s in STEPS if s.version <= current_version(db) for p in s.promises])
    found = differences(snapshot(db), expected)
    # Columns the original project or the user added are kept, not a fault.
    problems += [p for p in found if not p.endswith("was not expected")]
    for note in (p for p in found if p.endswith("was not expected")):
        print(f"note: {note} (kept)")
    for problem in problems:
        print(f"problem: {problem}")
    print("ok" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


def cmd_reprice(args) -> int:
    from addon.prices import PriceFileError, load_prices

    from .reprice import reprice  # imports the price data: only this command needs it

    try:
        book = load_prices(args.prices) if args.prices else None
    except PriceFileError as exc:
        raise UsageError(str(exc)) from None
    db = _open(args.location)
    if pending(db):
        raise UsageError("the database has pending migrations: run python -m migrations upgrade first")
    print(f"repriced: {reprice(db, book)} row(s) changed cost_usd or price_source")
    return 0


def _age(text: str) -> str:
    from .prune import cutoff

    try:
        cutoff(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def cmd_prune(args) -> int:
    from . import prune as retention

    cut = retention.cutoff(args.older_than)
    path = sqlite_path(args.location)
    if path is None and not (args.no_backup or args.dry_run):
        raise UsageError("prune makes a verified backup of SQLite files only: for PostgreSQL take a pg_dump, "
                         "then run again with --no-backup")
    db = _open(args.location)
    if pending(db):
        raise UsageError("the database has pending migrations: run python -m migrations upgrade first")
    todo = retention.plan(db, cut)
    span = f" ({(todo.first_utc or '')[:10]} to {(todo.last_utc or '')[:10]}, {todo.days} day(s))" if todo.rows else ""
    if args.dry_run:
        print(f"would delete {todo.rows} call(s) older than {cut}{span}, keeping their daily totals")
        return 0
    if not todo.rows:
        print(f"nothing to delete: no call is older than {cut}")
        return 0
    if path is not None and not args.no_backup:
        try:
            print(f"backup: {make_backup(path, keep=args.keep)}")
        except BackupError as exc:
            raise UsageError(f"no backup could be made, nothing was deleted: {exc}") from None
    done = retention.prune(db, cut)
    print(f"deleted {done.rows} call(s) older than {cut}{span}; daily totals kept in {len(done.totals_rows)} row(s)")
    if path is not None and not args.no_vacuum:
        before = path.stat().st_size
        retention.vacuum(db)
        after = path.stat().st_size
        if after < before:
            print(f"vacuumed: {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB")
        else:  # WAL: the smaller file is written at a checkpoint, which a proxy's open connection can put off
            print(f"vacuumed: the file ({before / 2**20:.1f} MiB) shrinks at the next checkpoint")
    return 0


COMMANDS = {
    "status": cmd_status,
    "upgrade": cmd_upgrade,
    "backup": cmd_backup,
    "backups": cmd_backups,
    "restore": cmd_restore,
    "verify": cmd_verify,
    "reprice": cmd_reprice,
    "prune": cmd_prune,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.location = args.db or default_location()
    try:
        return COMMANDS[args.command](args)
    except (UsageError, MigrationError, BackupError, NotSQLiteError, ValueError, peewee.DatabaseError) as exc:
        # A server's message (a refused connection, say) is one line too, and never shows the password.
        print(f"error: {one_line(hide_password(str(exc), args.location))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
