"""The run's pictures (PNG): training curves, the gate's comparison, feature distributions.

Each function draws from a stage's result and writes one PNG atomically into the run's
directory (``<home>/runs/<run_id>/``, docs/layout.md); flows/reporting.py embeds them in the
dashboard. Figures are made with matplotlib's object API on the Agg canvas, never pyplot: no
display, no global figure state shared between threads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from recflow.artifacts import Profile, TrainedModel
from recflow.atomic import atomic_file
from recflow.registry import CandidateRecord, Evaluation, GateDecision
from recflow.vocabulary import RECOMMEND, MetricKey

TRAINING_CURVES = "training-curves.png"
GATE = "gate.png"
CONTEST = "contest.png"
FEATURES = "feature-distributions.png"
# Small enough to embed in a dashboard artifact (tens of kB), sharp enough to read.
DPI = 80
PASS, FAIL = "tab:green", "tab:red"
# Tables of a feature build whose columns are drawn: the data as read. The encoded features
# table holds ids whose values mean nothing to a reader.
RAW_TABLES = ("interactions", "items", "users")
# A categorical column's most common values drawn; the rest are summed as "other".
TOP_VALUES = 12
PANEL_COLUMNS = 4


def training_curves(
    models: Mapping[str, TrainedModel], monitors: Mapping[str, str], path: Path
) -> Path:
    """Per model: the training loss and the validation ``monitors[kind]`` per epoch, the kept
    epoch marked."""
    figure = Figure(figsize=(5 * len(models), 3.6), dpi=DPI, layout="constrained")
    for axes, (kind, model) in zip(
        figure.subplots(1, len(models), squeeze=False)[0], models.items(), strict=True
    ):
        monitor = monitors[kind]
        epochs = range(1, len(model.history) + 1)  # as training_curves_table counts them
        axes.plot(epochs, [row["loss"] for row in model.history], "o-", color="tab:blue")
        axes.set(xlabel="epoch", title=f"{kind}: kept epoch {model.best_epoch}")
        axes.set_ylabel("training loss", color="tab:blue")
        metric = axes.twinx()
        metric.plot(epochs, [row[monitor] for row in model.history], "s-", color="tab:orange")
        metric.set_ylabel(f"validation {monitor}", color="tab:orange")
        axes.axvline(model.best_epoch, color="grey", linestyle=":")
        axes.xaxis.get_major_locator().set_params(integer=True)
    return _save(figure, path)


BAR_COLOURS = {"candidate": "tab:blue", "baseline": "tab:grey", "blessed": "tab:purple"}


def gate_comparison(evaluation: Evaluation, decision: GateDecision, path: Path) -> Path | None:
    """One panel per gated metric: the candidate, its baseline and the blessed model on the
    same held-out rows, and each bound the gate checked as a line (green passed, red failed).
    A gate with every bound switched off checked nothing: no picture."""
    metrics = list(dict.fromkeys(check.metric for check in decision.checks))
    if not metrics:
        return None
    rows = math.ceil(len(metrics) / 2)
    figure = Figure(figsize=(10, 2.2 * rows + 0.6), dpi=DPI, layout="constrained")
    verdict = "BLESSED" if decision.blessed else f"NOT BLESSED ({len(decision.failed)} failed)"
    against = (
        f"blessed {evaluation.compared_with}" if evaluation.compared_with else "no blessed model"
    )
    figure.suptitle(
        f"Evaluation gate: {verdict} (against {against}, on {evaluation.rows:,} held-out rows)",
        color=PASS if decision.blessed else FAIL,
    )
    panels = figure.subplots(rows, 2, squeeze=False).ravel()
    for axes, metric in zip(panels, metrics, strict=False):
        bars = {"candidate": evaluation.metrics.get(metric)}
        bars["baseline"] = evaluation.baseline_metrics.get(metric)
        if metric in evaluation.blessed_metrics:
            bars["blessed"] = evaluation.blessed_metrics[metric]
        key = MetricKey.parse(metric)
        if key.kind == RECOMMEND:  # the lists' strong baselines, fitted in the same run
            bars |= {name: scored.get(key.name) for name, scored in evaluation.baselines.items()}
        shown = {name: value for name, value in bars.items() if value is not None}
        colours = [BAR_COLOURS.get(name, "tab:olive") for name in shown]
        _labelled_bars(axes, list(shown), list(shown.values()), colours)
        checks = [check for check in decision.checks if check.metric == metric]
        for check in checks:
            axes.axvline(check.bound, color=PASS if check.passed else FAIL, linestyle="--")
        axes.set_xlabel("dashed: the gate's bounds", fontsize="small")
        passed = all(check.passed for check in checks)
        axes.set_title(f"{metric}: {'pass' if passed else 'FAIL'}", color=PASS if passed else FAIL)
    for axes in panels[len(metrics) :]:
        axes.set_visible(False)
    return _save(figure, path)


def contest(records: Sequence[CandidateRecord], path: Path) -> Path | None:
    """One panel per gated metric: a bar per contender (green passed that metric's checks, red
    failed), the baseline and the blessed model, on the same held-out rows; the title names
    the one chosen."""
    metrics = list(dict.fromkeys(c.metric for record in records for c in record.decision.checks))
    if not metrics:
        return None
    contest = records[0].contest
    rows = math.ceil(len(metrics) / 2)
    height = (0.5 * len(records) + 1.4) * rows + 0.6
    figure = Figure(figsize=(10, height), dpi=DPI, layout="constrained")
    chosen = f"published {contest.chosen}" if contest.chosen else "none blessed"
    figure.suptitle(f"Champion and challengers: {chosen} (best blessed by {contest.prefer})")
    evaluation = records[0].evaluation
    panels = figure.subplots(rows, 2, squeeze=False).ravel()
    for axes, metric in zip(panels, metrics, strict=False):
        names, values, colours = [], [], []
        for record in records:
            checks = [c for c in record.decision.checks if c.metric == metric]
            names.append(record.ranking_architecture)
            values.append(record.evaluation.metrics[metric])
            colours.append(PASS if all(c.passed for c in checks) else FAIL)
        for name, value, color in (
            ("baseline", evaluation.baseline_metrics.get(metric), "tab:grey"),
            ("blessed", evaluation.blessed_metrics.get(metric), "tab:purple"),
        ):
            if value is not None:
                names.append(name)
                values.append(value)
                colours.append(color)
        _labelled_bars(axes, names, values, colours)
        axes.set_title(metric)
    for axes in panels[len(metrics) :]:
        axes.set_visible(False)
    return _save(figure, path)


def feature_distributions(profile: Profile, path: Path) -> Path | None:
    """A panel per column of the tables the build read: a numeric column's quantile function,
    unless it has only a few values; a categorical column's shares of its most common values.
    Columns with neither statistic (free text) are left out; with none left, no picture."""
    columns = [
        (table, name, stats)
        for table in RAW_TABLES
        for name, stats in profile.tables.get(table, {}).items()
        if stats.shares or stats.quantiles
    ]
    if not columns:
        return None
    rows = math.ceil(len(columns) / PANEL_COLUMNS)
    figure = Figure(figsize=(4 * PANEL_COLUMNS, 2.6 * rows), dpi=DPI, layout="constrained")
    panels = figure.subplots(rows, PANEL_COLUMNS, squeeze=False).ravel()
    for axes, (table, name, stats) in zip(panels, columns, strict=False):
        axes.set_title(f"{table}.{name}", fontsize="medium")
        if stats.quantiles and (not stats.shares or len(stats.shares) > TOP_VALUES):
            _quantiles(axes, stats.quantiles)
        else:
            _shares(axes, stats.shares, numeric=bool(stats.quantiles))
    for axes in panels[len(columns) :]:
        axes.set_visible(False)
    return _save(figure, path)


def _shares(axes: Axes, shares: Mapping[str, float], numeric: bool) -> None:
    top = sorted(shares.items(), key=lambda item: -item[1])[:TOP_VALUES]
    if numeric:  # few values, in their order: a histogram
        top.sort(key=lambda item: float(item[0]))
    if len(shares) > TOP_VALUES:
        # Not "other": that is one of MovieLens' occupations.
        top.append(("(the rest)", 1.0 - sum(share for _, share in top)))
    axes.bar([value for value, _ in top], [share for _, share in top], color="tab:blue")
    axes.set_ylabel("share of rows")
    axes.tick_params(axis="x", labelrotation=60, labelsize="small")


def _quantiles(axes: Axes, quantiles: list[float]) -> None:
    probabilities = [i / (len(quantiles) - 1) for i in range(len(quantiles))]
    axes.plot(quantiles, probabilities, color="tab:blue")
    axes.set(ylabel="fraction of rows ≤ value", ylim=(0, 1))


def _labelled_bars(axes: Axes, names: list[str], values: list[float], colours: list[str]) -> None:
    """Horizontal bars, top to bottom in the given order, each with its value at its end."""
    axes.barh(names, values, color=colours)
    axes.invert_yaxis()
    for name, value in zip(names, values, strict=True):
        axes.annotate(
            f"{value:.4f}", (value, name), xytext=(3, 0), textcoords="offset points", va="center"
        )


def _save(figure: Figure, path: Path) -> Path:
    with atomic_file(path) as handle:
        figure.savefig(handle, format="png")
    return path
