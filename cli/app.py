"""The ``recflow`` command line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli.common import JsonOpt, console, error, print_rows, print_scores, settings_of
from cli.config import config_app
from cli.data import EXIT_INVALID_DATA, data_app
from cli.models import EXIT_TRIAL_FAILED, models_app
from cli.schedule import register as register_schedule
from cli.serve import register as register_serving
from recflow import logs
from recflow.config import Settings, load_settings

# Exit codes: 1 is an error, 2 a command line or settings the CLI refuses (as click does); a
# candidate that fails the gate is an expected outcome, not a crash.
EXIT_USAGE = 2
EXIT_NOT_BLESSED = 3
# cli.models' EXIT_TRIAL_FAILED is 4; cli.data's EXIT_INVALID_DATA is 5.

# Prefect settings recflow needs unless the user chose otherwise. A fresh ephemeral API server
# migrates its database on first start, which takes longer than Prefect's default wait on a
# small machine; telemetry would only time out on an air-gapped one.
PREFECT_DEFAULTS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}
app = typer.Typer(
    name="recflow",
    help="Orchestrated ETL-to-serving workflow for recommender systems.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


def _print_version(asked: bool) -> None:
    if asked:
        from importlib.metadata import version

        console.print(f"recflow {version('recflow')}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    _version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit"
        ),
    ] = False,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="YAML file with settings", exists=True, dir_okay=False),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Override a setting: section.field=value (repeatable)"),
    ] = None,
    home: Annotated[
        Path | None, typer.Option("--home", help="Artifact directory (paths.home)")
    ] = None,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", help="Show every library's logs, not only recflow's and warnings"
        ),
    ] = False,
) -> None:
    # Before any command imports Prefect, Dask or TensorFlow: they read it at import.
    logs.configure(verbose)
    for name, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(name, value)
    pairs = list(overrides or [])
    if home is not None:
        pairs.append(f"paths.home={home}")
    ctx.meta["overrides"] = pairs  # for `recflow config show`, which reports where values came from
    try:
        ctx.obj = load_settings(config, pairs)
    except ValueError as problem:  # pydantic's ValidationError included
        error(f"invalid settings: {problem}")
        raise typer.Exit(EXIT_USAGE) from problem


@app.command()
def run(
    ctx: typer.Context,
    force: Annotated[
        bool, typer.Option("--force", help="Rebuild the features even if a cached build matches")
    ] = False,
) -> None:
    """Run the pipeline once: download, features, train, gate, publish."""
    _run_pipeline(settings_of(ctx), force)


@app.command()
def tune(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Search hyperparameters (the ``tuning`` settings): an Optuna study stored in the home,
    resumed by a second call, one Prefect task per trial; prints every trial of the study."""
    from flows.tune import trials_table
    from flows.tune import tune as tune_flow
    from recflow.locks import LockTimeout
    from tasks.custom import CustomSourceError
    from tasks.data_checks import DataValidationError

    try:
        result = tune_flow(settings_of(ctx))
    except (DataValidationError, CustomSourceError) as failure:
        error(str(failure))
        raise typer.Exit(EXIT_INVALID_DATA) from failure
    except LockTimeout as busy:
        error(f"another search of this study is running: {busy}")
        raise typer.Exit(1) from busy
    best = "no trial completed" if result.best is None else f"best trial {result.best.number}"
    print_rows(f"Study {result.study} by {result.metric}: {best}", trials_table(result), as_json)


@app.command()
def demo(
    ctx: typer.Context,
    user: Annotated[
        int | None, typer.Option(help="User to recommend for; default the most active one")
    ] = None,
    k: Annotated[int, typer.Option("-k", min=1, help="How many items")] = 10,
) -> None:
    """The whole product in one go: run the pipeline, serve it on Triton, recommend over gRPC."""
    from cli.demo import most_active_user
    from recflow_client import RecflowClient
    from serving.server import TritonServer

    settings = settings_of(ctx)
    result = _run_pipeline(settings)
    user = most_active_user(result.raw) if user is None else user
    with TritonServer.from_settings(settings, None) as server:
        console.print(f"Triton ready on {server.grpc_url} (log: {server.log_file})")
        with RecflowClient.from_config(server.config) as client:
            top = client.recommend(user, k=k)
        console.print(
            f"Top {k} for user {user} (retrieval, then ranking; rated items left out), "
            "served by Triton over gRPC:"
        )
        print_scores(f"user {user}", top)
    console.print(
        "Triton stopped. Serve the models again and query them with:\n"
        f"  recflow --home {settings.paths.home} serve\n"
        f"  recflow --home {settings.paths.home} recommend --user {user} -k {k}"
    )


def _run_pipeline(settings: Settings, force: bool = False):
    from flows.pipeline import pipeline
    from recflow.locks import LockTimeout
    from recflow.registry import RegistryError
    from release.gate import GateFailed
    from release.trial import TrialServingFailed
    from tasks.custom import CustomSourceError
    from tasks.data_checks import DataValidationError

    try:
        result = pipeline(settings, force)
    except (DataValidationError, CustomSourceError) as failure:
        error(str(failure))
        raise typer.Exit(EXIT_INVALID_DATA) from failure
    except GateFailed as failure:
        error(str(failure))
        raise typer.Exit(EXIT_NOT_BLESSED) from failure
    except TrialServingFailed as failure:
        error(str(failure))
        raise typer.Exit(EXIT_TRIAL_FAILED) from failure
    except (RegistryError, LockTimeout) as refusal:
        # E.g. the second of two concurrent runs: another candidate was published meanwhile.
        error(f"{type(refusal).__name__}: {refusal}")
        raise typer.Exit(1) from refusal
    table = Table(title=f"Pipeline run {result.run_id} ({result.variant})")
    for column in ("metric", "model", "baseline"):
        table.add_column(column)
    for name, value in result.metrics.items():
        baseline = result.baseline_metrics.get(name)
        table.add_row(name, f"{value:.4f}", "" if baseline is None else f"{baseline:.4f}")
    console.print(table)
    console.print(f"Published version {result.version} to {result.triton_repo}")
    return result


register_serving(app)
register_schedule(app)
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")
app.add_typer(config_app, name="config")
