"""EASE and item-kNN (models/baselines.py) against independent computations on tiny data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models import baselines
from models.baselines import (
    EASE_L2_GRID,
    Cooccurrence,
    choose_on,
    choose_recency_decay,
    ease,
    fit_tuned,
    item_knn,
    random_rows,
)
from models.evaluation import RetrievalTask
from models.item_item import ItemItemWeights
from tests.support.retrieval import record_judged_users


def _pairs(matrix: np.ndarray, item_ids: np.ndarray) -> pd.DataFrame:
    users, columns = np.nonzero(matrix)
    return pd.DataFrame({"user": users + 100, "item": item_ids[columns]})


@pytest.fixture
def binary() -> tuple[np.ndarray, np.ndarray]:
    """A random binary 30 x 6 user x item matrix, every item used, and unsorted raw item ids."""
    matrix = (np.random.default_rng(3).random((30, 6)) < 0.4).astype(np.float64)
    matrix[0] = 1.0
    return matrix, np.array([70, 10, 50, 20, 60, 30])


def test_ease_is_each_items_ridge_regression_on_the_others(binary):
    # Steck's closed form must equal, column by column, the ridge regression of item j on the
    # other items (the constrained problem it solves), solved here without any inverse.
    matrix, ids = binary
    pairs = _pairs(matrix, ids)
    l2 = 3.0
    model = ease(Cooccurrence.build(pairs["user"].to_numpy(), pairs["item"].to_numpy()), l2)
    order = np.argsort(ids)
    x = matrix[:, order]  # columns in the model's order: sorted raw ids
    assert list(model.items) == sorted(ids)
    expected = np.zeros((6, 6))
    for j in range(6):
        others = np.delete(np.arange(6), j)
        gram = x[:, others].T @ x[:, others] + l2 * np.eye(5)
        expected[others, j] = np.linalg.solve(gram, x[:, others].T @ x[:, j])
    assert model.weights.dtype == np.float32
    np.testing.assert_allclose(model.weights, expected, atol=1e-6)
    assert (np.diag(model.weights) == 0).all()
    histories = [ids[np.flatnonzero(row)] for row in matrix]
    np.testing.assert_allclose(model.scores(histories), x @ expected, atol=1e-5)


def test_with_fewer_users_than_items_ease_solves_the_users_side_to_the_same_weights():
    matrix = (np.random.default_rng(5).random((8, 20)) < 0.3).astype(np.float64)
    matrix[:, matrix.sum(axis=0) == 0] = 1.0  # every item used by someone
    pairs = _pairs(matrix, np.arange(20) * 7)
    counts = Cooccurrence.build(pairs["user"].to_numpy(), pairs["item"].to_numpy())
    assert counts.rows is not None and counts.rows.shape == (8, 20)
    for l2 in (0.5, 50.0):
        dual = ease(counts, l2)
        primal = ease(Cooccurrence(counts.items, counts.counts), l2)
        np.testing.assert_allclose(dual.weights, primal.weights, atol=1e-5)


def test_an_item_co_consumed_with_the_users_items_ranks_above_an_unrelated_one():
    # Users either take 1, 2 and 3 together, or 4 and 5 together; item 3 is the most popular.
    together = [[1, 2, 3]] * 10 + [[4, 5]] * 10 + [[3]] * 15
    pairs = pd.DataFrame(
        [(u, i) for u, items in enumerate(together) for i in items], columns=["u", "i"]
    )
    counts = Cooccurrence.build(pairs["u"].to_numpy(), pairs["i"].to_numpy())
    for model in (ease(counts, 1.0), item_knn(counts, 2)):
        scores = model.scores([np.array([1])])[0]
        assert scores[1] > max(scores[3], scores[4]), model  # item 2 over the unrelated 4 and 5
        assert (np.diag(model.weights) == 0).all()


def test_knn_keeps_each_items_k_most_similar_items(binary):
    matrix, ids = binary
    pairs = _pairs(matrix, ids)
    counts = Cooccurrence.build(pairs["user"].to_numpy(), pairs["item"].to_numpy())
    x = matrix[:, np.argsort(ids)]
    norms = np.linalg.norm(x, axis=0)
    cosine = (x.T @ x) / np.outer(norms, norms)
    np.fill_diagonal(cosine, 0.0)
    np.testing.assert_allclose(item_knn(counts, 5).weights, cosine, atol=1e-6)
    sparse = item_knn(counts, 2).weights
    for j in range(6):
        kept = np.flatnonzero(sparse[:, j])
        # Column j: the items voting for j are j's two nearest, with their cosine.
        assert set(kept) == set(np.argsort(-cosine[:, j])[:2]), j
        np.testing.assert_allclose(sparse[kept, j], cosine[kept, j], atol=1e-6)


def test_tuning_fits_without_the_tuning_slice_and_refits_on_all_training_rows(monkeypatch):
    rng = np.random.default_rng(0)
    train = pd.DataFrame({"user": rng.integers(0, 40, 600), "item": rng.integers(0, 25, 600)})
    train = train.drop_duplicates(ignore_index=True)
    tuning = random_rows(len(train))
    built: list[set] = []
    original = Cooccurrence.build

    def recorded(users, items):
        built.append(set(zip(users.tolist(), items.tolist(), strict=True)))
        return original(users, items)

    monkeypatch.setattr(Cooccurrence, "build", staticmethod(recorded))
    tuned = fit_tuned("ease", train, np.ones(len(train), bool), tuning, "user", "item")
    pairs = list(zip(train["user"], train["item"], strict=True))
    held = {pair for pair, slice_ in zip(pairs, tuning, strict=True) if slice_}
    assert held and built[0] == set(pairs) - held  # the grid never fits on the slice it scores
    assert built[-1] == set(pairs)  # the chosen value is refitted on every training row
    assert set(tuned.validation) == set(EASE_L2_GRID)
    assert tuned.validation[tuned.value] == max(tuned.validation.values())


def test_above_the_dense_limit_the_models_hold_the_most_interacted_items(monkeypatch):
    monkeypatch.setattr(baselines, "MAX_DENSE_ITEMS", 3)
    # Item 5 has 5 users, 4 has 4, ... 1 has 1: the three most interacted are 3, 4 and 5.
    pairs = pd.DataFrame([(u, i) for i in range(1, 6) for u in range(i)], columns=["u", "i"])
    counts = Cooccurrence.build(pairs["u"].to_numpy(), pairs["i"].to_numpy())
    assert list(counts.items) == [3, 4, 5]
    head = pairs[pairs["i"] >= 3]
    expected = ease(Cooccurrence.build(head["u"].to_numpy(), head["i"].to_numpy()), 1.0)
    model = ease(counts, 1.0)
    np.testing.assert_array_equal(model.weights, expected.weights)
    task = RetrievalTask.build(pairs, pairs.iloc[:1], np.arange(1, 6), "u", "i")
    scores = model.scorer(task)(slice(None))
    assert np.isneginf(scores[:, :2]).all()  # items 1 and 2: never returned
    assert np.isfinite(scores[:, 2:]).all()


def test_a_judged_item_the_training_rows_never_name_is_a_miss_not_an_error():
    # The only held-out like is of an item nobody had in training (a shop's new product): no
    # fit can return it, so every λ recalls 0 and the first is kept (#32's generated data).
    fitted_on = pd.DataFrame({"user": [1, 1, 2, 2, 3], "item": [10, 20, 10, 30, 20]})
    judged = pd.DataFrame({"user": [1], "item": [99]})
    chosen = choose_on("ease", fitted_on, judged, "user", "item", (5.0, 50.0))
    assert chosen.value == 5.0 and chosen.validation == {5.0: 0.0, 50.0: 0.0}
    assert list(chosen.model.items) == [10, 20, 30]


@pytest.mark.parametrize("cap", [5, 1000])
def test_choices_are_judged_on_a_seeded_sample_of_users_above_the_cap(monkeypatch, cap):
    # At ml-10m's 70,000 users judging everyone made most of the item-item fit's time.
    monkeypatch.setattr(baselines, "TUNING_USERS", cap)
    rng = np.random.default_rng(1)
    fitted_on = pd.DataFrame({"user": rng.integers(0, 40, 500), "item": rng.integers(0, 20, 500)})
    judged = pd.DataFrame({"user": np.arange(40), "item": rng.integers(0, 20, 40)})
    judged_users = record_judged_users(monkeypatch)
    tuned = choose_on("ease", fitted_on, judged, "user", "item", (5.0, 50.0))
    weights = ItemItemWeights.from_dense(tuned.model.items, tuned.model.weights, 20)
    choose_recency_decay(weights, fitted_on, judged, "user", "item", (1.0, 0.5))
    assert len(judged_users[0]) == min(cap, 40) and judged_users[0] <= set(range(40))
    assert judged_users[1] == judged_users[0]  # the same users judge λ and the decay


@pytest.mark.parametrize("band", [2, 3, 1024])
def test_the_cholesky_inverse_mirrors_every_band_of_its_triangle(monkeypatch, band):
    monkeypatch.setattr(baselines, "MIRROR_ROWS", band)
    x = np.random.default_rng(5).random((20, 7))
    gram = x.T @ x + np.eye(7)
    inverse = gram.copy()
    baselines._invert_in_place(inverse)
    np.testing.assert_allclose(inverse, np.linalg.inv(gram), rtol=1e-10, atol=1e-12)
