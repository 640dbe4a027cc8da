"""The command lines: what they share (addon/cli.py) and their console scripts (pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest

from addon.cli import ArgumentParser, add_db_argument, one_line
from tests.conftest import ROOT

SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def run_script(name: str, *args: str, cwd=None) -> subprocess.CompletedProcess:
    """The console script `name` as pip's wrapper runs it: its entry point, with argv[0] its name."""
    module, function = SCRIPTS[name].split(":")
    code = f"import sys; sys.argv[0] = {name!r}; from {module} import {function}; sys.exit({function}())"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd or ROOT)


def test_every_command_has_its_console_script():
    assert SCRIPTS == {
        "llm-metrics-proxy": "addon.launch:main",
        "llm-metrics-report": "reports.__main__:run",
        "llm-metrics-migrate": "migrations.__main__:main",
        "llm-metrics-doctor": "addon.__main__:doctor_main",
        "llm-metrics-env": "addon.__main__:env_main",
    }


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_console_script_help_names_the_script(name):
    result = run_script(name, "--help")
    assert result.stdout.startswith(f"usage: {name} "), result.stderr
    if name != "llm-metrics-proxy":  # mitmdump's own help, and exit status (1 in mitmproxy 11, as `mitmdump --help`)
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("name", "args", "says"), [
    ("llm-metrics-report", ["--top", "0"], "error: argument --top: expected a whole number from 1 to 100,000, got '0'\n"),
    ("llm-metrics-migrate", ["status", "--db", ""],
     "error: argument --db: expected a SQLite path or a database URL, got an empty value\n"),
    ("llm-metrics-doctor", ["--wait", "-1"], "error: --wait must be 0 or more\n"),
    ("llm-metrics-env", ["--mode", "sideways"], "error: argument --mode: invalid choice: 'sideways' (choose from "),
])
def test_console_script_bad_input_is_one_error_line_and_exit_2(name, args, says):
    """argparse's own wording of a choice varies between Python versions: its start is compared."""
    result = run_script(name, *args)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith(says) and result.stderr.count("\n") == 1, result.stderr


def test_report_script_reads_the_database_given(tmp_path):
    result = run_script("llm-metrics-report", "--db", str(tmp_path / "none.db"), cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith(f"No database at {tmp_path / 'none.db'} yet")


def test_migrate_script_says_the_version_a_new_database_gets(tmp_path):
    result = run_script("llm-metrics-migrate", "status", "--db", str(tmp_path / "m.db"), cwd=tmp_path)
    assert result.returncode == 0
    assert "no database at" in result.stdout and "the proxy creates it at version" in result.stdout


def test_parser_errors_are_one_redacted_escaped_line(capsys):
    parser = ArgumentParser(prog="python -m x")
    add_db_argument(parser)
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["postgresql://u:PLANTED-pw@db/x\x1b[2J"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == "error: unrecognized arguments: postgresql://u:***@db/x\\x1b[2J\n"


def test_db_argument_refuses_a_directory(tmp_path, capsys):
    parser = ArgumentParser(prog="python -m x")
    add_db_argument(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--db", str(tmp_path)])
    assert capsys.readouterr().err == f"error: argument --db: {tmp_path} is a directory, not a database file\n"


def test_one_line_joins_a_drivers_lines():
    assert one_line('connection failed\n  HINT:  is the server running?\n') == "connection failed HINT:  is the server running?"
