"""The baselines a sceptic would name, scored by the same metric code as the models.

Ranking: each item's smoothed positive rate in training. Retrieval: the most popular items, and
the two item-item models a recommender engineer fits first, both a user's binary training
history times an item x item matrix (:class:`ItemItemModel`):

- **EASE** (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019): with X
  the binary user x item matrix, P = (XᵀX + λI)⁻¹ and B = I - P·diag(1/diag(P)), whose diagonal
  is zero; each column of B is the ridge regression of that item on all the others.
- **item-kNN**: cosine similarity of the items' columns of X, each item keeping its ``k`` most
  similar items (zero diagonal).

λ and k are chosen by :func:`fit_tuned` on a slice of the training rows only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal, NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sparse
from scipy.linalg import lapack

from models.evaluation import RetrievalTask, evaluate_retrieval
from models.item_item import ItemItemWeights

# Pseudo-count of the smoothed per-item rate: an item with few ratings stays near the global
# positive rate instead of swinging to 0 or 1.
PRIOR_WEIGHT = 10.0

# The largest catalogue an item-item model holds as a dense matrix. Fitting EASE holds the
# float64 co-occurrence counts and the float64 matrix it inverts in place, then its float32
# weights, 16-20 bytes per entry: up to 2 GB at 10,000 items (16 s to invert on 2 cores),
# beside the Dask workers and the trainer on the same machine; 40,000 items would need 32 GB.
# Above it, both models are fitted on the MAX_DENSE_ITEMS items with the most training
# interactions (the head that top-k lists are mostly drawn from), and every other item is one
# they never return (score -inf).
MAX_DENSE_ITEMS = 10_000

# The grids, as the issue (#29) tuned them: EASE's L2 weight λ and item-kNN's neighbours k.
EASE_L2_GRID = (10.0, 50.0, 100.0, 200.0, 400.0, 800.0, 1600.0)
KNN_NEIGHBOURS_GRID = (20, 50, 100, 200, 400)
# The slice of the training rows the grid is judged on (a seeded random share of rows), and the
# metric it maximises with each user's other training items excluded.
TUNING_SHARE = 0.1
TUNING_SEED = 0
TUNING_K = 10
# The users a choice is judged on, at most: a seeded sample of the judged rows' users above it.
# Judging costs a row of an [users, items] x [items, items] product per user and grid value: at
# ml-10m's shape (70,000 users, 10,000 items) about 90 s for every user (5 s a block of 4,096),
# for each of the item-item fit's 14 values (7 λ, 7 decays) and the gate's 12. 10,000 is more
# users than ml-1m's 6,040, on which these choices were always judged whole, as they still are.
TUNING_USERS = 10_000

ItemItemKind = Literal["ease", "item_knn"]


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


def _binary(histories: Sequence[np.ndarray], items: pd.Index) -> np.ndarray:
    """Dense binary [users, items] float32 rows of raw item-id histories; ids outside ``items``
    are left out (an item the model does not hold says nothing to it)."""
    out = np.zeros((len(histories), len(items)), dtype=np.float32)
    # One lookup for every history: one per user took 4.7 of the 46 s of fitting ml-1m's EASE.
    rows = np.repeat(np.arange(len(histories)), [len(history) for history in histories])
    flat = np.concatenate([np.asarray(h, np.int64) for h in histories] + [np.empty(0, np.int64)])
    columns = items.get_indexer(flat)
    out[rows[columns >= 0], columns[columns >= 0]] = 1.0
    return out


@dataclass(frozen=True)
class Cooccurrence:
    """XᵀX of the binary user x item matrix of training pairs: how many users have both items
    (the diagonal: each item's users). Both models start from it, and a grid search fits every
    grid value from one count. Where there are fewer users than items, X itself is kept too:
    EASE then inverts a users x users matrix instead (:func:`ease`)."""

    items: np.ndarray  # sorted raw item ids of the rows and columns
    counts: np.ndarray  # [items, items] float64
    rows: np.ndarray | None = None  # [users, items] float32 X, where users < items

    @classmethod
    def build(cls, users: np.ndarray, items: np.ndarray) -> Cooccurrence:
        """From raw (user, item) training pairs; duplicates count once. Above MAX_DENSE_ITEMS
        distinct items, only the most interacted-with ones are kept (module docstring)."""
        pairs = pd.DataFrame({"user": users, "item": items}).drop_duplicates()
        popularity = pairs["item"].value_counts(sort=False).sort_index(kind="stable")
        head = popularity.sort_values(ascending=False, kind="stable").index[:MAX_DENSE_ITEMS]
        index = pd.Index(np.sort(head.to_numpy(np.int64)))
        owners, users_seen = pd.factorize(pairs["user"], sort=True)
        columns = index.get_indexer(pairs["item"].to_numpy(np.int64))
        held = columns >= 0
        # Sparse X: XᵀX then costs each user's history length squared, where dense blocks of
        # users cost users x items²: at ml-10m's shape (8,027,963 pairs, 10,000 items) 14 s
        # against 70 s, the same counts.
        x = sparse.csr_matrix(
            (np.ones(held.sum(), np.float32), (owners[held], columns[held])),
            shape=(len(users_seen), len(index)),
        )
        # float32 sums are exact up to 2**24 users.
        counts = (x.T @ x).toarray().astype(np.float64)
        rows = x.toarray() if len(users_seen) < len(index) else None
        return cls(index.to_numpy(), counts, rows)


@dataclass(frozen=True)
class ItemItemModel:
    """A user's scores: their binary training history times ``weights``."""

    items: np.ndarray  # sorted raw item ids of the rows and columns of weights
    weights: np.ndarray  # [items, items] float32; weights[i, j]: how much having i says of j

    def scores(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """[len(histories), len(items)] float32 scores of users given as their training items
        (raw ids). The block is dense: score users in batches (``scorer`` does)."""
        return _binary(histories, pd.Index(self.items)) @ self.weights

    def scorer(self, task: RetrievalTask) -> Callable[[slice], np.ndarray]:
        """``score(rows)`` for :func:`models.evaluation.evaluate_retrieval`: the scores of
        ``task.users[rows]`` against ``task.candidates``, each user's history being the
        training items ``task.seen`` holds. Candidates the model does not hold score -inf."""
        columns = pd.Index(self.items).get_indexer(task.candidates)
        known = columns >= 0

        def score(rows: slice) -> np.ndarray:
            block = self.scores([task.candidates[seen] for seen in task.seen[rows]])
            out = np.full((len(block), len(task.candidates)), -np.inf, dtype=np.float32)
            out[:, known] = block[:, columns[known]]
            return out

        return score


def ease(cooccurrence: Cooccurrence, l2: float) -> ItemItemModel:
    """EASE's B = I - P·diag(1/diag(P)) with P = (XᵀX + l2·I)⁻¹, in float64.

    With fewer users than items, P = (I - Xᵀ(XXᵀ + l2·I)⁻¹X) / l2 (the Woodbury identity):
    a users x users solve instead of an items x items inverse. On ml-latest-small (610 users,
    9,724 items) that is seconds instead of minutes.
    """
    if cooccurrence.rows is not None:
        x = cooccurrence.rows.astype(np.float64)
        inner = x @ x.T
        inner[np.diag_indices_from(inner)] += l2
        inverse = x.T @ np.linalg.solve(inner, x)
        inverse /= -l2
        inverse[np.diag_indices_from(inverse)] += 1.0 / l2
    else:
        inverse = cooccurrence.counts.copy()
        inverse[np.diag_indices_from(inverse)] += l2
        _invert_in_place(inverse)
    # Off the diagonal B_ij = -P_ij / P_jj; on it 1 - P_jj / P_jj = 0, set exactly.
    inverse /= -np.diag(inverse).copy()
    np.fill_diagonal(inverse, 0.0)
    return ItemItemModel(cooccurrence.items, inverse.astype(np.float32))


# Rows of the inverse mirrored at once (:func:`_invert_in_place`): bounds the transposed copy.
MIRROR_ROWS = 1024


def _invert_in_place(matrix: np.ndarray) -> None:
    """Overwrite a symmetric positive definite float64 matrix (C order) with its inverse.

    Cholesky (LAPACK's potrf then potri) instead of NumPy's LU inverse: an EASE fit on
    ml-10m-shaped counts (10,000 items) took 16 s against 39 s, the same weights to 1e-11, and
    no second n x n matrix. potri writes one triangle, mirrored here a band of rows at a time.
    """
    # The transpose is the same matrix in Fortran order, which LAPACK overwrites in place.
    factor, info = lapack.dpotrf(matrix.T, lower=True, overwrite_a=True, clean=False)
    if info == 0:
        _, info = lapack.dpotri(factor, lower=True, overwrite_c=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"LAPACK could not invert the Gram matrix (info {info})")
    # Fortran's lower triangle is this C-ordered matrix's upper one.
    for start in range(0, len(matrix), MIRROR_ROWS):
        band = slice(start, start + MIRROR_ROWS)
        matrix[start + MIRROR_ROWS :, band] = matrix[band, start + MIRROR_ROWS :].T
        block = matrix[band, band]
        lower = np.tril_indices(len(block), -1)
        block[lower] = block.T[lower]


def item_knn(cooccurrence: Cooccurrence, neighbours: int) -> ItemItemModel:
    """Cosine similarity of items over users, each item keeping its ``neighbours`` most similar
    other items: item j scores the summed similarity of the user's items among j's neighbours
    (column j of the weights). Keeping each history item's neighbours instead (rows) recalled
    less on ml-100k u1 (0.197 against 0.209 at recall@10)."""
    norms = np.sqrt(np.diag(cooccurrence.counts))
    similarity = (cooccurrence.counts / norms[:, None] / norms[None, :]).astype(np.float32)
    np.fill_diagonal(similarity, 0.0)
    dropped = len(similarity) - neighbours
    if dropped > 0:
        # The similarity is symmetric: sparsifying its rows and transposing keeps columns' best.
        weakest = np.argpartition(similarity, dropped - 1, axis=1)[:, :dropped]
        np.put_along_axis(similarity, weakest, 0.0, axis=1)
    return ItemItemModel(cooccurrence.items, np.ascontiguousarray(similarity.T))


ITEM_ITEM_MODELS: dict[ItemItemKind, tuple[Callable[..., ItemItemModel], tuple]] = {
    "ease": (ease, EASE_L2_GRID),
    "item_knn": (item_knn, KNN_NEIGHBOURS_GRID),
}


def judged_sample(judged: pd.DataFrame, user: str) -> pd.DataFrame:
    """The rows of ``judged`` of TUNING_USERS of its users at most, a seeded sample above it."""
    users = judged[user].unique()
    if len(users) <= TUNING_USERS:
        return judged
    kept = np.random.default_rng(TUNING_SEED).choice(users, TUNING_USERS, replace=False)
    return judged[judged[user].isin(kept)]


def random_rows(n_rows: int, share: float = TUNING_SHARE, seed: int = TUNING_SEED) -> np.ndarray:
    """A seeded random ``share`` of ``n_rows`` rows, as a boolean mask: the tuning slice."""
    return np.random.default_rng(seed).random(n_rows) < share


class Tuned(NamedTuple):
    model: ItemItemModel
    value: float  # the chosen λ or k
    validation: dict[float, float]  # recall@TUNING_K of the judged rows, per grid value


def choose_on(
    kind: ItemItemKind,
    fitted_on: pd.DataFrame,
    judged: pd.DataFrame,
    user: str,
    item: str,
    grid: Sequence[float] | None = None,
) -> Tuned:
    """The value of ``grid`` (default: the kind's) whose model, fitted on ``fitted_on``, best
    recalls the ``judged`` rows (of TUNING_USERS users at most: :func:`judged_sample`) at
    TUNING_K over the items of both, each user's ``fitted_on`` items excluded; that fit is the
    model returned. A judged item ``fitted_on`` never names is one no fit can return: a miss for
    every value (ties: the earlier value)."""
    fit, default_grid = ITEM_ITEM_MODELS[kind]
    counts = Cooccurrence.build(fitted_on[user].to_numpy(), fitted_on[item].to_numpy())
    catalogue = np.union1d(fitted_on[item].to_numpy(np.int64), judged[item].to_numpy(np.int64))
    task = RetrievalTask.build(fitted_on, judged_sample(judged, user), catalogue, user, item)
    metric = f"recall@{TUNING_K}"
    models, validation = {}, {}
    for value in grid or default_grid:
        models[value] = fit(counts, value)
        validation[value] = evaluate_retrieval(task, models[value].scorer(task), (TUNING_K,))[
            metric
        ]
        best = max(validation, key=validation.get)
        # Keep only the best fit so far: at 10,000 items each is 400 MB.
        models = {best: models[best]}
    return Tuned(models[best], best, validation)


def choose_recency_decay(
    weights: ItemItemWeights,
    fitted_on: pd.DataFrame,
    judged: pd.DataFrame,
    user: str,
    item: str,
    decays: Sequence[float],
) -> tuple[ItemItemWeights, dict[float, float]]:
    """``weights`` with the decay of ``decays`` whose scores of each user's ``fitted_on`` rows
    (oldest first: models/item_item.py) best recall the ``judged`` rows (of TUNING_USERS users
    at most) at TUNING_K, those items excluded (ties: the earlier decay); and the recall of
    every decay."""
    catalogue = np.union1d(fitted_on[item].to_numpy(np.int64), judged[item].to_numpy(np.int64))
    task = RetrievalTask.build(fitted_on, judged_sample(judged, user), catalogue, user, item)
    validation = {}
    dense = weights.densified()  # every judged user, once per decay: one product each
    for decay in decays:
        decayed = replace(dense, recency_decay=decay)

        def score(rows: slice, decayed: ItemItemWeights = decayed) -> np.ndarray:
            return decayed.users_scores(fitted_on, task.users[rows], task.candidates, user, item)

        validation[decay] = evaluate_retrieval(task, score, (TUNING_K,))[f"recall@{TUNING_K}"]
    best = max(validation, key=validation.get)
    return replace(weights, recency_decay=best), validation


def fit_tuned(
    kind: ItemItemKind,
    train: pd.DataFrame,
    relevant: np.ndarray,
    tuning_rows: np.ndarray,
    user: str,
    item: str,
) -> Tuned:
    """An item-item model whose grid value is chosen on the training rows alone, refitted on
    all of them.

    ``train``: the training interactions (columns ``user``, ``item``); ``relevant``: which of
    them count as relevant when held out (e.g. rated >= 4); ``tuning_rows``: the slice the grid
    is judged on (e.g. :func:`random_rows`), fitted on the other rows (:func:`choose_on`). Rows
    outside ``train`` cannot enter the choice.
    """
    relevant, tuning_rows = np.asarray(relevant, bool), np.asarray(tuning_rows, bool)
    chosen = choose_on(kind, train[~tuning_rows], train[tuning_rows & relevant], user, item)
    fit, _ = ITEM_ITEM_MODELS[kind]
    everything = Cooccurrence.build(train[user].to_numpy(), train[item].to_numpy())
    return chosen._replace(model=fit(everything, chosen.value))
