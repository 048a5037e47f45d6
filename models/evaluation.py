"""Top-k evaluation over the whole catalogue, shared by the two-tower model and its baseline.

For each validation user with at least one relevant item (a validation positive the user did
not interact with in training), every catalogue item the user did not interact with in training
is scored, the top ``max(ks)`` are kept (exact search) and recall/ndcg/mrr@k are computed by
models/metrics.py. Items are identified by their encoded id; catalogue items that share one
(the out-of-vocabulary id of items never seen in training) are one candidate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from models.metrics import padded, per_user_top_k_metrics, top_k

# Users scored at once: bounds the dense [users, catalogue] score matrix.
USER_BATCH = 1024
# ... and so do its cells, for large catalogues: at 1M items 1,024 users' float32 scores, their
# copy, the negation and top_k's int64 positions come to about 20 GiB (issue #33's 1M-item
# runs); 2^28 cells keep them near 5 GiB, and catalogues up to 262,144 items at 1,024 users.
MAX_BATCH_CELLS = 2**28


def user_batch(items: int) -> int:
    """Users to score at once against a catalogue of ``items``."""
    return max(1, min(USER_BATCH, MAX_BATCH_CELLS // max(items, 1)))


@dataclass(frozen=True)
class RetrievalTask:
    """Who is evaluated, against which candidates, with what excluded and what relevant.

    ``users``: encoded ids of the evaluated users. ``candidates``: sorted encoded item ids.
    ``seen``/``relevant``: per user, positions in ``candidates``.
    """

    users: np.ndarray
    candidates: np.ndarray
    seen: tuple[np.ndarray, ...]
    relevant: tuple[np.ndarray, ...]

    @classmethod
    def build(
        cls,
        train: pd.DataFrame,
        valid_positives: pd.DataFrame,
        candidates: np.ndarray,
        user: str,
        item: str,
    ) -> RetrievalTask:
        candidates = np.unique(candidates)

        def positions(frame: pd.DataFrame) -> pd.Series:
            found = frame[frame[item].isin(candidates)]
            pos = np.searchsorted(candidates, found[item].to_numpy())
            return pd.Series(pos, index=found[user].to_numpy()).groupby(level=0).unique()

        seen = positions(train)
        relevant = positions(valid_positives)
        kept = {
            u: np.setdiff1d(items, seen.get(u, []), assume_unique=True)
            for u, items in relevant.items()
        }
        users = np.array(sorted(u for u, items in kept.items() if len(items)), dtype=np.int64)
        empty = np.empty(0, dtype=np.int64)
        return cls(
            users=users,
            candidates=candidates,
            seen=tuple(np.asarray(seen.get(u, empty), dtype=np.int64) for u in users),
            relevant=tuple(kept[u].astype(np.int64) for u in users),
        )

    def seen_mask(self, rows: slice | np.ndarray) -> np.ndarray:
        """[users, candidates] True where ``self.users[rows]`` interacted in training."""
        seen = [self.seen[row] for row in np.arange(len(self.users))[rows]]
        mask = np.zeros((len(seen), len(self.candidates)), dtype=bool)
        for row, items in enumerate(seen):
            mask[row, items] = True
        return mask


def evaluate_retrieval(
    task: RetrievalTask,
    score: Callable[[slice], np.ndarray],
    ks: Sequence[int],
) -> dict[str, float]:
    """Mean top-k metrics over ``task.users``.

    ``score(rows)`` returns the scores of ``task.users[rows]`` against every candidate, shaped
    [users in rows, len(task.candidates)].
    """
    if not len(task.users):
        raise ValueError("no validation user has a relevant item: top-k metrics are undefined")
    per_user: dict[str, list[np.ndarray]] = {}
    batch = user_batch(len(task.candidates))
    for start in range(0, len(task.users), batch):
        rows = slice(start, start + batch)
        ranked, _ = top_k(score(rows), max(ks), task.seen_mask(rows))
        # A catalogue of fewer than max(ks) candidates (a small shop's) ranks them all.
        ranked = padded(ranked, max(ks))
        for name, values in per_user_top_k_metrics(ranked, task.relevant[rows], ks).items():
            per_user.setdefault(name, []).append(values)
    return {name: float(np.concatenate(parts).mean()) for name, parts in per_user.items()}
