"""Serving benchmark: perf_analyzer against Triton next to the same models called in-process.

For ``ranking`` (one user, 100 candidate items per request), ``recommend`` (one user, k=10)
and, with ``--history N``, ``recommend`` with a request-time history of N item ids per request
(#30; the same users, histories drawn from the catalogue), at each concurrency: p50/p99
request latency and throughput in-process (serving/runtime.py classes on the same version
directory, one thread per concurrent caller: the limit the server can approach), and right
after it through tritonserver over gRPC with perf_analyzer.

Setup (once per machine): perf_analyzer ships in the tritonclient wheel (.venv/bin) but needs
Debian's ``libb64-0d`` and CUDA's ``libcudart.so.12`` even on CPU. ``--setup`` installs the
first with apt-get (as root) and fetches the second from the ``nvidia-cuda-runtime-cu12``
wheel into ``<home>/cache`` with pip.

    .venv/bin/python benchmarks/serving_bench.py --setup --home artifacts \\
        --out benchmarks/results/serving.md

``--home`` must hold a published repository (``recflow run`` with a retrieval model).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from recflow.config import load_settings
from serving.repository import EndpointNames
from serving.runtime import RankingPipeline, RecommendStage
from serving.server import TritonServer

CUDART_WHEEL = "nvidia-cuda-runtime-cu12==12.4.127"
CUDART_DIR = "cudart"
PERF_ANALYZER = Path(sys.executable).with_name("perf_analyzer")
CANDIDATES = 100
K = 10


def setup(cache: Path) -> Path:
    """Install what perf_analyzer links against; return the directory holding libcudart."""
    if (
        "libb64.so.0d"
        not in subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    ):
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "libb64-0d"], check=True)
    target = cache / CUDART_DIR
    if not (target / "libcudart.so.12").is_file():
        with tempfile.TemporaryDirectory() as tmp:
            # The venv has no pip (uv manages it); any python3 with pip can download a wheel.
            download = ["python3", "-m", "pip", "download", "--no-deps", "-d", tmp, CUDART_WHEEL]
            subprocess.run(download, check=True)
            wheel = next(Path(tmp).glob("*.whl"))
            target.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(wheel) as archive:
                member = "nvidia/cuda_runtime/lib/libcudart.so.12"
                (target / "libcudart.so.12").write_bytes(archive.read(member))
    return target


def in_process(call, requests: list, concurrency: int, seconds: float) -> dict[str, float]:
    """p50/p99 latency (ms) and requests/s of ``call`` from ``concurrency`` threads."""
    latencies: list[float] = []
    for request in requests[:3]:
        call(request)  # warm-up: first calls build tf.functions
    stop = time.monotonic() + seconds

    def worker(offset: int) -> None:
        index = offset
        while time.monotonic() < stop:
            started = time.perf_counter()
            call(requests[index % len(requests)])
            latencies.append(time.perf_counter() - started)
            index += concurrency

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    return {
        "p50_ms": float(np.percentile(latencies, 50) * 1000),
        "p99_ms": float(np.percentile(latencies, 99) * 1000),
        "rps": len(latencies) / elapsed,
    }


def perf_analyzer(
    server: TritonServer, model: str, data: dict, batch: int, concurrency: int, cudart: Path
) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        data_file, report = Path(tmp) / "data.json", Path(tmp) / "report.csv"
        data_file.write_text(json.dumps(data))
        command = [
            str(PERF_ANALYZER),
            "-m", model, "-i", "grpc", "-u", server.grpc_url,
            "-b", str(batch),
            f"--concurrency-range={concurrency}",
            f"--input-data={data_file}",
            "--measurement-interval=5000",
            "--stability-percentage=1000",  # a busy machine never looks stable
            "--max-trials=3",
            "-f", str(report),
        ]  # fmt: skip
        env = dict(os.environ, LD_LIBRARY_PATH=str(cudart))
        run = subprocess.run(command, env=env, capture_output=True, text=True)
        if run.returncode:
            raise RuntimeError(f"perf_analyzer failed on {model}:\n{run.stdout}\n{run.stderr}")
        row = next(csv.DictReader(report.open()))
    return {
        "p50_ms": float(row["p50 latency"]) / 1000,
        "p99_ms": float(row["p99 latency"]) / 1000,
        "rps": float(row["Inferences/Second"]) / batch,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--concurrency", default="1,4,8")
    parser.add_argument("--seconds", type=float, default=8.0, help="in-process time per point")
    parser.add_argument("--setup", action="store_true", help="install perf_analyzer's libraries")
    parser.add_argument(
        "--history", type=int, default=0, help="also recommend with this many history items"
    )
    args = parser.parse_args()
    free = ["serving.grpc_port=0", "serving.http_port=0", "serving.metrics_port=0"]
    settings = load_settings(overrides=[f"paths.home={args.home}", *free])
    cudart = (
        setup(settings.paths.cache_dir) if args.setup else settings.paths.cache_dir / CUDART_DIR
    )
    endpoint = EndpointNames(settings.serving.model_prefix)
    repo = settings.paths.triton_repo
    ranking, recommend = endpoint.model("ranking"), endpoint.model("recommend")
    version = max(int(p.name) for p in (repo / recommend).iterdir() if p.name.isdigit())
    catalog = pd.read_parquet(repo / "catalog.parquet")["item_id"].to_numpy(np.int64)
    users = np.random.default_rng(0).choice(200, 32).astype(np.int64) + 1
    candidates = np.resize(catalog, CANDIDATES)

    pipeline = RankingPipeline(repo / ranking / str(version))
    stage = RecommendStage(repo / recommend / str(version))
    cases = {
        ranking: (
            lambda user: pipeline.scores(np.full(CANDIDATES, user), candidates),
            # perf_analyzer sends the same (user, item) row `-b` times: the cost of scoring
            # 100 candidates for one user, as in-process.
            {"data": [{"user_id": [int(u)], "item_id": [int(candidates[0])]} for u in users]},
            CANDIDATES,
        ),
        recommend: (
            lambda user: stage.recommend(np.array([user], np.int64), K),
            {"data": [{"user_id": [int(u)], "k": [K]} for u in users]},
            1,
        ),
    }
    if args.history:
        rng = np.random.default_rng(1)
        histories = {int(u): rng.choice(catalog, args.history).astype(np.int64) for u in users}
        # The stub reads the history from the request; so does this reference.
        read = stage.retrieval.history
        cases[f"{recommend} + history {args.history}"] = (
            lambda user: stage.recommend(
                np.array([user], np.int64),
                K,
                read({"history": histories[int(user)].reshape(1, -1)}, 1),
            ),
            {
                "data": [
                    {
                        "user_id": [int(u)],
                        "k": [K],
                        # A variable-length input needs its shape (without the batch).
                        "history": {
                            "content": histories[int(u)].tolist(),
                            "shape": [args.history],
                        },
                    }
                    for u in users
                ]
            },
            1,
        )
    levels = [int(c) for c in args.concurrency.split(",")]
    rows = []
    with TritonServer.from_settings(settings, models=[ranking, recommend]) as server:
        # Each served point right after its in-process reference, so that load from other
        # processes on a shared machine drifts as little as possible between the two.
        for model, (call, data, batch) in cases.items():
            for concurrency in levels:
                local = in_process(call, list(users), concurrency, args.seconds)
                served_model = model.partition(" + ")[0]
                served = perf_analyzer(server, served_model, data, batch, concurrency, cudart)
                for where, result in (("in-process", local), ("triton gRPC", served)):
                    rows.append((model, concurrency, where, result))
                    print(model, concurrency, where, result, flush=True)
    write_report(args, rows)


def write_report(args: argparse.Namespace, rows: list) -> None:
    reference = {(m, c): r["rps"] for m, c, where, r in rows if where == "in-process"}
    lines = [
        "| endpoint | concurrency | where | p50 ms | p99 ms | requests/s | % of in-process |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, concurrency, where, result in rows:
        share = 100 * result["rps"] / reference[(model, concurrency)]
        lines.append(
            f"| {model} | {concurrency} | {where} | {result['p50_ms']:.1f} | "
            f"{result['p99_ms']:.1f} | {result['rps']:.1f} | {share:.0f}% |"
        )
    command = " ".join(["python", *sys.argv])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        "# Serving benchmark\n\n"
        f"Command: `{command}`\n\n"
        f"Run at {time.strftime('%Y-%m-%d %H:%M:%S %Z')} on {os.cpu_count()} cores.\n\n"
        + "\n".join(lines)
        + "\n"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
