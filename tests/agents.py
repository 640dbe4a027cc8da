"""The real coding-agent CLIs from npm, pinned, installed once into a cache outside the repository.

`agent_bin("claude")` returns the path of the installed command, installing all three agents on
first use (about 20 s and 0.9 GB, into `$XDG_CACHE_HOME/llm-metrics-proxy/npm-agents/<versions>`,
default `~/.cache/...`). Where node or npm is missing, or the registry cannot be reached, the test
skips with the reason, and the agents' other tests at once; with LLM_METRICS_REQUIRE_AGENTS=1 (CI)
it fails instead. `agent_env(home)` is an environment for running one with its own `$HOME`
(its config and caches), nothing of the user's.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest

# Pinned: agents change what they send between releases; bump on purpose and re-run tests/test_e2e_agents*.
AGENTS = {
    "claude": "@anthropic-ai/claude-code@2.1.332",
    "codex": "@openai/codex@0.171.0",
    "gemini": "@google/gemini-cli@0.61.0",
}
INSTALL_TIMEOUT = 600


def _cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(" ".join(sorted(AGENTS.values())).encode()).hexdigest()[:12]
    return base / "llm-metrics-proxy" / "npm-agents" / digest


_install_failed: str | None = None  # why the install failed, once: the other agents' tests are told at once


def _unavailable(reason: str) -> NoReturn:
    """Skips the test, saying why; a failure where the agents must run (CI sets LLM_METRICS_REQUIRE_AGENTS=1)."""
    if os.environ.get("LLM_METRICS_REQUIRE_AGENTS") == "1":
        pytest.fail(f"{reason} (LLM_METRICS_REQUIRE_AGENTS=1: the agents must run here)")
    pytest.skip(reason)


def _npm_env() -> dict[str, str]:
    """npm's environment: Node trusts only its own CA list, so where no NODE_EXTRA_CA_CERTS is set the
    system's (OpenSSL's default file) is added: a registry reached through a TLS-inspecting proxy
    whose CA the system trusts then works as it does for pip and curl."""
    env = dict(os.environ)
    system_cas = ssl.get_default_verify_paths().openssl_cafile
    if "NODE_EXTRA_CA_CERTS" not in env and system_cas and os.path.isfile(system_cas):
        env["NODE_EXTRA_CA_CERTS"] = system_cas
    return env


def agent_bin(name: str) -> Path:
    """The installed command of agent `name` (a key of AGENTS); skips the test where it cannot be had."""
    global _install_failed
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        _unavailable(f"{name}: node and npm are needed to install {AGENTS[name]} (not found on PATH)")
    if _install_failed is not None:
        _unavailable(f"{name}: {_install_failed}")
    prefix = _cache_dir()
    binary = prefix / "node_modules" / ".bin" / name
    prefix.mkdir(parents=True, exist_ok=True)
    with open(prefix / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one install at a time, whatever runs the tests
        done = prefix / ".installed"
        if not (done.exists() and all((prefix / "node_modules" / ".bin" / n).exists() for n in AGENTS)):
            try:
                result = subprocess.run(
                    [npm, "install", "--no-audit", "--no-fund", "--prefix", str(prefix), *AGENTS.values()],
                    capture_output=True, text=True, timeout=INSTALL_TIMEOUT, cwd=prefix, env=_npm_env())
            except subprocess.TimeoutExpired:
                _install_failed = f"npm install did not finish within {INSTALL_TIMEOUT} s"
                _unavailable(f"{name}: {_install_failed}")
            if result.returncode != 0:
                tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
                _install_failed = f"npm install failed ({result.returncode}): {' | '.join(tail)}"
                _unavailable(f"{name}: {_install_failed}")
            done.write_text("\n".join(AGENTS.values()))
    if not binary.exists():
        _unavailable(f"{name}: {binary} missing after npm install")
    return binary


def agent_env(home: Path, **extra: str) -> dict[str, str]:
    """PATH and a private HOME (nothing of the user's config, keys or proxies), plus `extra`."""
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "NO_COLOR": "1",
        "CI": "1",
    }
    env.update(extra)
    return env
