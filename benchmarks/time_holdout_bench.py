"""The served recommend on ml-latest-small, each user's latest 20 % held out, against EASE (#29).

Where users ask about the future: the served ``recommend`` next to EASE, item-kNN and most
popular fitted in the same invocation, on each user's latest ratings.

    .venv/bin/python benchmarks/time_holdout_bench.py --work /tmp/time-holdout --out report.md

**The split.** Every rating of ml-latest-small in each user's time order (timestamp, then
item); each user's latest 20 % of them (floor(0.2 x ratings); every user has at least 20, so
none becomes cold) is held out (``tasks.features.latest_share``, the cut
``features.split=last_fraction`` and ``baselines_bench`` make). The rest is the training data
of two runs, one per part:

1. ``latest-small``: the archive re-packed without the held-out rows (``ratings.csv``; and
   ``tags.csv`` without the tags a user applied at or after their first held-out rating), in a
   mirror directory with its ``SHA256SUMS`` (``recommend_bench.repacked_mirror``, as the fold
   benchmark does for ml-100k), run as ``data.variant=ml-latest-small``, ``data.mirror=`` that
   directory. Relevant: held-out rows rated >= 4.
2. ``implicit``: the same re-packed archive turned into "your own data" by
   ``examples/movielens_as_own_data.py``'s ``implicit`` shape (string ids ``u1``, ``m296``, ISO
   dates, no ratings: every row is an interaction), run as ``recflow --config`` its
   ``recflow.yaml``. Relevant: every held-out interaction (the data has no ratings). Requests
   carry the strings and answers name the items by theirs (``recommend_bench.EndpointIds``);
   every number is computed on the int64 ids recflow hashes them to.

Each run is ``recflow run`` (a subprocess, a fresh home and Prefect home per part) with the
default settings plus ``--set`` overrides: inside the training data the features stage makes
its own validation split (``features.split``, each user's latest 20 % by default) that early
stopping, recommend's ordering and the gate read; the held-out rows reach none of it.

**The numbers come from Triton** (``recommend_bench.served_numbers``): the published repository
served by the bundled ``tritonserver`` and queried over gRPC for the held-out users:
``recommend`` and ``retrieval`` (``exclude_seen``) top 10, and on ``latest-small`` the ranking
score of every held-out pair (AUC, rated >= 4 vs < 4); the same users' lists in-process
(``serving.runtime.RecommendStage``) are compared with the served ones. Seen: the user's
training items, excluded from every list (the published endpoints' own seen items are the
same rows). Users: those with a relevant held-out item. Catalogue: every movie of
``movies.csv``.

**Baselines in the same invocation, on the same rows, by the same metric code**
(``models.evaluation``): EASE and item-kNN (``recommend_bench.item_item``, i.e.
``models.baselines.fit_tuned``) learn from every training pair; λ and k are chosen on each
user's latest 10 % of their training rows (the question the test asks; a random 10 % chose a
weaker EASE, benchmarks/results/baselines.md), then refitted on all of them. Most popular
unseen: the count of training positives (rated >= 4; every interaction on ``implicit``). On
``latest-small`` also the smoothed per-item mean (AUC). Seconds: the pipeline's wall time, and
each baseline's search with its refit / one refit alone.

The report: the command, the commit measured and whether Triton's stub imported this
checkout's code (recommend_bench's docstring says how to measure another checkout), ``uptime``,
one table (a column per part), and the goals of #29 as check lines: recommend recall@10 >=
1.05x EASE on ``latest-small``, >= EASE on ``implicit``. ``--reuse`` reports a part from what
an earlier invocation left in ``--work``. Not a test: nothing here runs in the suite.
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from baselines_bench import LATEST_SMALL, TEST_SHARE, TUNING_SHARE, read_ratings  # noqa: E402
from recommend_bench import (  # noqa: E402
    EASE_RATIO,
    RECALL,
    EndpointIds,
    against_ease,
    bench_arguments,
    checklist,
    details,
    item_item,
    labelled,
    measured,
    metric_table,
    per_item_mean_auc,
    popular_metrics,
    published,
    recflow_run,
    repacked_mirror,
    reuse_argument,
    run_parts,
    run_pipeline,
    served_numbers,
)

from examples.movielens_as_own_data import write_example  # noqa: E402
from recflow.config import Settings  # noqa: E402
from recflow.external_ids import internal_ids  # noqa: E402
from recflow.vocabulary import ITEM_ID, LABEL, USER_ID  # noqa: E402
from release.gate import HeldOut, retrieval_task  # noqa: E402
from tasks.features import latest_share  # noqa: E402

ARCHIVE = f"{LATEST_SMALL}.zip"
PARTS = ("latest-small", "implicit")
# The goals of #29: recommend's recall@10 against EASE's, per part.
GOAL_RATIOS = {"latest-small": EASE_RATIO, "implicit": 1.0}
# examples/movielens_as_own_data.py's string ids: "u" + userId, "m" + movieId.
USER_PREFIX, ITEM_PREFIX = "u", "m"


class Split(NamedTuple):
    """A part's training and held-out rows in the ids the published tables hold, the catalogue
    lists are drawn from, and how requests name the ids."""

    held_out: HeldOut
    catalogue: np.ndarray
    ids: EndpointIds


@dataclass(frozen=True)
class Holdout:
    train: pd.DataFrame  # user_id, item_id, rating, timestamp; each user's rows in time order
    test: pd.DataFrame  # each user's latest TEST_SHARE of ratings
    items: np.ndarray  # every movie id of movies.csv: the catalogue lists are drawn from


def read_holdout(archive: Path) -> Holdout:
    ratings = read_ratings(archive)
    held = latest_share(ratings, TEST_SHARE).to_numpy()
    return Holdout(
        ratings[~held].reset_index(drop=True),
        ratings[held].reset_index(drop=True),
        read_catalogue(archive),
    )


def read_catalogue(archive: Path) -> np.ndarray:
    """Every movie id of the archive's movies.csv: the catalogue lists are drawn from."""
    with zipfile.ZipFile(archive) as zf:
        movies = pd.read_csv(zf.open(f"{LATEST_SMALL}/movies.csv"), usecols=["movieId"])
    return movies["movieId"].to_numpy(np.int64)


def holdout_mirror(archive: Path, holdout: Holdout, directory: Path) -> Path:
    """A mirror directory holding ml-latest-small re-packed without the held-out ratings, nor
    the tags a user applied at or after their first held-out rating."""
    names = {USER_ID: "userId", ITEM_ID: "movieId"}
    ratings = holdout.train.rename(columns=names)[["userId", "movieId", "rating", "timestamp"]]
    with zipfile.ZipFile(archive) as zf:
        tags = pd.read_csv(zf.open(f"{LATEST_SMALL}/tags.csv"))
    cutoff = tags["userId"].map(holdout.test.groupby(USER_ID)["timestamp"].min())
    tags = tags[tags["timestamp"] < cutoff.fillna(np.inf)]
    members = {
        f"{LATEST_SMALL}/ratings.csv": ratings.to_csv(index=False).encode(),
        f"{LATEST_SMALL}/tags.csv": tags.to_csv(index=False).encode(),
    }
    return repacked_mirror(archive, directory, members)


def run_latest_small(home: Path, mirror: Path, overrides: list[str]) -> float:
    return run_pipeline(home, mirror, overrides, variant=LATEST_SMALL)


def run_implicit(home: Path, mirror: Path, overrides: list[str]) -> float:
    """The re-packed archive as the implicit own-data shape, run from its recflow.yaml."""
    config = write_example(mirror / ARCHIVE, home.parent / "own-data", "implicit")
    return recflow_run(home, [f"paths.home={home}", *overrides], config=config)


def latest_small_split(holdout: Holdout, settings: Settings) -> Split:
    threshold = settings.features.rating_threshold
    split = HeldOut(labelled(holdout.train, threshold), labelled(holdout.test, threshold))
    return Split(split, holdout.items, EndpointIds())


def implicit_split(holdout: Holdout, settings: Settings) -> Split:
    """In the int64 ids recflow hashes the shape's strings to; every row an interaction."""
    users = USER_PREFIX + pd.concat([holdout.train, holdout.test])[USER_ID].astype(str)
    items = ITEM_PREFIX + pd.Series(holdout.items).astype(str)
    names = dict(zip(internal_ids(users).tolist(), users, strict=True))
    names |= dict(zip(internal_ids(items).tolist(), items, strict=True))

    def interactions(rows: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(
            {
                USER_ID: internal_ids(USER_PREFIX + rows[USER_ID].astype(str)),
                ITEM_ID: internal_ids(ITEM_PREFIX + rows[ITEM_ID].astype(str)),
                LABEL: np.ones(len(rows), dtype="int8"),
            }
        )

    split = HeldOut(interactions(holdout.train), interactions(holdout.test))
    return Split(split, internal_ids(items), EndpointIds(names))


def latest_tuning_rows(holdout: Holdout) -> np.ndarray:
    """Each user's latest TUNING_SHARE of their training rows: where λ and k are chosen."""
    return latest_share(holdout.train, TUNING_SHARE).to_numpy()


def evaluated(
    split: HeldOut,
    catalogue: np.ndarray,
    settings: Settings,
    ids: EndpointIds,
    tuning_rows: np.ndarray,
) -> dict:
    """The published run served on ``split``'s held-out rows, and the baselines on them."""
    task = retrieval_task(split, catalogue)
    record, version = published(settings)
    repo = settings.paths.triton_repo
    out = served_numbers(settings, repo, record, version, split, task, ids)
    positives = split.train.loc[split.train[LABEL] == 1, ITEM_ID]
    return out | {
        "validation split": settings.features.split,
        "most popular": popular_metrics(positives, task),
        **item_item(split, task, tuning_rows),
    }


PIPELINES = {"latest-small": run_latest_small, "implicit": run_implicit}
SPLITS = {"latest-small": latest_small_split, "implicit": implicit_split}


def evaluate_part(name: str, holdout: Holdout, settings: Settings) -> dict:
    """Every number of the report for one part whose run published into the settings' home;
    the per-item mean's AUC where the part has ratings to grade."""
    split, catalogue, ids = SPLITS[name](holdout, settings)
    out = evaluated(split, catalogue, settings, ids, latest_tuning_rows(holdout))
    graded = len(np.unique(split.valid[LABEL])) == 2
    return out | ({"per-item mean auc": per_item_mean_auc(split)} if graded else {})


def part_result(name: str, args: argparse.Namespace) -> dict:
    """Run and evaluate one part in ``--work/<name>`` (the re-packed mirror is shared)."""
    archive = args.movielens / ARCHIVE
    holdout = read_holdout(archive)

    def run(home: Path) -> float:
        mirror = holdout_mirror(archive, holdout, args.work / "mirror")
        return PIPELINES[name](home, mirror, args.set)

    def evaluate(settings: Settings) -> dict:
        return evaluate_part(name, holdout, settings)

    return measured(args.work / name, args.reuse, run, evaluate, args.set)


def goals(results: dict[str, dict]) -> list[tuple[str, bool]]:
    checks = []
    for name, result in results.items():
        ratio = GOAL_RATIOS[name]
        text, met = against_ease(result, RECALL, ratio)
        checks.append((f"{name}: recommend {RECALL} >= {ratio:g}x EASE ({text})", met))
    return checks


def markdown(results: dict[str, dict]) -> str:
    first = next(iter(results.values()))
    lines = [
        "Split: ml-latest-small, each user's latest 20 % of ratings by timestamp held out "
        "(the rest re-packed as the archive the pipeline fetches; `implicit`: the same rows as "
        "examples/movielens_as_own_data.py's implicit shape). The pipeline validates inside the "
        f"training rows on `features.split={first['validation split']}`. Relevant: held-out "
        "rows rated >= 4 (`implicit`: every held-out interaction); seen: the user's training "
        "items, excluded from every list. EASE's λ and item-kNN's k chosen on each user's "
        "latest 10 % of their training rows, never on the held-out ones.",
        "",
        *metric_table(results, "metric (held-out rows)", spread=False),
        "",
        *details(results, "part"),
        "",
        "Goals (#29):",
        "",
        *checklist(goals(results)),
    ]
    return "\n".join([*lines, ""])


def main() -> None:
    parser = bench_arguments(__doc__.splitlines()[0], "the mirror and a home per part")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    reuse_argument(parser, "part")
    args = parser.parse_args()
    run_parts(
        "time_holdout_bench.py",
        args.parts,
        lambda name: part_result(name, args),
        markdown,
        args.out,
    )


if __name__ == "__main__":
    main()
