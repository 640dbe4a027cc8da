"""Budgets and quota thresholds: one log line each time spending or a stated quota crosses a level.
Pure of mitmproxy; nothing is ever blocked, only said.

- A daily budget in USD, overall and per agent (`llm_metrics_budget_daily_usd`,
  `llm_metrics_budget_agents`): the UTC day's `cost_usd` of every recorded call, those of earlier
  runs that day included (`seed`), against 80, 90 and 100 % of the budget.
- A quota threshold (`llm_metrics_quota_alert_percent`): the used percent a response states of a
  subscription's quota window (`quota_used_percent`, `quota_long_used_percent`), against the
  threshold, 90 and 100 %, per agent (else provider) and window.

Each level is said once, when it is first crossed: for a budget once per UTC day, for a quota once
per window (the levels re-arm when the used percent falls back below the lowest one: a new window).
Where a row crosses several levels at once, the highest is said. The run's summary repeats what
was crossed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .quota import window_name

BUDGET_LEVELS = (80.0, 90.0, 100.0)


class Limits(NamedTuple):
    """What to watch; all None or empty: nothing is watched."""

    daily_usd: float | None = None
    agents_daily_usd: Mapping[str, float] = {}
    quota_percent: float | None = None

    @property
    def active(self) -> bool:
        return self.daily_usd is not None or bool(self.agents_daily_usd) or self.quota_percent is not None


def parse_amount(text: str, what: str, *, most: float | None = None) -> float | None:
    """A positive number from an option's text; '' is None (off). ValueError says what is wrong."""
    text = text.strip().lstrip("$")
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what} must be a number, not {text!r}") from None
    if not value > 0 or value == float("inf") or (most is not None and value > most):
        bound = f" and at most {most:g}" if most is not None else ""
        raise ValueError(f"{what} must be more than 0{bound}, not {text!r}")
    return value


def parse_agent_budgets(values: Sequence[str]) -> dict[str, float]:
    """`AGENT=USD` items (several per value, comma-separated) as a mapping; ValueError on a bad one."""
    budgets: dict[str, float] = {}
    for value in values:
        for item in value.split(","):
            if not item.strip():
                continue
            agent, sep, amount = item.partition("=")
            if not sep or not agent.strip():
                raise ValueError(f"llm_metrics_budget_agents takes AGENT=USD items, not {item.strip()!r}")
            parsed = parse_amount(amount, f"the budget of agent {agent.strip()!r}")
            if parsed is None:
                raise ValueError(f"llm_metrics_budget_agents: no amount for agent {agent.strip()!r}")
            budgets[agent.strip().lower()] = parsed
    return budgets


@dataclass
class _Spend:
    day: str = ""
    total: float = 0.0
    by_agent: dict[str, float] = field(default_factory=dict)
    said: dict[str, float] = field(default_factory=dict)  # budget key -> highest level said today


@dataclass
class Watch:
    """Fed every row (`observe`); returns the lines to log."""

    limits: Limits
    spend: _Spend = field(default_factory=_Spend)
    quota_said: dict[tuple[str, str], float] = field(default_factory=dict)
    crossed: list[str] = field(default_factory=list)  # every line said this run, for the summary
    seeded_day: str | None = None  # the UTC day whose earlier spending `seed` added

    def seed(self, day: str, total: float, by_agent: Mapping[str, float]) -> list[str]:
        """Spending of `day` recorded before this run started (earlier runs, other proxies)."""
        if self.spend.day and day != self.spend.day:
            return []  # read just before midnight, applied after: that day is over
        self._roll(day)
        self.spend.total += total
        for agent, cost in by_agent.items():
            self.spend.by_agent[agent] = self.spend.by_agent.get(agent, 0.0) + cost
        self.seeded_day = day
        return self._budget_lines(None)

    def observe(self, row: Mapping[str, Any]) -> list[str]:
        if not self.limits.active:
            return []
        lines: list[str] = []
        cost = row.get("cost_usd")
        agent = row.get("agent")
        if cost is not None and (self.limits.daily_usd is not None or self.limits.agents_daily_usd):
            self._roll(str(row.get("timestamp", ""))[:10])
            self.spend.total += cost
            if agent:
                self.spend.by_agent[agent] = self.spend.by_agent.get(agent, 0.0) + cost
            lines += self._budget_lines(agent)
        if self.limits.quota_percent is not None:
            lines += self._quota_lines(row)
        self.crossed += lines
        return lines

    def summary(self) -> list[str]:
        """What the run's summary says of budgets and quotas (nothing when nothing is watched)."""
        if not self.limits.active:
            return []
        lines = []
        if self.limits.daily_usd is not None:
            lines.append(f"budget: {_usd(self.spend.total)} of {_usd(self.limits.daily_usd)} spent on "
                         f"{self.spend.day or 'the day'} (UTC), {_percent(self.spend.total, self.limits.daily_usd)}")
        for agent, budget in sorted(self.limits.agents_daily_usd.items()):
            spent = self.spend.by_agent.get(agent, 0.0)
            lines.append(f"budget of {agent}: {_usd(spent)} of {_usd(budget)}, {_percent(spent, budget)}")
        if self.crossed:
            lines.append(f"budget and quota levels crossed this run: {len(self.crossed)}")
            lines += ["  " + line.removeprefix("llm-metrics: ") for line in self.crossed[-10:]]
        else:
            lines.append("budget and quota levels crossed this run: none")
        return lines

    # -- budgets ---------------------------------------------------------------------------

    def _roll(self, day: str) -> None:
        if day and day != self.spend.day:
            self.spend = _Spend(day=day)

    def _budget_lines(self, agent: str | None) -> list[str]:
        lines = []
        if self.limits.daily_usd is not None:
            line = self._cross("", self.spend.total, self.limits.daily_usd, "the daily budget")
            lines += [line] if line else []
        agents = [agent] if agent else list(self.spend.by_agent)
        for name in agents:
            budget = self.limits.agents_daily_usd.get(name)
            if budget is not None:
                line = self._cross(name, self.spend.by_agent.get(name, 0.0), budget, f"the daily budget of {name}")
                lines += [line] if line else []
        return lines

    def _cross(self, key: str, spent: float, budget: float, what: str) -> str | None:
        used = 100.0 * spent / budget
        level = _highest(BUDGET_LEVELS, used)
        if level is None or level <= self.spend.said.get(key, 0.0):
            return None
        self.spend.said[key] = level
        return (f"llm-metrics: {level:g} % of {what} reached: {_usd(spent)} of {_usd(budget)} spent on "
                f"{self.spend.day} (UTC)")

    # -- quotas ----------------------------------------------------------------------------

    def _quota_lines(self, row: Mapping[str, Any]) -> list[str]:
        assert self.limits.quota_percent is not None
        levels = tuple(sorted({self.limits.quota_percent, *(x for x in (90.0, 100.0) if x > self.limits.quota_percent)}))
        who = row.get("agent") or row.get("provider") or "unknown"
        lines = []
        for window, used_column, minutes_column, reset_column in (
                ("short", "quota_used_percent", "quota_window_minutes", "quota_reset_at"),
                ("long", "quota_long_used_percent", "quota_long_window_minutes", "quota_long_reset_at")):
            used = row.get(used_column)
            if used is None:
                continue
            key = (who, window)
            level = _highest(levels, used)
            if level is None:
                self.quota_said.pop(key, None)  # below every level: a new window, the levels re-arm
                continue
            if level <= self.quota_said.get(key, 0.0):
                continue
            self.quota_said[key] = level
            reset = row.get(reset_column)
            name = window_name(row.get(minutes_column), f"{window} window")
            lines.append(f"llm-metrics: quota of {who} ({name}) at "
                         f"{used:g} % used, past {level:g} %" + (f"; it resets at {reset}" if reset else ""))
        return lines


def _highest(levels: Sequence[float], used: float) -> float | None:
    crossed = [level for level in levels if used >= level]
    return crossed[-1] if crossed else None


def _usd(amount: float) -> str:
    """Cents from a dollar up; below, as many decimals as a small budget needs (at most 6)."""
    if amount >= 1 or amount == 0:
        return f"${amount:,.2f}"
    text = f"{amount:.6f}".rstrip("0")
    return "$" + (text if len(text.split(".")[1]) >= 2 else f"{amount:.2f}")


def _percent(spent: float, budget: float) -> str:
    return f"{100.0 * spent / budget:.0f} %"


