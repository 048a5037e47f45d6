"""Hyperparameter search: Prefect-mapped trials over the space declared in ``tuning``.

Each trial trains one model (``tuning.model``: ranking or retrieval) with the section's settings
overridden by the trial's point, and is recorded in ``<home>/tuning/<study>/trials/<id>.json``
(written atomically, after the model). A trial id hashes everything the result depends on, so a
re-run, after a crash say, skips the trials that have a record and runs only the rest. The best
trial is the one with the highest validation metric (``auc``, or ``retrieval.monitor``).
"""

import hashlib
import itertools
import json
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow, task, unmapped
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel

from models.ranking import MONITOR as RANKING_MONITOR
from models.ranking import train_ranker
from models.retrieval import train_retriever
from recflow.artifacts import FeatureSet
from recflow.atomic import write_text_atomic
from recflow.config import RankingConfig, RetrievalConfig, Settings, TuningConfig, load_settings
from recflow.vocabulary import RANKING, RETRIEVAL
from tasks.download import fetch_dataset_task
from tasks.features import build_features_task
from tasks.train import item_catalogue

SECTIONS = {RANKING: RankingConfig, RETRIEVAL: RetrievalConfig}


class TuningTrial(BaseModel):
    trial_id: str
    params: dict[str, Any]


class TuningRecord(BaseModel):
    trial_id: str
    model: str
    params: dict[str, Any]
    metric: str
    value: float
    metrics: dict[str, float]
    baseline_metrics: dict[str, float]
    best_epoch: int
    train_seconds: float
    artifact: Path
    finished_at: str


class TuningOutcome(BaseModel):
    record: TuningRecord
    # True when the record was already on disk and the trial did not run again.
    reused: bool


class TuningResult(BaseModel):
    study: str
    metric: str
    best: TuningRecord
    trials: list[TuningOutcome]


def study_dir(settings: Settings) -> Path:
    return settings.paths.home / "tuning" / settings.tuning.study


def monitored_metric(settings: Settings) -> str:
    return RANKING_MONITOR if settings.tuning.model == RANKING else settings.retrieval.monitor


def search_points(cfg: TuningConfig) -> list[dict[str, Any]]:
    """The space's points: all of them (grid) or ``n_trials`` distinct ones drawn with ``seed``."""
    names = sorted(cfg.space)
    grid = [
        dict(zip(names, values, strict=True))
        for values in itertools.product(*(cfg.space[name] for name in names))
    ]
    if cfg.strategy == "grid":
        return grid
    drawn = np.random.default_rng(cfg.seed).choice(
        len(grid), size=min(cfg.n_trials, len(grid)), replace=False
    )
    return [grid[i] for i in sorted(drawn)]


def plan_tuning_trials(settings: Settings, features: FeatureSet) -> list[TuningTrial]:
    """One trial per point; its id hashes the features and the whole resolved model section."""
    model = settings.tuning.model
    base = getattr(settings, model).model_dump(mode="json")
    trials = []
    for point in search_points(settings.tuning):
        section = SECTIONS[model].model_validate({**base, **point}).model_dump(mode="json")
        key = json.dumps(
            {"model": model, "features": features.fingerprint, "config": section}, sort_keys=True
        )
        trial_id = hashlib.sha256(key.encode()).hexdigest()[:12]
        trials.append(TuningTrial(trial_id=trial_id, params=point))
    return trials


def run_tuning_trial(trial: TuningTrial, features: FeatureSet, settings: Settings) -> TuningOutcome:
    """Train the trial's model unless its record exists; the record is written last."""
    trials_dir = study_dir(settings) / "trials"
    record_file = trials_dir / f"{trial.trial_id}.json"
    if record_file.exists():
        record = TuningRecord.model_validate_json(record_file.read_text())
        return TuningOutcome(record=record, reused=True)

    model = settings.tuning.model
    cfg = SECTIONS[model].model_validate({**getattr(settings, model).model_dump(), **trial.params})
    out_dir = trials_dir / trial.trial_id
    # A model without a record is left over from a crash before the record was written.
    shutil.rmtree(out_dir, ignore_errors=True)
    if model == RANKING:
        trained = train_ranker(
            features.train_dir, features.valid_dir, cfg, out_dir, features.fingerprint
        )
    else:
        trained = train_retriever(
            features.train_dir,
            features.valid_dir,
            item_catalogue(features),
            cfg,
            out_dir,
            features.fingerprint,
        )
    metric = monitored_metric(settings)
    record = TuningRecord(
        trial_id=trial.trial_id,
        model=model,
        params=trial.params,
        metric=metric,
        value=trained.metrics[metric],
        metrics=trained.metrics,
        baseline_metrics=trained.baseline_metrics,
        best_epoch=trained.best_epoch,
        train_seconds=trained.train_seconds,
        artifact=trained.path,
        finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    write_text_atomic(record_file, record.model_dump_json(indent=2))
    return TuningOutcome(record=record, reused=False)


def artifact_key(study: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return "tuning-" + re.sub(r"[^a-z0-9-]+", "-", study.lower())


def trials_table(outcomes: list[TuningOutcome], best: TuningRecord) -> list[dict[str, Any]]:
    rows = []
    for outcome in outcomes:
        record = outcome.record
        rows.append(
            {
                "trial": record.trial_id,
                "best": "yes" if record.trial_id == best.trial_id else "",
                "status": "reused" if outcome.reused else "ran",
                **{name: json.dumps(value) for name, value in record.params.items()},
                record.metric: round(record.value, 5),
                f"baseline {record.metric}": round(record.baseline_metrics[record.metric], 5),
                "best epoch": record.best_epoch,
                "train s": round(record.train_seconds, 1),
            }
        )
    return rows


@task(name="tuning-trial", task_run_name="trial-{trial.trial_id}", cache_policy=NO_CACHE)
def tuning_trial_task(
    trial: TuningTrial, features: FeatureSet, settings: Settings
) -> TuningOutcome:
    return run_tuning_trial(trial, features, settings)


# One trial at a time: Keras seeds and graph state are process-global, so trials sharing a
# process must not interleave (and on few cores they would only compete for them).
@flow(name="recflow-tune", task_runner=ThreadPoolTaskRunner(max_workers=1))
def tune(settings: Settings | None = None) -> TuningResult:
    settings = settings or load_settings()
    raw = fetch_dataset_task(settings.data, settings.paths)
    features = build_features_task(raw, settings)
    trials = plan_tuning_trials(settings, features)
    futures = tuning_trial_task.map(
        trials, features=unmapped(features), settings=unmapped(settings)
    )
    outcomes = [future.result() for future in futures]
    best = max((outcome.record for outcome in outcomes), key=lambda record: record.value)
    result = TuningResult(
        study=settings.tuning.study,
        metric=monitored_metric(settings),
        best=best,
        trials=outcomes,
    )
    write_text_atomic(study_dir(settings) / "best.json", best.model_dump_json(indent=2))
    create_table_artifact(
        key=artifact_key(settings.tuning.study),
        table=trials_table(outcomes, best),
        description=(
            f"{len(outcomes)} {settings.tuning.model} trials of study "
            f"{settings.tuning.study!r}; best {best.trial_id} with "
            f"{result.metric} = {best.value:.4f}"
        ),
    )
    return result
