"""Ranking: a Merlin Models DLRM on the feature schema, with a per-item baseline."""

from __future__ import annotations

import logging
from pathlib import Path

import merlin.models.tf as mm
import numpy as np
import tensorflow as tf
from merlin.schema import Schema, Tags

from models.baselines import item_mean_scores
from models.metrics import binary_metrics
from models.predict import input_columns
from models.training import (
    EpochHook,
    binary_target,
    fit_keeping_best,
    make_loader,
    make_optimizer,
    read_columns,
    read_schema,
    seed_everything,
    split_dataset,
)
from recflow.artifacts import RankingModel
from recflow.atomic import atomic_dir
from recflow.config import RankingConfig

log = logging.getLogger(__name__)

# What early stopping (and tuning) maximise.
MONITOR = "auc"


def model_schema(schema: Schema) -> Schema:
    """The feature columns and the binary target: nothing else reaches the model."""
    return schema.select_by_name([*input_columns(schema), binary_target(schema)])


def build_dlrm(schema: Schema, cfg: RankingConfig) -> mm.Model:
    schema = model_schema(schema)
    has_continuous = bool(schema.select_by_tag(Tags.CONTINUOUS).column_names)
    # The tables are built here, not from ``embedding_options``: DLRMBlock reads only the
    # dimension, combiner and initialiser from those and drops ``embeddings_l2_reg``.
    embeddings = mm.Embeddings(
        schema.select_by_tag(Tags.CATEGORICAL),
        dim=cfg.embedding_dim,
        embeddings_regularizer=tf.keras.regularizers.l2(cfg.embeddings_l2),
    )
    return mm.DLRMModel(
        schema,
        embeddings=embeddings,
        # The bottom MLP projects the continuous features; without any there is nothing to project.
        bottom_block=(
            mm.MLPBlock([*cfg.bottom_mlp, cfg.embedding_dim]) if has_continuous else None
        ),
        top_block=mm.MLPBlock(list(cfg.top_mlp), dropout=cfg.dropout),
        prediction_tasks=mm.BinaryOutput(binary_target(schema)),
    )


def train_dlrm(
    train_dir: Path,
    valid_dir: Path,
    cfg: RankingConfig,
    out_dir: Path,
    fingerprint: str,
    *,
    on_epoch: EpochHook | None = None,
) -> RankingModel:
    """Fit with early stopping on validation AUC (best weights kept) and save atomically.

    The per-item baseline is scored on the same validation rows by the same metric code.
    ``on_epoch`` sees each epoch's validation metrics (models/training.py).
    """
    seed_everything(cfg.seed)
    schema = model_schema(read_schema(train_dir))
    train = split_dataset(train_dir, schema, schema.column_names)
    model = build_dlrm(schema, cfg)
    # No Keras metrics: early stopping and the gate read our own (models/metrics.py).
    model.compile(optimizer=make_optimizer(cfg.optimizer, cfg.learning_rate), metrics=[])

    def evaluate() -> dict[str, float]:
        return binary_metrics(*predict_split(model, valid_dir, schema, cfg.batch_size))

    fit = fit_keeping_best(
        model,
        make_loader(train, cfg.batch_size, shuffle=True),
        epochs=cfg.epochs,
        patience=cfg.patience,
        evaluate=evaluate,
        monitor=MONITOR,
        n_rows=train.num_rows,
        name="DLRM",
        on_epoch=on_epoch,
    )
    baseline = binary_metrics(*item_baseline(train_dir, valid_dir, schema))
    log.info("DLRM valid %s, baseline %s, epoch %d", fit.best_metrics, baseline, fit.best_epoch)

    with atomic_dir(out_dir) as staging:
        model.save(str(staging / "model"))
        ranking = RankingModel(
            path=out_dir,
            features_fingerprint=fingerprint,
            params=cfg.model_dump(mode="json"),
            baseline_metrics=baseline,
            **fit.manifest_fields(),
        )
        ranking.save_manifest(staging)
    return ranking


def predict_split(
    model: mm.Model, split_dir: Path, schema: Schema, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and predicted probabilities for every row of a transformed split, in file order."""
    dataset = split_dataset(split_dir, schema, schema.column_names)
    labels, scores = [], []
    # Iterate the loader ourselves so each score stays paired with its own label.
    for inputs, target in make_loader(dataset, batch_size, shuffle=False):
        scores.append(np.asarray(model(inputs, training=False)).reshape(-1))
        labels.append(np.asarray(target).reshape(-1))
    return np.concatenate(labels), np.concatenate(scores)


def item_baseline(
    train_dir: Path, valid_dir: Path, schema: Schema
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and smoothed per-item positive rates (from training) of the validation rows."""
    item = schema.select_by_tag(Tags.ITEM_ID).first.name
    target = binary_target(schema)
    valid = read_columns(valid_dir, [item, target])
    scores = item_mean_scores(read_columns(train_dir, [item, target]), valid, item, target)
    return valid[target].to_numpy(), scores


def load_model(model_dir: Path) -> tf.keras.Model:
    return tf.keras.models.load_model(str(model_dir))
