"""The ranking architectures recommender engineers compare, each a few Merlin Models blocks.

Every builder takes the model schema (features + binary target) and the ranking settings and
returns a Merlin model ending in ``BinaryOutput``: same inputs, same output, so one training
loop (models/ranking.py), one ONNX export and one serving path fit them all. Models that use
only the ids (``mf``, ``ncf``) take only the id columns (:func:`ranker_inputs`): Merlin
refuses a batch with features its model has no input for, and the ONNX export is traced on
the same columns.

* ``dlrm``: embeddings and a bottom MLP over the continuous features, pairwise dot products,
  a top MLP (Naumov et al. 2019).
* ``dcn``: DCN-v2 cross layers over the concatenated inputs, then a deep MLP (Wang et al. 2021).
* ``mlp``: an MLP over the concatenated embeddings (Merlin Models' first example).
* ``ncf``: NCF's GMF (element-wise product of id embeddings) next to an MLP over separate id
  embeddings, concatenated (He et al. 2017; NVIDIA's reference implementation).
* ``mf``: the dot product of user and item embeddings plus a bias per user and per item, L2
  on the embeddings: the classic matrix factorisation Rendle et al. (2020) found hard to beat.
"""

from __future__ import annotations

from collections.abc import Callable

import merlin.models.tf as mm
import merlin.models.tf.blocks.cross as mm_cross
import tensorflow as tf
from merlin.schema import Schema, Tags

from models.predict import input_columns
from models.training import binary_target
from recflow.config import RankingConfig

# The architectures that read the user and item ids alone; the others read every feature.
ID_ONLY = frozenset({"mf", "ncf"})


def ranker_inputs(schema: Schema, architecture: str) -> Schema:
    """The input columns of ``schema`` (features, no target) an architecture reads."""
    if architecture in ID_ONLY:
        return _ids(schema)[0]
    return schema.select_by_name(input_columns(schema))


def _embeddings(schema: Schema, dim: int, cfg: RankingConfig) -> mm.EmbeddingTable:
    # Built here rather than from Merlin's ``embedding_options``: DLRMBlock reads only the
    # dimension, combiner and initialiser from those and drops the L2 regulariser.
    return mm.Embeddings(
        schema.select_by_tag(Tags.CATEGORICAL),
        dim=dim,
        embeddings_regularizer=tf.keras.regularizers.l2(cfg.embeddings_l2),
    )


def _ids(schema: Schema) -> tuple[Schema, str, str]:
    """The schema of the user and item id columns, and their names."""
    user = schema.select_by_tag(Tags.USER_ID).first.name
    item = schema.select_by_tag(Tags.ITEM_ID).first.name
    return schema.select_by_name([user, item]), user, item


def _output(schema: Schema) -> mm.BinaryOutput:
    return mm.BinaryOutput(binary_target(schema))


def _top(cfg: RankingConfig) -> mm.MLPBlock:
    return mm.MLPBlock(list(cfg.top_mlp), dropout=cfg.dropout)


def build_dlrm(schema: Schema, cfg: RankingConfig) -> mm.Model:
    has_continuous = bool(schema.select_by_tag(Tags.CONTINUOUS).column_names)
    return mm.DLRMModel(
        schema,
        embeddings=_embeddings(schema, cfg.embedding_dim, cfg),
        # The bottom MLP projects the continuous features; without any there is nothing to project.
        bottom_block=(
            mm.MLPBlock([*cfg.bottom_mlp, cfg.embedding_dim]) if has_continuous else None
        ),
        top_block=_top(cfg),
        prediction_tasks=_output(schema),
    )


@tf.keras.utils.register_keras_serializable(package="recflow")
class Cross(mm_cross.Cross):
    """Merlin's DCN-v2 cross layer, with ``output_x0`` in its config.

    Merlin 23.08 leaves ``output_x0`` out of ``Cross.get_config``, so Keras, loading a saved
    DCN, rebuilt its cross layers without it: each then crossed the previous layer's output
    with itself instead of with the inputs. The same weights scored differently (after 2
    epochs of the tests' data: logloss 0.5296 trained, 0.5270 reloaded), traced save or not.
    """

    def get_config(self) -> dict:
        return {**super().get_config(), "output_x0": self.output_x0}


def build_dcn(schema: Schema, cfg: RankingConfig) -> mm.Model:
    """Merlin's stacked ``DCNModel`` (inputs, cross layers, deep MLP), built with the
    :class:`Cross` above: every layer but the last passes the inputs on with its output."""
    inputs = mm.InputBlockV2(schema, categorical=_embeddings(schema, cfg.embedding_dim, cfg))
    depth = cfg.cross_depth
    crosses = mm.SequentialBlock(
        [Cross(output_x0=layer < depth - 1) for layer in range(depth)], block_name="CrossBlock"
    )
    return mm.Model(inputs.connect(crosses, _top(cfg)), _output(schema))


def build_mlp(schema: Schema, cfg: RankingConfig) -> mm.Model:
    inputs = mm.InputBlockV2(schema, categorical=_embeddings(schema, cfg.embedding_dim, cfg))
    return mm.Model(inputs, _top(cfg), _output(schema))


class ElementwiseProduct(tf.keras.layers.Layer):
    """The product of the user's and the item's embedding vectors, one value per dimension."""

    def call(self, inputs: dict[str, tf.Tensor]) -> tf.Tensor:
        user, item = inputs.values()
        return user * item


class DotWithBiases(tf.keras.layers.Layer):
    """``<user, item> + bias(user) + bias(item)``, each id's bias being the last component of
    its embedding: one table per id, so weight decay covers factors and biases alike (as in
    fast.ai's ``EmbeddingDotBias``)."""

    def __init__(self, user: str, item: str, **kwargs):
        super().__init__(**kwargs)
        self.user, self.item = user, item

    def call(self, inputs: dict[str, tf.Tensor]) -> tf.Tensor:
        user, item = inputs[self.user], inputs[self.item]
        dot = tf.reduce_sum(user[:, :-1] * item[:, :-1], axis=-1, keepdims=True)
        return dot + user[:, -1:] + item[:, -1:]

    def get_config(self) -> dict:
        return {**super().get_config(), "user": self.user, "item": self.item}


def build_ncf(schema: Schema, cfg: RankingConfig) -> mm.Model:
    ids, _, _ = _ids(schema)
    gmf = mm.InputBlockV2(
        ids, categorical=_embeddings(ids, cfg.embedding_dim, cfg), aggregation=None
    ).connect(ElementwiseProduct())
    mlp = mm.InputBlockV2(ids, categorical=_embeddings(ids, cfg.embedding_dim, cfg)).connect(
        _top(cfg)
    )
    return mm.Model(
        mm.ParallelBlock({"gmf": gmf, "mlp": mlp}, aggregation="concat"), _output(schema)
    )


def build_mf(schema: Schema, cfg: RankingConfig) -> mm.Model:
    ids, user, item = _ids(schema)
    factors_and_bias = _embeddings(ids, cfg.embedding_dim + 1, cfg)
    score = mm.InputBlockV2(ids, categorical=factors_and_bias, aggregation=None)
    return mm.Model(score.connect(DotWithBiases(user, item)), _output(schema))


RANKING_ARCHITECTURES: dict[str, Callable[[Schema, RankingConfig], mm.Model]] = {
    "dlrm": build_dlrm,
    "dcn": build_dcn,
    "mlp": build_mlp,
    "ncf": build_ncf,
    "mf": build_mf,
}
