"""Training stage: fit the rankers (champion and challengers) and the retrieval model on a
feature set, then choose each ranker's ``recommend`` ordering."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import task

from models.composed import choose_ordering
from models.ranking import train_ranker
from models.retrieval import train_retriever
from models.training import EpochHook
from recflow.artifacts import Candidate, FeatureSet, RankingModel, RetrievalModel
from recflow.config import OrderingConfig, RankingConfig, RetrievalConfig
from recflow.vocabulary import ITEM_ID, RANKING, RAW_ITEM_ID, RETRIEVAL
from tasks.features import load_workflow, side_workflow


def item_catalogue(features: FeatureSet) -> pd.DataFrame:
    """Every item of the dataset, as the item tower sees it: ``raw_item_id`` + encoded columns.

    The items come from the lookup table serving uses, run through the fitted workflow's item
    branch, so items never rated in training are in the catalogue too (as cold items).
    """
    items = pd.read_parquet(features.lookup_dir / "items.parquet")
    workflow = side_workflow(load_workflow(features.workflow_dir), "item")
    encoded = workflow.transform(items[workflow.input_schema.column_names])
    encoded.insert(0, RAW_ITEM_ID, items[ITEM_ID].to_numpy())
    return encoded.reset_index(drop=True)


def train_ranking(
    features: FeatureSet, cfg: RankingConfig, model_dir: Path, on_epoch: EpochHook | None = None
) -> RankingModel:
    """Train a ranker of ``cfg.architecture`` into ``model_dir``; ``on_epoch`` sees each
    epoch's validation metrics (the tuning flow prunes through it)."""
    return train_ranker(
        features.train_dir,
        features.valid_dir,
        cfg,
        model_dir,
        features.fingerprint,
        on_epoch=on_epoch,
    )


def train_retrieval(
    features: FeatureSet,
    cfg: RetrievalConfig,
    model_dir: Path,
    on_epoch: EpochHook | None = None,
) -> RetrievalModel:
    if features.feedback == "implicit":
        # Its "rated" pairs include the sampled negatives, which nobody picked: the towers learn
        # from the interactions, and in implicit feedback those are the positives.
        cfg = cfg.model_copy(update={"interactions": "positives"})
    return train_retriever(
        features.train_dir,
        features.valid_dir,
        item_catalogue(features),
        cfg,
        model_dir,
        features.fingerprint,
        on_epoch=on_epoch,
    )


# What the pipeline trains and the tuning flow searches, by model kind (``tuning.model``).
TRAINERS = {RANKING: train_ranking, RETRIEVAL: train_retrieval}


def choose_recommend_ordering(
    candidate: Candidate, cfg: OrderingConfig, retrieval_candidates: int
) -> Candidate:
    """The candidate with ``recommend``'s ordering measured on validation (over the
    ``retrieval_candidates`` the endpoint ranks) and recorded in its ranking model's manifest
    (the policy the export serves)."""
    features, ranking, retrieval, run_id = candidate
    policy = choose_ordering(
        features.train_dir,
        features.valid_dir,
        item_catalogue(features),
        ranking,
        retrieval,
        retrieval_candidates,
        cfg,
    )
    ranking = ranking.model_copy(update={"ordering": policy})
    ranking.save_manifest()
    return Candidate(features, ranking, retrieval, run_id)


@task(name="train-ranking", task_run_name="train-{cfg.architecture}-{model_dir.parent.name}")
def train_ranking_task(features: FeatureSet, cfg: RankingConfig, model_dir: Path) -> RankingModel:
    return train_ranking(features, cfg, model_dir)


@task(name="train-retrieval", task_run_name="train-{cfg.architecture}-{model_dir.parent.name}")
def train_retrieval_task(
    features: FeatureSet, cfg: RetrievalConfig, model_dir: Path
) -> RetrievalModel:
    return train_retrieval(features, cfg, model_dir)


@task(
    name="choose-ordering",
    task_run_name="choose-ordering-{candidate.ranking.architecture}-{candidate.run_id}",
)
def choose_ordering_task(
    candidate: Candidate, cfg: OrderingConfig, retrieval_candidates: int
) -> Candidate:
    return choose_recommend_ordering(candidate, cfg, retrieval_candidates)
