"""Evaluation gate (TFX's Evaluator): is the candidate good, and no worse than what serves now?

``evaluate_candidate`` scores the candidate and the blessed model (the one Triton serves, from
the registry) on the **same** rows: the candidate's held-out split, reproduced from the raw
interactions with the feature stage's own cleaning and split. Each model sees those raw rows
through its own serving artifacts (its lookup tables, its fitted workflow, its model), exported
into a scratch repository and run in-process by the ranking endpoint's own code, so the numbers
are what Triton would compute. ``judge`` applies ``GateConfig``'s bounds and returns one check
per bound; ``register_candidate`` files the lineage and the decision in the registry
(recflow/registry.py, docs/registry.md). Trial serving and publishing follow in
serving/trial.py and ``recflow.registry.publish``.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import NamedTuple

import dask.dataframe as dd
import numpy as np
import pandas as pd
from prefect import task

from models.dlrm import RankingModel
from models.metrics import binary_metrics
from recflow.artifacts import RawDataset
from recflow.config import GateConfig, MetricBounds, Settings
from recflow.registry import (
    RANKING,
    CandidateRecord,
    Check,
    Evaluation,
    Event,
    GateDecision,
    Lineage,
    Registry,
    TrialResult,
    code_version,
    now,
    publish,
    tree_sha256,
)
from serving.repository import RankingEndpoint, export_ranking
from serving.runtime import SCORE, RankingPipeline
from serving.trial import infra_validate
from tasks.features import (
    ITEM_ID,
    RATING,
    TIMESTAMP,
    USER_ID,
    FeatureSet,
    clean_and_split,
    fingerprint,
)

LABEL = "label"
# Rows per in-process scoring call: bounds memory on large validation splits.
SCORE_CHUNK_ROWS = 65_536
# Ids no dataset uses: the trial sample ends with this pair so the cold path is served too.
COLD_ID = 2**62


class GateFailed(RuntimeError):
    """The candidate is NOT_BLESSED: its record says why, and nothing was published."""

    def __init__(self, record: CandidateRecord):
        self.record = record
        self.decision = record.decision
        failed = "\n".join(f"  {check}" for check in record.decision.failed)
        super().__init__(
            f"candidate {record.id} is NOT_BLESSED, nothing published; failed checks:\n{failed}"
        )


class Evaluated(NamedTuple):
    evaluation: Evaluation
    # Held-out pairs (plus one cold pair) and the candidate's in-process scores: what trial
    # serving must get back from Triton.
    sample: pd.DataFrame


def held_out(raw: RawDataset, features: FeatureSet, settings: Settings) -> pd.DataFrame:
    """The candidate's validation rows as raw ``user_id, item_id, label``, in a stable order.

    Reproduced with the feature stage's own cleaning and split (deterministic for a given
    configuration) and checked against the row count the feature build recorded.
    """
    if fingerprint(raw, settings.features, settings.validation) != features.fingerprint:
        raise ValueError(
            f"features {features.fingerprint} were not built from {raw.variant} "
            f"({raw.checksum[:12]}) with these settings: their held-out rows cannot be reproduced"
        )
    interactions = dd.read_parquet(str(raw.interactions), blocksize=settings.features.part_size)
    quantiles = features.profile().tables["interactions"][TIMESTAMP].quantiles
    settings.paths.cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="held-out-", dir=settings.paths.cache_dir) as work:
        _, valid, _ = clean_and_split(
            interactions, settings.features, settings.validation, quantiles, Path(work) / "split"
        )
        rows = valid[[USER_ID, ITEM_ID, RATING]].compute()
    if len(rows) != features.n_valid:
        raise RuntimeError(
            f"reproduced {len(rows)} held-out rows, but features {features.fingerprint} has "
            f"{features.n_valid}: the data or the features configuration changed since the build"
        )
    rows = rows.sort_values([USER_ID, ITEM_ID, RATING], kind="stable", ignore_index=True)
    labels = (rows[RATING] >= settings.features.rating_threshold).astype("int8")
    return rows[[USER_ID, ITEM_ID]].assign(**{LABEL: labels})


def exported_scores(
    features: FeatureSet,
    ranking: RankingModel,
    pairs: pd.DataFrame,
    settings: Settings,
    scratch: Path,
) -> np.ndarray:
    """Scores of raw pairs as Triton computes them: export the model into ``scratch`` and run
    the ranking endpoint's stages in-process on that version."""
    version = export_ranking(features, ranking, scratch, settings.serving)
    endpoint = RankingEndpoint(settings.serving.model_prefix)
    stages = RankingPipeline(scratch / endpoint.ensemble / str(version))
    users, items = (pairs[column].to_numpy(np.int64) for column in (USER_ID, ITEM_ID))
    return np.concatenate(
        [
            stages.scores(
                users[start : start + SCORE_CHUNK_ROWS], items[start : start + SCORE_CHUNK_ROWS]
            )
            for start in range(0, len(pairs), SCORE_CHUNK_ROWS)
        ]
    )


def evaluate_candidate(
    raw: RawDataset,
    features: FeatureSet,
    ranking: RankingModel,
    settings: Settings,
    blessed: CandidateRecord | None,
) -> Evaluated:
    """The candidate's and the blessed model's metrics on the candidate's held-out rows.

    Only the ranking model is scored so far. A retrieval model plugs in as one more
    ``retrieval.<metric>`` entry of each metrics dict (recall@10 from its in-process top-k);
    ``judge`` and ``GateConfig.retrieval`` already handle it.
    """
    rows = held_out(raw, features, settings)
    cold = pd.DataFrame({USER_ID: [COLD_ID], ITEM_ID: [COLD_ID]})
    pairs = pd.concat([rows[[USER_ID, ITEM_ID]], cold], ignore_index=True)
    settings.paths.cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gate-", dir=settings.paths.cache_dir) as scratch:
        scores = exported_scores(features, ranking, pairs, settings, Path(scratch) / "candidate")
        blessed_metrics = {}
        if blessed is not None:
            blessed_scores = exported_scores(
                *blessed.artifacts(), rows, settings, Path(scratch) / "blessed"
            )
            blessed_metrics = _ranking_metrics(rows[LABEL], blessed_scores)
    evaluation = Evaluation(
        rows=len(rows),
        metrics=_ranking_metrics(rows[LABEL], scores[: len(rows)]),
        # Training computed the per-item-mean baseline on this same validation split.
        baseline_metrics=_as_ranking(ranking.baseline_metrics),
        compared_with=None if blessed is None else blessed.id,
        blessed_metrics=blessed_metrics,
    )
    picked = rows.sample(min(settings.trial.rows, len(rows)), random_state=0).index
    sample = pairs.iloc[[*picked, len(pairs) - 1]].assign(**{SCORE: scores[[*picked, -1]]})
    return Evaluated(evaluation, sample.reset_index(drop=True))


def _ranking_metrics(labels: pd.Series, scores: np.ndarray) -> dict[str, float]:
    return _as_ranking(binary_metrics(labels.to_numpy(), scores))


def _as_ranking(metrics: dict[str, float]) -> dict[str, float]:
    return {f"{RANKING}.{name}": value for name, value in metrics.items()}


def judge(evaluation: Evaluation, cfg: GateConfig) -> GateDecision:
    """One check per configured bound of every metric the evaluation has."""
    checks, notes = [], []
    if evaluation.compared_with is None:
        notes.append(
            "first candidate: no blessed model, so only absolute bounds and baseline margins "
            "were checked"
        )
    for kind, table in cfg:
        has_kind = any(metric.startswith(f"{kind}.") for metric in evaluation.metrics)
        for name, bounds in table.items():
            metric = f"{kind}.{name}"
            if metric in evaluation.metrics:
                checks += _metric_checks(metric, bounds, evaluation)
            elif bounds != MetricBounds(higher_is_better=bounds.higher_is_better):
                missing = f"no {kind} model" if not has_kind else f"no {metric} metric"
                notes.append(f"{metric}: not evaluated (the candidate has {missing})")
    return GateDecision(
        checks=tuple(checks), compared_with=evaluation.compared_with, notes=tuple(notes)
    )


def _metric_checks(metric: str, bounds: MetricBounds, evaluation: Evaluation) -> list[Check]:
    value = evaluation.metrics[metric]
    better = 1.0 if bounds.higher_is_better else -1.0
    op = ">=" if bounds.higher_is_better else "<="

    def check(kind: str, check_op: str, bound: float, reference: str = "") -> Check:
        passed = value >= bound if check_op == ">=" else value <= bound
        return Check(
            metric=metric,
            kind=kind,
            value=value,
            op=check_op,
            bound=bound,
            passed=passed,
            reference=reference,
        )

    checks = []
    if bounds.min_value is not None:
        checks.append(check("absolute", ">=", bounds.min_value))
    if bounds.max_value is not None:
        checks.append(check("absolute", "<=", bounds.max_value))
    blessed = evaluation.blessed_metrics.get(metric)
    if blessed is not None:
        source = f"blessed {evaluation.compared_with} {blessed:.4f}"
        if bounds.min_change is not None:
            delta = better * bounds.min_change
            checks.append(check("change", op, blessed + delta, f"{source} {delta:+.4f}"))
        if bounds.min_relative_change is not None:
            delta = better * bounds.min_relative_change * abs(blessed)
            share = f"{better * bounds.min_relative_change:+.1%}"
            checks.append(check("relative change", op, blessed + delta, f"{source} {share}"))
    baseline = evaluation.baseline_metrics.get(metric)
    if baseline is not None and bounds.min_baseline_gain is not None:
        delta = better * bounds.min_baseline_gain
        checks.append(check("baseline", op, baseline + delta, f"{baseline:.4f} {delta:+.4f}"))
    return checks


def register_candidate(
    registry: Registry,
    run_id: str,
    raw: RawDataset,
    features: FeatureSet,
    ranking: RankingModel,
    evaluated: Evaluated,
    decision: GateDecision,
    settings: Settings,
) -> CandidateRecord:
    """File the candidate (id = run id) with its lineage and decision; returns the record."""
    record = CandidateRecord(
        id=run_id,
        created=now(),
        features=features.path,
        models={RANKING: ranking.path},
        lineage=Lineage(
            run_id=run_id,
            variant=raw.variant,
            data_checksum=raw.checksum,
            features_fingerprint=features.fingerprint,
            workflow_sha256=tree_sha256(features.workflow_dir),
            schema_sha256=hashlib.sha256(features.schema_file.read_bytes()).hexdigest(),
            features_config=settings.features.model_dump(mode="json"),
            params=ranking.params,
            code_version=code_version(),
        ),
        evaluation=evaluated.evaluation,
        training_metrics=_as_ranking(ranking.metrics),
        gate=settings.gate.model_dump(mode="json"),
        decision=decision,
    )
    registry.add(record, evaluated.sample, features.schema_file)
    return record


def gate(
    run_id: str, raw: RawDataset, features: FeatureSet, ranking: RankingModel, settings: Settings
) -> CandidateRecord:
    """Evaluate, judge and register; raises :class:`GateFailed` if NOT_BLESSED."""
    registry = Registry.from_settings(settings)
    evaluated = evaluate_candidate(raw, features, ranking, settings, registry.serving())
    decision = judge(evaluated.evaluation, settings.gate)
    record = register_candidate(
        registry, run_id, raw, features, ranking, evaluated, decision, settings
    )
    if not decision.blessed:
        raise GateFailed(record)
    return record


@task(name="gate", task_run_name="gate-{run_id}")
def gate_task(
    run_id: str, raw: RawDataset, features: FeatureSet, ranking: RankingModel, settings: Settings
) -> CandidateRecord:
    return gate(run_id, raw, features, ranking, settings)


@task(name="trial-serving", task_run_name="trial-serving-{candidate_id}")
def trial_task(candidate_id: str, settings: Settings) -> TrialResult:
    return infra_validate(Registry.from_settings(settings), candidate_id, settings)


@task(name="publish", task_run_name="publish-{candidate_id}")
def publish_task(candidate_id: str, settings: Settings, reason: str) -> Event:
    return publish(Registry.from_settings(settings), candidate_id, settings, reason)
