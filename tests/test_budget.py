"""Budgets and quota thresholds (addon/budget.py): each level said once, the highest crossed."""

from __future__ import annotations

import pytest

from addon.budget import Limits, Watch, parse_agent_budgets, parse_amount


def row(cost=None, agent=None, day="2026-12-07", **extra):
    return {"timestamp": f"{day}T10:00:00.000000Z", "cost_usd": cost, "agent": agent, "provider": "anthropic",
            **extra}


def said(watch: Watch, rows) -> list[str]:
    return [line for r in rows for line in watch.observe(r)]


def test_nothing_is_watched_or_said_without_limits():
    watch = Watch(Limits())
    assert said(watch, [row(100.0, quota_used_percent=100.0)]) == [] and watch.summary() == []


def test_each_budget_level_is_said_once_as_it_is_crossed():
    watch = Watch(Limits(daily_usd=10.0))
    lines = said(watch, [row(5.0), row(3.5), row(0.5), row(0.6), row(0.1), row(1.0), row(5.0)])
    assert [line.split(" % ")[0].rsplit(" ", 1)[-1] for line in lines] == ["80", "90", "100"]
    assert "$8.50 of $10.00 spent on 2026-12-07 (UTC)" in lines[0]


def test_a_row_crossing_several_levels_says_the_highest_only():
    watch = Watch(Limits(daily_usd=1.0))
    [line] = said(watch, [row(0.5), row(0.6)])
    assert line.startswith("llm-metrics: 100 % of the daily budget reached: $1.10 of $1.00")


def test_a_new_utc_day_starts_from_nothing_and_levels_re_arm():
    watch = Watch(Limits(daily_usd=1.0))
    first = said(watch, [row(0.85, day="2026-12-07")])
    second = said(watch, [row(0.5, day="2026-12-08"), row(0.35, day="2026-12-08")])
    assert len(first) == 1 and len(second) == 1 and "2026-12-08" in second[0]


def test_agent_budgets_count_that_agents_calls_only():
    watch = Watch(Limits(agents_daily_usd={"codex": 2.0}))
    lines = said(watch, [row(1.9, agent="claude-code"), row(1.7, agent="codex"), row(None, agent="codex")])
    assert lines == ["llm-metrics: 80 % of the daily budget of codex reached: $1.70 of $2.00 spent on 2026-12-07 (UTC)"]


def test_calls_without_a_cost_count_nothing():
    watch = Watch(Limits(daily_usd=1.0))
    assert said(watch, [row(None), row(None)]) == [] and watch.spend.total == 0


def test_spending_of_earlier_runs_that_day_counts_and_is_said_at_once():
    watch = Watch(Limits(daily_usd=10.0, agents_daily_usd={"codex": 1.0}))
    lines = watch.seed("2026-12-07", 9.2, {"codex": 0.5})
    assert [line.split(" % ")[0].rsplit(" ", 1)[-1] for line in lines] == ["90"]
    overall, codex = said(watch, [row(0.9, agent="codex")])
    assert overall.startswith("llm-metrics: 100 % of the daily budget reached: $10.10 of $10.00")
    assert codex.startswith("llm-metrics: 100 % of the daily budget of codex reached: $1.40 of $1.00")


def test_a_seed_for_a_day_already_over_is_ignored():
    watch = Watch(Limits(daily_usd=10.0))
    said(watch, [row(1.0, day="2026-12-08")])
    assert watch.seed("2026-12-07", 50.0, {}) == [] and watch.spend.total == 1.0


def test_quota_threshold_then_90_then_100_each_once_per_window():
    watch = Watch(Limits(quota_percent=75.0))
    used = [50.0, 76.0, 80.0, 91.0, 95.0, 100.0, 100.0]
    lines = said(watch, [row(agent="claude-code", quota_used_percent=u, quota_window_minutes=300,
                             quota_reset_at="2026-12-07T15:00:00.000000Z") for u in used])
    assert [line.split("past ")[1].split(" %")[0] for line in lines] == ["75", "90", "100"]
    assert lines[0] == ("llm-metrics: quota of claude-code (5-hour window) at 76 % used, past 75 %; it resets at "
                        "2026-12-07T15:00:00.000000Z")


def test_quota_levels_re_arm_when_a_new_window_starts():
    watch = Watch(Limits(quota_percent=80.0))
    lines = said(watch, [row(quota_used_percent=85.0), row(quota_used_percent=3.0), row(quota_used_percent=81.0)])
    assert len(lines) == 2


def test_the_long_window_is_watched_apart():
    watch = Watch(Limits(quota_percent=80.0))
    lines = said(watch, [row(agent="codex", quota_used_percent=10.0, quota_long_used_percent=92.0,
                             quota_long_window_minutes=10080)])
    assert lines == ["llm-metrics: quota of codex (7-day window) at 92 % used, past 90 %"]


def test_summary_says_spending_and_what_was_crossed():
    watch = Watch(Limits(daily_usd=2.0, agents_daily_usd={"aider": 5.0}))
    said(watch, [row(1.7, agent="codex")])
    summary = watch.summary()
    assert summary[0] == "budget: $1.70 of $2.00 spent on 2026-12-07 (UTC), 85 %"
    assert summary[1] == "budget of aider: $0.00 of $5.00, 0 %"
    assert summary[2] == "budget and quota levels crossed this run: 1"
    assert summary[3].startswith("  80 % of the daily budget reached")


@pytest.mark.parametrize("text, expected", [("", None), (" 25 ", 25.0), ("$7.5", 7.5)])
def test_amounts_are_read(text, expected):
    assert parse_amount(text, "x") == expected


@pytest.mark.parametrize("text", ["abc", "0", "-3", "inf", "nan"])
def test_bad_amounts_are_refused_with_the_reason(text):
    with pytest.raises(ValueError, match="x must be"):
        parse_amount(text, "x")


def test_a_percent_above_100_is_refused():
    with pytest.raises(ValueError, match="at most 100"):
        parse_amount("120", "llm_metrics_quota_alert_percent", most=100.0)


def test_agent_budgets_are_read_from_items():
    assert parse_agent_budgets(["claude-code=20, codex=$10", "Aider=1.5"]) == \
        {"claude-code": 20.0, "codex": 10.0, "aider": 1.5}


@pytest.mark.parametrize("value", ["codex", "=5", "codex=", "codex=abc"])
def test_bad_agent_budgets_are_refused(value):
    with pytest.raises(ValueError):
        parse_agent_budgets([value])
