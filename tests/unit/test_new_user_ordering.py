"""recommend's weights for new users who send a history, chosen on validation users scored as
new (models.composed.choose_new_user_ordering), on a catalogue whose answers are known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.composed import choose_new_user_ordering
from models.evaluation import RetrievalTask
from models.item_item import ItemItemWeights
from recflow.artifacts import OrderingPolicy
from recflow.config import OrderingConfig

ITEMS = np.arange(10, dtype=np.int64)
USERS = np.arange(1, 41, dtype=np.int64)
# Item 0 points to 1 and 2, item 5 to 6 and 7; item 8 to nothing.
DENSE = np.zeros((10, 10), dtype=np.float32)
DENSE[0, [1, 2]] = 1.0
DENSE[5, [6, 7]] = 1.0
WEIGHTS = ItemItemWeights.from_dense(ITEMS, DENSE, neighbours=10)
# Every user interacted with 0, then 5, then 8, in that order.
TRAINED = [0, 5, 8]
HISTORY = pd.DataFrame({"u": np.repeat(USERS, 3), "i": np.tile(TRAINED, len(USERS))})
# What the unseen id's query and ranker row say of every item: 3 and 4 first.
PRIOR = np.array([0.0, 0.1, 0.1, 0.9, 0.8, 0.0, 0.2, 0.2, 0.0, 0.3], dtype=np.float32)
CFG = OrderingConfig(
    ranker_weights=(0.0, 0.5),
    item_item_weights=(0.0, 0.5, 1.0),
    monitor="recall@2",
    new_user_histories=(1,),
)
PAIRS = [OrderingPolicy(ranker_weight=r, item_item_weight=i) for r, i in CFG.weight_pairs(True)]


def chosen(relevant: list[int], cfg: OrderingConfig = CFG) -> OrderingPolicy:
    task = RetrievalTask(
        users=USERS,
        candidates=ITEMS,
        seen=tuple(np.array(TRAINED) for _ in USERS),
        relevant=tuple(np.array(relevant) for _ in USERS),
    )
    policy = choose_new_user_ordering(
        task, HISTORY, WEIGHTS, PRIOR, PRIOR, PAIRS, n_candidates=3, cfg=cfg, columns=("u", "i")
    )
    assert policy is not None and set(policy.validation) == {p.key for p in PAIRS}
    return policy


def test_what_the_first_events_point_to_is_chosen_over_the_prior():
    # The first event (0) points to the relevant 1 and 2; the latest ones (5, 8) would not.
    policy = chosen([1, 2])
    assert policy.validation[policy.key] == 1.0 and policy.item_item_weight > 0
    assert policy.validation["ranker 0, item-item 0"] == 0.0  # the prior alone


def test_the_prior_is_chosen_where_the_history_points_elsewhere():
    policy = chosen([3, 4])
    assert policy.validation[policy.key] == 1.0 and policy.item_item_weight < 1
    assert policy.validation["ranker 0, item-item 1"] == 0.0  # the history alone


def test_users_with_fewer_interactions_than_every_length_leave_no_choice():
    assert (
        choose_new_user_ordering(
            RetrievalTask(USERS, ITEMS, (np.array(TRAINED),) * 40, (np.array([1]),) * 40),
            HISTORY,
            WEIGHTS,
            PRIOR,
            PRIOR,
            PAIRS,
            n_candidates=3,
            cfg=CFG.model_copy(update={"new_user_histories": (4,)}),
            columns=("u", "i"),
        )
        is None
    )


@pytest.mark.parametrize("sample", [5, 40])
def test_the_sample_bounds_the_users_scored(sample: int, caplog: pytest.LogCaptureFixture):
    caplog.set_level("INFO", logger="models.composed")
    chosen([1, 2], CFG.model_copy(update={"new_user_sample": sample}))
    assert f"of {sample} users scored as new" in caplog.text
