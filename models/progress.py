"""A progress bar per training epoch in the terminal, ending with the epoch's validation metric.

Training used to leave the terminal silent for minutes. The bar advances per batch with the
running loss; when the epoch's validation (``models/training.py``'s early stopping) has scored
it, the metric is written into the bar and the bar stops, so a finished epoch stays on screen
as one line and the log lines that follow it are not drawn over. On a terminal that is not
interactive (a log file) rich prints only that last state. The bar's look is the one every bar
of recflow shares (``recflow.progress``).
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

import tensorflow as tf
from rich.console import Console
from rich.progress import Progress, TaskID

from recflow.progress import progress_bar

Metrics = dict[str, float]


class EpochProgress(tf.keras.callbacks.Callback):
    """Keras callback: one bar per epoch of ``model.fit``. Use it as a context manager around
    the fit, so a failed fit does not leave a bar running."""

    def __init__(self, name: str, monitor: str, epochs: int, console: Console | None = None):
        super().__init__()
        self.name, self.monitor, self.epochs = name, monitor, epochs
        # stderr, where the log lines go too: stdout stays for results (`recflow run`'s table).
        self.console = console or Console(stderr=True)
        self.bar: Progress | None = None
        self.task: TaskID | None = None
        self.loss = ""

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.bar = progress_bar(self.console)
        description = f"{self.name} epoch {epoch + 1}/{self.epochs}"
        self.task = self.bar.add_task(description, total=self.params.get("steps"), detail="")
        self.bar.start()

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        if "loss" in (logs or {}):
            self.loss = f"loss {float(logs['loss']):.4f}"
        # ``batch`` is the last step run: with several steps per execution, Keras calls this
        # once per execution (models/training.py).
        self.bar.update(self.task, completed=batch + 1, detail=self.loss)

    def validating(self, evaluate: Callable[[], Metrics]) -> Callable[[], Metrics]:
        """``evaluate`` (the early stopping's validation), finishing the epoch's bar with its
        ``monitor`` value."""

        def scored() -> Metrics:
            self.bar.update(self.task, detail=f"{self.loss}  validating…")
            metrics = evaluate()
            self.bar.update(
                self.task, detail=f"{self.loss}  {self.monitor} {metrics[self.monitor]:.4f}"
            )
            self._stop()
            return metrics

        return scored

    def _stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def __enter__(self) -> EpochProgress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop()
