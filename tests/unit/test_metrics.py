import numpy as np
import pytest
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from models.metrics import binary_metrics, log_loss, roc_auc


@pytest.mark.parametrize("seed", range(5))
def test_auc_and_logloss_match_scikit_learn_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 2000)
    scores = np.round(rng.random(2000) * 0.5 + labels * 0.3, 2)  # coarse: many ties
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    probabilities = np.clip(scores, 0.01, 0.99)
    assert log_loss(labels, probabilities) == pytest.approx(sk_log_loss(labels, probabilities))


def test_auc_known_values():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5


def test_auc_refuses_undefined_inputs():
    with pytest.raises(ValueError, match="both positive and negative"):
        roc_auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="shape"):
        roc_auc([0, 1, 1], [0.1, 0.2])


def test_binary_metrics_has_both():
    assert set(binary_metrics([0, 1], [0.2, 0.7])) == {"auc", "logloss"}
