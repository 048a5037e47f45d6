"""``recflow models``: the registry's candidates, and promoting or rolling back what Triton serves.

Mounted on the main app as ``app.add_typer(models_app, name="models")``. Listing and showing
read the registry only (no TensorFlow import), so they answer at once; promote and rollback
import the release stage (Prefect, serving) inside their commands.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from cli.common import JsonOpt, console, error, print_rows, settings_of
from recflow.registry import (
    CandidateRecord,
    Event,
    Registry,
    RegistryError,
    check_id,
)
from recflow.vocabulary import RECOMMEND, RETRIEVAL, MetricKey

# cli.app's EXIT_NOT_BLESSED is 3; a candidate that trial serving blocked exits with 4.
EXIT_TRIAL_FAILED = 4
# The metrics `models list` shows for each candidate.
HEADLINE_METRICS = ("ranking.auc", "retrieval.recall@10", "recommend.recall@10")
TIME = "%Y-%m-%d %H:%M:%S"

models_app = typer.Typer(
    help="Candidate models in the registry: list, show, promote, roll back.",
    no_args_is_help=True,
)


def _candidate_id(value: str | None) -> str | None:
    try:
        return value if value is None else check_id(value)
    except ValueError as invalid:
        raise typer.BadParameter(str(invalid)) from invalid


def _reason(value: str) -> str:
    if not value.strip():
        raise typer.BadParameter("say why: the reason is recorded with the change")
    return value.strip()


CandidateArg = Annotated[str, typer.Argument(help="Candidate id", callback=_candidate_id)]
ReasonOpt = Annotated[
    str, typer.Option("--reason", "-r", help="Why (recorded in the history)", callback=_reason)
]


def _registry(ctx: typer.Context) -> Registry:
    return Registry.from_settings(settings_of(ctx))


def _metric(metrics: dict[str, float], name: str) -> str:
    return f"{metrics[name]:.4f}" if name in metrics else ""


@models_app.command("list")
def list_candidates(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Every candidate, oldest first; the one Triton serves is marked."""
    registry = _registry(ctx)
    state = registry.state()
    rows = []
    for record in registry.records():
        trial = None if record.trial is None else ("passed" if record.trial.passed else "FAILED")
        metrics = record.evaluation.metrics
        rows.append(
            {
                "id": record.id,
                "created": record.created.strftime(TIME),
                "ranker": record.ranking_architecture,
                "decision": record.status,
                "trial": trial,
                **{name: metrics.get(name) for name in HEADLINE_METRICS},
                "compared with": record.decision.compared_with,
                "serving": f"version {state.version}" if record.id == state.serving else None,
            }
        )
    columns = ("id", "created", "ranker", "decision", "trial", *HEADLINE_METRICS)
    columns += ("compared with", "serving")
    print_rows(f"Candidates in {registry.root}", rows, as_json, columns)


@models_app.command()
def show(
    ctx: typer.Context,
    candidate_id: CandidateArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw record")] = False,
) -> None:
    """A candidate's lineage, metrics, gate checks, trial serving and publications."""
    record = _load(_registry(ctx), candidate_id)
    if as_json:
        typer.echo(record.model_dump_json(indent=2))
        return
    _print_record(record)


@models_app.command("promote")
def promote_command(ctx: typer.Context, candidate_id: CandidateArg, reason: ReasonOpt) -> None:
    """Publish a blessed candidate as a new Triton version, after trial serving it."""
    settings = settings_of(ctx)
    from release.publish import promote

    _report(
        lambda: promote(Registry.from_settings(settings), candidate_id, settings.release, reason)
    )


@models_app.command("rollback")
def rollback_command(
    ctx: typer.Context,
    reason: ReasonOpt,
    to: Annotated[
        str | None,
        typer.Option(
            help="Candidate to serve; default the one before the current", callback=_candidate_id
        ),
    ] = None,
) -> None:
    """Serve the previous candidate again, as a new Triton version."""
    settings = settings_of(ctx)
    from release.publish import rollback

    _report(lambda: rollback(Registry.from_settings(settings), settings.release, reason, to))


def _load(registry: Registry, candidate_id: str) -> CandidateRecord:
    try:
        return registry.load(candidate_id)
    except RegistryError as refusal:
        error(str(refusal))
        raise typer.Exit(1) from refusal


def _report(change) -> Event:
    from release.trial import TrialServingFailed

    try:
        event = change()
    except TrialServingFailed as failure:
        error(str(failure))
        raise typer.Exit(EXIT_TRIAL_FAILED) from failure
    except RegistryError as refusal:
        error(str(refusal))
        raise typer.Exit(1) from refusal
    console.print(
        f"{event.action}: candidate {event.candidate} serves as version {event.version} "
        f"(was {event.previous or 'nothing'}); reason: {event.reason}"
    )
    return event


def _print_record(record: CandidateRecord) -> None:
    lineage = record.lineage
    console.print(
        f"[bold]{record.id}[/]: {record.ranking_architecture} ranker, {record.status}, "
        f"created {record.created:{TIME}}"
    )
    console.print(
        f"data {lineage.variant} ({lineage.data_checksum[:12]}), features "
        f"{lineage.features_fingerprint}, workflow {lineage.workflow_sha256[:12]}, schema "
        f"{lineage.schema_sha256[:12]}, code {lineage.code_version}"
    )
    for kind, path in {"features": record.features, **record.models}.items():
        console.print(f"{kind}: {path}")

    evaluation = record.evaluation
    metrics = Table(title=f"Metrics on {evaluation.rows} held-out rows")
    for column in (
        "metric",
        "candidate",
        f"blessed {evaluation.compared_with or '-'}",
        "baseline",
        *evaluation.baselines,
        "at training",
    ):
        metrics.add_column(column)
    baselines = evaluation.baselines.values()
    for name in evaluation.metrics:
        # The item-item baselines are lists: beside recommend's and retrieval's metrics.
        key = MetricKey.parse(name)
        lists = key.kind in (RECOMMEND, RETRIEVAL)
        strong = [_metric(scored, key.name) if lists else "" for scored in baselines]
        metrics.add_row(
            name,
            _metric(evaluation.metrics, name),
            _metric(evaluation.blessed_metrics, name),
            _metric(evaluation.baseline_metrics, name),
            *strong,
            _metric(record.training_metrics, name),
        )
    console.print(metrics)

    checks = Table(title=f"Gate: {record.status}")
    for column in ("metric", "check", "value", "bound", "result"):
        checks.add_column(column)
    for check in record.decision.checks:
        source = f"{check.kind}: {check.reference}" if check.reference else check.kind
        result = "pass" if check.passed else "[red]FAIL[/]"
        checks.add_row(
            check.metric, source, f"{check.value:.4f}", f"{check.op} {check.bound:.4f}", result
        )
    console.print(checks)
    for note in record.decision.notes:
        console.print(f"note: {note}")
    if record.contest and len(record.contest.contenders) > 1:
        contest = record.contest
        others = ", ".join(c for c in contest.contenders if c != record.id)
        chosen = contest.chosen or "none (no contender blessed)"
        console.print(
            f"champion and challengers: judged with {others}; chosen by {contest.prefer}: {chosen}"
        )

    trial = record.trial
    if trial is None:
        console.print("trial serving: not run")
    else:
        verdict = "passed" if trial.passed else "FAILED"
        console.print(f"trial serving {verdict} at {trial.at:{TIME}}: {trial.message}")
    for event in record.events:
        was = event.previous or "nothing"
        console.print(
            f"{event.at:{TIME}} {event.action} as version {event.version} (was {was}): "
            f"{event.reason}"
        )
