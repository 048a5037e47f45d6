"""``recflow config``: the settings a command would run with, and where each value came from."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from cli.common import console, settings_of
from recflow.config import flat_settings, setting_sources

config_app = typer.Typer(
    name="config", help="Inspect the effective settings.", no_args_is_help=True
)


@config_app.command("show")
def show(ctx: typer.Context) -> None:
    """Every setting's effective value and its source: default, yaml, env or --set."""
    settings = settings_of(ctx)
    sources = setting_sources(settings, ctx.find_root().meta["overrides"])
    table = Table("setting", "value", "source")
    for name, value in flat_settings(settings.model_dump(mode="json")).items():
        table.add_row(name, json.dumps(value), sources[name])
    console.print(table)
