"""Request-time history, served (#30): new users and fresh events on ml-latest-small, next to
EASE folding the same history in and most popular, all in one invocation.

    .venv/bin/python benchmarks/history_bench.py --work /tmp/history --out report.md

**The split.** ml-latest-small's ratings in each user's time order (timestamp, then item). A
seeded random 10 % of the users (``NEW_USERS_SEED``) are *new users*: none of their rows
reaches training. Of every other user, the latest 20 % of their ratings
(``tasks.features.latest_share``) are *fresh events*: what happened after the run. The
archive re-packed without both (``time_holdout_bench.holdout_mirror``: ``ratings.csv``
without them, ``tags.csv`` without the tags a user applied at or after their first removed
rating) is run through ``recflow run`` with the default settings, then served by the bundled
``tritonserver``.

**The protocols** (relevant: rated >= 4; every list leaves out the user's training items and
the history sent; recall@10 and ndcg@10 by ``models.metrics``):

- ``new users, first h``: for each new user, their first h ratings by time (h = 5, 20) are
  sent as ``history`` to ``recommend`` over gRPC (the user id is one the run never saw); the
  rest of their ratings are judged. Users with a relevant rating left.
- ``fresh events``: for each other user, the first half (floor) of their fresh events is sent
  as history (its latest ``serving.max_history``, 200, where it is longer: the endpoint
  refuses more), the second half is judged; the same request without the history beside it.

**Baselines, same invocation, same rows, same metric code**: EASE
(``models.baselines.fit_tuned``, λ chosen on each user's latest 10 % of the training rows,
refitted on all of them) scoring ``x · B`` with x the user's training items and the history
(new users: the history alone), and most popular unseen (training positives). Served =
in-process: each served list is compared with ``serving.runtime.RecommendStage`` on the
published version, given the same history.

Not a test: nothing here runs in the suite.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from baselines_bench import LATEST_SMALL, TEST_SHARE, TUNING_SHARE, read_ratings  # noqa: E402
from recommend_bench import (  # noqa: E402
    NDCG,
    RECALL,
    K,
    bench_arguments,
    checklist,
    code_state,
    newest_version_dir,
    padded,
    run_pipeline,
    served_settings,
    uptime,
)
from time_holdout_bench import ARCHIVE, Holdout, holdout_mirror, read_catalogue  # noqa: E402

from models.baselines import fit_tuned, popularity_scores  # noqa: E402
from models.metrics import top_k, top_k_metrics  # noqa: E402
from recflow.vocabulary import ITEM_ID, USER_ID  # noqa: E402
from recflow_client import RecflowClient  # noqa: E402
from recflow_client.contract import DEFAULT_MAX_HISTORY  # noqa: E402
from serving.repository import EndpointNames  # noqa: E402
from serving.runtime import RecommendStage  # noqa: E402
from serving.server import TritonServer  # noqa: E402
from tasks.features import latest_share  # noqa: E402

log = logging.getLogger("history_bench")

NEW_USERS_SHARE, NEW_USERS_SEED = 0.1, 30
HISTORY_LENGTHS = (5, 20)
RELEVANT = 4.0
# The goals of #30, each against EASE with the same history.
GOALS = {"new users, first 5": 1.0, "new users, first 20": 1.1, "fresh events": 1.0}
FRESH_GAIN = 1.15  # fresh events: with the history against the same request without it


@dataclass(frozen=True)
class Request:
    """One user's request and what judges its answer (item ids are raw)."""

    user: int
    history: np.ndarray  # sent, most recent last (empty: none)
    known: np.ndarray  # the user's training items: the served version's seen items
    relevant: np.ndarray


@dataclass(frozen=True)
class Split:
    train: pd.DataFrame
    new_users: pd.DataFrame
    fresh: pd.DataFrame
    items: np.ndarray  # the catalogue: every movie of movies.csv


def read_split(archive: Path) -> Split:
    ratings = read_ratings(archive)
    users = ratings[USER_ID].unique()
    rng = np.random.default_rng(NEW_USERS_SEED)
    new = rng.choice(users, int(len(users) * NEW_USERS_SHARE), replace=False)
    is_new = ratings[USER_ID].isin(new).to_numpy()
    rest = ratings[~is_new].reset_index(drop=True)
    fresh = latest_share(rest, TEST_SHARE).to_numpy()
    return Split(
        rest[~fresh].reset_index(drop=True),
        ratings[is_new].reset_index(drop=True),
        rest[fresh].reset_index(drop=True),
        read_catalogue(archive),
    )


def new_user_requests(split: Split, length: int) -> list[Request]:
    requests = []
    for user, rows in split.new_users.groupby(USER_ID, sort=True):
        history, rest = rows.iloc[:length], rows.iloc[length:]
        relevant = np.setdiff1d(rest.loc[rest["rating"] >= RELEVANT, ITEM_ID], history[ITEM_ID])
        if len(relevant):
            empty = np.empty(0, np.int64)
            requests.append(Request(int(user), history[ITEM_ID].to_numpy(), empty, relevant))
    return requests


def fresh_requests(split: Split) -> list[Request]:
    known = split.train.groupby(USER_ID)[ITEM_ID].unique()
    requests = []
    for user, rows in split.fresh.groupby(USER_ID, sort=True):
        half = len(rows) // 2
        # An app sends the latest serving.max_history events (the endpoint refuses more).
        revealed, judged = rows.iloc[:half].iloc[-DEFAULT_MAX_HISTORY:], rows.iloc[half:]
        relevant = np.setdiff1d(
            judged.loc[judged["rating"] >= RELEVANT, ITEM_ID],
            np.concatenate([known[user], revealed[ITEM_ID]]),
        )
        if len(relevant):
            requests.append(Request(int(user), revealed[ITEM_ID].to_numpy(), known[user], relevant))
    return requests


def metrics(lists: np.ndarray, requests: list[Request], catalogue: pd.Index) -> dict[str, float]:
    positions = catalogue.get_indexer(lists.ravel()).reshape(lists.shape)
    relevant = [catalogue.get_indexer(r.relevant) for r in requests]
    return top_k_metrics(np.where(lists >= 0, positions, -1), relevant, (K,))


def baseline_lists(scores_of, requests: list[Request], catalogue: pd.Index) -> np.ndarray:
    """Top K of ``scores_of(requests) -> [users, catalogue]``, each user's training items and
    history left out."""
    scores = scores_of(requests)
    excluded = np.zeros(scores.shape, dtype=bool)
    for row, request in enumerate(requests):
        for items in (request.known, request.history):
            columns = catalogue.get_indexer(items)
            excluded[row, columns[columns >= 0]] = True
    best, _ = top_k(scores, K, excluded)
    return np.where(best >= 0, catalogue.to_numpy()[np.maximum(best, 0)], -1)


def ease_scores(model, catalogue: pd.Index, with_history: bool):
    columns = pd.Index(model.items).get_indexer(catalogue)

    def scores(requests: list[Request]) -> np.ndarray:
        histories = [
            np.concatenate([r.known, r.history]) if with_history else r.known for r in requests
        ]
        block = model.scores(histories)
        out = np.full((len(requests), len(catalogue)), -np.inf, dtype=np.float32)
        out[:, columns >= 0] = block[:, columns[columns >= 0]]
        return out

    return scores


def served(
    client: RecflowClient, stage: RecommendStage, requests: list[Request], with_history: bool
) -> tuple[np.ndarray, int]:
    """The served lists [users, K], and how many differ from the stage's in-process ones."""
    lists, differ = [], 0
    for request in requests:
        history = request.history.tolist() if with_history else []
        top = client.recommend(request.user, K, history=history)
        lists.append(padded(top, K))
        sent = {"history": request.history.reshape(1, -1)} if with_history else {}
        local, _ = stage.recommend(np.array([request.user]), K, stage.retrieval.history(sent, 1))
        differ += local[0].tolist() != lists[-1].tolist()
    return np.stack(lists), differ


def evaluate(split: Split, settings) -> dict:
    catalogue = pd.Index(np.sort(split.items))
    train = split.train.assign(label=(split.train["rating"] >= RELEVANT).astype("int8"))
    tuning = latest_share(train, TUNING_SHARE).to_numpy()
    ease = fit_tuned("ease", train, train["label"] == 1, tuning, USER_ID, ITEM_ID)
    log.info("EASE λ %g", ease.value)
    popular = popularity_scores(train.loc[train["label"] == 1, ITEM_ID].to_numpy(), catalogue)
    protocols = {f"new users, first {h}": new_user_requests(split, h) for h in HISTORY_LENGTHS}
    protocols["fresh events"] = fresh_requests(split)
    endpoint = EndpointNames(settings.serving.model_prefix)
    repo = settings.paths.triton_repo
    model = endpoint.model("recommend")
    stage = RecommendStage(newest_version_dir(repo / model))
    results = {}
    with (
        TritonServer.from_settings(settings, models=endpoint.all_models) as server,
        RecflowClient.from_config(server.config) as client,
    ):
        for name, requests in protocols.items():
            lists, differ = served(client, stage, requests, with_history=True)
            row = {
                "users": len(requests),
                "recommend": metrics(lists, requests, catalogue),
                "served != in-process": differ,
                "EASE": metrics(
                    baseline_lists(ease_scores(ease.model, catalogue, True), requests, catalogue),
                    requests,
                    catalogue,
                ),
                "most popular": metrics(
                    baseline_lists(lambda rs: np.tile(popular, (len(rs), 1)), requests, catalogue),
                    requests,
                    catalogue,
                ),
            }
            if name == "fresh events":
                without, differ = served(client, stage, requests, with_history=False)
                row["recommend without history"] = metrics(without, requests, catalogue)
                row["served != in-process"] += differ
                row["EASE without history"] = metrics(
                    baseline_lists(ease_scores(ease.model, catalogue, False), requests, catalogue),
                    requests,
                    catalogue,
                )
            results[name] = row
            log.info("%s: %s", name, row)
    return {"protocols": results, "ease λ": ease.value}


LISTS = (
    "recommend",
    "recommend without history",
    "EASE",
    "EASE without history",
    "most popular",
)


def markdown(result: dict, seconds: float, started: str) -> str:
    protocols = result["protocols"]
    lines = [
        "# Request-time history, served (#30)",
        "",
        f"`{' '.join(['python', *sys.argv])}`",
        "",
        *code_state(),
        "",
        f"Load at the start: `{started}`; at the end: `{uptime()}`. Pipeline (`recflow run` on "
        f"the re-packed archive): {seconds:.0f} s. EASE λ {result['ease λ']:g} (chosen on each "
        "user's latest 10 % of the training rows).",
        "",
        "| list | " + " | ".join(protocols) + " |",
        "| --- | " + " | ".join("---:" for _ in protocols) + " |",
    ]
    for metric in (RECALL, NDCG):
        for name in LISTS:
            cells = [
                f"{row[name][metric]:.4f}" if name in row else "" for row in protocols.values()
            ]
            lines.append(f"| {name} {metric} | " + " | ".join(cells) + " |")
    lines.append("| users | " + " | ".join(str(r["users"]) for r in protocols.values()) + " |")
    lines.append(
        "| served lists differing from in-process | "
        + " | ".join(str(r["served != in-process"]) for r in protocols.values())
        + " |"
    )
    checks = [
        (
            f"{name}: recommend recall@10 {protocols[name]['recommend'][RECALL]:.4f} >= "
            f"{ratio:g}x EASE with the same history {protocols[name]['EASE'][RECALL]:.4f}",
            protocols[name]["recommend"][RECALL] >= ratio * protocols[name]["EASE"][RECALL],
        )
        for name, ratio in GOALS.items()
    ]
    fresh = protocols["fresh events"]
    checks.append(
        (
            f"fresh events: with the history {fresh['recommend'][RECALL]:.4f} >= {FRESH_GAIN}x "
            f"the same request without it {fresh['recommend without history'][RECALL]:.4f}",
            fresh["recommend"][RECALL] >= FRESH_GAIN * fresh["recommend without history"][RECALL],
        )
    )
    return "\n".join([*lines, "", "Goals:", "", *checklist(checks), ""])


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parser = bench_arguments(__doc__.splitlines()[0], "the mirror and the run's home")
    args = parser.parse_args()
    archive = args.movielens / ARCHIVE
    split = read_split(archive)
    started = uptime()
    removed = pd.concat([split.new_users, split.fresh])
    mirror = holdout_mirror(
        archive, Holdout(split.train, removed, split.items), args.work / "mirror"
    )
    home = args.work / "home"
    seconds = run_pipeline(home, mirror, args.set, variant=LATEST_SMALL)
    report = markdown(evaluate(split, served_settings(home, args.set)), seconds, started)
    print(report)
    if args.out:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
