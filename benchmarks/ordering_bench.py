"""What recommend's ordering choice leaves on the table: every weight pair on the test rows (#29).

Reads what a ``recommend_bench.py`` (``--benchmark folds``) or ``time_holdout_bench.py``
(``--benchmark time-holdout``) invocation left in its ``--work`` directory: each fold's or
part's published run and its ``result.json``. Nothing is trained or served here:

    .venv/bin/python benchmarks/ordering_bench.py --work /tmp/rb6 --out ordering.md
    .venv/bin/python benchmarks/ordering_bench.py --benchmark time-holdout --work /tmp/th7

At training time, recommend's (ranker, item-item) weights are the pair of
``ordering.weight_pairs`` whose lists score the best recall@10 on the run's validation split
(``models.composed.choose_ordering``); ``result.json`` holds every pair's value. Here the
published version's own recommend stage (``serving.runtime.RecommendStage``, which the
benchmark checked to equal Triton's answers) orders each test user's candidates with every
pair in turn, and recall@10 and ndcg@10 are taken on the benchmark's held-out rows as it takes
them (the same task: relevant rows, seen items excluded), next to the EASE of the same
invocation.

**These test numbers are hindsight, not results**: a pair picked because it scores best on
the held-out rows is chosen on the rows it is reported on. The table says how far the validation
choice is from the best the candidates allow, and whether a pair that validation ranks near
the top is also good on the test rows: the question behind any rule that chooses the weights.
Not a test: nothing here runs in the suite.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recommend_bench import (  # noqa: E402
    ARCHIVE,
    FOLDS,
    REPO,
    K,
    labelled,
    list_metrics,
    published,
    read_fold,
    served_settings,
)
from time_holdout_bench import ARCHIVE as LATEST_SMALL_ARCHIVE  # noqa: E402
from time_holdout_bench import SPLITS, read_holdout  # noqa: E402

from models.evaluation import RetrievalTask  # noqa: E402
from recflow.artifacts import OrderingPolicy  # noqa: E402
from recflow.config import Settings  # noqa: E402
from recflow.vocabulary import RECOMMEND  # noqa: E402
from release.export import version_dirs  # noqa: E402
from release.gate import HeldOut, retrieval_task  # noqa: E402
from serving.repository import published_stages  # noqa: E402
from serving.runtime import RecommendStage  # noqa: E402

METRICS = ("recall@10", "ndcg@10")


def landscape(work: Path, name: str, task: RetrievalTask) -> dict:
    """Per weight pair the part's run measured on validation: that value, and the test
    metrics on ``task`` of the published version's recommend ordered by the pair; EASE's."""
    result = json.loads((work / name / "result.json").read_text())
    validation = result["ordering validation"]
    settings = served_settings(work / name / "home", [])
    _, version = published(settings)
    dirs = version_dirs(
        settings.paths.triton_repo, settings.serving, version, published_stages(True)
    )
    stage = RecommendStage(dirs[RECOMMEND])
    test = {}
    for ranker, item_item in settings.ordering.weight_pairs(item_item=stage.item_item is not None):
        stage.ordering = OrderingPolicy(ranker_weight=ranker, item_item_weight=item_item)
        if stage.ordering.key in validation:
            lists, _ = stage.recommend(np.asarray(task.users, np.int64), K)
            test[stage.ordering.key] = list_metrics(lists, task)
    return {"validation": validation, "test": test, "ease": result["ease"]}


def fold_task(movielens: Path, name: str) -> RetrievalTask:
    """recommend_bench's task of fold ``name``: its ``uN.test`` positives, ``uN.base`` seen."""
    fold = read_fold(movielens / ARCHIVE, name)
    threshold = Settings().features.rating_threshold
    split = HeldOut(labelled(fold.base, threshold), labelled(fold.test, threshold))
    return retrieval_task(split, fold.items)


def holdout_task(movielens: Path, name: str) -> RetrievalTask:
    """time_holdout_bench's task of part ``name``: each user's latest 20 % by time."""
    holdout = read_holdout(movielens / LATEST_SMALL_ARCHIVE)
    split = SPLITS[name](holdout, Settings())
    return retrieval_task(split.held_out, split.catalogue)


def chosen(values: dict[str, float]) -> str:
    """The pair choose_ordering picks: the best value, the earlier pair on ties."""
    return max(values, key=lambda key: (values[key], -list(values).index(key)))


def markdown(folds: dict[str, dict]) -> str:
    """One row per weight pair, a column per fold or part; then the choice's cost."""
    names = list(folds)
    pairs = list(next(iter(folds.values()))["test"])

    def ratio(name: str, pair: str, metric: str = "recall@10") -> float:
        return folds[name]["test"][pair][metric] / folds[name]["ease"][metric]

    header = " | ".join(f"{n}: validation / test (x EASE)" for n in names)
    lines = [
        f"| pair (recall@10) | {header} | mean x EASE | min x EASE |",
        "| --- |" + " ---: |" * (len(names) + 2),
    ]
    for pair in pairs:
        cells = []
        for name in names:
            mark = "**" if chosen(folds[name]["validation"]) == pair else ""
            value = folds[name]["validation"][pair]
            test = folds[name]["test"][pair]["recall@10"]
            cells.append(f"{mark}{value:.4f} / {test:.4f} ({ratio(name, pair):.3f}){mark}")
        ratios = [ratio(name, pair) for name in names]
        lines.append(
            f"| {pair} | {' | '.join(cells)} | {np.mean(ratios):.3f} | {min(ratios):.3f} |"
        )
    lines += ["", "In bold: the pair validation chose (what served).", ""]
    fixed = max(pairs, key=lambda pair: np.mean([ratio(n, pair) for n in names]))
    for metric in METRICS:
        served = [ratio(n, chosen(folds[n]["validation"]), metric) for n in names]
        best = [max(ratio(n, p, metric) for p in pairs) for n in names]
        one = [ratio(n, fixed, metric) for n in names]
        lines += [
            f"- {metric} x EASE, validation's choice: mean {np.mean(served):.3f}, "
            f"lowest fold {min(served):.3f}; one pair for every fold ({fixed}, the best mean "
            f"in hindsight): mean {np.mean(one):.3f}, lowest {min(one):.3f}; each fold's best "
            f"pair in hindsight: mean {np.mean(best):.3f}, lowest {min(best):.3f}",
        ]
    return "\n".join(lines)


BENCHMARKS = {"folds": (FOLDS, fold_task), "time-holdout": (tuple(SPLITS), holdout_task)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="the benchmark's --work")
    parser.add_argument("--benchmark", choices=BENCHMARKS, default="folds")
    parser.add_argument("--movielens", type=Path, default=REPO.parent / "shared/data/movielens")
    parser.add_argument("--parts", nargs="+", help="folds or parts (default: all)")
    parser.add_argument("--out", type=Path, help="write the markdown report to this file")
    args = parser.parse_args()
    names, task_of = BENCHMARKS[args.benchmark]
    parts = {
        name: landscape(args.work, name, task_of(args.movielens, name))
        for name in args.parts or names
    }
    command = " ".join([".venv/bin/python", "benchmarks/ordering_bench.py", *sys.argv[1:]])
    text = "\n".join(["```bash", command, "```", "", markdown(parts)])
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
