"""Exact top-k search over a trained two-tower model, in TensorFlow: the reference the
retrieval endpoint (serving/runtime.py, precomputed embeddings) is compared with."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np
import pandas as pd

from models.evaluation import RetrievalTask
from models.metrics import top_k
from models.retrieval import QueryEncoder
from recflow.artifacts import RetrievalModel
from recflow.vocabulary import EMBEDDING, RAW_ITEM_ID


class ExactRetriever:
    """User feature rows -> query embeddings -> best catalogue items."""

    def __init__(self, queries: QueryEncoder, items: pd.DataFrame):
        self.queries = queries
        self.item_ids = items[RAW_ITEM_ID].to_numpy(np.int64)
        self.vectors = np.stack(items[EMBEDDING].to_numpy()).astype(np.float32)
        self._positions = pd.Index(self.item_ids)

    @classmethod
    def load(cls, model: RetrievalModel) -> ExactRetriever:
        return cls(QueryEncoder.load(model), pd.read_parquet(model.item_embeddings))

    def top_k(
        self,
        user_rows: pd.DataFrame,
        k: int,
        exclude: Sequence[Collection[int]] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw item ids and scores [rows, k], best first; ``exclude``: raw ids per row.

        Rows with fewer than ``k`` items left after exclusion are padded with id -1, score -inf.
        """
        scores = self.queries.encode(user_rows) @ self.vectors.T
        mask = None
        if exclude is not None:
            mask = np.zeros(scores.shape, dtype=bool)
            for row, ids in enumerate(exclude):
                positions = self._positions.get_indexer(np.fromiter(ids, np.int64))
                mask[row, positions[positions >= 0]] = True
        best, best_scores = top_k(scores, k, mask)
        ids = np.where(best >= 0, self.item_ids[best], -1)
        return ids, best_scores


def record_judged_users(monkeypatch) -> list[set]:
    """Patch ``RetrievalTask.build`` to record, call by call, the users whose validation
    positives a choice is judged on; the tasks are built as before."""
    judged: list[set] = []
    build = RetrievalTask.build

    def recorded(train, valid_positives, candidates, user, item):
        judged.append(set(valid_positives[user]))
        return build(train, valid_positives, candidates, user, item)

    monkeypatch.setattr(RetrievalTask, "build", staticmethod(recorded))
    return judged
