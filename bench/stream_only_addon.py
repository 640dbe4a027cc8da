"""The streaming baseline: mitmdump with an addon that only passes response bodies on as they arrive.

    mitmdump -s bench/stream_only_addon.py

Bare mitmdump buffers a whole event stream before the client sees a byte, so it is no baseline
for streaming; this is the least any streaming addon has to do.
"""

from mitmproxy import http


class StreamOnly:
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        flow.response.stream = True


addons = [StreamOnly()]
