"""The baselines a sceptic would name, scored by the same metric code as the models.

Ranking: each item's smoothed positive rate in training. Retrieval: the most popular items.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# Pseudo-count of the smoothed per-item rate: an item with few ratings stays near the global
# positive rate instead of swinging to 0 or 1.
PRIOR_WEIGHT = 10.0


def item_mean_scores(train: pd.DataFrame, rows: pd.DataFrame, item: str, target: str) -> np.ndarray:
    """Smoothed per-item mean of ``target`` in ``train``, as a score for each row of ``rows``."""
    prior = float(train[target].mean())
    stats = train.groupby(item)[target].agg(["sum", "count"])
    rate = (stats["sum"] + prior * PRIOR_WEIGHT) / (stats["count"] + PRIOR_WEIGHT)
    return rows[item].map(rate).fillna(prior).to_numpy(dtype=np.float64)


def popularity_scores(positive_items: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """How often each candidate item is a training positive: most popular ranks first."""
    counts = pd.Series(np.asarray(positive_items)).value_counts()
    return counts.reindex(candidates, fill_value=0).to_numpy(dtype=np.float64)
