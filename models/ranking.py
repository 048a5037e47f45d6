"""Ranking: one of the architectures of models/architectures.py on the feature schema, trained
with early stopping, next to a per-item baseline."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import tensorflow as tf
from merlin.schema import Schema, Tags

from models.architectures import RANKING_ARCHITECTURES, ranker_inputs
from models.baselines import item_mean_scores
from models.metrics import binary_metrics
from models.predict import infer
from models.training import (
    EpochHook,
    SplitTensors,
    batch_for_rows,
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
)
from recflow.artifacts import RankingModel
from recflow.atomic import atomic_dir
from recflow.config import RankingConfig
from recflow.vocabulary import RATING

log = logging.getLogger(__name__)

# What early stopping (and tuning) maximise.
MONITOR = "auc"


def model_schema(schema: Schema, architecture: str) -> Schema:
    """The columns the architecture reads and the binary target: nothing else reaches it."""
    inputs = ranker_inputs(schema, architecture).column_names
    return schema.select_by_name([*inputs, binary_target(schema)])


def train_ranker(
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
    schema = model_schema(read_schema(train_dir), cfg.architecture)
    train = read_split(train_dir, schema, schema.column_names)
    if cfg.label_grading:
        train = with_graded_labels(train, train_dir, cfg.label_grading)
    valid = read_split(valid_dir, schema, schema.column_names)
    applied = scaled_for_rows(cfg, train.num_rows)
    batch_size = batch_for_rows(cfg.batch_size, cfg.max_batch_size, train.num_rows)
    model = RANKING_ARCHITECTURES[cfg.architecture](schema, applied)
    # Build on features alone: the SavedModel keeps the first call's signature, and export
    # calls without targets (a model first called by fit, with targets, cannot be exported).
    inputs, _ = next(iter(valid.batches(PREDICT_BATCH, shuffle=False)))
    model(inputs, training=False)
    process, processes = process_rank()
    batches = train.batches(batch_size, shuffle=True, share=(process, processes))
    compile_model(model, optimizer_for(cfg, int(batches.cardinality())))

    def evaluate() -> dict[str, float]:
        return binary_metrics(*predict_split(model, valid))

    fit = fit_keeping_best(
        model,
        batches,
        epochs=cfg.epochs,
        patience=cfg.patience,
        min_delta=cfg.min_delta,
        lower_rate_on_stall=lowers_rate_on_stall(cfg),
        evaluate=evaluate,
        monitor=MONITOR,
        n_rows=train.num_rows,
        name=cfg.architecture,
        on_epoch=on_epoch,
    )
    baseline = binary_metrics(*item_baseline(train_dir, valid_dir, schema))
    log.info(
        "%s valid %s, baseline %s, epoch %d",
        cfg.architecture,
        fit.metrics,
        baseline,
        fit.best_epoch,
    )

    ranking = RankingModel(
        path=out_dir,
        features_fingerprint=fingerprint,
        architecture=cfg.architecture,
        params=cfg.model_dump(mode="json"),
        baseline_metrics=baseline,
        embeddings_l2_per_step=applied.embeddings_l2,
        batch_size_applied=batch_size,
        processes=processes,
        **dict(fit),
    )
    if process == 0:  # every process holds the same weights: one writes them
        with atomic_dir(out_dir) as staging:
            save_model(
                model, staging / "model", lambda ranker: np.asarray(ranker(inputs, training=False))
            )
            ranking.save_manifest(staging)
    return ranking


def graded_labels(rating: np.ndarray, liked: np.ndarray, grading: float) -> np.ndarray:
    """Training labels that keep how much a pair was liked: within the liked ratings, from
    ``1 - grading`` (the lowest) to 1 (the highest); within the others, from 0 (the lowest) to
    ``grading`` (the highest). The binary order is kept, a 5 ranks above a 4 and a 3 above a 1.
    A class holding one value (0/1 labels, implicit feedback) keeps its binary label."""
    labels = np.zeros(len(rating), np.float32)
    for cls, default in ((liked == 1, 1.0), (liked != 1, 0.0)):
        values = rating[cls].astype(np.float64)
        span = np.ptp(values) if len(values) else 0.0
        position = (values - values.min()) / span if span > 0 else np.full(len(values), default)
        labels[cls] = 1 - grading * (1 - position) if default else grading * position
    return labels


def with_graded_labels(train: SplitTensors, train_dir: Path, grading: float) -> SplitTensors:
    """The training split with ``graded_labels`` as its target (validation keeps the binary one,
    which the gate, the tuning and early stopping judge). The split holds the raw rating:
    settings refuse grading without ``features.rating_target``."""
    frame = read_columns(train_dir, [RATING, train.target])
    labels = graded_labels(frame[RATING].to_numpy(), frame[train.target].to_numpy(), grading)
    columns = {**train.columns, train.target: tf.constant(labels)}
    return dataclasses.replace(train, columns=columns)


# Rows per forward pass when scoring a split: inference holds no gradients, so it can be wide.
PREDICT_BATCH = 8192


def predict_split(model: tf.keras.Model, split: SplitTensors) -> tuple[np.ndarray, np.ndarray]:
    """Labels and predicted probabilities for every row of a split, in file order."""
    labels, scores = [], []
    # Iterate the batches ourselves so each score stays paired with its own label.
    for inputs, target in split.batches(PREDICT_BATCH, shuffle=False):
        scores.append(np.asarray(infer(model, inputs)).reshape(-1))
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
