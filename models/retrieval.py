"""Retrieval: a query encoder and an item encoder trained together, exported as the query
encoder plus item embeddings.

``two_tower`` (Merlin's TwoTowerModelV2): the query tower sees the user-tagged columns, the
item tower the item-tagged ones; both end in L2-normalised embeddings, so a score is a cosine.
``mf`` (matrix factorisation): each encoder is its id's embedding alone, a score their dot
product (what Merlin's MatrixFactorizationModelV2 builds; built here in the same model class so
both expose the same encoders). Training uses positive interactions only,
with the other items of each batch as negatives (optionally log-q corrected for popularity).
Serving needs no Merlin model for items: ``item_embeddings.parquet`` holds every catalogue
item's embedding next to its raw id, and the serving runtime searches it exactly
(serving/runtime.py ``RetrievalStage``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import merlin.models.tf as mm
import numpy as np
import pandas as pd
import tensorflow as tf
from merlin.models.tf.outputs.base import DotProduct
from merlin.models.tf.transforms.bias import PopularityLogitsCorrection
from merlin.schema import Schema, Tags
from merlin.schema.io.tensorflow_metadata import TensorflowMetadata
from scipy import sparse
from scipy.sparse.linalg import svds

from models.baselines import popularity_scores
from models.evaluation import RetrievalTask, evaluate_retrieval
from models.predict import predict_rows
from models.training import (
    EpochHook,
    binary_target,
    compile_model,
    fit_keeping_best,
    lowers_rate_on_stall,
    optimizer_for,
    process_rank,
    read_columns,
    read_schema,
    read_split,
    save_model,
    scaled_for_rows,
    seed_everything,
    side_columns,
)
from recflow.artifacts import RetrievalModel
from recflow.atomic import atomic_dir
from recflow.config import RetrievalConfig
from recflow.vocabulary import EMBEDDING, RAW_ITEM_ID

log = logging.getLogger(__name__)


class QueryEncoder:
    """The trained query tower: transformed user feature rows -> query embeddings.

    Choosing recommend's ordering on validation (models/composed.py) encodes users with it;
    serving precomputes the same embeddings at export (serving/export.py).
    """

    def __init__(self, encoder: tf.keras.Model, schema: Schema):
        self.encoder, self.schema = encoder, schema

    @classmethod
    def load(cls, model: RetrievalModel) -> QueryEncoder:
        schema = TensorflowMetadata.from_proto_text_file(str(model.query_schema_dir))
        return cls(
            tf.keras.models.load_model(str(model.query_encoder_dir)), schema.to_merlin_schema()
        )

    def encode(self, user_rows: pd.DataFrame) -> np.ndarray:
        """Query embeddings [rows, dim] of transformed user feature rows (the user workflow's)."""
        return predict_rows(self.encoder, user_rows, self.schema).astype(np.float32)


def _encoder(schema: Schema, cfg: RetrievalConfig) -> mm.Encoder:
    embeddings = mm.Embeddings(
        schema.select_by_tag(Tags.CATEGORICAL),
        dim=cfg.embedding_dim,
        embeddings_regularizer=tf.keras.regularizers.l2(cfg.embeddings_l2),
    )
    inputs = mm.InputBlockV2(schema, categorical=embeddings)
    if cfg.architecture == "mf":
        return mm.Encoder(inputs)
    return mm.Encoder(
        inputs,
        mm.MLPBlock(list(cfg.tower_mlp), dropout=cfg.dropout, no_activation_last_layer=True),
        mm.L2Norm(),
    )


def encoded_columns(schema: Schema, cfg: RetrievalConfig) -> tuple[list[str], list[str]]:
    """The columns the query and the item encoder read: every user and item feature for the
    two-tower model, the ids alone for matrix factorisation."""
    if cfg.architecture == "mf":
        return (
            [schema.select_by_tag(Tags.USER_ID).first.name],
            [schema.select_by_tag(Tags.ITEM_ID).first.name],
        )
    return side_columns(schema, Tags.USER), side_columns(schema, Tags.ITEM)


def build_retriever(
    schema: Schema, cfg: RetrievalConfig, item_frequencies: np.ndarray | None = None
) -> mm.RetrievalModelV2:
    """Query and item encoders over the columns :func:`encoded_columns` picks from ``schema``.

    ``item_frequencies`` (training positives per encoded item id) is needed for log-q
    correction only.
    """
    user_cols, item_cols = encoded_columns(schema, cfg)
    users, items = schema.select_by_name(user_cols), schema.select_by_name(item_cols)
    correction = None
    if cfg.logq_correction:
        # Merlin subtracts reg_factor * log(q) *before* dividing by the temperature; scaling it
        # by the temperature makes the trained logits cos/T - log(q), the sampled-softmax
        # correction. With reg_factor 1 the correction would be 1/T times too strong.
        correction = PopularityLogitsCorrection(
            item_frequencies, schema=items, reg_factor=cfg.logits_temperature
        )
    output = mm.ContrastiveOutput(
        DotProduct(),
        negative_samplers="in-batch",
        schema=items.select_by_tag(Tags.ITEM_ID),
        logits_temperature=cfg.logits_temperature,
        post=correction,
        # The correction needs the ids of the in-batch negatives.
        store_negative_ids=cfg.logq_correction,
    )
    return mm.TwoTowerModelV2(_encoder(users, cfg), _encoder(items, cfg), outputs=output)


def interaction_factors(
    users: np.ndarray, items: np.ndarray, shape: tuple[int, int], dim: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """User and item factors of the truncated SVD X ~ U S V^T of the binary ``shape`` matrix
    of users x items that marks each (user, item) pair once: U sqrt(S) and V sqrt(S), so their
    dot products approximate X. ``dim`` components, fewer if a side is smaller; users and
    items without pairs get zeros. ARPACK starts from a seeded vector: the same pairs give the
    same factors."""
    picks = sparse.csr_matrix((np.ones(len(users), np.float64), (users, items)), shape=shape)
    picks.data[:] = 1.0  # a pair listed twice was summed
    components = min(dim, min(shape) - 1)
    start = np.random.default_rng(seed).uniform(-1.0, 1.0, min(shape))
    u, s, vt = svds(picks, k=components, v0=start)
    return u * np.sqrt(s), vt.T * np.sqrt(s)


def start_from_interactions(
    model: mm.RetrievalModelV2, pairs: pd.DataFrame, user_id: str, item_id: str, seed: int
) -> None:
    """Set the built ``model``'s user and item id embeddings to the :func:`interaction_factors`
    of ``pairs``, each table's factors scaled to the root mean square its random initialiser
    gave it: the embedding L2 and the learning rate were chosen at that size. Components past
    the factors' (a side smaller than the width) keep their random values.

    From random ids a two-tower first learns what the pairs already say about who picks what
    together; the factors start it there (docs/training.md, "Where the id embeddings start").
    """
    tables = {
        layer.col_schema.name: layer.table
        for layer in model.submodules
        if isinstance(layer, mm.EmbeddingTable)
    }
    users, items = tables[user_id], tables[item_id]
    factors = interaction_factors(
        pairs[user_id].to_numpy(),
        pairs[item_id].to_numpy(),
        (users.input_dim, items.input_dim),
        min(users.output_dim, items.output_dim),
        seed,
    )
    for table, side in zip((users, items), factors, strict=True):
        values = table.embeddings.numpy()
        size = np.sqrt(np.mean(values**2)) / np.sqrt(np.mean(side**2))
        values[:, : side.shape[1]] = side * size
        table.embeddings.assign(values)


def train_retriever(
    train_dir: Path,
    valid_dir: Path,
    catalogue: pd.DataFrame,
    cfg: RetrievalConfig,
    out_dir: Path,
    fingerprint: str,
    *,
    on_epoch: EpochHook | None = None,
) -> RetrievalModel:
    """Fit on training positives, early-stopping on ``cfg.monitor``; export atomically.

    ``catalogue`` holds every item that may be recommended: ``raw_item_id`` plus the item
    columns as the workflow encodes them. Metrics are computed over the whole catalogue, and
    the most-popular baseline is scored on the same users by the same code. ``on_epoch`` sees
    each epoch's validation metrics (models/training.py).
    """
    seed_everything(cfg.seed)
    full = read_schema(train_dir)
    target = binary_target(full)
    user_cols, item_cols = encoded_columns(full, cfg)
    schema = full.select_by_name(user_cols + item_cols)
    user_schema, item_schema = schema.select_by_name(user_cols), schema.select_by_name(item_cols)
    user_id = schema.select_by_tag(Tags.USER_ID).first.name
    item_id = schema.select_by_tag(Tags.ITEM_ID).first.name

    pairs = read_columns(train_dir, [user_id, item_id, target])
    liked = pairs.loc[pairs[target] == 1]
    positives = liked[item_id].to_numpy()
    # What the towers learn from; log-q corrects for how often each item is in a batch of it.
    rated = cfg.interactions == "rated"
    trained = pairs if rated else liked
    trained_items = trained[item_id].to_numpy()
    valid = read_columns(valid_dir, [*user_cols, item_id, target])
    candidates = catalogue.drop_duplicates(item_id).sort_values(item_id, ignore_index=True)
    task = RetrievalTask.build(
        pairs, valid[valid[target] == 1], candidates[item_id].to_numpy(), user_id, item_id
    )
    queries = valid.drop_duplicates(user_id).set_index(user_id).loc[task.users].reset_index()

    n_ids = int(schema[item_id].int_domain.max) + 1
    applied = scaled_for_rows(cfg, len(trained_items))
    model = build_retriever(schema, applied, np.bincount(trained_items, minlength=n_ids))

    def evaluate() -> dict[str, float]:
        query_vectors = predict_rows(model.query_encoder, queries, user_schema)
        item_vectors = predict_rows(model.candidate_encoder, candidates, item_schema)
        return evaluate_retrieval(
            task, lambda rows: query_vectors[rows] @ item_vectors.T, cfg.top_k
        )

    train = read_split(
        train_dir, full, user_cols + item_cols, positives_of=None if rated else target
    )
    # A batch of one row has no in-batch negative to learn from, and Merlin's contrastive
    # output and log-q correction fail on it (a ConcatOp error from inside TensorFlow):
    # rows % batch_size == 1 ended every epoch with one. The row is in the next epoch's.
    process, processes = process_rank()
    batches = train.batches(cfg.batch_size, shuffle=True, min_rows=2, share=(process, processes))
    if cfg.initial_embeddings == "svd":
        model(next(iter(batches)), training=False)  # creates the tables
        start_from_interactions(model, trained, user_id, item_id, cfg.seed)
    compile_model(model, optimizer_for(cfg, int(batches.cardinality())))
    fit = fit_keeping_best(
        model,
        batches,
        epochs=cfg.epochs,
        patience=cfg.patience,
        min_delta=cfg.min_delta,
        lower_rate_on_stall=lowers_rate_on_stall(cfg),
        evaluate=evaluate,
        monitor=cfg.monitor,
        n_rows=len(trained_items),
        name=cfg.architecture,
        on_epoch=on_epoch,
    )
    popular = popularity_scores(positives, task.candidates)
    baseline = evaluate_retrieval(
        task, lambda rows: np.tile(popular, (len(task.users[rows]), 1)), cfg.top_k
    )
    log.info(
        "%s %s, baseline %s, epoch %d",
        cfg.architecture,
        fit.metrics,
        baseline,
        fit.best_epoch,
    )

    vectors = predict_rows(model.candidate_encoder, catalogue, item_schema).astype(np.float32)
    embeddings = pd.DataFrame(
        {
            RAW_ITEM_ID: catalogue[RAW_ITEM_ID].to_numpy(np.int64),
            item_id: catalogue[item_id].to_numpy(np.int64),
            EMBEDDING: list(vectors),
        }
    )
    retrieval = RetrievalModel(
        path=out_dir,
        features_fingerprint=fingerprint,
        params=cfg.model_dump(mode="json"),
        baseline_metrics=baseline,
        embeddings_l2_per_step=applied.embeddings_l2,
        n_items=len(embeddings),
        dim=int(vectors.shape[1]),
        processes=processes,
        **dict(fit),
    )
    if process == 0:  # every process holds the same weights: one writes them
        with atomic_dir(out_dir) as staging:
            save_model(
                model.query_encoder,
                staging / "query_encoder",
                lambda encoder: predict_rows(encoder, queries, user_schema),
            )
            (staging / "query_schema").mkdir()
            TensorflowMetadata.from_merlin_schema(user_schema).to_proto_text_file(
                str(staging / "query_schema")
            )
            embeddings.to_parquet(staging / "item_embeddings.parquet", index=False)
            retrieval.save_manifest(staging)
    return retrieval
