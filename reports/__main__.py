"""`python -m reports`: what the proxy recorded, in the terminal. See `reports.cli`."""

import os
import sys


def _skip_postgres_drivers(argv: list[str]) -> None:
    """peewee imports psycopg at import time when it is installed (~0.15 s, a third of the
    report's start-up); a SQLite location never needs it. Only a URL (`--db` or
    $LLM_METRICS_DB with "://") keeps the drivers importable."""
    location = os.environ.get("LLM_METRICS_DB", "")
    for i, arg in enumerate(argv):
        name, equals, value = arg.partition("=")
        if len(name) < 3 or not "--db".startswith(name):  # argparse takes `--d` for `--db` too
            continue
        if equals:
            location = value
        elif i + 1 < len(argv):
            location = argv[i + 1]
    if "://" not in location or location.startswith("sqlite:"):
        for driver in ("psycopg", "psycopg2"):
            # None in sys.modules makes `import` fail at once; typeshed types the values as modules only.
            sys.modules.setdefault(driver, None)  # type: ignore[arg-type]


def run() -> int:
    """`python -m reports`, and the `llm-metrics-report` console script."""
    _skip_postgres_drivers(sys.argv[1:])
    from reports.cli import main

    return main()


if __name__ == "__main__":
    sys.exit(run())
