"""Start-up refusals of a real mitmdump: one clear line and a non-zero exit, never a silent default."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import ADDON, MITMDUMP

pytestmark = pytest.mark.e2e


def run_mitmdump(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(MITMDUMP), "--listen-host", "127.0.0.1", "--listen-port", "0", "-s", str(ADDON),
         "--set", f"confdir={tmp_path / 'confdir'}", *args],
        capture_output=True, text=True, timeout=30, cwd=tmp_path,
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
