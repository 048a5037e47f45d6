"""The tuning study: ``tuning.space`` as Optuna distributions, the study on disk, its records.

Kept apart from flows/tune.py (which trains) so that it imports Optuna and the config only.

The study is stored in ``<home>/tuning/<study>/study.journal``, Optuna's journal storage: an
append-only log of the study's operations in one file, replayed on load. Chosen over SQLite
(``RDBStorage``) because appending fsync'd lines under a lock file works between processes and
on NFS, where SQLite's file locking does not, and a study is then one plain file to copy.

The study is the one record of the search: every trial's point, the whole section it trained
with, its metrics, state and duration are in it; the dashboard table and ``TuningResult`` are
read from it.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import FrozenTrial, TrialState
from pydantic import BaseModel

from recflow.config import (
    RankingConfig,
    RetrievalConfig,
    SearchRange,
    Settings,
    TuningConfig,
    field_value,
)
from recflow.vocabulary import RANKING, RETRIEVAL

SECTIONS: dict[str, type[BaseModel]] = {RANKING: RankingConfig, RETRIEVAL: RetrievalConfig}
# Optuna's categorical choices are None, bool, int, float or str: a dimension with another value
# (an MLP's widths, say) offers each value as its JSON text.
PRIMITIVE = (type(None), bool, int, float, str)
JOURNAL = "study.journal"


def study_dir(settings: Settings) -> Path:
    return settings.paths.home / "tuning" / settings.tuning.study


def _values(cfg: TuningConfig, name: str) -> list[Any]:
    section = SECTIONS[cfg.model]
    return [field_value(section, name, value) for value in cfg.space[name]]


def _as_json(values: list[Any]) -> bool:
    return not all(isinstance(value, PRIMITIVE) for value in values)


def distributions(cfg: TuningConfig) -> dict[str, BaseDistribution]:
    """Each dimension of the space as the Optuna distribution a trial's value is drawn from."""
    section = SECTIONS[cfg.model]
    out: dict[str, BaseDistribution] = {}
    for name, dimension in sorted(cfg.space.items()):
        if isinstance(dimension, SearchRange):
            low, high = (
                field_value(section, name, bound) for bound in (dimension.low, dimension.high)
            )
            if isinstance(low, int):
                out[name] = IntDistribution(low, high, log=dimension.log, step=dimension.step or 1)
            else:
                out[name] = FloatDistribution(low, high, log=dimension.log, step=dimension.step)
        else:
            values = _values(cfg, name)
            choices = [json.dumps(value) for value in values] if _as_json(values) else values
            out[name] = CategoricalDistribution(choices)
    return out


def grid(cfg: TuningConfig) -> dict[str, list[Any]]:
    """The grid sampler's space: every dimension's choices (the config allows lists only)."""
    return {name: list(dist.choices) for name, dist in distributions(cfg).items()}


def grid_size(cfg: TuningConfig) -> int:
    size = 1
    for choices in grid(cfg).values():
        size *= len(choices)
    return size


def point(cfg: TuningConfig, params: dict[str, Any]) -> dict[str, Any]:
    """A trial's Optuna params as the section's values (JSON choices decoded)."""
    out = dict(params)
    for name, dimension in cfg.space.items():
        if name in out and not isinstance(dimension, SearchRange) and _as_json(_values(cfg, name)):
            out[name] = json.loads(out[name])
    return out


def trial_section(base: BaseModel, values: dict[str, Any]) -> BaseModel:
    """``base`` (the configured section) with a point's values, validated; dotted names set a
    field of a nested section."""
    merged = base.model_dump()
    for name, value in values.items():
        *parents, leaf = name.split(".")
        node = merged
        for part in parents:
            node = node[part]
        node[leaf] = value
    return type(base).model_validate(merged)


class _AskTellGridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler, told the last point of its grid, stops the study
    (``Study.stop``), which raises outside ``Study.optimize``: the flow asks and tells, and
    counts the grid's trials itself (``grid_size``)."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


def sampler(cfg: TuningConfig, offset: int) -> optuna.samplers.BaseSampler:
    """Seeded by ``seed`` plus the study's trials so far: a resumed search does not draw the
    random points of its start again."""
    seed = cfg.seed + offset
    if cfg.sampler == "grid":
        return _AskTellGridSampler(grid(cfg), seed=seed)
    return optuna.samplers.TPESampler(n_startup_trials=cfg.startup_trials, seed=seed)


def pruner(cfg: TuningConfig) -> optuna.pruners.BasePruner:
    if cfg.pruner == "none":
        return optuna.pruners.NopPruner()
    # Steps are epochs counted from 1, so warmup_epochs epochs run before a trial may be pruned.
    return optuna.pruners.MedianPruner(
        n_startup_trials=cfg.prune_after_trials, n_warmup_steps=cfg.warmup_epochs
    )


def storage(settings: Settings) -> JournalStorage:
    path = study_dir(settings) / JOURNAL
    path.parent.mkdir(parents=True, exist_ok=True)
    # The open-lock (a lock file made with O_EXCL) rather than the default symlink lock: it is
    # the one Optuna documents for NFS.
    return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))


def load_study(settings: Settings) -> optuna.Study:
    """The study of ``tuning.study``, created if new (for enqueueing points, reading results)."""
    cfg = settings.tuning
    study = optuna.create_study(
        study_name=cfg.study,
        storage=storage(settings),
        direction="maximize",
        load_if_exists=True,
        pruner=pruner(cfg),
    )
    study.sampler = sampler(cfg, len(study.get_trials(deepcopy=False)))
    return study


def identity(settings: Settings, features_fingerprint: str, metric: str) -> dict[str, Any]:
    """What the study's trials are comparable under: the model, its metric, the features and
    the configured section (whose fields in the space each trial sets itself)."""
    model = settings.tuning.model
    return {
        "model": model,
        "metric": metric,
        "features": features_fingerprint,
        "base": getattr(settings, model).model_dump(mode="json"),
    }


def check_identity(study: optuna.Study, expected: dict[str, Any], space: dict[str, Any]) -> None:
    """Record ``expected`` in a new study; refuse to go on with one run under other settings
    (its trials would not be comparable). The space's own fields may differ, the space too."""
    recorded = study.user_attrs
    if not recorded:
        for key, value in expected.items():
            study.set_user_attr(key, value)
        return
    searched = {name.split(".")[0] for name in space}
    differ = [key for key in ("model", "metric", "features") if recorded.get(key) != expected[key]]
    base, old = expected["base"], recorded.get("base", {})
    differ += [
        f"{expected['model']}.{name}"
        for name in sorted(set(base) | set(old))
        if name not in searched and base.get(name) != old.get(name)
    ]
    if differ:
        raise ValueError(
            f"tuning study {study.study_name!r} was run with other settings ({', '.join(differ)} "
            "differ): its trials are not comparable with new ones; name a new tuning.study"
        )


def requeue_interrupted(study: optuna.Study) -> list[int]:
    """Trials left RUNNING by a search that died (the caller holds the study's lock, so no live
    search owns them): each is told FAIL and its point is enqueued, so the next ``ask`` tries
    it again. Returns their numbers."""
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
    return [trial.number for trial in stale]


def finished(study: optuna.Study) -> int:
    """Trials that count towards ``n_trials``: complete or pruned (not failed)."""
    states = (TrialState.COMPLETE, TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


class TuningRecord(BaseModel):
    """One trial of the study, as the table and ``TuningResult`` show it."""

    number: int
    state: str  # complete, pruned, fail, running, waiting
    # The searched values, and the whole section the trial trained with.
    params: dict[str, Any]
    config: dict[str, Any]
    # The monitored metric: the best epoch's (complete) or the last epoch's (pruned).
    value: float | None
    metrics: dict[str, float]
    baseline_metrics: dict[str, float]
    best_epoch: int | None
    epochs: int | None
    train_seconds: float | None
    seconds: float | None  # the trial's wall time, from ask to tell
    artifact: Path | None
    retry_of: int | None
    finished_at: datetime | None


def record(cfg: TuningConfig, trial: FrozenTrial) -> TuningRecord:
    attrs = trial.user_attrs
    finished_at = trial.datetime_complete
    return TuningRecord(
        number=trial.number,
        state=trial.state.name.lower(),
        params=point(cfg, trial.params),
        config=attrs.get("config", {}),
        value=trial.value,
        metrics=attrs.get("metrics", {}),
        baseline_metrics=attrs.get("baseline_metrics", {}),
        best_epoch=attrs.get("best_epoch"),
        epochs=attrs.get("epochs"),
        train_seconds=attrs.get("train_seconds"),
        seconds=trial.duration.total_seconds() if trial.duration else None,
        artifact=attrs.get("artifact"),
        retry_of=attrs.get("retry_of"),
        finished_at=finished_at.astimezone(timezone.utc) if finished_at else None,
    )
