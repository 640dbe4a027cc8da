"""`python -m reports` on real SQLite files, numbers checked against values computed here."""

from __future__ import annotations

import io
import json
import math
import random

from rich.console import Console

from migrations import upgrade
from reports.__main__ import main
from reports.data import load_report
from reports.render import render
from storage import CompletionRequest, open_database


def percentile(values, p):
    """Nearest rank, written independently of the code under test."""
    ordered = sorted(values)
    return ordered[math.ceil(p * len(ordered)) - 1]


def make_db(tmp_path, n=500, seed=7):
    rng = random.Random(seed)
    path = tmp_path / "m.db"
    db = open_database(str(path))
    upgrade(db)
    rows = []
    for i in range(n):
        streaming = rng.random() < 0.6
        rows.append({
            "timestamp": f"2026-11-{1 + i % 20:02d}T10:00:00.000000Z",
            "success": rng.random() > 0.1,
            "status_code": 200,
            "response_time_ms": rng.randint(50, 5000),
            "model": rng.choice(["gpt-a", "gpt-b", "claude-c"]),
            "is_streaming": streaming,
            "time_to_first_token_ms": rng.randint(20, 900) if streaming else None,
            "prompt_tokens": rng.randint(1, 100),
            "completion_tokens": rng.randint(1, 100),
        })
    with db.bind_ctx([CompletionRequest]):
        CompletionRequest.insert_many(rows).execute()
    db.close()
    return path, rows


def test_json_report_numbers_match_independent_computation(tmp_path, capsys):
    path, rows = make_db(tmp_path)
    assert main(["--db", str(path), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["overview"]["requests"] == len(rows)
    assert out["overview"]["errors"] == sum(not r["success"] for r in rows)
    assert out["overview"]["prompt_tokens"] == sum(r["prompt_tokens"] for r in rows)
    by_model = {g["key"]: g for g in out["by_model"]}
    for model in ("gpt-a", "gpt-b", "claude-c"):
        mine = [r for r in rows if r["model"] == model]
        latency = [r["response_time_ms"] for r in mine]
        ttft = [r["time_to_first_token_ms"] for r in mine if r["is_streaming"]]
        got = by_model[model]
        assert got["requests"] == len(mine)
        for name, p in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
            assert got["latency_ms"][name] == percentile(latency, p), (model, name)
        for name, p in (("p50", 0.5), ("p95", 0.95)):
            assert got["ttft_ms"][name] == percentile(ttft, p), (model, name)


def test_text_report_renders_the_model_table(tmp_path):
    path, rows = make_db(tmp_path, n=50)
    db = open_database(str(path), create=False)
    console = Console(file=io.StringIO(), width=120, color_system=None)
    console.print(render(load_report(db, str(path))))
    text = console.file.getvalue()
    assert f"{len(rows):,} requests" in text
    p50 = percentile([r["response_time_ms"] for r in rows if r["model"] == "gpt-a"], 0.5)
    [line] = [line for line in text.splitlines() if "gpt-a" in line]
    assert f"{p50:,}" in line
    assert "\x1b[" not in text


def test_missing_database_says_where_it_looked_and_exits_0(tmp_path, capsys):
    missing = tmp_path / "nowhere.db"
    assert main(["--db", str(missing)]) == 0
    out = capsys.readouterr().out
    assert str(missing) in out and "start the proxy" in out
    assert not missing.exists()  # looking never creates it


def test_empty_database_says_so_and_exits_0(tmp_path, capsys):
    path = tmp_path / "m.db"
    upgrade(open_database(str(path)))
    assert main(["--db", str(path)]) == 0
    assert "holds no LLM calls yet" in capsys.readouterr().out
