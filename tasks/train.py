"""Training stage: fit the rankers (champion and challengers), the retrieval model and the
item-item candidate source on a feature set, then choose each ranker's ``recommend`` ordering."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
from prefect import task

from models.baselines import TUNING_K, Cooccurrence, choose_on, choose_recency_decay, ease
from models.composed import choose_ordering
from models.item_item import ItemItemWeights
from models.ranking import train_ranker
from models.retrieval import train_retriever
from models.training import EpochHook, binary_target, read_columns, read_schema
from recflow.artifacts import (
    Candidate,
    FeatureSet,
    ItemItemSource,
    RankingModel,
    RetrievalModel,
)
from recflow.atomic import atomic_dir
from recflow.config import (
    DataParallelConfig,
    ItemItemConfig,
    OrderingConfig,
    RankingConfig,
    RetrievalConfig,
)
from recflow.vocabulary import ITEM_ID, RANKING, RAW_ITEM_ID, RETRIEVAL, USER_ID
from tasks.data_parallel import train_in_processes
from tasks.features import ServingFeatures, load_workflow, side_workflow

log = logging.getLogger(__name__)


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


def fit_item_item(features: FeatureSet, cfg: ItemItemConfig, model_dir: Path) -> ItemItemSource:
    """EASE on the feature build's interactions (encoded ids), written to ``model_dir``.

    λ is the value of ``cfg.l2_grid`` whose fit on the training split best recalls the
    validation split's positives (recall@10, training items excluded); then, with that fit, the
    history's recency decay of ``cfg.recency_decays`` likewise. That fit is kept for the
    ordering's choice and the gate, which judge on the validation rows; the served fit is
    refitted with λ on both splits and reads histories with the same decay (``ItemItemSource``).
    """
    started = time.perf_counter()
    target = binary_target(read_schema(features.train_dir))
    columns = [USER_ID, ITEM_ID, target]
    train, valid = (
        read_columns(split, columns) for split in (features.train_dir, features.valid_dir)
    )
    # Implicit feedback's other rows are sampled negatives, which nobody picked.
    interactions = "positives" if features.feedback == "implicit" else "rated"
    if interactions == "positives":
        train, valid = train[train[target] == 1], valid[valid[target] == 1]
    positives = valid[valid[target] == 1]
    model, l2, validation = choose_on("ease", train, positives, USER_ID, ITEM_ID, cfg.l2_grid)
    weights = ItemItemWeights.from_dense(model.items, model.weights, cfg.neighbours)
    del model  # dense, up to 400 MB at 10,000 items: one at a time
    weights, by_decay = choose_recency_decay(
        weights, train, positives, USER_ID, ITEM_ID, cfg.recency_decays
    )
    every = pd.concat([train, valid], ignore_index=True)
    model = ease(Cooccurrence.build(every[USER_ID].to_numpy(), every[ITEM_ID].to_numpy()), l2)
    served = ItemItemWeights.from_dense(model.items, model.weights, cfg.neighbours)
    served = replace(served, recency_decay=weights.recency_decay)
    del model
    with atomic_dir(model_dir) as staging:
        source = ItemItemSource(
            path=model_dir,
            features_fingerprint=features.fingerprint,
            interactions=interactions,
            l2=l2,
            neighbours=cfg.neighbours,
            n_items=len(weights.items),
            validation={f"{value:g}": metric for value, metric in validation.items()},
            recency_decay=weights.recency_decay,
            recency_validation={f"{value:g}": metric for value, metric in by_decay.items()},
            fit_seconds=time.perf_counter() - started,
        )
        weights.save(staging / source.weights_file.name)
        served.save(staging / source.served_weights_file.name)
        source.save_manifest(staging)
    log.info(
        "item-item: EASE λ %g, recency decay %g on %d items, validation recall@%d %.4f "
        "(dense EASE as a set: %.4f), fitted in %.1f s",
        source.l2,
        source.recency_decay,
        source.n_items,
        TUNING_K,
        by_decay[source.recency_decay],
        validation[l2],
        source.fit_seconds,
    )
    return source


def choose_recommend_ordering(
    candidate: Candidate, cfg: OrderingConfig, retrieval_candidates: int
) -> Candidate:
    """The candidate with ``recommend``'s ordering measured on validation (over the
    ``retrieval_candidates`` the endpoint ranks) and recorded in its ranking model's manifest
    (the policy the export serves)."""
    features, ranking = candidate.features, candidate.ranking
    # The unseen id's encoded row (the fitted workflow, loaded) is read only to choose new
    # users' weights, and those need an item-item source.
    for_new_users = candidate.item_item is not None and bool(cfg.new_user_histories)
    policy = choose_ordering(
        features.train_dir,
        features.valid_dir,
        item_catalogue(features),
        ranking,
        candidate.retrieval,
        candidate.item_item,
        retrieval_candidates,
        cfg,
        unseen_user=ServingFeatures(features).unseen_row(USER_ID) if for_new_users else None,
    )
    ranking = ranking.model_copy(update={"ordering": policy})
    ranking.save_manifest()
    return candidate._replace(ranking=ranking)


@task(name="train-ranking", task_run_name="train-{cfg.architecture}-{model_dir.parent.name}")
def train_ranking_task(
    features: FeatureSet, cfg: RankingConfig, model_dir: Path, parallel: DataParallelConfig
) -> RankingModel:
    return train_in_processes(parallel, train_ranking, features, cfg, model_dir)


@task(name="train-retrieval", task_run_name="train-{cfg.architecture}-{model_dir.parent.name}")
def train_retrieval_task(
    features: FeatureSet, cfg: RetrievalConfig, model_dir: Path, parallel: DataParallelConfig
) -> RetrievalModel:
    return train_in_processes(parallel, train_retrieval, features, cfg, model_dir)


@task(
    name="choose-ordering",
    task_run_name="choose-ordering-{candidate.ranking.architecture}-{candidate.run_id}",
)
def choose_ordering_task(
    candidate: Candidate, cfg: OrderingConfig, retrieval_candidates: int
) -> Candidate:
    return choose_recommend_ordering(candidate, cfg, retrieval_candidates)


@task(name="fit-item-item", task_run_name="fit-item-item-{model_dir.parent.name}")
def fit_item_item_task(
    features: FeatureSet, cfg: ItemItemConfig, model_dir: Path
) -> ItemItemSource:
    return fit_item_item(features, cfg, model_dir)
