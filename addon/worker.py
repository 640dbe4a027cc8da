"""The metering process: where captured calls become rows, off mitmproxy's event loop.

mitmproxy runs every hook and every stream callable on one event loop, and any Python work in
its process, on any thread, holds the same interpreter lock: what the addon spends parsing
bodies, building rows and writing them is taken from the proxy's throughput and latency. So the
hooks only stamp times and keep references to bytes; `WorkerProcess` hands those to a child
process in batches over a pipe, where `addon.engine.Engine` meters them and the storage writer
stores them. Its log records come back over a second pipe and are logged by mitmproxy as the
addon's own.

The child runs at the lowest CPU priority Linux has (SCHED_IDLE): it gets only CPU time no other
process wants, so even at concurrency 1 on two cores the proxy does not wait for it. A process
cannot leave SCHED_IDLE without privileges, and on a machine busy with other work it could get no
CPU at all: when it falls behind (`WorkerProcess.starved`), the addon hands new calls to a second
metering process at nice 10, and the first one finishes what it has (`LLMMetrics._escalate`).
Where SCHED_IDLE does not exist the child runs at nice 10 from the start.

The child ignores SIGINT and SIGTERM (a terminal's Ctrl-C and a service manager's stop reach the
whole process group): it ends when its input closes, after storing what it was given, whether
mitmdump stopped cleanly or was killed. If it ends while mitmdump runs, the addon meters in its
own process from then on (`LLMMetrics._worker_ended`).

Frames on both pipes: a 4-byte little-endian length, then a pickled list of messages.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

try:
    import fcntl
except ImportError:  # not POSIX: the addon meters in mitmproxy's process (LLMMetrics._open_store)
    fcntl = None

log = logging.getLogger(__name__)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_BOOT = f"import sys; sys.path.insert(0, {ROOT!r}); from addon.worker import main; main(idle=%r)"
_HEADER = 4
_PIPE_SIZE = 1 << 20  # Linux lets a pipe hold up to /proc/sys/fs/pipe-max-size (1 MiB by default)
_F_SETPIPE_SZ = 1031
# While more than this waits for the child (it meters more slowly than a stream arrives: a
# synthetic stream of hundreds of MB/s), each hand-over waits until HIGH_WATER // 2 of it has
# gone: memory stays near HIGH_WATER. One frame larger than that (a 50 MB body) is not waited
# for whole: it goes out at the pipe's pace.
HIGH_WATER = 2 << 20
_STALL_S = 5.0  # a child that takes nothing for this long is hung: it is stopped
_PROGRESS_EVERY_S = 0.5
# How often the child reads while calls come: what came since, metered in one go, costs it less
# CPU than the same in five goes (at 800 calls/s, about 70 us a call instead of 100: Python's
# caches are warm for longer). Sooner while the pipe fills faster than that; up to
# _IDLE_READ_EVERY_S when nothing comes.
_READ_EVERY_S = 0.05
_FAST_READ_EVERY_S = 0.01
_FAST_READ_BYTES = _PIPE_SIZE // 4  # read in one wake-up: the next comes sooner
_IDLE_READ_EVERY_S = 0.1
_CLOSE_TIMEOUT_S = 40.0  # the writer's own close waits up to 10 s, plus one database attempt
# The metering yields the CPU to the proxy and the user's programs: on a machine with few cores
# its bursts otherwise delay them. At concurrency 1 on two cores (16 alternating rounds, 2026-12-05):
# 0.91 of bare mitmdump's requests/s at nice 10, 0.95 at SCHED_IDLE, 0.98 with no metering at
# all. At nice 10 (where SCHED_IDLE does not exist, or once it starved) it still gets about a
# tenth of a core against a busy process, more than a proxy's calls need (~0.1 ms each).
_NICE = 10
# A child at SCHED_IDLE is starved when this much waits for it, or anything has waited this long
# (a 1 MiB pipe full, then more): well before HIGH_WATER, where the hooks would wait for it.
_STARVED_BYTES = HIGH_WATER // 4
_STARVED_S = 0.5
_OUTPUT_QUEUE = 10_000  # log records waiting to go back to mitmproxy

START, LOG, PROGRESS = "start", "log", "progress"


def add_frame(buf: bytearray, messages: list) -> None:
    """Appends one frame to `buf`: the pickled list's length (4 bytes, little-endian), then it."""
    payload = pickle.dumps(messages, protocol=pickle.HIGHEST_PROTOCOL)
    buf += len(payload).to_bytes(_HEADER, "little")
    buf += payload


class FrameReader:
    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[list]:
        buf = self._buf
        buf.extend(data)
        start = 0
        while len(buf) - start >= _HEADER:
            size = int.from_bytes(buf[start : start + _HEADER], "little")
            end = start + _HEADER + size
            if len(buf) < end:
                break
            yield pickle.loads(memoryview(buf)[start + _HEADER : end])
            start = end
        del buf[:start]


class WorkerProcess:
    """The child, seen from mitmproxy's side. `send` never blocks for long: bytes the pipe cannot
    take yet wait here and go out when it can (up to HIGH_WATER, then the hooks wait)."""

    def __init__(self, start: dict[str, Any], on_exit: Callable[[int | None], None], idle: bool = True) -> None:
        self.on_exit = on_exit
        self.idle = idle and hasattr(os, "SCHED_IDLE")  # asked to run at SCHED_IDLE; `starved` checks it did
        self.proc = subprocess.Popen([sys.executable, "-c", _BOOT % self.idle], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, close_fds=True)
        self._in = self.proc.stdin.fileno()
        self._out = self.proc.stdout.fileno()
        try:
            fcntl.fcntl(self._in, _F_SETPIPE_SZ, _PIPE_SIZE)
        except OSError:
            pass  # not Linux, or above the system's limit: the default size works, in more writes
        os.set_blocking(self._in, False)
        os.set_blocking(self._out, False)
        self._pending = bytearray()  # frames not yet written, from self._sent on
        self._sent = 0
        self._waiting_since: float | None = None  # monotonic time since when bytes wait for the pipe
        self.retiring = False  # its input closes once what waits is written (`retire`)
        self._reader = FrameReader()
        self._loop = None  # the event loop watching our pipes, once there is one
        self.alive = True
        self.closing = False
        self.handed = 0  # calls handed over whole (their last message sent)
        self.settled = 0  # of those, how many the child reported stored or counted
        self.send([(START, start)])

    # -- to the child --------------------------------------------------------------------

    def send(self, messages: list) -> None:
        if not self.alive:
            return
        add_frame(self._pending, messages)
        self._flush()
        if self.waiting > HIGH_WATER:
            self._write_until(self.waiting - HIGH_WATER // 2)

    @property
    def waiting(self) -> int:
        return len(self._pending) - self._sent

    def starved(self) -> bool:
        """Whether this child, at SCHED_IDLE, gets too little CPU to keep up: the machine is
        busy with other work (or the child is stopped)."""
        if not self.idle or not self.waiting or self._waiting_since is None:
            return False
        if self.waiting < _STARVED_BYTES and time.monotonic() - self._waiting_since < _STARVED_S:
            return False
        try:
            self.idle = os.sched_getscheduler(self.proc.pid) == os.SCHED_IDLE
        except OSError:  # gone: not starved, ended (`poll` sees it)
            self.idle = False
        return self.idle

    def retire(self) -> None:
        """Lets the child end without waiting for it: its input closes once what waits for the
        pipe is written; its log records are read until it exits, then `on_exit` is called."""
        self.retiring = True
        if self.alive and not self.waiting:
            self._close_input()

    def _close_input(self) -> None:
        if self._loop is not None:
            self._loop.remove_writer(self._in)
        try:
            self.proc.stdin.close()
        except OSError:
            pass

    def _flush(self) -> None:
        """Writes what the pipe takes now; the rest when it can (mitmproxy's loop watches it)."""
        self._write()
        if self.alive and self.waiting:
            if self._waiting_since is None:
                self._waiting_since = time.monotonic()
            loop = self._running_loop()
            if loop is not None:
                loop.add_writer(self._in, self._flush)
            else:  # nobody to come back later (hooks called without a loop): wait here
                self._write_until(0)
        elif self.retiring and self.alive:
            self._close_input()
        elif self._loop is not None:
            self._loop.remove_writer(self._in)

    def _write(self) -> None:
        """One write, as much as the pipe takes without waiting."""
        with memoryview(self._pending) as view:
            try:
                n = os.write(self._in, view[self._sent :])
            except BlockingIOError:
                n = 0
            except OSError:  # BrokenPipeError: the child is gone
                n = -1
        if n < 0:
            self._ended()
            return
        self._sent += n
        if self._sent == len(self._pending):
            self._pending.clear()
            self._sent = 0
            self._waiting_since = None
        elif self._sent > HIGH_WATER // 2:  # drop what went now and then, not on every write
            del self._pending[: self._sent]
            self._sent = 0

    def _write_until(self, remaining: int) -> None:
        """Waits (on the hooks' thread) until at most `remaining` bytes wait; a child that takes
        nothing for _STALL_S is hung, and stopped."""
        deadline = time.monotonic() + _STALL_S
        while self.alive and self.waiting > remaining:
            left = deadline - time.monotonic()
            if left <= 0:
                log.error("llm-metrics: the metering process took no data for %.0f s; stopping it", _STALL_S)
                self.proc.kill()
                self._ended()
                return
            _, writable, _ = select.select([], [self._in], [], left)
            if writable:
                before = self.waiting
                self._write()
                if self.waiting < before:
                    deadline = time.monotonic() + _STALL_S
            self.poll()  # the child may wait for us to read its log records

    # -- from the child ------------------------------------------------------------------

    def poll(self) -> None:
        """Reads what the child sent: log records, progress, or its end."""
        while True:
            try:
                data = os.read(self._out, 1 << 16)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._ended()
                return
            for messages in self._reader.feed(data):
                for message in messages:
                    self._received(message)

    def _received(self, message: tuple) -> None:
        kind = message[0]
        if kind == LOG:
            _, level, name, text = message
            logging.getLogger(name).log(level, text)
        elif kind == PROGRESS:
            self.settled = message[1]

    def _running_loop(self):
        if self._loop is None:
            try:
                import asyncio

                self._loop = asyncio.get_running_loop()
            except RuntimeError:
                return None
            self._loop.add_reader(self._out, self.poll)
        return self._loop

    def watch(self) -> None:
        """Reads the child's records as they come, once mitmproxy's loop runs."""
        if self.alive:
            self._running_loop()

    def _ended(self) -> None:
        if not self.alive:
            return
        self.alive = False
        self._unwatch()
        if self.closing:
            return
        try:
            code = self.proc.wait(2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = None
        self.on_exit(code)

    def _unwatch(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._out)
            self._loop.remove_writer(self._in)
            self._loop = None

    # -- the end -------------------------------------------------------------------------

    def close(self) -> None:
        """Hands over what waits, closes the child's input and waits for it to store everything,
        logging what it says meanwhile."""
        self.closing = True
        self._unwatch()
        if self.alive:
            self._write_until(0)
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        deadline = time.monotonic() + _CLOSE_TIMEOUT_S
        while self.alive and time.monotonic() < deadline:
            readable, _, _ = select.select([self._out], [], [], deadline - time.monotonic())
            if readable:
                self.poll()
        try:
            code = self.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("llm-metrics: the metering process did not finish within %.0f s; stopped", _CLOSE_TIMEOUT_S)
            self.proc.kill()
            code = self.proc.wait()
        if code != 0:
            log.error("llm-metrics: the metering process ended with exit code %s: up to %d call(s) it had not "
                      "stored are lost", code, max(0, self.handed - self.settled))
        self.alive = False
        self.proc.stdout.close()


# -- the child -------------------------------------------------------------------------------


class _Output:
    """Log records back to mitmproxy, from a thread of their own: the metering never waits for
    mitmproxy to read them. Records past _OUTPUT_QUEUE waiting are dropped and counted."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._queue: queue.Queue = queue.Queue(maxsize=_OUTPUT_QUEUE)
        self.lost = 0
        self._thread = threading.Thread(target=self._run, name="llm-metrics-output", daemon=True)
        self._thread.start()

    def put(self, message: tuple) -> None:
        try:
            self._queue.put_nowait(message)
        except queue.Full:
            self.lost += 1

    def _run(self) -> None:
        while True:
            messages = [self._queue.get()]
            while len(messages) < 500:
                try:
                    messages.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            last = messages[-1] is None
            if last:
                messages.pop()
            try:
                data = bytearray()
                add_frame(data, messages)
                with memoryview(data) as view:
                    while view:
                        view = view[os.write(self._fd, view):]
            except OSError:
                return  # mitmproxy is gone: nobody to tell
            if last:
                return

    def close(self) -> None:
        if self.lost:
            self.put((LOG, logging.WARNING, __name__, f"llm-metrics: {self.lost} log record(s) of the metering "
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
            self._output.put((LOG, record.levelno, record.name, text))
        except Exception:
            self.handleError(record)


def main(idle: bool = False) -> None:
    """`python -c ...` entry of the child: stdin carries messages, stdout log records back."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        os.nice(_NICE)
        if idle:  # before any thread starts: threads inherit it
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except OSError:
        pass
    fd_in, fd_out = sys.stdin.fileno(), sys.stdout.fileno()
    output = _Output(fd_out)
    root = logging.getLogger()
    root.handlers[:] = [_ForwardHandler(output)]
    root.setLevel(logging.INFO)
    code = 0
    try:
        _serve(fd_in, output)
    except Exception:
        log.exception("llm-metrics: the metering process failed")
        code = 1
    output.close()
    os._exit(code)  # no interpreter teardown: daemon threads and atexit have nothing left to do


def _serve(fd_in: int, output: _Output) -> None:
    from .engine import start_engine  # after logging is set up: import-time warnings go to mitmproxy

    # The child reads on its own clock, never blocked in a read: a process waiting on a pipe is
    # woken by each write as a "sync" wake-up, which Linux tends to run on the writer's core,
    # taking that core from mitmproxy's loop at once. Written into a pipe nobody waits on, the
    # bytes just wait; mitmproxy's loop is never interrupted for the metering.
    os.set_blocking(fd_in, False)
    reader = FrameReader()
    engine = None
    reported = -1
    idle_s = _READ_EVERY_S
    next_progress = time.monotonic() + _PROGRESS_EVERY_S
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
                return
            got += len(data)
            for messages in reader.feed(data):
                if engine is None:
                    start = messages.pop(0)[1]
                    engine = start_engine(**start)
                engine.handle_all(messages)
        now = time.monotonic()
        # Quick reads while data comes; slower ones when it does not (no busy wake-ups when idle).
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
            if now >= next_progress:
                next_progress = now + _PROGRESS_EVERY_S
                settled = engine.settled()
                if settled != reported:
                    reported = settled
                    output.put((PROGRESS, settled))
        time.sleep(max(0.0, wake - time.monotonic()))
