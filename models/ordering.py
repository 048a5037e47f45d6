"""The final ordering of ``recommend``: how retrieval's candidates are ranked for the list.

Pure NumPy (no TensorFlow): the serving runtime imports it in every Python-backend stub, and
training and the gate call the same functions, so the list that is chosen on validation, the
list the gate judges and the list Triton serves come from one piece of code.

Each user's N candidates carry two scores: the retrieval model's (a cosine) and the ranker's (a
probability). They live on different scales, and the spread of either differs from user to
user, so each is standardised over the user's candidates before they are blended:

    final = w * z(ranking) + (1 - w) * z(retrieval)

``w = 1`` orders by the ranker alone (what ``recommend`` did before the policy existed), ``w =
0`` keeps retrieval's order. Which ``w`` serves is measured on the validation split at training
time (``models/composed.py``), never assumed.
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


def final_scores(
    retrieval_scores: np.ndarray, ranking_scores: np.ndarray, policy: OrderingPolicy
) -> np.ndarray:
    """[users, N] blended scores of each user's candidates; higher ranks first.

    Entries that are not finite in either input (padding: fewer than N candidates were left
    after excluding seen items) score -inf, so they are never ranked before a real candidate.
    """
    retrieval_scores = np.asarray(retrieval_scores, dtype=np.float64)
    ranking_scores = np.asarray(ranking_scores, dtype=np.float64)
    if retrieval_scores.shape != ranking_scores.shape or retrieval_scores.ndim != 2:
        raise ValueError(
            f"retrieval {retrieval_scores.shape} and ranking {ranking_scores.shape} scores must "
            "both be [users, candidates]"
        )
    valid = np.isfinite(retrieval_scores) & np.isfinite(ranking_scores)
    w = policy.ranker_weight
    blended = w * _standardised(ranking_scores, valid) + (1 - w) * _standardised(
        retrieval_scores, valid
    )
    return np.where(valid, blended, -np.inf).astype(np.float32)


def final_order(
    retrieval_scores: np.ndarray, ranking_scores: np.ndarray, policy: OrderingPolicy, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Positions (into each row's candidates) and final scores of the best ``k``, best first.

    Padding is -1 / -inf. Ties keep the candidates' order, i.e. retrieval's.
    """
    return top_k(final_scores(retrieval_scores, ranking_scores, policy), k)
