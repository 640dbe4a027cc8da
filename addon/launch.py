"""`llm-metrics-proxy [mitmdump args...]`: mitmdump with this addon, as `python3 dev.py run` starts it.

Loopback unless asked otherwise: an open proxy on every interface serves anyone. No per-request
lines of mitmproxy's own (flow_detail=0) unless asked for: they print each URL whole, a key in its
query (Gemini's ?key=) included, and from flow_detail=2 on every header (Authorization); the addon
prints a line per LLM call instead. The addon script is the installed package's own, so the
command works from any directory (`mitmdump -s addon/llm_metrics.py` needs the checkout's).
"""

from __future__ import annotations

import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().with_name("llm_metrics.py")


def mitmdump_args(rest: list[str]) -> list[str]:
    """mitmdump's arguments (without the program): the defaults above, then `rest`."""
    listen = [] if any(a.startswith("--listen-host") for a in rest) else ["--listen-host", "127.0.0.1"]
    # -v, -q and --flow-detail are applied after --set, so they still win; a second --set of the
    # same option would not (mitmproxy mishandles one option given twice).
    quiet = [] if any("flow_detail" in a or "flow-detail" in a for a in rest) else ["--set", "flow_detail=0"]
    return [*listen, *quiet, "-s", str(SCRIPT), *rest]


def main(argv: list[str] | None = None) -> int:
    from mitmproxy.tools.main import mitmdump  # what the `mitmdump` command itself runs

    mitmdump(mitmdump_args(sys.argv[1:] if argv is None else argv))
    return 0  # mitmdump exits by itself on an error (SystemExit with its code)


if __name__ == "__main__":
    sys.exit(main())
