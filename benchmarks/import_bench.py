"""Peak memory of your own data's import (and of the features stage after it) on a large log.

    .venv/bin/python benchmarks/import_bench.py --sizes 1M,5M,20M --features-sizes 1M,5M,20M \\
        --out benchmarks/results/import.md

For each size it writes the issue #32 shop export once under ``--work-dir`` (``;``-separated
CSV and parquet: string ids ``c-17`` and ``sku 1036``, ISO times, stars 0.5-5; deterministic,
written a chunk at a time so the generator stays small), then imports each format with
``fetch_dataset`` in a process of its own and builds features from the parquet import in
another (a LocalCluster of 2 worker processes). This process polls each child's process tree
(psutil: the child, and the Dask nanny and workers it starts) for the peak of their summed
RSS and of the largest single process, and reads the child's own peak from ``os.wait4``
(``ru_maxrss``, which includes descendants it waited for). A child whose tree passes
``--max-rss`` is killed, and reported so: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recflow.config import PathsConfig  # noqa: E402

# Rows the generator holds at a time.
CHUNK_ROWS = 1_000_000
# The shop's catalogue, and interactions per customer on average (customers grow with the log).
N_ITEMS = 20_000
ROWS_PER_USER = 200
SEED = 32
POLL_S = 0.2
FORMATS = ("csv", "parquet")
# The shop export's interaction columns as data.custom maps them (custom_source_bench's too).
SHOP_EVENTS = {
    "user": "customer",
    "item": "product",
    "timestamp": "at",
    "rating": "stars",
    "rating_scale": (0.5, 5.0),
    "positive_threshold": 4.0,
}
_EXPORT = pa.schema(
    [
        ("customer", pa.string()),
        ("product", pa.string()),
        ("stars", pa.float64()),
        ("at", pa.timestamp("s")),
    ]
)


def parse_size(text: str) -> int:
    """``1M``, ``500K`` or a plain number of rows."""
    scale = {"K": 1_000, "M": 1_000_000}
    return int(float(text[:-1]) * scale[text[-1].upper()]) if text[-1].isalpha() else int(text)


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


@dataclass
class Measured:
    stage: str
    fmt: str
    rows: int
    seconds: float
    tree_peak: int  # the child's process tree, summed, at its highest poll
    largest_peak: int  # the largest single process of the tree
    maxrss: int  # os.wait4's ru_maxrss of the child
    killed: bool


def export_chunk(rows: int, start: int, n_rows: int) -> pd.DataFrame:
    """Rows ``start``..``start + rows`` of the ``n_rows`` export: the same for both formats."""
    rng = np.random.default_rng([SEED, n_rows, start])
    n_users = max(1, n_rows // ROWS_PER_USER)
    seconds = np.datetime64("2024-01-01T00:00:00") + rng.integers(0, 365 * 86_400, rows)
    return pd.DataFrame(
        {
            "customer": "c-" + pd.Series(rng.integers(0, n_users, rows)).astype(str),
            "product": "sku " + pd.Series(rng.zipf(1.3, rows) % N_ITEMS).astype(str),
            "stars": rng.integers(1, 11, rows) / 2,
            "at": seconds.astype("datetime64[s]"),
        }
    )


def write_export(n_rows: int, directory: Path) -> dict[str, Path]:
    """The export of ``n_rows`` as CSV and parquet (kept: a later run reuses them)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {fmt: directory / f"events-{n_rows}.{fmt}" for fmt in FORMATS}
    if all(path.exists() for path in paths.values()):
        return paths
    partial = {fmt: path.with_name(path.name + ".partial") for fmt, path in paths.items()}
    with open(partial["csv"], "w") as csv, pq.ParquetWriter(partial["parquet"], _EXPORT) as parquet:
        for start in range(0, n_rows, CHUNK_ROWS):
            chunk = export_chunk(min(CHUNK_ROWS, n_rows - start), start, n_rows)
            parquet.write_table(pa.Table.from_pandas(chunk, _EXPORT, preserve_index=False))
            iso = chunk.assign(at=chunk["at"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
            iso.to_csv(csv, sep=";", index=False, header=start == 0)
    for fmt, path in paths.items():
        partial[fmt].rename(path)
    return paths


def declared(path: Path, fmt: str, n_rows: int) -> dict:
    """The export as data.custom declares it (CustomSource fields)."""
    return {
        "name": f"shop-{fmt}-{n_rows}",
        "interactions": {"path": str(path), **SHOP_EVENTS, "csv": {"delimiter": ";"}},
    }


def child_import(custom: dict, home: Path) -> None:
    from recflow.config import CustomSource, DataConfig
    from tasks.download import fetch_dataset

    data = DataConfig(variant="custom", custom=CustomSource.model_validate(custom))
    raw = fetch_dataset(data, PathsConfig(home=home))
    print(json.dumps({"path": str(raw.path), "rows": raw.n_interactions}))


def child_features(raw_dir: Path, out: Path, memory_limit: str) -> None:
    from recflow.artifacts import RawDataset
    from recflow.compute import open_cluster
    from recflow.config import ComputeConfig, FeaturesConfig
    from tasks.features import build_features

    compute = ComputeConfig(
        n_workers=2, threads_per_worker=1, memory_limit=memory_limit, spill_dir=out / "spill"
    )
    with open_cluster(compute):
        build_features(RawDataset.load(raw_dir), FeaturesConfig(), out / "build")


def measure(stage: str, fmt: str, rows: int, argv: list[str], max_rss: int) -> Measured:
    """Run ``argv`` (this script as a child) and measure its process tree until it exits."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, __file__, *argv], start_new_session=True)
    peaks = {"tree": 0, "largest": 0, "killed": False}
    done = threading.Event()

    def poll() -> None:
        root = psutil.Process(child.pid)
        while not done.wait(POLL_S):
            sizes = []
            for process in [root, *root.children(recursive=True)]:
                try:
                    sizes.append(process.memory_info().rss)
                except psutil.NoSuchProcess:
                    continue
            peaks["tree"] = max(peaks["tree"], sum(sizes))
            peaks["largest"] = max(peaks["largest"], max(sizes, default=0))
            if sum(sizes) > max_rss and not peaks["killed"]:
                peaks["killed"] = True
                os.killpg(child.pid, signal.SIGKILL)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    _pid, status, usage = os.wait4(child.pid, 0)
    done.set()
    poller.join()
    seconds = time.perf_counter() - started
    if status and not peaks["killed"]:
        raise SystemExit(f"{stage} {fmt} {rows}: the child failed ({status})")
    return Measured(
        stage,
        fmt,
        rows,
        seconds,
        peaks["tree"],
        peaks["largest"],
        usage.ru_maxrss * 1024,
        peaks["killed"],
    )


def report(runs: list[Measured], command: str, loads: list[str], max_rss: int) -> str:
    lines = [
        "| stage | format | rows | seconds | rows/s | peak RSS, process tree | "
        "largest process | child ru_maxrss |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in runs:
        killed = f"killed above {gib(max_rss)}" if run.killed else ""
        lines.append(
            f"| {run.stage} | {run.fmt} | {run.rows:,} | {run.seconds:.0f} | "
            f"{run.rows / run.seconds:,.0f} | {killed or gib(run.tree_peak)} | "
            f"{gib(run.largest_peak)} | {gib(run.maxrss)} |"
        )
    return "\n".join(
        [
            "```bash",
            command,
            "```",
            "",
            "Load (`uptime`) before each run:",
            "",
            *[f"- {load}" for load in loads],
            "",
            *lines,
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1M,5M,20M")
    parser.add_argument("--features-sizes", default="", help="sizes to build features at")
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/import-bench"))
    parser.add_argument("--memory-limit", default="2GB", help="each Dask worker's")
    parser.add_argument("--max-rss-gib", type=float, default=12.0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", choices=("import", "features"), help=argparse.SUPPRESS)
    parser.add_argument("--child-args", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        given = json.loads(args.child_args)
        if args.child == "import":
            child_import(given["custom"], Path(given["home"]))
        else:
            child_features(Path(given["raw"]), Path(given["out"]), given["memory_limit"])
        return
    max_rss = int(args.max_rss_gib * 2**30)
    command = ".venv/bin/python benchmarks/import_bench.py " + shlex.join(sys.argv[1:])
    runs: list[Measured] = []
    loads: list[str] = []
    features_sizes = {parse_size(s) for s in args.features_sizes.split(",") if s}
    for rows in map(parse_size, args.sizes.split(",")):
        exports = write_export(rows, args.work_dir / "exports")
        home = args.work_dir / "home"
        raw_dir = PathsConfig(home=home).raw_dir
        for fmt in args.formats.split(","):
            custom = declared(exports[fmt], fmt, rows)
            shutil.rmtree(raw_dir / custom["name"], ignore_errors=True)
            loads.append(f"import {fmt} {rows:,}: {_uptime()}")
            given = json.dumps({"custom": custom, "home": str(home)})
            runs.append(
                measure("import", fmt, rows, ["--child", "import", "--child-args", given], max_rss)
            )
            print(report(runs, command, loads, max_rss), flush=True)
        if rows in features_sizes:
            raw = raw_dir / f"shop-{args.formats.split(',')[-1]}-{rows}"
            out = args.work_dir / "features"
            shutil.rmtree(out, ignore_errors=True)
            loads.append(f"features {rows:,}: {_uptime()}")
            given = json.dumps(
                {"raw": str(raw), "out": str(out), "memory_limit": args.memory_limit}
            )
            runs.append(
                measure(
                    "features",
                    "-",
                    rows,
                    ["--child", "features", "--child-args", given],
                    max_rss,
                )
            )
            print(report(runs, command, loads, max_rss), flush=True)
        if args.out:
            args.out.write_text(report(runs, command, loads, max_rss))


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    main()
