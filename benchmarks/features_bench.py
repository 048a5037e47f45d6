"""Benchmark of the features stage on synthetic data: throughput, peak memory, out-of-core runs.

    .venv/bin/python benchmarks/features_bench.py --sizes 1M,10M,50M --compare-sizes 1M,10M

For each size it generates synthetic interactions once (cached under ``--work-dir``), then runs
``build_features`` on a fresh ``LocalCluster`` whose workers have ``--memory-limit`` each, and
records rows/s, the CPU time of the workers and of this process, the peak resident memory of
each worker and of this process, the peak size of the workers' spill directory and of the
build's own files on disk, and the machine's load. The workers import NVTabular (and with it
TensorFlow) before the clock starts: that is cluster start-up, not feature engineering. At each
of ``--compare-sizes`` it also runs the same data with ``HashBucket`` ids (each of
``--hash-buckets``) and trains a short DLRM on every encoding to compare validation AUC.
Results are printed and written as markdown to ``--out`` after every run.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recflow.artifacts import FeatureSet, RawDataset  # noqa: E402
from recflow.compute import open_cluster  # noqa: E402
from recflow.config import (  # noqa: E402
    ComputeConfig,
    FeaturesConfig,
    RankingConfig,
    SyntheticConfig,
)
from tasks import synthetic  # noqa: E402
from tasks.features import (  # noqa: E402
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
    # The largest single worker's peak: what the memory limit applies to.
    worker_max_bytes: int
    client_peak_bytes: int
    spill_peak_bytes: int
    # The build's own scratch and output files (cleaned splits, joined splits, outputs).
    disk_peak_bytes: int
    # The machine's 1-minute load average, mean and max over the run: other work competes for
    # the 2 cores, so wall time alone misleads.
    load: float
    load_max: float
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
    )


def in_memory_bytes(raw: RawDataset) -> int:
    """Estimated pandas size of the joined frame the workflow reads, from a sample."""
    import dask.dataframe as dd
    import pyarrow.parquet as pq

    first = pq.ParquetFile(raw.interactions).read_row_group(0)
    sample = first.slice(0, SIZE_SAMPLE_ROWS).to_pandas()
    items, users, _ = side_feature_tables(raw, dd.from_pandas(sample, npartitions=1))
    joined = attach_side_features(sample, items, users)
    return int(joined.memory_usage(deep=True).sum() / len(joined) * raw.n_interactions)


class PeakSampler:
    """Polls this process's children (the workers), the spill dir and the output dir: peak
    memory and bytes, the CPU time everything used from now on, and the load average.
    """

    def __init__(self, spill_dir: Path, out_dir: Path):
        self.spill_dir, self.out_dir = spill_dir, out_dir
        self.worker_peak = self.worker_max = self.client_peak = 0
        self.spill_peak = self.disk_peak = 0
        self.loads: list[float] = []
        self._cpu: dict[int, float] = {}
        # CPU the processes used before (start-up, imports) is not the build's.
        self._cpu_start = {p.pid: _cpu_seconds(p) for p in _family()}
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
        for process in _family():
            try:
                # Cumulative per process: the last reading before it exits counts.
                self._cpu[process.pid] = _cpu_seconds(process) - self._cpu_start.get(process.pid, 0)
                if process.pid != me.pid:
                    child = process.memory_info().rss
                    rss += child
                    self.worker_max = max(self.worker_max, child)
            except psutil.NoSuchProcess:
                continue
        self.worker_peak = max(self.worker_peak, rss)
        self.client_peak = max(self.client_peak, me.memory_info().rss)
        self.spill_peak = max(self.spill_peak, _tree_bytes(self.spill_dir))
        self.disk_peak = max(self.disk_peak, _tree_bytes(self.out_dir))
        self.loads.append(os.getloadavg()[0])


def _family() -> list[psutil.Process]:
    me = psutil.Process()
    return [me, *me.children(recursive=True)]


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


def _warm_up() -> None:
    """Runs on each worker: the imports every NVTabular task needs (TensorFlow among them)."""
    import nvtabular  # noqa: F401

    import tasks.features  # noqa: F401


def run_features(raw: RawDataset, cfg: FeaturesConfig, compute: ComputeConfig, out: Path) -> Run:
    spill = Path(compute.spill_dir)
    with open_cluster(compute) as (client, _device):
        client.run(_warm_up)
        with PeakSampler(spill, out) as peaks:
            started = time.perf_counter()
            features = build_features(raw, cfg, out)
            seconds = time.perf_counter() - started
    run = Run(
        rows=raw.n_interactions,
        encoding=_encoding(cfg),
        seconds=seconds,
        cpu_seconds=peaks.cpu_seconds,
        worker_peak_bytes=peaks.worker_peak,
        worker_max_bytes=peaks.worker_max,
        client_peak_bytes=peaks.client_peak,
        spill_peak_bytes=peaks.spill_peak,
        disk_peak_bytes=peaks.disk_peak,
        load=sum(peaks.loads) / max(1, len(peaks.loads)),
        load_max=max(peaks.loads, default=0.0),
        features=features,
    )
    log.info("%s", run)
    return run


def _encoding(cfg: FeaturesConfig) -> str:
    return "Categorify" if cfg.id_encoding == "categorify" else f"HashBucket({cfg.hash_buckets})"


def train_auc(run: Run, work_dir: Path, epochs: int) -> float:
    from models.ranking import train_ranker

    features = run.features
    out = work_dir / "models" / f"{features.fingerprint}-{time.time_ns()}"
    model = train_ranker(
        features.train_dir,
        features.valid_dir,
        RankingConfig(epochs=epochs),
        out,
        features.fingerprint,
    )
    return model.metrics["auc"]


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def report(
    runs: list[Run], sizes: dict[int, int], args: argparse.Namespace, command: str, notes: str
) -> str:
    lines = [
        "# Features stage benchmark",
        "",
        "Produced by (from the repository root):",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Machine: {os.cpu_count()} cores, {gib(psutil.virtual_memory().total)} RAM, no GPU, "
        "shared with other engineers' jobs (see the load columns). "
        f"Cluster: LocalCluster, {args.workers} worker processes x 1 thread, memory limit "
        f"{args.memory_limit} per worker (spilling to disk). Data: tasks/synthetic.py, "
        f"{N_ITEMS} items, {RATINGS_PER_USER} ratings per user on average, "
        f"{FeaturesConfig().split} split, "
        f"features.partition_rows={FeaturesConfig().partition_rows:,}. "
        "Time is `build_features` alone (profile, clean + split, join, fit, transform, "
        "statistics), not data generation, cluster start-up or the workers' imports. "
        "CPU seconds: the workers, their nannies and this process, from the clock's start.",
        "",
        "| interactions | ids | seconds | rows/s | CPU seconds | rows per CPU second "
        "| largest worker's peak RSS | workers' peak RSS (sum, with nannies) | client peak RSS "
        "| spill dir peak | build files on disk, peak | joined frame in memory (est.) "
        "| load avg (mean / max) | DLRM valid AUC |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: |",
    ]
    for run in sorted(runs, key=lambda r: (r.rows, r.encoding != "Categorify")):
        auc = f"{run.auc:.4f}" if run.auc is not None else "-"
        lines.append(
            f"| {run.rows:,} | {run.encoding} | {run.seconds:.0f} | {run.rows_per_s:,.0f} | "
            f"{run.cpu_seconds:.0f} | {run.rows / run.cpu_seconds:,.0f} | "
            f"{gib(run.worker_max_bytes)} | {gib(run.worker_peak_bytes)} | "
            f"{gib(run.client_peak_bytes)} | {gib(run.spill_peak_bytes)} | "
            f"{gib(run.disk_peak_bytes)} | {gib(sizes[run.rows])} | "
            f"{run.load:.1f} / {run.load_max:.1f} | {auc} |"
        )
    return "\n".join(lines) + "\n" + (f"\n{notes.strip()}\n" if notes.strip() else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1M,10M,50M")
    parser.add_argument(
        "--compare-sizes", default="1M,10M", help="also run HashBucket and DLRMs at these sizes"
    )
    parser.add_argument("--hash-buckets", default="100000,1000")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default="2GB")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/recflow-bench"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/features.md")
    parser.add_argument(
        "--notes", type=Path, help="markdown appended to the report (what the numbers show)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    command = shlex.join([".venv/bin/python", "benchmarks/features_bench.py", *sys.argv[1:]])
    notes = args.notes.read_text() if args.notes else ""

    runs, sizes = [], {}
    compare = {parse_size(s) for s in args.compare_sizes.split(",") if s}
    for rows in [parse_size(s) for s in args.sizes.split(",")]:
        raw = dataset(rows, args.work_dir)
        sizes[rows] = in_memory_bytes(raw)
        configs = [FeaturesConfig()]
        if rows in compare:
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
            if rows in compare:
                run.auc = train_auc(run, args.work_dir, args.epochs)
            # Large builds take gigabytes: keep only the numbers.
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(spill, ignore_errors=True)
            runs.append(run)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(report(runs, sizes, args, command, notes))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
