"""Tables that fit the terminal: when columns do not fit, the least important are left out (and
named in the caption) rather than squeezing numbers into ellipses."""

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

    def __post_init__(self) -> None:
        self.cells = [printable(c) for c in self.cells]

    def width(self) -> int:
        """What the column needs: numbers whole; text up to `min_width`, folded beyond."""
        widest = max((cell_len(c) for c in self.cells), default=0)
        header = max(cell_len(line) for line in self.header.split("\n"))
        if self.numeric:
            return max(widest, header)
        return max(header, min(widest, self.min_width))


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
        notes = [self.caption] if self.caption else []
        if hidden:
            notes.append(f"too narrow for: {', '.join(hidden)} (see --format json)")
        table = Table(
            title=self.title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 0),
            caption="\n".join(notes) or None, caption_justify="left",
        )
        for column in shown:
            if column.numeric:
                table.add_column(column.header, justify="right", no_wrap=True, min_width=column.width())
            else:
                table.add_column(column.header, overflow="fold", min_width=min(column.width(), options.max_width))
        for row in zip(*(c.cells for c in shown)):
            table.add_row(*(Text(cell) for cell in row))  # Text: a `[` in a model name is not markup
        yield table


GAP = 1  # between columns: SIMPLE_HEAD's blank divider


def _needed(columns: list[Column]) -> int:
    return sum(c.width() for c in columns) + GAP * (len(columns) - 1)
