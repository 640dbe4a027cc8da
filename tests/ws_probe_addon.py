"""A script addon loaded after llm_metrics in tests: how many WebSocket messages mitmproxy holds
for a flow when the hooks after ours run, said once per socket at its end."""

from __future__ import annotations

import logging


class WsProbe:
    def __init__(self) -> None:
        self.seen: dict[str, int] = {}
        self.kept: dict[str, int] = {}

    def websocket_message(self, flow) -> None:
        self.seen[flow.id] = self.seen.get(flow.id, 0) + 1
        self.kept[flow.id] = max(self.kept.get(flow.id, 0), len(flow.websocket.messages))

    def websocket_end(self, flow) -> None:
        logging.info("ws-probe: %d messages seen, at most %d kept", self.seen.pop(flow.id, 0),
                     self.kept.pop(flow.id, 0))


addons = [WsProbe()]
