"""EASE, item-kNN and most popular on real MovieLens data, by the gate's top-k code.

    .venv/bin/python benchmarks/baselines_bench.py --out benchmarks/results/baselines.md

No pipeline runs: this measures the baselines of models/baselines.py alone (issue #29), on two
protocols, each user's training items excluded from their list and every list drawn from the
whole catalogue (``models.evaluation``, whose top-k code is ``models.metrics``'):

1. **ml-100k's five official folds** ``u1..u5``: trained on ``uN.base``, judged on ``uN.test``;
   relevant = rated >= 4 in ``uN.test``; users: those with a relevant test item; catalogue:
   every item of ``u.item``.
2. **By time**, on ml-latest-small (as issue #29 measured) and on ml-100k's ``u.data``: each
   user's latest 20 % of ratings (by timestamp, then item; floor(0.2 x ratings), and every user
   of both has at least 20) held out (``tasks.features.latest_share``, the split
   ``features.split=last_fraction`` makes); relevant = rated >= 4 there; catalogue: every rated
   item.

EASE and item-kNN learn from every rated training pair (binary: rated or not). λ and k are
chosen by ``models.baselines.fit_tuned`` on a slice of the training rows only, then refitted on
all of them: on the folds a seeded random 10 % of ``uN.base``'s rows (the folds are a random
split of the ratings); by time, each user's latest 10 % of their training rows (the test asks
about each user's next ratings, so the choice is made on the same question) and, to measure what
that is worth, a seeded random 10 %. Most popular: the count of training positives (rated >= 4,
as the gate counts), or of every rated training pair (as issue #29's table counted). Seconds:
the grid search with its refit, and one refit alone with the chosen value. Not a test: nothing
here runs in the suite.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recommend_bench import (  # noqa: E402
    COLUMNS,
    FOLDS,
    item_item,
    labelled,
    popular_metrics,
    read_fold,
    uptime,
)

from models.baselines import random_rows  # noqa: E402
from recflow.vocabulary import ITEM_ID, LABEL, USER_ID  # noqa: E402
from release.gate import HeldOut, retrieval_task  # noqa: E402
from tasks.features import latest_share  # noqa: E402

log = logging.getLogger("baselines_bench")

THRESHOLD = 4.0
LATEST_SMALL = "ml-latest-small"
TIME_ARCHIVES = ("ml-latest-small.zip", "ml-100k.zip")
TUNED_LATEST = "tuned on each user's latest 10 %"
TUNED_RANDOM = "tuned on a random 10 %"
# Each user's latest share of ratings held out on the time protocol, and of the training rows
# the grid is judged on there.
TEST_SHARE = 0.2
TUNING_SHARE = 0.1
# Most popular counts training positives, as the gate does; the table (#29) counted
# every rated pair.
POPULAR_POSITIVES = "most popular (positives)"
POPULAR_RATED = "most popular (rated)"
MODELS = ("ease", "item_knn", POPULAR_POSITIVES, POPULAR_RATED)
METRICS = ("recall@10", "ndcg@10")


def read_ratings(archive: Path) -> pd.DataFrame:
    """Every rating of an ml-100k or ml-latest-small archive in raw ids, in user time order."""
    with zipfile.ZipFile(archive) as zf:
        if archive.name == "ml-100k.zip":
            ratings = pd.read_csv(zf.open("ml-100k/u.data"), sep="\t", names=COLUMNS)
        else:
            ratings = pd.read_csv(zf.open(f"{LATEST_SMALL}/ratings.csv"))
    ratings = ratings.rename(columns={"userId": USER_ID, "movieId": ITEM_ID})
    return ratings.sort_values([USER_ID, "timestamp", ITEM_ID], kind="stable", ignore_index=True)


def evaluate(split: HeldOut, catalogue: np.ndarray, tuning_rows: np.ndarray) -> dict:
    """Each baseline's test metrics, its chosen value, validation and seconds on ``split``."""
    task = retrieval_task(split, catalogue)
    train = split.train
    out: dict = {"users": len(task.users), **item_item(split, task, tuning_rows)}
    counted = {POPULAR_POSITIVES: train[train[LABEL] == 1], POPULAR_RATED: train}
    for name, rows in counted.items():
        out[name] = popular_metrics(rows[ITEM_ID], task)
    return out


def fold_results(archive: Path, folds: list[str]) -> dict[str, dict]:
    results = {}
    for name in folds:
        fold = read_fold(archive, name)
        split = HeldOut(labelled(fold.base, THRESHOLD), labelled(fold.test, THRESHOLD))
        results[name] = evaluate(split, fold.items, random_rows(len(split.train)))
    return results


def time_results(archive: Path) -> dict[str, dict]:
    """The time protocol on ``archive``, λ and k chosen on each user's latest training rows and,
    to measure what that choice is worth, on a random share of them."""
    ratings = read_ratings(archive)
    held = latest_share(ratings, TEST_SHARE).to_numpy()
    train = ratings[~held].reset_index(drop=True)
    split = HeldOut(labelled(train, THRESHOLD), labelled(ratings[held], THRESHOLD))
    catalogue = ratings[ITEM_ID].unique()
    # train is still in user time order: each user's latest share of it is a tuning slice.
    slices = {
        TUNED_LATEST: latest_share(train, TUNING_SHARE).to_numpy(),
        TUNED_RANDOM: random_rows(len(train), TUNING_SHARE),
    }
    return {name: evaluate(split, catalogue, rows) for name, rows in slices.items()}


def table(results: dict[str, dict], metric: str, mean: bool) -> list[str]:
    """One markdown table of ``metric``: a row per model, a column per protocol part, and with
    ``mean`` their mean (over folds; not over two ways of tuning)."""
    names = [*results, *(["mean"] if mean else [])]
    lines = [f"| {metric} | {' | '.join(names)} |", f"| --- |{' ---: |' * len(names)}"]
    for model in MODELS:
        values = [results[name][model][metric] for name in results]
        cells = [f"{value:.4f}" for value in [*values, *([np.mean(values)] if mean else [])]]
        lines.append(f"| {model} | {' | '.join(cells)} |")
    return lines


def choices(results: dict[str, dict]) -> list[str]:
    """What the grid chose and what fitting took, per protocol part."""
    lines = [
        "| part | users | EASE λ | EASE tune / refit s | item-kNN k | item-kNN tune / refit s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, result in results.items():
        ease, knn = result["ease"], result["item_knn"]
        lines.append(
            f"| {name} | {result['users']} | {ease['value']:g} | "
            f"{ease['tune seconds']:.1f} / {ease['fit seconds']:.1f} | {knn['value']:g} | "
            f"{knn['tune seconds']:.1f} / {knn['fit seconds']:.1f} |"
        )
    return lines


def markdown(folds: dict[str, dict], by_time: dict[str, dict[str, dict]]) -> str:
    # Section title, its results by column, and whether the columns average (folds do).
    sections = [("ml-100k, the official folds (a random split of the ratings)", folds, True)]
    for archive, parts in by_time.items():
        title = f"{archive.removesuffix('.zip')}, each user's latest 20 % of ratings held out"
        sections.append((title, parts, False))
    lines = []
    for title, parts, mean in sections:
        lines += [f"## {title}", ""]
        for metric in METRICS:
            lines += [*table(parts, metric, mean), ""]
        lines += [*choices(parts), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--movielens", type=Path, default=REPO.parent / "shared/data/movielens")
    parser.add_argument("--folds", nargs="+", default=list(FOLDS), choices=FOLDS)
    parser.add_argument(
        "--time", nargs="*", default=list(TIME_ARCHIVES), choices=TIME_ARCHIVES,
        help="archives of the time protocol (none: skip it)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, help="write the markdown report to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", force=True)
    command = shlex.join([".venv/bin/python", "benchmarks/baselines_bench.py", *sys.argv[1:]])
    before = uptime()
    folds = fold_results(args.movielens / "ml-100k.zip", args.folds)
    by_time = {archive: time_results(args.movielens / archive) for archive in args.time}
    header = [
        "# Baselines: EASE, item-kNN, most popular (issue #29)",
        "",
        "```bash",
        command,
        "```",
        "",
        f"`uptime` before: {before}",
        f"`uptime` after: {uptime()}",
        "",
        *__doc__.split("\n\n", 2)[2].splitlines(),
        "",
    ]
    text = "\n".join([*header, markdown(folds, by_time)])
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
