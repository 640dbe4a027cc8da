"""Benchmark-only, imported at start-up by the metering process of bench/writer_variants_addon.py
(`bench_writer=flood`): keeps 1,000-2,000 synthetic rows waiting in its writer's queue."""

import os
import sys
import threading
import time

if os.environ.get("LLM_BENCH_FLOOD") == "1":
    _bench = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path[:0] = [os.path.dirname(_bench), _bench]
    from _harness import FLOOD_ROW

    from addon import engine

    _start_engine = engine.start_engine

    def _flood(writer) -> None:
        while True:
            if writer.unsettled < 1000:
                for _ in range(1000):
                    writer.submit(FLOOD_ROW)
            time.sleep(0.005)

    def start_engine(**kwargs):
        started = _start_engine(**kwargs)
        threading.Thread(target=_flood, args=(started.writer,), name="bench-flood", daemon=True).start()
        return started

    engine.start_engine = start_engine
