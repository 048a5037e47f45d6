"""Ranking: a Merlin Models DLRM on the feature schema, with a per-item baseline."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import merlin.models.tf as mm
import numpy as np
import pandas as pd
import tensorflow as tf
from merlin.io import Dataset
from merlin.schema import Schema, Tags

from models.metrics import binary_metrics
from recflow.artifacts import Artifact
from recflow.atomic import atomic_dir
from recflow.config import RankingConfig

log = logging.getLogger(__name__)

# Pseudo-count of the smoothed per-item baseline: an item with few ratings stays near the
# global positive rate instead of swinging to 0 or 1.
BASELINE_PRIOR_WEIGHT = 10.0


class RankingModel(Artifact):
    """A trained DLRM (SavedModel in ``model/``) with its validation metrics."""

    features_fingerprint: str
    params: dict
    metrics: dict[str, float]
    baseline_metrics: dict[str, float]
    history: list[dict[str, float]]
    best_epoch: int
    train_seconds: float
    train_examples_per_s: float

    @property
    def model_dir(self) -> Path:
        return self.path / "model"


def target_column(schema: Schema) -> str:
    return schema.select_by_tag(Tags.BINARY_CLASSIFICATION).first.name


def build_dlrm(schema: Schema, cfg: RankingConfig) -> mm.Model:
    target = target_column(schema)
    return mm.DLRMModel(
        schema,
        embedding_dim=cfg.embedding_dim,
        embedding_options=mm.EmbeddingOptions(embeddings_l2_reg=cfg.embeddings_l2),
        bottom_block=mm.MLPBlock(list(cfg.bottom_mlp)),
        top_block=mm.MLPBlock(list(cfg.top_mlp), dropout=cfg.dropout),
        prediction_tasks=mm.BinaryOutput(target),
    )


def train_dlrm(
    train_dir: Path, valid_dir: Path, cfg: RankingConfig, out_dir: Path, fingerprint: str
) -> RankingModel:
    """Fit with early stopping on validation AUC (best weights kept) and save atomically."""
    tf.keras.utils.set_random_seed(cfg.seed)
    train = Dataset(str(train_dir), engine="parquet")
    valid = Dataset(str(valid_dir), engine="parquet")
    schema = train.schema
    model = build_dlrm(schema, cfg)
    model.compile(
        optimizer=tf.keras.optimizers.Adam(learning_rate=cfg.learning_rate),
        metrics=[tf.keras.metrics.AUC(name="auc")],
    )
    stop = tf.keras.callbacks.EarlyStopping(
        monitor="val_auc", mode="max", patience=cfg.patience, restore_best_weights=True
    )
    started = time.perf_counter()
    fit = model.fit(
        train,
        batch_size=cfg.batch_size,
        epochs=cfg.epochs,
        validation_data=valid,
        callbacks=[stop],
        shuffle=True,
        verbose=2,
    )
    seconds = time.perf_counter() - started
    history = [
        {key: float(values[epoch]) for key, values in fit.history.items()}
        for epoch in range(len(fit.history["loss"]))
    ]
    best_epoch = int(np.argmax([row["val_auc"] for row in history])) + 1

    labels, scores = predict_split(model, valid_dir, cfg.batch_size)
    metrics = binary_metrics(labels, scores)
    baseline = binary_metrics(
        labels, item_mean_baseline(train_dir, valid_dir, target_column(schema))
    )
    log.info("DLRM valid %s (baseline %s), best epoch %d", metrics, baseline, best_epoch)

    with atomic_dir(out_dir) as staging:
        model.save(str(staging / "model"))
        ranking = RankingModel(
            path=out_dir,
            features_fingerprint=fingerprint,
            params=cfg.model_dump(mode="json"),
            metrics=metrics,
            baseline_metrics=baseline,
            history=history,
            best_epoch=best_epoch,
            train_seconds=seconds,
            train_examples_per_s=train.num_rows * len(history) / seconds,
        )
        ranking.save_manifest(staging)
    return ranking


def predict_split(
    model: mm.Model, split_dir: Path, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and predicted probabilities for every row of a transformed split, in file order."""
    loader = mm.Loader(Dataset(str(split_dir), engine="parquet"), batch_size, shuffle=False)
    labels, scores = [], []
    # Iterate the loader ourselves so each score stays paired with its own label.
    for inputs, target in loader:
        scores.append(np.asarray(model(inputs, training=False)).reshape(-1))
        labels.append(np.asarray(target).reshape(-1))
    return np.concatenate(labels), np.concatenate(scores)


def item_mean_baseline(train_dir: Path, valid_dir: Path, target: str) -> np.ndarray:
    """Smoothed per-item positive rate from training, as a score for each validation row."""
    train = _read_split(train_dir, ["item_id", target])
    prior = float(train[target].mean())
    stats = train.groupby("item_id")[target].agg(["sum", "count"])
    rate = (stats["sum"] + prior * BASELINE_PRIOR_WEIGHT) / (stats["count"] + BASELINE_PRIOR_WEIGHT)
    valid = _read_split(valid_dir, ["item_id"])
    return valid["item_id"].map(rate).fillna(prior).to_numpy()


def _read_split(split_dir: Path, columns: list[str]) -> pd.DataFrame:
    parts = sorted(Path(split_dir).glob("*.parquet"))
    return pd.concat([pd.read_parquet(part, columns=columns) for part in parts])


def load_model(model_dir: Path) -> tf.keras.Model:
    return tf.keras.models.load_model(str(model_dir))
