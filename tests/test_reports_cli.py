"""`python -m reports` as a user meets it: friendly edges, one-line errors and exit codes, what
reaches a pipe, NO_COLOR, --help, and --watch."""

from __future__ import annotations

import io
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from migrations import CURRENT_SCHEMA_VERSION, upgrade
from reports.cli import build_parser, main, watch
from storage import open_database
from tests.test_migrations import ORIGINAL_COMPLETION_REQUESTS_SQL
from tests.test_reports import make_db, make_rows

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The real command, output piped as in `python -m reports > file`."""
    base = {k: v for k, v in os.environ.items() if k not in ("LLM_METRICS_DB", "NO_COLOR", "FORCE_COLOR")}
    return subprocess.run(
        [sys.executable, "-m", "reports", *args], cwd=ROOT, env={**base, **(env or {})},
        capture_output=True, text=True, timeout=60,
    )


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """The command in-process (fast), its output on a colourless console as when piped."""
    console = Console(file=io.StringIO(), width=100, color_system=None)
    try:
        code = main(list(args), console)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    captured = capsys.readouterr()
    return code, console.file.getvalue() + captured.out, captured.err


@pytest.fixture
def database(tmp_path):
    return make_db(tmp_path / "metrics.db", make_rows(120))


# -- the real command, piped --------------------------------------------------------------------


def test_piped_report_has_no_control_codes_and_exits_0(database):
    result = run("--db", database)
    assert result.returncode == 0, result.stderr
    assert "120 requests" in result.stdout and "By model" in result.stdout and "Slowest 10 calls" in result.stdout
    assert "\x1b" not in result.stdout and result.stderr == ""


def test_default_location_comes_from_llm_metrics_db(database, capsys, monkeypatch):
    monkeypatch.setenv("LLM_METRICS_DB", database)
    code, out, _ = cli(capsys, "--format", "json")
    assert code == 0 and json.loads(out)["database"] == database


def test_no_database_yet_says_where_it_looked_and_how_to_start_and_creates_nothing(tmp_path):
    result = run(env={"HOME": str(tmp_path)})
    looked = tmp_path / ".llm_metrics_proxy" / "metrics.db"
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.strip().count("\n") == 0  # one line
    assert f"No database at {looked} yet" in result.stdout and "python3 dev.py run" in result.stdout
    assert not looked.parent.exists()


def test_no_database_in_json_is_an_empty_report_on_stdout_and_the_note_on_stderr(tmp_path, capsys):
    code, out, err = cli(capsys, "--db", str(tmp_path / "none.db"), "--format", "json")
    assert code == 0
    report = json.loads(out)
    assert report["overview"]["requests"] == 0 and report["groups"] == [] and report["database"] == str(tmp_path / "none.db")
    assert "No database at" in err
    code, out, _ = cli(capsys, "--db", str(tmp_path / "none.db"), "--format", "csv")
    assert code == 0 and out.startswith("group_by,")


@pytest.mark.parametrize("make", ["empty file", "migrated, no rows"])
def test_an_empty_database_says_so_and_exits_0(tmp_path, make, capsys):
    path = tmp_path / "m.db"
    if make == "empty file":
        path.touch()
    else:
        db = open_database(str(path))
        upgrade(db)
        db.close()
    before = path.read_bytes()
    code, out, err = cli(capsys, "--db", str(path))
    assert code == 0 and err == ""
    assert out == f"{path} holds no LLM calls yet: start the proxy (python3 dev.py run) and send LLM calls through it.\n"
    assert path.read_bytes() == before  # read-only: nothing created, migrated or written


def _set_version(path: str, version: int) -> None:
    con = sqlite3.connect(path)
    con.execute("DELETE FROM schema_version WHERE version > ?", (version,))
    if version > CURRENT_SCHEMA_VERSION:
        con.execute("INSERT INTO schema_version (version, applied_at, description) VALUES (?, 'x', 'future')", (version,))
    con.commit()
    con.close()


def test_an_older_schema_says_to_run_the_upgrade_and_exits_2(database):
    _set_version(database, CURRENT_SCHEMA_VERSION - 1)
    result = run("--db", database)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (
        f"error: {database} is at schema version {CURRENT_SCHEMA_VERSION - 1}, older than this build's "
        f"{CURRENT_SCHEMA_VERSION}: run `python -m migrations upgrade` first\n"
    )


def test_a_database_the_original_proxy_made_says_to_run_the_upgrade_and_is_left_untouched(tmp_path):
    path = tmp_path / "original.db"
    con = sqlite3.connect(path)
    con.execute(ORIGINAL_COMPLETION_REQUESTS_SQL)  # schema version 1, with one call in it
    con.execute("INSERT INTO completion_requests (timestamp, success, status_code, response_time_ms, is_streaming) "
                "VALUES ('2026-11-22T00:00:00.000000Z', 1, 200, 5, 0)")
    con.commit()
    con.close()
    before = path.read_bytes()
    result = run("--db", str(path))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (
        f"error: {path} is at schema version 1, older than this build's {CURRENT_SCHEMA_VERSION}: "
        "run `python -m migrations upgrade` first\n"
    )
    assert path.read_bytes() == before


def test_a_newer_schema_says_so_and_exits_2(database, capsys):
    _set_version(database, CURRENT_SCHEMA_VERSION + 1)
    code, out, err = cli(capsys, "--db", database)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and "newer than this build's" in err and err.count("\n") == 1


def test_a_file_that_is_not_a_database_is_one_error_line(tmp_path, capsys):
    path = tmp_path / "notes.db"
    path.write_text("just some text, long enough to be looked at as a header" * 20)
    code, out, err = cli(capsys, "--db", str(path))
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1


@pytest.mark.parametrize("args, says", [
    (["--since", "yesterday"], "argument --since: 'yesterday' is not a time"),
    (["--until", "3 days"], "argument --until: '3 days' is not a time"),
    (["--top", "0"], "argument --top: expected a whole number from 1 to 100,000, got '0'"),
    (["--top", "ten"], "argument --top: expected a whole number from 1 to 100,000, got 'ten'"),
    (["--group-by", "colour"], "argument --group-by: invalid choice: 'colour'"),
    (["--format", "xml"], "argument --format: invalid choice: 'xml'"),
    (["--watch", "0"], "argument --watch: expected a number of seconds above 0, at most 86,400, got '0'"),
    (["--colour"], "unrecognized arguments: --colour"),
    (["--since", "2026-11-03", "--until", "2026-11-02"], "--since (2026-11-03T00:00:00.000000Z) must be before --until"),
    (["--since", "3000000w"], "argument --since: '3000000w' is out of range"),
    (["--until", "10000-01-01"], "argument --until: '10000-01-01' is not a time"),
    (["--top", "100001"], "argument --top: expected a whole number from 1 to 100,000, got '100001'"),
    (["--top", "-1"], "argument --top: expected a whole number from 1 to 100,000, got '-1'"),
    (["--watch", "inf"], "argument --watch: expected a number of seconds above 0, at most 86,400, got 'inf'"),
    (["--watch", "nan"], "argument --watch: expected a number of seconds above 0, at most 86,400, got 'nan'"),
    (["--watch", "1e308"], "argument --watch: expected a number of seconds above 0, at most 86,400, got '1e308'"),
    (["--model", "gpt-\udcff"], "argument --model: 'gpt-\\udcff' is not UTF-8 text"),
    (["--origin", "\udce9"], "argument --origin: '\\udce9' is not UTF-8 text"),
    ([f"--model=m{i}" for i in range(1001)], "at most 1,000 values of --model, --provider, --host, --origin, --agent and --session together"),
    (["--db", ""], "argument --db: expected a SQLite path or a database URL, got an empty value"),
    (["--db", "   "], "argument --db: expected a SQLite path or a database URL, got an empty value"),
    (["un\nknown"], "unrecognized arguments: un known"),
])
def test_a_bad_flag_value_is_one_error_line_and_exit_2(database, args, says, capsys):
    code, out, err = cli(capsys, "--db", database, *args)
    assert code == 2 and out == ""
    assert err.startswith(f"error: {says}") and err.count("\n") == 1, err


def test_a_directory_as_db_is_one_error_line_and_exit_2(tmp_path, capsys):
    code, out, err = cli(capsys, "--db", str(tmp_path))
    assert code == 2 and out == ""
    assert err == f"error: argument --db: {tmp_path} is a directory, not a database file\n"


def test_the_same_filter_value_twice_is_one_filter(database, capsys):
    code, out, _ = cli(capsys, "--db", database, "--format", "json", *(["--model", "gpt-a"] * 1001))
    assert code == 0 and json.loads(out)["filters"]["model"] == ["gpt-a"]


def one_error_line(result: subprocess.CompletedProcess, says: str) -> None:
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert result.stderr.startswith(f"error: {says}") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_a_server_error_is_one_line_and_never_shows_the_password():
    result = run("--db", "postgresql://bob:PLANTED-pw-9Kq@127.0.0.1:1/none")
    one_error_line(result, "cannot open postgresql://bob:***@127.0.0.1:1/none: ")
    assert "PLANTED-pw-9Kq" not in result.stderr


def test_since_far_past_is_one_error_line_and_exit_2(database):
    one_error_line(run("--db", database, "--since", "99999999999d"), "argument --since: '99999999999d' is out of range")


@pytest.mark.parametrize("flag, when", [
    ("--since", "0001-01-01T00:00+14:00"),  # 31 December of year 0 in UTC
    ("--until", "9999-12-31T23:59-10:00"),  # 1 January of year 10000 in UTC
    ("--until", "9999-12-31T23:59:59.999999-00:01"),
])
def test_a_time_outside_years_1_to_9999_in_utc_is_one_error_line_and_exit_2(database, flag, when):
    one_error_line(run("--db", database, flag, when), f"argument {flag}: '{when}' is out of range: a time must fall between 0001-01-01 and 9999-12-31 UTC")


def test_top_past_sqlites_integers_is_one_error_line_and_exit_2(database):
    one_error_line(run("--db", database, "--top", "9223372036854775808"), "argument --top: expected a whole number from 1 to 100,000")


def test_watch_forever_is_one_error_line_and_exit_2(database):
    one_error_line(run("--db", database, "--watch", "inf"), "argument --watch: expected a number of seconds above 0")


def test_a_filter_value_that_is_not_utf8_is_one_error_line_and_exit_2(database):
    result = subprocess.run(  # bytes in argv, as a shell passes them
        [sys.executable.encode(), b"-m", b"reports", b"--db", database.encode(), b"--model", b"gpt-\xff"],
        cwd=ROOT, capture_output=True, timeout=60, check=False,
    )
    assert result.returncode == 2 and result.stdout == b""
    assert result.stderr.startswith(b"error: argument --model: ") and result.stderr.count(b"\n") == 1, result.stderr


def test_since_before_year_1000_selects_every_later_call(database, capsys):
    code, out, _ = cli(capsys, "--db", database, "--since", "0999-01-01", "--format", "json")
    report = json.loads(out)
    assert code == 0 and report["filters"]["since_utc"] == "0999-01-01T00:00:00.000000Z"
    assert report["overview"]["requests"] == 120


@pytest.mark.parametrize("name", ["a?b.db", "a#b.db", "a%41.db", "a b.db"])
def test_a_db_path_with_uri_characters_is_read_and_nothing_is_created(tmp_path, name):
    path = make_db(tmp_path / name, make_rows(20))
    result = run("--db", path, "--format", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["overview"]["requests"] == 20
    # Nothing beside it but its own WAL files: no `a` opened (and so created) read-write.
    assert {p.name for p in tmp_path.iterdir()} <= {name, f"{name}-wal", f"{name}-shm"}


def test_db_abbreviated_to_d_still_reaches_a_postgres_url(pg_url):
    result = run("--d", pg_url)  # argparse takes --d for --db: the drivers must stay importable
    assert result.returncode == 0, result.stderr
    assert "holds no LLM calls yet" in result.stdout


def test_the_real_command_reports_a_bad_flag_the_same_way(database):
    result = run("--db", database, "--since", "yesterday")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: argument --since: 'yesterday' is not a time") and result.stderr.count("\n") == 1


def test_help_lists_the_flags_and_states_the_percentile_method():
    result = run("--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for flag in ("--db", "--since", "--until", "--model", "--provider", "--host", "--origin", "--errors-only",
                 "--group-by", "--top", "--format", "--watch"):
        assert flag in text
    assert "exact nearest rank" in text and "percentile_disc" in text and "never interpolated" in text


# -- in-process: colour, terminals, --watch -----------------------------------------------------


def colour_codes(text: str) -> list[int]:
    """SGR parameters that set a foreground or background colour (bold, italic are not colour)."""
    params = [int(p) for seq in re.findall(r"\x1b\[([0-9;]*)m", text) for p in seq.split(";") if p]
    return [p for p in params if 30 <= p <= 49 or 90 <= p <= 107]


def test_no_color_keeps_colour_codes_out_even_on_a_terminal(database, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    console = Console(file=io.StringIO(), width=100, force_terminal=True)
    assert main(["--db", database], console) == 0
    text = console.file.getvalue()
    assert "By model" in text and "\x1b[" in text and colour_codes(text) == []
    monkeypatch.delenv("NO_COLOR")
    coloured = Console(file=io.StringIO(), width=100, force_terminal=True, color_system="standard")
    assert main(["--db", database], coloured) == 0
    assert colour_codes(coloured.file.getvalue())  # the check above can see colour when there is some


def _args(*argv: str):
    return build_parser().parse_args(list(argv))


def test_watch_redraws_the_report_in_place(database):
    console = Console(file=io.StringIO(), width=100, force_terminal=True, color_system=None)
    slept = []
    assert watch(_args("--db", database, "--watch", "5"), database, console, sleep=slept.append, refreshes=3) == 0
    text = console.file.getvalue()
    assert slept == [5.0, 5.0]
    assert text.count("120 requests") >= 3 and "every 5 s · Ctrl-C to stop" in text
    assert "\x1b[2K" in text or "\x1b[1A" in text  # Live moved the cursor back to redraw


def test_watch_waits_for_a_database_that_does_not_exist_yet(tmp_path):
    console = Console(file=io.StringIO(), width=100, force_terminal=True, color_system=None)
    missing = str(tmp_path / "later.db")
    assert watch(_args("--watch"), missing, console, sleep=lambda s: None, refreshes=1) == 0
    assert "No database at" in console.file.getvalue() and "Waiting" in console.file.getvalue()


def test_watch_needs_a_terminal_and_the_text_format(database, capsys):
    assert main(["--db", database, "--watch"], Console(file=io.StringIO())) == 2
    assert capsys.readouterr().err == "error: --watch needs a terminal; without it, run the report once\n"
    assert main(["--db", database, "--watch", "--format", "json"], Console(file=io.StringIO(), force_terminal=True)) == 2
    assert capsys.readouterr().err == "error: --watch shows the text report; leave out --format\n"


def test_watch_stops_cleanly_on_ctrl_c(database):
    def interrupt(seconds):
        raise KeyboardInterrupt

    console = Console(file=io.StringIO(), width=100, force_terminal=True, color_system=None)
    assert watch(_args("--watch", "1"), database, console, sleep=interrupt) == 0
