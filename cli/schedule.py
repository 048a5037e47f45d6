"""``recflow schedule``: serve the pipeline as a Prefect deployment with a cron schedule.

The process creates (or updates) the deployment ``recflow-pipeline/<schedule.deployment>`` on
the Prefect API in ``PREFECT_API_URL``, then runs each of its flow runs, scheduled or triggered
from the dashboard, as a subprocess until Ctrl-C or SIGTERM (which pauses the schedule). The
deployment's parameters are the settings this command was given, so a run uses exactly them.
"""

from __future__ import annotations

from typing import Annotated

import typer

from cli.common import console, settings_of

# Two runs of the deployment never overlap: a run that overruns the interval delays the next
# one (ENQUEUE, Prefect's default) rather than racing it to publish.
MAX_CONCURRENT_RUNS = 1


def register(app: typer.Typer) -> None:
    """Add the ``schedule`` command to the ``recflow`` app."""
    app.command("schedule")(schedule)


def schedule(
    ctx: typer.Context,
    cron: Annotated[
        str | None, typer.Option(help="Cron expression; default schedule.cron (daily 03:00)")
    ] = None,
    timezone: Annotated[str | None, typer.Option(help="Default schedule.timezone")] = None,
) -> None:
    """Serve the pipeline on a cron schedule (a Prefect deployment) until stopped."""
    from prefect.schedules import Cron

    from flows.pipeline import pipeline

    settings = settings_of(ctx)
    cfg = settings.schedule
    cron, timezone = cron or cfg.cron, timezone or cfg.timezone
    console.print(
        f"Serving deployment {pipeline.name}/{cfg.deployment} on '{cron}' ({timezone}); "
        "runs and their artifacts appear in the Prefect dashboard. Ctrl-C stops."
    )
    pipeline.serve(
        name=cfg.deployment,
        schedules=[Cron(cron, timezone=timezone)],
        parameters={"settings": settings.model_dump(mode="json"), "force": False},
        global_limit=MAX_CONCURRENT_RUNS,
        tags=["recflow"],
        description="Download, features, training, evaluation gate and publication to Triton.",
    )
