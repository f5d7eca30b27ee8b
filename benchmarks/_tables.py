"""The tables and command-line plumbing that the benchmark scripts share.

A module of its own so that ``overhead.py``, ``throughput.py`` and
``processes.py`` print their tables the same way. Each script is run as
``python benchmarks/<script>.py``, which puts this folder on ``sys.path``, so
they ``import _tables`` (and ``_fresh``, which runs their cases).

A table has one or more label columns, left-aligned, then its numbers,
right-aligned. It renders as aligned text, as Markdown, or as a reST
``list-table`` for the docs.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import os
import platform
import sys

#: Longest error message shown in a table cell.
MAX_ERROR_LENGTH = 60


# Tables ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Row:
    """A table row: its labels, then its numbers or why it has none."""

    labels: list[str]
    values: list[str]
    error: str | None = None

    def cells(self, columns: int) -> list[str]:
        """All cells; a failed row has its error first, then ``n/a``."""
        if self.error is None:
            return [*self.labels, *self.values]
        return [*self.labels, self.error, *["n/a"] * (columns - len(self.labels) - 1)]


@dataclasses.dataclass(frozen=True)
class Table:
    """A titled table. Every row has the same number of labels."""

    title: str
    header: list[str]
    rows: list[Row]
    #: Sentences printed under the table, if any.
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def label_columns(self) -> int:
        """How many columns, from the left, hold labels rather than numbers."""
        return len(self.rows[0].labels) if self.rows else 0

    def cell_rows(self) -> list[list[str]]:
        return [row.cells(len(self.header)) for row in self.rows]


def shorten(message: str) -> str:
    """The message cut to :data:`MAX_ERROR_LENGTH` characters, ``...`` ending
    one that was cut."""
    if len(message) > MAX_ERROR_LENGTH:
        message = message[: MAX_ERROR_LENGTH - 3].rstrip() + "..."
    return message


def describe_error(exc: BaseException) -> str:
    """``n/a (Type: message)``, the message cut to one short line."""
    lines = str(exc).strip().splitlines()
    return f"n/a ({type(exc).__name__}: {shorten(lines[0] if lines else '')})"


def ratio(value: float | None, baseline: float | None) -> float | None:
    if value is None or not baseline:
        return None
    return value / baseline


def format_number(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def format_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def render_text(table: Table) -> str:
    """Aligned plain text: labels left, numbers right, then the notes. A
    failed row's error runs on past the columns instead of widening them."""
    complete = [row.cells(len(table.header)) for row in table.rows if row.error is None]
    widths = [max(len(cell) for cell in column) for column in zip(table.header, *complete)]

    def line(cells: list[str]) -> str:
        parts = [
            cell.ljust(width) if index < table.label_columns else cell.rjust(width)
            for index, (cell, width) in enumerate(zip(cells, widths))
        ]
        return "  ".join(parts).rstrip()

    def row_line(row: Row) -> str:
        if row.error is None:
            return line(row.cells(len(table.header)))
        labels = [label.ljust(width) for label, width in zip(row.labels, widths)]
        return "  ".join([*labels, row.error])

    rule = "  ".join("-" * width for width in widths)
    body = [table.title, "", line(table.header), rule, *map(row_line, table.rows)]
    if table.notes:
        body += ["", *table.notes]
    return "\n".join(body)


def render_markdown(table: Table) -> str:
    """A bold title, a Markdown table, then the notes as one paragraph."""

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    labels = table.label_columns
    align = ["---"] * labels + ["---:"] * (len(table.header) - labels)
    body = [line(cells) for cells in table.cell_rows()]
    lines = [f"**{table.title}**", "", line(table.header), line(align), *body]
    if table.notes:
        lines += ["", " ".join(table.notes)]
    return "\n".join(lines)


def rst_escape(text: str) -> str:
    """Keep an error message from being read as reST markup."""
    return "".join("\\" + char if char in "\\*`_|[]" else char for char in text)


def render_rst(table: Table, caption: str) -> str:
    """A ``list-table`` directive with a header row; no title, no notes."""
    lines = [f".. list-table:: {rst_escape(caption)}", "   :header-rows: 1", ""]
    for first, *rest in [table.header, *table.cell_rows()]:
        lines.append(f"   * - {rst_escape(first)}")
        lines.extend(f"     - {rst_escape(cell)}" for cell in rest)
    return "\n".join(lines)


def machine_description() -> str:
    flask_version = importlib.metadata.version("flask")
    return (
        f"Measured on {platform.platform()}, {os.cpu_count()} CPUs,"
        f" Python {platform.python_version()}, Flask {flask_version},"
        f" {datetime.date.today().isoformat()}"
    )


# Command line ----------------------------------------------------------------


def progress(message: str) -> None:
    print(f"... {message}", file=sys.stderr, flush=True)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_tasks_argument(parser: argparse.ArgumentParser, default: int) -> None:
    parser.add_argument(
        "--tasks",
        type=positive_int,
        default=default,
        help="no-op tasks per timed run (default: %(default)s)",
    )


def add_rounds_argument(parser: argparse.ArgumentParser, *, one_table: bool = False) -> None:
    shows = "the table shows" if one_table else "the tables show"
    parser.add_argument(
        "--rounds",
        type=positive_int,
        default=5,
        help=f"interleaved rounds; {shows} medians (default: %(default)s)",
    )


def add_output_arguments(parser: argparse.ArgumentParser, *, one_table: bool = False) -> None:
    """``--markdown`` and ``--rst``, for a script that prints one table or
    several."""
    tables = "the table" if one_table else "the tables"
    list_tables = "a reST list-table" if one_table else "reST list-tables"
    parser.add_argument("--markdown", action="store_true", help=f"also print {tables} as Markdown")
    parser.add_argument(
        "--rst",
        metavar="PATH",
        help=f"also write {tables} as {list_tables} to PATH, for the docs",
    )
