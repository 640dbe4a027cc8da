"""Migrations that cannot lose data: backups, injected failures, refusals, adoption, the CLI.

Every test works on real SQLite files; "unchanged" is checked with SQLite's own dump.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import migrations.runner as runner
from migrations import (
    CURRENT_SCHEMA_VERSION,
    STEPS,
    MigrationError,
    NewerSchemaError,
    current_version,
    list_backups,
    upgrade,
)
from migrations.__main__ import main as cli
from storage import open_database

ROOT = Path(__file__).resolve().parents[1]

# The original LLM Metrics Proxy's schema, frozen here so the test cannot follow a code change.
ORIGINAL = """
CREATE TABLE completion_requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp TEXT NOT NULL, success BOOLEAN NOT NULL,
    status_code INTEGER NOT NULL, response_time_ms INTEGER NOT NULL, model TEXT, origin TEXT,
    is_streaming BOOLEAN NOT NULL, max_tokens INTEGER, temperature REAL, top_p REAL,
    message_count INTEGER, prompt_tokens INTEGER, completion_tokens INTEGER, total_tokens INTEGER,
    finish_reason TEXT, time_to_first_token_ms INTEGER, time_to_last_token_ms INTEGER,
    tokens_per_second REAL, error_type TEXT, error_message TEXT
);
"""
ORIGINAL_COLUMNS = (
    "timestamp, success, status_code, response_time_ms, model, origin, is_streaming, max_tokens, "
    "temperature, top_p, message_count, prompt_tokens, completion_tokens, total_tokens, finish_reason, "
    "time_to_first_token_ms, time_to_last_token_ms, tokens_per_second, error_type, error_message"
)


def original_row(i: int) -> tuple:
    return (
        f"2025-{1 + i % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:00:00.{i % 1000000:06d}Z", i % 7 != 0, 200 if i % 7 else 500,
        10 + i, f"model-{i % 5}", f"app-{i % 3}", i % 2 == 0, None if i % 4 else 256, 0.1 * (i % 10), None,
        i % 9, i * 3, i * 2, i * 5, "stop" if i % 7 else None, None if i % 2 else i % 400, None, 12.5 + i, None,
        None if i % 7 else "server_error: ü ✓",
    )


def make_original(path: Path, rows: int, *, history: str = "documented") -> None:
    con = sqlite3.connect(path)
    con.executescript(ORIGINAL)
    if history == "documented":
        con.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
        con.execute("INSERT INTO schema_version VALUES (1, '2025-06-01 09:30:00')")
    elif history == "code":  # the original's code: its own numbering, its 3 added app_version
        con.execute("CREATE TABLE schema_version (id INTEGER PRIMARY KEY, version INTEGER, applied_at TEXT, description TEXT)")
        con.executemany("INSERT INTO schema_version (version, applied_at, description) VALUES (?, '2025-06-01', ?)",
                        [(1, "initial"), (2, "indexes"), (3, "add app_version")])
        con.execute("ALTER TABLE completion_requests ADD COLUMN app_version TEXT")
    placeholders = ", ".join("?" * 20)
    con.executemany(f"INSERT INTO completion_requests ({ORIGINAL_COLUMNS}) VALUES ({placeholders})",
                    [original_row(i) for i in range(rows)])
    if history == "code":
        con.execute("UPDATE completion_requests SET app_version = '0.9.' || (id % 4)")
    con.commit()
    con.close()


def dump(path: Path) -> list[str]:
    con = sqlite3.connect(path)
    try:
        return list(con.iterdump())
    finally:
        con.close()


def original_values(path: Path) -> list[tuple]:
    con = sqlite3.connect(path)
    try:
        return con.execute(f"SELECT id, {ORIGINAL_COLUMNS} FROM completion_requests ORDER BY id").fetchall()
    finally:
        con.close()


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch):
    """The fallback backup directory lives under $HOME: never the real one."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def test_upgrade_from_version_1_keeps_10000_rows_and_every_value(tmp_path):
    path = tmp_path / "metrics.db"
    make_original(path, 10_000)
    before = original_values(path)
    db = open_database(str(path))
    result = upgrade(db)
    assert [s.version for s in result.applied] == list(range(2, CURRENT_SCHEMA_VERSION + 1))
    db.close()
    assert original_values(path) == before
    assert result.backup is not None and result.backup.parent == tmp_path / "backups"
    assert result.backup.name.startswith("metrics.db.") and result.backup.name.endswith(".backup")
    assert oct(result.backup.stat().st_mode & 0o777) == "0o600"
    con = sqlite3.connect(result.backup)
    assert con.execute("SELECT count(*) FROM completion_requests").fetchone()[0] == 10_000
    con.close()


def test_no_backup_tables_are_left_after_a_rebuilding_step(tmp_path):
    path = tmp_path / "metrics.db"
    make_original(path, 50)
    upgrade(open_database(str(path)))
    con = sqlite3.connect(path)
    names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    con.close()
    assert not [n for n in names if n.startswith("_backup_")]


def _database_at(version: int, path: Path, monkeypatch) -> None:
    """A database at `version` (0: new and empty) holding rows whenever it has the table."""
    if version >= 1:
        make_original(path, 300)
    if version > 1:
        with monkeypatch.context() as m:
            m.setattr(runner, "STEPS", STEPS[:version])
            m.setattr(runner, "CURRENT_SCHEMA_VERSION", version)
            upgrade(open_database(str(path)), backup=False)
    assert current_version(open_database(str(path))) == version


FAULTS = [
    (step.version, fault)
    for step in STEPS
    for fault in ("raises after its work", "adds a column it did not promise", "loses rows")
    if not (fault == "loses rows" and step.version == 1)  # a new database has no rows to lose
]


@pytest.mark.parametrize("failing, fault", FAULTS)
def test_failure_injected_into_each_step_leaves_the_database_exactly_as_before(tmp_path, monkeypatch, failing, fault):
    path = tmp_path / "metrics.db"
    _database_at(failing - 1, path, monkeypatch)
    before = dump(path) if path.exists() else []
    real = STEPS[failing - 1]

    def broken(db, migrator):
        real.apply(db, migrator)  # do the real, partial work first
        if fault == "raises after its work":
            raise RuntimeError("injected failure")
        if fault == "adds a column it did not promise":  # schema validation must catch it
            db.execute_sql("ALTER TABLE completion_requests ADD COLUMN rogue TEXT")
        else:  # row-count validation must catch it
            db.execute_sql("DELETE FROM completion_requests WHERE id % 2 = 0")

    patched = list(STEPS)
    patched[failing - 1] = dataclasses.replace(real, apply=broken)
    monkeypatch.setattr(runner, "STEPS", patched)
    db = open_database(str(path))
    with pytest.raises(MigrationError) as raised:
        upgrade(db)
    db.close()
    message = str(raised.value)
    assert real.name in message and "exactly as before" in message
    if failing > 1:
        assert dump(path) == before
    else:  # a new database: nothing but the empty file (and no schema) is left
        assert [line for line in dump(path) if "CREATE TABLE" in line] == []


def test_unwritable_backup_directory_falls_back_to_home(tmp_path, private_home):
    path = tmp_path / "metrics.db"
    make_original(path, 20)
    (tmp_path / "backups").write_text("a file where the directory would go")
    result = upgrade(open_database(str(path)))
    assert result.backup.parent == private_home / ".llm_metrics_proxy" / "backups"
    assert current_version(open_database(str(path))) == CURRENT_SCHEMA_VERSION


def test_no_writable_backup_directory_refuses_and_changes_nothing(tmp_path, private_home):
    path = tmp_path / "metrics.db"
    make_original(path, 20)
    (tmp_path / "backups").write_text("x")
    (private_home / ".llm_metrics_proxy").write_text("x")
    before = dump(path)
    with pytest.raises(MigrationError, match="verified backup must be taken first, but none could be made"):
        upgrade(open_database(str(path)))
    assert dump(path) == before


def test_corrupt_file_is_refused_before_migrating(tmp_path):
    path = tmp_path / "metrics.db"
    make_original(path, 3000)
    with open(path, "r+b") as f:  # scribble over a page in the middle, leaving the header
        f.seek(4096 * 5)
        f.write(b"\xff" * 4096)
    with pytest.raises(MigrationError, match="integrity check"):
        upgrade(open_database(str(path)))
    assert list_backups(path) == []


def test_file_that_is_not_sqlite_is_refused_untouched(tmp_path):
    path = tmp_path / "metrics.db"
    path.write_bytes(b"{\"these are\": \"not metrics\"}")
    assert cli(["upgrade", "--db", str(path)]) == 2
    assert path.read_bytes() == b"{\"these are\": \"not metrics\"}"


def test_newer_database_is_refused_untouched(tmp_path):
    path = tmp_path / "metrics.db"
    upgrade(open_database(str(path)))
    con = sqlite3.connect(path)
    con.execute("INSERT INTO schema_version VALUES (?, '2030-01-01T00:00:00.000000Z', 'from the future')", (CURRENT_SCHEMA_VERSION + 1,))
    con.commit()
    con.close()
    before = dump(path)
    with pytest.raises(NewerSchemaError, match="left untouched"):
        upgrade(open_database(str(path)))
    assert dump(path) == before


def test_original_code_lineage_is_adopted_by_shape_keeping_its_history_and_columns(tmp_path):
    path = tmp_path / "metrics.db"
    make_original(path, 100, history="code")
    before = original_values(path)
    result = upgrade(open_database(str(path)))
    assert "adopted" in result.adopted and [s.version for s in result.applied] == list(range(2, CURRENT_SCHEMA_VERSION + 1))
    con = sqlite3.connect(path)
    assert con.execute("SELECT version FROM schema_version_original ORDER BY version").fetchall() == [(1,), (2,), (3,)]
    assert con.execute("SELECT count(*) FROM completion_requests WHERE app_version LIKE '0.9.%'").fetchone()[0] == 100
    assert con.execute("SELECT max(version) FROM schema_version").fetchone()[0] == CURRENT_SCHEMA_VERSION
    con.close()
    assert original_values(path) == before


def test_retention_keeps_exactly_the_newest_n_backups(tmp_path):
    path = tmp_path / "metrics.db"
    make_original(path, 10)
    made = [Path(cli_out) for cli_out in _run_backups(path, 7, keep=4)]
    kept = [b.path for b in list_backups(path)]
    assert kept == sorted(made, key=lambda p: p.name, reverse=True)[:4]


def _run_backups(path: Path, n: int, keep: int) -> list[str]:
    from migrations import make_backup

    return [str(make_backup(path, keep=keep)) for _ in range(n)]


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "migrations", *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})}, timeout=60)


def test_cli_status_upgrade_backup_restore_round_trip(tmp_path):
    path = tmp_path / "metrics.db"
    make_original(path, 40)
    status = run_cli("status", "--db", str(path))
    assert status.returncode == 1 and "pending: 2 m002_capture_columns" in status.stdout
    assert run_cli("upgrade", "--db", str(path)).returncode == 0
    assert run_cli("status", "--db", str(path)).returncode == 0
    backup = run_cli("backup", "--db", str(path))
    assert backup.returncode == 0
    saved = Path(backup.stdout.strip())
    con = sqlite3.connect(path)
    con.execute("DELETE FROM completion_requests WHERE id > 10")
    con.commit()
    con.close()
    restored = run_cli("restore", "--db", str(path), str(saved))
    assert restored.returncode == 0, restored.stderr
    assert "safety backup" in restored.stdout
    con = sqlite3.connect(path)
    assert con.execute("SELECT count(*) FROM completion_requests").fetchone()[0] == 40
    con.close()
    listed = run_cli("backups", "--db", str(path))
    assert str(saved) in listed.stdout and "bytes" in listed.stdout
    verify = run_cli("verify", "--db", str(path))
    assert verify.returncode == 0 and verify.stdout.strip().endswith("ok")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["status", "--db", "{missing}"], None),
        (["verify", "--db", "{missing}"], "no database at"),
        (["restore", "--db", "{db}", "{missing}"], "no backup file at"),
        (["backup", "--db", "{db}", "--keep", "0"], "argument --keep: expected a whole number of at least 1, got '0'"),
        (["upgrade", "--db", "{db}", "--keep", "ten"], "argument --keep: expected a whole number of at least 1, got 'ten'"),
        (["frobnicate"], "invalid choice"),
        (["status", "--db", ""], "argument --db: expected a SQLite path or a database URL, got an empty value"),
        (["status", "--db", "{dir}"], "is a directory, not a database file"),
        (["verify", "--db", "{dir}"], "is a directory, not a database file"),
        (["backup", "--db", "{dir}"], "is a directory, not a database file"),
        (["status", "--db", "frob://x"], "cannot open frob://x: Unrecognized or unsupported scheme"),
        (["status", "--db", "postgresql://127.0.0.1:1/none"], "Connection refused"),
        (["status", "--db", "{db}", "un\nknown"], "unrecognized arguments: un known"),
    ],
)
def test_cli_errors_are_one_line_and_exit_2(tmp_path, args, needle):
    path = tmp_path / "metrics.db"
    upgrade(open_database(str(path)))
    args = [a.format(missing=tmp_path / "missing.db", db=path, dir=tmp_path) for a in args]
    result = run_cli(*args)
    if needle is None:  # status of a database not made yet is information, not an error
        assert result.returncode == 0 and "no database at" in result.stdout
        return
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert needle in result.stderr


def test_a_server_error_is_one_line_and_never_shows_the_password(tmp_path):
    """A driver's message spans lines (libpq adds a hint): joined into one, the password masked."""
    result = run_cli("status", "--db", "postgresql://bob:PLANTED-pw-9Kq@127.0.0.1:1/none")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Connection refused" in result.stderr and "PLANTED-pw-9Kq" not in result.stderr


def test_verify_reports_a_damaged_schema(tmp_path):
    path = tmp_path / "metrics.db"
    upgrade(open_database(str(path)))
    con = sqlite3.connect(path)
    con.execute('DROP INDEX "completion_requests_timestamp"')
    con.commit()
    con.close()
    result = run_cli("verify", "--db", str(path))
    assert result.returncode == 1 and "index on completion_requests(timestamp) is missing" in result.stdout


def test_the_docs_document_exactly_the_columns_a_new_database_gets(tmp_path):
    import re

    page = (ROOT / "docs" / "recorded.md").read_text()
    section = page[:page.index("\n## Providers and cost")]
    documented = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            documented.update(re.findall(r"`([a-z_]+)`", line.split("|")[1]))
    path = tmp_path / "metrics.db"
    upgrade(open_database(str(path)))
    con = sqlite3.connect(path)
    actual = {r[1] for r in con.execute("PRAGMA table_info(completion_requests)")} - {"id"}
    con.close()
    assert documented == actual


def test_a_rebuilding_step_runs_with_a_full_backup_table_beside_it(tmp_path, monkeypatch):
    path = tmp_path / "metrics.db"
    make_original(path, 120)
    real = STEPS[1]
    assert real.rewrites == ("completion_requests",)
    seen = {}

    def watching(db, migrator):
        seen["rows"] = db.execute_sql('SELECT count(*) FROM "_backup_completion_requests_v2"').fetchone()[0]
        real.apply(db, migrator)

    patched = list(STEPS)
    patched[1] = dataclasses.replace(real, apply=watching)
    monkeypatch.setattr(runner, "STEPS", patched)
    upgrade(open_database(str(path)))
    assert seen == {"rows": 120}
    con = sqlite3.connect(path)
    assert con.execute("SELECT count(*) FROM sqlite_master WHERE name LIKE '_backup_%'").fetchone()[0] == 0
    con.close()


def test_cli_reprice_recomputes_costs_of_stored_rows(tmp_path):
    path = tmp_path / "metrics.db"
    upgrade(open_database(str(path)))
    con = sqlite3.connect(path)
    con.execute("INSERT INTO completion_requests (timestamp, success, status_code, response_time_ms, is_streaming, model, "
                "provider, prompt_tokens, completion_tokens, cost_usd) VALUES "
                "('2026-11-01T00:00:00.000000Z', 1, 200, 10, 0, 'gpt-4o-mini', 'openai', 1000000, 1000000, 999.0)")
    con.commit()
    con.close()
    result = run_cli("reprice", "--db", str(path))
    assert result.returncode == 0, result.stderr
    assert "repriced: 1 row(s) changed cost_usd" in result.stdout
    con = sqlite3.connect(path)
    cost = con.execute("SELECT cost_usd FROM completion_requests").fetchone()[0]
    con.close()
    assert cost is not None and 0 < cost < 999.0


# -- backups that were not finished ----------------------------------------------------------


def _kill_once_the_backup_has_data(proc: subprocess.Popen, backups: Path, timeout: float = 120) -> None:
    """SIGKILL as soon as a file in the backup directory holds data: the copy is under way."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if any(f.stat().st_size > 0 for f in backups.iterdir()):
                proc.kill()
                break
        except OSError:  # not made yet, or a file renamed while we looked
            pass
        time.sleep(0.001)
    proc.wait()


@pytest.mark.slow
def test_upgrade_killed_mid_backup_leaves_nothing_listed_as_a_good_backup_and_the_next_run_cleans_it(tmp_path):
    path = tmp_path / "metrics.db"
    make_original(path, 150_000)  # about 30 MB: the copy and its check take long enough to be caught
    backups = tmp_path / "backups"
    proc = subprocess.Popen([sys.executable, "-m", "migrations", "upgrade", "--db", str(path)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_once_the_backup_has_data(proc, backups)
    assert proc.returncode == -signal.SIGKILL, "the upgrade ended before it could be killed mid-backup"
    left = sorted(p.name for p in backups.iterdir())
    assert left, "the killed backup left nothing to look at"

    listed = run_cli("backups", "--db", str(path))
    assert listed.returncode == 0
    assert list_backups(path) == []  # not one good backup
    good_lines = [line for line in listed.stdout.splitlines() if "incomplete" not in line]
    assert not any(name in line for line in good_lines for name in left), listed.stdout
    assert "no backups of" in listed.stdout
    restored = run_cli("restore", "--db", str(path), str(backups / left[0]))
    assert restored.returncode == 2  # never restored from
    assert run_cli("status", "--db", str(path)).returncode == 1  # nothing was migrated

    again = run_cli("upgrade", "--db", str(path))
    assert again.returncode == 0, again.stderr
    made = Path(again.stdout.split("backup: ", 1)[1].split()[0])
    assert [p.name for p in backups.iterdir()] == [made.name]  # the leftovers are gone
    assert [b.path for b in list_backups(path)] == [made]
    assert "incomplete" not in run_cli("backups", "--db", str(path)).stdout


def test_a_backup_appears_under_its_name_only_once_verified(tmp_path, monkeypatch):
    from migrations import backup

    path = tmp_path / "metrics.db"
    make_original(path, 20)
    seen = []
    check = backup.check_file

    def watching(file, counts=None):
        seen.append((file.name, sorted(p.name for p in file.parent.iterdir()), list_backups(path)))
        return check(file, counts)

    monkeypatch.setattr(backup, "check_file", watching)
    made = backup.make_backup(path)
    (checked, present, listed_then), = seen
    assert checked != made.name and made.name not in present  # checked under another name
    assert listed_then == []  # and not listed while being checked
    assert [b.path for b in list_backups(path)] == [made]


def test_a_backup_that_fails_its_check_leaves_no_file(tmp_path, monkeypatch):
    from migrations import BackupError, backup

    path = tmp_path / "metrics.db"
    make_original(path, 20)

    def failing(file, counts=None):
        raise BackupError("injected")

    monkeypatch.setattr(backup, "check_file", failing)
    with pytest.raises(BackupError):
        backup.make_backup(path)
    assert list((tmp_path / "backups").iterdir()) == []


def test_a_backup_left_by_an_older_build_killed_mid_copy_is_listed_as_incomplete(tmp_path):
    path = tmp_path / "metrics.db"
    make_original(path, 2000)
    good = Path(run_cli("backup", "--db", str(path)).stdout.strip())
    backups = good.parent
    partial = backups / "metrics.db.20250101_000000_000.backup"  # the final name, half written
    partial.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (backups / (partial.name + "-journal")).write_bytes(b"\0" * 512)
    assert [b.path for b in list_backups(path)] == [good]
    listed = run_cli("backups", "--db", str(path)).stdout.splitlines()
    assert [line for line in listed if str(partial) in line][0].startswith("incomplete")


def test_backups_of_another_database_whose_name_starts_the_same_are_neither_listed_nor_pruned(tmp_path):
    from migrations import make_backup

    path, old = tmp_path / "metrics.db", tmp_path / "metrics.db.old"
    make_original(path, 10)
    make_original(old, 10)
    theirs = [make_backup(old) for _ in range(3)]
    mine = [make_backup(path, keep=1) for _ in range(2)]
    assert [b.path for b in list_backups(path)] == [mine[-1]]
    assert all(p.exists() for p in theirs)
    assert sorted(b.path for b in list_backups(old)) == sorted(theirs)
