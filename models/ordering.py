"""The final ordering of ``recommend``: which candidates it ranks, and how they are ordered.

Pure NumPy (no TensorFlow): the serving runtime imports it in every Python-backend stub, and
training and the gate call the same functions, so the list that is chosen on validation, the
list the gate judges and the list Triton serves come from one piece of code.

Candidates (:func:`candidate_positions`): each user's ``n`` best unseen items by the retrieval
model, and, where the version has an item-item model (models/item_item.py), the ``n`` best of
its scores that retrieval did not already bring. Each candidate then carries up to three
scores: the retrieval model's (a cosine), the ranker's (a probability) and the item-item
model's (the user's history times B). They live on different scales, and the spread of each
differs from user to user, so each is standardised over the user's candidates before they are
blended:

    final = w_rank * z(ranking) + w_item * z(item_item) + (1 - w_rank - w_item) * z(retrieval)

``w_rank = 1`` orders by the ranker alone (what ``recommend`` did before the policy existed),
``w_rank = w_item = 0`` keeps retrieval's order. Which weights serve is measured on the
validation split at training time (``models/composed.py``), never assumed.
"""

from __future__ import annotations

import numpy as np

from models.metrics import top_k
from recflow.artifacts import OrderingPolicy


def _standardised(scores: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per row: (score - mean) / std over the row's valid entries; 0 where not valid."""
    n = np.maximum(valid.sum(axis=1, keepdims=True), 1)
    x = np.where(valid, scores, 0.0)
    mean = x.sum(axis=1, keepdims=True) / n
    centred = np.where(valid, x - mean, 0.0)
    std = np.sqrt((centred**2).sum(axis=1, keepdims=True) / n)
    # A row whose scores are all equal carries no order: it contributes nothing to the blend.
    return centred / np.where(std > 0, std, 1.0)


def candidate_positions(
    retrieval_scores: np.ndarray,
    item_item_scores: np.ndarray | None,
    n: int,
    exclude: np.ndarray | None,
) -> np.ndarray:
    """[users, n or 2n] catalogue positions of each user's candidates, -1 for padding: the
    ``n`` best by retrieval, then the ``n`` best by item-item among the rest. Both take
    [users, items] scores over one catalogue; ``exclude`` (seen items) is never a candidate.
    Only a positive item-item score brings a candidate: a user without history (all zeros)
    gets retrieval's alone."""
    first, _ = top_k(retrieval_scores, n, exclude)
    if item_item_scores is None:
        return first
    taken = np.zeros(retrieval_scores.shape, dtype=bool) if exclude is None else exclude.copy()
    rows, columns = np.nonzero(first >= 0)
    taken[rows, first[rows, columns]] = True
    evidence = np.where(item_item_scores > 0, item_item_scores, -np.inf)
    second, _ = top_k(evidence, n, taken)
    return np.concatenate([first, second], axis=1)


def gather(scores: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Each row's ``scores`` at ``positions``; -inf where the position is padding (-1)."""
    picked = np.take_along_axis(scores, np.maximum(positions, 0), axis=1)
    return np.where(positions >= 0, picked, -np.inf).astype(np.float32)


def final_scores(
    retrieval_scores: np.ndarray,
    ranking_scores: np.ndarray,
    policy: OrderingPolicy,
    item_item_scores: np.ndarray | None = None,
) -> np.ndarray:
    """[users, N] blended scores of each user's candidates; higher ranks first.

    Entries that are not finite in the retrieval or ranking input (padding: fewer than N
    candidates were left after excluding seen items) score -inf, so they are never ranked
    before a real candidate.
    """
    retrieval_scores = np.asarray(retrieval_scores, dtype=np.float64)
    ranking_scores = np.asarray(ranking_scores, dtype=np.float64)
    if retrieval_scores.shape != ranking_scores.shape or retrieval_scores.ndim != 2:
        raise ValueError(
            f"retrieval {retrieval_scores.shape} and ranking {ranking_scores.shape} scores must "
            "both be [users, candidates]"
        )
    valid = np.isfinite(retrieval_scores) & np.isfinite(ranking_scores)
    w_rank, w_item = policy.ranker_weight, policy.item_item_weight
    blended = w_rank * _standardised(ranking_scores, valid) + (1 - w_rank - w_item) * _standardised(
        retrieval_scores, valid
    )
    if w_item:
        if item_item_scores is None:
            raise ValueError(f"ordering weighs item-item scores by {w_item} but none were given")
        item_item = np.asarray(item_item_scores, dtype=np.float64)
        blended += w_item * _standardised(item_item, valid & np.isfinite(item_item))
    return np.where(valid, blended, -np.inf).astype(np.float32)


def final_order(
    retrieval_scores: np.ndarray,
    ranking_scores: np.ndarray,
    policy: OrderingPolicy,
    k: int,
    item_item_scores: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Positions (into each row's candidates) and final scores of the best ``k``, best first.

    Padding is -1 / -inf. Ties keep the candidates' order (retrieval's first).
    """
    scores = final_scores(retrieval_scores, ranking_scores, policy, item_item_scores)
    return top_k(scores, k)
