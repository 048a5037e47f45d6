"""Hyperparameter search: an Optuna study over the space declared in ``tuning``, a Prefect task
per trial.

The flow builds (or reuses) the features with the pipeline's own validated ``build-features``
stage, asks the study (flows/study.py, stored in ``<home>/tuning/<study>/``) for a trial,
trains it in the ``tuning-trial`` task with the pipeline's trainer (tasks/train.py ``TRAINERS``),
and tells the study the result, one trial at a time.
Each trial trains one model (``tuning.model``: ranking or retrieval) with the configured section
overridden by the trial's point (any of its fields, the architecture's own ones too), reports
each epoch's validation metric to the study, and is stopped there when the pruner finds it
hopeless. The best trial is the complete one with the highest validation metric (``auc``, or
``retrieval.monitor``).

Resuming: a re-run of the same study runs only the trials that ``n_trials`` still lacks
(complete and pruned ones count, failed ones do not). A trial that was running when its search
died is marked failed and its point is asked again first; its half-written model directory is
removed before it trains. One search per study at a time: a file lock in the study's directory
refuses a second one (and tells a stale RUNNING trial from a live one).
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Any

import optuna
from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel

from flows.stages import as_settings, build_features
from flows.study import (
    TuningRecord,
    check_identity,
    distributions,
    finished,
    grid_size,
    identity,
    load_study,
    point,
    record,
    requeue_interrupted,
    study_dir,
    trial_section,
)
from models.ranking import MONITOR as RANKING_MONITOR
from recflow.artifacts import FeatureSet
from recflow.config import Settings
from recflow.locks import exclusive_lock
from recflow.vocabulary import RANKING
from tasks.train import TRAINERS

log = logging.getLogger(__name__)


class TuningOutcome(BaseModel):
    """What one trial's task hands back to the flow, which tells the study."""

    pruned: bool
    # Epochs run; the metrics of the best epoch (complete) or of the last one (pruned).
    epochs: int
    metrics: dict[str, float]
    baseline_metrics: dict[str, float] = {}
    best_epoch: int | None = None
    train_seconds: float | None = None
    artifact: Path | None = None


class TuningResult(BaseModel):
    study: str
    metric: str
    # None while no trial has completed.
    best: TuningRecord | None
    # Every trial of the study, by number, and the numbers this run asked.
    trials: list[TuningRecord]
    ran: list[int]


def monitored_metric(settings: Settings) -> str:
    return RANKING_MONITOR if settings.tuning.model == RANKING else settings.retrieval.monitor


def run_tuning_trial(
    tuning_trial: optuna.Trial, features: FeatureSet, settings: Settings
) -> TuningOutcome:
    """Train the trial's point, reporting each epoch; raises nothing for a pruned trial."""
    model = settings.tuning.model
    cfg = trial_section(getattr(settings, model), point(settings.tuning, tuning_trial.params))
    out_dir = study_dir(settings) / "trials" / str(tuning_trial.number)
    # Left over from an earlier study of the same name whose journal was deleted.
    shutil.rmtree(out_dir, ignore_errors=True)
    metric = monitored_metric(settings)
    seen: list[tuple[int, dict[str, float]]] = []

    def report(epoch: int, metrics: dict[str, float]) -> None:
        seen.append((epoch, metrics))
        tuning_trial.report(metrics[metric], epoch)
        if tuning_trial.should_prune():
            raise optuna.TrialPruned(f"{metric} {metrics[metric]:.4f} after epoch {epoch}")

    try:
        trained = TRAINERS[model](features, cfg, out_dir, report)
    except optuna.TrialPruned as pruned:
        log.info("tuning trial %d pruned: %s", tuning_trial.number, pruned)
        epoch, metrics = seen[-1]
        return TuningOutcome(pruned=True, epochs=epoch, metrics=metrics)
    return TuningOutcome(
        pruned=False,
        epochs=seen[-1][0],
        metrics=trained.metrics,
        baseline_metrics=trained.baseline_metrics,
        best_epoch=trained.best_epoch,
        train_seconds=trained.train_seconds,
        artifact=trained.path,
    )


@task(name="tuning-trial", task_run_name="trial-{tuning_trial.number}", cache_policy=NO_CACHE)
def tuning_trial_task(
    tuning_trial: optuna.Trial, features: FeatureSet, settings: Settings
) -> TuningOutcome:
    return run_tuning_trial(tuning_trial, features, settings)


def artifact_key(study: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return "tuning-" + re.sub(r"[^a-z0-9-]+", "-", study.lower())


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def trials_table(result: TuningResult) -> list[dict[str, Any]]:
    rows = []
    for trial in result.trials:
        architecture = trial.config.get("architecture")
        rows.append(
            {
                "trial": trial.number,
                "best": "yes" if result.best and trial.number == result.best.number else "",
                "state": trial.state,
                "run": "this" if trial.number in result.ran else "earlier",
                **({"architecture": architecture} if architecture is not None else {}),
                **{name: repr(value) for name, value in sorted(trial.params.items())},
                result.metric: _rounded(trial.value, 5),
                f"baseline {result.metric}": _rounded(trial.baseline_metrics.get(result.metric), 5),
                "best epoch": trial.best_epoch,
                "epochs": trial.epochs,
                "seconds": _rounded(trial.seconds, 1),
            }
        )
    return rows


def run_trial(
    study: optuna.Study, features: FeatureSet, settings: Settings
) -> optuna.trial.FrozenTrial:
    """Ask the study for a trial, train it in its task, tell the study how it ended."""
    cfg = settings.tuning
    tuning_trial = study.ask(distributions(cfg))
    section = trial_section(getattr(settings, cfg.model), point(cfg, tuning_trial.params))
    tuning_trial.set_user_attr("config", section.model_dump(mode="json"))
    future = tuning_trial_task.submit(tuning_trial, features, settings)
    try:
        outcome = future.result()
    except Exception:
        study.tell(tuning_trial, state=optuna.trial.TrialState.FAIL)
        raise
    for key, value in outcome.model_dump(mode="json", exclude={"pruned"}).items():
        tuning_trial.set_user_attr(key, value)
    if outcome.pruned:
        # Optuna keeps the last reported value as the pruned trial's value.
        return study.tell(tuning_trial, state=optuna.trial.TrialState.PRUNED)
    # A NaN value (a diverged model) makes Optuna mark the trial failed.
    return study.tell(tuning_trial, outcome.metrics[monitored_metric(settings)])


# One trial at a time: Keras seeds and graph state are process-global, so trials sharing a
# process must not interleave (and on few cores they would only compete for them).
@flow(name="recflow-tune", task_runner=ThreadPoolTaskRunner(max_workers=1))
def tune(settings: Settings | None = None) -> TuningResult:
    settings = as_settings(settings)
    cfg = settings.tuning
    # The pipeline's own stage: fetched, cached on its fingerprint and validated alike.
    features = build_features(settings)
    metric = monitored_metric(settings)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the flow logs each trial itself
    # timeout 0: a second search of the same study fails at once rather than waiting for it.
    with exclusive_lock(study_dir(settings) / ".lock", timeout_s=0):
        study = load_study(settings)
        check_identity(study, identity(settings, features.fingerprint, metric), cfg.space)
        retried = requeue_interrupted(study)
        for number in retried:
            # A model saved before its search died, untold: not the study's (staging
            # directories of dead writers go when the next trial saves, recflow/atomic.py).
            shutil.rmtree(study_dir(settings) / "trials" / str(number), ignore_errors=True)
        if retried:
            log.info("tuning trials %s were running when a search died: asked again", retried)
        target = grid_size(cfg) if cfg.sampler == "grid" else cfg.n_trials
        ran = []
        # At most the trials still missing: a failed (NaN) trial is not replaced in this run.
        for _ in range(max(0, target - finished(study))):
            trial = run_trial(study, features, settings)
            ran.append(trial.number)
            log.info(
                "tuning trial %d %s: %s %s",
                trial.number,
                trial.state.name.lower(),
                metric,
                trial.value,
            )
        trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value, default=None)
    result = TuningResult(
        study=cfg.study,
        metric=metric,
        best=record(cfg, best) if best else None,
        trials=[record(cfg, t) for t in trials],
        ran=ran,
    )
    states = ", ".join(
        f"{sum(t.state == s for t in result.trials)} {s}"
        for s in sorted({t.state for t in result.trials})
    )
    summary = (
        f"best trial {result.best.number} with {metric} = {result.best.value:.4f}"
        if result.best
        else "no trial completed"
    )
    create_table_artifact(
        key=artifact_key(cfg.study),
        table=trials_table(result),
        description=(
            f"{len(trials)} {cfg.model} trials of study {cfg.study!r} ({states}; "
            f"{len(ran)} this run); {summary}"
        ),
    )
    return result
