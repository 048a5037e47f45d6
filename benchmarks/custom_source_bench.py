"""Your own data at scale: a custom parquet source of N interactions with string ids, through
the import, the features stage and DLRM training, next to the synthetic source of the same data.

    .venv/bin/python benchmarks/custom_source_bench.py --rows 10M --train-rows 1M \\
        --out benchmarks/results/custom_source.md

The synthetic dataset of ``--rows`` interactions (tasks/synthetic.py, features_bench's shape)
is generated once and re-written as "your own" export: string ids (``u17``, ``i42``), other
column names, users and items tables declaring the same side features (MovieLens's
declaration: categorical, and genres as a list column). Both sources then run through
``build_features`` on the same cluster settings (features_bench.run_features: seconds, CPU,
peak memory), and a one-epoch DLRM trains on the first ``--train-rows`` rows of each build's
training split (a whole 10M epoch takes about half an hour per source on 2 cores), which
gives the training examples/s. The import (read, hash, check, write the canonical tables) is
timed on its own: it is what a custom source adds.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.features_bench import dataset, parse_size, run_features  # noqa: E402
from benchmarks.import_bench import SHOP_EVENTS  # noqa: E402
from models.ranking import train_ranker  # noqa: E402
from recflow.artifacts import FeatureSet  # noqa: E402
from recflow.config import (  # noqa: E402
    ComputeConfig,
    CustomSource,
    DataConfig,
    FeaturesConfig,
    PathsConfig,
    RankingConfig,
)
from tasks.download import fetch_dataset  # noqa: E402

log = logging.getLogger("custom_source_bench")


def write_export(raw, directory: Path) -> CustomSource:
    """The synthetic tables as a product's export: string ids, its own column names."""
    directory.mkdir(parents=True, exist_ok=True)
    interactions = directory / "events.parquet"
    if not interactions.exists():
        source = pq.ParquetFile(raw.interactions)
        with pq.ParquetWriter(interactions.with_suffix(".tmp"), _EVENTS) as out:
            for group in range(source.num_row_groups):
                frame = source.read_row_group(group).to_pandas()
                out.write_table(
                    pa.Table.from_pandas(
                        pd.DataFrame(
                            {
                                "customer": "u" + frame["user_id"].astype(str),
                                "product": "i" + frame["item_id"].astype(str),
                                "stars": frame["rating"],
                                "at": frame["timestamp"],
                            }
                        ),
                        _EVENTS,
                        preserve_index=False,
                    )
                )
        interactions.with_suffix(".tmp").rename(interactions)
        items = pd.read_parquet(raw.items, columns=["item_id", "year_bucket", "genres"])
        items.assign(item_id="i" + items["item_id"].astype(str)).rename(
            columns={"item_id": "product"}
        ).to_parquet(directory / "products.parquet", index=False)
        users = pd.read_parquet(raw.users)
        users = users[["user_id", "gender", "age_bucket", "occupation", "zip_prefix"]]
        users.assign(user_id="u" + users["user_id"].astype(str)).rename(
            columns={"user_id": "customer"}
        ).to_parquet(directory / "customers.parquet", index=False)
    return CustomSource.model_validate(
        {
            "name": f"export-{raw.n_interactions}",
            "interactions": {"path": str(interactions), **SHOP_EVENTS},
            "items": {
                "path": str(directory / "products.parquet"),
                "id": "product",
                "categorical": ["year_bucket"],
                "lists": ["genres"],
            },
            "users": {
                "path": str(directory / "customers.parquet"),
                "id": "customer",
                "categorical": ["gender", "age_bucket", "occupation", "zip_prefix"],
            },
        }
    )


_EVENTS = pa.schema(
    [
        ("customer", pa.string()),
        ("product", pa.string()),
        ("stars", pa.float32()),
        ("at", pa.int64()),
    ]
)


def first_rows(features: FeatureSet, rows: int, out: Path) -> tuple[Path, int]:
    """A training directory holding the first parts of ``features.train_dir`` up to ``rows``
    rows (symlinks), with its schema; returns it and the rows it holds."""
    out.mkdir(parents=True)
    shutil.copy(features.train_dir / "schema.pbtxt", out)
    shutil.copytree(features.train_dir / ".merlin", out / ".merlin")
    total = 0
    parts = features.train_dir.glob("*.parquet")
    for part in sorted(parts, key=lambda p: int(re.findall(r"\d+", p.stem)[-1])):
        if total >= rows:
            break
        (out / part.name).symlink_to(part)
        total += pq.read_metadata(part).num_rows
    return out, total


def train_throughput(features: FeatureSet, rows: int, work_dir: Path) -> tuple[float, float, int]:
    """One DLRM epoch on the first ``rows`` training rows: examples/s, validation AUC, rows."""
    name = f"{features.fingerprint}-{time.time_ns()}"
    train_dir, n = first_rows(features, rows, work_dir / "subsets" / name)
    model = train_ranker(
        train_dir, features.valid_dir, RankingConfig(epochs=1), work_dir / "models" / name, name
    )
    return model.train_examples_per_s, model.metrics["auc"], n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=parse_size, default=parse_size("10M"))
    parser.add_argument("--train-rows", type=parse_size, default=parse_size("1M"))
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/custom-source-bench"))
    parser.add_argument("--memory-limit", default="2GB")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    work = args.work_dir
    load_before = os.getloadavg()
    synthetic_raw = dataset(args.rows, work)
    custom = write_export(synthetic_raw, work / "export")
    paths = PathsConfig(home=work)
    shutil.rmtree(paths.raw_dir / custom.name, ignore_errors=True)  # time a fresh import
    started = time.perf_counter()
    custom_raw = fetch_dataset(DataConfig(variant="custom", custom=custom), paths)
    import_s = time.perf_counter() - started
    compute = ComputeConfig(
        n_workers=2, threads_per_worker=1, memory_limit=args.memory_limit, spill_dir=work / "spill"
    )
    rows = []
    for label, raw in (("synthetic", synthetic_raw), ("custom parquet, string ids", custom_raw)):
        out = work / "features" / label.split()[0]
        shutil.rmtree(out, ignore_errors=True)
        run = run_features(raw, FeaturesConfig(), compute, out)
        per_s, auc, n = train_throughput(run.features, args.train_rows, work)
        rows.append((label, run, per_s, auc, n))
    command = "    .venv/bin/python benchmarks/custom_source_bench.py " + shlex.join(sys.argv[1:])
    lines = [
        "# Custom source benchmark: your own parquet export next to the synthetic source",
        "",
        "```bash",
        command.strip(),
        "```",
        "",
        f"Machine: 2 cores, no GPU, shared (load average before: {load_before[0]:.1f}, "
        f"after: {os.getloadavg()[0]:.1f}). Cluster: LocalCluster, 2 workers x 1 thread, "
        f"{args.memory_limit} each. Same data in both rows: {args.rows:,} synthetic "
        "interactions; the custom source is them re-written with string ids and its own "
        "column names (benchmarks/custom_source_bench.py). Random split. Training: one DLRM "
        f"epoch (batch {RankingConfig().batch_size}) on the first training rows of each build.",
        "",
        f"Import of the custom source (read + sha256 of every file, checks, string ids hashed, "
        f"canonical tables written): **{import_s:.0f} s, "
        f"{args.rows / import_s:,.0f} rows/s**.",
        "",
        "| source | features s | features rows/s | CPU s | worker peak RSS | load (mean / max) "
        "| training rows | training examples/s | valid AUC |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, run, per_s, auc, n in rows:
        lines.append(
            f"| {label} | {run.seconds:.0f} | {run.rows / run.seconds:,.0f} | "
            f"{run.cpu_seconds:.0f} | {run.worker_max_bytes / 2**30:.2f} GiB | "
            f"{run.load:.1f} / {run.load_max:.1f} | {n:,} | {per_s:,.0f} | {auc:.4f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
