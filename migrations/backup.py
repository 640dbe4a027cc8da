"""Verified file backups of a SQLite metrics database: make, list, prune, restore.

Copies are taken with SQLite's online backup API inside one read transaction, never by copying
the file of a live database, and each is checked (`PRAGMA integrity_check`, equal row counts)
before anything relies on it.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

DEFAULT_KEEP = 10
FALLBACK_DIR = "~/.llm_metrics_proxy/backups"
SUFFIX = ".backup"


class BackupError(RuntimeError):
    """No verified backup could be made (or a backup file is not sound)."""


@dataclass(frozen=True)
class BackupFile:
    path: Path
    size_bytes: int
    modified_utc: str


def backup_dirs(db_path: Path) -> list[Path]:
    """Where backups go: beside the database, else the per-user fallback."""
    return [db_path.parent / "backups", Path(FALLBACK_DIR).expanduser()]


def backup_name(db_path: Path, when: datetime) -> str:
    return f"{db_path.name}.{when:%Y%m%d_%H%M%S}_{when.microsecond // 1000:03d}{SUFFIX}"


def make_backup(db_path: Path, *, keep: int = DEFAULT_KEEP) -> Path:
    """A verified copy of `db_path`; the first directory that works is used. Raises BackupError."""
    failures = []
    for directory in backup_dirs(db_path):
        target = None
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            target = _new_file(directory, db_path)
            counts = _copy(db_path, target)
            check_file(target, counts)
            prune(db_path, keep=keep, directory=directory)
            return target
        except (OSError, sqlite3.Error, BackupError) as exc:
            failures.append(f"{directory}: {exc}")
            if target is not None:
                target.unlink(missing_ok=True)
    raise BackupError("; ".join(failures))


def _new_file(directory: Path, db_path: Path) -> Path:
    """Creates the backup file, readable by its owner only (it holds the user's data)."""
    while True:
        target = directory / backup_name(db_path, datetime.now(UTC))
        try:
            os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            return target
        except FileExistsError:
            continue  # two backups in one millisecond: take the next name


def _copy(source: Path, target: Path) -> dict[str, int]:
    """Online backup of `source` into `target`; returns the row counts of the copied snapshot."""
    src = sqlite3.connect(source, timeout=30)
    dst = sqlite3.connect(target)
    try:
        src.execute("BEGIN")  # one snapshot for both the counts and the copy
        counts = _counts(src)
        src.backup(dst)
        src.execute("COMMIT")
        dst.execute("PRAGMA journal_mode=DELETE")  # a self-contained file, no -wal beside it
        return counts
    finally:
        src.close()
        dst.close()


def _counts(con: sqlite3.Connection) -> dict[str, int]:
    tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
    return {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}


def check_file(path: Path, expected_counts: dict[str, int] | None = None) -> dict[str, int]:
    """Integrity and, if given, row counts of a database file; returns its counts."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        result = [r[0] for r in con.execute("PRAGMA integrity_check")]
        if result != ["ok"]:
            raise BackupError(f"{path.name} fails integrity_check: {'; '.join(result[:3])}")
        counts = _counts(con)
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{path.name} is not a sound SQLite database: {exc}") from exc
    finally:
        con.close()
    if expected_counts is not None and counts != expected_counts:
        raise BackupError(f"{path.name} has row counts {counts}, the database had {expected_counts}")
    return counts


def list_backups(db_path: Path) -> list[BackupFile]:
    """Backups of this database in every backup directory, newest first."""
    found = []
    for directory in backup_dirs(db_path):
        for path in directory.glob(f"{db_path.name}.*{SUFFIX}") if directory.is_dir() else []:
            stat = path.stat()
            modified = datetime.fromtimestamp(stat.st_mtime, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            found.append(BackupFile(path, stat.st_size, modified))
    return sorted(found, key=lambda b: b.path.name, reverse=True)


def prune(db_path: Path, *, keep: int, directory: Path) -> list[Path]:
    """Deletes all but the newest `keep` backups of this database in `directory`."""
    if keep < 1:
        raise ValueError("keep must be at least 1")
    mine = sorted(directory.glob(f"{db_path.name}.*{SUFFIX}"), key=lambda p: p.name, reverse=True)
    for old in mine[keep:]:
        old.unlink(missing_ok=True)
    return mine[keep:]


def restore(db_path: Path, backup: Path, *, keep: int = DEFAULT_KEEP) -> Path | None:
    """Replaces the contents of `db_path` with `backup`, after a safety backup of the current
    contents (returned; None when there was no database). Stop the proxy first."""
    counts = check_file(backup)
    safety = make_backup(db_path, keep=keep) if db_path.exists() else None
    src = sqlite3.connect(f"file:{backup}?mode=ro", uri=True)
    dst = sqlite3.connect(db_path, timeout=30)
    try:
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=WAL")
    finally:
        src.close()
        dst.close()
    check_file(db_path, counts)
    return safety
