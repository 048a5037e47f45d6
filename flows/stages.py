"""The pipeline's stages as Prefect subflows; each one also runs alone.

A subflow given no upstream artifact makes it by running the subflow before it, so
``build_features(settings)`` fetches the data first and ``train_models(settings)`` builds (or
reuses) features first. Every stage reports to the dashboard (flows/reporting.py) and says
whether it did its work or found it done. Each stage hands the next its typed artifacts
(recflow/artifacts.py). docs/orchestration.md describes all of it.
"""

import logging
import secrets
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from flows import reporting
from models.ranking import MONITOR as RANKING_MONITOR
from recflow.artifacts import (
    MANIFEST,
    Artifact,
    Candidate,
    FeatureSet,
    Published,
    RawDataset,
    ValidationReport,
)
from recflow.config import RankingConfig, Settings, load_settings
from recflow.registry import Registry
from recflow.vocabulary import ITEM_ITEM, RANKING, RETRIEVAL
from release.gate import GateFailed, gate_task
from release.publish import publish_task
from release.trial import TrialServingFailed, trial_task
from serving.repository import EndpointNames
from tasks.data_checks import DataValidationError
from tasks.download import fetch_dataset_task
from tasks.features import build_features_task, fingerprint
from tasks.train import (
    choose_ordering_task,
    fit_item_item_task,
    train_ranking_task,
    train_retrieval_task,
)
from tasks.validate import REPORT, validate_features_task

# Persisted task results (the features cache) live with the artifacts they point at, so
# deleting an artifact directory and its cache go together.
RESULTS_DIR = "prefect-results"

# A logger of recflow's, not Prefect's run logger: recflow.logs shows its lines in the terminal
# and attaches it to the run, so each stage's summary is in both.
log = logging.getLogger(__name__)


def new_run_id() -> str:
    # Sorts chronologically, so the newest run is the last one listed.
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + secrets.token_hex(3)


def as_settings(value: Settings | dict[str, Any] | None) -> Settings:
    """Flow parameters arrive as Settings (Python callers) or as JSON (deployments), or not at
    all: then the environment and RECFLOW_CONFIG decide, as for ``recflow run``."""
    if isinstance(value, Settings):
        return value
    return Settings(**value) if value else load_settings()


def run_name(template: str) -> Callable[[], str]:
    """A flow run name from ``template``, formatted with the run's parameters.

    A callable rather than Prefect's plain template, because ``settings`` may be None or JSON.
    """

    def name() -> str:
        parameters = dict(flow_run.parameters)
        parameters["settings"] = as_settings(parameters.get("settings"))
        return template.format(**parameters)

    return name


def made_before(artifact: Artifact, moment: float) -> bool:
    """Whether the artifact on disk predates ``moment`` (a ``time.time()``): a stage reused it.

    Stages write the manifest last, in a staging directory renamed into place, so its mtime is
    when the artifact was completed. Whole seconds: some file systems store no more.
    """
    return (artifact.path / MANIFEST).stat().st_mtime < int(moment)


@flow(name="fetch-data", flow_run_name=run_name("fetch-data-{settings.data.variant}"))
def fetch_data(settings: Settings | None = None) -> RawDataset:
    """Download (or generate), verify and normalise the dataset variant."""
    settings = as_settings(settings)
    started = time.time()
    fetch = fetch_dataset_task.with_options(
        task_run_name=f"fetch-{settings.data.variant}",
        timeout_seconds=settings.orchestration.fetch_timeout_s,
    )
    raw = fetch(settings.data, settings.paths)
    reused = made_before(raw, started)
    reporting.report_dataset(raw, reused)
    log.info(
        reporting.stage_summary(
            "fetch-data",
            time.time() - started,
            reporting.reuse_note("dataset", reused, raw.checksum[:12]),
            f"{raw.variant}, {raw.n_interactions:,} interactions of {raw.n_users:,} users "
            f"on {raw.n_items:,} items",
        )
    )
    return raw


@flow(name="build-features", flow_run_name=run_name("build-features-{settings.data.variant}"))
def build_features(
    settings: Settings | None = None,
    raw: RawDataset | None = None,
    force: bool = False,
    run_id: str | None = None,
) -> FeatureSet:
    """NVTabular features on Dask, cached on what they depend on, then validated; the
    distributions picture goes to ``runs/<run_id>/`` (a new run id by default)."""
    settings = as_settings(settings)
    raw = raw or fetch_data(settings)
    run_id = run_id or new_run_id()
    # The data checksum, the features and cleaning configuration and the code version.
    key = fingerprint(raw, settings.features, settings.validation)
    started = time.time()
    build = build_features_task.with_options(
        task_run_name=f"build-features-{raw.variant}-{key}",
        cache_key_fn=lambda *_: f"features-{key}",
        persist_result=True,
        result_storage=settings.paths.home / RESULTS_DIR,
        # A cached result is only as good as the directory it names: rebuild if that is gone.
        refresh_cache=force or not (settings.paths.features_dir / key / MANIFEST).is_file(),
        timeout_seconds=settings.orchestration.features_timeout_s,
    )
    sections = (settings.features, settings.validation, settings.compute)
    state = build(raw, *sections, settings.paths.features_dir, rebuild=force, return_state=True)
    features: FeatureSet = state.result()
    reused = state.name == "Cached" or made_before(features, started)
    reporting.report_features(features, reused, settings.paths.runs_dir / run_id)
    try:
        report = validate_features_task(
            features, settings.paths.features_dir, settings.validation, raw
        )
    except DataValidationError:
        # The report on disk lists every anomaly, warnings included; the error only blockers.
        reporting.report_validation(
            ValidationReport.model_validate_json((features.path / REPORT).read_text())
        )
        raise
    reporting.report_validation(report)
    log.info(
        reporting.stage_summary(
            "build-features",
            time.time() - started,
            reporting.reuse_note("features", reused, features.fingerprint),
            f"{features.n_train:,} train / {features.n_valid:,} valid rows",
            reporting.anomalies_summary(report),
        )
    )
    return features


def ranker_dir_name(cfg: RankingConfig, ranking: RankingConfig) -> str:
    """A run's champion (``ranking.architecture``) trains into ``ranking/``, each challenger
    into ``ranking-<architecture>/`` (docs/layout.md)."""
    return RANKING if cfg.architecture == ranking.architecture else f"{RANKING}-{cfg.architecture}"


@flow(name="train-models", flow_run_name=run_name("train-models-{settings.data.variant}"))
def train_models(
    settings: Settings | None = None, features: FeatureSet | None = None, run_id: str | None = None
) -> list[Candidate]:
    """Train into ``models/<run_id>/`` (a new run id by default) the retrieval model, the
    item-item candidate source (unless ``item_item.enabled`` is off) and a ranker per
    architecture, champion then challengers; one candidate per ranker, each with its
    ``recommend`` ordering chosen on validation."""
    settings = as_settings(settings)
    run_id = run_id or new_run_id()
    features = features or build_features(settings, run_id=run_id)
    started = time.time()
    timeout = {"timeout_seconds": settings.orchestration.train_timeout_s}
    run_dir = settings.paths.models_dir / run_id
    rankers = [
        train_ranking_task.with_options(**timeout)(
            features,
            cfg,
            run_dir / ranker_dir_name(cfg, settings.ranking),
            settings.data_parallel,
        )
        for cfg in settings.ranking.contenders
    ]
    retrieval = train_retrieval_task.with_options(**timeout)(
        features, settings.retrieval, run_dir / RETRIEVAL, settings.data_parallel
    )
    item_item = (
        fit_item_item_task.with_options(**timeout)(
            features, settings.item_item, run_dir / ITEM_ITEM
        )
        if settings.item_item.enabled
        else None
    )
    contenders = [
        choose_ordering_task.with_options(**timeout)(
            Candidate(features, ranking, retrieval, run_id, item_item),
            settings.ordering,
            settings.serving.retrieval_candidates,
        )
        for ranking in rankers
    ]
    models = {f"{RANKING} {c.ranking.architecture}": c.ranking for c in contenders}
    models[RETRIEVAL] = retrieval
    monitors = {name: RANKING_MONITOR for name in models} | {RETRIEVAL: settings.retrieval.monitor}
    reporting.report_training(models, monitors, settings.paths.runs_dir / run_id)
    log.info(
        reporting.stage_summary(
            "train-models",
            time.time() - started,
            *(
                f"{kind} {monitors[kind]} {model.metrics[monitors[kind]]:.4f} "
                f"(baseline {model.baseline_metrics[monitors[kind]]:.4f}, "
                f"epoch {model.best_epoch} of {len(model.history)})"
                for kind, model in models.items()
            ),
            *(
                [f"item-item EASE λ {item_item.l2:g} on {item_item.n_items} items"]
                if item_item is not None
                else []
            ),
            *(
                f"recommend ordering of {c.ranking.architecture}: {c.ranking.ordering.key}"
                for c in contenders
            ),
        )
    )
    return contenders


@flow(
    name="evaluate-and-publish",
    flow_run_name=run_name("evaluate-and-publish-{contenders[0].run_id}"),
)
def evaluate_and_publish(
    contenders: list[Candidate], settings: Settings | None = None, raw: RawDataset | None = None
) -> Published:
    """Gate the candidates a training run handed over (champion first); trial-serve and publish
    the best one the gate blessed.

    ``raw`` is the dataset their features were built from (fetched again if not given): the
    lineage records it, and the served endpoints treat its interactions as seen.
    """
    settings = as_settings(settings)
    raw = raw or fetch_data(settings)
    run_id = contenders[0].run_id
    run_dir = settings.paths.runs_dir / run_id
    started = time.time()
    try:
        record, records, exported = gate_task(raw, contenders, settings)
    except GateFailed as failed:
        reporting.report_evaluation(run_id, failed.record.evaluation, failed.decision, run_dir)
        reporting.report_contest(failed.records, run_dir)
        raise
    reporting.report_evaluation(record.id, record.evaluation, record.decision, run_dir)
    reporting.report_contest(records, run_dir)
    registry = Registry.from_settings(settings)
    if settings.trial.enabled:
        try:
            record = trial_task(registry, record, exported, settings.release)
        except TrialServingFailed as failed:
            reporting.report_trial(record.id, failed.result)
            raise
        reporting.report_trial(record.id, record.trial)
    publish = publish_task.with_options(timeout_seconds=settings.orchestration.publish_timeout_s)
    event = publish(registry, record, exported, settings.release, f"pipeline run {run_id}")
    published = Published(
        candidate=record.id,
        version=event.version,
        repository=settings.paths.triton_repo,
        models=[EndpointNames(settings.serving.model_prefix).model(s) for s in exported.stages],
        metrics=record.evaluation.metrics,
        baseline_metrics=record.evaluation.baseline_metrics,
    )
    reporting.report_published(published)
    trial = "trial serving passed" if settings.trial.enabled else "trial serving off"
    log.info(
        reporting.stage_summary(
            "evaluate-and-publish",
            time.time() - started,
            f"{record.id} {record.decision.status}"
            + (
                f", the best of {len(records)} by {settings.gate.prefer}"
                if len(records) > 1
                else ""
            ),
            trial,
            f"published as version {published.version}",
        )
    )
    return published
