"""A script addon that holds every request 120 ms before later addons see it: loaded ahead of
llm_metrics (`mitmdump -s tests/delay_addon.py -s addon/llm_metrics.py`), it stands for any
addon or mitmproxy work that runs before our hooks."""

from __future__ import annotations

import asyncio

HOLD_S = 0.12


class HoldRequest:
    async def requestheaders(self, flow) -> None:
        await asyncio.sleep(HOLD_S)


addons = [HoldRequest()]
