"""`python -m addon env`: the lines for each mode and shell, applied by a real shell where one is
installed. The helpers here are shared by the other test_newcomer_* modules."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from addon import setup_env
from addon.record import provider_for
from addon.setup_env import SHELLS, EnvError, Machine, env_lines, is_parsed

ROOT = Path(__file__).resolve().parents[1]
# What the printed lines set: removed from the test's own environment first, so a child process
# sees exactly what the lines gave it (this machine sets several CA variables globally).
SET_BY_LINES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "CURL_CA_BUNDLE",
                "NODE_USE_ENV_PROXY", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL", "GOOGLE_GEMINI_BASE_URL",
                "OLLAMA_HOST", "NO_PROXY", "no_proxy")


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in SET_BY_LINES and not k.lower().endswith("_proxy")}


def addon_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """`python -m addon ARGS` as a user runs it, from the project directory."""
    return subprocess.run([sys.executable, "-m", "addon", *args], cwd=ROOT, env=env or clean_env(),
                          capture_output=True, text=True, timeout=timeout)


def printed_env(*args: str) -> str:
    result = addon_cli("env", "--shell", "bash", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def bash_applied(lines: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment after bash evaluates `lines`, as `eval "$(python -m addon env)"` does."""
    out = subprocess.run(["bash", "-c", 'eval "$1" && exec env -0', "_", lines], env=base or clean_env(),
                         capture_output=True, check=True).stdout
    return dict(item.split("=", 1) for item in out.decode().split("\0") if "=" in item)


def assignments(lines: list[str]) -> dict[str, str]:
    """NAME -> value from bash `export NAME=VALUE` lines (values the tests use need no unquoting)."""
    found = {}
    for line in lines:
        if line.startswith("export "):
            name, value = line[len("export "):].split("=", 1)
            found[name] = value.strip("'")
    return found


OLD_MACHINE = Machine("Linux", "5.15.0-91-generic", "11.0.2", sudo=False)
CAPABLE_MACHINE = Machine("Linux", "6.8.0-40-generic", "12.2.3", sudo=True)


# -- forward ---------------------------------------------------------------------------


def test_forward_lines_set_both_proxies_and_every_clients_ca_to_the_confdirs_cert(tmp_path):
    lines = env_lines("forward", "bash", confdir=str(tmp_path), port=8080)
    ca = str(tmp_path / "mitmproxy-ca-cert.pem")
    assert assignments(lines) == {
        "HTTPS_PROXY": "http://127.0.0.1:8080", "HTTP_PROXY": "http://127.0.0.1:8080",
        "https_proxy": "http://127.0.0.1:8080", "http_proxy": "http://127.0.0.1:8080",
        "NODE_USE_ENV_PROXY": "1",
        "SSL_CERT_FILE": ca, "REQUESTS_CA_BUNDLE": ca, "NODE_EXTRA_CA_CERTS": ca, "CURL_CA_BUNDLE": ca,
    }
    assert "# Start the proxy: python3 dev.py run" in lines


def test_forward_on_another_port_says_how_to_start_the_proxy_there(tmp_path):
    lines = env_lines("forward", "bash", confdir=str(tmp_path), port=9090)
    assert "# Start the proxy: python3 dev.py run --listen-port 9090" in lines
    assert assignments(lines)["HTTPS_PROXY"] == "http://127.0.0.1:9090"


def test_default_confdir_is_mitmproxys_in_the_home_directory():
    ca = assignments(env_lines("forward", "bash"))["SSL_CERT_FILE"]
    assert ca == str(Path.home() / ".mitmproxy" / "mitmproxy-ca-cert.pem")


def test_a_ca_not_yet_written_is_pointed_out(tmp_path):
    lines = env_lines("forward", "bash", confdir=str(tmp_path))
    assert any("does not exist yet: mitmproxy writes it on its first start" in line for line in lines)
    (tmp_path / "mitmproxy-ca-cert.pem").write_text("x")
    assert not any("does not exist yet" in line for line in env_lines("forward", "bash", confdir=str(tmp_path)))


def test_no_proxy_in_the_environment_is_pointed_out(tmp_path):
    lines = env_lines("forward", "bash", confdir=str(tmp_path), environ={"NO_PROXY": "localhost,127.0.0.1"})
    assert "# Note: NO_PROXY=localhost,127.0.0.1 is set: calls to those hosts bypass the proxy." in lines


# -- reverse ---------------------------------------------------------------------------


@pytest.mark.parametrize(("upstream", "expected"), [
    ("https://api.openai.com", {"OPENAI_BASE_URL": "http://127.0.0.1:8081/v1"}),
    ("https://api.anthropic.com", {"ANTHROPIC_BASE_URL": "http://127.0.0.1:8081"}),
    ("https://generativelanguage.googleapis.com", {"GOOGLE_GEMINI_BASE_URL": "http://127.0.0.1:8081",
                                                    "OPENAI_BASE_URL": "http://127.0.0.1:8081/v1beta/openai"}),
    ("http://127.0.0.1:11434", {"OLLAMA_HOST": "http://127.0.0.1:8081", "OPENAI_BASE_URL": "http://127.0.0.1:8081/v1"}),
    ("http://127.0.0.1:8000", {"OPENAI_BASE_URL": "http://127.0.0.1:8081/v1"}),
    ("https://api.groq.com", {"OPENAI_BASE_URL": "http://127.0.0.1:8081/openai/v1"}),
    ("https://openrouter.ai", {"OPENAI_BASE_URL": "http://127.0.0.1:8081/api/v1"}),
])
def test_reverse_lines_point_the_sdks_base_url_at_the_proxy(upstream, expected):
    assert assignments(env_lines("reverse", "bash", upstream=upstream)) == expected


@pytest.mark.parametrize(("upstream", "spec", "provider"), [
    ("https://api.openai.com", "reverse:https://api.openai.com@8081", "openai"),
    ("https://api.anthropic.com/", "reverse:https://api.anthropic.com@8081", "anthropic"),
    ("http://127.0.0.1:11434", "reverse:http://127.0.0.1:11434@8081", "ollama"),
    ("http://localhost:8000", "reverse:http://localhost:8000@8081", "openai-compatible"),
    ("https://my-llm.internal:8443", "reverse:https://my-llm.internal:8443@8081", "openai-compatible"),
])
def test_reverse_lines_give_the_start_command_and_the_provider_rows_will_name(upstream, spec, provider):
    lines = env_lines("reverse", "bash", upstream=upstream)
    assert f"# Start the proxy: python3 dev.py run --mode {spec}" in lines
    assert any(f"Rows name the provider {provider!r}" in line for line in lines)


def test_reverse_provider_is_the_one_the_addon_names_for_the_upstream_host():
    # mitmproxy's reverse mode sets flow.request.host to the target, so the addon sees this host.
    lines = env_lines("reverse", "bash", upstream="https://api.mistral.ai")
    assert any(f"Rows name the provider {provider_for('api.mistral.ai', 443)!r}" in line for line in lines)


def test_reverse_notes_an_api_this_build_does_not_parse(monkeypatch):
    monkeypatch.setattr(setup_env, "recognise", lambda path, body: None)
    lines = env_lines("reverse", "bash", upstream="https://api.anthropic.com")
    assert ("# Note: this build does not parse calls from Anthropic SDKs (Messages API) yet: they pass "
            "through unrecorded.") in lines


def test_reverse_notes_follow_the_format_registry():
    lines = env_lines("reverse", "bash", upstream="https://api.anthropic.com")
    noted = any("does not parse calls from Anthropic" in line for line in lines)
    assert noted == (not is_parsed("/v1/messages", {"model": "m", "messages": [], "max_tokens": 1}))
    assert is_parsed("/v1/chat/completions", {"model": "m", "messages": []})


@pytest.mark.parametrize("upstream", ["ftp://x", "api.openai.com", "https://api.openai.com/v1", "https://x:99999",
                                      "https://user@api.openai.com", "https://"])
def test_reverse_refuses_an_upstream_that_is_not_scheme_host_port(upstream):
    with pytest.raises(EnvError):
        env_lines("reverse", "bash", upstream=upstream)


# -- local -----------------------------------------------------------------------------


def test_local_lines_give_the_command_the_limits_and_the_ca_lines(tmp_path):
    lines = env_lines("local", "bash", confdir=str(tmp_path), app="node", machine=CAPABLE_MACHINE)
    text = "\n".join(lines)
    assert "# Start the proxy: python3 dev.py run --mode local:node" in lines
    for limit in ("mitmproxy 11.1 or later", "`sudo`", "Linux 6.8 or later", "outgoing connections only",
                  "first 15 characters", "--network host", "not on WSL"):
        assert limit in text
    assert "This machine meets these" in text
    assert set(assignments(lines)) == {"SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "CURL_CA_BUNDLE"}


def test_local_lines_say_what_this_machine_lacks(tmp_path):
    lines = env_lines("local", "bash", confdir=str(tmp_path), machine=OLD_MACHINE)
    assert ("# This machine: mitmproxy 11.0.2 is older than 11.1 (an install on Python 3.12 or later gets "
            "mitmproxy 12); Linux 5.15.0-91-generic is older than 6.8; no sudo on PATH: use reverse or "
            "forward mode.") in lines


def test_local_lines_on_macos_point_at_mitmproxys_docs(tmp_path):
    lines = env_lines("local", "bash", confdir=str(tmp_path), machine=Machine("Darwin", "23.1.0", "12.2.3", True))
    assert any("docs.mitmproxy.org" in line for line in lines)
    assert not any("eBPF" in line for line in lines)


# -- shells ----------------------------------------------------------------------------


AWKWARD = "/tmp/it's a \"dir\" with $HOME and \\"


@pytest.mark.parametrize(("shell", "expected"), [
    ("bash", "export SSL_CERT_FILE='/tmp/it'\"'\"'s a \"dir\" with $HOME and \\/mitmproxy-ca-cert.pem'"),
    ("zsh", "export SSL_CERT_FILE='/tmp/it'\"'\"'s a \"dir\" with $HOME and \\/mitmproxy-ca-cert.pem'"),
    ("fish", "set -gx SSL_CERT_FILE '/tmp/it\\'s a \"dir\" with $HOME and \\\\/mitmproxy-ca-cert.pem'"),
    ("powershell", "$env:SSL_CERT_FILE = '/tmp/it''s a \"dir\" with $HOME and \\/mitmproxy-ca-cert.pem'"),
])
def test_each_shell_gets_its_own_quoting(shell, expected):
    assert expected in env_lines("forward", shell, confdir=AWKWARD)


@pytest.mark.parametrize(("shell", "hint"), [
    ("bash", '# Apply: eval "$(CMD)"'), ("zsh", '# Apply: eval "$(CMD)"'),
    ("fish", "# Apply: CMD | source"), ("powershell", "# Apply: CMD | Out-String | Invoke-Expression"),
])
def test_first_line_says_how_to_apply_the_lines_in_that_shell(shell, hint):
    assert env_lines("forward", shell, command="CMD")[0] == hint


@pytest.mark.parametrize("mode", ["forward", "reverse", "local"])
@pytest.mark.parametrize("shell", SHELLS)
def test_every_line_is_a_comment_or_an_assignment(mode, shell):
    starts = {"bash": "export ", "zsh": "export ", "fish": "set -gx ", "powershell": "$env:"}[shell]
    lines = env_lines(mode, shell, machine=OLD_MACHINE)
    assert all(line.startswith(("# ", starts)) for line in lines), lines
    assert any(line.startswith(starts) for line in lines)


def test_bash_applies_the_lines_exactly_even_with_an_awkward_confdir():
    applied = bash_applied(printed_env("--mode", "forward", "--confdir", AWKWARD, "--port", "8123"))
    assert applied["SSL_CERT_FILE"] == AWKWARD + "/mitmproxy-ca-cert.pem"
    assert applied["HTTPS_PROXY"] == "http://127.0.0.1:8123"


@pytest.mark.parametrize(("shell", "argv"), [
    ("zsh", ["zsh", "-c", 'eval "$(cat)" && printenv SSL_CERT_FILE']),
    ("fish", ["fish", "-c", "source; and printenv SSL_CERT_FILE"]),  # `source` alone reads stdin
    ("powershell", ["pwsh", "-NoProfile", "-Command", "$input | Out-String | Invoke-Expression; $env:SSL_CERT_FILE"]),
])
def test_other_shells_apply_the_lines_where_installed(shell, argv):
    if shutil.which(argv[0]) is None:
        pytest.skip(f"{argv[0]} is not installed here")
    lines = addon_cli("env", "--mode", "forward", "--shell", shell, "--confdir", AWKWARD).stdout
    out = subprocess.run(argv, input=lines, env=clean_env(), capture_output=True, text=True, check=True).stdout
    assert out.strip() == AWKWARD + "/mitmproxy-ca-cert.pem"


# -- the command line ------------------------------------------------------------------


def test_cli_prints_the_lines_for_the_shell_in_shell_variable():
    env = {**clean_env(), "SHELL": "/usr/bin/fish"}
    result = addon_cli("env", "--mode", "reverse", env=env)
    assert result.returncode == 0
    assert "set -gx OPENAI_BASE_URL 'http://127.0.0.1:8081/v1'" in result.stdout.splitlines()
    assert result.stdout.splitlines()[0].endswith("env --mode reverse --shell fish | source")


@pytest.mark.parametrize(("args", "message"), [
    (["--mode", "sideways"], "error: argument --mode: invalid choice: 'sideways'"),
    (["--shell", "tcsh"], "error: argument --shell: invalid choice: 'tcsh'"),
    (["--port", "0"], "error: --port must be between 1 and 65535 (got 0)"),
    (["--port", "http"], "error: argument --port: invalid int value: 'http'"),
    (["--mode", "forward", "--upstream", "https://api.openai.com"], "error: --upstream applies to --mode reverse only"),
    (["--mode", "reverse", "--upstream", "https://api.openai.com/v1"], "error: --upstream takes scheme://HOST[:PORT] only"),
    (["--mode", "local", "--app", "my app"], "error: --app takes a program name"),
])
def test_cli_bad_input_is_one_error_line_and_exit_2(args, message):
    result = addon_cli("env", "--shell", "bash", *args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith(message), result.stderr


def test_cli_without_a_command_is_an_error():
    result = addon_cli()
    assert result.returncode == 2 and result.stderr.startswith("error: ")
