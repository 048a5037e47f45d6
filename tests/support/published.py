"""One small trained and exported model set, shared by the serving and reliability tests.

Building features and training both models costs about a minute on 2 cores, so the whole test
session builds them once (the ``published`` fixture in tests/conftest.py). Tests that change
what is served export a new version and load it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from recflow.artifacts import (
    Candidate,
    ExportedCandidate,
    FeatureSet,
    ItemItemSource,
    OrderingPolicy,
    RankingModel,
    RawDataset,
    RetrievalModel,
)
from recflow.compute import dataset_cpu_flag, open_cluster
from recflow.config import Settings
from recflow.registry import Registry
from serving.repository import export_candidate, install
from tasks.download import fetch_dataset
from tasks.features import build_features
from tasks.train import fit_item_item, train_ranking, train_retrieval
from tests.support.settings import small_settings

# One epoch: these tests check serving, not model quality. Smaller data than conftest's gave
# a two-tower model whose query embeddings were NaN for some users.
TINY = [
    "ranking.epochs=1",
    "retrieval.epochs=1",
    "serving.grpc_port=0",
    "serving.http_port=0",
    "serving.metrics_port=0",
    "serving.retrieval_candidates=30",
    "serving.max_k=500",
    "serving.startup_timeout_s=300",
    "serving.request_timeout_s=120",
]


# The candidate id the exports name (what the gate would assign).
CANDIDATE = "20250101T000000Z-5e55ed"


@dataclass
class Published:
    settings: Settings
    raw: RawDataset
    features: FeatureSet
    ranking: RankingModel
    retrieval: RetrievalModel
    item_item: ItemItemSource

    def exported(self, target: Path | None = None) -> ExportedCandidate:
        """The candidate exported as a gate does (into the registry, or ``target``)."""
        settings = self.settings
        candidate = Candidate(
            self.features, self.ranking, self.retrieval, CANDIDATE, self.item_item
        )
        return export_candidate(
            CANDIDATE,
            candidate,
            pd.read_parquet(self.raw.interactions),
            settings.serving,
            target or Registry.from_settings(settings).exported_dir(CANDIDATE),
        )

    def export(self) -> int:
        """Export the candidate and install it as the repository's next version, as a gate and
        publish would."""
        return install(self.exported(), self.settings.paths.triton_repo, self.settings.serving)

    def newest_version_dir(self, model: str) -> Path:
        """The newest exported version of ``model``: earlier tests may have published more."""
        directory = self.settings.paths.triton_repo / model
        return max((p for p in directory.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))

    def seen(self, user: int) -> set[int]:
        inter = pd.read_parquet(self.raw.interactions)
        return set(inter.loc[inter["user_id"] == user, "item_id"])


def publish_small(home: Path) -> Published:
    """Features, a ranking and a retrieval model (one epoch each), exported as version 1."""
    settings = small_settings(home, *TINY)
    raw = fetch_dataset(settings.data, settings.paths)
    with open_cluster(settings.compute) as (_client, device):
        features = build_features(
            raw, settings.features, settings.paths.features_dir, cpu=dataset_cpu_flag(device)
        )
    run_dir = settings.paths.models_dir / CANDIDATE
    ranking = train_ranking(features, settings.ranking, run_dir / "ranking")
    # A blend, so that the served recommend lists depend on all three models' scores.
    policy = OrderingPolicy(ranker_weight=0.4, item_item_weight=0.3)
    ranking = ranking.model_copy(update={"ordering": policy})
    retrieval = train_retrieval(features, settings.retrieval, run_dir / "retrieval")
    item_item = fit_item_item(features, settings.item_item, run_dir / "item_item")
    result = Published(settings, raw, features, ranking, retrieval, item_item)
    assert result.export() == 1
    return result
