"""The end-to-end pipeline: fetch data -> build features -> train -> evaluate and publish."""

from pathlib import Path

from prefect import flow
from pydantic import BaseModel

from flows import reporting
from flows.stages import (
    as_settings,
    build_features,
    evaluate_and_publish,
    fetch_data,
    new_run_id,
    run_name,
    train_models,
)
from recflow import logs
from recflow.artifacts import RawDataset
from recflow.config import Settings


class PipelineResult(BaseModel):
    run_id: str
    variant: str
    raw: RawDataset
    # The published candidate's registry id: the run id, or ``<run id>-<architecture>`` when
    # a challenger won (ranking.challengers).
    candidate: str
    features: Path
    # The run's models directory: ranking/, a ranking-<architecture>/ per challenger, retrieval/.
    models: Path
    triton_repo: Path
    version: int
    metrics: dict[str, float]
    baseline_metrics: dict[str, float]


@flow(name="recflow-pipeline", flow_run_name=run_name("pipeline-{settings.data.variant}"))
def pipeline(settings: Settings | None = None, force: bool = False) -> PipelineResult:
    """Run every stage; ``force`` rebuilds the features instead of reusing cached ones.

    The pictures the stages drew are shown on this run's page, also when a stage failed.
    """
    # Again here: a deployment runs this flow in a process of its own, which inherits the
    # environment the CLI set but not its logger levels.
    logs.set_levels(logs.verbose_requested())
    settings = as_settings(settings)
    run_id = new_run_id()
    try:
        raw = fetch_data(settings)
        features = build_features(settings, raw, force, run_id)
        contenders = train_models(settings, features, run_id)
        published = evaluate_and_publish(contenders, settings, raw)
    finally:
        reporting.report_pictures(settings.paths.runs_dir / run_id)
    return PipelineResult(
        run_id=run_id,
        variant=raw.variant,
        raw=raw,
        candidate=published.candidate,
        features=features.path,
        models=settings.paths.models_dir / run_id,
        triton_repo=published.repository,
        version=published.version,
        metrics=published.metrics,
        baseline_metrics=published.baseline_metrics,
    )
