"""Five-fold held-out benchmark of the served endpoints on ml-100k's official folds u1..u5.

    python3 -m uv sync --frozen --group bench     # adds implicit (the MF baseline) to .venv
    .venv/bin/python benchmarks/recommend_bench.py --work /tmp/recommend-bench --out report.md

For each fold ``uN``:

1. **The pipeline sees only ``uN.base``.** An ml-100k archive is written whose ``u.data`` holds
   exactly the ``uN.base`` rows; the other fold files (``u*.base``, ``u*.test``, ``ua``/``ub``)
   are left out, every other member is copied as is. It is served from a mirror directory with
   its ``SHA256SUMS`` and run through ``recflow run`` (a subprocess, fresh home per fold) with
   the default settings plus ``--set`` overrides: the features stage makes its own validation
   split inside the base rows (``features.split``: 20 % of the pairs by hash up to #29, each
   user's latest 20 % since), which early stopping and the choice of recommend's ordering
   read, then the gate and publish.
   With ``--tune``, the ``recflow-tune`` flow first searches the ranker on that same split
   (``--tune-space``, ``--tune-sampler``) and the run trains the best trial's values.
2. **The numbers come from Triton.** The published repository is served by the bundled
   ``tritonserver`` (``serving.server.TritonServer``) and queried over gRPC
   (``recflow_client.RecflowClient``) for the ``uN.test`` rows: ranking scores of every test
   pair (AUC, rated >= 4 vs < 4), ``recommend`` top 10 and ``retrieval`` top 10 with
   ``exclude_seen``. Relevant: a user's test items rated >= 4; seen: their ``uN.base`` items,
   excluded from every list (the endpoints' own seen items are the published dataset's, i.e.
   ``uN.base``). Users: those with a relevant test item.
3. **Served = in-process.** The same users' ``recommend`` lists are computed in-process by
   ``serving.runtime.RecommendStage`` on the published version directory and compared.
4. **Baselines on the same rows, in the same invocation,** by the same metric code: most
   popular unseen (count of ``uN.base`` positives), the smoothed per-item mean (AUC), EASE and
   item-kNN (``models.baselines.fit_tuned``: learnt from every rated ``uN.base`` pair, λ and k
   chosen on a seeded random 10 % of ``uN.base``'s rows, ``random_rows``, then refitted on all
   of them), and matrix factorisation from the ``implicit`` library (ALS and BPR). The MF
   model, its input (all rated pairs or only the positives) and its hyperparameters are chosen
   on a validation split carved from ``uN.base`` (a seeded random 20 % of its rows), never on
   ``uN.test``; the choice is refitted on all of ``uN.base``. Seconds: the pipeline's wall
   time next to each baseline's search with its refit (and, item-item, one refit alone).

The report: the command, the commit measured and whether Triton's Python stub imports this
checkout's code (:func:`code_state`), ``uptime``, a markdown table of every metric per fold
with mean and sample std over folds, and the goals of #29 (recommend recall@10 and ndcg@10 >=
EASE on every fold and >= 1.05x EASE on the mean; served AUC >= 0.79) as check lines, then
those of #15 on the means. Not a test: nothing here runs in the suite.

The stub runs the venv's ``python3`` and ignores ``PYTHONPATH``: to measure a checkout other
than the one the venv has installed (editable), run with the interpreter of a venv whose
site-packages puts that checkout first (a ``.pth`` file naming it, then the installed
site-packages); the report says which code the stub imported.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import os
import re
import shlex
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sparse

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.baselines import (  # noqa: E402
    ITEM_ITEM_MODELS,
    Cooccurrence,
    fit_tuned,
    item_mean_scores,
    popularity_scores,
    random_rows,
)
from models.evaluation import RetrievalTask, evaluate_retrieval  # noqa: E402
from models.metrics import roc_auc, top_k_metrics  # noqa: E402
from recflow.artifacts import RankingModel  # noqa: E402
from recflow.config import Settings, load_settings  # noqa: E402
from recflow.external_ids import internal_ids  # noqa: E402
from recflow.registry import CandidateRecord, Registry  # noqa: E402
from recflow.vocabulary import ITEM_ID, LABEL, RANKING, RECOMMEND, USER_ID  # noqa: E402
from recflow_client import RecflowClient  # noqa: E402
from release.export import version_dirs  # noqa: E402
from release.gate import HeldOut, retrieval_task  # noqa: E402
from serving.repository import published_stages  # noqa: E402
from serving.runtime import RecommendStage  # noqa: E402
from serving.server import TritonServer, discover_models  # noqa: E402
from tasks.checksums import MIRROR_CHECKSUMS  # noqa: E402

log = logging.getLogger("recommend_bench")

ARCHIVE = "ml-100k.zip"
ROOT = "ml-100k"
FOLDS = ("u1", "u2", "u3", "u4", "u5")
COLUMNS = [USER_ID, ITEM_ID, "rating", "timestamp"]
# Every official split file of the archive: none of them may reach the pipeline.
FOLD_MEMBER = re.compile(rf"{ROOT}/u([1-5]|a|b)\.(base|test)")
K = 10
KS = (K,)
# Served and in-process scores are the same float32 computation in two processes.
SCORE_ATOL = 1e-5
# The MF baseline's validation split inside uN.base (share of its rows) and its seed.
MF_VALID_SHARE = 0.2
MF_SEED = 0
# The MF grid (implicit 0.7): small, as a sceptic would tune it. Each point is fitted on the
# inner training rows and scored by recall@10 on the inner validation rows.
ALS_GRID = {
    "factors": (32, 64, 128),
    "regularization": (0.01, 0.1, 1.0),
    "alpha": (1.0, 10.0),
    "iterations": (15,),
}
BPR_GRID = {
    "factors": (32, 64, 128),
    "learning_rate": (0.01, 0.05),
    "regularization": (0.001, 0.01),
    "iterations": (100,),
}
# What the MF model learns from: every rated pair, or only the positives (rated >= 4).
MF_INPUTS = ("rated", "positives")
# The goals (#15), on the means over the folds.
MIN_AUC, MIN_AUC_GAIN, MIN_POPULAR_RATIO = 0.79, 0.05, 2.0


@dataclass(frozen=True)
class Fold:
    name: str
    base: pd.DataFrame  # raw user_id, item_id, rating, timestamp
    test: pd.DataFrame
    items: np.ndarray  # every item id of u.item: the catalogue every list is drawn from


def read_fold(archive: Path, name: str) -> Fold:
    with zipfile.ZipFile(archive) as zf:
        base, test = (
            pd.read_csv(zf.open(f"{ROOT}/{name}.{part}"), sep="\t", names=COLUMNS)
            for part in ("base", "test")
        )
        items = pd.read_csv(
            zf.open(f"{ROOT}/u.item"), sep="|", header=None, usecols=[0], encoding="latin-1"
        )[0].to_numpy(np.int64)
    return Fold(name, base, test, items)


def base_only_mirror(archive: Path, fold: Fold, directory: Path) -> Path:
    """A mirror directory holding an ml-100k archive whose ``u.data`` is ``fold.base`` and
    which has no split files, with its sha256 declared in ``SHA256SUMS`` (docs/data.md)."""
    rows = fold.base[COLUMNS].to_csv(sep="\t", header=False, index=False)
    with zipfile.ZipFile(archive) as source:
        split_files = [name for name in source.namelist() if FOLD_MEMBER.fullmatch(name)]
    return repacked_mirror(
        archive, directory, {f"{ROOT}/u.data": rows.encode(), **dict.fromkeys(split_files)}
    )


def repacked_mirror(archive: Path, directory: Path, members: dict[str, bytes | None]) -> Path:
    """A mirror directory holding ``archive`` re-packed under its own name: each member named
    in ``members`` replaced by those bytes (None: left out), every other copied as is; its
    sha256 declared in ``SHA256SUMS`` (docs/data.md, "Mirrors")."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / archive.name
    with (
        zipfile.ZipFile(archive) as source,
        zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as out,
    ):
        for info in source.infolist():
            data = members[info.filename] if info.filename in members else source.read(info)
            if data is not None:
                out.writestr(info, data, zipfile.ZIP_DEFLATED)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    (directory / MIRROR_CHECKSUMS).write_text(f"{digest}  {archive.name}\n")
    return directory


def run_pipeline(
    home: Path,
    mirror: Path,
    overrides: list[str],
    accepted: tuple[int, ...] = (0,),
    variant: str = ROOT,
) -> float:
    """``recflow run`` on the ``variant`` archive of ``mirror`` into ``home``; its seconds.
    Output: ``home/run.log``. An exit code outside ``accepted`` raises."""
    return recflow_run(home, fold_settings(home, mirror, overrides, variant), accepted)


def recflow_run(
    home: Path, sets: list[str], accepted: tuple[int, ...] = (0,), config: Path | None = None
) -> float:
    """``recflow [--config config] --set ... run`` (a subprocess, Prefect in ``home``); its
    seconds. Output: ``home/run.log``. An exit code outside ``accepted`` raises."""
    recflow = Path(sys.executable).parent / "recflow"
    options = ["--config", str(config)] if config else []
    options += [arg for pair in sets for arg in ("--set", pair)]
    return in_fold_home([str(recflow), *options, "run"], home, "run.log", accepted)


def fold_settings(home: Path, mirror: Path, overrides: list[str], variant: str = ROOT) -> list[str]:
    """The ``--set`` pairs of every recflow process of a fold."""
    return [f"paths.home={home}", f"data.variant={variant}", f"data.mirror={mirror}", *overrides]


def in_fold_home(
    command: list[str], home: Path, log_name: str, accepted: tuple[int, ...] = (0,)
) -> float:
    """Run ``command`` from the repository with a Prefect of the fold's own; its seconds.
    Output: ``home/<log_name>``. An exit code outside ``accepted`` raises."""
    # A temporary Prefect server of its own, recording into the fold's home: never another
    # user's server or database.
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(home / "prefect")
    home.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with (home / log_name).open("wb") as out:
        code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    if code not in accepted:
        tail = (home / log_name).read_text(errors="replace").splitlines()[-30:]
        raise RuntimeError(f"{shlex.join(command)} exited with {code}:\n" + "\n".join(tail))
    return time.monotonic() - started


# The ranker's search when --tune is given: the fields every architecture shares
# (RankingConfig), around the defaults; TPE over the validation split inside uN.base.
RANKER_SPACE = (
    "{embedding_dim: [16, 32, 64], top_mlp: [[64, 32], [128, 64], [256, 128]],"
    " dropout: {low: 0.0, high: 0.5}, embeddings_l2: {low: 1.0e-5, high: 1.0e-3, log: true},"
    " learning_rate: {low: 1.0e-3, high: 1.0e-2, log: true}, batch_size: [256, 512, 1024]}"
)
# With TPE the configured values are the first trial, so the best is at least as good on
# validation. Not with the grid sampler: it would not count an enqueued point as visited, and
# run it again in place of another grid point.
TUNE = """
import json, sys
from pathlib import Path
from flows.study import load_study
from flows.tune import tune
from recflow.config import load_settings

settings = load_settings(overrides=sys.argv[2:])
configured = settings.ranking.model_dump(mode="json")
# Optuna's choices are primitives: the study keeps a list-valued one as its JSON.
encoded = lambda v: json.dumps(v) if isinstance(v, list) else v
if settings.tuning.sampler == "tpe":
    load_study(settings).enqueue_trial({n: encoded(configured[n]) for n in settings.tuning.space})
Path(sys.argv[1]).write_text(tune(settings).model_dump_json())
"""


@dataclass(frozen=True)
class RankerSearch:
    """``--tune``: the recflow-tune study run on each fold before its pipeline run."""

    trials: int
    space: str = RANKER_SPACE  # a YAML mapping, as tuning.space takes it
    sampler: str = "tpe"


def tuned_ranker(home: Path, mirror: Path, overrides: list[str], search: RankerSearch) -> list[str]:
    """The ``recflow-tune`` flow's search of the ranker on the fold's own validation split
    (``uN.base`` only: the features it builds are the ones ``recflow run`` then reuses); the
    best trial's values as ``ranking.<field>=<value>`` overrides. Log: ``home/tune.log``,
    result: ``home/tuning.json``."""
    tuning = [
        "tuning.study=bench",
        f"tuning.n_trials={search.trials}",
        f"tuning.space={search.space}",
        f"tuning.sampler={search.sampler}",
    ]
    result = home / "tuning.json"
    command = [sys.executable, "-c", TUNE, str(result)]
    in_fold_home([*command, *fold_settings(home, mirror, [*overrides, *tuning])], home, "tune.log")
    best = json.loads(result.read_text())["best"]
    return [f"ranking.{name}={json.dumps(value)}" for name, value in sorted(best["params"].items())]


def labelled(rows: pd.DataFrame, threshold: float) -> pd.DataFrame:
    labels = (rows["rating"] >= threshold).astype("int8")
    return rows[[USER_ID, ITEM_ID]].assign(**{LABEL: labels}).reset_index(drop=True)


def list_metrics(lists: np.ndarray, task: RetrievalTask) -> dict[str, float]:
    """recall/ndcg/mrr@K of raw item-id lists [users, K] (-1 padding) for ``task.users``."""
    positions = pd.Index(task.candidates).get_indexer(lists.ravel()).reshape(lists.shape)
    return top_k_metrics(np.where(lists >= 0, positions, -1), task.relevant, KS)


def padded(top: list[tuple[int, float]], k: int) -> np.ndarray:
    ids = [item for item, _score in top][:k]
    return np.array(ids + [-1] * (k - len(ids)), dtype=np.int64)


def served_lists(
    users: np.ndarray, ranked: Callable[[int], list[tuple[int, float]]]
) -> tuple[np.ndarray, np.ndarray]:
    """Item ids [users, K] (-1 padding) and scores of one endpoint, one gRPC request a user."""
    answers = [ranked(int(user)) for user in users]
    ids = np.stack([padded(top, K) for top in answers])
    scores = np.stack(
        [np.array([s for _i, s in top][:K] + [-np.inf] * (K - len(top[:K]))) for top in answers]
    )
    return ids, scores


@dataclass(frozen=True)
class EndpointIds:
    """How requests name users and items, and answers name items.

    Without ``names``, by the int64 ids the tables hold (MovieLens). A source with string ids
    (a custom source, docs/data.md) is served by its strings: ``names`` maps each int64 id the
    tables hold (``recflow.external_ids.internal_ids`` of the string) to its string, and an
    answered string becomes that int64 id again, so metrics and baselines work in one id space.
    """

    names: dict[int, str] | None = None

    def request(self, ids) -> list[int | str]:
        """``ids`` (int64) as a request carries them."""
        if self.names is None:
            return [int(i) for i in ids]
        return [self.names[int(i)] for i in ids]

    def answer(self, top: list[tuple[int | str, float]]) -> list[tuple[int, float]]:
        """An endpoint's ``(item, score)`` answer with the items as int64 ids."""
        if self.names is None or not top:
            return top
        items = internal_ids([item for item, _score in top]).tolist()
        return [(item, score) for item, (_name, score) in zip(items, top, strict=True)]


def served_pair_scores(
    client: RecflowClient, pairs: pd.DataFrame, ids: EndpointIds = EndpointIds()
) -> np.ndarray:
    """The ranking endpoint's score of each (user, item) row, in row order."""
    scores = np.empty(len(pairs), dtype=np.float64)
    for user, rows in pairs.groupby(USER_ID).indices.items():
        items = ids.request(pairs[ITEM_ID].to_numpy()[rows])
        scores[rows] = client.score(ids.request([user])[0], items)
    return scores


def published(settings: Settings) -> tuple[CandidateRecord, int]:
    registry = Registry.from_settings(settings)
    record, state = registry.serving(), registry.state()
    if record is None or state.version is None:
        raise RuntimeError(f"nothing published in {settings.paths.home}")
    return record, state.version


# ---------------------------------------------------------------------------------------------
# The matrix-factorisation baseline (implicit), chosen on a validation split inside uN.base.


def _grid(space: dict[str, tuple]) -> list[dict]:
    return [dict(zip(space, values, strict=True)) for values in itertools.product(*space.values())]


MF_POINTS = [
    {"model": model, "input": given, **params}
    for given in MF_INPUTS
    for model, space in (("als", ALS_GRID), ("bpr", BPR_GRID))
    for params in _grid(space)
]


def _mf_model(point: dict):
    from implicit.cpu.als import AlternatingLeastSquares
    from implicit.cpu.bpr import BayesianPersonalizedRanking

    params = {name: value for name, value in point.items() if name not in ("model", "input")}
    model = AlternatingLeastSquares if point["model"] == "als" else BayesianPersonalizedRanking
    return model(**params, random_state=MF_SEED)


def mf_scorer(
    point: dict, train: pd.DataFrame, task: RetrievalTask
) -> Callable[[slice], np.ndarray]:
    """Fit ``point`` on ``train`` (labelled raw rows); score ``task``'s users x candidates.

    Candidates without a training interaction score -inf: their factors are their random start
    (BPR) or zero (ALS), knowledge the model does not have.
    """
    rows = train if point["input"] == "rated" else train[train[LABEL] == 1]
    users = pd.Index(np.unique(np.concatenate([rows[USER_ID], task.users])))
    items = pd.Index(task.candidates)
    kept = rows[rows[ITEM_ID].isin(items)]
    matrix = sparse.csr_matrix(
        (
            np.ones(len(kept), dtype=np.float32),
            (users.get_indexer(kept[USER_ID]), items.get_indexer(kept[ITEM_ID])),
        ),
        shape=(len(users), len(items)),
    )
    model = _mf_model(point)
    model.fit(matrix, show_progress=False)
    trained = np.asarray(matrix.sum(axis=0)).ravel() > 0
    user_rows = users.get_indexer(task.users)

    def scores(batch: slice) -> np.ndarray:
        out = model.user_factors[user_rows[batch]] @ model.item_factors.T
        return np.where(trained, out, -np.inf).astype(np.float32)

    return scores


def mf_baseline(fold: Fold, split: HeldOut, task: RetrievalTask) -> dict:
    """The grid point with the best inner-validation recall@K, refitted on all of uN.base and
    scored on ``task`` (the uN.test users)."""
    from threadpoolctl import threadpool_limits

    inner_valid = split.train.sample(frac=MF_VALID_SHARE, random_state=MF_SEED)
    inner_train = split.train.drop(inner_valid.index)
    inner = retrieval_task(HeldOut(inner_train, inner_valid), fold.items)
    metric = f"recall@{K}"
    # implicit asks for single-threaded BLAS: its own loops are the parallel ones.
    with threadpool_limits(1, "blas"):
        validation = [
            evaluate_retrieval(inner, mf_scorer(point, inner_train, inner), KS)[metric]
            for point in MF_POINTS
        ]
        best = int(np.argmax(validation))
        point = MF_POINTS[best]
        test = evaluate_retrieval(task, mf_scorer(point, split.train, task), KS)
    log.info("%s MF: chose %s (validation %s %.4f)", fold.name, point, metric, validation[best])
    return {"point": point, "validation": validation[best], "metrics": test}


# ---------------------------------------------------------------------------------------------


def served_numbers(
    settings: Settings,
    repo: Path,
    record: CandidateRecord,
    version: int,
    split: HeldOut,
    task: RetrievalTask,
    ids: EndpointIds = EndpointIds(),
) -> dict:
    """The numbers of ``record`` as ``version`` of the model repository ``repo``, served by
    Triton over gRPC on the test rows, and whether recommend's lists equal in-process ones.
    Ranking AUC only where the test rows have both labels (not with implicit feedback)."""
    ranking = RankingModel.load(record.models[RANKING])
    dirs = version_dirs(repo, settings.serving, version, published_stages(True))
    out: dict = {
        "candidate": record.id,
        "version": version,
        "users": len(task.users),
        "test rows": len(split.valid),
        "ranker weight": ranking.ordering.ranker_weight,
        "ordering validation": ranking.ordering.validation,
        "gate": record.evaluation.metrics,
    }
    server = TritonServer(
        repo,
        settings.serving,
        log_file=settings.paths.logs_dir / f"bench-{record.id}-tritonserver.log",
        backend_cache_dir=settings.paths.cache_dir,
        models=discover_models(repo),
    )
    labels = split.valid[LABEL].to_numpy()
    graded = len(np.unique(labels)) == 2
    with server, RecflowClient.from_config(server.config) as client:
        started = time.monotonic()
        recommended, recommend_scores = served_lists(
            task.users, lambda user: ids.answer(client.recommend(ids.request([user])[0], K))
        )
        retrieved, _ = served_lists(
            task.users,
            lambda user: ids.answer(client.retrieve(ids.request([user])[0], K, exclude_seen=True)),
        )
        pair_scores = served_pair_scores(client, split.valid, ids) if graded else None
        out["grpc seconds"] = time.monotonic() - started
    in_process, in_process_scores = RecommendStage(dirs[RECOMMEND]).recommend(task.users, K)
    out["served = in-process users"] = int((in_process == recommended).all(axis=1).sum())
    finite = np.isfinite(in_process_scores)
    out["served - in-process max |score|"] = float(
        np.abs(in_process_scores[finite] - recommend_scores[finite]).max()
    )
    out["recommend"] = list_metrics(recommended, task)
    out["retrieval"] = list_metrics(retrieved, task)
    out["ranking auc"] = roc_auc(labels, pair_scores) if graded else None
    return out


def evaluate_fold(fold: Fold, settings: Settings) -> dict:
    """Every number of the report for one fold whose pipeline run published into
    ``settings.paths.home`` (see the module docstring)."""
    threshold = settings.features.rating_threshold
    split = HeldOut(labelled(fold.base, threshold), labelled(fold.test, threshold))
    task = retrieval_task(split, fold.items)
    record, version = published(settings)
    out = served_numbers(settings, settings.paths.triton_repo, record, version, split, task)
    return out | {"validation split": settings.features.split} | baselines(fold, split, task)


def baselines(fold: Fold, split: HeldOut, task: RetrievalTask) -> dict:
    """The baselines on the fold's test rows: per-item mean (AUC), most popular unseen, EASE
    and item-kNN (λ and k chosen on a seeded random 10 % of ``uN.base``'s rows, the folds
    being a random split) and the MF baseline chosen on a split of ``uN.base`` (top-k)."""
    started = time.monotonic()
    mf = mf_baseline(fold, split, task)
    mf_seconds = time.monotonic() - started
    return {
        "per-item mean auc": per_item_mean_auc(split),
        "most popular": popular_metrics(split.train.loc[split.train[LABEL] == 1, ITEM_ID], task),
        **item_item(split, task, random_rows(len(split.train))),
        "mf": mf["metrics"],
        "mf choice": mf["point"],
        "mf validation": mf["validation"],
        "mf seconds": mf_seconds,
    }


def per_item_mean_auc(split: HeldOut) -> float:
    """AUC of the smoothed per-item mean of the training labels on the test rows."""
    scores = item_mean_scores(split.train, split.valid, ITEM_ID, LABEL)
    return roc_auc(split.valid[LABEL].to_numpy(), scores)


def popular_metrics(items: pd.Series, task: RetrievalTask) -> dict[str, float]:
    """Top-k metrics of most popular unseen, popularity being how often ``items`` (training
    rows' items) name each candidate."""
    popular = popularity_scores(items.to_numpy(), task.candidates)
    return evaluate_retrieval(task, lambda rows: np.tile(popular, (len(task.users[rows]), 1)), KS)


def item_item(split: HeldOut, task: RetrievalTask, tuning_rows: np.ndarray) -> dict[str, dict]:
    """EASE and item-kNN (``models.baselines.fit_tuned``) learnt from every training pair of
    ``split`` (relevant: label 1), λ and k chosen on its ``tuning_rows`` and refitted on all
    of them; per kind, the top-k metrics on ``task``, the chosen value, the validation of each
    grid value, the seconds of the search with its refit, and of one refit alone."""
    train = split.train
    out = {}
    for kind, (fit, _grid) in ITEM_ITEM_MODELS.items():
        started = time.monotonic()
        tuned = fit_tuned(kind, train, train[LABEL] == 1, tuning_rows, USER_ID, ITEM_ID)
        tune_seconds = time.monotonic() - started
        started = time.monotonic()
        fit(Cooccurrence.build(train[USER_ID].to_numpy(), train[ITEM_ID].to_numpy()), tuned.value)
        out[kind] = {
            **evaluate_retrieval(task, tuned.model.scorer(task), KS),
            "value": tuned.value,
            "validation": tuned.validation,
            "tune seconds": tune_seconds,
            "fit seconds": time.monotonic() - started,
        }
        log.info("%s: %s", kind, out[kind])
    return out


# ---------------------------------------------------------------------------------------------
# The report.

RECALL, NDCG = f"recall@{K}", f"ndcg@{K}"
# (result key, row label) of every list a table may show; a result shows the ones it has.
LISTS = (
    ("recommend", "recommend (served)"),
    ("retrieval", "retrieval, exclude_seen (served)"),
    ("ease", "EASE"),
    ("item_knn", "item-kNN"),
    ("mf", "MF baseline (implicit, chosen on a split of uN.base)"),
    ("most popular", "most popular unseen"),
)
LIST_LABELS = dict(LISTS)
# The goals of #29 against EASE: at least EASE on every fold, at least this much of it on the
# mean of the folds and on the time-ordered ml-latest-small holdout.
EASE_RATIO = 1.05


def rows_of(result: dict) -> dict[str, float]:
    """The numbers of one fold or dataset in the table, by row label."""
    rows = {}
    if result.get("ranking auc") is not None:
        rows["ranking AUC (served)"] = result["ranking auc"]
        if result.get("per-item mean auc") is not None:
            rows["per-item mean AUC"] = result["per-item mean auc"]
            rows["AUC gain over per-item mean"] = (
                result["ranking auc"] - result["per-item mean auc"]
            )
    for metric in (RECALL, NDCG):
        rows |= {f"{metric}: {label}": result[key][metric] for key, label in LISTS if key in result}
    for metric in (RECALL, NDCG) if "ease" in result else ():
        rows[f"{metric}: recommend / EASE"] = result["recommend"][metric] / result["ease"][metric]
    rows[f"{RECALL}: recommend / most popular"] = (
        result["recommend"][RECALL] / result["most popular"][RECALL]
    )
    return rows


def summary(results: dict[str, dict]) -> dict[str, tuple[float, float]]:
    table = pd.DataFrame({fold: rows_of(result) for fold, result in results.items()})
    std = table.std(axis=1, ddof=1) if table.shape[1] > 1 else table.iloc[:, 0] * np.nan
    return {label: (table.loc[label].mean(), std[label]) for label in table.index}


def goals(means: dict[str, float]) -> list[tuple[str, bool]]:
    """The goals of #15, on the means over the folds."""
    recommend = means[f"{RECALL}: {LIST_LABELS['recommend']}"]

    def beats(key: str, ratio: float = 1.0) -> bool:
        return recommend >= ratio * means[f"{RECALL}: {LIST_LABELS[key]}"]

    return [
        (f"recommend {RECALL} >= retrieval alone", beats("retrieval")),
        (f"recommend {RECALL} >= MF baseline", beats("mf")),
        (
            f"recommend {RECALL} >= {MIN_POPULAR_RATIO:g}x most popular",
            beats("most popular", MIN_POPULAR_RATIO),
        ),
        (f"ranking AUC >= {MIN_AUC}", means["ranking AUC (served)"] >= MIN_AUC),
        (
            f"AUC gain over per-item mean >= {MIN_AUC_GAIN}",
            means["AUC gain over per-item mean"] >= MIN_AUC_GAIN,
        ),
    ]


def against_ease(result: dict, metric: str, ratio: float) -> tuple[str, bool]:
    """Whether ``result``'s recommend reaches ``ratio`` x EASE on ``metric``, with both values."""
    ours, ease = result["recommend"][metric], result["ease"][metric]
    return f"{ours:.4f} vs EASE {ease:.4f}, {ours / ease:.3f}x", ours >= ratio * ease


def fold_goals(results: dict[str, dict]) -> list[tuple[str, bool]]:
    """The goals of #29 on the folds: recommend >= EASE on every fold and >= EASE_RATIO x EASE
    on the mean (recall and ndcg), and the served ranking AUC >= MIN_AUC on the mean."""
    checks = []
    for metric in (RECALL, NDCG):
        each = {fold: against_ease(result, metric, 1.0) for fold, result in results.items()}
        detail = "; ".join(f"{fold} {text}" for fold, (text, _met) in each.items())
        checks.append(
            (
                f"recommend {metric} >= EASE on every fold ({detail})",
                all(met for _t, met in each.values()),
            )
        )
    means = {
        key: {
            metric: np.mean([r[key][metric] for r in results.values()]) for metric in (RECALL, NDCG)
        }
        for key in ("recommend", "ease")
    }
    for metric in (RECALL, NDCG):
        text, met = against_ease(means, metric, EASE_RATIO)
        checks.append((f"recommend {metric} >= {EASE_RATIO:g}x EASE on the mean ({text})", met))
    aucs = {fold: result["ranking auc"] for fold, result in results.items()}
    lowest = min(aucs, key=aucs.get)
    checks.append(
        (
            f"served ranking AUC >= {MIN_AUC} on the mean ({np.mean(list(aucs.values())):.4f}; "
            f"lowest fold {lowest} {aucs[lowest]:.4f})",
            np.mean(list(aucs.values())) >= MIN_AUC,
        )
    )
    return checks


def checklist(checks: list[tuple[str, bool]]) -> list[str]:
    """Goals as markdown check lines."""
    return [f"- [x] {text}" if met else f"- [ ] {text}: **not met**" for text, met in checks]


def metric_table(results: dict[str, dict], caption: str, spread: bool) -> list[str]:
    """Every row of :func:`rows_of`, a column per fold or dataset; with ``spread`` also their
    mean and sample std (over folds; a blank cell where a column lacks the row)."""
    names = list(results)
    table = pd.DataFrame({name: rows_of(result) for name, result in results.items()})
    extra = ["mean", "std"] if spread else []
    lines = [
        f"| {caption} | " + " | ".join([*names, *extra]) + " |",
        "| --- |" + " ---: |" * (len(names) + len(extra)),
    ]
    for label, values in table.iterrows():
        cells = ["" if np.isnan(value) else f"{value:.4f}" for value in values]
        if spread:
            cells += [f"{values.mean():.4f}", f"{values.std(ddof=1):.4f}"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def fit_cell(baseline: dict, name: str) -> str:
    """An item-item baseline's chosen value and seconds: search with its refit / one refit."""
    return (
        f"{name} {baseline['value']:g}: {baseline['tune seconds']:.1f} / "
        f"{baseline['fit seconds']:.1f}"
    )


def served_cell(result: dict) -> str:
    return (
        f"{result['served = in-process users']}/{result['users']} users, max score diff "
        f"{result['served - in-process max |score|']:.1e}"
    )


# (header, cell of a result) of the table under the metrics; a benchmark may add columns.
DETAIL_COLUMNS: tuple[tuple[str, Callable[[dict], str]], ...] = (
    ("users", lambda r: str(r["users"])),
    ("test rows", lambda r: str(r["test rows"])),
    ("pipeline s", lambda r: f"{r['pipeline seconds']:.0f}"),
    (
        "baselines s: search + refit / refit",
        lambda r: f"{fit_cell(r['ease'], 'EASE λ')}; {fit_cell(r['item_knn'], 'item-kNN k')}",
    ),
    ("ranker weight (chosen on validation)", lambda r: str(r["ranker weight"])),
    ("served = in-process", served_cell),
)


def details(results: dict[str, dict], name: str, columns=DETAIL_COLUMNS) -> list[str]:
    """A row per fold or part (``name``) of ``columns``, then the machine load around each."""
    lines = [
        f"| {name} | " + " | ".join(header for header, _cell in columns) + " |",
        "| --- |" + " --- |" * len(columns),
    ]
    for part, result in results.items():
        lines.append(f"| {part} | " + " | ".join(cell(result) for _h, cell in columns) + " |")
    lines += ["", f"Machine load around each {name} (run and evaluation):", ""]
    lines += [f"- {part}: `{r['uptime'][0]}` / `{r['uptime'][1]}`" for part, r in results.items()]
    return lines


MF_COLUMNS = (
    ("MF s: grid + refit", lambda r: f"{r['mf seconds']:.0f}"),
    (
        "MF chosen (validation recall@10)",
        lambda r: (
            ", ".join(f"{name}={value}" for name, value in r["mf choice"].items())
            + f" ({r['mf validation']:.4f})"
        ),
    ),
)


def markdown(results: dict[str, dict]) -> str:
    folds = list(results)
    first = next(iter(results.values()))
    lines = [
        f"Split: ml-100k's official folds, trained on `uN.base` (the pipeline through `recflow "
        f"run`, validating inside it on `features.split={first.get('validation split')}`; the "
        "baselines on all of it), scored on `uN.test`: relevant = rated >= 4, seen = the "
        "user's `uN.base` items, excluded from every list. EASE's λ and item-kNN's k chosen "
        "on a seeded random 10 % of `uN.base`'s rows (`models.baselines.random_rows`), never "
        "on `uN.test`.",
        "",
        *metric_table(results, f"metric ({', '.join(folds)} test)", spread=True),
        "",
        *details(results, "fold", (*DETAIL_COLUMNS, *MF_COLUMNS)),
        "",
        "Goals (#29):",
        "",
        *checklist(fold_goals(results)),
    ]
    lines += ["", "Goals (#15) on the means:", ""]
    means = {label: mean for label, (mean, _std) in summary(results).items()}
    lines += [f"- {goal}: {'met' if met else '**not met**'}" for goal, met in goals(means)]
    return "\n".join([*lines, ""])


def fold_result(
    archive: Path,
    name: str,
    work: Path,
    overrides: list[str],
    reuse: bool,
    search: RankerSearch | None = None,
) -> dict:
    """Run and evaluate one fold in ``work/<name>`` (:func:`measured`). With ``search``, the
    ranker is searched first on the fold's validation split and the run trains the best
    trial's values."""
    fold = read_fold(archive, name)
    tuned = work / name / "home" / "tuned.json"

    def run(home: Path) -> float:
        mirror = base_only_mirror(archive, fold, work / name / "mirror")
        if search:
            log.info("%s: tuning the ranker (%s), home %s", name, search, home)
            tuned.parent.mkdir(parents=True, exist_ok=True)
            tuned.write_text(json.dumps(tuned_ranker(home, mirror, overrides, search)))
        log.info("%s: recflow run on %d base rows, home %s", name, len(fold.base), home)
        return run_pipeline(home, mirror, [*overrides, *tuned_values()])

    def tuned_values() -> list[str]:
        return json.loads(tuned.read_text()) if search else []

    def evaluate(settings: Settings) -> dict:
        return evaluate_fold(fold, settings) | ({"tuned": tuned_values()} if search else {})

    return measured(work / name, reuse, run, evaluate, overrides)


def measured(
    part: Path,
    reuse: bool,
    run: Callable[[Path], float],
    evaluate: Callable[[Settings], dict],
    overrides: list[str],
) -> dict:
    """One fold's or dataset's result, kept in ``part/result.json``: ``run(home)`` (the
    pipeline into ``part/home``; its seconds) unless ``reuse`` finds it ran, then
    ``evaluate(settings)`` of what it published, with the pipeline's seconds and the load.
    With ``reuse``, a kept result is returned as is (unless it predates the item-item
    baselines: then it is evaluated again)."""
    home, saved = part / "home", part / "result.json"
    if reuse and saved.is_file() and "ease" in (kept := json.loads(saved.read_text())):
        return kept
    timing, started = home / "pipeline_seconds", uptime()
    if not (reuse and timing.is_file()):
        seconds = run(home)
        timing.parent.mkdir(parents=True, exist_ok=True)
        timing.write_text(f"{seconds:.1f}")
    result = evaluate(served_settings(home, overrides)) | {
        "pipeline seconds": float(timing.read_text()),
        "uptime": [started, uptime()],
    }
    saved.write_text(json.dumps(result, indent=1))
    log.info("%s: %s", part.name, rows_of(result))
    return result


def served_settings(home: Path, overrides: list[str]) -> Settings:
    """The settings that serve and evaluate what a run published into ``home`` (free ports)."""
    ports = ["serving.grpc_port=0", "serving.http_port=0", "serving.metrics_port=0"]
    return load_settings(overrides=[f"paths.home={home}", *ports, *overrides])


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def newest_version_dir(model_dir: Path) -> Path:
    """The highest-numbered version directory of a model in a Triton repository."""
    return model_dir / str(max(int(p.name) for p in model_dir.iterdir() if p.name.isdigit()))


# The packages Triton's Python stub imports recflow's code from (serving/triton_model.py).
STUB_PACKAGES = ("serving", "models", "recflow")


def code_state() -> list[str]:
    """Which code is measured: this checkout's commit (and whether tracked files differ from
    it), and whether the code Triton's Python stub imports is this checkout's. The stub's
    interpreter ignores PYTHONPATH (serving/server.py: server_env): it imports what the venv
    has installed, which may be another checkout's (an editable install)."""

    def run(command: list[str], cwd: Path) -> str:
        return subprocess.run(command, capture_output=True, text=True, cwd=cwd).stdout.strip()

    commit = run(["git", "rev-parse", "--short", "HEAD"], REPO)
    dirty = run(["git", "status", "--porcelain", "--untracked-files=no"], REPO)
    where = "import serving, pathlib; print(pathlib.Path(serving.__file__).resolve().parents[1])"
    stub_root = Path(run([sys.executable, "-I", "-c", where], Path("/")))

    def sources(root: Path) -> dict[Path, bytes]:
        files = (path for package in STUB_PACKAGES for path in (root / package).rglob("*.py"))
        return {path.relative_to(root): path.read_bytes() for path in files}

    ours, stubs = sources(REPO), sources(stub_root)
    differ = sorted(
        str(path) for path in ours.keys() | stubs.keys() if ours.get(path) != stubs.get(path)
    )
    code = (
        f"the same {', '.join(f'{p}/' for p in STUB_PACKAGES)} as this checkout"
        if not differ
        else f"**other code** than this checkout's in {', '.join(differ)}"
    )
    return [
        f"Commit measured: `{commit}`"
        + (" with uncommitted changes to tracked files" if dirty else "")
        + f"; Triton's Python stub imports from `{stub_root}`: {code}."
    ]


def fold_arguments(description: str) -> argparse.ArgumentParser:
    """The arguments of a five-fold benchmark: where to work, the archive, folds, report, sets."""
    parser = bench_arguments(description, "homes and mirrors per fold")
    parser.add_argument("--folds", nargs="+", default=list(FOLDS), choices=FOLDS)
    return parser


def bench_arguments(description: str, work: str) -> argparse.ArgumentParser:
    """The arguments of a benchmark that runs the pipeline: where to work (``work`` says
    what goes there), the MovieLens archives, the report, ``--set`` overrides."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--work", type=Path, required=True, help=work)
    parser.add_argument("--movielens", type=Path, default=REPO.parent / "shared/data/movielens")
    parser.add_argument("--out", type=Path, help="write the markdown report to this file")
    parser.add_argument(
        "--set", action="append", default=[], help="section.field=value for every recflow run"
    )
    return parser


def reuse_argument(parser: argparse.ArgumentParser, part: str) -> None:
    """``--reuse``: report a ``part`` (a fold, a dataset) from what an earlier invocation
    left, so parts can run in separate invocations (:func:`measured`)."""
    parser.add_argument(
        "--reuse",
        action="store_true",
        help=f"report a {part} from what an earlier invocation left in --work: its result, or "
        f"its published run evaluated again; {part}s can so run in separate invocations",
    )


def run_folds(script: str, args: argparse.Namespace, per_fold, markdown) -> None:
    """``per_fold(archive, name)`` for each fold, then the report (:func:`run_parts`)."""
    archive = args.movielens / ARCHIVE
    run_parts(script, args.folds, lambda name: per_fold(archive, name), markdown, args.out)


def run_parts(
    script: str,
    names: list[str],
    per_part: Callable[[str], dict],
    markdown: Callable[[dict[str, dict]], str],
    out: Path | None,
) -> None:
    """``per_part(name)`` for each name, then the report printed and written to ``out``: the
    command that made it, the code measured (:func:`code_state`), the machine's load, then
    ``markdown(results)``."""
    # force: importing Prefect (through release.gate) has configured the root logger already.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", force=True)
    command = shlex.join([".venv/bin/python", f"benchmarks/{script}", *sys.argv[1:]])
    code, load = code_state(), [f"before: {uptime()}"]
    results = {name: per_part(name) for name in names}
    load.append(f"after: {uptime()}")
    after = code_state()
    changed = [] if after == code else ["At the end:", *after]
    header = ["```bash", command, "```", "", *code, *changed, ""]
    header += [*(f"`uptime` {line}" for line in load), ""]
    text = "\n".join([*header, markdown(results)])
    print(text)
    if out:
        out.write_text(text)


def main() -> None:
    parser = fold_arguments(__doc__.splitlines()[0])
    reuse_argument(parser, "fold")
    parser.add_argument(
        "--tune",
        type=int,
        default=0,
        metavar="TRIALS",
        help="search the ranker first (recflow-tune, this many trials, on the fold's own "
        "validation split) and run with the best trial's values",
    )
    parser.add_argument("--tune-space", default=RANKER_SPACE, help="tuning.space, in YAML")
    parser.add_argument("--tune-sampler", default="tpe", choices=["tpe", "grid"])
    args = parser.parse_args()

    search = RankerSearch(args.tune, args.tune_space, args.tune_sampler) if args.tune else None

    def per_fold(archive: Path, name: str) -> dict:
        return fold_result(archive, name, args.work, args.set, args.reuse, search)

    run_folds("recommend_bench.py", args, per_fold, markdown)


if __name__ == "__main__":
    main()
