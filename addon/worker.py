"""The metering process: where captured calls become rows, off mitmproxy's event loop.

mitmproxy runs every hook on one event loop, and any Python work in its process, on any thread,
holds the same interpreter lock: what the addon spends parsing bodies, building rows and writing
them would be taken from the proxy. So the hooks only stamp times and keep references to bytes,
and this process (started by `addon.backends.ChildProcess`) meters them: its standard input
carries frames of the hand-over protocol (`addon.capture`), its standard output carries log
records and progress back.

It runs at nice 10, so that on a machine with few cores its bursts yield to the proxy and the
user's programs, and still gets a share of the CPU on a busy machine. It ignores SIGINT and SIGTERM
(a terminal's Ctrl-C and a service manager's stop reach the whole process group): it ends when its
input closes, after storing what it was given, whether mitmdump stopped cleanly or was killed.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import sys
import threading
import time
from typing import Any

from .capture import FrameReader, LogRecord, Progress, Start, add_frame
from .redact import REDACT_WARNINGS

log = logging.getLogger(__name__)

_NICE = 10
# How often it reads while calls come: what came since, metered in one go, costs less CPU than the
# same in five goes (bench/hook_cost.py); sooner while the pipe fills fast, up to
# _IDLE_READ_EVERY_S when nothing comes. It never sleeps in a blocking read: a process woken by
# each write of the pipe tends to be run on the writer's core, taking it from mitmproxy's loop.
_READ_EVERY_S = 0.05
_FAST_READ_EVERY_S = 0.01
_FAST_READ_BYTES = 256 << 10
_IDLE_READ_EVERY_S = 0.1
_OUTPUT_QUEUE = 10_000  # log records waiting to go back to mitmproxy


def main() -> None:
    """`python -c ...` entry: standard input carries frames in, standard output frames back."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        os.nice(_NICE)
    except OSError:
        pass
    output = _Output(sys.stdout.fileno())
    root = logging.getLogger()
    handler = _ForwardHandler(output)
    handler.addFilter(REDACT_WARNINGS)  # every warning of this process: the writer's, the engine's
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    code = 0
    try:
        _serve(sys.stdin.fileno(), output)
    except Exception:
        log.exception("llm-metrics: the metering process failed")
        code = 1
    output.close()
    os._exit(code)  # no interpreter teardown: daemon threads and atexit have nothing left to do


def _serve(fd_in: int, output: _Output) -> None:
    from .engine import start_engine  # after logging is set up: import-time warnings go to mitmproxy

    os.set_blocking(fd_in, False)
    reader = FrameReader()
    engine = None
    reported = -1
    idle_s = _READ_EVERY_S
    while True:
        got = 0
        while True:
            try:
                data = os.read(fd_in, 1 << 20)
            except BlockingIOError:
                break
            if not data:  # mitmproxy closed our input: it stopped, or was killed
                if engine is not None:
                    engine.close()
                    output.put(Progress(engine.settled()))
                return
            got += len(data)
            for items in reader.feed(data):
                if engine is None:
                    first: Start = items.pop(0)
                    engine = start_engine(**first.settings)
                engine.handle_all(items)
        now = time.monotonic()
        if got:
            idle_s = _FAST_READ_EVERY_S if got >= _FAST_READ_BYTES else _READ_EVERY_S
        else:
            idle_s = min(idle_s * 2, _IDLE_READ_EVERY_S)
        wake = now + idle_s
        if engine is not None:
            if engine.lines_since is not None:
                if now >= engine.lines_since + engine.lines_every:
                    engine.flush_lines()
                else:
                    wake = min(wake, engine.lines_since + engine.lines_every)
            settled = engine.settled()
            if settled != reported:
                reported = settled
                output.put(Progress(settled))
        time.sleep(max(0.0, wake - time.monotonic()))


class _Output:
    """Frames back to mitmproxy, from a thread of their own: the metering never waits for mitmproxy
    to read them. Records past _OUTPUT_QUEUE waiting are dropped and counted."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=_OUTPUT_QUEUE)
        self.lost = 0
        self._thread = threading.Thread(target=self._run, name="llm-metrics-output", daemon=True)
        self._thread.start()

    def put(self, item: LogRecord | Progress) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.lost += 1

    def _run(self) -> None:
        while True:
            items = [self._queue.get()]
            while len(items) < 500:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            last = items[-1] is None
            if last:
                items.pop()
            try:
                data = bytearray()
                add_frame(data, items)
                with memoryview(data) as view:
                    while view:
                        view = view[os.write(self._fd, view) :]
            except OSError:
                return  # mitmproxy is gone: nobody to tell
            if last:
                return

    def close(self) -> None:
        if self.lost:
            self.put(LogRecord(logging.WARNING, __name__, f"llm-metrics: {self.lost} log record(s) of the metering "
                                                          "process were not shown (mitmproxy read them too slowly)"))
        self._queue.put(None)
        self._thread.join(10)


class _ForwardHandler(logging.Handler):
    def __init__(self, output: _Output) -> None:
        super().__init__(logging.INFO)
        self._output = output

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            self._output.put(LogRecord(record.levelno, record.name, text))
        except Exception:
            self.handleError(record)
