"""The training progress bar (models/progress.py) as ``fit_keeping_best`` draws it."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from models.training import fit_keeping_best


def test_each_epoch_ends_as_one_line_with_its_validation_metric(capsys):
    x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(-1, 1)
    y = 3 * x
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([tf.keras.layers.Dense(1)])
    model.compile(optimizer=tf.keras.optimizers.SGD(0.1), loss="mse")

    def evaluate() -> dict[str, float]:
        return {"r2": float(1 - np.mean((model.predict(x, verbose=0) - y) ** 2) / np.var(y))}

    fit = fit_keeping_best(
        model,
        tf.data.Dataset.from_tensor_slices((x, y)).batch(16),
        epochs=3,
        patience=3,
        min_delta=0.0,
        lower_rate_on_stall=False,
        evaluate=evaluate,
        monitor="r2",
        n_rows=len(x),
        name="toy",
    )

    # Not a terminal: rich prints each bar once, in its final state.
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == len(fit.history) == 3, lines
    for line, epoch in zip(lines, fit.history, strict=True):
        assert line.startswith(f"toy epoch {epoch['epoch']}/3"), line
        assert "4/4" in line  # every batch of the epoch
        assert line.endswith(f"r2 {epoch['r2']:.4f}"), line
        # The running loss after the last batch is the epoch's.
        assert f"loss {epoch['loss']:.4f}" in line, line
