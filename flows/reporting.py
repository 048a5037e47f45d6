"""What a run shows in the Prefect dashboard: one artifact per stage, under a stable key.

Each ``*_table`` / ``*_markdown`` function turns a stage's result into plain rows or markdown
(easy to test, no Prefect needed); each ``report_*`` publishes that as a Prefect artifact of the
current flow or task run. A stable key makes the dashboard's Artifacts page show the latest value
and its history across runs. To report a new stage, add a key to ``Keys``, a builder and a
``report_*`` function. docs/orchestration.md lists the keys and what each holds.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from merlin.schema.io.tensorflow_metadata import TensorflowMetadata
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows import pictures
from recflow.artifacts import FeatureSet, Published, RawDataset, TrainedModel, ValidationReport
from recflow.registry import CandidateRecord, Evaluation, GateDecision, TrialResult
from recflow.vocabulary import RECOMMEND, RETRIEVAL, MetricKey
from tasks.statistics import FEATURES_TABLE

Row = dict[str, Any]


class Keys:
    """Artifact keys (Prefect allows lowercase letters, digits and dashes)."""

    DATASET = "dataset-summary"
    FEATURES = "feature-statistics"
    ANOMALIES = "validation-anomalies"
    TRAINING_CURVES = "training-curves"
    METRICS = "metrics-vs-baselines"
    RECOMMEND = "recommend-vs-baselines"
    GATE = "gate-decision"
    CONTEST = "champion-vs-challengers"
    SMOKE_TEST = "serving-smoke-test"
    PUBLISHED = "published-model"
    TRAINING_CURVES_PICTURE = "training-curves-picture"
    GATE_PICTURE = "gate-picture"
    FEATURES_PICTURE = "feature-distributions-picture"
    CONTEST_PICTURE = "champion-vs-challengers-picture"


# The run's pictures (flows/pictures.py), in the order the pipeline run's page shows them.
PICTURES = {
    pictures.TRAINING_CURVES: (Keys.TRAINING_CURVES_PICTURE, "Training curves"),
    pictures.GATE: (Keys.GATE_PICTURE, "Evaluation gate"),
    pictures.CONTEST: (Keys.CONTEST_PICTURE, "Champion and challengers"),
    pictures.FEATURES: (Keys.FEATURES_PICTURE, "Feature distributions"),
}


def reuse_note(what: str, reused: bool, key: str) -> str:
    """The words that say whether a stage did its work or found it done."""
    return f"{what} {'reused' if reused else 'built'}: {key}"


def stage_summary(stage: str, seconds: float, *facts: str) -> str:
    """The one line a stage logs as it ends."""
    return f"{stage} done in {seconds:.0f} s: {'; '.join(facts)}"


# ---------------------------------------------------------------------------------------------
# Builders


def dataset_table(raw: RawDataset, reused: bool) -> list[Row]:
    fields = {
        "variant": raw.variant,
        "source checksum": raw.checksum,
        "interactions": raw.n_interactions,
        "users": raw.n_users,
        "items": raw.n_items,
        "user side table": raw.has_users,
        "path": str(raw.path),
        "this run": "reused" if reused else "built",
    }
    return [{"field": name, "value": value} for name, value in fields.items()]


def features_table(features: FeatureSet) -> list[Row]:
    """One row per column of every table the build read and of its output (table "features"):
    the feature schema's tags and cardinality, then the statistics validation compares."""
    schema = TensorflowMetadata.from_proto_text_file(
        str(features.schema_file.parent), file_name=features.schema_file.name
    ).to_merlin_schema()
    rows = []
    for table, columns in features.profile().tables.items():
        for name, stats in columns.items():
            in_schema = table == FEATURES_TABLE and name in schema.column_names
            tags = sorted(str(tag.value) for tag in schema[name].tags) if in_schema else []
            rows.append(
                {
                    "table": table,
                    "column": name,
                    "dtype": stats.dtype,
                    "tags": ", ".join(tags),
                    "cardinality": features.cardinalities.get(name, stats.cardinality)
                    if table == FEATURES_TABLE
                    else stats.cardinality,
                    "count": stats.count,
                    "nulls": stats.nulls,
                    "min": _round(stats.min),
                    "max": _round(stats.max),
                }
            )
    return rows


def anomalies_table(report: ValidationReport) -> list[Row]:
    return [
        {
            "table": anomaly.table,
            "column": anomaly.column,
            "check": anomaly.check,
            "expected": anomaly.expected,
            "found": anomaly.found,
            "blocking": anomaly.blocking,
        }
        for anomaly in report.anomalies
    ]


def anomalies_summary(report: ValidationReport) -> str:
    against = f"accepted build {report.baseline}" if report.baseline else "no accepted build"
    blocking = len(report.blocking)
    verdict = f"{blocking} blocking, training stopped" if blocking else "accepted"
    return f"{len(report.anomalies)} anomalies against {against}: {verdict}"


def training_curves_table(models: Mapping[str, TrainedModel]) -> list[Row]:
    """Each model's Keras history, one row per epoch; the epochs whose weights were kept are
    marked."""
    return [
        {
            "model": kind,
            "epoch": epoch,
            **{name: _round(value) for name, value in sorted(values.items())},
            "kept": "best" if epoch == model.best_epoch else "",
        }
        for kind, model in models.items()
        for epoch, values in enumerate(model.history, start=1)
    ]


def metrics_table(evaluation: Evaluation) -> list[Row]:
    """The candidate against its baselines and the blessed model, on the same held-out rows."""
    blessed = f"blessed {evaluation.compared_with}" if evaluation.compared_with else "blessed"
    return [
        {
            "metric": name,
            "candidate": _round(value),
            "baseline": _round(evaluation.baseline_metrics.get(name)),
            blessed: _round(evaluation.blessed_metrics.get(name)),
        }
        for name, value in evaluation.metrics.items()
    ]


def recommend_table(evaluation: Evaluation) -> list[Row]:
    """The lists apps get, one row per top-k metric: recommend next to retrieval alone, most
    popular unseen, the item-item baselines (EASE, item-kNN) and the blessed model's recommend,
    all on the same held-out users."""
    blessed = f"blessed {evaluation.compared_with}" if evaluation.compared_with else "blessed"
    rows = []
    for name, value in evaluation.metrics.items():
        key = MetricKey.parse(name)
        if key.kind != RECOMMEND:
            continue
        rows.append(
            {
                "metric": key.name,
                "recommend": _round(value),
                "retrieval alone": _round(
                    evaluation.metrics.get(str(MetricKey(RETRIEVAL, key.name)))
                ),
                "most popular unseen": _round(evaluation.baseline_metrics.get(name)),
                **{
                    baseline: _round(scored.get(key.name))
                    for baseline, scored in evaluation.baselines.items()
                },
                f"{blessed} recommend": _round(evaluation.blessed_metrics.get(name)),
            }
        )
    return rows


def contest_table(records: Sequence[CandidateRecord]) -> list[Row]:
    """A run's contenders side by side on the same held-out rows: a column per architecture
    (the chosen one marked), one row per metric, then each one's gate verdict."""
    columns = [contender_label(record) for record in records]
    first = records[0].evaluation
    blessed = f"blessed {first.compared_with}" if first.compared_with else "blessed"
    rows: list[Row] = [
        {
            "metric": name,
            **{
                column: _round(record.evaluation.metrics.get(name))
                for column, record in zip(columns, records, strict=True)
            },
            "baseline": _round(first.baseline_metrics.get(name)),
            blessed: _round(first.blessed_metrics.get(name)),
        }
        for name in first.metrics
    ]
    verdicts = {
        column: record.decision.status for column, record in zip(columns, records, strict=True)
    }
    return [*rows, {"metric": "gate", **verdicts}]


def contender_label(record: CandidateRecord) -> str:
    """Its ranking architecture, starred if the gate chose it."""
    chosen = record.contest is not None and record.contest.chosen == record.id
    return f"{record.ranking_architecture} *" if chosen else record.ranking_architecture


def trial_markdown(candidate: str, trial: TrialResult) -> str:
    verdict = "answered as in-process" if trial.passed else "**FAILED**"
    lines = [f"# Serving smoke test of {candidate}: {verdict}", ""]
    facts = {
        "held-out pairs scored by Triton": trial.rows,
        "largest |served - in-process| score": trial.max_abs_diff,
        "server start-up (s)": _round(trial.startup_s),
        "server log": f"`{trial.log_file}`" if trial.log_file else None,
        "message": trial.message,
    }
    lines += [f"- {name}: {value}" for name, value in facts.items() if value not in (None, "")]
    return "\n".join(lines)


def published_markdown(published: Published) -> str:
    lines = [
        f"# Published {published.candidate} as version {published.version}",
        "",
        f"Model repository: `{published.repository}`",
        "",
        "| model | version directory |",
        "| --- | --- |",
    ]
    lines += [
        f"| {model} | `{path}` |"
        for model, path in zip(published.models, published.version_dirs(), strict=True)
    ]
    lines += ["", "`recflow serve` serves it; a running Triton loads it with a model reload."]
    return "\n".join(lines)


def picture_markdown(title: str, png: Path) -> str:
    """``png`` embedded as a data URI: the dashboard shows it without access to the run's
    directory, which may be on another machine."""
    return f"![{title}](data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()})"


def _round(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


# ---------------------------------------------------------------------------------------------
# Prefect artifacts


def report_dataset(raw: RawDataset, reused: bool) -> None:
    create_table_artifact(
        key=Keys.DATASET,
        table=dataset_table(raw, reused),
        description=reuse_note("dataset", reused, raw.checksum),
    )


def report_features(features: FeatureSet, reused: bool, run_dir: Path) -> None:
    pictures.feature_distributions(features.profile(), run_dir / pictures.FEATURES)
    counts = f"{features.n_train} train / {features.n_valid} valid rows"
    create_table_artifact(
        key=Keys.FEATURES,
        table=features_table(features),
        description=f"{reuse_note('features', reused, features.fingerprint)} ({counts})",
    )


def report_validation(report: ValidationReport) -> None:
    create_table_artifact(
        key=Keys.ANOMALIES, table=anomalies_table(report), description=anomalies_summary(report)
    )


def report_training(
    models: Mapping[str, TrainedModel], monitors: Mapping[str, str], run_dir: Path
) -> None:
    """``monitors``: each model's validation metric, the one its early stopping read."""
    pictures.training_curves(models, monitors, run_dir / pictures.TRAINING_CURVES)
    kept = ", ".join(f"{kind} epoch {model.best_epoch}" for kind, model in models.items())
    run = next(iter(models.values())).path.parent.name
    create_table_artifact(
        key=Keys.TRAINING_CURVES,
        table=training_curves_table(models),
        description=f"{run}: weights kept from {kept}",
    )


def report_evaluation(
    candidate: str, evaluation: Evaluation, decision: GateDecision, run_dir: Path
) -> None:
    pictures.gate_comparison(evaluation, decision, run_dir / pictures.GATE)
    create_table_artifact(
        key=Keys.METRICS,
        table=metrics_table(evaluation),
        description=f"{candidate} on {evaluation.rows} held-out rows",
    )
    if recommend := recommend_table(evaluation):
        create_table_artifact(
            key=Keys.RECOMMEND,
            table=recommend,
            description=f"{candidate}: recommend's lists on {evaluation.rows} held-out rows",
        )
    create_markdown_artifact(
        key=Keys.GATE, markdown=decision.markdown(), description=f"{candidate}: {decision.status}"
    )


def report_contest(records: Sequence[CandidateRecord], run_dir: Path) -> None:
    """Champion and challengers side by side (a run of one ranker has no contest to show)."""
    if len(records) < 2:
        return
    pictures.contest(records, run_dir / pictures.CONTEST)
    contest = records[0].contest
    chosen = f"chose {contest.chosen}" if contest.chosen else "blessed none"
    create_table_artifact(
        key=Keys.CONTEST,
        table=contest_table(records),
        description=f"{len(records)} contenders on {records[0].evaluation.rows} held-out rows: "
        f"the gate {chosen} (best blessed by {contest.prefer}, starred)",
    )


def report_trial(candidate: str, trial: TrialResult) -> None:
    create_markdown_artifact(
        key=Keys.SMOKE_TEST,
        markdown=trial_markdown(candidate, trial),
        description=f"{candidate}: {'passed' if trial.passed else 'FAILED'}",
    )


def report_published(published: Published) -> None:
    create_markdown_artifact(
        key=Keys.PUBLISHED,
        markdown=published_markdown(published),
        description=f"{published.candidate} is version {published.version} "
        f"in {published.repository}",
    )


def report_pictures(run_dir: Path) -> None:
    """Every picture the run's stages drew, one artifact each, on the current (pipeline) run.

    The image is in the description too: the run page's Artifacts tab renders descriptions as
    markdown on each artifact's card (their first paragraph only, hence one line), but shows an
    artifact's content only on its own page.
    """
    for name, (key, title) in PICTURES.items():
        png = run_dir / name
        if png.is_file():
            image = picture_markdown(title, png)
            create_markdown_artifact(
                key=key,
                markdown=f"# {title}\n\n{image}\n\n`{png}`",
                description=f"{title} (`{png.name}`) {image}",
            )
