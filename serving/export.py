"""Publish-time precomputation: everything a served request needs, made where TensorFlow is.

A version directory (serving/runtime.py reads it) holds no workflow and no Keras model:

* ``user_rows.npz``, ``item_rows.npz``: the fitted workflow's encoded columns for every known
  user and item, plus the row the workflow gives an id it has never seen;
* ``queries.npz``: the two-tower query embedding of every known user, and of the unseen one;
* ``ranking.onnx``: the ranker converted with tf2onnx, checked against Keras on held-out rows
  (:func:`check_equivalence`) before anything is published.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
from merlin.schema import Schema
from merlin.schema.io.tensorflow_metadata import TensorflowMetadata

from models.architectures import ranker_inputs
from models.predict import input_columns, predict_frame, predict_rows
from recflow.artifacts import FeatureSet, RankingModel
from recflow.vocabulary import ITEM_ID, USER_ID
from serving import runtime
from tasks.features import ServingFeatures

# The largest difference between ONNX and Keras scores a publish accepts.
MAX_ABS_DIFF = 1e-5
# Held-out rows the equivalence check scores (the validation split's first ones).
CHECK_ROWS = 4096
# ONNX opset 17: the newest onnxruntime 1.32 and tf2onnx 1.17 both support fully.
OPSET = 17


class ExportMismatch(RuntimeError):
    """The exported model does not score like the trained one: the version is not published."""


def encode_frame(df: pd.DataFrame, schema: Schema) -> dict[str, np.ndarray]:
    """Workflow outputs as ``[rows, ...]`` arrays: one per column, a list column padded plus
    its lengths (the layout of the rows files, see serving/runtime.py)."""
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
            tensors[name + runtime.VALUES] = padded
            tensors[name + runtime.LENGTHS] = lengths.reshape(-1, 1)
        else:
            tensors[name] = df[name].to_numpy(dtype=dtype).reshape(-1, 1)
    return tensors


def model_signature(schema: Schema) -> list[tf.TensorSpec]:
    """The model's inputs in Merlin's dataloader layout, named as the ONNX graph's inputs."""
    specs = []
    for name in input_columns(schema):
        dtype = tf.as_dtype(schema[name].dtype.to_numpy)
        if schema[name].is_list:
            specs.append(tf.TensorSpec([None], dtype, name=name + runtime.VALUES))
            specs.append(tf.TensorSpec([None], tf.int64, name=name + runtime.OFFSETS))
        else:
            specs.append(tf.TensorSpec([None], dtype, name=name))
    return specs


def write_rows(features: ServingFeatures, directory: Path) -> pd.DataFrame:
    """Write both sides' rows files; return the user rows (known users, then the unseen one)."""
    frames = {}
    for side, file in ((USER_ID, runtime.USER_ROWS), (ITEM_ID, runtime.ITEM_ROWS)):
        known, frames[side] = features.side_rows(side)
        schema = features.output_schema.select_by_name(list(frames[side].columns))
        np.savez(directory / file, **{runtime.IDS: known}, **encode_frame(frames[side], schema))
    return frames[USER_ID]


def write_queries(retrieval, known_users: np.ndarray, user_rows: pd.DataFrame, path: Path) -> None:
    """The query tower's embedding of each user row (``retrieval``: a RetrievalModel)."""
    encoder = tf.keras.models.load_model(str(retrieval.query_encoder_dir))
    schema = TensorflowMetadata.from_proto_text_file(str(retrieval.query_schema_dir))
    vectors = predict_rows(encoder, user_rows, schema.to_merlin_schema()).astype(np.float32)
    np.savez(path, **{runtime.IDS: known_users, runtime.VECTORS: vectors})


def _ragged_to_sparse(ctx, node, name, args):
    """tf2onnx handler for ``RaggedTensorToSparse`` over values of shape [n, 1].

    Merlin's list columns reach the embedding lookup as ragged [batch, None, 1] tensors
    (prepare_list_features expands them), and tf2onnx 1.17 converts the op for rank-1 values
    only. With one inner element per value the sparse form is the rank-1 one plus a zero
    column in the indices and a trailing 1 in the shape.
    """
    from tf2onnx import utils
    from tf2onnx.graph_builder import GraphBuilder
    from tf2onnx.onnx_opset.tensor import ragged_nested_splits_to_sparse_indices

    *splits, values = node.input
    shape = ctx.get_shape(values)
    utils.make_sure(
        shape is not None and len(shape) == 2 and shape[1] == 1,
        "RaggedTensorToSparse: values of shape %s, expected [n, 1]",
        shape,
    )
    indices, dense_shape = ragged_nested_splits_to_sparse_indices(ctx, splits, node.name)
    first = GraphBuilder(ctx).make_slice({"data": indices, "starts": [0], "ends": [1], "axes": [1]})
    zeros = ctx.make_node("Sub", [first, first]).output[0]
    flat = ctx.make_const(utils.make_name("flat_shape"), np.array([-1], np.int64)).output[0]
    one = ctx.make_const(utils.make_name("inner_dim"), np.array([1], np.int64)).output[0]
    outputs = (
        ctx.make_node("Concat", [indices, zeros], attr={"axis": 1}).output[0],
        ctx.make_node("Reshape", [values, flat]).output[0],
        ctx.make_node("Concat", [dense_shape, one], attr={"axis": 0}).output[0],
    )
    for old, new in zip(node.output, outputs, strict=True):
        ctx.replace_all_inputs(old, new)
    ctx.remove_node(node.name)


def export_onnx(model: tf.keras.Model, schema: Schema, path: Path) -> None:
    """Convert ``model`` (inputs of ``schema`` in Merlin's layout, one score per row) to ONNX."""
    import tf2onnx

    specs = model_signature(schema)
    names = [spec.name for spec in specs]

    # autograph=False: autograph's zip() does not take strict=, and nothing here needs it.
    @tf.function(input_signature=specs, autograph=False)
    def serve(*tensors):
        return model(dict(zip(names, tensors, strict=True)), training=False)

    tf2onnx.convert.from_function(
        serve,
        input_signature=specs,
        opset=OPSET,
        custom_op_handlers={"RaggedTensorToSparse": (_ragged_to_sparse, [])},
        output_path=str(path),
    )


@dataclass(frozen=True)
class Equivalence:
    rows: int
    max_abs_diff: float


def check_equivalence(
    model: tf.keras.Model, onnx_path: Path, rows: pd.DataFrame, schema: Schema
) -> Equivalence:
    """Score ``rows`` (workflow outputs) with Keras and with the ONNX export, which must agree
    within :data:`MAX_ABS_DIFF`; raises :class:`ExportMismatch` otherwise."""
    expected = predict_frame(model, rows, schema)
    served = runtime.OnnxModel(onnx_path)(encode_frame(rows, schema)).reshape(-1)
    diff = float(np.abs(served - expected).max(initial=0.0))
    if not diff <= MAX_ABS_DIFF:  # NaN fails too
        raise ExportMismatch(
            f"ONNX export of the ranking model differs from Keras by up to {diff:.3g} "
            f"(limit {MAX_ABS_DIFF:g}) on {len(rows)} held-out rows; not published"
        )
    return Equivalence(len(rows), diff)


def held_out_rows(features: FeatureSet, limit: int = CHECK_ROWS) -> pd.DataFrame:
    """The first ``limit`` rows of the validation split, as the workflow wrote them."""
    frames, total = [], 0
    for part in sorted(features.valid_dir.glob("*.parquet")):
        frames.append(pd.read_parquet(part))
        total += len(frames[-1])
        if total >= limit:
            break
    return pd.concat(frames, ignore_index=True).head(limit)


def write_ranker(
    ranking: RankingModel, features: FeatureSet, schema: Schema, path: Path
) -> Equivalence:
    """Export the trained ranker to ``path`` and check it on held-out rows. ``schema``: the
    serving workflow's outputs, of which the ONNX graph takes the columns the ranker reads."""
    model = tf.keras.models.load_model(str(ranking.model_dir))
    schema = ranker_inputs(schema, ranking.architecture)
    export_onnx(model, schema, path)
    return check_equivalence(model, path, held_out_rows(features), schema)
