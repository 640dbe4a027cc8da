"""addon/pricing.py: cost_usd from genai-prices' bundled data, and migrations/reprice.py."""

from __future__ import annotations

import socket
import sqlite3
from datetime import UTC, datetime

import pytest

from addon import pricing
from addon.pricing import cost_usd, price_provider
from migrations import upgrade
from migrations.reprice import reprice
from storage import open_database

AT = datetime(2026, 1, 15, tzinfo=UTC)
PER_M = 1e-6


def test_anthropic_cache_reads_and_writes_are_priced_at_their_own_rates():
    # claude-3-5-sonnet: $3/M input, $3.75/M cache write, $0.30/M cache read, $15/M output.
    cost = cost_usd(provider="anthropic", model="claude-3-5-sonnet-20240620", prompt_tokens=100 + 1000 + 200,
                    completion_tokens=50, cached_tokens=1000, cache_creation_tokens=200, at=AT)
    assert cost == pytest.approx((100 * 3 + 1000 * 0.30 + 200 * 3.75 + 50 * 15) * PER_M, rel=1e-9)


def test_openai_cached_input_is_priced_at_the_cache_read_rate():
    # gpt-4o-mini: $0.15/M input, $0.075/M cached input, $0.60/M output.
    cost = cost_usd(provider="openai", model="gpt-4o-mini-2024-07-18", prompt_tokens=1149, completion_tokens=353,
                    cached_tokens=1024, at=AT)
    assert cost == pytest.approx((125 * 0.15 + 1024 * 0.075 + 353 * 0.60) * PER_M, rel=1e-9)


@pytest.mark.parametrize(("provider", "model"), [
    ("gemini", "gemini-2.5-flash"), ("vertex-ai", "gemini-2.5-flash"), ("azure-openai", "gpt-4.1-mini-2025-04-14"),
    ("openrouter", "anthropic/claude-sonnet-4.5"), ("groq", "llama3-8b-8192"), ("mistral", "mistral-tiny"),
    ("deepseek", "deepseek-reasoner"), ("together", "mistralai/Mixtral-8x7B-Instruct-v0.1"),
    ("openai", "text-embedding-ada-002"),
])
def test_models_from_the_recorded_fixtures_have_a_price(provider, model):
    assert cost_usd(provider=provider, model=model, prompt_tokens=1000, completion_tokens=10, at=AT) > 0


@pytest.mark.parametrize(("provider", "model", "prompt"), [
    ("openai", "gpt-fake-2026-01-01", 10),  # a model the price data does not know
    ("openai-compatible", "gpt-4o-mini", 10),  # a local server is never priced as OpenAI
    ("anthropic-compatible", "claude-3-5-sonnet-20240620", 10),  # nor one speaking Anthropic's API
    ("gemini-compatible", "gemini-2.5-flash", 10),
    ("gemini-code-assist", "gemini-2.5-flash", 10),  # a free tier or a subscription: no list price
    ("ollama", "llama3", 10),
    ("openai", None, 10),
    ("openai", "gpt-4o-mini", None),  # no reported input
    ("my-own-gateway", "gpt-4o-mini", 10),  # a host name the user gave, unknown to the data
])
def test_unknown_model_provider_or_usage_is_null_never_a_guess(provider, model, prompt):
    assert cost_usd(provider=provider, model=model, prompt_tokens=prompt, completion_tokens=5, at=AT) is None


def test_counts_that_do_not_add_up_are_unpriced():
    assert cost_usd(provider="openai", model="gpt-4o-mini", prompt_tokens=10, completion_tokens=5, cached_tokens=50) is None


def test_provider_names_map_to_the_price_data_ids():
    assert [price_provider(p) for p in ("gemini", "azure-openai", "xai", "openai-compatible", "ollama", None)] == [
        "google", "azure", "x-ai", None, None, None]


def test_price_data_is_bundled_and_read_without_the_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("genai-prices tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    assert pricing.warm()
    assert cost_usd(provider="openai", model="gpt-4o", prompt_tokens=10, completion_tokens=1, at=AT) > 0


# --- migrations.reprice ---------------------------------------------------------------------------

COLUMNS = ("timestamp", "success", "response_time_ms", "is_streaming", "provider", "model", "operation",
           "prompt_tokens", "completion_tokens", "cached_tokens", "cache_creation_tokens", "usage_source", "cost_usd",
           "price_source")


@pytest.fixture
def db_path(tmp_path):
    path = tmp_path / "metrics.db"
    db = open_database(str(path))
    upgrade(db)
    db.close()
    return path


def insert(path, *rows) -> None:
    con = sqlite3.connect(path)
    con.executemany(f"INSERT INTO completion_requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})", rows)
    con.commit()
    con.close()


def costs(path) -> list:
    con = sqlite3.connect(path)
    try:
        return [r[0] for r in con.execute("SELECT cost_usd FROM completion_requests ORDER BY id")]
    finally:
        con.close()


def row(provider="openai", model="gpt-4o-mini", prompt=1000, completion=100, cached=None, written=None,
        usage="reported", cost=None, operation="chat", stamp="2026-01-15T10:00:00.000000Z", source=None):
    return (stamp, 1, 5, 0, provider, model, operation, prompt, completion, cached, written, usage, cost, source)


def test_reprice_fills_and_corrects_costs_and_counts_the_changed_rows(db_path):
    right = cost_usd(provider="openai", model="gpt-4o-mini", prompt_tokens=1000, completion_tokens=100, at=AT)
    insert(db_path,
           row(cost=None),  # recorded when the price data did not know the model
           row(cost=123.0),  # an old price
           row(cost=right, source="genai-prices"),  # already right: not counted
           row(provider="openai-compatible"),  # a local server: stays NULL
           row(usage="missing", prompt=None, completion=None),
           row(usage=None),  # recorded before costs existed (schema 2): priced now
           row(operation="embeddings", model="text-embedding-ada-002", completion=None),
           row(completion=None, usage=None))  # a cut stream from before: never priced
    assert reprice(open_database(str(db_path))) == 4
    embedding = cost_usd(provider="openai", model="text-embedding-ada-002", prompt_tokens=1000, completion_tokens=None, at=AT)
    assert costs(db_path) == [right, right, right, None, None, right, embedding, None]
    assert reprice(open_database(str(db_path))) == 0  # nothing left to change


def test_reprice_leaves_every_other_column_as_it_was(db_path):
    insert(db_path, row(cost=1.0), row(provider="anthropic", model="claude-3-5-sonnet", cached=10, written=20))
    con = sqlite3.connect(db_path)
    before = con.execute("SELECT * FROM completion_requests").fetchall()
    con.close()
    assert reprice(open_database(str(db_path))) == 2
    con = sqlite3.connect(db_path)
    after = con.execute("SELECT * FROM completion_requests").fetchall()
    names = [d[1] for d in con.execute("PRAGMA table_info(completion_requests)")]
    con.close()
    keep = [i for i, n in enumerate(names) if n not in ("cost_usd", "price_source")]
    assert [[r[i] for i in keep] for r in after] == [[r[i] for i in keep] for r in before]


def test_reprice_prices_each_row_as_of_its_own_timestamp(db_path, monkeypatch):
    seen = []
    real = pricing.cost_usd

    def spy(**kwargs):
        seen.append(kwargs["at"])
        return real(**kwargs)

    monkeypatch.setattr("addon.pricing.cost_usd", spy)
    insert(db_path, row(stamp="2025-03-01T08:00:00.000000Z"), row(stamp="not a time"))
    reprice(open_database(str(db_path)))
    assert seen == [datetime(2025, 3, 1, 8, tzinfo=UTC), None]
