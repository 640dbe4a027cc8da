"""Benchmark-only: the real addon with its storage writer idle, kept busy, or replaced.

    mitmdump -s bench/writer_variants_addon.py --set bench_writer=real|flood|drop

- real: exactly addon/llm_metrics.py.
- flood: as real, plus a thread that keeps 1,000-2,000 synthetic rows waiting in the writer's
  queue, so the writer writes without pause while the proxy serves (the worst case for the loop).
- drop: rows are handed to a stand-in that discards them (what the addon costs without storage).
"""

from __future__ import annotations

import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mitmproxy import ctx  # noqa: E402

from _harness import DropWriter  # noqa: E402  (mitmdump puts this script's folder on sys.path)

from addon.llm_metrics import LLMMetrics  # noqa: E402

FLOOD_ROW = {
    "timestamp": "2026-11-22T14:03:07.123456Z", "success": True, "status_code": 200, "response_time_ms": 304,
    "model": "gpt-flood-2026-01-01", "request_model": "gpt-flood", "provider": "openai-compatible",
    "host": "127.0.0.1", "path": "/v1/chat/completions", "origin": "flood", "is_streaming": True,
    "max_tokens": 256, "temperature": 0.2, "top_p": None, "message_count": 3, "prompt_tokens": 1211,
    "completion_tokens": 96, "total_tokens": 1307, "cached_tokens": 1024, "reasoning_tokens": None,
    "finish_reason": "stop", "time_to_first_byte_ms": 41, "time_to_first_token_ms": 212,
    "time_to_last_token_ms": 301, "tokens_per_second": 1078.652, "chunk_count": 99,
    "error_type": None, "error_message": None,
}


class BenchLLMMetrics(LLMMetrics):
    def __init__(self) -> None:
        super().__init__()
        self._flood_stop = threading.Event()

    def load(self, loader) -> None:
        super().load(loader)
        loader.add_option("bench_writer", str, "real", "real, flood (keep the writer busy) or drop (no storage).")

    def running(self) -> None:
        super().running()
        mode = ctx.options.bench_writer
        if mode == "drop" and self.writer is not None:
            self.writer.close()
            self.writer = DropWriter()
        elif mode == "flood":
            threading.Thread(target=self._flood, args=(self.writer,), name="bench-flood", daemon=True).start()

    def done(self) -> None:
        self._flood_stop.set()
        super().done()

    def _flood(self, writer) -> None:
        while not self._flood_stop.is_set():
            if writer.pending < 1000:
                for _ in range(1000):
                    writer.submit(FLOOD_ROW)
            time.sleep(0.005)


addons = [BenchLLMMetrics()]
