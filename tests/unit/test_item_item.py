"""recommend's item-item source as stored and served (models/item_item.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from models import baselines, item_item
from models.item_item import ItemItemWeights
from recflow.vocabulary import ITEM_ID, RAW_ITEM_ID
from serving import runtime

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


def test_an_encoded_id_several_catalogue_items_share_neither_scores_nor_speaks(tmp_path):
    # Categorify gives every item training never saw one id: 34 for raw items 100 and 101.
    # Scored, all of them would carry its one score (on ml-latest-small by time they filled
    # 22 % of item-item's top 10).
    catalogue = pd.DataFrame({RAW_ITEM_ID: [10, 20, 100, 101], ITEM_ID: [3, 5, 34, 34]})
    catalogue.to_parquet(tmp_path / runtime.ITEM_EMBEDDINGS)
    weights = ItemItemWeights.from_dense(ITEMS, DENSE, neighbours=len(ITEMS))
    weights.save(tmp_path / runtime.ITEM_ITEM)
    # User 0 saw raw items 10 and 100, user 1 only 101 (catalogue positions 0, 2 and 3).
    scores = runtime.ItemItemScores(tmp_path)(2, (np.array([0, 0, 1]), np.array([0, 2, 3])))
    np.testing.assert_allclose(scores[0], [0.0, DENSE[0, 1], 0.0, 0.0], atol=1e-6)
    assert not scores[1].any()
    assert DENSE[5, 1] != 0 and DENSE[0, 5] != 0  # 34's weights would have counted


def test_an_item_followed_by_r_more_recent_ones_weighs_decay_to_the_r(tmp_path):
    decay = 0.5
    dense = ItemItemWeights.from_dense(ITEMS, DENSE, neighbours=len(ITEMS))
    dense = ItemItemWeights(dense.items, dense.indptr, dense.indices, dense.weights, decay)
    dense.save(tmp_path / "w.npz")
    weights = ItemItemWeights.load(tmp_path / "w.npz")
    assert weights.recency_decay == decay
    # User 0: 3, 8, 3 again, then 99 (not held: still an event); user 1: 34 then 5.
    owners = np.array([1, 0, 0, 1, 0, 0])
    ids = np.array([34, 3, 8, 5, 3, 99])
    got = weights.scores(owners, weights.positions(ids), 2)
    rows = np.searchsorted(ITEMS, [3, 8, 34, 5])
    expected = [
        decay**1 * DENSE[rows[0]] + decay**2 * DENSE[rows[1]],  # 3 at its latest
        decay**1 * DENSE[rows[2]] + DENSE[rows[3]],
    ]
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_files_written_before_the_decay_read_a_history_as_a_set(tmp_path):
    weights = ItemItemWeights.from_dense(ITEMS, DENSE, neighbours=len(ITEMS))
    np.savez(
        tmp_path / "old.npz",
        items=weights.items,
        indptr=weights.indptr,
        indices=weights.indices,
        weights=weights.weights,
    )
    assert ItemItemWeights.load(tmp_path / "old.npz").recency_decay == 1.0


def test_the_decay_is_chosen_on_the_judged_rows():
    # One user: twelve old items (0..11) each point to an item of their own (12..23) more
    # strongly than the latest item (24) points to the one the user picks next (25). As a set
    # the history ranks all twelve first; halved at each later event, the next item leads.
    items = np.arange(26, dtype=np.int64)
    dense = np.zeros((26, 26), dtype=np.float32)
    dense[np.arange(12), np.arange(12, 24)] = 1.0
    dense[24, 25] = 0.6
    weights = ItemItemWeights.from_dense(items, dense, neighbours=26)
    # User 8 only puts items 12..23 in the catalogue the lists are drawn from.
    fitted_on = pd.DataFrame(
        {"user": [7] * 13 + [8] * 12, "item": [*range(12), 24, *range(12, 24)]}
    )
    judged = pd.DataFrame({"user": [7], "item": [25]})
    chosen, validation = baselines.choose_recency_decay(
        weights, fitted_on, judged, "user", "item", (1.0, 0.5)
    )
    assert validation == {1.0: 0.0, 0.5: 1.0}
    assert chosen.recency_decay == 0.5


def test_items_too_old_to_weigh_are_left_out():
    # Item 3 followed by fourteen events weighs 0.5**14 < MIN_PAIR_WEIGHT at decay 0.5: not
    # gathered; followed by thirteen it still counts.
    weights = ItemItemWeights.from_dense(ITEMS, DENSE, neighbours=len(ITEMS))
    weights = ItemItemWeights(weights.items, weights.indptr, weights.indices, weights.weights, 0.5)
    assert 0.5**14 < item_item.MIN_PAIR_WEIGHT <= 0.5**13
    for later, expected in ((14, DENSE[5]), (13, DENSE[5] + 0.5**13 * DENSE[0])):
        history = np.array([0] + [5] * later)  # item 3, then 34 again and again
        got = weights.scores(np.zeros(len(history), np.int64), history, 1)
        np.testing.assert_allclose(got[0], expected, atol=1e-7)


def test_the_dense_copy_scores_as_the_gather(monkeypatch):
    # Training's choices (decay, ordering) and the gate score through the dense copy; serving
    # gathers.
    monkeypatch.setattr(item_item, "DENSE_USER_CHUNK", 2)  # users in several blocks
    sparse = ItemItemWeights.from_dense(ITEMS, DENSE, neighbours=3)
    sparse = ItemItemWeights(sparse.items, sparse.indptr, sparse.indices, sparse.weights, 0.7)
    histories = [[3, 8, 13, 8], [34], [], [5, 8, 13, 21, 34]]
    owners = np.repeat(np.arange(4), [len(h) for h in histories])
    positions = sparse.positions(np.concatenate([np.asarray(h, np.int64) for h in histories]))
    dense = sparse.densified()
    assert dense.dense is not None and np.count_nonzero(dense.dense) == len(sparse.weights)
    np.testing.assert_allclose(
        dense.scores(owners, positions, 4), sparse.scores(owners, positions, 4), atol=1e-6
    )
