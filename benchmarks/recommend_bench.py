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
4. **Baselines on the same rows,** by the same metric code: most popular unseen (count of
   ``uN.base`` positives), the smoothed per-item mean (AUC), and matrix factorisation from the
   ``implicit`` library (ALS and BPR). The MF model, its input (all rated pairs or only the
   positives) and its hyperparameters are chosen on a validation split carved from ``uN.base``
   (a seeded random 20 % of its rows), never on ``uN.test``; the choice is refitted on all of
   ``uN.base``.

The report is a markdown table of every metric per fold, with mean and sample std over folds,
and the issue's goals (#15) checked on the means. Not a test: nothing here runs in the suite.
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

from models.baselines import item_mean_scores, popularity_scores  # noqa: E402
from models.evaluation import RetrievalTask, evaluate_retrieval  # noqa: E402
from models.metrics import roc_auc, top_k_metrics  # noqa: E402
from recflow.artifacts import RankingModel  # noqa: E402
from recflow.config import Settings, load_settings  # noqa: E402
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
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / ARCHIVE
    rows = fold.base[COLUMNS].to_csv(sep="\t", header=False, index=False)
    with (
        zipfile.ZipFile(archive) as source,
        zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as out,
    ):
        for info in source.infolist():
            if FOLD_MEMBER.fullmatch(info.filename):
                continue
            data = rows.encode() if info.filename == f"{ROOT}/u.data" else source.read(info)
            out.writestr(info, data, zipfile.ZIP_DEFLATED)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    (directory / MIRROR_CHECKSUMS).write_text(f"{digest}  {ARCHIVE}\n")
    return directory


def run_pipeline(
    home: Path, mirror: Path, overrides: list[str], accepted: tuple[int, ...] = (0,)
) -> float:
    """``recflow run`` on ``mirror`` into ``home``; its seconds. Output: ``home/run.log``.
    An exit code outside ``accepted`` raises."""
    recflow = Path(sys.executable).parent / "recflow"
    sets = [arg for pair in fold_settings(home, mirror, overrides) for arg in ("--set", pair)]
    return in_fold_home([str(recflow), *sets, "run"], home, "run.log", accepted)


def fold_settings(home: Path, mirror: Path, overrides: list[str]) -> list[str]:
    """The ``--set`` pairs of every recflow process of a fold."""
    return [f"paths.home={home}", "data.variant=ml-100k", f"data.mirror={mirror}", *overrides]


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


def served_pair_scores(client: RecflowClient, pairs: pd.DataFrame) -> np.ndarray:
    """The ranking endpoint's score of each (user, item) row, in row order."""
    scores = np.empty(len(pairs), dtype=np.float64)
    for user, rows in pairs.groupby(USER_ID).indices.items():
        scores[rows] = client.score(int(user), pairs[ITEM_ID].to_numpy()[rows].tolist())
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
) -> dict:
    """The numbers of ``record`` as ``version`` of the model repository ``repo``, served by
    Triton over gRPC on the test rows, and whether recommend's lists equal in-process ones."""
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
    with server, RecflowClient.from_config(server.config) as client:
        started = time.monotonic()
        recommended, recommend_scores = served_lists(task.users, client.recommend)
        retrieved, _ = served_lists(
            task.users, lambda user: client.retrieve(user, K, exclude_seen=True)
        )
        pair_scores = served_pair_scores(client, split.valid)
        out["grpc seconds"] = time.monotonic() - started
    in_process, in_process_scores = RecommendStage(dirs[RECOMMEND]).recommend(task.users, K)
    out["served = in-process users"] = int((in_process == recommended).all(axis=1).sum())
    finite = np.isfinite(in_process_scores)
    out["served - in-process max |score|"] = float(
        np.abs(in_process_scores[finite] - recommend_scores[finite]).max()
    )
    out["recommend"] = list_metrics(recommended, task)
    out["retrieval"] = list_metrics(retrieved, task)
    out["ranking auc"] = roc_auc(split.valid[LABEL].to_numpy(), pair_scores)
    return out


def evaluate_fold(fold: Fold, settings: Settings) -> dict:
    """Every number of the report for one fold whose pipeline run published into
    ``settings.paths.home`` (see the module docstring)."""
    threshold = settings.features.rating_threshold
    split = HeldOut(labelled(fold.base, threshold), labelled(fold.test, threshold))
    task = retrieval_task(split, fold.items)
    record, version = published(settings)
    out = served_numbers(settings, settings.paths.triton_repo, record, version, split, task)
    return out | baselines(fold, split, task)


def baselines(fold: Fold, split: HeldOut, task: RetrievalTask) -> dict:
    """The baselines on the fold's test rows: per-item mean (AUC), most popular unseen and the
    MF baseline chosen on a split of ``uN.base`` (top-k)."""
    labels = split.valid[LABEL].to_numpy()
    positives = split.train.loc[split.train[LABEL] == 1, ITEM_ID].to_numpy()
    popular = popularity_scores(positives, task.candidates)
    mf = mf_baseline(fold, split, task)
    return {
        "per-item mean auc": roc_auc(
            labels, item_mean_scores(split.train, split.valid, ITEM_ID, LABEL)
        ),
        "most popular": evaluate_retrieval(
            task, lambda rows: np.tile(popular, (len(task.users[rows]), 1)), KS
        ),
        "mf": mf["metrics"],
        "mf choice": mf["point"],
        "mf validation": mf["validation"],
    }


# ---------------------------------------------------------------------------------------------
# The report.

LISTS = (
    ("recommend", "recommend (served)"),
    ("retrieval", "retrieval, exclude_seen (served)"),
    ("mf", "MF baseline (implicit, chosen on a split of uN.base)"),
    ("most popular", "most popular unseen"),
)


def rows_of(result: dict) -> dict[str, float]:
    """The per-fold numbers of the table, by row label."""
    rows = {
        "ranking AUC (served)": result["ranking auc"],
        "per-item mean AUC": result["per-item mean auc"],
        "AUC gain over per-item mean": result["ranking auc"] - result["per-item mean auc"],
    }
    for metric in (f"recall@{K}", f"ndcg@{K}"):
        for key, label in LISTS:
            rows[f"{metric}: {label}"] = result[key][metric]
    rows[f"recall@{K}: recommend / most popular"] = (
        result["recommend"][f"recall@{K}"] / result["most popular"][f"recall@{K}"]
    )
    return rows


def summary(results: dict[str, dict]) -> dict[str, tuple[float, float]]:
    table = pd.DataFrame({fold: rows_of(result) for fold, result in results.items()})
    std = table.std(axis=1, ddof=1) if table.shape[1] > 1 else table.iloc[:, 0] * np.nan
    return {label: (table.loc[label].mean(), std[label]) for label in table.index}


def goals(means: dict[str, float]) -> list[tuple[str, bool]]:
    recall = f"recall@{K}"
    recommend = means[f"{recall}: recommend (served)"]
    return [
        (f"recommend {recall} >= retrieval alone", recommend >= means[f"{recall}: {LISTS[1][1]}"]),
        (f"recommend {recall} >= MF baseline", recommend >= means[f"{recall}: {LISTS[2][1]}"]),
        (
            f"recommend {recall} >= {MIN_POPULAR_RATIO:g}x most popular",
            recommend >= MIN_POPULAR_RATIO * means[f"{recall}: {LISTS[3][1]}"],
        ),
        (f"ranking AUC >= {MIN_AUC}", means["ranking AUC (served)"] >= MIN_AUC),
        (
            f"AUC gain over per-item mean >= {MIN_AUC_GAIN}",
            means["AUC gain over per-item mean"] >= MIN_AUC_GAIN,
        ),
    ]


def markdown(results: dict[str, dict]) -> str:
    folds = list(results)
    table = pd.DataFrame({fold: rows_of(result) for fold, result in results.items()})
    stats = summary(results)
    lines = [
        f"| metric ({', '.join(folds)} test) | " + " | ".join(folds) + " | mean | std |",
        "| --- |" + " ---: |" * (len(folds) + 2),
    ]
    for label in table.index:
        mean, std = stats[label]
        values = " | ".join(f"{table.loc[label, fold]:.4f}" for fold in folds)
        lines.append(f"| {label} | {values} | {mean:.4f} | {std:.4f} |")
    lines += [
        "",
        "| fold | users | test rows | pipeline s | ranker weight (chosen on validation) | "
        "served = in-process | MF chosen (validation recall@10) |",
        "| --- | ---: | ---: | ---: | --- | --- | --- |",
    ]
    for fold, result in results.items():
        point = ", ".join(f"{name}={value}" for name, value in result["mf choice"].items())
        lines.append(
            f"| {fold} | {result['users']} | {result['test rows']} | "
            f"{result['pipeline seconds']:.0f} | {result['ranker weight']} | "
            f"{result['served = in-process users']}/{result['users']} users, max score diff "
            f"{result['served - in-process max |score|']:.1e} | {point} "
            f"({result['mf validation']:.4f}) |"
        )
    lines += ["", "Machine load around each fold (run and evaluation):", ""]
    lines += [
        f"- {fold}: `{result['uptime'][0]}` / `{result['uptime'][1]}`"
        for fold, result in results.items()
    ]
    lines += ["", "Goals (#15) on the means:", ""]
    means = {label: mean for label, (mean, _std) in stats.items()}
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
    """Run and evaluate one fold in ``work/<name>``, keeping its result there as JSON. With
    ``search``, the ranker is searched first on the fold's validation split and the run
    trains the best trial's values."""
    home, saved = work / name / "home", work / name / "result.json"
    if reuse and saved.is_file():
        return json.loads(saved.read_text())
    fold = read_fold(archive, name)
    timing, tuned = home / "pipeline_seconds", home / "tuned.json"
    started = uptime()
    ran = reuse and timing.is_file()
    if not ran:
        mirror = base_only_mirror(archive, fold, work / name / "mirror")
        if search:
            log.info("%s: tuning the ranker (%s), home %s", name, search, home)
            tuned.parent.mkdir(parents=True, exist_ok=True)
            tuned.write_text(json.dumps(tuned_ranker(home, mirror, overrides, search)))
    tuned_values = json.loads(tuned.read_text()) if search else []
    overrides = [*overrides, *tuned_values]
    if not ran:
        log.info("%s: recflow run on %d base rows, home %s", name, len(fold.base), home)
        timing.parent.mkdir(parents=True, exist_ok=True)
        timing.write_text(f"{run_pipeline(home, mirror, overrides):.1f}")
    settings = load_settings(
        overrides=[
            f"paths.home={home}",
            "serving.grpc_port=0",
            "serving.http_port=0",
            "serving.metrics_port=0",
            *overrides,
        ]
    )
    result = evaluate_fold(fold, settings) | {
        "pipeline seconds": float(timing.read_text()),
        "uptime": [started, uptime()],
        **({"tuned": tuned_values} if search else {}),
    }
    saved.write_text(json.dumps(result, indent=1))
    log.info("%s: %s", name, rows_of(result))
    return result


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def fold_arguments(description: str) -> argparse.ArgumentParser:
    """The arguments of a five-fold benchmark: where to work, the archive, folds, report, sets."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--work", type=Path, required=True, help="homes and mirrors per fold")
    parser.add_argument("--movielens", type=Path, default=REPO.parent / "shared/data/movielens")
    parser.add_argument("--folds", nargs="+", default=list(FOLDS), choices=FOLDS)
    parser.add_argument("--out", type=Path, help="write the markdown report to this file")
    parser.add_argument(
        "--set", action="append", default=[], help="section.field=value for every recflow run"
    )
    return parser


def run_folds(script: str, args: argparse.Namespace, per_fold, markdown) -> None:
    """``per_fold(archive, name)`` for each fold, then the report printed and written to
    ``--out``: the command that made it, the machine's load, then ``markdown(results)``."""
    # force: importing Prefect (through release.gate) has configured the root logger already.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", force=True)
    command = shlex.join([".venv/bin/python", f"benchmarks/{script}", *sys.argv[1:]])
    load = [f"before: {uptime()}"]
    results = {name: per_fold(args.movielens / ARCHIVE, name) for name in args.folds}
    load.append(f"after: {uptime()}")
    header = ["```bash", command, "```", "", *(f"`uptime` {line}" for line in load), ""]
    text = "\n".join([*header, markdown(results)])
    print(text)
    if args.out:
        args.out.write_text(text)


def main() -> None:
    parser = fold_arguments(__doc__.splitlines()[0])
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="report a fold from what an earlier invocation left in --work: its result, or its "
        "published run evaluated again; folds can so run in separate invocations",
    )
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
