"""What the command lines (`python -m reports`, `migrations`, `addon`) share: argparse's errors as
one line, and the `--db` option."""

from __future__ import annotations

import argparse
import os
import sys
import unicodedata
from typing import NoReturn

from storage.db import DEFAULT_DB_PATH, ENV_VAR, location_argument

from .redact import redact

DB_HELP = f"SQLite path or database URL (default: ${ENV_VAR}, else {DEFAULT_DB_PATH})"


class ArgumentParser(argparse.ArgumentParser):
    """Bad input, argparse's own usage errors included, is one `error: …` line on stderr and exit 2.
    Usage and help name the command as it was run: `python -m reports`, or its console script
    (`llm-metrics-report`)."""

    def __init__(self, prog: str | None = None, **kwargs) -> None:
        script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
        if prog is not None and prog.startswith("python -m ") and script.startswith("llm-metrics-"):
            prog = script
        super().__init__(prog=prog, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {one_line(redact(message))}\n")  # it quotes what was typed: a URL's password


def add_db_argument(parser: argparse.ArgumentParser) -> None:
    """`--db`, as every command takes it: refused at once when it cannot be a database."""
    parser.add_argument("--db", metavar="PATH_OR_URL", type=location_argument, default=None, help=DB_HELP)


def one_line(message: str) -> str:
    """An `error: …` line: drivers' messages span lines (PostgreSQL adds hints on a second one)."""
    return printable(" ".join(part.strip() for part in message.splitlines() if part.strip()))


# Characters a terminal acts on or hides instead of showing: controls (ESC starts a sequence that
# can move the cursor, recolour or retitle), format characters (bidi overrides reorder a line),
# and line and paragraph separators.
_HIDDEN = {"Cc", "Cf", "Zl", "Zp"}


def printable(text: str) -> str:
    """Stored or typed text as the terminal should show it: every character that is not shown as
    itself written as its escape (`\\x1b`, `\\n`, `\\u202e`), so a client-chosen model or
    origin can neither drive the terminal nor hide or reorder what the report says."""
    if text.isprintable():
        return text
    return "".join(
        c.encode("unicode_escape").decode("ascii") if unicodedata.category(c) in _HIDDEN else c for c in text
    )
