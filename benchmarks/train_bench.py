"""Benchmark of the training stage on real ml-100k: both models against both baselines.

    .venv/bin/python benchmarks/train_bench.py --home /tmp/train-bench

The archive comes from ``--movielens`` (default ``../shared/data/movielens``) through a
temporary mirror directory that links to it and declares its sha256 (the shared ml-100k is a
re-pack, see docs/data.md); it is never copied into the repository. Features are built by
``tasks.features.build_features`` on a LocalCluster, then the DLRM and the two-tower model are
trained with the configured defaults. Any setting can be overridden with
``--set section.field=value``. Results are printed and written as markdown to ``--out``.

``--split u1`` (the default) uses ml-100k's official ``u1.base``/``u1.test`` split. The features
stage has no predefined-split option, so the benchmark gets it through the global time split:
a copy of the normalised interactions whose timestamps are replaced by 0 (row in ``u1.base``)
or 1 (row in ``u1.test``), built with ``features.split=time`` and ``valid_fraction=0.25``; the
cutoff is then the 75 % timestamp quantile, 0, and exactly the ``u1.test`` rows are validation
(checked after the build). Timestamps are not a model input, only the split reads them.
``--split config`` leaves the split to the settings (``features.split`` etc.).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import shlex
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recflow.artifacts import RawDataset  # noqa: E402
from recflow.config import load_settings  # noqa: E402
from tasks.checksums import MIRROR_CHECKSUMS  # noqa: E402
from tasks.download import fetch_dataset  # noqa: E402
from tasks.features import build_features_task  # noqa: E402
from tasks.train import train_ranking, train_retrieval  # noqa: E402

ARCHIVE = "ml-100k.zip"
# The goals (#5).
DLRM_MIN_AUC, DLRM_MIN_GAIN, TWO_TOWER_MIN_RATIO = 0.79, 0.05, 1.5


def mirror_of(archive: Path, directory: Path) -> Path:
    (directory / archive.name).symlink_to(archive.resolve())
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    (directory / MIRROR_CHECKSUMS).write_text(f"{digest}  {archive.name}\n")
    return directory


def fetch_movielens(archive: Path, home: Path, overrides: list[str]):
    """Settings for ml-100k under ``home``, read through a temporary mirror of ``archive``, and
    its canonical tables."""
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(
            overrides=[
                f"paths.home={home}",
                "data.variant=ml-100k",
                f"data.mirror={mirror_of(archive, Path(tmp))}",
                *overrides,
            ]
        )
        return settings, fetch_dataset(settings.data, settings.paths)


# The official split's settings: see the module docstring.
OFFICIAL_SPLIT_SETTINGS = ["features.split=time", "features.valid_fraction=0.25"]


def with_official_split(raw: RawDataset, archive: Path, fold: str, out: Path) -> RawDataset:
    """``raw`` with timestamps 0 (in ``<fold>.base``) or 1 (in ``<fold>.test``), in ``out``."""
    columns = ["user_id", "item_id", "rating", "timestamp"]
    with zipfile.ZipFile(archive) as zf:
        test = pd.read_csv(zf.open(f"ml-100k/{fold}.test"), sep="\t", names=columns)
    interactions = pd.read_parquet(raw.interactions)
    keys = pd.MultiIndex.from_frame(interactions[["user_id", "item_id"]])
    in_test = keys.isin(pd.MultiIndex.from_frame(test[["user_id", "item_id"]]))
    if in_test.sum() != len(test):
        raise ValueError(f"{fold}.test has {len(test)} rows, {in_test.sum()} found in u.data")
    interactions["timestamp"] = in_test.astype("int64")
    out.mkdir(parents=True, exist_ok=True)
    interactions.to_parquet(out / "interactions.parquet", index=False)
    for table in ("items", "users"):
        (out / f"{table}.parquet").write_bytes(getattr(raw, table).read_bytes())
    checksum = hashlib.sha256(f"{raw.checksum}:{fold}".encode()).hexdigest()
    split = raw.model_copy(update={"path": out, "checksum": checksum})
    split.save_manifest()
    return split


def timed(fn, *args):
    started = time.perf_counter()
    return fn(*args), time.perf_counter() - started


def split_description(split: str, settings) -> str:
    if split != "config":
        return f"official `{split}.base` / `{split}.test` (see the module docstring)"
    f = settings.features
    return (
        f"`features.split={f.split}` (valid_fraction {f.valid_fraction}, "
        f"valid_last_n {f.valid_last_n})"
    )


def report(command: str, split: str, settings, features, ranking, rank_s, retrieval, retr_s) -> str:
    auc, base_auc = ranking.metrics["auc"], ranking.baseline_metrics["auc"]
    recall, base_recall = retrieval.metrics["recall@10"], retrieval.baseline_metrics["recall@10"]
    lines = [
        "# Training benchmark: ml-100k",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Split: {split_description(split, settings)}, target rating >= "
        f"{settings.features.rating_threshold}; {features.n_train} train / {features.n_valid} "
        "validation rows. Metrics are computed on the validation split by models/metrics.py; "
        "each baseline on the same rows, in the same run.",
        "",
        "## Ranking (DLRM vs smoothed per-item positive rate)",
        "",
        "| model | AUC | logloss | best epoch | train examples/s | wall time (s) |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| DLRM | {auc:.4f} | {ranking.metrics['logloss']:.4f} | {ranking.best_epoch} "
        f"| {ranking.train_examples_per_s:,.0f} | {rank_s:.0f} |",
        f"| per-item mean | {base_auc:.4f} | {ranking.baseline_metrics['logloss']:.4f} "
        "| - | - | - |",
        "",
        f"Goal AUC >= {DLRM_MIN_AUC} and >= baseline + {DLRM_MIN_GAIN}: "
        f"{'met' if auc >= DLRM_MIN_AUC and auc >= base_auc + DLRM_MIN_GAIN else 'NOT met'} "
        f"(gain {auc - base_auc:+.4f}).",
        "",
        "## Retrieval (two-tower vs most popular unseen), whole catalogue, training items excluded",
        "",
    ]
    names = list(retrieval.metrics)
    lines += [
        "| model | " + " | ".join(names) + " | train examples/s | wall time (s) |",
        "| --- " * (len(names) + 3) + "|",
        "| two-tower | "
        + " | ".join(f"{retrieval.metrics[n]:.4f}" for n in names)
        + f" | {retrieval.train_examples_per_s:,.0f} | {retr_s:.0f} |",
        "| most popular | "
        + " | ".join(f"{retrieval.baseline_metrics[n]:.4f}" for n in names)
        + " | - | - |",
        "",
        f"Goal recall@10 >= {TWO_TOWER_MIN_RATIO} x most popular: "
        f"{'met' if recall >= TWO_TOWER_MIN_RATIO * base_recall else 'NOT met'} "
        f"(ratio {recall / base_recall:.2f}).",
        "",
        f"DLRM params: `{ranking.params}`",
        "",
        f"Two-tower params: `{retrieval.params}`",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True, help="artifact directory")
    parser.add_argument("--movielens", type=Path, default=REPO.parent / "shared/data/movielens")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/training.md")
    parser.add_argument(
        "--split",
        default="u1",
        choices=["u1", "u2", "u3", "u4", "u5", "config"],
        help="an official ml-100k fold, or config: the features.split settings",
    )
    parser.add_argument("--set", action="append", default=[], help="section.field=value")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    command = shlex.join(["python", "benchmarks/train_bench.py", *sys.argv[1:]])

    split_settings = OFFICIAL_SPLIT_SETTINGS if args.split != "config" else []
    settings, raw = fetch_movielens(
        args.movielens / ARCHIVE, args.home, [*split_settings, *args.set]
    )
    if args.split != "config":
        raw = with_official_split(
            raw, args.movielens / ARCHIVE, args.split, settings.paths.raw_dir / args.split
        )
    features = build_features_task.fn(
        raw, settings.features, settings.validation, settings.compute, settings.paths.features_dir
    )
    if args.split != "config":
        n_test = int(pd.read_parquet(raw.interactions, columns=["timestamp"])["timestamp"].sum())
        if features.n_valid != n_test:
            raise RuntimeError(f"{features.n_valid} valid rows, {args.split}.test has {n_test}")
    run_id = time.strftime("bench-%Y%m%dT%H%M%S")
    ranking, rank_s = timed(train_ranking, features, settings, run_id)
    retrieval, retr_s = timed(train_retrieval, features, settings, run_id)
    text = report(command, args.split, settings, features, ranking, rank_s, retrieval, retr_s)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
