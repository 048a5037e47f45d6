"""Serving large catalogues (issue #33): exact search against the approximate index, per size.

    .venv/bin/python benchmarks/catalogue_bench.py --work-dir /tmp/cat \\
        --size 10k --size 100k --size 1m --out benchmarks/results/catalogue.md

Each ``--size`` is a version made by the real pipeline: ``recflow --set ... run`` on the
synthetic source (``SHAPES``: users, items, ratings; one epoch of each model, one EASE λ and no
gate baselines (serving is measured here, not quality), so
that 1M items finish on this machine) in a home and with a Prefect of its own
(recommend_bench's ``in_fold_home``), with ``serving.ann_min_items=1`` so that every size's
export writes the index. A home that already holds a published repository is served again
without a new run (its ``run.log`` says how it was made).

The published repository is then served twice by the bundled tritonserver (retrieval,
recommend and similar, one after the other, never at once): as exported (``index``), and as
a copy without ``item_index.faiss`` (``exact``: what a catalogue below the switch serves,
serving/runtime.py ``ItemVectors``). For each: seconds from the server's start to ready, the
RSS of each ``triton_python_backend_stub`` once ready and its peak so far (VmHWM: loading
included; recommend has two instances), and
p50/p99 latency at concurrency 1 and 4 from perf_analyzer over gRPC (serving_bench's), for
recommend (k=10), retrieval (k=100, seen items excluded) and similar (k=100). recall@100 of
the index against exact search is computed in-process on the same version directories, over
``RECALL_QUERIES`` known users (retrieval, seen items excluded) and items (similar), at the
exported probes and at a few others (the index's ``nprobe`` changed in memory).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.recommend_bench import (  # noqa: E402
    code_state,
    in_fold_home,
    newest_version_dir,
    uptime,
)
from benchmarks.scale_bench import recflow_command  # noqa: E402
from benchmarks.serving_bench import CUDART_DIR, perf_analyzer, setup  # noqa: E402
from models.metrics import top_k  # noqa: E402
from recflow.config import ServingConfig, load_settings  # noqa: E402
from serving.item_index import ITEM_INDEX, ItemIndex, export_index  # noqa: E402
from serving.repository import EndpointNames  # noqa: E402
from serving.runtime import QUERIES, RetrievalStage, SimilarStage  # noqa: E402
from serving.server import TritonServer, process_group  # noqa: E402

# (users, items, ratings): the synthetic source allows at most 1,000 ratings per user, and
# about 2 ratings per item at 1M leave most items trained (an item no training row holds shares
# the embedding of Categorify's unknown bucket).
SHAPES = {
    "10k": (5_000, 10_000, 300_000),
    "100k": (3_000, 100_000, 300_000),
    "1m": (3_000, 1_000_000, 2_000_000),
}
RUN_SETS = (
    "ranking.epochs=1",
    "retrieval.epochs=1",
    "item_item.l2_grid=[400]",
    "gate.baselines=[]",
    "serving.ann_min_items=1",
)
ENDPOINTS = ("recommend", "retrieval", "similar")
CONCURRENCY = (1, 4)
RECALL_QUERIES = 500
CHUNK = 50
PROBES = (8, 16, 32, 64, 128)
USERS_PER_REQUEST_SET = 32
SWEEP_ITEMS = (10_000, 30_000, 100_000, 300_000, 1_000_000)
SWEEP_QUERIES = 200
STUB = "triton_python_backend_stub"


@dataclass
class Served:
    ready_s: float
    stub_rss: dict[str, list[int]]
    stub_peak: dict[str, list[int]]
    latency: dict[tuple[str, int], dict[str, float]] = field(default_factory=dict)


def published(home: Path) -> Path | None:
    repo = home / "triton"
    return repo if (repo / "catalog.parquet").is_file() else None


def make_version(name: str, home: Path) -> str:
    """Run the pipeline for size ``name`` into ``home`` unless it holds a published version."""
    if published(home):
        return f"reused {home} (its run.log has the run)"
    users, items, ratings = SHAPES[name]
    sets = [
        f"data.synthetic.n_users={users}",
        f"data.synthetic.n_items={items}",
        f"data.synthetic.n_ratings={ratings}",
        *RUN_SETS,
    ]
    command = recflow_command(home, sets)
    seconds = in_fold_home(command, home, "run.log")
    return f"`{' '.join(command)}`: {seconds:.0f} s"


def exact_copy(repo: Path, target: Path) -> Path:
    """``repo`` without its index files (hard links: the same bytes, no second copy)."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(repo, target, copy_function=os.link, ignore=shutil.ignore_patterns(ITEM_INDEX))
    return target


def stub_rss(server: TritonServer) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """RSS bytes of each Python stub now, and its peak RSS so far (the kernel's VmHWM: loading
    included), by the model it serves (named on its command line)."""
    rss: dict[str, list[int]] = {}
    peak: dict[str, list[int]] = {}
    for pid in process_group(server.pid):
        try:
            process = psutil.Process(pid)
            if process.name() != STUB:
                continue
            model = next((e for e in ENDPOINTS if any(e in arg for arg in process.cmdline())), "?")
            rss.setdefault(model, []).append(process.memory_info().rss)
            status = Path(f"/proc/{pid}/status").read_text().splitlines()
            (high,) = [line.split()[1] for line in status if line.startswith("VmHWM:")]
            peak.setdefault(model, []).append(int(high) * 1024)
        except (psutil.NoSuchProcess, FileNotFoundError):
            continue
    return rss, peak


def requests(version_dir: Path, names: EndpointNames) -> dict[str, dict]:
    """perf_analyzer's input data per endpoint: known users, and items of the catalogue."""
    rng = np.random.default_rng(0)
    with np.load(version_dir / QUERIES) as queries:
        users = rng.choice(queries["ids"], USERS_PER_REQUEST_SET, replace=False)
    catalog = pd.read_parquet(version_dir.parents[1] / "catalog.parquet")["item_id"]
    items = rng.choice(catalog.to_numpy(np.int64), USERS_PER_REQUEST_SET, replace=False)
    return {
        names.model("recommend"): {"data": [{"user_id": [int(u)], "k": [10]} for u in users]},
        names.model("retrieval"): {
            "data": [{"user_id": [int(u)], "k": [100], "exclude_seen": [True]} for u in users]
        },
        names.model("similar"): {"data": [{"item_id": [int(i)], "k": [100]} for i in items]},
    }


def serve(repo: Path, home: Path, cfg: ServingConfig, data: dict, cudart: Path) -> Served:
    server = TritonServer(
        repo,
        cfg,
        log_file=home / "logs" / f"tritonserver-{repo.name}.log",
        backend_cache_dir=home / "cache",
        models=list(data),
    )
    started = time.monotonic()
    server.start()
    try:
        server.wait_ready()
        result = Served(time.monotonic() - started, *stub_rss(server))
        for model, inputs in data.items():
            for concurrency in CONCURRENCY:
                result.latency[(model, concurrency)] = perf_analyzer(
                    server, model, inputs, 1, concurrency, cudart
                )
                print(repo.name, model, concurrency, result.latency[(model, concurrency)])
        return result
    finally:
        server.stop()


def overlap(found: np.ndarray, expected: np.ndarray) -> float:
    """Mean share of each row's exact items (padding left out) that the index also found."""
    shares = [
        len(set(a[a >= 0]) & set(b[b >= 0])) / max(1, (b >= 0).sum())
        for a, b in zip(found, expected, strict=True)
    ]
    return float(np.mean(shares))


def in_chunks(search, rows: int) -> np.ndarray:
    """``search(rows)`` over ``rows`` rows, CHUNK at a time: exact search makes a [rows,
    catalogue] score matrix and top_k's int64 positions of it (about 12 GB for 500 rows at
    1M items)."""
    return np.concatenate([search(slice(i, i + CHUNK)) for i in range(0, rows, CHUNK)])


def recall(index_dir: Path, exact_dir: Path) -> dict[int, dict[str, float]]:
    """recall@100 of the index against exact search per probes: retrieval (seen items left
    out) and similar, with the in-process ms per query of each."""
    rng = np.random.default_rng(1)
    exact, indexed = RetrievalStage(exact_dir), RetrievalStage(index_dir)
    known = exact.known_users.index.to_numpy()
    users = rng.choice(known, min(RECALL_QUERIES, len(known)), replace=False)
    items = rng.choice(exact.item_ids, RECALL_QUERIES, replace=False)
    similar_exact, similar = SimilarStage(exact_dir), SimilarStage(index_dir)
    k = np.full(RECALL_QUERIES, 100)
    started = time.perf_counter()
    expected = in_chunks(lambda rows: exact.top_k(users[rows], 100, True)[0], len(users))
    exact_ms = 1000 * (time.perf_counter() - started) / len(users)
    expected_similar = in_chunks(
        lambda rows: similar_exact({"item_id": items[rows], "k": k[rows]})["item_ids"],
        len(items),
    )
    exported = indexed.index.index.nprobe
    results = {}
    for probes in sorted({*PROBES, exported}):
        indexed.index.index.nprobe = similar.index.index.nprobe = probes
        started = time.perf_counter()
        found = in_chunks(lambda rows: indexed.top_k(users[rows], 100, True)[0], len(users))
        ms = 1000 * (time.perf_counter() - started) / len(users)
        results[probes] = {
            "retrieval": overlap(found, expected),
            "similar": overlap(similar({"item_id": items, "k": k})["item_ids"], expected_similar),
            "index_ms": ms,
            "exact_ms": exact_ms,
            "exported": probes == exported,
        }
        print("probes", probes, results[probes])
    return results


def switch_sweep(version_dir: Path, work: Path) -> list[str]:
    """Where the index starts to pay: the first N items of a version's real embeddings (N in
    SWEEP_ITEMS), each searched exactly (numpy) and through an index built as the export builds
    it (default ``serving.ann_probes``), one query a call as a stub serves one user, for
    SWEEP_QUERIES of the version's user queries; p50 ms of each and the index's recall@100."""
    rng = np.random.default_rng(2)
    stage = RetrievalStage(version_dir)
    queries = stage.queries[rng.choice(len(stage.queries), SWEEP_QUERIES, replace=False)]
    cfg = ServingConfig(ann_min_items=1)
    lines = [
        f"| items | exact p50 ms | index p50 ms | index recall@100 (probes {cfg.ann_probes}) |",
        "|---|---|---|---|",
    ]
    every = stage.vectors()
    for items in [n for n in SWEEP_ITEMS if n <= len(every)]:
        vectors = every[:items]
        export_index(vectors, cfg, work / ITEM_INDEX)
        index = ItemIndex(work / ITEM_INDEX)
        none = (np.empty(0, np.int64),) * 2
        times, found, expected = {"exact": [], "index": []}, [], []
        for query in queries:
            started = time.perf_counter()
            expected.append(top_k(query[None] @ vectors.T, 100)[0])
            times["exact"].append(time.perf_counter() - started)
            started = time.perf_counter()
            found.append(index.top_k(query[None], 100, none)[0])
            times["index"].append(time.perf_counter() - started)
        p50 = {name: 1000 * float(np.median(values)) for name, values in times.items()}
        share = overlap(np.concatenate(found), np.concatenate(expected))
        lines.append(f"| {items:,} | {p50['exact']:.2f} | {p50['index']:.2f} | {share:.4f} |")
        print(lines[-1], flush=True)
    (work / ITEM_INDEX).unlink()
    return lines


def mib(values: list[int]) -> str:
    return " + ".join(f"{v / 2**20:.0f}" for v in sorted(values))


def size_report(
    name: str, made: str, served: dict[str, Served], probes: dict, loads: list[str]
) -> list[str]:
    users, items, ratings = SHAPES[name]
    lines = [
        f"## {name}: {items:,} items ({users:,} users, {ratings:,} ratings)",
        "",
        f"Version: {made}",
        "",
        "| search | Triton ready s | stub RSS MiB: recommend (2 instances); retrieval; similar | "
        "stub peak RSS MiB (loading included), the same stubs | "
        + " | ".join(f"{e.split('_')[-1]} p50/p99 ms c{c}" for e in ENDPOINTS for c in CONCURRENCY)
        + " |",
        "|---|---|---|---|" + "---|" * (len(ENDPOINTS) * len(CONCURRENCY)),
    ]
    for search, result in served.items():
        rss = "; ".join(mib(result.stub_rss.get(e, [])) for e in ENDPOINTS)
        peak = "; ".join(mib(result.stub_peak.get(e, [])) for e in ENDPOINTS)
        cells = []
        for endpoint in ENDPOINTS:
            for concurrency in CONCURRENCY:
                (point,) = [
                    v
                    for (m, c), v in result.latency.items()
                    if m.endswith(endpoint) and c == concurrency
                ]
                cells.append(f"{point['p50_ms']:.1f} / {point['p99_ms']:.1f}")
        lines.append(
            f"| {search} | {result.ready_s:.1f} | {rss} | {peak} | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        "recall@100 of the index against exact search, in-process, "
        f"up to {RECALL_QUERIES} users (retrieval, seen items left out) and {RECALL_QUERIES} "
        f"items (similar); ms per retrieval query in-process, {CHUNK} users a call (Faiss on one "
        "thread, numpy's matrix product on its default threads):",
        "",
        "| probes | retrieval recall@100 | similar recall@100 | index ms/query | exact ms/query |",
        "|---|---|---|---|---|",
    ]
    for count, row in probes.items():
        mark = " (exported)" if row["exported"] else ""
        lines.append(
            f"| {count}{mark} | {row['retrieval']:.4f} | {row['similar']:.4f} | "
            f"{row['index_ms']:.2f} | {row['exact_ms']:.2f} |"
        )
    lines += ["", "Load: " + "; ".join(loads), ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--size", action="append", choices=list(SHAPES), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--sweep", action="store_true", help="only the switch sweep, on each size's version"
    )
    args = parser.parse_args()
    if args.sweep:
        sections = []
        for name in args.size:
            home = args.work_dir / name
            version_dir = newest_version_dir(published(home) / "recflow_retrieval")
            loads = f"Load before: {uptime()}"
            table = switch_sweep(version_dir, home)
            sections += [f"## Switch sweep on the {name} version", "", loads, "", *table, ""]
            sections += [f"Load after: {uptime()}", ""]
        args.out.write_text(report(sections))
        return
    sections = []
    for name in args.size:
        home = args.work_dir / name
        loads = [f"before the run: {uptime()}"]
        made = make_version(name, home)
        settings = load_settings(
            overrides=[
                f"paths.home={home}",
                "serving.grpc_port=0",
                "serving.http_port=0",
                "serving.metrics_port=0",
            ]
        )
        cudart = (
            setup(settings.paths.cache_dir)
            if not (settings.paths.cache_dir / CUDART_DIR).is_dir()
            else settings.paths.cache_dir / CUDART_DIR
        )
        names = EndpointNames(settings.serving.model_prefix)
        repo = published(home)
        version = newest_version_dir(repo / names.model("retrieval")).name
        exact = exact_copy(repo, home / "triton-exact")
        data = requests(repo / names.model("retrieval") / version, names)
        served = {}
        for search, served_repo in (("index", repo), ("exact", exact)):
            loads.append(f"before serving {search}: {uptime()}")
            served[search] = serve(served_repo, home, settings.serving, data, cudart)
        loads.append(f"before recall: {uptime()}")
        probes = recall(
            repo / names.model("retrieval") / version, exact / names.model("retrieval") / version
        )
        loads.append(f"after: {uptime()}")
        sections += size_report(name, made, served, probes, loads)
        args.out.write_text(report(sections))
    print(report(sections))


def report(sections: list[str]) -> str:
    return "\n".join(
        [
            "# Serving large catalogues: exact search against the approximate index (#33)",
            "",
            "Command: `" + " ".join(["python", *sys.argv]) + "`",
            "",
            *code_state(),
            "",
            f"{os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M:%S %Z')}.",
            "",
            *sections,
        ]
    )


if __name__ == "__main__":
    main()
