"""Start-up refusals of a real mitmdump: one clear line and a non-zero exit, never a silent default."""

from __future__ import annotations

import os
import sqlite3
import subprocess

import pytest

from tests.conftest import ADDON, MITMDUMP

pytestmark = pytest.mark.e2e


def run_mitmdump(tmp_path, *args: str, home=None, timeout: float = 30) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(home or tmp_path)}
    return subprocess.run(
        [str(MITMDUMP), "--listen-host", "127.0.0.1", "--listen-port", "0", "-s", str(ADDON),
         "--set", f"confdir={tmp_path / 'confdir'}", *args],
        capture_output=True, text=True, timeout=timeout, cwd=tmp_path, env=env,
    )


def test_misspelt_option_stops_the_proxy_with_its_name(tmp_path):
    result = run_mitmdump(tmp_path, "--set", f"llm_metrics_db={tmp_path / 'm.db'}", "--set", "llm_metrics_hostz=a")
    assert result.returncode != 0
    assert "unknown option 'llm_metrics_hostz'" in result.stdout + result.stderr


def test_unusable_database_path_stops_the_proxy_with_one_line(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    result = run_mitmdump(tmp_path, "--set", f"llm_metrics_db={blocker / 'm.db'}")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"cannot use llm_metrics_db='{blocker / 'm.db'}'" in output
    assert "Traceback" not in output


def test_database_file_is_created_private_to_its_owner(tmp_path, start_proxy):
    proxy = start_proxy()
    assert proxy.db_path.stat().st_mode & 0o777 == 0o600


def _original_database(path) -> None:
    from tests.test_migrations_safety import make_original

    make_original(path, 25)


def test_proxy_refuses_to_start_when_no_verified_backup_can_be_made(tmp_path):
    db = tmp_path / "old.db"
    _original_database(db)
    (tmp_path / "backups").write_text("not a directory")
    (tmp_path / ".llm_metrics_proxy").write_text("not a directory either")
    before = db.read_bytes()
    result = run_mitmdump(tmp_path, "--set", f"llm_metrics_db={db}")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "a verified backup must be taken first, but none could be made" in output
    assert "Nothing was migrated" in output and "Traceback" not in output
    assert db.read_bytes() == before


def test_proxy_upgrades_an_original_database_at_start_with_a_backup(tmp_path, start_proxy):
    proxy = start_proxy(name="p")
    proxy.stop()
    db = tmp_path / "old.db"
    _original_database(db)
    upgraded = start_proxy("--set", f"llm_metrics_db={db}", name="q")
    assert "schema upgraded to version" in upgraded.log()
    assert len(list((tmp_path / "backups").glob("old.db.*.backup"))) == 1
    con = sqlite3.connect(db)
    assert con.execute("SELECT count(*) FROM completion_requests").fetchone()[0] == 25
    con.close()


def startup_lines(tmp_path, *args: str, until: str, count: int = 1, timeout: float = 20) -> str:
    """mitmdump's output from its start until `count` lines with `until` (or `timeout`)."""
    import subprocess as sp
    import threading

    proc = sp.Popen([str(MITMDUMP), "-s", str(ADDON), "--set", f"confdir={tmp_path / 'c'}",
                     "--set", f"llm_metrics_db={tmp_path / 'm.db'}", *args],
                    stdout=sp.PIPE, stderr=sp.STDOUT, text=True, cwd=tmp_path)
    guard = threading.Timer(timeout, proc.terminate)  # if the lines never come, stop waiting
    guard.start()
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if sum(until in s for s in seen) >= count:
            break
    guard.cancel()
    proc.terminate()
    return "".join(seen) + proc.communicate(timeout=20)[0]


def test_listening_beyond_loopback_without_proxyauth_is_warned_about(start_proxy, tmp_path):
    from tests.conftest import free_port

    output = startup_lines(tmp_path, "--listen-host", "0.0.0.0", "--listen-port", str(free_port()),
                           until="without proxyauth")
    assert "listens on 0.0.0.0 without proxyauth" in output
    loopback = start_proxy()  # the suite's proxies listen on 127.0.0.1: no warning
    assert "without proxyauth" not in loopback.log()


def test_each_mode_listener_beyond_loopback_is_warned_about(tmp_path):
    from tests.conftest import free_port

    modes = {f"regular@127.0.0.1:{free_port()}": False, f"reverse:http://127.0.0.1:9@0.0.0.0:{free_port()}": True,
             f"socks5@0.0.0.0:{free_port()}": True}
    output = startup_lines(tmp_path, "--listen-host", "127.0.0.1", *[a for m in modes for a in ("--mode", m)],
                           until="without proxyauth", count=2)
    for mode, warned in modes.items():
        assert (f"without proxyauth (mode {mode})" in output) is warned, output
