"""Export stage: publish a blessed model as a new version of the Triton repository."""

from __future__ import annotations

from prefect import task

from models.dlrm import RankingModel
from recflow.config import Settings
from serving.repository import export_ranking
from tasks.features import FeatureSet


@task(name="export-triton")
def export_task(features: FeatureSet, ranking: RankingModel, settings: Settings) -> int:
    return export_ranking(features, ranking, settings.paths.triton_repo, settings.serving)
