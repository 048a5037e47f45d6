"""Load: N >= 8 concurrent gRPC clients on ``*_ranking`` and ``*_recommend`` for at least 60 s,
with a hot swap to a new version in the middle: zero failed requests, p99 latency reported
before, during and after the swap (test-artifacts/reliability.json)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pandas as pd
import pytest

from recflow_client import RecflowClient, TritonRequestError
from tests.support.processes import ready_versions

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

CLIENTS = 8  # half on ranking (one user, 100 candidates a request), half on recommend (k=10)
SOAK_S = 60.0
SWAP_AFTER_S = 20.0
MIN_AFTER_SWAP_S = 10.0
CANDIDATES = 100
SOAKED = ("ranking", "recommend")


def p99_ms(latencies: list[float]) -> float | None:
    return round(float(np.percentile(latencies, 99)) * 1000, 1) if latencies else None


def test_soak_with_a_hot_swap_fails_no_request(published, server, endpoint, observe) -> None:
    users = pd.read_parquet(published.raw.interactions)["user_id"].unique()[:CLIENTS]
    items = list(range(1, CANDIDATES + 1))
    stop = threading.Event()
    # (start time, endpoint, seconds) per answered request; failures as messages.
    answered: list[tuple[float, str, float]] = []
    failures: list[str] = []

    def stream(worker: int) -> None:
        stage = "ranking" if worker % 2 == 0 else "recommend"
        user = int(users[worker % len(users)])
        # No retries: a request the swap disturbed must show up as a failure, not be hidden.
        with RecflowClient.from_config(server.config, retries=0) as client:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    if stage == "ranking":
                        assert len(client.score(user, items)) == CANDIDATES
                    else:
                        assert len(client.recommend(user, k=10)) == 10
                except (TritonRequestError, AssertionError) as error:
                    failures.append(f"{stage}: {error}")
                    continue
                answered.append((started, stage, time.monotonic() - started))

    before = ready_versions(server.grpc_url)
    threads = [threading.Thread(target=stream, args=(n,)) for n in range(CLIENTS)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        time.sleep(SWAP_AFTER_S)
        swap_began = time.monotonic()
        version = published.export()
        for name in SOAKED:
            server.load(endpoint.model(name))
        swap_ended = time.monotonic()
        time.sleep(max(MIN_AFTER_SWAP_S, SOAK_S - (swap_ended - began)))
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    ended = time.monotonic()
    after = ready_versions(server.grpc_url)

    phases = {
        "before": [s for t, _, s in answered if t < swap_began],
        "during": [s for t, _, s in answered if swap_began <= t < swap_ended],
        "after": [s for t, _, s in answered if t >= swap_ended],
    }
    stages = [stage for _, stage, _ in answered]
    by_stage = {stage: stages.count(stage) for stage in ("ranking", "recommend")}
    observe(
        clients=CLIENTS,
        seconds=round(ended - began, 1),
        swap_seconds=round(swap_ended - swap_began, 1),
        requests_sent=len(answered) + len(failures),
        requests_failed=len(failures),
        requests_by_endpoint=by_stage,
        p99_ms={phase: p99_ms(values) for phase, values in phases.items()},
        requests_by_phase={phase: len(values) for phase, values in phases.items()},
        versions_before=before,
        versions_after=after,
        first_failures=failures[:5],
    )
    assert failures == []
    assert ended - began >= SOAK_S
    assert all(phases.values()), {phase: len(values) for phase, values in phases.items()}
    assert all(by_stage.values())
    for name in (endpoint.model("ranking"), endpoint.model("recommend")):
        assert max(after[name]) == version > max(before[name])
