#!/usr/bin/env python3
"""Set-up and run commands that need nothing but Python itself.

    python3 dev.py run  [mitmdump args...]   install into ./.venv, start the proxy on port 8080 (llm-metrics-proxy)
    python3 dev.py test [pytest args...]     install into ./.venv, run the fast tests (FAST below) on every core
    python3 dev.py test --all [pytest args]  the whole suite, as CI runs it
    python3 dev.py lint                      install into ./.venv, run ruff check and mypy (config: pyproject.toml)
    python3 dev.py report [report args...]   install into ./.venv, print the report (python -m reports)
    python3 dev.py migrations COMMAND ...    install into ./.venv, run python -m migrations

`--venv DIR` (before the command's own arguments) uses another virtual environment, e.g. one per
Python version. Installation is skipped when pyproject.toml has not changed since the last one.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def ensure_venv(venv_dir: Path, extras: str) -> Path:
    python = venv_dir / "bin" / "python"
    if not python.exists():
        print(f"creating virtual environment {venv_dir} with {sys.executable}", flush=True)
        try:
            venv.EnvBuilder(with_pip=True).create(venv_dir)
        except Exception as exc:  # e.g. Debian's python3 without python3-venv
            sys.exit(f"error: cannot create a virtual environment ({exc}); install Python's venv module")
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    stamps = {name: venv_dir / f".llm-metrics-installed-{name}" for name in ("base", "test")}
    stamp = stamps[extras or "base"]
    # An install with the test extras covers a plain one too.
    done = [s for s in (stamp, stamps["test"]) if s.exists() and s.read_text() == digest]
    if not done:
        print(f"installing llm-metrics-proxy{f'[{extras}]' if extras else ''} into {venv_dir}", flush=True)
        pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        subprocess.run([*pip, "-e", f"{ROOT}[{extras}]" if extras else str(ROOT)], check=True)
        stamp.write_text(digest)
    return venv_dir / "bin"


def lint(bin_dir: Path) -> int:
    """ruff, then mypy, both whatever the first found: non-zero when either reports anything."""
    failed = []
    for name, args in (("ruff", ["check", "."]), ("mypy", [])):
        print(f"== {name} {' '.join(args)}".rstrip(), flush=True)
        if subprocess.run([str(bin_dir / name), *args], cwd=ROOT).returncode != 0:
            failed.append(name)
    if failed:
        print(f"lint: {' and '.join(failed)} found problems", file=sys.stderr)
    return 1 if failed else 0


# The fast default: the unit tests but the long ones, and the end-to-end tests of the main path.
FAST = "not slow and (not e2e or smoke)"  # markers: pyproject.toml


def test_selection(rest: list[str]) -> list[str]:
    """pytest's arguments for `test`. Without `--all`: the fast default, spread over the cores
    (pytest-xdist), unless the arguments choose tests themselves (a marker expression, a file or a
    test's id). With `--all`: every test, in one process, as CI runs them."""
    if "--all" in rest:
        return [a for a in rest if a != "--all"]
    chosen = any(a == "-m" or a.startswith("-m") and not a.startswith("--") for a in rest) or any(
        not a.startswith("-") and (ROOT / a.split("::")[0]).exists() for a in rest)
    if chosen:
        return rest
    # One process where asked for, or where a debugger or the tests' own output must reach the terminal.
    serial = any(a.startswith(("-n", "--numprocesses", "--pdb", "-s", "--capture")) or a == "no:xdist" for a in rest)
    return ["-m", FAST, *([] if serial else ["-n", "auto"]), *rest]


def main(argv: list[str]) -> int:
    venv_dir = ROOT / ".venv"
    if len(argv) >= 2 and argv[0] == "--venv":
        venv_dir, argv = (ROOT / argv[1]).resolve(), argv[2:]
    if not argv or argv[0] not in ("run", "test", "lint", "report", "migrations"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    bin_dir = ensure_venv(venv_dir, "test" if command in ("test", "lint") else "")
    if command == "lint":
        return lint(bin_dir)
    if command == "run":  # mitmdump with the addon: loopback, no per-request lines (addon/launch.py)
        args = [str(bin_dir / "llm-metrics-proxy"), *rest]
    elif command in ("report", "migrations"):
        module = "reports" if command == "report" else "migrations"
        args = [str(bin_dir / "python"), "-m", module, *rest]
    else:
        args = [str(bin_dir / "python"), "-m", "pytest", *test_selection(rest)]
    os.chdir(ROOT)
    os.execv(args[0], args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
