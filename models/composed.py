"""Choosing ``recommend``'s final ordering on the validation split, after the models trained.

``recommend`` takes each user's candidates (``models.ordering.candidate_positions``: the
retrieval model's ``n_candidates`` best unseen items, then the item-item model's) and orders
them by ``models.ordering.final_scores``. This module rebuilds exactly those lists for the
validation users, in encoded ids: every catalogue item a user did not interact with in training
may be a candidate, the ranker scores each candidate from the user's and the item's feature
columns, and every (ranker, item-item) weight pair of the grid is scored by recall/ndcg/mrr@k
of the composed top k (models/metrics.py), the user's validation positives relevant. The best
pair is the policy; every pair's value is kept with it. Users the version never saw who send a
history get a pair of their own, chosen on validation users scored as new
(:func:`choose_new_user_ordering`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from merlin.schema import Tags

from models.architectures import ranker_inputs
from models.baselines import judged_sample
from models.evaluation import RetrievalTask, user_batch
from models.item_item import ItemItemWeights
from models.metrics import padded, per_user_top_k_metrics
from models.ordering import candidate_positions, final_order, gather
from models.predict import predict_frame
from models.ranking import load_model
from models.retrieval import QueryEncoder
from models.training import binary_target, read_columns, read_schema, side_columns
from recflow.artifacts import ItemItemSource, OrderingPolicy, RankingModel, RetrievalModel
from recflow.config import OrderingConfig
from recflow.vocabulary import EMBEDDING

log = logging.getLogger(__name__)


def choose_ordering(
    train_dir: Path,
    valid_dir: Path,
    catalogue: pd.DataFrame,
    ranking: RankingModel,
    retrieval: RetrievalModel,
    item_item: ItemItemSource | None,
    n_candidates: int,
    cfg: OrderingConfig,
    unseen_user: pd.DataFrame | None = None,
) -> OrderingPolicy:
    """The (ranker, item-item) weights of ``cfg.weight_pairs`` whose composed lists score the
    best ``cfg.monitor`` on the validation split (ties: the earlier pair), judged on its users
    or, where there are more than ``TUNING_USERS``, a seeded sample of them
    (``models.baselines.judged_sample``); with an item-item source and ``unseen_user`` (the
    encoded user columns serving gives an id it never saw), also the weights for new users who
    send a history (:func:`choose_new_user_ordering`)."""
    k = int(cfg.monitor.partition("@")[2])
    if k > n_candidates:
        raise ValueError(f"ordering.monitor {cfg.monitor} asks for more than {n_candidates} items")
    full = read_schema(train_dir)
    target = binary_target(full)
    user_cols, item_cols = side_columns(full, Tags.USER), side_columns(full, Tags.ITEM)
    user_id = full.select_by_tag(Tags.USER_ID).first.name
    item_id = full.select_by_tag(Tags.ITEM_ID).first.name
    train = read_columns(train_dir, [user_id, item_id, target])
    valid = read_columns(valid_dir, [*user_cols, item_id, target])
    candidates = catalogue.drop_duplicates(item_id).sort_values(item_id, ignore_index=True)
    # Judged on the users the item-item choices are judged on: at ml-10m's 70,000 validation
    # users, scoring everyone took 190 s.
    positives = judged_sample(valid[valid[target] == 1], user_id)
    task = RetrievalTask.build(train, positives, candidates[item_id].to_numpy(), user_id, item_id)
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
    if item_item is not None:
        # Dense, as the recency decay's choice holds it (up to 400 MB at 10,000 items): one
        # product per batch of users instead of gathering each history item's neighbours, which
        # took 22 of the 79 s on ml-1m-shaped data.
        weights = ItemItemWeights.load(item_item.weights_file).densified()
        # A user's history is what the model was fitted on: the rated pairs, or the positives,
        # each user's in time order as the feature build wrote them (recency_decay reads it).
        history = train if item_item.interactions == "rated" else train[train[target] == 1]

    pairs_tried = [
        OrderingPolicy(ranker_weight=ranker, item_item_weight=item)
        for ranker, item in cfg.weight_pairs(item_item is not None)
    ]
    per_policy: dict[str, list[np.ndarray]] = {p.key: [] for p in pairs_tried}
    at_once = user_batch(len(task.candidates))
    for start in range(0, len(task.users), at_once):
        rows = slice(start, start + at_once)
        users = queries.iloc[rows].reset_index(drop=True)
        retrieval_full = queries_of.encode(users) @ vectors.T
        item_item_full = None
        if item_item is not None:
            item_item_full = weights.users_scores(
                history, task.users[rows], candidates[item_id].to_numpy(np.int64), user_id, item_id
            )
        positions = candidate_positions(
            retrieval_full, item_item_full, n_candidates, task.seen_mask(rows)
        )
        retrieval_scores = gather(retrieval_full, positions)
        item_item_scores = None if item_item_full is None else gather(item_item_full, positions)
        repeated = np.repeat(np.arange(len(users)), positions.shape[1])
        pairs = pd.concat(
            [
                users[user_cols].loc[repeated].reset_index(drop=True),
                item_rows.iloc[np.maximum(positions, 0).ravel()].reset_index(drop=True),
            ],
            axis=1,
        )
        ranking_scores = predict_frame(ranker, pairs, ranker_schema).reshape(positions.shape)
        scored = (positions, retrieval_scores, ranking_scores, item_item_scores)
        for key, metric in _per_pair(pairs_tried, scored, task.relevant[rows], cfg).items():
            per_policy[key].append(metric)
    values = {key: float(np.concatenate(parts).mean()) for key, parts in per_policy.items()}
    best = _best(pairs_tried, values)
    log.info(
        "recommend ordering: validation %s by (ranker, item-item) weights %s", cfg.monitor, values
    )
    new_users = None
    if item_item is not None and unseen_user is not None and cfg.new_user_histories:
        # The unseen id's ranker row against every item, and its query: the same for each
        # new user, so scored once.
        unseen = unseen_user[user_cols].loc[np.zeros(len(item_rows), dtype=np.int64)]
        pairs = pd.concat([unseen.reset_index(drop=True), item_rows.reset_index(drop=True)], axis=1)
        new_users = choose_new_user_ordering(
            task,
            history,
            weights,
            retrieval_row=(queries_of.encode(unseen_user[user_cols]) @ vectors.T)[0],
            ranking_row=predict_frame(ranker, pairs, ranker_schema),
            pairs_tried=pairs_tried,
            n_candidates=n_candidates,
            cfg=cfg,
            columns=(user_id, item_id),
        )
    return best.model_copy(update={"validation": values, "new_users": new_users})


def _per_pair(
    pairs_tried: list[OrderingPolicy],
    scored: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None],
    relevant: Sequence[np.ndarray],
    cfg: OrderingConfig,
) -> dict[str, np.ndarray]:
    """Each pair's per-user ``cfg.monitor`` of the composed top k, from the candidates'
    (positions, retrieval, ranking, item-item scores) and each user's relevant positions."""
    positions, retrieval_scores, ranking_scores, item_item_scores = scored
    k = int(cfg.monitor.partition("@")[2])
    metrics = {}
    for policy in pairs_tried:
        order, _ = final_order(retrieval_scores, ranking_scores, policy, k, item_item_scores)
        ranked = np.where(order >= 0, np.take_along_axis(positions, order, axis=1), -1)
        # Fewer than k candidates in a small catalogue: the places past it are misses.
        by_user = per_user_top_k_metrics(padded(ranked, k), relevant, [k])
        metrics[policy.key] = by_user[cfg.monitor]
    return metrics


def _best(pairs_tried: list[OrderingPolicy], values: dict[str, float]) -> OrderingPolicy:
    """The pair with the best value; ties: the earlier pair."""
    return max(pairs_tried, key=lambda p: (values[p.key], -pairs_tried.index(p)))


def choose_new_user_ordering(
    task: RetrievalTask,
    history: pd.DataFrame,
    weights: ItemItemWeights,
    retrieval_row: np.ndarray,
    ranking_row: np.ndarray,
    pairs_tried: list[OrderingPolicy],
    n_candidates: int,
    cfg: OrderingConfig,
    columns: tuple[str, str],
) -> OrderingPolicy | None:
    """The weights for users the version never saw who send a history, chosen on validation
    users scored as new.

    Serving knows such a user only by the items they send: their query embedding and ranker
    row are the unseen id's, the same for everyone, so the retrieval and ranker scores are an
    item prior, and only the item-item scores of the history are theirs. Each sampled
    validation user (at most ``cfg.new_user_sample``, seeded) is scored that way for each
    length n of ``cfg.new_user_histories``: their first n training interactions by time
    (the rows the item-item model reads) as the history, the unseen id's scores, their
    validation positives relevant. Their other training items are left out of the list, as
    for known users: they are neither relevant nor future. The pair with the best mean over
    the lengths wins; each pair's mean is kept in ``validation``.
    """
    user_id, item_id = columns
    rng = np.random.default_rng(0)
    rows = np.arange(len(task.users))
    if len(rows) > cfg.new_user_sample:
        rows = np.sort(rng.choice(rows, cfg.new_user_sample, replace=False))
    counts = history[user_id].value_counts()
    per_policy: dict[str, list[float]] = {p.key: [] for p in pairs_tried}
    for length in cfg.new_user_histories:
        # Users with fewer interactions than the length would be scored with fewer events.
        kept = rows[counts.reindex(task.users[rows], fill_value=0).to_numpy() >= length]
        if not len(kept):
            continue
        first = history[history[user_id].isin(task.users[kept])].groupby(user_id).head(length)
        at_once = user_batch(len(task.candidates))
        by_length: dict[str, list[np.ndarray]] = {p.key: [] for p in pairs_tried}
        for start in range(0, len(kept), at_once):
            batch = kept[start : start + at_once]
            item_item_full = weights.users_scores(
                first, task.users[batch], task.candidates, user_id, item_id
            )
            retrieval_full = np.broadcast_to(retrieval_row, item_item_full.shape)
            positions = candidate_positions(
                retrieval_full, item_item_full, n_candidates, task.seen_mask(batch)
            )
            scored = (
                positions,
                gather(retrieval_full, positions),
                gather(np.broadcast_to(ranking_row, item_item_full.shape), positions),
                gather(item_item_full, positions),
            )
            relevant = [task.relevant[row] for row in batch]
            for key, metric in _per_pair(pairs_tried, scored, relevant, cfg).items():
                by_length[key].append(metric)
        for key, parts in by_length.items():
            per_policy[key].append(float(np.concatenate(parts).mean()))
    if not any(per_policy.values()):
        return None
    values = {key: float(np.mean(means)) for key, means in per_policy.items()}
    log.info(
        "recommend ordering for new users: validation %s of %d users scored as new with %s "
        "events, by (ranker, item-item) weights %s",
        cfg.monitor,
        len(rows),
        "/".join(map(str, cfg.new_user_histories)),
        values,
    )
    return _best(pairs_tried, values).model_copy(update={"validation": values})
