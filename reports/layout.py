"""Tables that fit the terminal: when columns do not fit, the least important are left out (and
named in the caption) rather than squeezing numbers into ellipses.

Every column's width is decided here and given to rich as a fixed width: numbers get their whole
width and never wrap; text columns get at least `min_width` and share what is left, and fold
what does not fit onto more lines. Left to itself, rich measures a text column by its longest
word, lays the table out wider than the terminal, and the terminal's edge cuts the last columns
("500 http_500" became "500 http_50"). No cell ever loses a character.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rich import box
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table
from rich.text import Text

from .fmt import printable


@dataclass
class Column:
    """A column of plain text (never rich markup), shown as `fmt.printable` writes it."""

    header: str  # may hold "\n" for a two-line header
    cells: list[str] = field(default_factory=list)
    keep: int = 0  # when space runs out, the lowest `keep` goes first
    numeric: bool = True  # right-aligned, never wrapped
    min_width: int = 10  # for text columns, which fold their content to fit
    note: str | None = None  # a line under the table, when the column is shown

    def __post_init__(self) -> None:
        self.cells = [printable(c) for c in self.cells]

    def width(self) -> int:
        """What the column needs: numbers whole; text up to `min_width`, folded beyond."""
        if self.numeric:
            return self.natural_width()
        return max(self._header_width(), min(self._widest(), self.min_width))

    def natural_width(self) -> int:
        """What the column takes when nothing is folded."""
        return max(self._widest(), self._header_width())

    def longest_word(self) -> int:
        return max((cell_len(word) for c in self.cells for word in c.split()), default=0)

    def _widest(self) -> int:
        return max((cell_len(c) for c in self.cells), default=0)

    def _header_width(self) -> int:
        return max(cell_len(line) for line in self.header.split("\n"))


@dataclass
class FitTable:
    title: str
    columns: list[Column]
    caption: str | None = None

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        shown = list(self.columns)
        while len(shown) > 1 and _needed(shown) > options.max_width:
            shown.remove(min(shown, key=lambda c: c.keep))
        hidden = [c.header.replace("\n", " ") for c in self.columns if c not in shown]
        notes = [c.note for c in shown if c.note] + ([self.caption] if self.caption else [])
        if hidden:
            notes.append(f"too narrow for: {', '.join(hidden)} (see --format json)")
        table = Table(
            title=self.title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 0),
            caption="\n".join(notes) or None, caption_justify="left",
        )
        for column, width in zip(shown, widths(shown, options.max_width)):
            whole = width >= column.natural_width()
            table.add_column(
                column.header, justify="right" if column.numeric else "left", width=width,
                no_wrap=column.numeric and whole, overflow="fold",  # fold: a number wider than the terminal
            )
        for row in zip(*(c.cells for c in shown)):
            table.add_row(*(Text(cell) for cell in row))  # Text: a `[` in a model name is not markup
        yield table


GAP = 1  # between columns: SIMPLE_HEAD's blank divider


def _needed(columns: list[Column]) -> int:
    return sum(c.width() for c in columns) + GAP * (len(columns) - 1)


def widths(columns: list[Column], max_width: int) -> list[int]:
    """Each column's width in `max_width`: what it needs (all of it for numbers); then, of what
    is left, first enough for the longest word of the text columns that need least for it (a word
    folded midway, `connection_refuse`+`d`, reads worst), then a character at a time to the text
    column furthest from its natural width. A lone column wider than the terminal is given the
    terminal's width, and folds."""
    given = [c.width() for c in columns]
    if len(columns) == 1:
        return [max(1, min(given[0] if columns[0].numeric else columns[0].natural_width(), max_width))]
    spare = max_width - _needed(columns)
    text = [i for i, c in enumerate(columns) if not c.numeric]
    for i in sorted(text, key=lambda i: columns[i].longest_word() - given[i]):
        need = columns[i].longest_word() - given[i]
        if 0 < need <= spare:
            given[i] += need
            spare -= need
    short = {i: columns[i].natural_width() - given[i] for i in text}
    while spare > 0 and short and max(short.values()) > 0:
        i = max(short, key=lambda i: short[i])  # ties: the leftmost
        given[i] += 1
        short[i] -= 1
        spare -= 1
    return given
