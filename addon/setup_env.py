"""`python -m addon env`: the exact environment lines that send an app's LLM calls through the proxy.

Three ways in, one per `--mode`:

- `reverse`: the proxy listens as a plain-HTTP stand-in for one API; the app's base URL points at
  it, so no certificate is involved;
- `forward`: the app's HTTP(S)_PROXY points at the proxy and every client library is told to
  trust mitmproxy's CA (`<confdir>/mitmproxy-ca-cert.pem`);
- `local`: mitmproxy captures one program by name, whatever its proxy settings (it still has to
  trust the CA for HTTPS); the lines say what this machine lacks for it.

Pure but for `this_machine()`: what is known of the machine comes in as arguments, so each mode
and shell is testable.
"""

from __future__ import annotations

import platform
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .formats import CANDIDATE_SUFFIXES, recognise
from .record import provider_for

MODES = ("forward", "reverse", "local")
SHELLS = ("bash", "zsh", "fish", "powershell")
DEFAULT_PORT = {"forward": 8080, "reverse": 8081, "local": 8080}
DEFAULT_UPSTREAM = "https://api.openai.com"
DEFAULT_CONFDIR = "~/.mitmproxy"
CA_FILE = "mitmproxy-ca-cert.pem"

# mitmproxy's own statement of local capture on Linux (mitmproxy.org, "Intercepting Linux
# Applications", 2025-01-12): available from 11.1, loads an eBPF program through `sudo`,
# supported on Linux 6.8 and later.
LOCAL_MIN_MITMPROXY = (11, 1)
LOCAL_MIN_KERNEL = (6, 8)


class EnvError(ValueError):
    """Bad input to `env`: reported as one `error:` line, exit 2."""


@dataclass(frozen=True)
class Machine:
    """What local mode depends on, as found on the machine (see `this_machine`)."""

    system: str  # platform.system(): Linux, Darwin, Windows
    kernel: str  # platform.release()
    mitmproxy: str | None  # installed version
    sudo: bool  # a `sudo` on PATH


def this_machine() -> Machine:
    from importlib.metadata import PackageNotFoundError, version

    try:
        mitmproxy = version("mitmproxy")
    except PackageNotFoundError:
        mitmproxy = None
    return Machine(platform.system(), platform.release(), mitmproxy, shutil.which("sudo") is not None)


@dataclass(frozen=True)
class Var:
    name: str
    value: str
    why: str  # one comment line above it: who reads it


# Reverse mode: which variables point an SDK at the proxy, and the path its base URL needs, by
# the provider the upstream host is named as (addon.record.provider_for).
_BASE_URL_VARS: dict[str, tuple[tuple[str, str], ...]] = {
    "anthropic": (("ANTHROPIC_BASE_URL", ""),),
    "gemini": (("GOOGLE_GEMINI_BASE_URL", ""), ("OPENAI_BASE_URL", "/v1beta/openai")),
    "vertex-ai": (("GOOGLE_VERTEX_BASE_URL", ""),),
    "azure-openai": (("AZURE_OPENAI_ENDPOINT", ""),),
    "ollama": (("OLLAMA_HOST", ""), ("OPENAI_BASE_URL", "/v1")),
    "groq": (("OPENAI_BASE_URL", "/openai/v1"),),
    "openrouter": (("OPENAI_BASE_URL", "/api/v1"),),
    "fireworks": (("OPENAI_BASE_URL", "/inference/v1"),),
}
_OPENAI_SDK = (("OPENAI_BASE_URL", "/v1"),)

# What each variable's clients send, to ask this build's format registry whether it is parsed:
# the note below a variable then disappears by itself when a format module lands.
_SAMPLE_CALL: dict[str, tuple[str, str, dict]] = {
    "OPENAI_BASE_URL": ("OpenAI SDKs", "/v1/chat/completions", {"model": "m", "messages": []}),
    "AZURE_OPENAI_ENDPOINT": ("Azure OpenAI SDKs", "/openai/deployments/d/chat/completions", {"messages": []}),
    "ANTHROPIC_BASE_URL": ("Anthropic SDKs (Messages API)", "/v1/messages", {"model": "m", "messages": [], "max_tokens": 1}),
    "GOOGLE_GEMINI_BASE_URL": ("google-genai", "/v1beta/models/m:generateContent", {"contents": []}),
    "GOOGLE_VERTEX_BASE_URL": ("google-genai on Vertex AI", "/v1/projects/p/locations/l/publishers/google/models/m:generateContent", {"contents": []}),
    "OLLAMA_HOST": ("the ollama CLI and SDKs (/api/chat)", "/api/chat", {"model": "m", "messages": []}),
}


def is_parsed(path: str, body: dict) -> bool:
    """Whether this build records a call to `path` with `body` (as the addon decides, on any host)."""
    return path.endswith(CANDIDATE_SUFFIXES) and recognise(path, body) is not None


def ca_path(confdir: str) -> Path:
    return Path(confdir).expanduser().absolute() / CA_FILE


def trust_vars(ca: Path) -> list[Var]:
    value = str(ca)
    return [
        Var("SSL_CERT_FILE", value, "Python: ssl, httpx, the openai and anthropic SDKs (httpx then trusts this file instead of its own list)"),
        Var("REQUESTS_CA_BUNDLE", value, "Python requests"),
        Var("NODE_EXTRA_CA_CERTS", value, "Node (added to its CA list)"),
        Var("CURL_CA_BUNDLE", value, "curl"),
    ]


def forward_vars(port: int, ca: Path) -> list[Var]:
    proxy = f"http://127.0.0.1:{port}"
    return [
        Var("HTTPS_PROXY", proxy, "Python, curl, Go, ... send HTTPS calls through the proxy"),
        Var("HTTP_PROXY", proxy, "and plain-HTTP ones (a local vLLM, Ollama, ...)"),
        Var("https_proxy", proxy, "the same in lower case, which some tools read instead"),
        Var("http_proxy", proxy, "curl reads only this one for plain HTTP"),
        Var("NODE_USE_ENV_PROXY", "1", "Node 22.21+/24+: fetch honours HTTP(S)_PROXY (older Node ignores them: use reverse mode)"),
        *trust_vars(ca),
    ]


def parse_upstream(upstream: str) -> tuple[str, str, int]:
    """scheme, host and port of a reverse-mode target such as `https://api.openai.com`."""
    parts = urlsplit(upstream)
    try:
        port = parts.port
    except ValueError:
        raise EnvError(f"--upstream has an invalid port: {upstream!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EnvError(f"--upstream must look like https://HOST or http://HOST:PORT (got {upstream!r})")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise EnvError(f"--upstream takes scheme://HOST[:PORT] only: the SDK keeps its own path (got {upstream!r})")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def reverse_spec(upstream: str, port: int) -> str:
    scheme, host, upstream_port = parse_upstream(upstream)
    default = 443 if scheme == "https" else 80
    hostport = host if upstream_port == default else f"{host}:{upstream_port}"
    return f"reverse:{scheme}://{hostport}@{port}"


def reverse_vars(upstream: str, port: int) -> tuple[str, list[Var]]:
    """The provider the rows will name, and the base-URL variables for it."""
    _, host, upstream_port = parse_upstream(upstream)
    provider = provider_for(host, upstream_port)
    local = f"http://127.0.0.1:{port}"
    names = _BASE_URL_VARS.get(provider, _OPENAI_SDK)
    return provider, [Var(name, local + path, _SAMPLE_CALL[name][0]) for name, path in names]


def local_limits(machine: Machine) -> list[str]:
    """Comment lines: what local mode needs here, and what this machine lacks of it."""
    if machine.system != "Linux":
        return [
            "macOS and Windows: mitmproxy installs its own redirector on first use",
            "(see https://docs.mitmproxy.org/stable/concepts/modes/#local-capture).",
        ]
    lines = [
        "Linux: needs mitmproxy 11.1 or later, `sudo` (even as root: mitmproxy runs its eBPF",
        "redirector through it) and Linux 6.8 or later; captures outgoing connections only;",
        "a program name matches on its first 15 characters; containers only with --network host;",
        "not on WSL.",
    ]
    lacking = []
    if machine.mitmproxy is None or _version(machine.mitmproxy) < LOCAL_MIN_MITMPROXY:
        lacking.append(f"mitmproxy {machine.mitmproxy or 'not installed'} is older than 11.1 "
                       "(an install on Python 3.12 or later gets mitmproxy 12)")
    if _version(machine.kernel) < LOCAL_MIN_KERNEL:
        lacking.append(f"Linux {machine.kernel} is older than 6.8")
    if not machine.sudo:
        lacking.append("no sudo on PATH")
    if lacking:
        lines.append("This machine: " + "; ".join(lacking) + ": use reverse or forward mode.")
    else:
        lines.append("This machine meets these; if the eBPF program still fails to load, use reverse or forward mode.")
    return lines


def _version(text: str) -> tuple[int, ...]:
    numbers = []
    for part in text.replace("-", ".").split("."):
        if not part.isdigit():
            break
        numbers.append(int(part))
    return tuple(numbers)


def env_lines(
    mode: str,
    shell: str,
    *,
    confdir: str = DEFAULT_CONFDIR,
    port: int | None = None,
    upstream: str | None = None,
    app: str = "python3",
    machine: Machine | None = None,
    environ: dict[str, str] | None = None,
    command: str = "python -m addon env",
) -> list[str]:
    """The lines `python -m addon env` prints: comments, then one assignment per variable.
    `command` is how the user ran it, for the line that says how to apply the output."""
    if mode not in MODES:
        raise EnvError(f"--mode must be one of {', '.join(MODES)}")
    if shell not in SHELLS:
        raise EnvError(f"--shell must be one of {', '.join(SHELLS)}")
    if port is None:
        port = DEFAULT_PORT[mode]
    if not 1 <= port <= 65535:
        raise EnvError(f"--port must be between 1 and 65535 (got {port})")
    if upstream is not None and mode != "reverse":
        raise EnvError("--upstream applies to --mode reverse only")
    if not app or any(c.isspace() for c in app):
        raise EnvError(f"--app takes a program name, a PID or !NAME, as mitmproxy's local:SPEC does (got {app!r})")
    environ = environ or {}
    ca = ca_path(confdir)
    if mode == "reverse":
        comments, variables = _reverse(upstream or DEFAULT_UPSTREAM, port)
    elif mode == "forward":
        comments, variables = _forward(port, ca, environ)
    else:
        comments, variables = _local(app, ca, machine or this_machine())
    if mode != "reverse" and not ca.exists():
        comments.append(f"{ca} does not exist yet: mitmproxy writes it on its first start")
        comments.append(f"(with --set confdir={confdir} if not the default); start the proxy once first.")
    lines = [apply_hint(shell, command), *(f"# {c}" for c in comments)]
    for var in variables:
        lines.append(f"# {var.why}")
        lines.append(assignment(shell, var.name, var.value))
    return lines


def _reverse(upstream: str, port: int) -> tuple[list[str], list[Var]]:
    provider, variables = reverse_vars(upstream, port)
    comments = [
        f"llm-metrics-proxy, reverse mode: a plain-HTTP stand-in for {upstream} on 127.0.0.1:{port}; no certificate.",
        f"Start the proxy: python3 dev.py run --mode {reverse_spec(upstream, port)}",
        f"Rows name the provider {provider!r}; API keys pass through to {upstream} unchanged.",
    ]
    for var in variables:
        label, path, body = _SAMPLE_CALL[var.name]
        if not is_parsed(path, body):
            comments.append(f"Note: this build does not parse calls from {label} yet: they pass through unrecorded.")
    return comments, variables


def _forward(port: int, ca: Path, environ: dict[str, str]) -> tuple[list[str], list[Var]]:
    comments = [
        f"llm-metrics-proxy, forward mode: every HTTP(S) call through the proxy on 127.0.0.1:{port},",
        f"trusting mitmproxy's CA {ca}.",
        f"Start the proxy: python3 dev.py run{'' if port == 8080 else f' --listen-port {port}'}",
    ]
    no_proxy = environ.get("NO_PROXY") or environ.get("no_proxy")
    if no_proxy:
        comments.append(f"Note: NO_PROXY={no_proxy} is set: calls to those hosts bypass the proxy.")
    return comments, forward_vars(port, ca)


def _local(app: str, ca: Path, machine: Machine) -> tuple[list[str], list[Var]]:
    comments = [
        f"llm-metrics-proxy, local capture mode: mitmproxy redirects the connections of programs named {app!r},",
        "whatever their proxy settings.",
        f"Start the proxy: python3 dev.py run --mode local:{app}",
        *local_limits(machine),
        "The captured program must still trust mitmproxy's CA for HTTPS:",
    ]
    return comments, trust_vars(ca)


def assignment(shell: str, name: str, value: str) -> str:
    if shell == "fish":
        return f"set -gx {name} '" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if shell == "powershell":
        return f"$env:{name} = '" + value.replace("'", "''") + "'"
    return f"export {name}={shlex.quote(value)}"


def apply_hint(shell: str, command: str) -> str:
    """How to load the printed lines into the current shell."""
    if shell == "fish":
        return f"# Apply: {command} | source"
    if shell == "powershell":
        return f"# Apply: {command} | Out-String | Invoke-Expression"
    return f'# Apply: eval "$({command})"'
