"""The short summary printed when mitmdump exits: what this run captured, per model, and the
requests that looked like LLM calls but were not parsed (named, so a user can report them).

Pure: no mitmproxy. The addon feeds `RunTotals.add` each row as `addon.record.build_row` made it
(so memory grows by two small integers per call, not by the rows) and prints `lines()` in `done`.

p50 is the nearest-rank median (the smallest value with at least half the calls at or below it),
the same definition `python -m reports` uses, so the two agree on the same calls.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .redact import redact
from .summary import count_text, ms_text

MODEL_WIDTH = 32
MAX_MODELS = 15
MAX_UNPARSED = 5
NO_MODEL = "(no model)"


@dataclass
class ModelTotals:
    calls: int = 0
    errors: int = 0
    prompt_tokens: int | None = None  # None until some call reported it
    completion_tokens: int | None = None
    latency_ms: array = field(default_factory=lambda: array("q"))
    ttft_ms: array = field(default_factory=lambda: array("q"))

    def add(self, row: Mapping[str, Any]) -> None:
        self.calls += 1
        if not row.get("success"):
            self.errors += 1
        self.prompt_tokens = _plus(self.prompt_tokens, row.get("prompt_tokens"))
        self.completion_tokens = _plus(self.completion_tokens, row.get("completion_tokens"))
        if row.get("response_time_ms") is not None:
            self.latency_ms.append(row["response_time_ms"])
        if row.get("time_to_first_token_ms") is not None:
            self.ttft_ms.append(row["time_to_first_token_ms"])


class RunTotals:
    """Per-model totals of one run, fed one row at a time."""

    def __init__(self) -> None:
        self.models: dict[str, ModelTotals] = {}

    def add(self, row: Mapping[str, Any]) -> None:
        self.models.setdefault(row.get("model") or NO_MODEL, ModelTotals()).add(row)

    def lines(self, unparsed: Mapping[str, int] | None = None, part: str | None = None) -> list[str]:
        """The lines to print, without timestamps or logger prefixes; `part` names the part of
        the run these totals cover when they are not the whole run's."""
        lines = self._call_lines(part)
        lines.extend(unparsed_lines(unparsed or {}))
        return lines

    def _call_lines(self, part: str | None = None) -> list[str]:
        calls = sum(m.calls for m in self.models.values())
        if calls == 0:
            if part:
                return []
            return ["llm-metrics: no LLM calls captured this run (`python -m addon doctor` checks the set-up)"]
        errors = sum(m.errors for m in self.models.values())
        prompt = _sum_known(m.prompt_tokens for m in self.models.values())
        completion = _sum_known(m.completion_tokens for m in self.models.values())
        lines = [
            f"llm-metrics: {f'this run, {part}' if part else 'this run'}: {_count(calls, 'call')}, {_count(errors, 'error')}, "
            f"tokens {count_text(prompt)} in / {count_text(completion)} out",
            f"  {'model':<{MODEL_WIDTH}} {'calls':>6} {'errors':>6} {'tokens in':>10} {'tokens out':>10} "
            f"{'p50 latency':>11} {'p50 ttft':>9}",
        ]
        ranked = sorted(self.models.items(), key=lambda item: (-item[1].calls, item[0]))
        for name, m in ranked[:MAX_MODELS]:
            lines.append(
                f"  {_fit(name):<{MODEL_WIDTH}} {m.calls:>6} {m.errors:>6} {count_text(m.prompt_tokens):>10} "
                f"{count_text(m.completion_tokens):>10} {ms_text(p50(m.latency_ms)):>11} {ms_text(p50(m.ttft_ms)):>9}"
            )
        if len(ranked) > MAX_MODELS:
            rest = ranked[MAX_MODELS:]
            lines.append(f"  ... and {len(rest)} more model(s) with {sum(m.calls for _, m in rest)} call(s): "
                         "python -m reports has them all")
        return lines


def unparsed_lines(unparsed: Mapping[str, int]) -> list[str]:
    counted = sorted(((n, name) for name, n in unparsed.items() if n > 0), key=lambda x: (-x[0], x[1]))
    if not counted:
        return []
    total = sum(n for n, _ in counted)
    named = ", ".join(f"{name} ({n})" for n, name in counted[:MAX_UNPARSED])
    if len(counted) > MAX_UNPARSED:
        named += f", and {len(counted) - MAX_UNPARSED} more"
    return [
        f"llm-metrics: {_count(total, 'request')} looked like LLM calls but were not parsed "
        f"(please report them): {named}"
    ]


def p50(values: array) -> int | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[(len(ordered) + 1) // 2 - 1]  # nearest rank: ceil(n / 2), 1-based


def _plus(total: int | None, value: int | None) -> int | None:
    if value is None:
        return total
    return value if total is None else total + value


def _sum_known(values: Iterable[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _fit(name: str) -> str:
    name = redact(name)  # a model's name is the provider's text
    return name if len(name) <= MODEL_WIDTH else name[: MODEL_WIDTH - 1] + "…"
