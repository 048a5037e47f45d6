"""What runs inside Triton's Python backend, as plain classes testable without Triton.

Each endpoint is one Python-backend model whose version directory holds everything it needs,
so a version is always served as a consistent whole (docs/serving.md explains why this is not
a Triton ensemble):

* ``ranking`` (:class:`RankingPipeline`): ``user_id``/``item_id`` -> side-feature lookup and
  the fitted NVTabular workflow (:class:`FeatureStage`) -> the DLRM (:class:`RankerStage`).
* ``retrieval`` (:class:`RetrievalStage`): ``user_id`` -> user features -> query encoder ->
  exact top-k over the exported item embeddings, optionally without the user's seen items.
* ``recommend`` (:class:`RecommendStage`): retrieval of ``retrieval_candidates`` unseen items,
  then ranking of those, then the top k by ``models.ordering.final_order`` of the retrieval and
  ranking scores under the version's ``ordering`` policy (chosen on validation in training).
* ``similar`` (:class:`SimilarStage`): item -> nearest items by embedding cosine.

Steady-state requests avoid the two slow steps of the straightforward path. The feature stage
runs the workflow once per known user and item at load time and then only gathers rows; the
workflow still runs per request for ids it has never seen (cold users and items). Models are
called through one ``tf.function`` with a fixed signature, so a new batch size does not
retrace Merlin's graph.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from merlin.schema import Schema, Tags

from recflow.trust import load_workflow

WORKFLOW_DIR = "workflow"
LOOKUP_DIR = "lookup"
MODEL_DIR = "model"
QUERY_ENCODER_DIR = "query_encoder"
QUERY_SCHEMA_DIR = "query_schema"
ITEM_EMBEDDINGS = "item_embeddings.parquet"
SEEN = "seen.parquet"
RANKING_CONFIG = "ranking.json"
# Key of ranking.json holding recommend's models.ordering.OrderingPolicy.
ORDERING = "ordering"
SCORE = "score"
K, EXCLUDE_SEEN = "k", "exclude_seen"
ITEM_IDS, SCORES = "item_ids", "scores"
# Columns of models/two_tower.py's item_embeddings.parquet (a unit test checks they agree).
# Not imported from there: that module pulls in TensorFlow, which `similar` does not need, and
# a stub importing it first hung at start-up in the bundled server.
RAW_ITEM_ID, EMBEDDING = "raw_item_id", "embedding"
USER_ID, ITEM_ID = "user_id", "item_id"
RAW_INPUTS = (USER_ID, ITEM_ID)
SIDES = {USER_ID: Tags.USER, ITEM_ID: Tags.ITEM}


class BadRequest(ValueError):
    """Input the model cannot serve; Triton reports it as INVALID_ARG."""


def encode_frame(df: pd.DataFrame, schema: Schema) -> dict[str, np.ndarray]:
    """Workflow outputs as dense ``[rows, ...]`` arrays, one or two per column."""
    tensors = {}
    for name in schema.column_names:
        column = schema[name]
        dtype = column.dtype.to_numpy
        if column.is_list:
            lists = [np.asarray(v, dtype=dtype) for v in df[name]]
            lengths = np.array([len(v) for v in lists], dtype=np.int64)
            padded = np.zeros((len(lists), max(1, int(lengths.max(initial=0)))), dtype=dtype)
            for row, values in enumerate(lists):
                padded[row, : len(values)] = values
            tensors[f"{name}__values"] = padded
            tensors[f"{name}__lengths"] = lengths.reshape(-1, 1)
        else:
            tensors[name] = df[name].to_numpy(dtype=dtype).reshape(-1, 1)
    return tensors


def tensor_names(schema: Schema) -> list[str]:
    names = []
    for name in schema.column_names:
        names += [f"{name}__values", f"{name}__lengths"] if schema[name].is_list else [name]
    return names


def model_inputs(tensors: dict[str, np.ndarray], schema: Schema) -> dict[str, np.ndarray]:
    """Stage tensors in Merlin's dataloader layout: [batch] scalars, ``__values``/``__offsets``."""
    from models.predict import input_columns

    inputs = {}
    for name in input_columns(schema):
        if schema[name].is_list:
            padded = tensors[f"{name}__values"]
            lengths = tensors[f"{name}__lengths"].reshape(-1).astype(np.int64)
            inputs[f"{name}__values"] = padded[np.arange(padded.shape[1]) < lengths[:, None]]
            inputs[f"{name}__offsets"] = np.concatenate([[0], np.cumsum(lengths)])
        else:
            inputs[name] = tensors[name].reshape(-1)
    return inputs


def _fill(known: np.ndarray, rows: np.ndarray, cold: np.ndarray, fresh: np.ndarray | None):
    """Rows of ``known`` by index, except the ``cold`` rows, which come from ``fresh``."""
    width = max(known.shape[1], 0 if fresh is None else fresh.shape[1])
    out = np.zeros((len(rows), width), dtype=known.dtype)
    out[~cold, : known.shape[1]] = known[rows[~cold]]
    if fresh is not None:
        out[cold, : fresh.shape[1]] = fresh
    return out


class FeatureStage:
    def __init__(self, version_dir: Path):
        from tasks.features import attach_side_features

        self._attach = attach_side_features
        self.workflow = load_workflow(version_dir / WORKFLOW_DIR)
        lookup = version_dir / LOOKUP_DIR
        self.items = pd.read_parquet(lookup / "items.parquet")
        users = lookup / "users.parquet"
        self.users = pd.read_parquet(users) if users.exists() else None
        self._tables = self._encode_known_ids()

    @property
    def output_schema(self) -> Schema:
        return self.workflow.output_schema

    @property
    def known_item(self) -> int:
        return int(self._tables[ITEM_ID][0][0])

    def transform_frame(self, user_ids: np.ndarray, item_ids: np.ndarray) -> pd.DataFrame:
        if user_ids.shape != item_ids.shape:
            raise BadRequest(
                f"user_id and item_id must have the same shape, got {user_ids.shape} "
                f"and {item_ids.shape}"
            )
        raw = pd.DataFrame({USER_ID: user_ids.astype(np.int64), ITEM_ID: item_ids.astype(np.int64)})
        return self.workflow.transform(self._attach(raw, self.items, self.users))

    def _encode_known_ids(self) -> dict[str, tuple[pd.Index, dict[str, np.ndarray]]]:
        """Per side, the known ids and their encoded output columns, in the same row order.

        Each side's columns are encoded from pairs with an arbitrary id of the other side; the
        workflow's ops are column-wise, so those columns do not depend on the other id.
        """
        schema = self.output_schema
        untagged = [c.name for c in schema if not {Tags.USER, Tags.ITEM} & set(c.tags)]
        if untagged:
            raise ValueError(f"workflow outputs {untagged} belong to neither users nor items")
        known = {
            USER_ID: np.empty(0, np.int64) if self.users is None else self.users[USER_ID],
            ITEM_ID: self.items[ITEM_ID],
        }
        tables = {}
        for side, tag in SIDES.items():
            ids = np.unique(np.asarray(known[side], dtype=np.int64))
            other = ITEM_ID if side == USER_ID else USER_ID
            pairs = {side: ids, other: np.zeros_like(ids)}
            side_schema = schema.select_by_tag(tag)
            frame = (
                self.transform_frame(pairs[USER_ID], pairs[ITEM_ID])
                if len(ids)
                else pd.DataFrame(columns=side_schema.column_names)
            )
            tables[side] = (pd.Index(ids), encode_frame(frame, side_schema))
        return tables

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = {name: inputs[name].reshape(-1).astype(np.int64) for name in RAW_INPUTS}
        if ids[USER_ID].shape != ids[ITEM_ID].shape:
            raise BadRequest("user_id and item_id must have the same number of rows")
        rows = {side: index.get_indexer(ids[side]) for side, (index, _) in self._tables.items()}
        cold = (rows[USER_ID] < 0) | (rows[ITEM_ID] < 0)
        fresh = {}
        if cold.any():
            frame = self.transform_frame(ids[USER_ID][cold], ids[ITEM_ID][cold])
            fresh = encode_frame(frame, self.output_schema)
        return {
            name: _fill(known, rows[side], cold, fresh.get(name))
            for side, (_, tensors) in self._tables.items()
            for name, known in tensors.items()
        }


class CompiledModel:
    """A Keras SavedModel called through one ``tf.function`` over stage tensors of ``schema``."""

    def __init__(self, model_dir: Path, schema_dir: Path):
        import tensorflow as tf
        from merlin.schema.io.tensorflow_metadata import TensorflowMetadata

        from models.predict import input_columns

        self.model = tf.keras.models.load_model(str(model_dir))
        self.schema = TensorflowMetadata.from_proto_text_file(str(schema_dir)).to_merlin_schema()
        signature = {}
        for name in input_columns(self.schema):
            dtype = tf.as_dtype(self.schema[name].dtype.to_numpy)
            if self.schema[name].is_list:
                signature[f"{name}__values"] = tf.TensorSpec([None], dtype)
                signature[f"{name}__offsets"] = tf.TensorSpec([None], tf.int64)
            else:
                signature[name] = tf.TensorSpec([None], dtype)
        self._call = tf.function(
            lambda inputs: self.model(inputs, training=False), input_signature=[signature]
        )

    def __call__(self, tensors: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self._call(model_inputs(tensors, self.schema)), dtype=np.float32)


class RankerStage:
    def __init__(self, version_dir: Path):
        self.model = CompiledModel(version_dir / MODEL_DIR, version_dir)

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {SCORE: self.model(inputs).reshape(-1, 1)}


class RankingPipeline:
    """The ``ranking`` endpoint: both stages on one version directory, in one process."""

    def __init__(self, version_dir: Path, features: FeatureStage | None = None):
        self.features = features or FeatureStage(version_dir)
        self.ranker = RankerStage(version_dir)

    def scores(self, user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        inputs = {USER_ID: user_ids.reshape(-1, 1), ITEM_ID: item_ids.reshape(-1, 1)}
        return self(inputs)[SCORE].reshape(-1)

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.ranker(self.features(inputs))


def _request_k(inputs: dict[str, np.ndarray], rows: int, max_k: int) -> int:
    """The one ``k`` of a request: every row must ask for the same, within ``1..max_k``."""
    ks = np.unique(inputs[K].reshape(-1))
    if len(ks) != 1 or len(inputs[K].reshape(-1)) != rows:
        raise BadRequest(f"k must be given once per row and be equal for all rows, got {ks}")
    if not 1 <= int(ks[0]) <= max_k:
        raise BadRequest(f"k must be between 1 and {max_k}, got {int(ks[0])}")
    return int(ks[0])


def item_embeddings(version_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Raw item ids [items] and their embeddings [items, dim] from the retrieval export."""
    items = pd.read_parquet(version_dir / ITEM_EMBEDDINGS)
    return items[RAW_ITEM_ID].to_numpy(np.int64), np.stack(items[EMBEDDING]).astype(np.float32)


def _ranked(ids: np.ndarray, scores: np.ndarray) -> dict[str, np.ndarray]:
    return {ITEM_IDS: ids.astype(np.int64), SCORES: scores.astype(np.float32)}


class RetrievalStage:
    """The ``retrieval`` endpoint: exact top-k of item embeddings for each user's query."""

    merge_requests = False

    def __init__(self, version_dir: Path, features: FeatureStage | None = None):
        import json

        self.features = features or FeatureStage(version_dir)
        self.encoder = CompiledModel(
            version_dir / QUERY_ENCODER_DIR, version_dir / QUERY_SCHEMA_DIR
        )
        self.item_ids, self.vectors = item_embeddings(version_dir)
        seen = pd.read_parquet(version_dir / SEEN).sort_values(USER_ID, kind="stable")
        self._seen = pd.Index(self.item_ids).get_indexer(seen[ITEM_ID].to_numpy(np.int64))
        self._seen_users = seen[USER_ID].to_numpy(np.int64)
        self.config = json.loads((version_dir / RANKING_CONFIG).read_text())

    def seen_mask(self, user_ids: np.ndarray) -> np.ndarray:
        """[users, items]: True where the user interacted with the item in the exported data."""
        mask = np.zeros((len(user_ids), len(self.item_ids)), dtype=bool)
        starts = np.searchsorted(self._seen_users, user_ids, side="left")
        ends = np.searchsorted(self._seen_users, user_ids, side="right")
        for row, (start, end) in enumerate(zip(starts, ends, strict=True)):
            positions = self._seen[start:end]
            mask[row, positions[positions >= 0]] = True
        return mask

    def query(self, user_ids: np.ndarray) -> np.ndarray:
        # The encoder reads user columns only; a known item keeps the feature stage off its
        # per-request workflow path, which only unknown ids need.
        items = np.full_like(user_ids, self.features.known_item)
        return self.encoder(self.features({USER_ID: user_ids, ITEM_ID: items}))

    def top_k(self, user_ids: np.ndarray, k: int, exclude_seen: bool):
        from models.metrics import top_k

        scores = self.query(user_ids) @ self.vectors.T
        best, best_scores = top_k(scores, k, self.seen_mask(user_ids) if exclude_seen else None)
        return np.where(best >= 0, self.item_ids[best], -1), best_scores

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        users = inputs[USER_ID].reshape(-1).astype(np.int64)
        k = _request_k(inputs, len(users), self.config["max_k"])
        exclude = bool(inputs.get(EXCLUDE_SEEN, np.zeros(1, bool)).any())
        return _ranked(*self.top_k(users, k, exclude))


class RecommendStage:
    """The ``recommend`` endpoint: retrieve unseen candidates, rank them, keep the best k."""

    merge_requests = False

    def __init__(self, version_dir: Path):
        features = FeatureStage(version_dir)
        self.retrieval = RetrievalStage(version_dir, features)
        self.ranking = RankingPipeline(version_dir, features)
        from models.ordering import OrderingPolicy

        # A version exported before the policy existed has none: it ranked by the ranker alone,
        # which is the default policy, so a repository upgraded in place serves as before.
        self.ordering = OrderingPolicy.model_validate(self.retrieval.config.get(ORDERING, {}))

    def recommend(self, user_id: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        from models.ordering import final_order

        k = min(k, len(self.retrieval.item_ids))
        n = max(k, self.retrieval.config["retrieval_candidates"])
        ids, retrieval_scores = self.retrieval.top_k(np.array([user_id]), n, exclude_seen=True)
        found = ids[0] >= 0
        candidates = ids[0][found]
        ranking_scores = self.ranking.scores(np.full_like(candidates, user_id), candidates)
        order, scores = np.empty(0, np.int64), np.empty(0, np.float32)
        if len(candidates):
            order, scores = (
                part[0]
                for part in final_order(
                    retrieval_scores[:, found], ranking_scores[None, :], self.ordering, k
                )
            )
        pad = k - len(order)
        return (
            np.concatenate([candidates[order], np.full(pad, -1)]),
            np.concatenate([scores, np.full(pad, -np.inf, np.float32)]),
        )

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        users = inputs[USER_ID].reshape(-1).astype(np.int64)
        k = _request_k(inputs, len(users), self.retrieval.config["max_k"])
        rows = [self.recommend(int(user), k) for user in users]
        return _ranked(np.array([r[0] for r in rows]), np.array([r[1] for r in rows]))


class SimilarStage:
    """The ``similar`` endpoint: the items whose embeddings are closest to an item's."""

    merge_requests = False

    def __init__(self, version_dir: Path):
        import json

        self.item_ids, self.vectors = item_embeddings(version_dir)
        self._positions = pd.Index(self.item_ids)
        self.config = json.loads((version_dir / RANKING_CONFIG).read_text())

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from models.metrics import top_k

        items = inputs[ITEM_ID].reshape(-1).astype(np.int64)
        k = _request_k(inputs, len(items), self.config["max_k"])
        rows = self._positions.get_indexer(items)
        if (rows < 0).any():
            raise BadRequest(f"unknown item ids {items[rows < 0].tolist()}: no embedding")
        scores = self.vectors[rows] @ self.vectors.T
        itself = np.zeros(scores.shape, dtype=bool)
        itself[np.arange(len(rows)), rows] = True
        best, best_scores = top_k(scores, k, itself)
        return _ranked(np.where(best >= 0, self.item_ids[best], -1), best_scores)


STAGES = {
    "ranking": RankingPipeline,
    "retrieval": RetrievalStage,
    "recommend": RecommendStage,
    "similar": SimilarStage,
}
