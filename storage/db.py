"""Opening the metrics database from a path or URL, with the settings the proxy relies on."""

from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path
from urllib.parse import unquote

import peewee
from playhouse.db_url import connect as connect_url

ENV_VAR = "LLM_METRICS_DB"
DEFAULT_DB_PATH = "~/.llm_metrics_proxy/metrics.db"

BUSY_TIMEOUT_S = 5.0  # the default of open_database's busy_timeout_s
# A server that does not answer (down behind a firewall, or hanging) must not hold up the proxy's
# start or a metering process for the system's TCP timeout (minutes): a URL's own
# connect_timeout=N wins.
CONNECT_TIMEOUT_S = 5

# WAL lets reports read while the proxy writes; NORMAL sync is durable across process crashes
# (only an OS crash can lose the last transactions); the busy timeout (open_database's) rides out
# short locks.
SQLITE_PRAGMAS = (
    ("journal_mode", "wal"),
    ("synchronous", "normal"),
    ("foreign_keys", 1),
)


def default_location() -> str:
    """What every entry point uses when given nothing: $LLM_METRICS_DB, else the home default."""
    return os.environ.get(ENV_VAR) or DEFAULT_DB_PATH


def is_url(location: str) -> bool:
    return "://" in location


# A password can also be a URL parameter: libpq reads `?password=` and `?sslpassword=`.
_PASSWORD_PARAM = re.compile(r"(?i)([?&](?:ssl)?pass(?:word|wd)?=)([^&#]*)")
_USERINFO_PASSWORD = re.compile(r"(://[^\s/:@]*:)[^\s@/]+(?=@)")
MASK = "***"


def display_location(location: str) -> str:
    """`location` as it may be printed or stored: a URL with its password, in the user info or
    a `password=` parameter, replaced by `***`. Every message that names the database uses it."""
    if not is_url(location):
        return location
    scheme, _, rest = location.partition("://")
    # The user info ends at the last "@": a password can hold "@", "/" or "#" not percent-encoded.
    userinfo, at, host = rest.rpartition("@")
    if at and ":" in userinfo:
        rest = f"{userinfo.split(':', 1)[0]}:{MASK}@{host}"
    return f"{scheme}://{_PASSWORD_PARAM.sub(lambda m: m.group(1) + MASK, rest)}"


def hide_password(text: str, location: str) -> str:
    """`text` (a driver's error message, say) with `location`'s password not in it, in any form
    it was given or decoded to, and any URL's user-info password masked."""
    text = text.replace(location, display_location(location))
    for secret in _passwords(location):
        if len(secret) >= 3:  # a shorter one would mask unrelated letters, and tells little
            text = text.replace(secret, MASK)
    return _USERINFO_PASSWORD.sub(lambda m: m.group(1) + MASK, text)


def _passwords(location: str) -> set[str]:
    if not is_url(location):
        return set()
    rest = location.partition("://")[2]
    userinfo, at, _ = rest.rpartition("@")
    found = [m.group(2) for m in _PASSWORD_PARAM.finditer(rest)]
    if at and ":" in userinfo:
        found.append(userinfo.split(":", 1)[1])
    return {form for secret in found if secret for form in (secret, unquote(secret))}


def connect_server(location: str) -> peewee.Database:
    """A database server's URL as a peewee database, not yet connected. A URL that cannot be
    parsed is refused without the parser's message, which can quote part of the password."""
    try:
        return connect_url(location, **_server_defaults(location))
    except ValueError:
        raise ValueError(
            f"the database URL {display_location(location)} cannot be parsed: check its port, and "
            "percent-encode its password's special characters (@ %40, / %2F, # %23, ? %3F, : %3A)"
        ) from None


def location_argument(text: str) -> str:
    """`--db`'s argparse type in every CLI: a SQLite path or a database URL, refused at once when
    it cannot be one (empty, a directory)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a SQLite path or a database URL, got an empty value")
    path = sqlite_path(text)
    if path is not None and path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory, not a database file")
    return text


def sqlite_path(location: str) -> Path | None:
    """The file behind a SQLite location (plain path or sqlite:/// URL); None for other engines."""
    if location.startswith("sqlite:///"):
        return Path(location[len("sqlite:///") :]).expanduser()
    if is_url(location):
        return None
    return Path(location).expanduser()


def open_database(location: str, *, create: bool = True, wal: bool = True,
                  busy_timeout_s: float = BUSY_TIMEOUT_S) -> peewee.Database:
    """A connected peewee database. A new SQLite file is made readable by its owner only.

    `wal=False` leaves the file's journal mode alone (switching it rewrites the file header): the
    proxy opens that way, migrates, then calls `enable_wal`, so a refused upgrade changes nothing.
    `busy_timeout_s`: how long a SQLite statement waits for another connection's lock.
    """
    path = sqlite_path(location)
    if path is None:
        return connect_server(location)
    if path.exists():
        check_sqlite_header(path)
    elif create:
        _create_private_file(path)
    else:
        raise FileNotFoundError(str(path))
    pragmas = SQLITE_PRAGMAS if wal else tuple(p for p in SQLITE_PRAGMAS if p[0] != "journal_mode")
    pragmas += (("busy_timeout", round(busy_timeout_s * 1000)),)
    db = peewee.SqliteDatabase(str(path), pragmas=pragmas, timeout=busy_timeout_s)
    _connect(db)
    return db


def _server_defaults(location: str) -> dict:
    scheme = location.split("://", 1)[0]
    if ("postgres" in scheme or "psycopg" in scheme) and "connect_timeout=" not in location:
        return {"connect_timeout": CONNECT_TIMEOUT_S}
    return {}


# What a PostgreSQL server says when it answered and refused: a mistake in the URL or the
# server's set-up, which waiting will not mend (its other messages: starting up, shutting down,
# too many clients, and no answer at all, pass).
_REFUSALS = ("does not exist", "authentication failed", "no pg_hba.conf entry", "password", "permission denied")


def unreachable(location: str, exc: Exception) -> bool:
    """Whether opening the database server at `location` failed only because it could not be
    reached now: down, starting, restarting, hanging, no route to it. The proxy then starts
    anyway and rows wait for it; anything else (a refusal, a SQLite file it cannot use, a schema
    it cannot upgrade) is a mistake to report at once."""
    if sqlite_path(location) is not None or not isinstance(exc, peewee.OperationalError):
        return False
    return not any(refusal in str(exc) for refusal in _REFUSALS)


def enable_wal(db: peewee.Database) -> None:
    """Switches a SQLite file to WAL (kept in the file, so every later connection uses it)."""
    if not isinstance(db, peewee.SqliteDatabase):
        return
    deadline = time.monotonic() + db.timeout
    while True:
        try:
            db.execute_sql("PRAGMA journal_mode=wal")
            return
        except peewee.OperationalError as exc:  # the switch skips the busy handler, see _connect
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(0.01)


class NotSQLiteError(ValueError):
    """The file exists but is not a SQLite database: it is never written to."""


SQLITE_HEADER = b"SQLite format 3\x00"


def check_sqlite_header(path: Path) -> None:
    """Refuses a non-empty file that does not start with SQLite's header (an empty file is a
    new database). Opening one with SQLite would fail later, less clearly."""
    with open(path, "rb") as f:
        head = f.read(len(SQLITE_HEADER))
    if head and head != SQLITE_HEADER:
        raise NotSQLiteError(
            f"{path} is not a SQLite database (it does not start with SQLite's file header), so "
            "it was not opened or changed. Point llm_metrics_db / --db at a metrics database, or "
            "at a path where a new one can be made."
        )


def _connect(db: peewee.SqliteDatabase) -> None:
    """Switching a file to WAL skips SQLite's busy handler: when several processes open a new
    file at once, all but one get "database is locked" at once. Retry them until the timeout."""
    deadline = time.monotonic() + db.timeout
    while True:
        try:
            db.connect(reuse_if_open=True)
            return
        except peewee.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(0.01)


def _create_private_file(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)
