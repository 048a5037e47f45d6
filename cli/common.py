"""What every ``recflow`` sub-command shares: the settings, the console, result tables."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from recflow.config import Settings

console = Console()
if not console.is_terminal:
    # Piped or redirected, rich would fit every table into 80 columns and cut ids to "20261…":
    # a file or a script gets whole lines instead.
    console = Console(width=10_000)

JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print the rows as JSON objects instead of a table")
]


def error(message: str) -> None:
    """One red line of ``message`` as written: rich would read ``[...]`` in it as markup and drop
    it (a refused pattern such as ``^[A-Za-z0-9_-]{0,40}$`` printed as ``^{0,40}$``)."""
    console.print(escape(message), style="red")


def settings_of(ctx: typer.Context) -> Settings:
    """The settings the top-level callback built from --config, --set, env and defaults."""
    return ctx.find_root().obj


def cell(value: Any) -> str:
    """A table cell: metrics to four decimals, nothing for None, anything else as written."""
    if value is None:
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def print_rows(
    title: str | None,
    rows: Sequence[dict[str, Any]],
    as_json: bool,
    columns: Sequence[str] = (),
    right: Sequence[str] = (),
) -> None:
    """``rows`` as a table (its columns: ``columns``, or every key of the rows in order; those in
    ``right`` right-justified), or as a JSON list of the same objects, values unformatted, for
    scripts."""
    if as_json:
        typer.echo(json.dumps(list(rows), indent=2, default=str))
        return
    columns = columns or list(dict.fromkeys(name for row in rows for name in row))
    table = Table(title=title)
    for name in columns:
        table.add_column(name, justify="right" if name in right else "left")
    for row in rows:
        table.add_row(*(cell(row.get(name)) for name in columns))
    console.print(table)


def print_scores(title: str, rows: Sequence[tuple[Any, float]], as_json: bool = False) -> None:
    ranked = [
        {"rank": rank, "item_id": item_id, "score": score}
        for rank, (item_id, score) in enumerate(rows, start=1)
    ]
    columns = ("rank", "item_id", "score")
    print_rows(title, ranked, as_json, columns, right=columns)
