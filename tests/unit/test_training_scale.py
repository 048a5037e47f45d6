"""The embedding L2 applied per step follows the training rows (models.training.scaled_for_rows)."""

import pytest

from models.training import L2_REFERENCE_ROWS, scaled_for_rows
from recflow.config import RankingConfig, RetrievalConfig


@pytest.mark.parametrize("cfg", [RankingConfig(), RetrievalConfig()])
@pytest.mark.parametrize("rows", [1, 64_368, L2_REFERENCE_ROWS])
def test_up_to_the_reference_rows_the_setting_is_applied_as_it_is(cfg, rows):
    assert scaled_for_rows(cfg, rows) == cfg


@pytest.mark.parametrize("cfg", [RankingConfig(), RetrievalConfig(embeddings_l2=8e-5)])
def test_above_them_the_decay_per_epoch_stays_the_reference_one(cfg):
    rows = 8 * L2_REFERENCE_ROWS
    applied = scaled_for_rows(cfg, rows)
    assert applied.embeddings_l2 == pytest.approx(cfg.embeddings_l2 / 8)
    # Per epoch: steps (rows / batch) times the per-step factor, as at the reference size.
    per_epoch = rows / cfg.batch_size * applied.embeddings_l2
    assert per_epoch == pytest.approx(L2_REFERENCE_ROWS / cfg.batch_size * cfg.embeddings_l2)
    assert type(applied) is type(cfg)
    assert applied.model_dump(exclude={"embeddings_l2"}) == cfg.model_dump(
        exclude={"embeddings_l2"}
    )
