"""Prices a user sets: a TOML file (`--set llm_metrics_prices=PATH`) for self-hosted models and
negotiated rates, taking precedence over genai-prices. Pure: no mitmproxy.

    [[price]]
    model = "llama-3.1-70b*"          # exact name or glob (fnmatch: *, ?, [...]), case-sensitive
    host = "gpu-box.internal"         # optional (or provider = "…"): only calls to it
    input_per_million = 0.20          # USD
    cached_input_per_million = 0.05   # optional: cache reads; else at the input rate
    cache_write_per_million = 0.25    # optional: cache writes; else at the input rate
    output_per_million = 0.60

Which entry prices a call: among the entries whose model, host and provider match it, one that
names a host or a provider beats one that names neither, an exact model beats a glob, and then
the first in the file wins.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

CUSTOM = "custom"
GENAI_PRICES = "genai-prices"

_RATES = ("input_per_million", "cached_input_per_million", "cache_write_per_million", "output_per_million")
_KEYS = frozenset({"model", "host", "provider", *_RATES})
_MAX_RATE = 1e6  # USD per million tokens: far beyond any real price, a typo's guard


@dataclass(frozen=True, slots=True)
class Price:
    model: str
    input_per_million: float
    output_per_million: float
    host: str | None = None
    provider: str | None = None
    cached_input_per_million: float | None = None
    cache_write_per_million: float | None = None

    def matches(self, provider: str | None, host: str | None, model: str) -> bool:
        if self.host is not None and (host or "").lower() != self.host:
            return False
        if self.provider is not None and provider != self.provider:
            return False
        return model == self.model or fnmatchcase(model, self.model)

    def rank(self, model: str) -> tuple[int, int]:
        """Lower wins: scoped to a host or provider first, then an exact model."""
        return (0 if self.host or self.provider else 1, 0 if model == self.model else 1)

    def cost(self, prompt: int, completion: int | None, cached: int | None, written: int | None) -> float:
        """`prompt` is all input, cache reads and writes included (as in the rows)."""
        cached, written = cached or 0, written or 0
        plain = max(0, prompt - cached - written)
        usd = (plain * self.input_per_million
               + cached * (self.cached_input_per_million if self.cached_input_per_million is not None
                           else self.input_per_million)
               + written * (self.cache_write_per_million if self.cache_write_per_million is not None
                            else self.input_per_million)
               + (completion or 0) * self.output_per_million) / 1e6
        return round(usd, 12)


@dataclass(frozen=True, slots=True)
class PriceBook:
    path: str
    prices: tuple[Price, ...]

    def find(self, provider: str | None, host: str | None, model: str | None) -> Price | None:
        if not model:
            return None
        found = [(p.rank(model), i, p) for i, p in enumerate(self.prices) if p.matches(provider, host, model)]
        return min(found)[2] if found else None


class PriceFileError(ValueError):
    """A prices file that cannot be used; the message is one line naming the file and the entry."""


def load_prices(path: str) -> PriceBook:
    """The price book in `path`; PriceFileError says what is wrong, in one line."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise PriceFileError(f"cannot read prices file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise PriceFileError(f"prices file {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise PriceFileError(f"prices file {path} is not valid TOML: {exc}") from None
    unknown = set(data) - {"price"}
    if unknown:
        raise PriceFileError(f"prices file {path}: unknown table or key {sorted(unknown)[0]!r} (expected [[price]] entries)")
    entries = data.get("price", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise PriceFileError(f"prices file {path}: `price` must be a list of [[price]] tables")
    return PriceBook(path, tuple(_price(path, i + 1, entry) for i, entry in enumerate(entries)))


def _price(path: str, n: int, entry: dict) -> Price:
    where = f"prices file {path}, [[price]] #{n}"
    unknown = set(entry) - _KEYS
    if unknown:
        raise PriceFileError(f"{where}: unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(_KEYS))})")
    model = entry.get("model")
    if not isinstance(model, str) or not model.strip():
        raise PriceFileError(f"{where}: `model` (a name or a glob) is required")
    if "host" in entry and "provider" in entry:
        raise PriceFileError(f"{where}: give `host` or `provider`, not both")
    for key in ("host", "provider"):
        if key in entry and (not isinstance(entry[key], str) or not entry[key].strip()):
            raise PriceFileError(f"{where}: `{key}` must be a non-empty string")
    rates = {}
    for key in _RATES:
        if key not in entry:
            if key in ("input_per_million", "output_per_million"):
                raise PriceFileError(f"{where}: `{key}` (USD per million tokens) is required")
            continue
        value = entry[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                or not 0 <= value <= _MAX_RATE:
            raise PriceFileError(f"{where}: `{key}` must be a number of USD from 0 to {_MAX_RATE:,.0f}, not {value!r}")
        rates[key] = float(value)
    host = entry.get("host")
    return Price(model=model.strip(), host=host.strip().lower() if host else None,
                 provider=entry["provider"].strip() if "provider" in entry else None, **rates)
