"""``recflow config``: the settings a command would run with, and where each value came from."""

from __future__ import annotations

import json

import typer

from cli.common import JsonOpt, print_rows, settings_of
from recflow.config import flat_settings, setting_sources

config_app = typer.Typer(
    name="config", help="Inspect the effective settings.", no_args_is_help=True
)


@config_app.command("show")
def show(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Every setting's effective value and its source: default, yaml, env or --set."""
    settings = settings_of(ctx)
    sources = setting_sources(settings, ctx.find_root().meta["overrides"])
    rows = [
        {"setting": name, "value": value, "source": sources[name]}
        for name, value in flat_settings(settings.model_dump(mode="json")).items()
    ]
    if not as_json:  # the table shows each value as YAML and --set take it (JSON)
        rows = [{**row, "value": json.dumps(row["value"])} for row in rows]
    print_rows(None, rows, as_json)
