"""Early stopping in ``fit_keeping_best``: patience counts epochs that gained less than
``min_delta``; the best epoch's weights are kept whatever stopped the fit; the ``plateau``
schedule lowers the learning rate after each epoch that gained less."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from models.training import fit_keeping_best
from recflow.artifacts import FitSummary

# Validation values by epoch: a clear gain at 2, then gains of 0.0001-0.0009 each, then a jump.
SCRIPT = [0.10, 0.20, 0.2005, 0.2009, 0.2008, 0.2007, 0.30]
X = np.linspace(-1, 1, 32, dtype=np.float32).reshape(-1, 1)


def fit_on_script(model: tf.keras.Model, evaluate, **stopping) -> FitSummary:
    """``model`` fitted to y = 3x for up to the script's epochs, ``evaluate`` scoring each."""
    batches = tf.data.Dataset.from_tensor_slices((X, 3 * X)).batch(8)
    return fit_keeping_best(
        model,
        batches,
        epochs=len(SCRIPT),
        evaluate=evaluate,
        monitor="score",
        n_rows=len(X),
        name="toy",
        **stopping,
    )


@pytest.mark.parametrize(
    ("min_delta", "epochs_run", "best_epoch"),
    [
        (0.0, 7, 7),  # every small gain resets patience, so the fit reaches the jump
        (0.001, 6, 4),  # epochs 3-6 gain under 0.001 over epoch 2: stopped; 4 is the best
    ],
)
def test_patience_counts_epochs_that_gain_less_than_min_delta(min_delta, epochs_run, best_epoch):
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([tf.keras.layers.Dense(1)])
    model.compile(optimizer=tf.keras.optimizers.SGD(0.1), loss="mse")
    weights_after = []

    def evaluate() -> dict[str, float]:
        weights_after.append(model.get_weights())
        return {"score": SCRIPT[len(weights_after) - 1]}

    fit = fit_on_script(model, evaluate, patience=3, min_delta=min_delta, lower_rate_on_stall=False)

    assert len(fit.history) == epochs_run
    assert fit.best_epoch == best_epoch and fit.metrics["score"] == SCRIPT[best_epoch - 1]
    for kept, trained in zip(model.get_weights(), weights_after[best_epoch - 1], strict=True):
        np.testing.assert_array_equal(kept, trained)


def test_the_plateau_schedule_lowers_the_rate_after_each_epoch_that_gains_too_little():
    model = tf.keras.Sequential([tf.keras.layers.Dense(1)])
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01), loss="mse")
    rates = []

    def evaluate() -> dict[str, float]:
        # The rate the epoch just trained at: the callback lowers it after this returns.
        rates.append(float(model.optimizer.learning_rate.numpy()))
        return {"score": SCRIPT[len(rates) - 1]}

    fit_on_script(model, evaluate, patience=10, min_delta=0.001, lower_rate_on_stall=True)

    # Epochs 3-6 gain under 0.001 over epoch 2: each lowers the rate tenfold for the next one.
    assert rates == pytest.approx([0.01, 0.01, 0.01, 1e-3, 1e-4, 1e-5, 1e-6])
