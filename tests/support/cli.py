"""The ``recflow models`` commands invoked in-process under given settings."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from cli.models import models_app
from recflow.config import Settings


def cli_for(settings: Settings):
    """Invoke `models ...` under a root app whose settings are ``settings``."""
    root = typer.Typer()

    @root.callback()
    def main(ctx: typer.Context) -> None:
        ctx.obj = settings

    root.add_typer(models_app, name="models")
    # Wide enough that rich does not wrap candidate ids in table cells.
    runner = CliRunner(env={"COLUMNS": "200"})
    return lambda *args: runner.invoke(root, ["models", *args])
