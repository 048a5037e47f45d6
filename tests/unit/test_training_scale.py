"""What training applies follows the training rows: the embedding L2 per step
(models.training.scaled_for_rows), the ranker's batch (models.training.batch_for_rows) and the
learning rate over the epoch budget's steps (models.training.optimizer_for)."""

import pytest

from models.training import REFERENCE_ROWS, batch_for_rows, optimizer_for, scaled_for_rows
from recflow.config import RankingConfig, RetrievalConfig


@pytest.mark.parametrize("cfg", [RankingConfig(), RetrievalConfig()])
@pytest.mark.parametrize("rows", [1, 64_368, REFERENCE_ROWS])
def test_up_to_the_reference_rows_the_setting_is_applied_as_it_is(cfg, rows):
    assert scaled_for_rows(cfg, rows) == cfg


@pytest.mark.parametrize("cfg", [RankingConfig(), RetrievalConfig(embeddings_l2=8e-5)])
def test_above_them_the_decay_per_epoch_stays_the_reference_one(cfg):
    rows = 8 * REFERENCE_ROWS
    applied = scaled_for_rows(cfg, rows)
    assert applied.embeddings_l2 == pytest.approx(cfg.embeddings_l2 / 8)
    # Per epoch at the setting's batch: steps (rows / batch) times the per-step factor, as at
    # the reference size (the ranker's batch grows past it: batch_for_rows, below).
    per_epoch = rows / cfg.batch_size * applied.embeddings_l2
    assert per_epoch == pytest.approx(REFERENCE_ROWS / cfg.batch_size * cfg.embeddings_l2)
    assert type(applied) is type(cfg)
    assert applied.model_dump(exclude={"embeddings_l2"}) == cfg.model_dump(
        exclude={"embeddings_l2"}
    )


# (training rows, the default ranker's batch on them)
DEFAULT_BATCHES = [
    (80_000, 512),
    (199_999, 512),
    (200_000, 1024),
    (400_000, 2048),
    (802_407, 4096),  # ml-1m's training rows
    (1_600_000, 8192),
    (10**7, 8192),
]


@pytest.mark.parametrize(("rows", "batch"), DEFAULT_BATCHES)
def test_the_rankers_batch_doubles_with_each_doubling_of_the_rows_up_to_its_cap(rows, batch):
    cfg = RankingConfig()
    assert batch_for_rows(cfg.batch_size, cfg.max_batch_size, rows) == batch


def test_a_cap_at_the_batch_keeps_it_and_a_larger_setting_is_not_cut():
    assert batch_for_rows(512, 512, 10**7) == 512
    assert batch_for_rows(16384, 8192, 10**7) == 16384


@pytest.mark.parametrize("cfg", [RankingConfig, RetrievalConfig])
def test_a_cosine_schedule_falls_from_the_rate_to_zero_at_the_end_of_the_epoch_budget(cfg):
    optimizer = optimizer_for(
        cfg(learning_rate=0.004, learning_rate_schedule="cosine", epochs=4), steps_per_epoch=10
    )
    rate = optimizer.learning_rate
    # Halfway through the 40 steps, half the rate: a half cosine, not a per-epoch step.
    assert [float(rate(step)) for step in (0, 20, 40)] == pytest.approx([0.004, 0.002, 0.0])
    assert float(rate(10)) == pytest.approx(0.002 * (1 + 2**-0.5))


def test_a_constant_schedule_keeps_the_rate_and_the_optimizer():
    optimizer = optimizer_for(RankingConfig(optimizer="sgd", learning_rate=0.01), 10)
    assert optimizer.get_config()["name"] == "SGD"
    assert float(optimizer.learning_rate) == pytest.approx(0.01)
