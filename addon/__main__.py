"""`python -m addon`: helpers for getting an app's LLM calls into the proxy.

    env      print the environment lines for one way in (reverse, forward or local mode)
    doctor   send one test call through a running proxy; say whether it was captured and stored
    path     print the path of the addon script, for `mitmdump -s` (any directory, any install)

Console scripts run the first two alone: `llm-metrics-env`, `llm-metrics-doctor`.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from storage.db import default_location

from .cli import ArgumentParser, add_db_argument
from .launch import SCRIPT
from .setup_env import DEFAULT_CONFDIR, MODES, SHELLS, EnvError, env_lines


def _default_shell(environ: dict[str, str]) -> str:
    name = os.path.basename(environ.get("SHELL", ""))
    if name in SHELLS:
        return name
    return "powershell" if os.name == "nt" else "bash"


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m addon", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    _env_arguments(sub.add_parser("env", help="print the environment lines for one way in"))
    _doctor_arguments(sub.add_parser("doctor", help="send one test call through a running proxy"))
    sub.add_parser("path", help="print the path of the addon script, for mitmdump -s")
    return parser


def _env_arguments(env: argparse.ArgumentParser) -> None:
    env.add_argument("--mode", choices=MODES, default="forward",
                     help="reverse: base URL, no certificate; forward: HTTPS_PROXY and CA trust (default); "
                          "local: mitmproxy's local capture mode")
    env.add_argument("--shell", choices=SHELLS, default=None, help="syntax of the lines (default: from $SHELL)")
    env.add_argument("--confdir", default=DEFAULT_CONFDIR,
                     help=f"mitmproxy's confdir, where its CA lives (default {DEFAULT_CONFDIR})")
    env.add_argument("--port", type=int, default=None, help="the proxy's port (default 8080; reverse mode 8081)")
    env.add_argument("--upstream", default=None,
                     help="reverse mode: the API the proxy stands in for (default https://api.openai.com)")
    env.add_argument("--app", default="python3", help="local mode: the program name to capture (default python3)")


def _doctor_arguments(doctor: argparse.ArgumentParser) -> None:
    doctor.add_argument("--proxy", default=None,
                        help="the proxy, http://HOST:PORT (default: $HTTPS_PROXY or $HTTP_PROXY, else http://127.0.0.1:8080)")
    add_db_argument(doctor)
    doctor.add_argument("--wait", type=float, default=5.0, help="seconds to wait for the row (default 5)")
    doctor.add_argument("--no-https", action="store_true",
                        help="skip the CA check (for plain-HTTP servers and reverse mode only)")


def _env(args: argparse.Namespace, argv: list[str]) -> int:
    shell = args.shell or _default_shell(dict(os.environ))
    command = shlex.join([sys.executable, "-m", "addon", "env", *(argv[1:] if args.shell else [*argv[1:], "--shell", shell])])
    try:
        lines = env_lines(args.mode, shell, confdir=args.confdir, port=args.port, upstream=args.upstream,
                          app=args.app, environ=dict(os.environ), command=command)
    except EnvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from . import doctor  # httpx and its own checks: not needed by the other commands

    if args.wait < 0:
        print("error: --wait must be 0 or more", file=sys.stderr)
        return 2
    proxy, source = (args.proxy, "--proxy") if args.proxy else doctor.proxy_from_environment(dict(os.environ))
    try:
        report = doctor.run(proxy, source, args.db or default_location(), wait_s=args.wait, https=not args.no_https)
    except doctor.DoctorInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(report.lines()))
    return report.exit_code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    if args.command == "env":
        return _env(args, argv)
    if args.command == "path":
        print(SCRIPT)
        return 0
    return _doctor(args)


def env_main(argv: list[str] | None = None) -> int:
    """`llm-metrics-env`: `python -m addon env` as a command of its own."""
    argv = sys.argv[1:] if argv is None else argv
    parser = ArgumentParser(prog="python -m addon env", description="Print the environment lines for one way in.")
    _env_arguments(parser)
    return _env(parser.parse_args(argv), ["env", *argv])


def doctor_main(argv: list[str] | None = None) -> int:
    """`llm-metrics-doctor`: `python -m addon doctor` as a command of its own."""
    parser = ArgumentParser(prog="python -m addon doctor", description="Send one test call through a running proxy; "
                            "say whether it was captured and stored.")
    _doctor_arguments(parser)
    return _doctor(parser.parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
