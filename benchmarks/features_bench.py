"""Benchmark of the features stage on synthetic data: throughput, peak memory, out-of-core runs.

    .venv/bin/python benchmarks/features_bench.py --sizes 1M,10M,50M --memory-limit 1GB

For each size it generates synthetic interactions once (cached under ``--work-dir``), then runs
``build_features`` on a fresh ``LocalCluster`` whose workers have ``--memory-limit`` each, and
records rows/s, the peak resident memory of the workers and of this process, and the peak size
of the workers' spill directory. At ``--compare-size`` it also runs the same data with
``HashBucket`` ids (two bucket counts) and trains a short DLRM on each encoding to compare
validation AUC. Results are printed and written as markdown to ``--out``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recflow.artifacts import RawDataset  # noqa: E402
from recflow.compute import open_cluster  # noqa: E402
from recflow.config import (  # noqa: E402
    ComputeConfig,
    FeaturesConfig,
    RankingConfig,
    SyntheticConfig,
)
from tasks import synthetic  # noqa: E402
from tasks.features import (  # noqa: E402
    FeatureSet,
    attach_side_features,
    build_features,
    side_feature_tables,
)

log = logging.getLogger("features_bench")

# Interactions per user on average, and the catalogue size: the generator's cost is
# O(users x items), so a fixed catalogue and more users make large sizes cheap to generate.
RATINGS_PER_USER = 200
N_ITEMS = 2_000
SAMPLE_POLL_S = 0.5
# Rows of the joined frame measured to estimate a dataset's in-memory size.
SIZE_SAMPLE_ROWS = 100_000


@dataclass
class Run:
    rows: int
    encoding: str
    seconds: float
    cpu_seconds: float
    worker_peak_bytes: int
    client_peak_bytes: int
    spill_peak_bytes: int
    # The machine's 1-minute load average when the run ended: other work competes for the cores.
    load: float
    auc: float | None = None
    features: FeatureSet | None = field(default=None, repr=False)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds


def parse_size(text: str) -> int:
    scale = {"K": 1_000, "M": 1_000_000}
    return int(float(text[:-1]) * scale[text[-1].upper()]) if text[-1].isalpha() else int(text)


def dataset(rows: int, work_dir: Path) -> RawDataset:
    cfg = SyntheticConfig(n_users=rows // RATINGS_PER_USER, n_items=N_ITEMS, n_ratings=rows)
    path = work_dir / f"data-{rows}"
    if not (path / "interactions.parquet").exists():
        started = time.perf_counter()
        synthetic.generate(cfg, path)
        log.info("generated %d rows in %.0f s", rows, time.perf_counter() - started)
    return RawDataset(
        path=path,
        variant=f"bench-{rows}",
        checksum=synthetic.config_checksum(cfg),
        n_interactions=rows,
        n_users=cfg.n_users,
        n_items=cfg.n_items,
        has_users=True,
    )


def in_memory_bytes(raw: RawDataset) -> int:
    """Estimated pandas size of the joined frame the workflow reads, from a sample."""
    import dask.dataframe as dd

    sample = pd.read_parquet(raw.interactions).head(SIZE_SAMPLE_ROWS)
    items, users, _ = side_feature_tables(raw, dd.from_pandas(sample, npartitions=1))
    joined = attach_side_features(sample, items, users)
    return int(joined.memory_usage(deep=True).sum() / len(joined) * raw.n_interactions)


class PeakSampler:
    """Polls this process's children (the workers) and the spill dir: peak memory and bytes,
    and the CPU time everything used (the machine may be shared, so wall time alone misleads).
    """

    def __init__(self, spill_dir: Path):
        self.spill_dir = spill_dir
        self.worker_peak = self.client_peak = self.spill_peak = 0
        self._cpu: dict[int, float] = {}
        self._own_cpu_start = _cpu_seconds(psutil.Process())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def cpu_seconds(self) -> float:
        return sum(self._cpu.values())

    def _poll(self) -> None:
        while not self._stop.wait(SAMPLE_POLL_S):
            self._sample()

    def _sample(self) -> None:
        me = psutil.Process()
        rss = 0
        for child in me.children(recursive=True):
            try:
                rss += child.memory_info().rss
                # Cumulative per process: the last reading before it exits counts.
                self._cpu[child.pid] = _cpu_seconds(child)
            except psutil.NoSuchProcess:
                continue
        self._cpu[me.pid] = _cpu_seconds(me) - self._own_cpu_start
        self.worker_peak = max(self.worker_peak, rss)
        self.client_peak = max(self.client_peak, me.memory_info().rss)
        self.spill_peak = max(self.spill_peak, _tree_bytes(self.spill_dir))


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(dirpath, name))
            except OSError:
                continue
    return total


def run_features(raw: RawDataset, cfg: FeaturesConfig, compute: ComputeConfig, out: Path) -> Run:
    spill = Path(compute.spill_dir)
    with open_cluster(compute) as (_client, _device), PeakSampler(spill) as peaks:
        started = time.perf_counter()
        features = build_features(raw, cfg, out)
        seconds = time.perf_counter() - started
    run = Run(
        rows=raw.n_interactions,
        encoding=_encoding(cfg),
        seconds=seconds,
        cpu_seconds=peaks.cpu_seconds,
        worker_peak_bytes=peaks.worker_peak,
        client_peak_bytes=peaks.client_peak,
        spill_peak_bytes=peaks.spill_peak,
        load=os.getloadavg()[0],
        features=features,
    )
    log.info("%s", run)
    return run


def _encoding(cfg: FeaturesConfig) -> str:
    return "Categorify" if cfg.id_encoding == "categorify" else f"HashBucket({cfg.hash_buckets})"


def train_auc(run: Run, work_dir: Path, epochs: int) -> float:
    from models.dlrm import train_dlrm

    features = run.features
    out = work_dir / "models" / f"{features.fingerprint}-{time.time_ns()}"
    model = train_dlrm(
        features.train_dir,
        features.valid_dir,
        RankingConfig(epochs=epochs),
        out,
        features.fingerprint,
    )
    return model.metrics["auc"]


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def report(runs: list[Run], sizes: dict[int, int], args: argparse.Namespace, command: str) -> str:
    lines = [
        "# Features stage benchmark",
        "",
        "Produced by (from the repository root):",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Machine: {os.cpu_count()} cores, {gib(psutil.virtual_memory().total)} RAM, no GPU. "
        f"Cluster: LocalCluster, {args.workers} worker processes x 1 thread, memory limit "
        f"{args.memory_limit} per worker (spilling to disk). Data: tasks/synthetic.py, "
        f"{N_ITEMS} items, {RATINGS_PER_USER} ratings per user on average, random split. "
        "Time is `build_features` alone (profile, clean + split, fit, transform, statistics), "
        "not data generation or cluster start-up.",
        "",
        "| interactions | ids | seconds | rows/s | CPU seconds | rows per CPU second "
        "| workers' peak RSS (sum) | client peak RSS | spill dir peak "
        "| joined frame in memory (est.) | load avg | DLRM valid AUC |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in runs:
        auc = f"{run.auc:.4f}" if run.auc is not None else "-"
        lines.append(
            f"| {run.rows:,} | {run.encoding} | {run.seconds:.0f} | {run.rows_per_s:,.0f} | "
            f"{run.cpu_seconds:.0f} | {run.rows / run.cpu_seconds:,.0f} | "
            f"{gib(run.worker_peak_bytes)} | {gib(run.client_peak_bytes)} | "
            f"{gib(run.spill_peak_bytes)} | {gib(sizes[run.rows])} | {run.load:.1f} | {auc} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1M,10M,50M")
    parser.add_argument("--compare-size", default="1M", help="also run HashBucket and a DLRM here")
    parser.add_argument("--hash-buckets", default="100000,1000")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default="1GB")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/recflow-bench"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/features.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    command = shlex.join([".venv/bin/python", "benchmarks/features_bench.py", *sys.argv[1:]])

    runs, sizes = [], {}
    compare = parse_size(args.compare_size)
    for rows in [parse_size(s) for s in args.sizes.split(",")]:
        raw = dataset(rows, args.work_dir)
        sizes[rows] = in_memory_bytes(raw)
        configs = [FeaturesConfig()]
        if rows == compare:
            configs += [
                FeaturesConfig(id_encoding="hash", hash_buckets=int(n))
                for n in args.hash_buckets.split(",")
            ]
        for cfg in configs:
            spill = args.work_dir / f"spill-{rows}-{cfg.id_encoding}-{cfg.hash_buckets}"
            compute = ComputeConfig(
                device="cpu",
                n_workers=args.workers,
                threads_per_worker=1,
                memory_limit=args.memory_limit,
                spill_dir=spill,
            )
            out = args.work_dir / f"features-{time.time_ns()}"
            run = run_features(raw, cfg, compute, out)
            if rows == compare:
                run.auc = train_auc(run, args.work_dir, args.epochs)
            runs.append(run)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(report(runs, sizes, args, command))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
