"""What runs inside Triton's Python backend, as plain classes testable without Triton.

Two stages, mirroring the ranking ensemble:

* ``FeatureStage``: raw ``user_id``/``item_id`` -> side-feature lookup -> the fitted NVTabular
  workflow (without its target branch) -> one tensor per workflow output column.
* ``RankerStage``: those tensors -> the DLRM SavedModel -> ``score``.

List columns (genres) cross the stage boundary as a zero-padded ``<name>__values`` matrix and
a ``<name>__lengths`` column, because Triton batches dense tensors only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from merlin.schema import Schema

WORKFLOW_DIR = "workflow"
LOOKUP_DIR = "lookup"
MODEL_DIR = "model"
SCORE = "score"
RAW_INPUTS = ("user_id", "item_id")


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


def decode_frame(tensors: dict[str, np.ndarray], schema: Schema) -> pd.DataFrame:
    """The inverse of :func:`encode_frame`."""
    columns = {}
    for name in schema.column_names:
        if schema[name].is_list:
            padded, lengths = tensors[f"{name}__values"], tensors[f"{name}__lengths"].reshape(-1)
            columns[name] = [padded[row, :length] for row, length in enumerate(lengths)]
        else:
            columns[name] = tensors[name].reshape(-1)
    return pd.DataFrame(columns)


def tensor_names(schema: Schema) -> list[str]:
    names = []
    for name in schema.column_names:
        names += [f"{name}__values", f"{name}__lengths"] if schema[name].is_list else [name]
    return names


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

    @property
    def output_schema(self) -> Schema:
        return self.workflow.output_schema

    def transform_frame(self, user_ids: np.ndarray, item_ids: np.ndarray) -> pd.DataFrame:
        if user_ids.shape != item_ids.shape:
            raise ValueError(
                f"user_id and item_id must have the same shape, got {user_ids.shape} "
                f"and {item_ids.shape}"
            )
        raw = pd.DataFrame(
            {"user_id": user_ids.astype(np.int64), "item_id": item_ids.astype(np.int64)}
        )
        return self.workflow.transform(self._attach(raw, self.items, self.users))

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        frame = self.transform_frame(inputs["user_id"].reshape(-1), inputs["item_id"].reshape(-1))
        return encode_frame(frame, self.output_schema)


class RankerStage:
    def __init__(self, version_dir: Path):
        from merlin.schema.io.tensorflow_metadata import TensorflowMetadata

        from models.dlrm import load_model

        self.model = load_model(version_dir / MODEL_DIR)
        self.schema = TensorflowMetadata.from_proto_text_file(str(version_dir)).to_merlin_schema()

    def score_frame(self, frame: pd.DataFrame) -> np.ndarray:
        from models.predict import predict_frame

        return predict_frame(self.model, frame, self.schema)

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        scores = self.score_frame(decode_frame(inputs, self.schema))
        return {SCORE: scores.reshape(-1, 1)}


STAGES = {"features": FeatureStage, "ranker": RankerStage}
