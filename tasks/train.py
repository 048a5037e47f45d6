"""Training stage: fit the rankers (champion and challengers) and the retrieval model on a
feature set, then choose each ranker's ``recommend`` ordering."""

from __future__ import annotations

import pandas as pd
from prefect import task

from models.composed import choose_ordering
from models.ranking import train_ranker
from models.retrieval import train_retriever
from recflow.artifacts import Candidate, FeatureSet, RankingModel, RetrievalModel
from recflow.config import RankingConfig, Settings
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
    features: FeatureSet, settings: Settings, run_id: str, cfg: RankingConfig | None = None
) -> RankingModel:
    """Train one of ``settings.ranking.contenders`` (default the champion) into
    ``models/<run_id>/ranking/``, a challenger into ``models/<run_id>/ranking-<architecture>/``."""
    cfg = cfg or settings.ranking.contenders[0]
    champion = cfg.architecture == settings.ranking.architecture
    name = RANKING if champion else f"{RANKING}-{cfg.architecture}"
    return train_ranker(
        features.train_dir,
        features.valid_dir,
        cfg,
        settings.paths.models_dir / run_id / name,
        features.fingerprint,
    )


def train_retrieval(features: FeatureSet, settings: Settings, run_id: str) -> RetrievalModel:
    cfg = settings.retrieval
    if features.feedback == "implicit":
        # Its "rated" pairs include the sampled negatives, which nobody picked: the towers learn
        # from the interactions, and in implicit feedback those are the positives.
        cfg = cfg.model_copy(update={"interactions": "positives"})
    return train_retriever(
        features.train_dir,
        features.valid_dir,
        item_catalogue(features),
        cfg,
        settings.paths.models_dir / run_id / RETRIEVAL,
        features.fingerprint,
    )


def choose_recommend_ordering(candidate: Candidate, settings: Settings) -> Candidate:
    """The candidate with ``recommend``'s ordering measured on validation and recorded in its
    ranking model's manifest (the policy the export serves)."""
    features, ranking, retrieval = candidate
    policy = choose_ordering(
        features.train_dir,
        features.valid_dir,
        item_catalogue(features),
        ranking,
        retrieval,
        settings.serving.retrieval_candidates,
        settings.ordering,
    )
    ranking = ranking.model_copy(update={"ordering": policy})
    ranking.save_manifest()
    return Candidate(features, ranking, retrieval)


@task(name="train-ranking", task_run_name="train-{cfg.architecture}-{run_id}")
def train_ranking_task(
    features: FeatureSet, settings: Settings, run_id: str, cfg: RankingConfig
) -> RankingModel:
    return train_ranking(features, settings, run_id, cfg)


@task(name="train-retrieval", task_run_name="train-{settings.retrieval.architecture}-{run_id}")
def train_retrieval_task(features: FeatureSet, settings: Settings, run_id: str) -> RetrievalModel:
    return train_retrieval(features, settings, run_id)


@task(
    name="choose-ordering",
    task_run_name="choose-ordering-{candidate.ranking.architecture}-{candidate.run_id}",
)
def choose_ordering_task(candidate: Candidate, settings: Settings) -> Candidate:
    return choose_recommend_ordering(candidate, settings)
