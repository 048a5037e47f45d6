"""``recommend``'s second candidate source: an item-item model as it is stored and served.

NumPy, pandas and SciPy's sparse matrices (no TensorFlow): the serving runtime imports it in the
recommend stub, and training's choice of the ordering scores validation users with this same code.

A user's scores are their history times a weight matrix B (EASE's, fitted in ``tasks/train.py``
by ``models/baselines.py``): ``score[j] = sum(w_i * B[i, j] for i in history)``. A history is a
sequence, oldest first (the feature build writes each user's rows in time order; a request's
history comes after what the version saw): an item followed by r more recent ones weighs
``w_i = recency_decay ** r``. At 1 a history is a set, EASE's binary row; below 1 the latest
items say most, which is what predicts a user's next interactions (``recency_decay`` is chosen on
the validation split: docs/training.md, "recommend's item-item source", Recency).
B is dense where it is fitted, but for each target item j only the ``neighbours`` weights
largest in magnitude are kept, so a 10,000-item catalogue serves from 80 MB instead of 400 MB.
The kept weights are stored by row (CSR: row i holds what having item i says of other items),
so scoring a history gathers only its items' rows.

File layout (``item_item.npz``, in an ``ItemItemSource`` and in a recommend version):
``items`` [n] int64, sorted, the encoded ids of B's rows and columns; ``indptr`` [n + 1] int64,
``indices`` [nnz] int32 and ``weights`` [nnz] float32, the kept entries of each row;
``recency_decay`` [] float64 (absent in files written before it: 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sparse

# Users scored at once by :meth:`ItemItemWeights.densified`'s product: bounds its [users, items]
# history block (160 MB at 10,000 items).
DENSE_USER_CHUNK = 4096
# History items weighing less than this (recency_decay ** r) are not gathered: all of them
# together add at most MIN_PAIR_WEIGHT / (1 - recency_decay) of one item's weights, while a
# long history at decay 0.8 would otherwise gather every row of it (an ml-1m user averages 165).
MIN_PAIR_WEIGHT = 1e-4


@dataclass(frozen=True)
class ItemItemWeights:
    items: np.ndarray  # [n] sorted int64 ids of rows and columns
    indptr: np.ndarray  # [n + 1] int64: row i's entries are indptr[i]:indptr[i + 1]
    indices: np.ndarray  # [nnz] int32 column of each kept entry
    weights: np.ndarray  # [nnz] float32
    recency_decay: float = 1.0  # what each later interaction takes off an earlier one's weight
    # The kept weights as one [n, n] float32 matrix, where :meth:`densified` made it: scoring is
    # then one BLAS product instead of a gather (never stored, never served).
    dense: np.ndarray | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_dense(cls, items: np.ndarray, dense: np.ndarray, neighbours: int) -> ItemItemWeights:
        """Keep, for each column j, the ``neighbours`` entries of largest magnitude (the
        diagonal is EASE's zero and never kept)."""
        n = len(items)
        dense = np.array(dense, dtype=np.float32)
        np.fill_diagonal(dense, 0.0)
        dropped = n - neighbours
        if dropped > 0:
            weakest = np.argpartition(np.abs(dense), dropped - 1, axis=0)[:dropped]
            np.put_along_axis(dense, weakest, 0.0, axis=0)
        rows, columns = np.nonzero(dense)  # row-major: already grouped by row
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
        return cls(
            np.asarray(items, np.int64), indptr, columns.astype(np.int32), dense[rows, columns]
        )

    @classmethod
    def load(cls, path: Path) -> ItemItemWeights:
        with np.load(path, allow_pickle=False) as data:
            decay = float(data["recency_decay"]) if "recency_decay" in data.files else 1.0
            return cls(data["items"], data["indptr"], data["indices"], data["weights"], decay)

    def save(self, path: Path) -> None:
        np.savez(
            path,
            items=self.items,
            indptr=self.indptr,
            indices=self.indices,
            weights=self.weights,
            recency_decay=np.float64(self.recency_decay),
        )

    def densified(self) -> ItemItemWeights:
        """The same model scoring through a dense copy of its kept weights: for many users at
        once (training's choices of the decay and the ordering, the gate's recommend metrics:
        every validation user), where gathering row by row costs more than the product. Up to
        400 MB at 10,000 items."""
        n = len(self.items)
        dense = np.zeros((n, n), dtype=np.float32)
        rows = np.repeat(np.arange(n), np.diff(self.indptr))
        dense[rows, self.indices] = self.weights
        return replace(self, dense=dense)

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Row positions of ``ids`` in :attr:`items`; -1 for ids the model does not hold."""
        ids = np.asarray(ids, np.int64)
        if not len(self.items):
            return np.full(ids.shape, -1, dtype=np.int64)
        found = np.searchsorted(self.items, ids).clip(max=len(self.items) - 1)
        return np.where(self.items[found] == ids, found, -1)

    def scores(self, owners: np.ndarray, history: np.ndarray, n_users: int) -> np.ndarray:
        """[n_users, n] float32 scores of users given as (owner row, item position) pairs of
        their histories, each owner's pairs oldest first. Positions < 0 (items the model does
        not hold) add nothing but count as more recent events; an item given twice weighs as
        its latest; items weighing under MIN_PAIR_WEIGHT are left out."""
        n = len(self.items)
        later = _later_events(owners, n_users)
        keep = history >= 0
        cells = owners[keep].astype(np.int64) * n + history[keep]
        # Latest occurrence of each (user, item) first, then one per cell.
        by_cell = np.lexsort((later[keep], cells))
        cells, first = np.unique(cells[by_cell], return_index=True)
        pair_weights = self.recency_decay ** later[keep][by_cell][first].astype(np.float64)
        heavy = pair_weights >= MIN_PAIR_WEIGHT
        cells, pair_weights = cells[heavy], pair_weights[heavy]
        owners, history = cells // max(n, 1), cells % max(n, 1)
        if self.dense is not None:
            return self._dense_scores(owners, history, pair_weights, n_users)
        # Each user's weighted history as a sparse row, times the kept weights: SciPy's sparse
        # product adds up the history items' rows in C. Copying the rows into NumPy arrays and
        # summing them with bincount took twice as long for long histories: an ml-1m user's 822
        # items, 5.5 against 2.9 ms (benchmarks/results/item_item.md).
        histories = sparse.csr_matrix(
            (pair_weights.astype(np.float32), (owners, history)), shape=(n_users, n)
        )
        return (histories @ self._rows).toarray()

    @cached_property
    def _rows(self) -> sparse.csr_matrix:
        """The kept weights as SciPy's [n, n] CSR matrix, on this object's arrays (no copy)."""
        n = len(self.items)
        return sparse.csr_matrix((self.weights, self.indices, self.indptr), shape=(n, n))

    def _dense_scores(
        self, owners: np.ndarray, history: np.ndarray, pair_weights: np.ndarray, n_users: int
    ) -> np.ndarray:
        """:meth:`scores` of the weighted (owner, position) pairs through :attr:`dense`."""
        out = np.empty((n_users, len(self.items)), dtype=np.float32)
        for start in range(0, n_users, DENSE_USER_CHUNK):
            block = np.zeros((min(DENSE_USER_CHUNK, n_users - start), len(self.items)), np.float32)
            mine = (owners >= start) & (owners < start + len(block))
            block[owners[mine] - start, history[mine]] = pair_weights[mine]
            out[start : start + len(block)] = block @ self.dense
        return out

    def catalogue_scores(
        self, owners: np.ndarray, history: np.ndarray, n_users: int, catalogue: np.ndarray
    ) -> np.ndarray:
        """[n_users, len(catalogue)] scores of users given as (owner row, item id) pairs of
        their histories, for the items ``catalogue`` lists (ids). A catalogue item the model
        does not hold scores 0: nothing in any history speaks for or against it."""
        if not len(self.items):
            return np.zeros((n_users, len(catalogue)), dtype=np.float32)
        scores = self.scores(owners, self.positions(history), n_users)
        columns = self.positions(catalogue)
        return np.where(columns >= 0, scores[:, np.maximum(columns, 0)], 0.0).astype(np.float32)

    def users_scores(
        self, history: pd.DataFrame, users: np.ndarray, catalogue: np.ndarray, user: str, item: str
    ) -> np.ndarray:
        """[len(users), len(catalogue)] scores of ``users`` (sorted ids) from their rows of
        ``history`` (columns ``user``, ``item``; each user's rows oldest first)."""
        rows = history[history[user].isin(users)]
        owners = np.searchsorted(users, rows[user].to_numpy())
        return self.catalogue_scores(owners, rows[item].to_numpy(np.int64), len(users), catalogue)


def _later_events(owners: np.ndarray, n_users: int) -> np.ndarray:
    """For each pair, how many pairs of the same owner come after it (0: the owner's latest)."""
    grouped = np.argsort(owners, kind="stable")
    ends = np.cumsum(np.bincount(owners, minlength=n_users))
    later = np.empty(len(owners), dtype=np.int64)
    later[grouped] = ends[owners[grouped]] - 1 - np.arange(len(owners))
    return later
