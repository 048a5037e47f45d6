"""What every ``recflow`` sub-command shares: the settings, the console, result tables."""

from __future__ import annotations

from collections.abc import Sequence

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from recflow.config import Settings

console = Console()


def error(message: str) -> None:
    """One red line of ``message`` as written: rich would read ``[...]`` in it as markup and drop
    it (a refused pattern such as ``^[A-Za-z0-9_-]{0,40}$`` printed as ``^{0,40}$``)."""
    console.print(escape(message), style="red")


def settings_of(ctx: typer.Context) -> Settings:
    """The settings the top-level callback built from --config, --set, env and defaults."""
    return ctx.find_root().obj


def print_scores(title: str, rows: Sequence[tuple[int, float]]) -> None:
    table = Table(title=title)
    table.add_column("rank", justify="right")
    table.add_column("item_id", justify="right")
    table.add_column("score", justify="right")
    for rank, (item_id, item_score) in enumerate(rows, start=1):
        table.add_row(str(rank), str(item_id), f"{item_score:.4f}")
    console.print(table)
