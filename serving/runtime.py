"""What runs inside Triton's Python backend, as plain classes testable without Triton.

Each endpoint is one Python-backend model whose version directory holds everything it needs,
so a version is always served as a consistent whole (docs/serving.md explains why this is not
a Triton ensemble). Everything a request needs was computed when the version was exported
(serving/export.py), so a stub imports numpy, pandas and onnxruntime and nothing of
TensorFlow, Merlin, NVTabular, Prefect or Dask:

* ``ranking`` (:class:`RankingPipeline`): ``user_id``/``item_id`` -> the encoded feature rows
  of those ids (:class:`FeatureRows`) -> the ranker as ONNX (:class:`OnnxModel`).
* ``retrieval`` (:class:`RetrievalStage`): ``user_id`` -> the user's precomputed query
  embedding -> top-k over the item embeddings, optionally without the user's seen items: exact,
  or from the version's approximate index where it has one (a catalogue of at least
  ``serving.ann_min_items`` items, serving/item_index.py).
* ``recommend`` (:class:`RecommendStage`): for all users of a request at once, the
  ``retrieval_candidates`` best unseen items by retrieval and as many more by the item-item
  model (:class:`ItemItemScores`, where the version has one), one ranking call over all those
  candidates, then the top k by ``models.ordering.final_order`` of the retrieval, ranking and
  item-item scores under the version's ``ordering`` policy (chosen on validation in training).
* ``similar`` (:class:`SimilarStage`): item -> nearest items by embedding cosine (exact, or
  from the same index).

Ids the export did not know (cold users and items) get the feature row, and the query
embedding, that the fitted workflow gives an id it has never seen. Where the dataset's ids are
strings, :func:`load_stage` wraps each stage in :class:`ExternalIdStage`: requests carry the
strings (Triton ``TYPE_STRING``), answers name the items by theirs.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from models.item_item import ItemItemWeights
from models.metrics import top_k
from models.ordering import candidate_positions, final_order, gather
from recflow.artifacts import OrderingPolicy, VersionConfig, names_file
from recflow.external_ids import EXTERNAL_ID, internal_ids
from recflow.trust import require_trusted
from recflow.vocabulary import (
    EMBEDDING,
    EXCLUDE_SEEN_INPUT,
    HISTORY_INPUT,
    HISTORY_PADDING,
    HISTORY_UNKNOWN_OUTPUT,
    ITEM_ID,
    ITEM_IDS_OUTPUT,
    K_INPUT,
    RANKING,
    RAW_ITEM_ID,
    RECOMMEND,
    RETRIEVAL,
    SCORE_OUTPUT,
    SCORES_OUTPUT,
    SIMILAR,
    USER_ID,
)
from serving.item_index import ITEM_INDEX, ItemIndex

# Files of a version directory (docs/layout.md), written by serving/export.py.
USER_ROWS, ITEM_ROWS = "user_rows.npz", "item_rows.npz"
QUERIES = "queries.npz"
RANKER = "ranking.onnx"
ITEM_EMBEDDINGS = "item_embeddings.parquet"
# recommend only, where the candidate has an item-item source (models/item_item.py).
ITEM_ITEM = "item_item.npz"
SEEN = "seen.parquet"
# recflow.artifacts.VersionConfig; versions exported before it was named so have ranking.json.
VERSION_CONFIG, EARLIER_VERSION_CONFIG = "version.json", "ranking.json"
# Only where the dataset's ids are strings: each item's int64 id next to its string.
ITEM_NAMES = names_file(ITEM_ID)
# Keys of the .npz files: the known raw ids; the query embeddings (QUERIES only). Every other
# array of a rows file is one model tensor, one row per id plus the unknown ids' row last.
IDS, VECTORS = "ids", "vectors"
# A list column reaches the model as Merlin's ``__values``/``__offsets`` pair; the rows files
# keep it padded (``__values``, [rows, width]) with its lengths (``__lengths``, [rows, 1]).
VALUES, OFFSETS, LENGTHS = "__values", "__offsets", "__lengths"
# Imported by no stub; the Triton test reads the list each stub logs (triton_model.py).
HEAVY_MODULES = ("tensorflow", "merlin", "nvtabular", "prefect", "dask")


class Stage(Protocol):
    """What an endpoint runs for a request, as the Triton stub (serving/triton_model.py) drives
    it: every class of :data:`STAGES`, and :class:`ExternalIdStage` around one."""

    # Whether the stub may answer several requests of one batch with one call: a stage whose
    # requests each carry their own k (top-k endpoints) may not.
    merge_requests: bool

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def warm_up(self) -> None: ...


class BadRequest(ValueError):
    """Input the model cannot serve; Triton reports it as INVALID_ARG."""


def heavy_modules() -> list[str]:
    """Which of :data:`HEAVY_MODULES` this process has imported."""
    return [name for name in HEAVY_MODULES if name in sys.modules]


def model_inputs(tensors: dict[str, np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
    """The model's inputs ``names`` from padded rows: [rows] scalars, ``__values``/``__offsets``."""
    inputs = {}
    for name in names:
        if name.endswith(VALUES):
            padded = tensors[name]
            lengths = tensors[name.removesuffix(VALUES) + LENGTHS].reshape(-1)
            inputs[name] = padded[np.arange(padded.shape[1]) < lengths[:, None]]
        elif name.endswith(OFFSETS):
            lengths = tensors[name.removesuffix(OFFSETS) + LENGTHS].reshape(-1)
            inputs[name] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        else:
            inputs[name] = tensors[name].reshape(-1)
    return inputs


class KnownIds:
    """Row positions of raw ids in an export's tables; an unknown id gets the last row."""

    def __init__(self, ids: np.ndarray):
        self.index = pd.Index(ids)

    def known(self, ids: np.ndarray) -> np.ndarray:
        return self.index.get_indexer(ids.reshape(-1).astype(np.int64)) >= 0

    def rows(self, ids: np.ndarray) -> np.ndarray:
        rows = self.index.get_indexer(ids.reshape(-1).astype(np.int64))
        rows[rows < 0] = len(self.index)
        return rows


def _load_npz(path: Path) -> tuple[KnownIds, dict[str, np.ndarray]]:
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    return KnownIds(arrays.pop(IDS)), arrays


class FeatureRows:
    """The model tensors of (user, item) pairs, gathered from the rows computed at export."""

    def __init__(self, version_dir: Path):
        self.sides = [_load_npz(version_dir / name) for name in (USER_ROWS, ITEM_ROWS)]

    def __call__(self, user_ids: np.ndarray, item_ids: np.ndarray) -> dict[str, np.ndarray]:
        if user_ids.size != item_ids.size:
            raise BadRequest("user_id and item_id must have the same number of rows")
        tensors = {}
        for ids, (known, arrays) in zip((user_ids, item_ids), self.sides, strict=True):
            rows = known.rows(ids)
            tensors |= {name: array[rows] for name, array in arrays.items()}
        return tensors


class OnnxModel:
    """A model exported to ONNX, run by onnxruntime over :func:`model_inputs` of its inputs."""

    # onnxruntime's names of the input types the exports use.
    _DTYPES = {
        "tensor(int64)": np.int64,
        "tensor(int32)": np.int32,
        "tensor(float)": np.float32,
        "tensor(double)": np.float64,
    }

    def __init__(self, path: Path):
        import onnxruntime as ort

        options = ort.SessionOptions()
        # One thread per session: several endpoints (and instances) share a few cores, and a
        # session that spreads one request over all of them slows every other one down.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = {spec.name: self._DTYPES[spec.type] for spec in self.session.get_inputs()}

    def __call__(self, tensors: dict[str, np.ndarray]) -> np.ndarray:
        feed = {
            name: np.ascontiguousarray(value, dtype=self.inputs[name])
            for name, value in model_inputs(tensors, list(self.inputs)).items()
        }
        return self.session.run(None, feed)[0].astype(np.float32)


def version_config(version_dir: Path) -> VersionConfig:
    config = version_dir / VERSION_CONFIG
    if not config.is_file():
        config = version_dir / EARLIER_VERSION_CONFIG
    return VersionConfig.model_validate_json(config.read_text())


class RankingPipeline:
    """The ``ranking`` endpoint: feature rows of the pairs -> the ranker (ONNX)."""

    merge_requests = True

    def __init__(self, version_dir: Path):
        version_dir = require_trusted(version_dir)
        self.features = FeatureRows(version_dir)
        self.model = OnnxModel(version_dir / RANKER)

    def scores(self, user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        tensors = self.features(user_ids, item_ids)
        if not user_ids.size:
            # The converted graph divides by the row count (onnxruntime: "Integer division by
            # zero"); recommend asks for no rows when a user has no unseen candidates left.
            return np.empty(0, np.float32)
        return self.model(tensors).reshape(-1)

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {SCORE_OUTPUT: self.scores(inputs[USER_ID], inputs[ITEM_ID]).reshape(-1, 1)}

    def warm_up(self) -> None:
        self.scores(np.zeros(1, np.int64), np.zeros(1, np.int64))


def _request_k(inputs: dict[str, np.ndarray], rows: int, max_k: int) -> int:
    """The one ``k`` of a request: every row must ask for the same, within ``1..max_k``."""
    ks = np.unique(inputs[K_INPUT].reshape(-1))
    if len(ks) != 1 or len(inputs[K_INPUT].reshape(-1)) != rows:
        raise BadRequest(f"k must be given once per row and be equal for all rows, got {ks}")
    if not 1 <= int(ks[0]) <= max_k:
        raise BadRequest(f"k must be between 1 and {max_k}, got {int(ks[0])}")
    return int(ks[0])


class RequestHistory(NamedTuple):
    """The ``history`` input of a request, as catalogue positions: each known item id with the
    row it belongs to, each row's in the request's order (most recent last; duplicates kept:
    an item counts as its latest), and per row how many ids the version does not know
    (ignored, and answered as ``history_unknown``)."""

    owners: np.ndarray
    positions: np.ndarray
    unknown: np.ndarray

    @classmethod
    def none(cls, rows: int) -> RequestHistory:
        empty = np.empty(0, np.int64)
        return cls(empty, empty, np.zeros(rows, np.int64))

    @classmethod
    def read(
        cls, inputs: dict[str, np.ndarray], rows: int, limit: int, catalogue: pd.Index
    ) -> RequestHistory:
        """From ``inputs`` (absent: no history); raises :class:`BadRequest` for a history of
        the wrong shape or type, or longer than ``limit`` items."""
        if HISTORY_INPUT not in inputs:
            return cls.none(rows)
        history = inputs[HISTORY_INPUT]
        if history.ndim != 2 or history.shape[0] != rows:
            raise BadRequest(
                f"history must be one row of item ids per user ([{rows}, n]), got {history.shape}"
            )
        if history.dtype.kind not in "iu":
            raise BadRequest(f"history must hold the dataset's item ids, got {history.dtype}")
        given = history != HISTORY_PADDING
        lengths = given.sum(axis=1)
        if lengths.max(initial=0) > limit:
            raise BadRequest(
                f"a history holds at most {limit} items (serving.max_history), got "
                f"{int(lengths.max())}"
            )
        owners = np.nonzero(given)[0]
        positions = catalogue.get_indexer(history[given].astype(np.int64))
        known = positions >= 0
        unknown = np.bincount(owners[~known], minlength=rows).astype(np.int64)
        return cls(owners[known], positions[known], unknown)


def item_embeddings(version_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Raw item ids [items] and their embeddings [items, dim] from the retrieval export.

    Read as one flat Arrow array, not a pandas column of one small array per item: at 1M items
    those million objects left about 90 MB in the process's heap after they were freed."""
    items = pq.read_table(version_dir / ITEM_EMBEDDINGS, columns=[RAW_ITEM_ID, EMBEDDING])
    ids = items.column(RAW_ITEM_ID).to_numpy().astype(np.int64)
    # One copy out of Arrow's buffers, chunk by chunk (no combined column beside it).
    chunks = [chunk.flatten().to_numpy() for chunk in items.column(EMBEDDING).chunks]
    values = np.concatenate(chunks or [np.empty(0, np.float32)]).astype(np.float32, copy=False)
    return ids, values.reshape(len(ids), -1)


class ItemVectors:
    """A version's item embeddings by catalogue position, and its approximate index where the
    export wrote one (a catalogue of at least ``serving.ann_min_items`` items; None: exact
    search). With an index the vectors are read back from it, so a stub holds them once: 256 MB
    at 1M items, where the recommend stub measured 1,050 MiB with both copies."""

    def __init__(self, version_dir: Path):
        path = version_dir / ITEM_INDEX
        self.index = ItemIndex(path) if path.is_file() else None
        self._matrix: np.ndarray | None = None
        if self.index is None:
            self.item_ids, self._matrix = item_embeddings(version_dir)
        else:
            # Only the ids: the embeddings column's Arrow buffers and its copy, unused beside
            # the index, were most of a 1M-item stage's peak (benchmarks/results/catalogue.md).
            ids = pq.read_table(version_dir / ITEM_EMBEDDINGS, columns=[RAW_ITEM_ID])
            self.item_ids = ids.column(RAW_ITEM_ID).to_numpy().astype(np.int64)

    def __call__(self, positions: np.ndarray | None = None) -> np.ndarray:
        """The embeddings [*positions.shape, dim] of catalogue ``positions``, or of every item."""
        if self.index is not None:
            return self.index.vectors(positions)
        return self._matrix if positions is None else self._matrix[positions]


def _ranked(ids: np.ndarray, scores: np.ndarray) -> dict[str, np.ndarray]:
    return {ITEM_IDS_OUTPUT: ids.astype(np.int64), SCORES_OUTPUT: scores.astype(np.float32)}


def _unknown(history: RequestHistory) -> dict[str, np.ndarray]:
    return {HISTORY_UNKNOWN_OUTPUT: history.unknown.reshape(-1, 1)}


class RetrievalStage:
    """The ``retrieval`` endpoint: top-k of item embeddings for each user's query, exact or
    from the version's approximate index."""

    merge_requests = False

    def __init__(self, version_dir: Path, seen: pd.DataFrame | None = None):
        """``seen`` (``user_id``, ``item_id``, each user's pairs in time order) replaces the
        version's ``seen.parquet``: the gate scores a version in-process with only the training
        split's pairs as seen, since it judges the held-out ones."""
        version_dir = require_trusted(version_dir)
        self.known_users, queries = _load_npz(version_dir / QUERIES)
        self.queries = queries[VECTORS]
        self.vectors = ItemVectors(version_dir)
        self.item_ids, self.index = self.vectors.item_ids, self.vectors.index
        if seen is None:
            seen = pd.read_parquet(version_dir / SEEN)
        seen = seen.sort_values(USER_ID, kind="stable")
        self._positions = pd.Index(self.item_ids)
        self._seen = self._positions.get_indexer(seen[ITEM_ID].to_numpy(np.int64))
        self._seen_users = seen[USER_ID].to_numpy(np.int64)
        self.config = version_config(version_dir)

    def seen(self, user_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The users' seen items as (row in ``user_ids``, catalogue position) pairs; items
        outside the catalogue are left out."""
        starts = np.searchsorted(self._seen_users, user_ids, side="left")
        ends = np.searchsorted(self._seen_users, user_ids, side="right")
        owners = np.repeat(np.arange(len(user_ids)), ends - starts)
        positions = np.concatenate(
            [self._seen[start:end] for start, end in zip(starts, ends, strict=True)]
            or [np.empty(0, np.int64)]
        )
        return owners[positions >= 0], positions[positions >= 0]

    def interactions(
        self, user_ids: np.ndarray, history: RequestHistory | None = None, exported: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """(row in ``user_ids``, catalogue position) of every item the users interacted with:
        in the exported data (unless not ``exported``) and, with a ``history``, in the
        request's. Each row's pairs come oldest first (the exported ones in time order, then the
        history's, which are more recent): recommend's item-item source weighs them by recency.
        A pair may repeat."""
        owners, positions = self.seen(user_ids) if exported else (np.empty(0, np.int64),) * 2
        if history is None:
            return owners, positions
        return (
            np.concatenate([owners, history.owners]),
            np.concatenate([positions, history.positions]),
        )

    def mask(self, rows: int, interactions: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """[rows, items]: True at each (row, position) of ``interactions``."""
        mask = np.zeros((rows, len(self.item_ids)), dtype=bool)
        mask[interactions] = True
        return mask

    def history(self, inputs: dict[str, np.ndarray], rows: int) -> RequestHistory:
        return RequestHistory.read(inputs, rows, self.config.max_history, self._positions)

    def query(self, user_ids: np.ndarray) -> np.ndarray:
        """Query embeddings [users, dim], as the query tower computed them at export."""
        return self.queries[self.known_users.rows(user_ids)]

    def scores(self, user_ids: np.ndarray) -> np.ndarray:
        """Retrieval scores [users, items] of the whole catalogue."""
        return self.query(user_ids) @ self.vectors().T

    def scores_at(self, user_ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Retrieval scores [users, n] of the items at catalogue ``positions`` [users, n];
        -inf at padding (-1)."""
        picked = self.vectors(np.maximum(positions, 0))
        scores = np.einsum("ud,und->un", self.query(user_ids), picked)
        return np.where(positions >= 0, scores, -np.inf).astype(np.float32)

    def best(
        self, user_ids: np.ndarray, k: int, interactions: tuple[np.ndarray, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Catalogue positions and retrieval scores [users, min(k, items)] of each user's best
        items outside ``interactions``, best first; padding -1 and -inf. From the index where
        the version has one; a row the index could not fill (its probed lists held fewer
        eligible items) is searched exactly, so every row keeps k items while there are."""
        if self.index is None:
            return top_k(self.scores(user_ids), k, self.mask(len(user_ids), interactions))
        best, scores = self.index.top_k(self.query(user_ids), k, interactions)
        short = (best < 0).any(axis=1)
        if short.any():
            owners, positions = interactions
            rows = np.flatnonzero(short)
            keep = short[owners]
            renumbered = (np.cumsum(short) - 1)[owners[keep]], positions[keep]
            exact = self.scores(user_ids[rows])
            best[rows], scores[rows] = top_k(exact, k, self.mask(len(rows), renumbered))
        return best, scores

    def top_k(
        self,
        user_ids: np.ndarray,
        k: int,
        exclude_seen: bool,
        history: RequestHistory | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw item ids and retrieval scores [users, k], best first; padding: -1 and -inf. A
        request's ``history`` is always left out (the two-tower's query does not read it)."""
        interactions = self.interactions(user_ids, history, exclude_seen)
        best, best_scores = self.best(user_ids, k, interactions)
        return np.where(best >= 0, self.item_ids[best], -1), best_scores

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        users = inputs[USER_ID].reshape(-1).astype(np.int64)
        k = _request_k(inputs, len(users), self.config.max_k)
        exclude = bool(inputs.get(EXCLUDE_SEEN_INPUT, np.zeros(1, bool)).any())
        history = self.history(inputs, len(users))
        return _ranked(*self.top_k(users, k, exclude, history)) | _unknown(history)

    def warm_up(self) -> None:
        self.top_k(np.zeros(1, np.int64), 1, exclude_seen=True)


# How recommend orders the lists of users the version never saw who send a history, in a
# version whose ordering chose no weights for them: by the item-item scores of that history
# alone (docs/serving.md, "Request-time history").
FROM_HISTORY = OrderingPolicy(ranker_weight=0.0, item_item_weight=1.0)
# An encoded item id no item-item weights are held for (models.item_item.ItemItemWeights).
UNHELD = -1


class ItemItemScores:
    """recommend's item-item source (models/item_item.py): a user's interactions, as the
    version and the request know them, times the exported weights. The weights are indexed by
    encoded item id, as they were fitted; the catalogue's raw ids map to theirs through
    ``item_embeddings``."""

    def __init__(self, version_dir: Path, weights: ItemItemWeights | None = None):
        self.weights = weights or ItemItemWeights.load(version_dir / ITEM_ITEM)
        # The same file, in the same order, as the retrieval stage's catalogue.
        encoded = pd.read_parquet(version_dir / ITEM_EMBEDDINGS, columns=[ITEM_ID])[ITEM_ID]
        # An encoded id several catalogue items share names none of them: it is Categorify's
        # bucket of the items training never saw (first seen in validation, or never rated) or
        # saw too rarely. Were it scored, every item of the bucket would carry its one score,
        # and on ml-latest-small by time 2,577 such items filled 22 % of item-item's top 10.
        # It neither speaks for a history nor scores as a candidate (-1: no weights).
        shared = encoded.duplicated(keep=False).to_numpy()
        self.encoded = np.where(shared, UNHELD, encoded.to_numpy(np.int64))
        # For large catalogues (the index's path, :meth:`candidates`): each catalogue item's
        # row of the weights, and each row's catalogue position (-1: none or unheld).
        self.held = self.weights.positions(self.encoded)
        self.catalogue_positions = np.full(len(self.weights.items), -1, np.int64)
        self.catalogue_positions[self.held[self.held >= 0]] = np.flatnonzero(self.held >= 0)

    def __call__(self, rows: int, interactions: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """[rows, catalogue items] scores, in the retrieval stage's catalogue order, of each
        row's (row, catalogue position) ``interactions`` (RetrievalStage.interactions)."""
        owners, positions = interactions
        return self.weights.catalogue_scores(owners, self.encoded[positions], rows, self.encoded)

    def candidates(
        self, interactions: tuple[np.ndarray, np.ndarray], first: np.ndarray, n: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """``models.ordering.candidate_positions`` without [rows, catalogue items] matrices,
        for large catalogues: ``first`` (retrieval's candidates, [rows, n] catalogue
        positions), then the ``n`` best by positive item-item score of the items neither in it
        nor in ``interactions``; and the item-item scores [rows, 2n] of them all (-inf at
        padding). Only the items the weights hold (at most models.baselines.MAX_DENSE_ITEMS)
        can score above 0, so the search runs over those: at 1M items the catalogue-wide
        score row, its exclusion mask and its top-n took about 35 ms a user."""
        if not len(self.weights.items):
            return first, np.where(first >= 0, 0.0, -np.inf).astype(np.float32)
        owners, positions = interactions
        listed = np.nonzero(first >= 0)
        scores = self.weights.scores(owners, self.held[positions], len(first))
        # Held items without a catalogue position are no candidates; unheld ones score 0.
        taken = np.zeros(scores.shape, dtype=bool)
        taken[:, self.catalogue_positions < 0] = True
        for row, position in ((owners, positions), (listed[0], first[listed])):
            column = self.held[position]
            taken[row[column >= 0], column[column >= 0]] = True
        second, _ = top_k(np.where(scores > 0, scores, -np.inf), n, taken)
        second = np.where(second >= 0, self.catalogue_positions[np.maximum(second, 0)], -1)
        candidates = np.concatenate([first, second], axis=1)
        columns = self.held[np.maximum(candidates, 0)]
        picked = np.take_along_axis(scores, np.maximum(columns, 0), axis=1)
        item_item = np.where(columns >= 0, picked, 0.0)
        return candidates, np.where(candidates >= 0, item_item, -np.inf).astype(np.float32)


class RecommendStage:
    """The ``recommend`` endpoint: gather unseen candidates, rank them, keep the best k.

    Candidates come from retrieval and, where the version has one, the item-item model
    (``models.ordering.candidate_positions``). All users of a request go through one retrieval
    product, one item-item product and one ranking call, so a large request costs one batch
    instead of one model call per user.
    """

    merge_requests = False

    def __init__(
        self,
        version_dir: Path,
        seen: pd.DataFrame | None = None,
        item_item: ItemItemWeights | None = None,
    ):
        """``seen`` as for :class:`RetrievalStage`; ``item_item`` replaces the version's
        item-item weights: the gate judges the fit that never saw the rows it judges on
        (recflow.artifacts.ItemItemSource)."""
        self.retrieval = RetrievalStage(version_dir, seen)
        self.ranking = RankingPipeline(version_dir)
        self.ordering = self.retrieval.config.ordering
        self.new_user_ordering = self.ordering.new_users or FROM_HISTORY
        self.item_item = (
            ItemItemScores(version_dir, item_item) if (version_dir / ITEM_ITEM).is_file() else None
        )

    def recommend(
        self, user_ids: np.ndarray, k: int, history: RequestHistory | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Item ids and final scores [users, k], best first; padding: -1 and -inf. A request's
        ``history`` is added to the users' seen items: left out of the lists, and read by the
        item-item source."""
        history = history or RequestHistory.none(len(user_ids))
        rows = len(user_ids)
        k = min(k, len(self.retrieval.item_ids))
        n = max(k, self.retrieval.config.retrieval_candidates)
        # One lookup of what each user interacted with: left out, and read by item-item.
        interactions = self.retrieval.interactions(user_ids, history)
        if self.retrieval.index is None:
            item_item_full = None if self.item_item is None else self.item_item(rows, interactions)
            retrieval_full = self.retrieval.scores(user_ids)
            positions = candidate_positions(
                retrieval_full, item_item_full, n, self.retrieval.mask(rows, interactions)
            )
            retrieval_scores = gather(retrieval_full, positions)
            item_item_scores = None if item_item_full is None else gather(item_item_full, positions)
        else:  # a large catalogue: no [users, catalogue items] matrix at all
            positions, _ = self.retrieval.best(user_ids, n, interactions)
            item_item_scores = None
            if self.item_item is not None:
                positions, item_item_scores = self.item_item.candidates(interactions, positions, n)
            retrieval_scores = self.retrieval.scores_at(user_ids, positions)
        found = positions >= 0
        candidates = np.where(found, self.retrieval.item_ids[np.maximum(positions, 0)], -1)
        ranking_scores = np.full(candidates.shape, -np.inf, dtype=np.float32)
        users = np.broadcast_to(user_ids[:, None], candidates.shape)
        ranking_scores[found] = self.ranking.scores(users[found], candidates[found])
        order, scores = final_order(
            retrieval_scores, ranking_scores, self.ordering, k, item_item_scores
        )
        if item_item_scores is not None:
            # A user the version never saw has no query embedding and no ranker row of their
            # own (every unknown user gets the same): what a history says of them is theirs,
            # weighed against that shared prior by the weights chosen for new users.
            new = ~self.retrieval.known_users.known(user_ids)
            new &= np.isin(np.arange(rows), history.owners)
            if new.any():
                order[new], scores[new] = final_order(
                    retrieval_scores[new],
                    ranking_scores[new],
                    self.new_user_ordering,
                    k,
                    item_item_scores[new],
                )
        picked = np.take_along_axis(candidates, np.maximum(order, 0), axis=1)
        return np.where(order >= 0, picked, -1), scores

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        users = inputs[USER_ID].reshape(-1).astype(np.int64)
        k = _request_k(inputs, len(users), self.retrieval.config.max_k)
        history = self.retrieval.history(inputs, len(users))
        return _ranked(*self.recommend(users, k, history)) | _unknown(history)

    def warm_up(self) -> None:
        self.recommend(np.zeros(1, np.int64), 1)


class SimilarStage:
    """The ``similar`` endpoint: the items whose embeddings are closest to an item's, exact or
    from the version's approximate index."""

    merge_requests = False

    def __init__(self, version_dir: Path):
        version_dir = require_trusted(version_dir)
        self.vectors = ItemVectors(version_dir)
        self.item_ids, self.index = self.vectors.item_ids, self.vectors.index
        self._positions = pd.Index(self.item_ids)
        self.config = version_config(version_dir)

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = inputs[ITEM_ID].reshape(-1).astype(np.int64)
        k = _request_k(inputs, len(items), self.config.max_k)
        rows = self._positions.get_indexer(items)
        if (rows < 0).any():
            raise BadRequest(f"unknown item ids {items[rows < 0].tolist()}: no embedding")
        if self.index is None:
            scores = self.vectors(rows) @ self.vectors().T
            itself = np.zeros(scores.shape, dtype=bool)
            itself[np.arange(len(rows)), rows] = True
            best, best_scores = top_k(scores, k, itself)
        else:
            itself = (np.arange(len(rows)), rows)
            best, best_scores = self.index.top_k(self.vectors(rows), k, itself)
        return _ranked(np.where(best >= 0, self.item_ids[best], -1), best_scores)

    def warm_up(self) -> None:
        first = np.zeros(1, np.int64)
        if self.index is None:
            self.vectors(first) @ self.vectors().T
        else:
            self.index.top_k(self.vectors(first), 1, (first, first))


STAGES = {
    RANKING: RankingPipeline,
    RETRIEVAL: RetrievalStage,
    RECOMMEND: RecommendStage,
    SIMILAR: SimilarStage,
}


class ExternalIdStage:
    """A stage of a dataset with string ids: a request's ids (UTF-8 bytes from Triton, or str)
    become the int64 ids the tables hold, and answered item ids their strings again, with
    ``b""`` for the -1 padding. An id string no table knows is served as a cold id."""

    def __init__(self, stage: Stage, version_dir: Path):
        self.stage = stage
        self.merge_requests = stage.merge_requests
        names = version_dir / ITEM_NAMES
        self.item_names = None
        if names.is_file():  # ranking answers scores only, and needs no names
            table = pd.read_parquet(names)
            encoded = np.array([name.encode("utf-8") for name in table[EXTERNAL_ID]], dtype=object)
            self.item_names = pd.Series(encoded, index=table[ITEM_ID].to_numpy(np.int64))

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = dict(inputs)
        for name in (USER_ID, ITEM_ID, HISTORY_INPUT):
            if name in inputs:
                if inputs[name].dtype.kind not in "OSU":  # Triton: object arrays of bytes
                    raise BadRequest(f"{name} must be the dataset's string ids (TYPE_STRING)")
                strings = inputs[name]
                inputs[name] = internal_ids(strings).reshape(strings.shape)
                if name == HISTORY_INPUT:  # b"" pads a shorter history
                    inputs[name][(strings == b"") | (strings == "")] = HISTORY_PADDING
        outputs = self.stage(inputs)
        if ITEM_IDS_OUTPUT in outputs:
            ids = outputs[ITEM_IDS_OUTPUT]
            names = self.item_names.reindex(ids.reshape(-1)).fillna(b"").to_numpy(object)
            outputs = outputs | {ITEM_IDS_OUTPUT: names.reshape(ids.shape)}
        return outputs

    def warm_up(self) -> None:
        self.stage.warm_up()


def load_stage(stage: str, version_dir: Path) -> Stage:
    """The endpoint ``stage`` of a version directory, as Triton serves it."""
    served = STAGES[stage](version_dir)
    if version_config(version_dir).external_ids:
        return ExternalIdStage(served, version_dir)
    return served
