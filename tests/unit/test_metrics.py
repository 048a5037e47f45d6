import numpy as np
import pytest
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import ndcg_score, roc_auc_score

from models.metrics import (
    binary_metrics,
    log_loss,
    per_user_top_k_metrics,
    roc_auc,
    top_k,
    top_k_metrics,
)


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


# --- top-k retrieval metrics ----------------------------------------------------------------


def brute_force(scores, relevant, k, excluded):
    """recall, ndcg and mrr of one user, computed the obvious way."""
    order = [i for i in np.argsort(-scores, kind="stable") if i not in excluded][:k]
    hits = [item in relevant for item in order]
    dcg = sum(1 / np.log2(rank + 2) for rank, hit in enumerate(hits) if hit)
    idcg = sum(1 / np.log2(rank + 2) for rank in range(min(len(relevant), k)))
    first = next((rank + 1 for rank, hit in enumerate(hits) if hit), None)
    return sum(hits) / len(relevant), dcg / idcg, (1 / first if first else 0.0)


@pytest.mark.parametrize("seed", range(3))
def test_top_k_metrics_match_brute_force_and_scikit_learn_ndcg(seed):
    rng = np.random.default_rng(seed)
    n_users, n_items, ks = 40, 120, (5, 10, 50)
    scores = rng.normal(size=(n_users, n_items))
    excluded = [
        set(rng.choice(n_items, rng.integers(0, 20), replace=False)) for _ in range(n_users)
    ]
    relevant = []
    for user in range(n_users):
        pool = np.setdiff1d(np.arange(n_items), list(excluded[user]))
        relevant.append(rng.choice(pool, rng.integers(1, 15), replace=False))
    mask = np.zeros_like(scores, dtype=bool)
    for user, items in enumerate(excluded):
        mask[user, list(items)] = True

    ranked, ranked_scores = top_k(scores, max(ks), mask)
    per_user = per_user_top_k_metrics(ranked, relevant, ks)
    assert (np.diff(ranked_scores, axis=1) <= 0).all()
    for user in range(n_users):
        assert not set(ranked[user]) & excluded[user]
        keep = ~mask[user]
        truth = np.isin(np.arange(n_items), relevant[user])[keep]
        for k in ks:
            recall, ndcg, mrr = brute_force(scores[user], set(relevant[user]), k, excluded[user])
            assert per_user[f"recall@{k}"][user] == pytest.approx(recall)
            assert per_user[f"ndcg@{k}"][user] == pytest.approx(ndcg)
            assert per_user[f"mrr@{k}"][user] == pytest.approx(mrr)
            reference = ndcg_score([truth], [scores[user][keep]], k=k)
            assert per_user[f"ndcg@{k}"][user] == pytest.approx(reference)
    means = top_k_metrics(ranked, relevant, ks)
    assert means["recall@10"] == pytest.approx(per_user["recall@10"].mean())


def test_top_k_known_values_ties_and_padding():
    ranked, scores = top_k([[0.1, 0.9, 0.5, 0.9]], 3)
    assert ranked.tolist() == [[1, 3, 2]]  # equal scores: lower index first
    ranked, scores = top_k([[0.3, 0.2, 0.1]], 3, exclude=[[False, True, False]])
    assert ranked.tolist() == [[0, 2, -1]] and np.isneginf(scores[0, 2])
    metrics = top_k_metrics([[7, 3, 5]], [np.array([5, 9])], ks=(1, 3))
    assert metrics["recall@1"] == 0 and metrics["recall@3"] == 0.5
    assert metrics["mrr@3"] == pytest.approx(1 / 3)
    assert metrics["ndcg@3"] == pytest.approx((1 / 2) / (1 + 1 / np.log2(3)))


def test_top_k_metrics_refuse_undefined_inputs():
    with pytest.raises(ValueError, match="at least one relevant"):
        top_k_metrics([[1, 2]], [np.array([], dtype=int)], ks=(2,))
    with pytest.raises(ValueError, match="fewer than k"):
        top_k_metrics([[1, 2]], [np.array([1])], ks=(10,))
