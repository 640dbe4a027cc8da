"""`python -m reports --watch` fits the terminal's height: run in a real pseudo-terminal of 100
columns and 30 rows, the screen it leaves keeps the overview and says which sections it left out."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from rich.console import Console

from reports.cli import build_parser, watch
from tests.test_reports import make_db, make_rows

ROOT = Path(__file__).resolve().parents[1]
COLUMNS, LINES = 100, 30
NOTE = "too short for: "


class Screen:
    """What a terminal of `rows` × `columns` shows after the bytes rich's Live writes: text,
    carriage return, line feed (scrolling at the bottom), cursor up (CSI n A), erase in line (CSI
    2 K); colours and cursor visibility are read past."""

    def __init__(self, rows: int, columns: int) -> None:
        self.rows, self.columns = rows, columns
        self.lines = [[" "] * columns for _ in range(rows)]
        self.row = self.column = 0

    def feed(self, text: str) -> None:
        for token in re.findall(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b.|.", text, re.S):
            if token.startswith("\x1b["):
                self._control(token)
            elif token == "\r":
                self.column = 0
            elif token == "\n":
                self._down()
            elif token >= " " and not token.startswith("\x1b"):
                if self.column >= self.columns:
                    self.column = 0
                    self._down()
                self.lines[self.row][self.column] = token
                self.column += 1

    def _control(self, sequence: str) -> None:
        final, number = sequence[-1], sequence[2:-1]
        if final == "A":
            self.row = max(0, self.row - int(number or 1))
        elif final == "K" and number == "2":
            self.lines[self.row] = [" "] * self.columns

    def _down(self) -> None:
        if self.row == self.rows - 1:
            self.lines = self.lines[1:] + [[" "] * self.columns]
        else:
            self.row += 1

    def text(self) -> list[str]:
        return ["".join(line).rstrip() for line in self.lines]


def read_until(fd: int, done, seconds: float) -> str:
    """What the terminal received, until `done(received)` or `seconds` pass."""
    received = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not done(received.decode("utf-8", "replace")):
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                received += os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
    return received.decode("utf-8", "replace")


@pytest.fixture
def tall_database(tmp_path):
    return make_db(tmp_path / "metrics.db", make_rows(240))  # three tables, errors, a timeline: far over 30 rows


def test_watch_in_a_100_by_30_terminal_keeps_the_overview_and_names_what_it_left_out(tall_database):
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", LINES, COLUMNS, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("LLM_METRICS_DB", "NO_COLOR", "FORCE_COLOR")}
    child = subprocess.Popen(
        [sys.executable, "-m", "reports", "--db", tall_database, "--watch", "1"], cwd=ROOT,
        env={**env, "COLUMNS": str(COLUMNS), "LINES": str(LINES), "TERM": "xterm-256color"},
        stdin=terminal, stdout=terminal, stderr=terminal, start_new_session=True,
    )
    os.close(terminal)
    try:
        # Two frames: the second is drawn over the first, as a user watching sees it.
        output = read_until(controller, lambda text: text.count(NOTE) >= 2, 60)
        child.send_signal(signal.SIGINT)  # Ctrl-C
        output += read_until(controller, lambda text: child.poll() is not None, 20)
        assert child.wait(timeout=20) == 0
    finally:
        if child.poll() is None:
            child.kill()
        os.close(controller)
    assert output.count(NOTE) >= 2, output[-2000:]
    screen = Screen(LINES, COLUMNS)
    screen.feed(output)
    shown = screen.text()
    [top] = [i for i, line in enumerate(shown) if line.startswith("╭─ LLM calls · ")]
    assert shown[top - 1].startswith("updated ") and "Ctrl-C to stop" in shown[top - 1]
    assert any(line.startswith("│ 240 requests · ") for line in shown)  # the overview's figures are on screen
    assert any(line.startswith("╰") for line in shown[top:])
    [note] = [line for line in shown if line.startswith(NOTE)]
    assert note.endswith(f"timeline, slowest calls ({LINES} rows)")  # the lowest went first
    assert len(note) <= COLUMNS


def screen_of(database: str, height: int, width: int = 100) -> list[str]:
    """The screen one frame of --watch leaves, in a terminal of `height` rows (in-process)."""
    console = Console(file=io.StringIO(), width=width, height=height, force_terminal=True, color_system=None)
    assert watch(build_parser().parse_args(["--db", database, "--watch", "5"]), database, console,
                 sleep=lambda s: None, refreshes=1) == 0
    screen = Screen(height, width)
    screen.feed(console.file.getvalue().replace("\n", "\r\n"))  # what a terminal's line discipline makes of it
    return screen.text()


SECTIONS = ("overview", "by model", "by provider/host", "by origin", "errors", "retries", "timeline", "slowest calls")
TITLES = {"by model": "By model", "by provider/host": "By provider/host", "by origin": "By origin", "errors": "Errors (",
          "retries": "Retries and rate limits", "timeline": "Timeline (", "slowest calls": "Slowest 10 calls"}


@pytest.mark.parametrize("height", [24, 40, 60])
def test_sections_are_left_out_from_the_bottom_up(tall_database, height):
    lines = screen_of(tall_database, height)
    assert lines[0].startswith("updated ") and lines[1].startswith("╭─ LLM calls · ")
    [note] = [line for line in lines if line.startswith(NOTE)]
    left_out = note[len(NOTE):].removesuffix(f" ({height} rows)").split(", ")
    kept = SECTIONS[:len(SECTIONS) - len(left_out)]
    assert kept and tuple(left_out) == SECTIONS[len(kept):]  # a run from the bottom
    for name in kept[1:]:
        assert any(line.startswith(TITLES[name]) for line in lines), name
    assert lines[-1] == ""  # a row left free: a frame as tall as the terminal would scroll it
    assert len(kept) > 1


def test_a_terminal_with_room_for_the_overview_alone_keeps_it_and_cuts_the_note_to_one_line(tall_database):
    lines = screen_of(tall_database, 12)
    assert lines[1].startswith("╭─ LLM calls · ") and any(line.startswith("╰") for line in lines)
    [note] = [line for line in lines if line.startswith(NOTE)]
    assert note.startswith(NOTE + "by model, by provider/host, ") and note.endswith("…") and len(note) == 100


def test_a_terminal_tall_enough_shows_every_section_and_no_note(tall_database):
    everything = screen_of(tall_database, 200)
    assert not any(line.startswith(NOTE) for line in everything)
    for title in TITLES.values():
        assert any(line.startswith(title) for line in everything), title
