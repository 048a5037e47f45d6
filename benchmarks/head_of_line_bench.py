"""Head-of-line blocking: do small recommend requests wait behind a large one?

On a published repository (``recflow run`` with a retrieval model), for each count N of
``recommend`` instances (``serving.recommend_instance_count``): copy the repository with the
configs written for N, start tritonserver on it, then

1. ``--small-clients`` threads send one-user ``recommend`` requests (k=10) for ``--seconds``
   (the reference: what a small caller sees on an idle server);
2. the same, while one more thread sends ``recommend`` for ``--big-users`` users at once
   (k=10), back to back.

It reports the small requests' p50/p99 latency and rate in both phases, and the big request's
latency over gRPC next to the same call in-process (``RecommendStage``, the stub's code, on the
same version directory). With one instance a small request that arrives behind a big one waits
for it; with two, the other instance answers.

    .venv/bin/python benchmarks/head_of_line_bench.py --home /tmp/home --recommend-instances 1 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from lifecycle_bench import emit  # the script's directory is on sys.path

from recflow.config import load_settings
from recflow_client import RecflowClient
from recflow_client.contract import K_INPUT, RANKED_OUTPUTS, USER_INPUT
from serving.repository import CONTRACTS, EndpointNames, python_model_config
from serving.runtime import RecommendStage
from serving.server import TritonServer


def percentile_ms(latencies: list[float], q: float) -> float:
    return round(float(np.percentile(latencies, q)) * 1000, 1) if latencies else float("nan")


def with_instances(repo: Path, copy: Path, endpoint: EndpointNames, settings, count: int):
    """``repo`` copied to ``copy`` with ``count`` instances of ``recommend``."""
    shutil.copytree(repo, copy)
    cfg = settings.serving.model_copy(update={"recommend_instance_count": count})
    for stage in CONTRACTS:
        name = endpoint.model(stage)
        (copy / name / "config.pbtxt").write_text(python_model_config(name, stage, cfg))


def big_request(users: int) -> dict[str, np.ndarray]:
    return {
        USER_INPUT: np.arange(1, users + 1, dtype=np.int64).reshape(-1, 1),
        K_INPUT: np.full((users, 1), 10, dtype=np.int32),
    }


def phase(server: TritonServer, small_clients: int, seconds: float, big_users: int) -> dict:
    """Small callers for ``seconds``, with one big caller beside them if ``big_users``."""
    stop = threading.Event()
    small: list[float] = []
    big: list[float] = []
    users = np.random.default_rng(0).integers(1, 900, size=100_000)

    def small_stream(offset: int) -> None:
        with RecflowClient.from_config(server.config, retries=0) as client:
            i = offset
            while not stop.is_set():
                started = time.perf_counter()
                client.recommend(int(users[i % len(users)]), k=10)
                small.append(time.perf_counter() - started)
                i += small_clients

    def big_stream() -> None:
        request = big_request(big_users)
        with RecflowClient.from_config(server.config, retries=0) as client:
            while not stop.is_set():
                started = time.perf_counter()
                client.infer(client.recommend_model, request, RANKED_OUTPUTS)
                big.append(time.perf_counter() - started)

    threads = [threading.Thread(target=small_stream, args=(i,)) for i in range(small_clients)]
    if big_users:
        threads.append(threading.Thread(target=big_stream))
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    return {
        "small_requests": len(small),
        "small_rps": round(len(small) / seconds, 1),
        "small_p50_ms": percentile_ms(small, 50),
        "small_p99_ms": percentile_ms(small, 99),
        "big_requests": len(big),
        "big_mean_s": round(float(np.mean(big)), 3) if big else None,
    }


def in_process_big_s(version_dir: Path, users: int, repeats: int = 5) -> float:
    stage = RecommendStage(version_dir)
    request = big_request(users)
    stage(request)  # warm-up, as the stub's initialize does
    started = time.perf_counter()
    for _ in range(repeats):
        stage(request)
    return round((time.perf_counter() - started) / repeats, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, required=True, help="a home with a published repo")
    parser.add_argument("--recommend-instances", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--small-clients", type=int, default=4)
    parser.add_argument("--big-users", type=int, default=1024)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--out", type=Path, help="append each result as one JSON line")
    args = parser.parse_args()

    ports = ["serving.grpc_port=0", "serving.http_port=0", "serving.metrics_port=0"]
    settings = load_settings(overrides=[f"paths.home={args.home}", *ports])
    endpoint = EndpointNames(settings.serving.model_prefix)
    repo = settings.paths.triton_repo
    recommend = repo / endpoint.model("recommend")
    newest = max(int(p.name) for p in recommend.iterdir() if p.name.isdigit())
    reference = in_process_big_s(recommend / str(newest), args.big_users)
    for count in args.recommend_instances:
        with tempfile.TemporaryDirectory() as scratch:
            copy = Path(scratch) / "repository"
            with_instances(repo, copy, endpoint, settings, count)
            server = TritonServer(
                copy,
                settings.serving,
                log_file=Path(scratch) / "triton.log",
                backend_cache_dir=settings.paths.cache_dir,
                models=endpoint.all_models,
            )
            with server:
                for big_users in (0, args.big_users):
                    load_before = os.getloadavg()[0]
                    result = {
                        "recommend_instances": count,
                        "big_users": big_users,
                        "in_process_big_s": reference,
                        **phase(server, args.small_clients, args.seconds, big_users),
                        "load_avg_1m": round(max(load_before, os.getloadavg()[0]), 1),
                    }
                    emit(result, args.out)


if __name__ == "__main__":
    main()
