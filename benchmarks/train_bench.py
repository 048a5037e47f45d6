"""Benchmark of the training stage on real ml-100k: both models against both baselines.

    .venv/bin/python benchmarks/train_bench.py --home /tmp/train-bench

The archive comes from ``--movielens`` (default ``../shared/data/movielens``) through a
temporary mirror directory that links to it and declares its sha256 (the shared ml-100k is a
re-pack, see docs/data.md); it is never copied into the repository. Features are built by
``tasks.features.build_features`` on a LocalCluster with a time-based split (``features.split``,
``time`` by default: one global timestamp cutoff, the newest 20 % of ratings are validation),
then the DLRM and the two-tower model are trained with the configured defaults. Any setting can
be overridden with ``--set section.field=value``. Results are printed and written as markdown
to ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import shlex
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recflow.compute import dataset_cpu_flag, open_cluster  # noqa: E402
from recflow.config import load_settings  # noqa: E402
from tasks.download import MIRROR_CHECKSUMS, fetch_dataset  # noqa: E402
from tasks.features import build_features  # noqa: E402
from tasks.train import train_ranking, train_retrieval  # noqa: E402

ARCHIVE = "ml-100k.zip"
# The goals (#5).
DLRM_MIN_AUC, DLRM_MIN_GAIN, TWO_TOWER_MIN_RATIO = 0.79, 0.05, 1.5


def mirror_of(archive: Path, directory: Path) -> Path:
    (directory / archive.name).symlink_to(archive.resolve())
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    (directory / MIRROR_CHECKSUMS).write_text(f"{digest}  {archive.name}\n")
    return directory


def timed(fn, *args):
    started = time.perf_counter()
    return fn(*args), time.perf_counter() - started


def report(command: str, settings, features, ranking, rank_s, retrieval, retr_s) -> str:
    auc, base_auc = ranking.metrics["auc"], ranking.baseline_metrics["auc"]
    recall, base_recall = retrieval.metrics["recall@10"], retrieval.baseline_metrics["recall@10"]
    lines = [
        "# Training benchmark: ml-100k",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Split: `features.split={settings.features.split}` "
        f"(valid_fraction {settings.features.valid_fraction}, valid_last_n "
        f"{settings.features.valid_last_n}), target rating >= "
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
    parser.add_argument("--set", action="append", default=[], help="section.field=value")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    command = shlex.join(["python", "benchmarks/train_bench.py", *sys.argv[1:]])

    with tempfile.TemporaryDirectory() as tmp:
        mirror = mirror_of(args.movielens / ARCHIVE, Path(tmp))
        settings = load_settings(
            overrides=[
                f"paths.home={args.home}",
                "data.variant=ml-100k",
                f"data.mirror={mirror}",
                "features.split=time",
                *args.set,
            ]
        )
        raw = fetch_dataset(settings.data, settings.paths)
    with open_cluster(settings.compute) as (_client, device):
        features = build_features(
            raw,
            settings.features,
            settings.paths.features_dir,
            cpu=dataset_cpu_flag(device),
            validation=settings.validation,
        )
    run_id = time.strftime("bench-%Y%m%dT%H%M%S")
    ranking, rank_s = timed(train_ranking, features, settings, run_id)
    retrieval, retr_s = timed(train_retrieval, features, settings, run_id)
    text = report(command, settings, features, ranking, rank_s, retrieval, retr_s)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
