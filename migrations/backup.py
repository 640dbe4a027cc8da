"""Verified file backups of a SQLite metrics database: make, list, prune, restore.

Copies are taken with SQLite's online backup API inside one read transaction, never by copying
the file of a live database, and each is checked (`PRAGMA integrity_check`, equal row counts)
before anything relies on it. A copy is written under a temporary name (`….backup.partial`) and
takes its name only once checked: a run killed midway leaves a partial file that is never listed
as a backup, and that the next backup of the same database removes.
"""

from __future__ import annotations

import os
import re
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: partial files are listed as incomplete, never removed
    fcntl = None  # type: ignore[assignment]

DEFAULT_KEEP = 10
FALLBACK_DIR = "~/.llm_metrics_proxy/backups"
SUFFIX = ".backup"
PARTIAL = ".partial"  # a copy being written or checked, or left by a run that was killed
_STAMP = r"\d{8}_\d{6}_\d{3}"
_SQLITE_HEADER = b"SQLite format 3\x00"


class BackupError(RuntimeError):
    """No verified backup could be made (or a backup file is not sound)."""


@dataclass(frozen=True)
class BackupFile:
    path: Path
    size_bytes: int
    modified_utc: str

    @classmethod
    def of(cls, path: Path) -> BackupFile:
        stat = path.stat()
        return cls(path, stat.st_size, datetime.fromtimestamp(stat.st_mtime, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))


def backup_dirs(db_path: Path) -> list[Path]:
    """Where backups go: beside the database, else the per-user fallback."""
    return [db_path.parent / "backups", Path(FALLBACK_DIR).expanduser()]


def backup_name(db_path: Path, when: datetime) -> str:
    return f"{db_path.name}.{when:%Y%m%d_%H%M%S}_{when.microsecond // 1000:03d}{SUFFIX}"


def make_backup(db_path: Path, *, keep: int = DEFAULT_KEEP) -> Path:
    """A verified copy of `db_path`; the first directory that works is used. Raises BackupError."""
    failures = []
    for directory in backup_dirs(db_path):
        partial = fd = None
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            remove_abandoned(db_path, directory)
            target, partial, fd = _new_file(directory, db_path)
            counts = _copy(db_path, partial)
            check_file(partial, counts)
            _publish(partial, target)
            partial = None
            prune(db_path, keep=keep, directory=directory)
            return target
        except (OSError, sqlite3.Error, BackupError) as exc:
            failures.append(f"{directory}: {exc}")
            if partial is not None:
                _remove_partial(partial)
        finally:
            if fd is not None:
                os.close(fd)  # lets go of the lock that says the partial file is being written
    raise BackupError("; ".join(failures))


def _new_file(directory: Path, db_path: Path) -> tuple[Path, Path, int]:
    """The backup's name, and its partial file, created readable by its owner only (it holds the
    user's data) and locked for as long as the returned descriptor stays open."""
    while True:
        target = directory / backup_name(db_path, datetime.now(UTC))
        partial = target.with_name(target.name + PARTIAL)
        if target.exists():
            continue  # two backups in one millisecond: take the next name
        try:
            fd = os.open(partial, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        except FileExistsError:
            continue
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)  # flock, not SQLite's fcntl locks: the two never meet
        return target, partial, fd


def _publish(partial: Path, target: Path) -> None:
    """The checked copy takes its name: on disk first, so a crash cannot leave a name on a file
    whose pages never reached the disk."""
    with open(partial, "rb+") as f:
        os.fsync(f.fileno())
    os.rename(partial, target)
    try:
        dir_fd = os.open(target.parent, os.O_RDONLY)
    except OSError:
        return  # a directory that cannot be opened (not POSIX): the rename stands
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _remove_partial(partial: Path) -> None:
    for leftover in (partial, *(partial.with_name(partial.name + s) for s in ("-journal", "-wal", "-shm"))):
        leftover.unlink(missing_ok=True)


def remove_abandoned(db_path: Path, directory: Path) -> list[Path]:
    """Removes the partial files of backups of this database whose run is over (killed midway):
    no process holds their lock. One still being written elsewhere is left alone."""
    removed = []
    for partial in _partials(db_path, directory):
        if _abandoned(partial):
            _remove_partial(partial)
            removed.append(partial)
    return removed


def _abandoned(partial: Path) -> bool:
    if fcntl is None:
        return False
    try:
        fd = os.open(partial, os.O_RDONLY)
    except FileNotFoundError:
        return True  # its journal alone is left
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False  # its run still holds it
    finally:
        os.close(fd)


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
    con = None
    try:
        # Read-only: a file with a journal beside it (a copy cut short) cannot even be opened so.
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        result = [r[0] for r in con.execute("PRAGMA integrity_check")]
        if result != ["ok"]:
            raise BackupError(f"{path.name} fails integrity_check: {'; '.join(result[:3])}")
        counts = _counts(con)
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{path.name} is not a sound SQLite database: {exc}") from exc
    finally:
        if con is not None:
            con.close()
    if expected_counts is not None and counts != expected_counts:
        raise BackupError(f"{path.name} has row counts {counts}, the database had {expected_counts}")
    return counts


def list_backups(db_path: Path) -> list[BackupFile]:
    """Backups of this database in every backup directory, newest first: complete ones only."""
    found = [BackupFile.of(p) for d in backup_dirs(db_path) for p in _named(db_path, d) if _looks_complete(p)]
    return sorted(found, key=lambda b: b.path.name, reverse=True)


def list_incomplete(db_path: Path) -> list[BackupFile]:
    """Files of this database's backups that are not backups: a copy being written or checked,
    or left by a run that was killed (or by an older build, under a backup's name)."""
    found = []
    for directory in backup_dirs(db_path):
        found += [BackupFile.of(p) for p in _partials(db_path, directory) if p.exists()]
        found += [BackupFile.of(p) for p in _named(db_path, directory) if not _looks_complete(p)]
    return sorted(found, key=lambda b: b.path.name, reverse=True)


def _named(db_path: Path, directory: Path) -> list[Path]:
    """Files named as this database's backups: exactly, so that `metrics.db`'s are never taken
    for `metrics.db.old`'s."""
    pattern = re.compile(re.escape(db_path.name) + r"\." + _STAMP + re.escape(SUFFIX))
    return [p for p in _entries(directory) if pattern.fullmatch(p.name)]


def _partials(db_path: Path, directory: Path) -> list[Path]:
    """Partial files of this database's backups (one is named for its journal when only that is left)."""
    pattern = re.compile(re.escape(db_path.name) + r"\." + _STAMP + re.escape(SUFFIX + PARTIAL) + "(-journal|-wal|-shm)?")
    found = {p.with_name(p.name[: len(p.name) - len(m.group(1) or "")])
             for p in _entries(directory) if (m := pattern.fullmatch(p.name))}
    return sorted(found)


def _entries(directory: Path) -> list[Path]:
    try:
        return list(directory.iterdir())
    except OSError:  # missing, or not a directory
        return []


def _looks_complete(path: Path) -> bool:
    """A cheap look, not a check (`check_file` is that): no journal beside it, SQLite's header,
    and as many bytes as its header says pages. What a run killed while copying under the final
    name (older builds did) leaves fails it."""
    if path.with_name(path.name + "-journal").exists():
        return False
    try:
        with open(path, "rb") as f:
            header = f.read(100)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return False
    if len(header) < 100 or not header.startswith(_SQLITE_HEADER):
        return False
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    if header[24:28] != header[92:96] or pages == 0:  # the page count in the header is not kept up to date
        return True
    return size == pages * page_size


def prune(db_path: Path, *, keep: int, directory: Path) -> list[Path]:
    """Deletes all but the newest `keep` backups of this database in `directory`."""
    if keep < 1:
        raise ValueError("keep must be at least 1")
    mine = sorted((p for p in _named(db_path, directory) if _looks_complete(p)), key=lambda p: p.name, reverse=True)
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
