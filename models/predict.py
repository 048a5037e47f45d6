"""Turning transformed feature rows into model inputs and scores.

How a pandas frame of workflow outputs becomes a Keras model's prediction, in-process: to
choose recommend's ordering on validation (models/composed.py), to embed the catalogue and the
users (models/retrieval.py, serving/export.py) and, at export, to check that the ONNX ranker
Triton runs scores like the trained ranker (``serving.export.check_equivalence``). The ranker's
validation split goes through the same traced call each epoch (models/ranking.py).
"""

from __future__ import annotations

import weakref

import numpy as np
import pandas as pd
import tensorflow as tf
from merlin.schema import Schema, Tags


def input_columns(schema: Schema) -> list[str]:
    """Feature columns a model consumes: everything in the schema that is not a target."""
    targets = set(schema.select_by_tag(Tags.TARGET).column_names)
    return [name for name in schema.column_names if name not in targets]


def to_model_inputs(df: pd.DataFrame, schema: Schema) -> dict[str, tf.Tensor]:
    """Merlin's dataloader layout: scalars as [batch], lists as ``__values``/``__offsets``."""
    inputs: dict[str, tf.Tensor] = {}
    for name in input_columns(schema):
        column = schema[name]
        dtype = tf.as_dtype(column.dtype.to_numpy)
        if column.is_list:
            lists = [np.asarray(v) for v in df[name]]
            lengths = np.fromiter((len(v) for v in lists), dtype=np.int64, count=len(lists))
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            values = np.concatenate(lists) if lists else np.empty(0)
            inputs[f"{name}__values"] = tf.constant(values, dtype=dtype)
            inputs[f"{name}__offsets"] = tf.constant(offsets)
        else:
            inputs[name] = tf.constant(df[name].to_numpy(), dtype=dtype)
    return inputs


# Called eagerly, a model traces its call again for each input shape it meets: every last
# batch, every batch whose list columns hold another number of values. Choosing recommend's
# ordering on ml-1m-shaped data traced 184 times, 12 of its 79 s. One function per model, its
# inputs (all [n]: to_model_inputs) of any length, traces once. It is also four times faster
# than the eager call on the ml-1m-shaped ranker's validation split: 0.25 s against 1.0 s for
# 197,593 rows, at each of its 25 epochs.
_INFERENCE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def infer(model: tf.keras.Model, inputs: dict[str, tf.Tensor]) -> tf.Tensor:
    """``model(inputs, training=False)`` through the model's one traced function; ``inputs`` in
    Merlin's dataloader layout, every tensor 1-D (``to_model_inputs``, ``SplitTensors``)."""
    if model not in _INFERENCE:
        # A weak reference, or the function would keep its own dictionary key alive.
        held = weakref.ref(model)
        signature = {name: tf.TensorSpec([None], value.dtype) for name, value in inputs.items()}
        _INFERENCE[model] = tf.function(
            lambda inputs: held()(inputs, training=False),
            input_signature=[signature],
            # Merlin's calls branch on Python values only: the plain trace is the same graph.
            autograph=False,
        )
    return _INFERENCE[model](inputs)


def predict_rows(
    model: tf.keras.Model, df: pd.DataFrame, schema: Schema, batch_size: int = 4096
) -> np.ndarray:
    """The model's output for each row of ``df`` (workflow outputs), stacked: [rows, ...]."""
    outputs = [
        np.asarray(infer(model, to_model_inputs(df.iloc[start : start + batch_size], schema)))
        for start in range(0, len(df), batch_size)
    ]
    return np.concatenate(outputs) if outputs else np.empty(0, dtype=np.float32)


def predict_frame(
    model: tf.keras.Model, df: pd.DataFrame, schema: Schema, batch_size: int = 4096
) -> np.ndarray:
    """Scores for each row of ``df`` (workflow outputs), as float32 of shape [rows]."""
    return predict_rows(model, df, schema, batch_size).reshape(-1).astype(np.float32)
