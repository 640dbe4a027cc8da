"""Benchmark-only: the real addon with its metering process's writer kept busy, or with nothing
handed over to a metering at all.

    mitmdump -s bench/writer_variants_addon.py --set bench_writer=real|flood|drop

- real: exactly addon/llm_metrics.py.
- flood: as real, plus a thread in the metering process that keeps 1,000-2,000 synthetic rows
  waiting in its writer's queue, so the writer writes without pause while the proxy serves (the
  worst case). The metering process picks it up from bench/flood_site/sitecustomize.py, which
  this script puts on its PYTHONPATH.
- drop: the hooks run and put what they keep in the outbox (`addon.handover.Handover`), but each
  hand-over throws it away instead of sending it to the metering process: what the hooks alone
  cost mitmproxy's loop, without any metering or storage.
"""

from __future__ import annotations

import os
import sys

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH))

from mitmproxy import ctx  # noqa: E402

from addon.handover import Handover  # noqa: E402
from addon.llm_metrics import LLMMetrics  # noqa: E402


class DiscardingHandover(Handover):
    """The outbox, emptied instead of sent at each hand-over."""

    def flush(self, *, closing: bool = False) -> None:
        self.discard()
        super().flush(closing=closing)


class BenchLLMMetrics(LLMMetrics):
    def load(self, loader) -> None:
        super().load(loader)
        loader.add_option("bench_writer", str, "real", "real, flood (keep the writer busy) or drop (no metering).")

    def configure(self, updated: set[str]) -> None:
        if "bench_writer" in updated and ctx.options.bench_writer == "flood":
            # Before the metering process starts (in super().configure): it inherits this.
            os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.join(BENCH, "flood_site"),
                                                                     os.environ.get("PYTHONPATH")]))
            os.environ["LLM_BENCH_FLOOD"] = "1"
        super().configure(updated)

    def _open_store(self, location: str) -> None:
        super()._open_store(location)
        if ctx.options.bench_writer == "drop" and self.metering is not None:
            self.handover = DiscardingHandover(self.metering)


addons = [BenchLLMMetrics()]
