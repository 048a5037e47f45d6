"""recommend's final ordering (models/ordering.py) on known scores."""

from __future__ import annotations

import numpy as np
import pytest

from models.ordering import candidate_positions, final_order, final_scores
from recflow.artifacts import OrderingPolicy, VersionConfig
from recflow.config import OrderingConfig

RANKER, RETRIEVAL, HALF = (OrderingPolicy(ranker_weight=w) for w in (1.0, 0.0, 0.5))
# Two users, four candidates each, in retrieval order (retrieval scores descending).
RETRIEVED = np.array([[0.9, 0.8, 0.7, 0.1], [0.5, 0.4, 0.3, 0.2]], dtype=np.float32)
RANKED = np.array([[0.1, 0.15, 0.9, 0.3], [0.6, 0.7, 0.1, 0.2]], dtype=np.float32)


def positions(policy: OrderingPolicy, k: int = 4, retrieved=RETRIEVED, ranked=RANKED):
    return final_order(retrieved, ranked, policy, k)[0].tolist()


def test_weight_one_orders_by_the_ranker_and_zero_keeps_retrieval_order():
    assert positions(RANKER) == [[2, 3, 1, 0], [1, 0, 3, 2]]
    assert positions(RETRIEVAL) == [[0, 1, 2, 3], [0, 1, 2, 3]]


def test_a_blend_is_between_the_two():
    # User 0: candidate 2 is third by retrieval but first by the ranker; the blend puts it
    # first, and candidate 3 (last by retrieval, a gap of 0.6) stays last.
    assert positions(HALF)[0] == [2, 0, 1, 3]


def test_the_blend_is_per_user_scale_free():
    # Each user's scores are standardised over the user's own candidates: a per-user affine
    # rescaling of either score (a probability vs a cosine) does not move anything.
    scale = np.array([[100.0], [0.01]], dtype=np.float32)
    shift = np.array([[-3.0], [7.0]], dtype=np.float32)
    rescaled = positions(HALF, retrieved=RETRIEVED * scale + shift, ranked=RANKED / scale)
    assert rescaled == positions(HALF)


def test_padding_ranks_last_and_stays_padding():
    retrieved = RETRIEVED.copy()
    retrieved[1, 2:] = -np.inf  # the second user had only two unseen candidates
    for policy in (RANKER, RETRIEVAL, HALF):
        scores = final_scores(retrieved, RANKED, policy)
        assert np.isneginf(scores[1, 2:]).all() and np.isfinite(scores[1, :2]).all()
        order, best = final_order(retrieved, RANKED, policy, 4)
        assert order[1, 2:].tolist() == [-1, -1] and np.isneginf(best[1, 2:]).all()


def test_constant_scores_contribute_nothing():
    constant = np.full_like(RANKED, 0.5)
    assert positions(HALF, ranked=constant) == positions(RETRIEVAL)


def test_shapes_must_agree():
    with pytest.raises(ValueError, match="users, candidates"):
        final_scores(RETRIEVED, RANKED[:, :3], HALF)


def test_the_weight_is_bounded():
    with pytest.raises(ValueError):
        OrderingPolicy(ranker_weight=1.5)


def test_item_item_candidates_follow_retrievals_and_need_evidence():
    retrieval = np.array([[0.9, 0.1, 0.8, 0.2, 0.3]], dtype=np.float32)
    item_item = np.array([[5.0, 4.0, 0.0, -1.0, 3.0]], dtype=np.float32)
    seen = np.array([[False, False, False, False, True]])
    got = candidate_positions(retrieval, item_item, 2, seen)
    # Retrieval's best two unseen; then item-item's best not already taken, only with a
    # positive score (item 3 is negative, item 2 has none, item 4 is seen).
    assert got.tolist() == [[0, 2, 1, -1]]
    assert candidate_positions(retrieval, None, 2, seen).tolist() == [[0, 2]]
    no_history = np.zeros_like(item_item)
    assert candidate_positions(retrieval, no_history, 2, seen).tolist() == [[0, 2, -1, -1]]


def test_the_item_item_weight_moves_its_favourite_up():
    item_item = np.array([[0.0, 0.0, 0.0, 9.0], [0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    only_item_item = OrderingPolicy(ranker_weight=0.0, item_item_weight=1.0)
    assert final_order(RETRIEVED, RANKED, only_item_item, 1, item_item)[0].tolist() == [[3], [0]]
    # With no weight, the scores do not matter.
    assert final_order(RETRIEVED, RANKED, HALF, 4, item_item)[0].tolist() == positions(HALF)
    with pytest.raises(ValueError, match="item-item"):
        final_scores(RETRIEVED, RANKED, only_item_item)


def test_the_weights_leave_retrieval_a_non_negative_share():
    with pytest.raises(ValueError, match="exceeds 1"):
        OrderingPolicy(ranker_weight=0.7, item_item_weight=0.4)
    pairs = OrderingConfig(ranker_weights=(0.0, 0.7), item_item_weights=(0.0, 0.4)).weight_pairs
    assert pairs(item_item=True) == [(0.0, 0.0), (0.0, 0.4), (0.7, 0.0)]
    assert pairs(item_item=False) == [(0.0, 0.0), (0.7, 0.0)]


def test_a_version_keeps_both_policies_weights_without_their_validation_records():
    chosen = OrderingPolicy(
        ranker_weight=0.3,
        item_item_weight=0.6,
        validation={"ranker 0.3, item-item 0.6": 0.12},
        new_users=OrderingPolicy(
            ranker_weight=0.2, item_item_weight=0.2, validation={"ranker 0.2, item-item 0.2": 0.08}
        ),
    )
    served = VersionConfig.model_validate_json(
        VersionConfig(max_k=10, retrieval_candidates=50, ordering=chosen.served()).model_dump_json()
    ).ordering
    assert (served.key, served.new_users.key) == (chosen.key, chosen.new_users.key)
    assert served.validation == served.new_users.validation == {}
    # A version exported before new users had weights of their own reads as none.
    assert VersionConfig(max_k=10, retrieval_candidates=50).ordering.new_users is None
