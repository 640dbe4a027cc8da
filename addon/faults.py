"""A metering failure in the log: each kind once, and never a whole value it failed on."""

from __future__ import annotations

import logging

from .redact import redact

log = logging.getLogger(__name__)

TEXT_MAX_CHARS = 300  # of a failure's description


class FaultLog:
    """Each kind of failure (where, and the exception's type) is logged once per instance: a
    fault repeated on every flow must not flood the log."""

    def __init__(self) -> None:
        self._said: set[str] = set()

    def warn(self, where: str, exc: Exception) -> None:
        key = f"{where}:{type(exc).__name__}"
        if key in self._said:
            return
        self._said.add(key)
        text = redact(repr(exc)).encode("utf-8", "backslashreplace").decode("utf-8")  # a lone surrogate cannot be printed
        if len(text) > TEXT_MAX_CHARS:  # never a whole body or value it failed on
            text = text[: TEXT_MAX_CHARS - 1] + "…"
        log.warning("llm-metrics: metering failed in %s (traffic unaffected): %s", where, text)
