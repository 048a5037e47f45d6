"""The end-to-end pipeline: download -> features -> train -> gate -> export."""

from __future__ import annotations

import secrets
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow
from pydantic import BaseModel

from recflow.artifacts import RawDataset
from recflow.config import Settings, load_settings
from tasks.download import fetch_dataset_task
from tasks.export import export_task
from tasks.features import build_features_task
from tasks.gate import gate_task
from tasks.train import train_ranking_task


class PipelineResult(BaseModel):
    run_id: str
    variant: str
    raw: RawDataset
    features: Path
    model: Path
    triton_repo: Path
    version: int
    metrics: dict[str, float]
    baseline_metrics: dict[str, float]


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + secrets.token_hex(3)


@flow(name="recflow-pipeline", flow_run_name="pipeline-{settings.data.variant}")
def pipeline(settings: Settings | None = None) -> PipelineResult:
    settings = settings or load_settings()
    run_id = new_run_id()
    raw = fetch_dataset_task(settings.data, settings.paths)
    features = build_features_task(raw, settings)
    ranking = train_ranking_task(features, settings, run_id)
    gate_task(ranking, settings.gate)
    version = export_task(features, ranking, settings)
    return PipelineResult(
        run_id=run_id,
        variant=raw.variant,
        raw=raw,
        features=features.path,
        model=ranking.path,
        triton_repo=settings.paths.triton_repo,
        version=version,
        metrics=ranking.metrics,
        baseline_metrics=ranking.baseline_metrics,
    )
