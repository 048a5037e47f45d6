"""Choosing ``recommend``'s final ordering on the validation split, after both models trained.

``recommend`` retrieves each user's ``n_candidates`` best unseen items with the two-tower model
and orders them by ``models.ordering.final_scores``. This module rebuilds exactly those lists for
the validation users, in encoded ids: every catalogue item a user did not interact with in
training is a candidate, the retrieval model's top ``n_candidates`` are kept, the ranker scores
each of them from the user's and the item's feature columns, and every ranker weight of the grid
is scored by recall/ndcg/mrr@k of the composed top k (models/metrics.py), the user's validation
positives relevant. The best weight is the policy; every weight's value is kept with it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from merlin.schema import Tags

from models.architectures import ranker_inputs
from models.evaluation import USER_BATCH, RetrievalTask
from models.metrics import padded, per_user_top_k_metrics, top_k
from models.ordering import final_order
from models.predict import predict_frame
from models.ranking import load_model
from models.retrieval import QueryEncoder
from models.training import binary_target, read_columns, read_schema, side_columns
from recflow.artifacts import OrderingPolicy, RankingModel, RetrievalModel
from recflow.config import OrderingConfig
from recflow.vocabulary import EMBEDDING

log = logging.getLogger(__name__)


def choose_ordering(
    train_dir: Path,
    valid_dir: Path,
    catalogue: pd.DataFrame,
    ranking: RankingModel,
    retrieval: RetrievalModel,
    n_candidates: int,
    cfg: OrderingConfig,
) -> OrderingPolicy:
    """The ranker weight of ``cfg.ranker_weights`` whose composed lists score the best
    ``cfg.monitor`` on the validation split (ties: the earlier weight)."""
    k = int(cfg.monitor.partition("@")[2])
    if k > n_candidates:
        raise ValueError(f"ordering.monitor {cfg.monitor} asks for more than {n_candidates} items")
    full = read_schema(train_dir)
    target = binary_target(full)
    user_cols, item_cols = side_columns(full, Tags.USER), side_columns(full, Tags.ITEM)
    user_id = full.select_by_tag(Tags.USER_ID).first.name
    item_id = full.select_by_tag(Tags.ITEM_ID).first.name
    train = read_columns(train_dir, [user_id, item_id])
    valid = read_columns(valid_dir, [*user_cols, item_id, target])
    candidates = catalogue.drop_duplicates(item_id).sort_values(item_id, ignore_index=True)
    task = RetrievalTask.build(
        train, valid[valid[target] == 1], candidates[item_id].to_numpy(), user_id, item_id
    )
    queries = valid.drop_duplicates(user_id).set_index(user_id).loc[task.users].reset_index()
    # Every raw item with one encoded id has the same embedding: keep one per encoded id.
    embeddings = pd.read_parquet(retrieval.item_embeddings).drop_duplicates(item_id)
    vectors = np.stack(embeddings.set_index(item_id).loc[candidates[item_id], EMBEDDING]).astype(
        np.float32
    )
    queries_of = QueryEncoder.load(retrieval)
    ranker = load_model(ranking.model_dir)
    ranker_schema = ranker_inputs(full, ranking.architecture)
    item_rows = candidates[item_cols]

    per_weight: dict[float, list[np.ndarray]] = {w: [] for w in cfg.ranker_weights}
    for start in range(0, len(task.users), USER_BATCH):
        rows = slice(start, start + USER_BATCH)
        users = queries.iloc[rows].reset_index(drop=True)
        scores = queries_of.encode(users) @ vectors.T
        positions, retrieval_scores = top_k(scores, n_candidates, task.seen_mask(rows))
        repeated = np.repeat(np.arange(len(users)), positions.shape[1])
        pairs = pd.concat(
            [
                users[user_cols].loc[repeated].reset_index(drop=True),
                item_rows.iloc[np.maximum(positions, 0).ravel()].reset_index(drop=True),
            ],
            axis=1,
        )
        ranking_scores = predict_frame(ranker, pairs, ranker_schema).reshape(positions.shape)
        for weight in cfg.ranker_weights:
            policy = OrderingPolicy(ranker_weight=weight)
            order, _ = final_order(retrieval_scores, ranking_scores, policy, k)
            ranked = np.where(order >= 0, np.take_along_axis(positions, order, axis=1), -1)
            # Fewer than k candidates in a small catalogue: the places past it are misses.
            metrics = per_user_top_k_metrics(padded(ranked, k), task.relevant[rows], [k])
            per_weight[weight].append(metrics[cfg.monitor])
    values = {w: float(np.concatenate(parts).mean()) for w, parts in per_weight.items()}
    best = max(cfg.ranker_weights, key=lambda w: (values[w], -cfg.ranker_weights.index(w)))
    log.info("recommend ordering: validation %s by ranker weight %s", cfg.monitor, values)
    return OrderingPolicy(
        ranker_weight=best, validation={str(w): value for w, value in values.items()}
    )
