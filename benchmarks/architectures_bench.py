"""Every ranking and retrieval architecture, served, on ml-100k's five official folds (#20).

    .venv/bin/python benchmarks/architectures_bench.py --work /tmp/architectures-bench \
        --out benchmarks/results/architectures.md

Per fold ``uN``, with ``benchmarks/recommend_bench.py``'s protocol and helpers:

1. **The pipeline sees only ``uN.base``** (an ml-100k archive whose ``u.data`` is ``uN.base``,
   no split files, from a mirror directory). The features stage makes its own validation split
   inside it (``features.split``: 20 % of the pairs by hash up to #29, each user's latest 20 %
   since); early stopping, recommend's ordering and the gate read
   that split only.
2. **Rankers: one run, champion and challengers.** ``recflow run`` with
   ``ranking.challengers`` = every architecture but the default: each ranker trains on the same
   features with the same ``ranking`` settings next to the one two-tower retrieval model, and
   the gate judges each on the same validation rows. Every contender is in the registry.
3. **Retrieval: one more run** in a home of its own with ``retrieval.architecture=mf`` (and the
   default ranker): its records are the MF retrieval rows.
4. **Served numbers on ``uN.test``.** Each contender is exported from the registry into a
   scratch Triton repository of its own, served by the bundled ``tritonserver`` and queried
   over gRPC (``recommend_bench.served_numbers``): ranking AUC of every test pair (rated >= 4
   vs < 4), ``recommend`` and ``retrieval`` top 10, each user's ``uN.base`` items excluded.
   Nothing is chosen on ``uN.test``: the table only reports it.
5. **Baselines on the same rows, in the same invocation** (``recommend_bench.baselines``): the
   per-item mean (AUC), most popular unseen and the ``implicit`` MF baseline chosen on a split
   of ``uN.base`` (``uv sync --frozen --group bench --inexact`` installs ``implicit``).

The report: one table, each architecture's mean and sample std over the folds, with the gate's
validation AUC (inside ``uN.base``), the training time and the gate's verdicts, then the folds.
Not a test: nothing here runs in the suite.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from recommend_bench import (  # noqa: E402
    Fold,
    K,
    base_only_mirror,
    baselines,
    fold_arguments,
    labelled,
    read_fold,
    run_folds,
    run_pipeline,
    served_numbers,
    uptime,
)

from cli.app import EXIT_NOT_BLESSED  # noqa: E402
from recflow.artifacts import RankingModel  # noqa: E402
from recflow.config import RankingArchitecture, load_settings  # noqa: E402
from recflow.registry import Registry  # noqa: E402
from recflow.vocabulary import RANKING  # noqa: E402
from release.export import exported_candidate  # noqa: E402
from release.gate import HeldOut, retrieval_task  # noqa: E402
from serving.repository import install  # noqa: E402

log = logging.getLogger("architectures_bench")

RANKERS: tuple[RankingArchitecture, ...] = ("dlrm", "dcn", "mlp", "ncf", "mf")
# (run, its overrides); each run has its own home under the fold: the rankers' contest, then MF
# retrieval next to the default ranker.
RUNS = (
    ("rankers", [f"ranking.challengers=[{','.join(RANKERS[1:])}]"]),
    ("retrieval-mf", ["retrieval.architecture=mf"]),
)
SERVED = ["serving.grpc_port=0", "serving.http_port=0", "serving.metrics_port=0"]


def contender_rows(run: str, home: Path, fold: Fold, overrides: list[str]) -> list[dict]:
    """Every contender the run in ``home`` registered (blessed or not), each served from a
    scratch repository of its own."""
    settings = load_settings(overrides=[f"paths.home={home}", *SERVED, *overrides])
    threshold = settings.features.rating_threshold
    split = HeldOut(labelled(fold.base, threshold), labelled(fold.test, threshold))
    task = retrieval_task(split, fold.items)
    registry = Registry.from_settings(settings)
    settings.paths.cache_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for record in registry.records():
        with tempfile.TemporaryDirectory(dir=settings.paths.cache_dir) as scratch:
            repo = Path(scratch)
            exported = exported_candidate(registry, record, settings.serving)
            version = install(exported, repo, settings.serving)
            served = served_numbers(settings, repo, record, version, split, task)
        rows.append(
            {
                "run": run,
                "ranking": record.ranking_architecture,
                "retrieval": record.lineage.params["retrieval"]["architecture"],
                "candidate": record.id,
                "gate": record.status,
                "chosen": record.contest.chosen == record.id,
                "validation auc": record.evaluation.metrics["ranking.auc"],
                "train seconds": RankingModel.load(record.models[RANKING]).train_seconds,
                "served": served,
            }
        )
        log.info("%s %s: %s", run, record.id, {k: served[k] for k in ("ranking auc", "recommend")})
    return rows


def fold_rows(archive: Path, name: str, work: Path, extra: list[str]) -> dict:
    """Both runs of fold ``name``, every contender's served numbers and the baselines on the
    same test rows, kept as JSON (a second invocation reports them without running again)."""
    fold = read_fold(archive, name)
    saved, kept = work / name / "rows.json", work / name / "baselines.json"
    if not saved.is_file():
        mirror = base_only_mirror(archive, fold, work / name / "mirror")
        rows = []
        for run, overrides in RUNS:
            home, load = work / name / run, uptime()
            if not (home / "pipeline_seconds").is_file():
                log.info("%s %s: recflow run on %d rows, home %s", name, run, len(fold.base), home)
                # A run none of whose contenders the gate blessed published nothing, but
                # registered them all: they are served here all the same.
                seconds = run_pipeline(home, mirror, [*overrides, *extra], (0, EXIT_NOT_BLESSED))
                (home / "pipeline_seconds").write_text(f"{seconds:.1f}")
            for row in contender_rows(run, home, fold, [*overrides, *extra]):
                rows.append(row | {"fold": name, "uptime": [load, uptime()]})
        saved.write_text(json.dumps(rows, indent=1))
    if not kept.is_file():
        threshold = load_settings().features.rating_threshold
        split = HeldOut(labelled(fold.base, threshold), labelled(fold.test, threshold))
        kept.write_text(json.dumps(baselines(fold, split, retrieval_task(split, fold.items))))
    return {"rows": json.loads(saved.read_text()), "baselines": json.loads(kept.read_text())}


# (column, value of a row, format)
METRICS = (
    ("served ranking AUC", lambda r: r["served"]["ranking auc"], ".4f"),
    (f"recommend recall@{K}", lambda r: r["served"]["recommend"][f"recall@{K}"], ".4f"),
    (f"recommend ndcg@{K}", lambda r: r["served"]["recommend"][f"ndcg@{K}"], ".4f"),
    (f"retrieval recall@{K}", lambda r: r["served"]["retrieval"][f"recall@{K}"], ".4f"),
    (f"retrieval ndcg@{K}", lambda r: r["served"]["retrieval"][f"ndcg@{K}"], ".4f"),
    ("gate AUC (validation in uN.base)", lambda r: r["validation auc"], ".4f"),
    ("ranker train s", lambda r: r["train seconds"], ".0f"),
)


# Baseline rows of the table: (label, its served-AUC-column value, its lists' metrics).
BASELINES = (
    ("per-item mean", lambda b: b["per-item mean auc"], lambda b: None),
    ("most popular unseen", lambda b: None, lambda b: b["most popular"]),
    ("MF (implicit, chosen on a split of uN.base)", lambda b: None, lambda b: b["mf"]),
)


def _cell(values: list[float | None], form: str) -> str:
    if any(value is None for value in values):
        return ""
    values = np.array(values)
    std = values.std(ddof=1) if len(values) > 1 else float("nan")
    return f"{values.mean():{form}} ± {std:{form}}"


def markdown(results: dict[str, dict]) -> str:
    rows = [row for fold in results.values() for row in fold["rows"]]
    folds = list(results)
    models: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        models.setdefault((row["ranking"], row["retrieval"]), []).append(row)
    header = " | ".join(name for name, _, _ in METRICS)
    lines = [
        f"Served on {', '.join(folds)} test, mean ± sample std over the folds:",
        "",
        f"| ranking | retrieval | {header} | gate blessed | chosen by the gate |",
        "| --- | --- |" + " ---: |" * len(METRICS) + " ---: | ---: |",
    ]
    for (ranking, retrieval), group in models.items():
        cells = [_cell([value(row) for row in group], form) for _, value, form in METRICS]
        blessed = sum(row["gate"] == "BLESSED" for row in group)
        chosen = sum(row["chosen"] for row in group)
        lines.append(
            f"| {ranking} | {retrieval} | {' | '.join(cells)} | {blessed}/{len(group)} | "
            f"{chosen}/{len(group)} |"
        )
    for label, auc, lists in BASELINES:
        found = [fold["baselines"] for fold in results.values()]
        metrics = [lists(b) for b in found]
        cells = [_cell([auc(b) for b in found], ".4f")]
        for name in (f"recall@{K}", f"ndcg@{K}"):
            cells.append(_cell([m and m[name] for m in metrics], ".4f"))
        lines.append(f"| {label} (baseline) | | {' | '.join(cells)} |" + " |" * 6)
    lines += [
        "",
        "Chosen by the gate: of the five rankers of a fold, the best blessed by `gate.prefer`",
        "(validation AUC); the MF retrieval run had one contender. A baseline's lists are in the",
        "recommend columns.",
        "",
        "Per fold (served ranking AUC / recommend recall@10):",
        "",
        "| ranking | retrieval | " + " | ".join(folds) + " |",
        "| --- | --- |" + " ---: |" * len(folds),
    ]
    for (ranking, retrieval), group in models.items():
        by_fold = {row["fold"]: row["served"] for row in group}
        cells = [
            f"{by_fold[f]['ranking auc']:.4f} / {by_fold[f]['recommend'][f'recall@{K}']:.4f}"
            for f in folds
        ]
        lines.append(f"| {ranking} | {retrieval} | {' | '.join(cells)} |")
    lines += ["", "Machine load around each run (run start, after its evaluation):", ""]
    lines += sorted(
        {
            f"- {row['fold']} {row['run']}: `{row['uptime'][0]}` / `{row['uptime'][1]}`"
            for row in rows
        }
    )
    return "\n".join([*lines, ""])


def main() -> None:
    args = fold_arguments(__doc__.splitlines()[0]).parse_args()

    def per_fold(archive: Path, name: str) -> dict:
        return fold_rows(archive, name, args.work, args.set)

    run_folds("architectures_bench.py", args, per_fold, markdown)


if __name__ == "__main__":
    main()
