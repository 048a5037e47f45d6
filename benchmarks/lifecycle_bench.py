"""Serving lifecycle benchmark: Triton ready time, one endpoint's load, stub memory, hot swap.

On a home with trained models (``<home>/features/<fingerprint>``, ``<home>/models/<run>/``,
``<home>/data/<variant>``): export version 1 of the four endpoints into a fresh repository,
start tritonserver with all four and time until it is ready, read each Python stub's resident
memory, time the load of each endpoint alone (unloaded first), then export version 2 and load
all four at once while ``--clients`` threads send requests (half ranking, half recommend),
counting failures.

It uses only interfaces older recflow versions have too, so the same file measures another
checkout when run with that checkout's interpreter from that checkout's directory (its venv
puts its code on sys.path, and the Python stubs also import from the working directory):

    .venv/bin/python benchmarks/lifecycle_bench.py --home /tmp/home --label new
    cd /tmp/old && .venv/bin/python /path/to/benchmarks/lifecycle_bench.py --home /tmp/home \
        --label old
"""

from __future__ import annotations

import argparse
import json
import shutil
import threading
import time
from pathlib import Path

import pandas as pd

from recflow.artifacts import Candidate, FeatureSet, ItemItemSource, RankingModel, RetrievalModel
from recflow.config import load_settings
from recflow.registry import Registry
from recflow_client import RecflowClient, TritonRequestError
from serving.repository import EndpointNames, export_candidate, install
from serving.server import TritonServer, process_group

STUB = "triton_python_backend_stub"


def stub_rss_mb(pgid: int) -> list[float]:
    """Resident memory (MB) of each Python-backend stub process of the server's group."""
    sizes = []
    for pid in process_group(pgid):
        proc = Path(f"/proc/{pid}")
        try:
            if STUB not in (proc / "cmdline").read_bytes().decode(errors="replace"):
                continue
            status = (proc / "status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        kb = next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))
        sizes.append(int(kb) / 1024)
    return sorted(sizes)


def swap_under_load(server: TritonServer, endpoint: EndpointNames, clients: int, export):
    """Export, then load every endpoint at once while ``clients`` threads send requests."""
    stop = threading.Event()
    answered, failures = [], []

    def stream(kind: str) -> None:
        with RecflowClient.from_config(server.config, retries=0) as client:
            while not stop.is_set():
                try:
                    if kind == "ranking":
                        client.score(1, list(range(1, 101)))
                    else:
                        client.recommend(1, k=10)
                    answered.append(1)
                except TritonRequestError as error:
                    failures.append(str(error))

    threads = [
        threading.Thread(target=stream, args=("ranking" if i % 2 else "recommend",))
        for i in range(clients)
    ]
    for thread in threads:
        thread.start()
    try:
        time.sleep(2.0)
        started = time.monotonic()
        export()
        exported = time.monotonic()
        loaders = [threading.Thread(target=server.load, args=(m,)) for m in endpoint.all_models]
        for loader in loaders:
            loader.start()
        for loader in loaders:
            loader.join()
        loaded = time.monotonic()
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    return {
        "export_s": round(exported - started, 2),
        "load_all_s": round(loaded - exported, 2),
        "answered": len(answered),
        "failed": len(failures),
        "first_failure": failures[0] if failures else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--run", default="run", help="the models/<run> directory")
    parser.add_argument("--label", required=True, help="names this checkout in the output")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--out", type=Path, help="append the result as one JSON line")
    args = parser.parse_args()

    ports = ["serving.grpc_port=0", "serving.http_port=0", "serving.metrics_port=0"]
    settings = load_settings(overrides=[f"paths.home={args.home}", *ports])
    features = FeatureSet.load(next(args.home.glob("features/*/manifest.json")).parent)
    ranking = RankingModel.load(args.home / "models" / args.run / "ranking")
    retrieval = RetrievalModel.load(args.home / "models" / args.run / "retrieval")
    item_item_dir = args.home / "models" / args.run / "item_item"
    item_item = ItemItemSource.load(item_item_dir) if item_item_dir.is_dir() else None
    interactions = next(args.home.glob("data/*/interactions.parquet"))
    repo = settings.paths.triton_repo
    shutil.rmtree(repo, ignore_errors=True)

    def export() -> int:
        # A gate's export and a publish's install: what one pipeline run does to the repository.
        target = Registry.from_settings(settings).exported_dir(args.run)
        seen = pd.read_parquet(interactions)
        candidate = Candidate(features, ranking, retrieval, args.run, item_item)
        exported = export_candidate(args.run, candidate, seen, settings.serving, target)
        return install(exported, repo, settings.serving)

    started = time.monotonic()
    export()
    result = {"label": args.label, "first_export_s": round(time.monotonic() - started, 2)}
    endpoint = EndpointNames(settings.serving.model_prefix)
    server = TritonServer.from_settings(settings, models=endpoint.all_models)
    started = time.monotonic()
    with server:
        result["ready_s"] = round(time.monotonic() - started, 2)
        result["stub_rss_mb"] = [round(mb) for mb in stub_rss_mb(server.pid)]
        result["load_one_s"] = {}
        for model in endpoint.all_models:
            server.unload(model)
            started = time.monotonic()
            server.load(model)
            result["load_one_s"][model] = round(time.monotonic() - started, 2)
        result["swap"] = swap_under_load(server, endpoint, args.clients, export)
        result["stub_rss_mb_after_swap"] = [round(mb) for mb in stub_rss_mb(server.pid)]
    emit(result, args.out)


def emit(result: dict, out: Path | None) -> None:
    """Print ``result`` as one JSON line, and append it to ``out`` if given."""
    print(json.dumps(result), flush=True)
    if out is not None:
        with out.open("a") as lines:
            lines.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
