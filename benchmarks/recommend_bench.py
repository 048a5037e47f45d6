"""Held-out benchmark of the lists ``recommend`` serves, on one official ml-100k fold.

    .venv/bin/python benchmarks/recommend_bench.py --home /tmp/recommend-bench --fold u1

The pipeline sees only ``<fold>.base``: a copy of the normalised interactions restricted to its
rows is built and trained with the configured settings (by default ``features.split=random``:
20 % of the base pairs are the validation split that early stopping and the choice of the final
ordering read). The ``<fold>.test`` rows are used only here, for the report: every endpoint is
exported into a scratch repository (seen items: the ``<fold>.base`` pairs) and run in-process
by ``serving.runtime``, the code Triton runs, through the gate's own metric functions:

* ranking AUC of the ``ranking`` endpoint on the test pairs (rated >= 4 vs < 4), next to the
  smoothed per-item mean of the base rows;
* recall/ndcg@10 of ``recommend`` with the ordering chosen on validation, with the ranker
  alone (ranker weight 1, the ordering before the policy existed) and of every other weight of
  ``ordering.ranker_weights`` (reported, never chosen on test), of ``retrieval`` alone and of
  most popular unseen (counted on the base positives). Relevant: the user's test items rated
  >= 4 that are not in the base rows; base items are excluded from every list.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.train_bench import ARCHIVE, fetch_movielens  # noqa: E402
from models.baselines import item_mean_scores, popularity_scores  # noqa: E402
from models.evaluation import evaluate_retrieval  # noqa: E402
from models.metrics import roc_auc  # noqa: E402
from recflow.artifacts import Candidate, OrderingPolicy, RawDataset  # noqa: E402
from recflow.vocabulary import LABEL, RAW_ITEM_ID  # noqa: E402
from release.gate import (  # noqa: E402
    HeldOut,
    export_scratch,
    ranking_scores,
    recommend_metrics,
    retrieval_metrics,
    retrieval_task,
)
from tasks.features import build_features_task  # noqa: E402
from tasks.train import (  # noqa: E402
    choose_recommend_ordering,
    train_ranking,
    train_retrieval,
)

COLUMNS = ["user_id", "item_id", "rating", "timestamp"]
KS = (10,)


def read_fold(archive: Path, name: str) -> pd.DataFrame:
    with zipfile.ZipFile(archive) as zf:
        return pd.read_csv(zf.open(f"ml-100k/{name}"), sep="\t", names=COLUMNS)


def base_only(raw: RawDataset, base: pd.DataFrame, fold: str, out: Path) -> RawDataset:
    """``raw`` whose interactions are the ``<fold>.base`` rows only, in ``out``."""
    interactions = pd.read_parquet(raw.interactions)
    keys = pd.MultiIndex.from_frame(interactions[["user_id", "item_id"]])
    kept = interactions[keys.isin(pd.MultiIndex.from_frame(base[["user_id", "item_id"]]))]
    if len(kept) != len(base):
        raise ValueError(f"{fold}.base has {len(base)} rows, {len(kept)} found in u.data")
    out.mkdir(parents=True, exist_ok=True)
    kept.to_parquet(out / "interactions.parquet", index=False)
    for table in ("items", "users"):
        (out / f"{table}.parquet").write_bytes(getattr(raw, table).read_bytes())
    return raw.model_copy(
        update={
            "path": out,
            "checksum": f"{raw.checksum[:32]}-{fold}-base",
            "n_interactions": len(kept),
        }
    )


def labelled(rows: pd.DataFrame, threshold: float) -> pd.DataFrame:
    labels = (rows["rating"] >= threshold).astype("int8")
    return rows[["user_id", "item_id"]].assign(**{LABEL: labels}).reset_index(drop=True)


def evaluate_fold(candidate: Candidate, split: HeldOut, settings, scratch: Path) -> dict:
    """Every number of the report, on the test rows of ``split`` (see the module docstring)."""
    features, ranking, retrieval = candidate
    seen = scratch / "base_pairs.parquet"
    split.train[["user_id", "item_id"]].to_parquet(seen, index=False)
    catalogue = pd.read_parquet(retrieval.item_embeddings, columns=[RAW_ITEM_ID])
    task = retrieval_task(split, catalogue[RAW_ITEM_ID].to_numpy(np.int64))
    chosen = ranking.ordering.ranker_weight
    weights = sorted({chosen, 1.0, *settings.ordering.ranker_weights})
    out: dict = {
        "users": len(task.users),
        "chosen": chosen,
        "validation": ranking.ordering.validation,
    }
    for weight in weights:
        policy = OrderingPolicy(ranker_weight=weight)
        variant = ranking.model_copy(update={"ordering": policy})
        exported = export_scratch(
            Candidate(features, variant, retrieval), seen, settings, scratch / str(weight)
        )
        out[f"recommend w={weight}"] = recommend_metrics(exported["recommend"], task, KS)
        if weight == chosen:
            out["retrieval"] = retrieval_metrics(exported["retrieval"], task, KS)
            scores = ranking_scores(exported["ranking"], split.valid)
            out["ranking auc"] = roc_auc(split.valid[LABEL], scores)
    positives = split.train.loc[split.train[LABEL] == 1, "item_id"].to_numpy()
    popular = popularity_scores(positives, task.candidates)
    out["most popular"] = evaluate_retrieval(
        task, lambda rows: np.tile(popular, (len(task.users[rows]), 1)), KS
    )
    item_mean = item_mean_scores(split.train, split.valid, "item_id", LABEL)
    out["per-item mean auc"] = roc_auc(split.valid[LABEL], item_mean)
    return out


def markdown(command: str, fold: str, features, result: dict) -> str:
    auc, item_mean = result["ranking auc"], result["per-item mean auc"]
    lines = [
        f"## Fold {fold}",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Pipeline input: `{fold}.base` only ({features.n_train} train / {features.n_valid} "
        f"validation rows, its own split); report: `{fold}.test`, {result['users']} users with a "
        "relevant item. In-process by serving.runtime on a scratch export.",
        "",
        f"Ranking AUC on the {fold}.test pairs: DLRM {auc:.4f}, per-item mean {item_mean:.4f} "
        f"(gain {auc - item_mean:+.4f}).",
        "",
        f"Ordering chosen on validation: ranker weight {result['chosen']} "
        f"(validation {result['validation']}).",
        "",
        "| list | recall@10 | ndcg@10 | mrr@10 |",
        "| --- | --- | --- | --- |",
    ]
    lists = [
        name for name, value in result.items() if isinstance(value, dict) and "recall@10" in value
    ]
    # Baselines first, then recommend by ranker weight.
    for name in sorted(lists, key=lambda name: (name.startswith("recommend"), name)):
        metrics = result[name]
        label = f"{name} (chosen)" if name == f"recommend w={result['chosen']}" else name
        lines.append(
            f"| {label} | {metrics['recall@10']:.4f} | {metrics['ndcg@10']:.4f} "
            f"| {metrics['mrr@10']:.4f} |"
        )
    return "\n".join([*lines, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True, help="artifact directory")
    parser.add_argument("--movielens", type=Path, default=REPO.parent / "shared/data/movielens")
    parser.add_argument("--fold", default="u1", choices=["u1", "u2", "u3", "u4", "u5"])
    parser.add_argument("--out", type=Path, help="append the markdown report to this file")
    parser.add_argument("--set", action="append", default=[], help="section.field=value")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    command = shlex.join(["python", "benchmarks/recommend_bench.py", *sys.argv[1:]])
    archive = args.movielens / ARCHIVE
    base, test = (read_fold(archive, f"{args.fold}.{part}") for part in ("base", "test"))

    settings, raw = fetch_movielens(archive, args.home, args.set)
    raw = base_only(raw, base, args.fold, settings.paths.raw_dir / f"{args.fold}-base")
    features = build_features_task.fn(raw, settings)
    run_id = time.strftime(f"{args.fold}-%Y%m%dT%H%M%S")
    candidate = Candidate(
        features,
        train_ranking(features, settings, run_id),
        train_retrieval(features, settings, run_id),
    )
    candidate = choose_recommend_ordering(candidate, settings)
    threshold = settings.features.rating_threshold
    split = HeldOut(labelled(base, threshold), labelled(test, threshold))
    settings.paths.cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.paths.cache_dir) as scratch:
        result = evaluate_fold(candidate, split, settings, Path(scratch))
    text = markdown(command, args.fold, features, result)
    print(text)
    if args.out:
        with args.out.open("a") as out:
            out.write(text + "\n")


if __name__ == "__main__":
    main()
