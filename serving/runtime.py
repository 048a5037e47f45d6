"""What runs inside Triton's Python backend, as plain classes testable without Triton.

Two stages, mirroring the ranking ensemble:

* ``FeatureStage``: raw ``user_id``/``item_id`` -> side-feature lookup -> the fitted NVTabular
  workflow (without its target branch) -> one tensor per workflow output column.
* ``RankerStage``: those tensors -> the DLRM SavedModel -> ``score``.

List columns (genres) cross the stage boundary as a zero-padded ``<name>__values`` matrix and
a ``<name>__lengths`` column, because Triton batches dense tensors only.

Steady-state requests avoid the two slow steps of the straightforward path. The feature stage
runs the workflow once per known user and item at load time and then only gathers rows; the
workflow still runs per request for ids it has never seen (cold users and items). The ranker
calls the model through one ``tf.function`` with a fixed signature, so a new batch size does
not retrace Merlin's graph.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from merlin.schema import Schema, Tags

WORKFLOW_DIR = "workflow"
LOOKUP_DIR = "lookup"
MODEL_DIR = "model"
SCORE = "score"
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
        import nvtabular as nvt

        from tasks.features import attach_side_features

        self._attach = attach_side_features
        self.workflow = nvt.Workflow.load(str(version_dir / WORKFLOW_DIR))
        lookup = version_dir / LOOKUP_DIR
        self.items = pd.read_parquet(lookup / "items.parquet")
        users = lookup / "users.parquet"
        self.users = pd.read_parquet(users) if users.exists() else None
        self._tables = self._encode_known_ids()

    @property
    def output_schema(self) -> Schema:
        return self.workflow.output_schema

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


class RankerStage:
    def __init__(self, version_dir: Path):
        import tensorflow as tf
        from merlin.schema.io.tensorflow_metadata import TensorflowMetadata

        from models.dlrm import load_model
        from models.predict import input_columns

        self.model = load_model(version_dir / MODEL_DIR)
        self.schema = TensorflowMetadata.from_proto_text_file(str(version_dir)).to_merlin_schema()
        signature = {}
        for name in input_columns(self.schema):
            dtype = tf.as_dtype(self.schema[name].dtype.to_numpy)
            if self.schema[name].is_list:
                signature[f"{name}__values"] = tf.TensorSpec([None], dtype)
                signature[f"{name}__offsets"] = tf.TensorSpec([None], tf.int64)
            else:
                signature[name] = tf.TensorSpec([None], dtype)
        self._predict = tf.function(
            lambda inputs: self.model(inputs, training=False), input_signature=[signature]
        )

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        scores = np.asarray(self._predict(model_inputs(inputs, self.schema)), dtype=np.float32)
        return {SCORE: scores.reshape(-1, 1)}


class RankingPipeline:
    """Both ranking stages in one process: the in-process reference of the served ensemble."""

    def __init__(self, features_dir: Path, ranker_dir: Path):
        self.features = FeatureStage(features_dir)
        self.ranker = RankerStage(ranker_dir)

    def scores(self, user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        inputs = {USER_ID: user_ids.reshape(-1, 1), ITEM_ID: item_ids.reshape(-1, 1)}
        return self.ranker(self.features(inputs))[SCORE].reshape(-1)


STAGES = {"features": FeatureStage, "ranker": RankerStage}
