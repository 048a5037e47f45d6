"""Evaluation gate (TFX's Evaluator): is the candidate good, and no worse than what serves now?

``evaluate_candidates`` scores a run's candidates (champion and challengers: one ranker each,
the same features and retrieval model) and the blessed model (the one Triton serves, from the
registry) on the **same** rows: the run's split in raw ids, as its feature build kept it
(``FeatureSet.held_out_dir``). Each model sees those raw rows through its own
serving artifacts (its lookup tables, its fitted workflow, its models), exported once into the
registry (``bundles/<id>/``, under the id the gate assigns here) and run in-process by the
endpoints' own code, so the numbers are what Triton computes: trial serving and publish
install that same export. The metrics: ranking AUC and log loss on the held-out pairs,
retrieval recall/ndcg/mrr@k over the whole catalogue with each user's training items
excluded, and the same top-k metrics of the lists the recommend endpoint returns (retrieve,
then the run's final ordering). ``judge`` applies ``GateConfig``'s bounds and returns one
check per bound; ``choose`` picks the best blessed candidate by ``gate.prefer``;
``register_candidate`` files each one's lineage, decision and contest in the registry
(recflow/registry.py, docs/registry.md). Trial serving and publishing of the chosen one's
export follow in release/trial.py and release/publish.py.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from prefect import task

from models.baselines import ItemItemKind, fit_tuned, popularity_scores, random_rows
from models.evaluation import RetrievalTask, evaluate_retrieval, user_batch
from models.item_item import ItemItemWeights
from models.metrics import binary_metrics, padded, top_k_metrics
from recflow.artifacts import (
    Candidate,
    ExportedCandidate,
    FeatureSet,
    ItemItemSource,
    RawDataset,
)
from recflow.config import FeaturesConfig, GateConfig, MetricBounds, Settings
from recflow.registry import (
    CandidateRecord,
    Contest,
    Evaluation,
    GateCheck,
    GateDecision,
    Lineage,
    Registry,
    code_version,
    now,
    tree_sha256,
)
from recflow.vocabulary import (
    ITEM_ID,
    ITEM_ITEM,
    LABEL,
    RANKING,
    RATING,
    RAW_ITEM_ID,
    RECOMMEND,
    RETRIEVAL,
    SCORE_OUTPUT,
    TIMESTAMP,
    USER_ID,
    MetricKey,
    metric_keys,
)
from release.export import exported_candidate
from serving.repository import export_candidate
from serving.runtime import RankingPipeline, RecommendStage, RetrievalStage
from tasks.features import fingerprint

log = logging.getLogger(__name__)

# Rows per in-process scoring call: bounds memory on large validation splits.
SCORE_CHUNK_ROWS = 65_536
# Ids no dataset uses: the trial sample ends with this pair so the cold path is served too.
COLD_ID = 2**62


class GateFailed(RuntimeError):
    """No contender of the run is BLESSED: their records say why, and nothing was published.
    ``record`` is the champion's; ``records`` every contender's, champion first."""

    def __init__(self, record: CandidateRecord, *challengers: CandidateRecord):
        self.record = record
        self.records = (record, *challengers)
        self.decision = record.decision
        lines = [] if not challengers else [f"none of {len(self.records)} contenders is BLESSED"]
        for each in self.records:
            lines.append(f"candidate {each.id} is NOT_BLESSED, nothing published; failed checks:")
            lines += [f"  {check}" for check in each.decision.failed]
        super().__init__("\n".join(lines))


class Evaluated(NamedTuple):
    evaluation: Evaluation
    # Held-out pairs (plus one cold pair) and the candidate's in-process scores: what trial
    # serving must get back from Triton.
    sample: pd.DataFrame


class HeldOut(NamedTuple):
    """The candidate's split as raw ``user_id, item_id, label`` rows, by user, each user's in
    time order as the feature build wrote them (recommend's item-item source reads them so)."""

    train: pd.DataFrame
    valid: pd.DataFrame


def held_out(features: FeatureSet) -> HeldOut:
    """The candidate's training and validation rows as its feature build split them, labelled
    as training labels them, and checked against the row counts the build recorded."""
    columns = [USER_ID, ITEM_ID, RATING]
    train, valid = (
        pd.read_parquet(features.held_out_dir / split, columns=columns)
        for split in ("train", "valid")
    )
    if (len(train), len(valid)) != (features.n_train, features.n_valid):
        raise RuntimeError(
            f"{features.held_out_dir} holds {len(train)} training and {len(valid)} held-out rows, "
            f"but features {features.fingerprint} has {features.n_train} and {features.n_valid}"
        )

    def labelled(rows: pd.DataFrame) -> pd.DataFrame:
        rows = rows.sort_values(USER_ID, kind="stable", ignore_index=True)
        labels = (rows[RATING] >= features.positive_threshold).astype("int8")
        return rows[[USER_ID, ITEM_ID]].assign(**{LABEL: labels})

    return HeldOut(labelled(train), labelled(valid))


def ranking_scores(version_dir: Path, pairs: pd.DataFrame) -> np.ndarray:
    """Scores of raw pairs by the ranking endpoint's own stages, run in-process."""
    stages = RankingPipeline(version_dir)
    users, items = (pairs[column].to_numpy(np.int64) for column in (USER_ID, ITEM_ID))
    return np.concatenate(
        [
            stages.scores(
                users[start : start + SCORE_CHUNK_ROWS], items[start : start + SCORE_CHUNK_ROWS]
            )
            for start in range(0, len(pairs), SCORE_CHUNK_ROWS)
        ]
    )


def retrieval_task(split: HeldOut, catalogue: np.ndarray) -> RetrievalTask:
    """Top-k evaluation in raw ids: every catalogue item, each user's training items excluded,
    the held-out positives relevant (the training-time evaluation, on raw rows)."""
    positives = split.valid[split.valid[LABEL] == 1]
    return RetrievalTask.build(split.train, positives, catalogue, USER_ID, ITEM_ID)


def retrieval_metrics(
    version_dir: Path, task: RetrievalTask, ks: tuple[int, ...]
) -> dict[str, float]:
    """recall/ndcg/mrr@k of the retrieval endpoint's own stage, run in-process.

    A catalogue item the exported model has no embedding for (an older model, newer items) is
    one it can never return: it scores -inf.
    """
    stage = RetrievalStage(version_dir)
    positions = pd.Index(stage.item_ids).get_indexer(task.candidates)
    known = positions >= 0
    vectors = stage.vectors(positions[known])

    def scores(rows: slice) -> np.ndarray:
        queries = stage.query(task.users[rows])
        out = np.full((len(queries), len(task.candidates)), -np.inf, dtype=np.float32)
        out[:, known] = queries @ vectors.T
        return out

    return evaluate_retrieval(task, scores, ks)


def recommend_metrics(
    version_dir: Path,
    task: RetrievalTask,
    seen: pd.DataFrame,
    ks: tuple[int, ...],
    item_item: ItemItemSource | None = None,
) -> dict[str, float]:
    """recall/ndcg/mrr@k of the lists the recommend endpoint's own stage returns, in-process.

    The stage leaves out ``seen``, the training rows, instead of the version's ``seen.parquet``
    (every interaction, held-out ones included: what serving leaves out): the same items
    ``task`` excludes. An item outside ``task``'s catalogue can never be relevant. Likewise it
    scores with ``item_item``'s fit on the training split, not the served refit that saw the
    held-out rows.
    """
    # Dense: a batch of users scores as one product (as choosing the ordering scores them);
    # gathering each history item's neighbours, serving's way for a request's few users, took
    # 22 s for ml-1m's 6,040 users there.
    weights = (
        None if item_item is None else ItemItemWeights.load(item_item.weights_file).densified()
    )
    stage = RecommendStage(version_dir, seen, weights)
    users = np.asarray(task.users, dtype=np.int64)
    # Batches of users, as the endpoint serves a request: bounded [users, catalogue] scores.
    batch = user_batch(len(task.candidates))
    lists = np.concatenate(
        [
            stage.recommend(users[start : start + batch], max(ks))[0]
            for start in range(0, len(users), batch)
        ]
    )
    positions = pd.Index(task.candidates).get_indexer(lists.ravel()).reshape(lists.shape)
    # The endpoint returns at most the catalogue: a smaller one than max(ks) has no more places.
    ranked = padded(np.where(lists >= 0, positions, -1), max(ks))
    return top_k_metrics(ranked, task.relevant, ks)


def evaluate_candidates(
    contenders: Sequence[Candidate],
    exports: Sequence[ExportedCandidate],
    blessed: ExportedCandidate | None,
    ks: tuple[int, ...],
    sample_rows: int,
    baselines: Sequence[ItemItemKind] = (),
    blessed_item_item: ItemItemSource | None = None,
) -> list[Evaluated]:
    """Each contender's and the blessed model's metrics on the contenders' held-out rows,
    scored from their exports (what trial serving and publish install).

    The contenders are one run's: the same features and retrieval model, rankers of different
    architectures (``ranking.challengers``), so they are judged on the same rows against the
    same baselines and blessed model, each scored once. Ranking: AUC and log loss of the
    ranking endpoint's scores. Retrieval: top-k metrics of the retrieval endpoint over the whole
    catalogue, training items excluded. Recommend: the same metrics of the recommend endpoint's
    lists. Baselines (per-item mean, most popular unseen) are scored on the same rows by the
    same code, and so are the lists of the item-item ``baselines`` (EASE, item-kNN), fitted on
    the training rows alone (:func:`item_item_baselines`). Top-k metrics are taken at each of
    ``ks``; ``sample_rows`` held-out pairs (and one cold pair) are kept with their scores for
    trial serving.
    """
    first = contenders[0]
    if any(c.features.path != first.features.path for c in contenders) or any(
        c.retrieval != first.retrieval for c in contenders
    ):
        raise ValueError("contenders must share their features and retrieval model (one run's)")
    split = held_out(first.features)
    if first.features.feedback == "implicit":
        # The training split's sampled negatives are no interaction: nothing a user has seen.
        split = split._replace(train=split.train[split.train[LABEL] == 1])
    rows = split.valid
    cold = pd.DataFrame({USER_ID: [COLD_ID], ITEM_ID: [COLD_ID]})
    pairs = pd.concat([rows[[USER_ID, ITEM_ID]], cold], ignore_index=True)
    catalogue = pd.read_parquet(first.retrieval.item_embeddings, columns=[RAW_ITEM_ID])
    task = retrieval_task(split, catalogue[RAW_ITEM_ID].to_numpy(np.int64))
    positives = split.train.loc[split.train[LABEL] == 1, ITEM_ID].to_numpy()
    popular = popularity_scores(positives, task.candidates)
    baseline = evaluate_retrieval(
        task, lambda users: np.tile(popular, (len(task.users[users]), 1)), ks
    )
    # Most popular unseen is the baseline of both lists: retrieval's and recommend's.
    baseline_metrics = metric_keys(RETRIEVAL, baseline) | metric_keys(RECOMMEND, baseline)
    strong = item_item_baselines(split.train, task, ks, baselines)
    picked = rows.sample(min(sample_rows, len(rows)), random_state=0).index
    # Seen items are the training rows: what evaluation excludes from each user's top k.
    seen = split.train[[USER_ID, ITEM_ID]]

    def served_metrics(
        exported: ExportedCandidate, item_item: ItemItemSource | None = None
    ) -> tuple[dict, np.ndarray]:
        """The endpoints' metrics of one exported candidate, and its scores of ``pairs``."""
        scores = ranking_scores(exported.version_dir(RANKING), pairs)
        metrics = _ranking_metrics(rows[LABEL], scores[: len(rows)])
        if RETRIEVAL in exported.stages:
            recommend = exported.version_dir(RECOMMEND)
            metrics |= metric_keys(
                RETRIEVAL, retrieval_metrics(exported.version_dir(RETRIEVAL), task, ks)
            ) | metric_keys(RECOMMEND, recommend_metrics(recommend, task, seen, ks, item_item))
        return metrics, scores

    # The blessed model with its item-item fit on its own training split, as it was judged: its
    # served refit saw its validation rows, which are these rows when the data is the same.
    blessed_metrics = {} if blessed is None else served_metrics(blessed, blessed_item_item)[0]
    evaluated = []
    for candidate, exported in zip(contenders, exports, strict=True):
        metrics, scores = served_metrics(exported, candidate.item_item)
        evaluation = Evaluation(
            rows=len(rows),
            metrics=metrics,
            # Training computed the per-item-mean baseline on this same validation split.
            baseline_metrics=baseline_metrics
            | metric_keys(RANKING, candidate.ranking.baseline_metrics),
            compared_with=None if blessed is None else blessed.candidate,
            blessed_metrics=blessed_metrics,
            baselines=strong,
        )
        sample = pairs.iloc[[*picked, len(pairs) - 1]].assign(
            **{SCORE_OUTPUT: scores[[*picked, -1]]}
        )
        evaluated.append(Evaluated(evaluation, sample.reset_index(drop=True)))
    return evaluated


def judged_item_item(record: CandidateRecord) -> ItemItemSource | None:
    """The item-item source a record's candidate was judged with (its fit on the training
    split), if it has one and its directory is still there."""
    path = record.models.get(ITEM_ITEM)
    return ItemItemSource.load(path) if path is not None and path.is_dir() else None


def item_item_baselines(
    train: pd.DataFrame, task: RetrievalTask, ks: tuple[int, ...], kinds: Sequence[ItemItemKind]
) -> dict[str, dict[str, float]]:
    """Top-k metrics of each item-item baseline's lists for ``task``'s users, by the code that
    scores the endpoints' lists. Each learns from every training pair and chooses its λ or k on
    a seeded random 10% of the training rows (the held-out rows carry no timestamps here), then
    refits on all of them: the held-out rows never reach the choice."""
    relevant = train[LABEL].to_numpy() == 1
    tuning = random_rows(len(train))
    scored = {}
    for kind in kinds:
        started = time.perf_counter()
        tuned = fit_tuned(kind, train, relevant, tuning, USER_ID, ITEM_ID)
        scored[kind] = evaluate_retrieval(task, tuned.model.scorer(task), ks)
        log.info(
            "baseline %s (%s %g, %d items): recall@%d %.4f, fitted and scored in %.1f s",
            kind,
            "λ" if kind == "ease" else "k",
            tuned.value,
            len(tuned.model.items),
            ks[0],
            scored[kind][f"recall@{ks[0]}"],
            time.perf_counter() - started,
        )
    return scored


def _ranking_metrics(labels: pd.Series, scores: np.ndarray) -> dict[str, float]:
    return metric_keys(RANKING, binary_metrics(labels.to_numpy(), scores))


def judge(evaluation: Evaluation, cfg: GateConfig) -> GateDecision:
    """One check per configured bound of every metric the evaluation has."""
    checks, notes = [], []
    if evaluation.compared_with is None:
        notes.append(
            "first candidate: no blessed model, so only absolute bounds, baseline margins and "
            "references to its own metrics were checked"
        )
    for kind, table in cfg.tables.items():
        has_kind = any(MetricKey.parse(metric).kind == kind for metric in evaluation.metrics)
        for name, bounds in table.items():
            metric = str(MetricKey(kind, name))
            if metric in evaluation.metrics:
                checks += _metric_checks(metric, bounds, evaluation)
            elif bounds != MetricBounds(higher_is_better=bounds.higher_is_better):
                missing = f"no {kind} model" if not has_kind else f"no {metric} metric"
                notes.append(f"{metric}: not evaluated (the candidate has {missing})")
    return GateDecision(
        checks=tuple(checks), compared_with=evaluation.compared_with, notes=tuple(notes)
    )


def _metric_checks(metric: str, bounds: MetricBounds, evaluation: Evaluation) -> list[GateCheck]:
    value = evaluation.metrics[metric]
    better = 1.0 if bounds.higher_is_better else -1.0
    op = ">=" if bounds.higher_is_better else "<="

    def check(kind: str, check_op: str, bound: float, reference: str = "") -> GateCheck:
        passed = value >= bound if check_op == ">=" else value <= bound
        return GateCheck(
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
    if bounds.reference is not None and bounds.min_reference_gain is not None:
        if bounds.reference not in evaluation.metrics:
            raise ValueError(f"gate bound of {metric}: the candidate has no {bounds.reference}")
        reference = evaluation.metrics[bounds.reference]
        delta = better * bounds.min_reference_gain
        source = f"{bounds.reference} {reference:.4f} {delta:+.4f}"
        checks.append(check("reference", op, reference + delta, source))
    baseline = evaluation.baseline_metrics.get(metric)
    if baseline is not None and bounds.min_baseline_gain is not None:
        delta = better * bounds.min_baseline_gain
        checks.append(check("baseline", op, baseline + delta, f"{baseline:.4f} {delta:+.4f}"))
    key = MetricKey.parse(metric)
    strongest = evaluation.strongest(key.name) if key.kind == RECOMMEND else None
    if strongest is not None and bounds.max_shortfall_to_strongest is not None:
        baseline_name, baseline_value = strongest
        share = bounds.max_shortfall_to_strongest
        source = f"{baseline_name} {baseline_value:.4f} -{share:.0%}"
        checks.append(check("strongest baseline", ">=", baseline_value * (1 - share), source))
    return checks


class Judged(NamedTuple):
    """The gate's verdict on one run: the candidate to publish and every contender's record."""

    chosen: CandidateRecord
    records: tuple[CandidateRecord, ...]
    # The chosen one's export: what trial serving and publish install.
    exported: ExportedCandidate


def contender_ids(contenders: Sequence[Candidate]) -> list[str]:
    """Registry ids, assigned here once and carried from here on (written into each export):
    the champion is filed as its training run's id, a challenger as ``<run id>-<architecture>``."""
    return [
        contenders[0].run_id,
        *(f"{c.run_id}-{c.ranking.architecture}" for c in contenders[1:]),
    ]


def choose(
    evaluations: Sequence[Evaluation], decisions: Sequence[GateDecision], cfg: GateConfig
) -> int | None:
    """The index of the best blessed contender by ``cfg.prefer``, None if none is blessed.
    A tie goes to the earlier one: the champion first, then the challengers as listed."""
    blessed = [i for i, decision in enumerate(decisions) if decision.blessed]
    for i in blessed:
        if cfg.prefer not in evaluations[i].metrics:
            raise ValueError(f"gate.prefer: the contenders have no {cfg.prefer} metric")
    better = 1.0 if cfg.higher_is_better(cfg.prefer) else -1.0
    return max(
        blessed, key=lambda i: (better * evaluations[i].metrics[cfg.prefer], -i), default=None
    )


def register_candidate(
    registry: Registry,
    record_id: str,
    raw: RawDataset,
    seen: pd.DataFrame,
    candidate: Candidate,
    evaluated: Evaluated,
    decision: GateDecision,
    contest: Contest,
    features_cfg: FeaturesConfig,
    gate_cfg: GateConfig,
) -> CandidateRecord:
    """File the candidate with its lineage, decision and contest; returns the record.

    What its endpoints treat as ``seen`` is every interaction of its dataset, kept with the
    record so a later rollback serves the same answers.
    """
    features, ranking, retrieval, run_id, item_item = candidate
    models = {RANKING: ranking.path, RETRIEVAL: retrieval.path}
    params = {RANKING: ranking.params, RETRIEVAL: retrieval.params}
    if item_item is not None:
        models[ITEM_ITEM] = item_item.path
        params[ITEM_ITEM] = {"l2": item_item.l2, "neighbours": item_item.neighbours}
    record = CandidateRecord(
        id=record_id,
        created=now(),
        features=features.path,
        models=models,
        lineage=Lineage(
            run_id=run_id,
            variant=raw.variant,
            data_checksum=raw.checksum,
            features_fingerprint=features.fingerprint,
            workflow_sha256=tree_sha256(features.workflow_dir),
            schema_sha256=hashlib.sha256(features.schema_file.read_bytes()).hexdigest(),
            features_config=features_cfg.model_dump(mode="json"),
            params=params,
            code_version=code_version(),
        ),
        evaluation=evaluated.evaluation,
        training_metrics=metric_keys(RANKING, ranking.metrics)
        | metric_keys(RETRIEVAL, retrieval.metrics),
        gate=gate_cfg.model_dump(mode="json"),
        decision=decision,
        contest=contest,
    )
    registry.add(record, evaluated.sample, seen, features.schema_file)
    return record


def gate(raw: RawDataset, contenders: Sequence[Candidate], settings: Settings) -> Judged:
    """Export each of a run's contenders (champion first) once, evaluate and judge them,
    register every one, and choose the best blessed (:func:`choose`); raises
    :class:`GateFailed` if none is blessed.

    The one release step given the whole ``Settings``: it reads six sections (the features and
    validation ones to check the features against ``raw`` and record them in the lineage, the
    gate's bounds, serving's for the export, retrieval's ``top_k``, trial's sample size) and
    opens the registry, and hands each function below only its part.

    ``raw`` must be the dataset their features were built from, with these settings: the
    records' lineage and the served endpoints' seen items come from it.
    """
    features = contenders[0].features
    if fingerprint(raw, settings.features, settings.validation) != features.fingerprint:
        raise ValueError(
            f"features {features.fingerprint} were not built from {raw.variant} "
            f"({raw.checksum[:12]}) with these settings"
        )
    registry = Registry.from_settings(settings)
    ids = contender_ids(contenders)
    # What the served endpoints treat as seen: every interaction of the dataset, each user's
    # in time order (an item's latest), as recommend's item-item source reads a history.
    seen = (
        pd.read_parquet(raw.interactions, columns=[USER_ID, ITEM_ID, TIMESTAMP])
        .sort_values([USER_ID, TIMESTAMP, ITEM_ID], kind="stable")
        .drop_duplicates([USER_ID, ITEM_ID], keep="last")[[USER_ID, ITEM_ID]]
    )
    exports = [
        export_candidate(id_, candidate, seen, settings.serving, registry.exported_dir(id_))
        for id_, candidate in zip(ids, contenders, strict=True)
    ]
    serving = registry.serving()
    blessed = None if serving is None else exported_candidate(registry, serving, settings.serving)
    evaluated = evaluate_candidates(
        contenders,
        exports,
        blessed,
        settings.retrieval.top_k,
        settings.trial.rows,
        settings.gate.baselines,
        None if serving is None else judged_item_item(serving),
    )
    decisions = [judge(each.evaluation, settings.gate) for each in evaluated]
    chosen = choose([each.evaluation for each in evaluated], decisions, settings.gate)
    contest = Contest(
        contenders=tuple(ids),
        prefer=settings.gate.prefer,
        chosen=None if chosen is None else ids[chosen],
    )
    sections = (settings.features, settings.gate)
    records = tuple(
        register_candidate(registry, id_, raw, seen, candidate, each, decision, contest, *sections)
        for id_, candidate, each, decision in zip(
            ids, contenders, evaluated, decisions, strict=True
        )
    )
    if chosen is None:
        raise GateFailed(*records)
    return Judged(records[chosen], records, exports[chosen])


@task(name="gate", task_run_name="gate-{contenders[0].run_id}")
def gate_task(raw: RawDataset, contenders: Sequence[Candidate], settings: Settings) -> Judged:
    return gate(raw, contenders, settings)
