"""Benchmark-only: the real addon with its metering process scheduled another way, or doing nothing.

    LLM_BENCH_METERING=nice10|nice19|idle|short-slice|count-only mitmdump -s bench/priority_variants_addon.py

- nice10: exactly addon/llm_metrics.py (the metering process at nice 10, as shipped).
- nice19: the metering process at nice 19, the lowest priority a normal process can have.
- idle: the metering process at SCHED_IDLE (what the design before issue 16 ran at; an unprivileged
  process cannot leave it again, so it starves while other processes keep the cores busy).
- short-slice: nice 10 with a 0.1 ms time slice (Linux 6.12 and later read `sched_runtime` of a
  normal process as the slice it asks for: it should be preempted sooner by a process that wakes).
- count-only: the metering process reads and unpickles every hand-over, and only counts calls:
  no parsing, no rows, no lines. What the pipe and the hooks cost, without the metering's work.

Each variant changes only the command line the addon starts its metering process with
(`addon.backends._BOOT`); bench/metering_priority.py runs them side by side.
"""

from __future__ import annotations

import os
import sys

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, ROOT)

import addon.backends as backends  # noqa: E402

_SET_SLICE = """
import ctypes, platform, struct
def _short_slice():
    number = {"x86_64": 314, "aarch64": 274}.get(platform.machine())  # sched_setattr
    attr = struct.pack("=IIQiIQQQII", 56, 0, 0, 10, 0, 100_000, 0, 0, 0, 0)  # SCHED_OTHER, nice 10, 0.1 ms
    if number is None or ctypes.CDLL(None, use_errno=True).syscall(number, 0, ctypes.create_string_buffer(attr, 56), 0):
        raise SystemExit("short-slice: sched_setattr failed")
"""

_AFTER_NICE = {
    "nice10": None,
    "nice19": "_nice(9)",
    "idle": "os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))",
    "short-slice": "_short_slice()",
    "count-only": None,
}

variant = os.environ.get("LLM_BENCH_METERING", "nice10")
if variant not in _AFTER_NICE:
    raise SystemExit(f"LLM_BENCH_METERING={variant!r}: one of {', '.join(_AFTER_NICE)}")
boot = [f"import os, sys; sys.path.insert(0, {ROOT!r})", "import addon.worker as worker"]
if variant == "short-slice":
    boot.append(_SET_SLICE)
if _AFTER_NICE[variant]:
    # worker.main nices itself to 10 first, then this runs.
    boot += ["_nice = os.nice", "def _then(n):", "    r = _nice(n)", f"    {_AFTER_NICE[variant]}", "    return r",
             "os.nice = _then"]
if variant == "count-only":
    boot += ["import addon.engine as engine",
             "def _count(self, m): self.ended += 1",
             "engine.Engine._whole = _count"]
boot.append("worker.main()")
backends._BOOT = "\n".join(boot)

from addon.llm_metrics import addons  # noqa: E402, F401
