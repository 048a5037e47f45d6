"""What ranker and retrieval training share: column selection, loaders, the fit loop.

Early stopping runs our own metric code (models/metrics.py) on the validation split after
every epoch, so the epoch that is kept is chosen by the same numbers the gate reads.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
import tensorflow as tf
from merlin.io import Dataset
from merlin.models.tf.distributed.backend import hvd, hvd_installed
from merlin.schema import Schema, Tags
from rich.console import Console

from models.predict import input_columns
from models.progress import EpochProgress
from recflow.artifacts import FitSummary
from recflow.config import RankingConfig, RetrievalConfig

log = logging.getLogger(__name__)


def read_schema(split_dir: Path) -> Schema:
    return Dataset(str(split_dir), engine="parquet").schema


def binary_target(schema: Schema) -> str:
    """The binary target: picked by tag, so another target (e.g. the raw rating) is ignored."""
    return schema.select_by_tag(Tags.BINARY_CLASSIFICATION).first.name


def side_columns(schema: Schema, tag: Tags) -> list[str]:
    """Input columns of one side (``Tags.USER`` or ``Tags.ITEM``), ids included."""
    side = set(schema.select_by_tag(tag).column_names)
    return [name for name in input_columns(schema) if name in side]


def read_columns(split_dir: Path, columns: list[str]) -> pd.DataFrame:
    """Columns of every part of a transformed split, as one frame."""
    parts = sorted(Path(split_dir).glob("*.parquet"))
    return pd.concat([pd.read_parquet(part, columns=columns) for part in parts], ignore_index=True)


@dataclass(frozen=True)
class SplitTensors:
    """A transformed split held in memory as tensors, one per column (lists as ragged rows).

    Training reads each split once and batches it with tf.data: Merlin's dataloader on CPU
    reached ~50,000 rows/s and the Keras step half of that (benchmarks/results/training.md).
    Memory is about 8 bytes per value: 10M rows of a dozen columns take ~1 GB.
    """

    columns: dict[str, tf.Tensor | tf.RaggedTensor]
    target: str | None
    num_rows: int

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool,
        min_rows: int = 1,
        share: tuple[int, int] = (0, 1),
    ) -> tf.data.Dataset:
        """Batches in Merlin's dataloader layout (``models.predict.to_model_inputs``): scalars
        as ``[batch]``, lists as ``__values``/``__offsets``; ``(inputs, target)`` if the split
        has a target. Shuffled anew each epoch from TensorFlow's seed (``seed_everything``).
        A last batch of fewer than ``min_rows`` rows is left out where there are whole ones
        (its rows, drawn anew each epoch when shuffled, are in other epochs' batches).

        ``share`` = (process, processes): the rows of one of several processes training the
        same model (:func:`process_rank`), every processes-th row from the process's own. Each
        gets ``num_rows // processes`` of them, the same number of steps: every step averages
        the gradients of all processes, so one with a step more would wait for the others
        forever."""
        process, processes = share
        rows = tf.data.Dataset.range(self.num_rows)
        n_rows = self.num_rows // processes
        if processes > 1:
            rows = rows.shard(processes, process).take(n_rows)
        if shuffle:
            rows = rows.shuffle(n_rows, reshuffle_each_iteration=True)
        remainder = n_rows % batch_size
        if remainder < min_rows and n_rows > batch_size:
            # take, not filter: Keras needs the number of batches (steps_per_execution > 1).
            rows = rows.take(n_rows - remainder)
        # Fixed parallelism and no autotuning: tf.data's autotuner wakes on a period that doubles
        # from 10 ms to 60 s, and freeing an epoch's iterator waits for its next wake-up. Epochs
        # ended 10.23 s, 20.47 s, 40.95 s ... after they started, whatever their work: ml-1m
        # two-tower epochs of 21 s took 41 (docs/training.md, "The fit loop").
        # A batch is one gather per column: one call at a time, two ahead, keeps a step fed.
        options = tf.data.Options()
        options.autotune.enabled = False
        return (
            rows.batch(batch_size)
            .map(self._gather, num_parallel_calls=1)
            .prefetch(2)
            .with_options(options)
        )

    def _gather(self, rows: tf.Tensor):
        inputs = {}
        for name, column in self.columns.items():
            picked = tf.gather(column, rows)
            if isinstance(picked, tf.RaggedTensor):
                inputs[f"{name}__values"] = picked.flat_values
                inputs[f"{name}__offsets"] = picked.row_splits
            else:
                inputs[name] = picked
        return (inputs, inputs.pop(self.target)) if self.target else inputs


def read_split(
    split_dir: Path, schema: Schema, columns: list[str], positives_of: str | None = None
) -> SplitTensors:
    """``columns`` of a split in memory, optionally only the rows where ``positives_of`` is 1.

    Restricting the columns is what keeps extra ones (another target, say) out of the model;
    the split's target, if among ``columns``, becomes the batches' label.
    """
    frame = read_columns(split_dir, sorted({*columns, *filter(None, [positives_of])}))
    if positives_of is not None:
        frame = frame[frame[positives_of] == 1]
    schema = schema.select_by_name(columns)
    tensors = {}
    for name in columns:
        dtype = tf.as_dtype(schema[name].dtype.to_numpy)
        if schema[name].is_list:
            lengths = frame[name].map(len).to_numpy(np.int64)
            values = np.concatenate([*frame[name].to_numpy(), np.empty(0)])
            tensors[name] = tf.RaggedTensor.from_row_lengths(
                tf.constant(values, dtype=dtype), lengths
            )
        else:
            tensors[name] = tf.constant(frame[name].to_numpy(), dtype=dtype)
    targets = schema.select_by_tag(Tags.TARGET).column_names
    return SplitTensors(tensors, targets[0] if targets else None, len(frame))


# The training rows the defaults were chosen at: ml-100k's folds, 64,000-80,000.
REFERENCE_ROWS = 100_000

SectionConfig = TypeVar("SectionConfig", RankingConfig, RetrievalConfig)


def scaled_for_rows(cfg: SectionConfig, rows: int) -> SectionConfig:
    """``cfg`` with ``embeddings_l2`` as applied at each step when training on ``rows`` rows.

    Keras applies an embedding table's regulariser to the whole table at every step, while a
    row's data gradient comes only from the batches it is in. An epoch takes rows/batch steps,
    so the decay a table gets per epoch grows with the rows while the evidence per user or item
    grows far less: at ml-1m's 802,407 rows the setting chosen on ml-100k held the two-tower
    near most-popular for its first epochs. Above ``REFERENCE_ROWS`` the factor is scaled by
    ``REFERENCE_ROWS / rows``, the decay per epoch the defaults were chosen with at the
    setting's batch; at or below it, it is the setting, so ml-100k trains as before
    (docs/training.md, "Training at other sizes"). The ranker's batch also grows with the rows
    (:func:`batch_for_rows`): fewer steps an epoch, so its tables decay less per epoch than at
    the reference size.
    """
    scale = min(1.0, REFERENCE_ROWS / rows)
    return cfg.model_copy(update={"embeddings_l2": cfg.embeddings_l2 * scale})


def batch_for_rows(batch_size: int, max_batch_size: int, rows: int) -> int:
    """The ranker's batch on ``rows`` training rows: ``batch_size`` doubled for each doubling
    of the rows past ``REFERENCE_ROWS``, up to ``max_batch_size``.

    On a CPU a step of 4,096 rows costs far less than eight of 512: on ml-1m-shaped features
    (802,407 training rows) the default ranker trained at 207,631 examples/s against 99,760,
    and reached validation AUC 0.8526 against 0.8368 (benchmarks/results/batch.md). The
    per-step embedding L2 (:func:`scaled_for_rows`) is not raised with the batch: fewer steps
    an epoch decay the tables less, which is what that AUC came with. At or below the
    reference rows the setting is the batch, so ml-100k trains as before.
    """
    batch = batch_size
    while batch * 2 <= max_batch_size and rows >= REFERENCE_ROWS * (batch * 2 // batch_size):
        batch *= 2
    return batch


# Training steps per call into the compiled graph. Each call costs Merlin's Python train_step
# and the callbacks (a few ms on CPU), which at one step per call took half the time.
STEPS_PER_EXECUTION = 16


def optimizer_for(cfg: SectionConfig, steps_per_epoch: int) -> tf.keras.optimizers.Optimizer:
    """``cfg.optimizer`` at ``cfg.learning_rate``, held or (``cosine``) lowered to 0 along a half
    cosine over ``cfg.epochs`` epochs of ``steps_per_epoch`` steps (SGDR's schedule without
    restarts, Loshchilov & Hutter 2017). The rate follows the optimizer's step count, so an
    early stop leaves it where that epoch had it. ``plateau`` starts as ``constant``; the fit
    lowers it (:func:`fit_keeping_best`)."""
    rate: float | tf.keras.optimizers.schedules.LearningRateSchedule = cfg.learning_rate
    if cfg.learning_rate_schedule == "cosine":
        rate = tf.keras.optimizers.schedules.CosineDecay(
            cfg.learning_rate, decay_steps=cfg.epochs * steps_per_epoch
        )
    return tf.keras.optimizers.get({"class_name": cfg.optimizer, "config": {"learning_rate": rate}})


def lowers_rate_on_stall(cfg: SectionConfig) -> bool:
    """Whether the fit lowers the rate after a stalled epoch: the half of ``plateau`` that
    :func:`optimizer_for` leaves to :func:`fit_keeping_best` (``lower_rate_on_stall``)."""
    return cfg.learning_rate_schedule == "plateau"


def compile_model(model: tf.keras.Model, optimizer: tf.keras.optimizers.Optimizer) -> None:
    """Compile for ``fit_keeping_best``. No Keras metrics: Merlin's defaults (top-k over each
    batch's logits for retrieval) would run every step and never be read; early stopping and
    the gate read our own (models/metrics.py)."""
    model.compile(optimizer=optimizer, metrics=[], steps_per_execution=STEPS_PER_EXECUTION)
    # Keras traces train_step through AutoGraph, which rewrites the source of every Merlin
    # block it calls: about 4 of the first epoch's 6-7 s on ml-100k, in every run. Merlin's
    # train step branches on Python values only, so the plain trace is the same graph (the
    # same validation AUC to the last digit, MLP and DLRM; benchmarks/results/throughput.md).
    model.train_step = tf.autograph.experimental.do_not_convert(model.train_step)


def save_model(
    model: tf.keras.Model, path: Path, outputs: Callable[[tf.keras.Model], np.ndarray]
) -> None:
    """``model`` as a Keras SavedModel of its layers' configs and weights, if they rebuild it.

    Merlin's ``save`` keeps Keras's default of also tracing every layer's call, so that Keras
    can revive a layer its config cannot rebuild. That is most of a save: on the tests' small
    data 10 of the MLP ranker's 10.5 s and 5.7 of the query encoder's 6.1 s, and 8x and 4x the
    load time. Loaders here import Merlin, whose layers are registered Keras classes rebuilt
    from their configs (Keras's own save is called: Merlin's wants the traced signature for a
    schema file recflow does not read). The rebuild is kept only if it loads and ``outputs``
    gives what it gives for the trained model; otherwise Merlin's traced save is written.
    Merlin's NCF and MF rankers do not load from their configs, so they are saved traced.
    """
    tf.keras.Model.save(
        model, str(path), include_optimizer=False, save_traces=False, save_format="tf"
    )
    trained = outputs(model)
    try:
        if np.allclose(outputs(tf.keras.models.load_model(str(path))), trained, rtol=0, atol=1e-6):
            return
        problem = "gives other outputs"
    # Keras's revival raises ValueError, TypeError or KeyError, depending on the layer.
    except Exception as error:  # noqa: BLE001
        problem = f"does not load ({error.__class__.__name__})"
    log.warning("%s rebuilt from its configs %s: saving it with traces", path.name, problem)
    shutil.rmtree(path)
    model.save(str(path))


def process_rank() -> tuple[int, int]:
    """(this process, processes) training the model: Horovod's rank and size where several
    processes train it (tasks/data_parallel.py), (0, 1) otherwise. Merlin initialises Horovod
    when it is installed, and then wraps the optimizer to average the processes' gradients,
    scales its learning rate by their number and starts them from the first one's weights."""
    return (hvd.rank(), hvd.size()) if hvd_installed else (0, 1)


def seed_everything(seed: int) -> None:
    """Python, NumPy (the loader's shuffle) and TensorFlow (initialisers, dropout)."""
    tf.keras.utils.set_random_seed(seed)


# Called after each epoch's validation with the epoch (from 1) and its metrics, e.g. to report
# to a hyperparameter search (flows/tune.py). An exception it raises ends the fit and leaves
# the train function through it, so nothing is saved.
EpochHook = Callable[[int, dict[str, float]], None]


# ``plateau``: what the learning rate is multiplied by after each epoch that does not count as
# better (``min_delta``), Keras's ReduceLROnPlateau default. From the SVD start the ml-1m-shaped
# two-tower's validation recall reached 0.2796 in 5 epochs and stalled at the 6th; the epoch
# after a tenth of the rate gained 0.006 (docs/training.md, "The learning rate after a stall").
PLATEAU_FACTOR = 0.1


class _KeepBest(tf.keras.callbacks.Callback):
    def __init__(
        self,
        evaluate: Callable[[], dict[str, float]],
        monitor: str,
        patience: int,
        min_delta: float,
        lower_rate_on_stall: bool,
        on_epoch: EpochHook | None = None,
    ):
        super().__init__()
        self.evaluate, self.monitor, self.patience = evaluate, monitor, patience
        self.min_delta, self.lower_rate_on_stall = min_delta, lower_rate_on_stall
        self.on_epoch = on_epoch
        self.history: list[dict[str, float]] = []
        self.best: dict[str, float] = {}
        self.best_epoch, self.best_weights = 0, None
        # The last epoch that beat the one before it here by more than min_delta (patience
        # counts from it), and its value.
        self.gained_epoch, self.gained = 0, -np.inf
        self.eval_seconds = 0.0

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        started = time.perf_counter()
        metrics = self.evaluate()
        self.eval_seconds += time.perf_counter() - started
        self.history.append(
            {"epoch": epoch + 1, "loss": float((logs or {}).get("loss", np.nan)), **metrics}
        )
        # For the run's logs: the terminal has the epoch's progress bar (models/progress.py).
        log.info("epoch %d: %s", epoch + 1, self.history[-1], extra={"terminal": False})
        value = metrics[self.monitor]
        if not self.best or value > self.best[self.monitor]:
            self.best, self.best_epoch = metrics, epoch + 1
            self.best_weights = self.model.get_weights()
        if value > self.gained + self.min_delta:
            self.gained_epoch, self.gained = epoch + 1, value
        elif epoch + 1 - self.gained_epoch > self.patience:
            self.model.stop_training = True
        elif self.lower_rate_on_stall:
            rate = self.model.optimizer.learning_rate
            rate.assign(rate * PLATEAU_FACTOR)
            log.info("epoch %d gained too little: learning rate now %.3g", epoch + 1, rate.numpy())
        if self.on_epoch is not None:
            self.on_epoch(epoch + 1, metrics)


_SILENT = Console(quiet=True)


def _scored_by_first_process(
    evaluate: Callable[[], dict[str, float]], process: int
) -> Callable[[], dict[str, float]]:
    # Only where Horovod runs: it is not a dependency (the Merlin GPU image has it).
    from horovod.tensorflow import broadcast_object

    def scored() -> dict[str, float]:
        return broadcast_object(evaluate() if process == 0 else None, root_rank=0)

    return scored


def fit_keeping_best(
    model: tf.keras.Model,
    batches: tf.data.Dataset,
    *,
    epochs: int,
    patience: int,
    min_delta: float,
    lower_rate_on_stall: bool,
    evaluate: Callable[[], dict[str, float]],
    monitor: str,
    n_rows: int,
    name: str,
    on_epoch: EpochHook | None = None,
) -> FitSummary:
    """Fit, scoring the validation split with ``evaluate`` after each epoch; keep the best.

    Stops after ``patience`` epochs none of which raised ``monitor`` by more than ``min_delta``
    over the last epoch that did, and restores the weights of the best epoch. With
    ``lower_rate_on_stall`` each such epoch multiplies the learning rate by ``PLATEAU_FACTOR``
    (the ``plateau`` schedule). Throughput
    counts training time only, not the evaluations. ``name`` labels the epochs' progress bars;
    ``on_epoch`` (optional) sees each epoch's metrics.

    Where several processes train the model (:func:`process_rank`), the first one scores the
    validation split and shows the progress; the others receive its metrics, so every process
    keeps the same epoch and stops at the same one.
    """
    process, processes = process_rank()
    if processes > 1:
        evaluate = _scored_by_first_process(evaluate, process)
    progress = EpochProgress(name, monitor, epochs, console=None if process == 0 else _SILENT)
    keep = _KeepBest(
        progress.validating(evaluate), monitor, patience, min_delta, lower_rate_on_stall, on_epoch
    )
    started = time.perf_counter()
    with progress:
        model.fit(batches, epochs=epochs, callbacks=[progress, keep], verbose=0)
    seconds = time.perf_counter() - started - keep.eval_seconds
    model.set_weights(keep.best_weights)
    return FitSummary(
        history=keep.history,
        best_epoch=keep.best_epoch,
        metrics=keep.best,
        train_seconds=seconds,
        train_examples_per_s=n_rows * len(keep.history) / seconds,
    )
