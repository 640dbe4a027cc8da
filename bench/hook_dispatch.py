"""What mitmproxy's event dispatch costs on the addon script's module, with the events the addon
does not handle set to None there (`_skip_unhandled_hooks` in addon/llm_metrics.py) and without.

    .venv/bin/python bench/hook_dispatch.py [--rounds N] [--requests N]

mitmproxy looks every event's name up on a script's module as well as on the addons it lists
(`AddonManager._iter_hooks`): a name the module lacks raises and clears AttributeError, a name
set to None is skipped at once. The events of one plain HTTP request through the proxy are
dispatched in-process through that same function to two modules that differ only in those None
names, alternating in rounds; prints the time per request each way and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mitmproxy.addons  # noqa: E402, F401  (registers the events, as in mitmdump)
import mitmproxy.proxy.layers.http  # noqa: E402, F401
import mitmproxy.proxy.server_hooks  # noqa: E402, F401
from mitmproxy import hooks  # noqa: E402
from mitmproxy.addonmanager import AddonManager  # noqa: E402

from addon.llm_metrics import _skip_unhandled_hooks  # noqa: E402

# The events mitmproxy triggers for one plain HTTP request on a new connection.
REQUEST_EVENTS = ("client_connected", "next_layer", "next_layer", "requestheaders", "request", "server_connect",
                  "server_connected", "responseheaders", "response", "client_disconnected", "server_disconnected")


def _module(skip: bool) -> types.ModuleType:
    module = types.ModuleType("__mitmproxy_script__.llm_metrics")
    module.addons = []  # type: ignore[attr-defined]  # its addons' own lookups are the same both ways
    if skip:
        _skip_unhandled_hooks(module.__dict__)
    return module


def _events() -> list[hooks.Hook]:
    # `_iter_hooks` reads only the event's name, a class attribute: no flow is needed.
    return [object.__new__(hooks.all_hooks[name]) for name in REQUEST_EVENTS]


def _ns_per_request(module: types.ModuleType, events: list[hooks.Hook], requests: int) -> float:
    started = time.perf_counter_ns()
    for _ in range(requests):
        for event in events:
            for _addon, _func in AddonManager._iter_hooks(None, module, event):  # type: ignore[arg-type]
                pass
    return (time.perf_counter_ns() - started) / requests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--requests", type=int, default=20_000)
    args = parser.parse_args()
    events = _events()
    modules = {"names missing": _module(False), "names set to None": _module(True)}
    times: dict[str, list[float]] = {name: [] for name in modules}
    for _ in range(args.rounds):
        for name, module in modules.items():
            times[name].append(_ns_per_request(module, events, args.requests))
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"Python {sys.version.split()[0]}, {args.rounds} rounds of {args.requests:,} requests each way, "
          f"{len(REQUEST_EVENTS)} events a request")
    for name, median in medians.items():
        print(f"  {name:<18} {median / 1000:8.2f} us a request (median of rounds)")
    print(f"  missing / None     {medians['names missing'] / medians['names set to None']:8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
