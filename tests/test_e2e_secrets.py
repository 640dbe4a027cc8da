"""Secrets never stored: distinct secrets planted in every auth header and a `key=` query
parameter never reach the database, its WAL, a backup, or the proxy's log."""

from __future__ import annotations

import stat

import pytest

from migrations import make_backup
from tests.clients import httpx

pytestmark = pytest.mark.e2e

SECRETS = {
    "authorization": "Bearer sk-planted-authorization-7c1e",
    "x-api-key": "sk-ant-planted-x-api-key-52aa",
    "api-key": "azure-planted-api-key-90d3",
    "x-goog-api-key": "AIza-planted-goog-key-11f0",
}
QUERY_SECRET = "AIza-planted-query-key-3b7d"


def test_planted_secrets_are_nowhere_on_disk_or_in_the_log(proxy, upstream):
    client = httpx.Client(proxy=proxy.url)
    body = {"model": "gpt-fake", "messages": [{"role": "user", "content": "hi"}]}
    for stream in (False, True):
        response = client.post(f"{upstream.base_url}/chat/completions?key={QUERY_SECRET}&api-version=1",
                               json=dict(body, stream=stream), headers=SECRETS)
        assert response.status_code == 200
    # The upstream did get them: the proxy forwards credentials untouched.
    assert upstream.last().headers["x-api-key"] == SECRETS["x-api-key"]
    rows = proxy.rows(2)
    assert [r["path"] for r in rows] == ["/v1/chat/completions"] * 2  # no query string stored
    backup = make_backup(proxy.db_path)
    files = [p for p in proxy.db_path.parent.glob("metrics.db*")] + [backup]
    assert any(p.name.endswith("-wal") for p in files)  # the WAL is scanned while it exists
    for needle in [*SECRETS.values(), QUERY_SECRET, "planted"]:
        for path in files:
            assert needle.encode() not in path.read_bytes(), (needle, path.name)
    proxy.stop()
    for needle in [*SECRETS.values(), QUERY_SECRET]:
        assert needle not in proxy.log()
    for path in [proxy.db_path, backup]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
