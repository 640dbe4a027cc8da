"""Benchmark-only: an addon with the hooks the metrics addon uses, each doing nothing.

    mitmdump -s bench/empty_hooks_addon.py

What mitmproxy itself charges for calling one more addon on every flow (bench/addon_parts.py).
"""

from mitmproxy import http


class EmptyHooks:
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        pass

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        pass

    def response(self, flow: http.HTTPFlow) -> None:
        pass

    def error(self, flow: http.HTTPFlow) -> None:
        pass


addons = [EmptyHooks()]
