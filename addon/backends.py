"""Where handed-over calls are metered: in a process of its own (as shipped) or on mitmproxy's loop.

Both implement `Metering`, so the addon never asks which one it has. Neither ever makes a hook
wait: `send` hands a batch over and returns; what the pipe cannot take yet waits in memory
(`backlog`), and the addon stops handing over calls while too much waits (`addon.handover`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from .capture import FrameReader, LogRecord, Progress, Start, frame
from .engine import Engine, start_engine

try:
    import fcntl
except ImportError:  # not POSIX: metering runs in mitmproxy's process (`open_metering`)
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_BOOT = f"import sys; sys.path.insert(0, {ROOT!r}); from addon.worker import main; main()"
_PIPE_SIZE = 1 << 20  # Linux lets a pipe hold up to /proc/sys/fs/pipe-max-size (1 MiB by default)
_F_SETPIPE_SZ = 1031
_MAX_RESTARTS = 5  # a metering process that keeps dying is a bug: stop starting new ones


class Metering(Protocol):
    """What the addon hands batches of the hand-over protocol (`addon.capture`) to."""

    @property
    def backlog(self) -> int:
        """Bytes handed over that the metering has not taken yet."""

    @property
    def unsettled(self) -> int:
        """Calls handed over whose fate is not sealed yet (neither stored nor counted)."""

    def send(self, items: list[Any], finals: int) -> None:
        """Hands a batch over, never waiting; `finals`: how many calls it completes."""

    def watch(self) -> None:
        """Called once mitmproxy's loop runs, and when the metering changes while it runs (again: no-op)."""

    def close(self, timeout: float) -> None:
        """Waits at most `timeout` seconds for every call handed over to be stored or counted."""


def open_metering(start: dict[str, Any], *, in_process: bool, db: Any, on_death: Callable[[], None]) -> Metering:
    """A metering process, unless asked otherwise or impossible here; then on mitmproxy's loop.
    `db`, just prepared by the caller, is used in-process and closed otherwise; None when the
    database could not be reached: the metering's writer opens it once it can."""
    if not in_process and os.name == "posix" and not getattr(sys, "frozen", False):
        if db is not None:
            db.close()
        try:
            return ChildProcess(start, on_death)
        except Exception as exc:
            log.warning("llm-metrics: no metering process (%r): metering in mitmproxy's process", exc)
    return InProcess(start_engine(db=db, **start))


class InProcess:
    """The engine on mitmproxy's loop; its writer thread alone touches the database."""

    backlog = 0

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.handed = 0
        self._flush_scheduled = False

    @property
    def unsettled(self) -> int:
        return self.handed - self.engine.settled()

    def send(self, items: list[Any], finals: int) -> None:
        self.handed += finals
        self.engine.handle_all(items)
        if self.engine.call_lines and not self._flush_scheduled:
            try:
                asyncio.get_running_loop().call_later(self.engine.lines_every, self._flush_lines)
                self._flush_scheduled = True
            except RuntimeError:  # no event loop (hooks called by hand): nothing would flush later
                self.engine.flush_lines()

    def _flush_lines(self) -> None:
        self._flush_scheduled = False
        self.engine.flush_lines()

    def watch(self) -> None:
        pass

    def close(self, timeout: float) -> None:
        self.engine.close()


class ChildProcess:
    """The metering process (`addon.worker`), seen from mitmproxy's side.

    Frames go out through a non-blocking pipe; what it cannot take yet waits here and is written
    when mitmproxy's loop says the pipe has room. Log records and progress come back through a
    second pipe. If the process dies, `on_death` is told (the addon counts what was lost with
    it) and a new one is started, at most `_MAX_RESTARTS` times a run.
    """

    def __init__(self, start: dict[str, Any], on_death: Callable[[], None]) -> None:
        self._start = start
        self._on_death = on_death
        self._loop: asyncio.AbstractEventLoop | None = None
        self.restarts = 0
        self._spawn()

    def _spawn(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _BOOT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     close_fds=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in, self._out = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        if fcntl is not None:
            try:
                fcntl.fcntl(self._in, _F_SETPIPE_SZ, _PIPE_SIZE)
            except OSError:
                pass  # not Linux, or above the system's limit: the default size works, in more writes
        os.set_blocking(self._in, False)
        os.set_blocking(self._out, False)
        # Frames not yet written, each its own bytes (the first written up to `_sent`): no one
        # growing buffer, whose every reallocation would briefly need twice what waits.
        self._pending: deque[bytes] = deque()
        self._sent = 0
        self._backlog = 0
        self._reader = FrameReader()
        self.alive = True
        self.handed = 0  # calls handed to this process (their last message sent)
        self.settled = 0  # of those, how many it reported stored or counted
        self._watching = False
        self._writer_added = False
        self.send([Start(self._start)], 0)
        if self._loop is not None:
            self.watch()

    @property
    def backlog(self) -> int:
        return self._backlog

    @property
    def unsettled(self) -> int:
        return self.handed - self.settled

    # -- to the process --------------------------------------------------------------------

    def send(self, items: list[Any], finals: int) -> None:
        self.handed += finals
        if not self.alive:
            return  # after _MAX_RESTARTS: nothing meters them (counted as unsettled at close)
        data = frame(items)
        self._pending.append(data)
        self._backlog += len(data)
        self._write()
        if self.alive and self.backlog and not self._watching:
            self._write_all(time.monotonic() + 10)  # hooks called by hand, without a loop: nobody comes back

    def _write(self) -> None:
        """As much as the pipe takes now; mitmproxy's loop calls again when it has room."""
        pending = self._pending
        while pending:
            with memoryview(pending[0]) as view:
                try:
                    n = os.write(self._in, view[self._sent :])
                except (BlockingIOError, OSError):  # full; or the process is gone (its pipe's reader says so)
                    break
                left = len(view) - self._sent - n
            self._backlog -= n
            if left:
                self._sent += n
                break
            pending.popleft()
            self._sent = 0
        if self._loop is not None and self.alive:
            if self.backlog and not self._writer_added:
                self._loop.add_writer(self._in, self._write)
                self._writer_added = True
            elif not self.backlog and self._writer_added:  # asyncio raises and catches inside when none is
                self._loop.remove_writer(self._in)
                self._writer_added = False

    def _write_all(self, deadline: float) -> None:
        """Waits until every waiting byte is written (at the end, or without a loop)."""
        while self.alive and self.backlog and time.monotonic() < deadline:
            _, writable, _ = select.select([], [self._in], [], max(0.0, deadline - time.monotonic()))
            if writable:
                self._write()
            self._read()  # the process may wait for us to read its log records

    # -- from the process --------------------------------------------------------------------

    def watch(self) -> None:
        if self._watching:
            return
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._loop.add_reader(self._out, self._read)
        self._watching = True
        if self.backlog and not self._writer_added:
            self._loop.add_writer(self._in, self._write)
            self._writer_added = True

    def _read(self) -> None:
        """Log records and progress; at its end, the process has died (or finished, at close)."""
        while self.alive:
            try:
                data = os.read(self._out, 1 << 16)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._ended()
                return
            for items in self._reader.feed(data):
                for item in items:
                    if type(item) is LogRecord:
                        logging.getLogger(item.name).log(item.level, item.text)
                    elif type(item) is Progress:
                        self.settled = item.settled

    def _ended(self) -> None:
        self.alive = False
        self._unwatch()
        self.proc.stdin.close()  # type: ignore[union-attr]
        self.proc.stdout.close()  # type: ignore[union-attr]
        if self._loop is None:  # closing, or no loop: the caller reaps it
            return
        code = self.proc.poll()
        log.error("llm-metrics: the metering process ended unexpectedly (%s)",
                  f"exit code {code}" if code is not None else "still exiting")
        self._on_death()  # the addon counts what was lost with it, from `unsettled`
        if code is None:
            self._loop.call_later(1.0, self.proc.poll)  # reaped without waiting on the loop
        if self.restarts >= _MAX_RESTARTS:
            log.error("llm-metrics: the metering process ended %d times: no new one is started; calls are not "
                      "recorded from now on (counted in the exit summary)", self.restarts + 1)
            return
        self.restarts += 1
        try:
            self._spawn()
        except Exception as exc:
            log.error("llm-metrics: no new metering process could be started (%r): calls are not recorded", exc)

    def _unwatch(self) -> None:
        if self._loop is not None and self._watching:
            self._loop.remove_reader(self._out)
            self._loop.remove_writer(self._in)
        self._watching = self._writer_added = False

    # -- the end -------------------------------------------------------------------------------

    def close(self, timeout: float) -> None:
        """Hands over what waits, closes the process's input and waits for it to store everything
        (it exits then), logging what it says meanwhile; after `timeout` it is stopped."""
        deadline = time.monotonic() + timeout
        self._unwatch()
        self._loop = None
        self._write_all(deadline)
        if self.alive:
            self.proc.stdin.close()  # type: ignore[union-attr]
        while self.alive and time.monotonic() < deadline:
            readable, _, _ = select.select([self._out], [], [], max(0.0, deadline - time.monotonic()))
            if readable:
                self._read()
        if self.alive:
            self.alive = False
            self.proc.kill()
            self.proc.stdout.close()  # type: ignore[union-attr]
        try:
            self.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
