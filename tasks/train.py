"""Training stage: fit the ranking model on a feature set."""

from __future__ import annotations

from prefect import task

from models.dlrm import RankingModel, train_dlrm
from recflow.config import Settings
from tasks.features import FeatureSet


@task(name="train-ranking", task_run_name="train-dlrm-{features.fingerprint}")
def train_ranking_task(features: FeatureSet, settings: Settings, run_id: str) -> RankingModel:
    return train_dlrm(
        features.train_dir,
        features.valid_dir,
        settings.ranking,
        settings.paths.models_dir / run_id / "ranking",
        features.fingerprint,
    )
