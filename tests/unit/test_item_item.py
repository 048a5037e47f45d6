"""recommend's item-item source as stored and served (models/item_item.py)."""

from __future__ import annotations

import numpy as np

from models.item_item import ItemItemWeights

RNG = np.random.default_rng(7)
ITEMS = np.array([3, 5, 8, 13, 21, 34], dtype=np.int64)
DENSE = RNG.normal(size=(6, 6)).astype(np.float32)
np.fill_diagonal(DENSE, 0.0)


def dense_scores(histories: list[list[int]]) -> np.ndarray:
    x = np.zeros((len(histories), len(ITEMS)), dtype=np.float32)
    for row, history in enumerate(histories):
        x[row, np.searchsorted(ITEMS, history)] = 1.0
    return x @ DENSE


def test_every_weight_kept_scores_like_the_dense_product():
    weights = ItemItemWeights.from_dense(ITEMS, DENSE, neighbours=len(ITEMS))
    histories = [[3, 8], [34], [], [5, 8, 13, 21]]
    owners = np.repeat(np.arange(4), [len(h) for h in histories])
    ids = np.concatenate([np.asarray(h, np.int64) for h in histories])
    got = weights.scores(owners, weights.positions(ids), 4)
    np.testing.assert_allclose(got, dense_scores(histories), atol=1e-6)


def test_each_item_keeps_its_strongest_weights_of_either_sign():
    weights = ItemItemWeights.from_dense(ITEMS, DENSE, neighbours=2)
    # Item j's column of the stored matrix: one history item at a time.
    stored = weights.scores(np.arange(6), np.arange(6), 6)
    for column in range(6):
        kept = np.flatnonzero(stored[:, column])
        strongest = np.argsort(-np.abs(DENSE[:, column]))[:2]
        assert set(kept) == set(strongest)
        np.testing.assert_allclose(stored[kept, column], DENSE[kept, column])


def test_a_history_is_a_set_and_unknown_items_say_nothing():
    weights = ItemItemWeights.from_dense(ITEMS, DENSE, neighbours=len(ITEMS))
    owners = np.array([0, 0, 0, 0])
    ids = np.array([8, 8, 99, 3])  # a repeat and an id the model does not hold
    got = weights.scores(owners, weights.positions(ids), 1)
    np.testing.assert_allclose(got, dense_scores([[3, 8]]), atol=1e-6)


def test_catalogue_items_the_model_does_not_hold_score_zero(tmp_path):
    ItemItemWeights.from_dense(ITEMS, DENSE, neighbours=3).save(tmp_path / "w.npz")
    weights = ItemItemWeights.load(tmp_path / "w.npz")
    catalogue = np.array([34, 77, 3], dtype=np.int64)
    got = weights.catalogue_scores(np.array([0]), np.array([8]), 1, catalogue)
    full = weights.scores(np.array([0]), weights.positions(np.array([8])), 1)
    np.testing.assert_allclose(got, [[full[0, 5], 0.0, full[0, 0]]])
