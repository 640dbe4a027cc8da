"""Your own prices (addon/prices.py): which entry prices a call, what it costs, bad files refused in
one line, rows and repricing saying where a price came from, and a real mitmdump using the file."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from addon.formats import ResponseFacts
from addon.formats.openai_chat import OpenAIChat
from addon.prices import Price, PriceBook, PriceFileError, load_prices
from addon.pricing import cost_usd, price_call
from addon.record import Call, build_row
from migrations import upgrade
from storage import open_database
from tests.clients import httpx

PRICES = """
[[price]]
model = "llama-3.1-70b*"
input_per_million = 0.20
output_per_million = 0.60

[[price]]
model = "llama-3.1-70b*"
host = "GPU-box.internal"
input_per_million = 0.10
cached_input_per_million = 0.05
cache_write_per_million = 0.25
output_per_million = 0.30

[[price]]
model = "llama-3.1-70b-instruct"
input_per_million = 0.15
output_per_million = 0.45

[[price]]
model = "gpt-4o-mini"
provider = "openai"
input_per_million = 1.0
output_per_million = 2.0
"""


@pytest.fixture
def book(tmp_path) -> PriceBook:
    path = tmp_path / "prices.toml"
    path.write_text(PRICES)
    return load_prices(str(path))


def test_a_glob_matches_and_unknown_models_are_left_to_genai_prices(book):
    price = book.find("openai-compatible", "10.0.0.5", "llama-3.1-70b-awq")
    assert (price.input_per_million, price.output_per_million) == (0.20, 0.60)
    assert book.find("openai-compatible", "10.0.0.5", "mistral-7b") is None
    assert book.find("openai-compatible", "10.0.0.5", None) is None


def test_an_entry_for_the_host_beats_a_global_one_and_hosts_compare_without_case(book):
    price = book.find("openai-compatible", "gpu-box.internal", "llama-3.1-70b-awq")
    assert price.host == "gpu-box.internal" and price.input_per_million == 0.10


def test_an_exact_model_beats_a_glob_of_the_same_scope(book):
    assert book.find(None, "elsewhere", "llama-3.1-70b-instruct").input_per_million == 0.15
    # but a host-scoped glob beats a global exact name
    assert book.find(None, "gpu-box.internal", "llama-3.1-70b-instruct").input_per_million == 0.10


def test_a_provider_scoped_price_applies_to_that_provider_only(book):
    assert book.find("openai", "api.openai.com", "gpt-4o-mini").input_per_million == 1.0
    assert book.find("azure-openai", "x.openai.azure.com", "gpt-4o-mini") is None


def test_cost_prices_cache_reads_and_writes_at_their_rates_else_at_the_input_rate():
    price = Price(model="m", input_per_million=1.0, output_per_million=4.0, cached_input_per_million=0.1,
                  cache_write_per_million=2.0)
    # 1000 input of which 300 cache reads and 200 cache writes; 100 output
    assert price.cost(1000, 100, 300, 200) == pytest.approx((500 * 1.0 + 300 * 0.1 + 200 * 2.0 + 100 * 4.0) / 1e6)
    plain = Price(model="m", input_per_million=1.0, output_per_million=4.0)
    assert plain.cost(1000, 100, 300, 200) == pytest.approx((1000 * 1.0 + 100 * 4.0) / 1e6)
    assert plain.cost(1000, None, None, None) == pytest.approx(1000 / 1e6)


def test_the_file_comes_first_then_genai_prices(book):
    at = datetime(2026, 1, 15, tzinfo=UTC)
    assert price_call(provider="openai", host="api.openai.com", model="gpt-4o-mini", prompt_tokens=1000,
                      completion_tokens=100, at=at, book=book) == (pytest.approx(1.2e-3), "custom")
    genai = cost_usd(provider="openai", model="gpt-4o", prompt_tokens=1000, completion_tokens=100, at=at)
    assert price_call(provider="openai", host="api.openai.com", model="gpt-4o", prompt_tokens=1000,
                      completion_tokens=100, at=at, book=book) == (genai, "genai-prices")
    assert price_call(provider="openai-compatible", host="h", model="unknown", prompt_tokens=1000,
                      completion_tokens=100, at=at, book=book) == (None, None)


def test_a_row_says_where_its_price_came_from(book):
    call = Call(fmt=OpenAIChat(), started_at=1_768_471_200.0, t_start=0.0, host="gpu-box.internal", port=8000,
                path="/v1/chat/completions", provider="openai-compatible", origin=None, request={}, prices=book)
    row = build_row(call, ResponseFacts(model="llama-3.1-70b-awq", prompt_tokens=2000, completion_tokens=500,
                                        cached_tokens=1000),
                    status_code=200, t_end=1.0)
    assert row["price_source"] == "custom"
    assert row["cost_usd"] == pytest.approx((1000 * 0.10 + 1000 * 0.05 + 500 * 0.30) / 1e6)
    call.prices = None
    row = build_row(call, ResponseFacts(model="llama-3.1-70b-awq", prompt_tokens=2000, completion_tokens=500),
                    status_code=200, t_end=1.0)
    assert (row["cost_usd"], row["price_source"]) == (None, None)  # a local server: genai-prices never guesses


@pytest.mark.parametrize("text, says", [
    ("[[price]]\nmodel = 'x'\ninput_per_million = 1\n", "`output_per_million` (USD per million tokens) is required"),
    ("[[price]]\ninput_per_million = 1\noutput_per_million = 1\n", "`model` (a name or a glob) is required"),
    ("[[price]]\nmodel = 'x'\ninput_per_million = -1\noutput_per_million = 1\n", "`input_per_million` must be a number"),
    ("[[price]]\nmodel = 'x'\ninput_per_million = 'cheap'\noutput_per_million = 1\n", "`input_per_million` must be"),
    ("[[price]]\nmodel = 'x'\ninput_per_milion = 1\noutput_per_million = 1\n", "unknown key 'input_per_milion'"),
    ("[[price]]\nmodel = 'x'\nhost = 'h'\nprovider = 'p'\ninput_per_million = 1\noutput_per_million = 1\n",
     "give `host` or `provider`, not both"),
    ("[[prices]]\nmodel = 'x'\n", "unknown table or key 'prices'"),
    ("[[price]\n", "is not valid TOML"),
])
def test_a_bad_file_is_refused_in_one_line_naming_file_and_entry(tmp_path, text, says):
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(PriceFileError) as caught:
        load_prices(str(path))
    message = str(caught.value)
    assert says in message and str(path) in message and "\n" not in message


def test_a_missing_file_is_refused(tmp_path):
    with pytest.raises(PriceFileError, match="cannot read prices file"):
        load_prices(str(tmp_path / "none.toml"))


# -- stored rows: the m008 step, and repricing with a file -----------------------------------------


def _db_with_costs(path) -> None:
    db = open_database(str(path))
    upgrade(db)
    db.close()
    con = sqlite3.connect(path)
    rows = [("2026-01-15T10:00:00.000000Z", "gpu-box.internal", "openai-compatible", "llama-3.1-70b-awq", None),
            ("2026-01-15T10:00:01.000000Z", "api.openai.com", "openai", "gpt-4o", 0.00123)]
    con.executemany("INSERT INTO completion_requests (timestamp, success, response_time_ms, is_streaming, host, "
                    "provider, model, operation, prompt_tokens, completion_tokens, usage_source, cost_usd) "
                    "VALUES (?, 1, 5, 0, ?, ?, ?, 'chat', 1000, 100, 'reported', ?)", rows)
    con.commit()
    con.close()


def test_the_m008_step_says_earlier_costs_came_from_genai_prices(tmp_path):
    path = tmp_path / "m.db"
    _db_with_costs(path)
    con = sqlite3.connect(path)  # back to schema 7: the steps since undone, their history rows gone
    con.execute("ALTER TABLE completion_requests DROP COLUMN price_source")
    con.execute("DROP TABLE daily_totals")
    con.execute("DELETE FROM schema_version WHERE version >= 8")
    con.commit()
    con.close()
    result = upgrade(open_database(str(path)))
    assert [s.name for s in result.applied][:1] == ["m008_price_source"]
    con = sqlite3.connect(path)
    assert con.execute("SELECT cost_usd, price_source FROM completion_requests ORDER BY id").fetchall() == \
        [(None, None), (0.00123, "genai-prices")]
    con.close()


def test_reprice_with_a_prices_file_prices_what_it_names(tmp_path):
    path, prices = tmp_path / "m.db", tmp_path / "prices.toml"
    _db_with_costs(path)
    prices.write_text(PRICES)
    command = [sys.executable, "-m", "migrations", "reprice", "--db", str(path)]
    done = subprocess.run([*command, "--prices", str(prices)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "repriced: 2 row(s)" in done.stdout
    con = sqlite3.connect(path)
    local, openai_row = con.execute("SELECT cost_usd, price_source FROM completion_requests ORDER BY id").fetchall()
    con.close()
    assert local == (pytest.approx((1000 * 0.10 + 100 * 0.30) / 1e6), "custom")
    assert openai_row[1] == "genai-prices" and openai_row[0] > 0
    prices.write_text("[[price]]\nmodel = 3\n")
    bad = subprocess.run([*command, "--prices", str(prices)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("error: prices file ") and bad.stderr.count("\n") == 1


# -- a real mitmdump ---------------------------------------------------------------------------------


@pytest.mark.e2e
def test_the_proxy_prices_calls_from_the_file(start_proxy, upstream, tmp_path):
    from tests.upstream import Scenario

    prices = tmp_path / "prices.toml"
    prices.write_text('[[price]]\nmodel = "gpt-fake-*"\nhost = "127.0.0.1"\ninput_per_million = 2\noutput_per_million = 8\n')
    proxy = start_proxy("--set", f"llm_metrics_prices={prices}")
    upstream.scenarios["default"] = Scenario()
    with httpx.Client(proxy=proxy.url) as client:
        client.post(f"{upstream.base_url}/chat/completions", json={"model": "gpt-fake", "messages": []})
    [row] = proxy.rows(1)
    assert row["price_source"] == "custom"
    assert row["cost_usd"] == pytest.approx((11 * 2 + 6 * 8) / 1e6)  # the fake upstream's 11 in, 6 out
    assert "1 price(s) from" in proxy.log()


@pytest.mark.e2e
def test_a_bad_prices_file_stops_the_proxy_with_one_line(start_proxy, tmp_path):
    prices = tmp_path / "prices.toml"
    prices.write_text("[[price]]\nmodel = 'x'\n")
    proxy = start_proxy("--set", f"llm_metrics_prices={prices}", wait=False)
    assert proxy.proc.wait(timeout=30) != 0
    assert f"prices file {prices}, [[price]] #1: `input_per_million` (USD per million tokens) is required" in proxy.log()
