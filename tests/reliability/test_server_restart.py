"""Triton killed (SIGKILL) and restarted: it comes back with the last published versions and
answers, and the client's retries of UNAVAILABLE bridge the outage within the call's deadline."""

from __future__ import annotations

import os
import signal
import threading
import time

import grpc
import numpy as np
import pytest

from recflow_client import RecflowClient, TritonRequestError
from serving.server import SHM_DIR, process_group
from tests.support.processes import ready_versions, version_dirs, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

SHORT_DEADLINE_S = 2.0


def test_killed_server_restarts_with_the_last_published_versions(
    published, server, endpoint, observe
) -> None:
    repo = published.settings.paths.triton_repo
    keep = published.settings.serving.keep_versions
    names = endpoint.all_models
    # What a fresh start must serve: the newest keep_versions of each model on disk.
    expected = {name: version_dirs(repo, name)[-keep:] for name in names}
    pid = server.pid
    assert pid is not None and process_group(pid)

    os.kill(pid, signal.SIGKILL)
    wait_until("tritonserver gone", lambda: not server.is_running(), 30)
    killed_at = time.monotonic()

    # A call with a short deadline fails with a transport error, in about its deadline.
    prefix = server.config.model_prefix
    with RecflowClient(server.grpc_url, SHORT_DEADLINE_S, model_prefix=prefix) as impatient:
        started = time.monotonic()
        with pytest.raises(TritonRequestError) as refused:
            impatient.score(1, [1, 2, 3])
        short_call_s = time.monotonic() - started
    assert refused.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    # It retried for most of its deadline (the last backoff step may not fit), not longer.
    assert SHORT_DEADLINE_S / 2 < short_call_s < SHORT_DEADLINE_S + 1.0

    # A call with a deadline long enough for a restart is issued while the server is down.
    deadline_s = server.config.startup_timeout_s
    outcome: dict[str, object] = {}

    def patient_call() -> None:
        with RecflowClient(server.grpc_url, deadline_s, model_prefix=prefix) as patient:
            started = time.monotonic()
            try:
                outcome["scores"] = patient.score(1, [1, 2, 3])
            except TritonRequestError as error:
                outcome["error"] = error
            outcome["seconds"] = time.monotonic() - started

    caller = threading.Thread(target=patient_call)
    caller.start()
    time.sleep(1.0)  # the call is retrying against a dead port now
    server.stop()  # sweeps the orphaned Python stubs and their shared memory
    assert not process_group(pid) and not list(SHM_DIR.glob(f"{server.shm_prefix}*"))
    server.start()
    server.wait_ready()
    restarted_s = time.monotonic() - killed_at
    caller.join(deadline_s)

    served = ready_versions(server.grpc_url)
    with RecflowClient.from_config(server.config) as client:
        recommended = client.recommend(1, k=5)
    observe(
        killed_pid=pid,
        short_deadline_error=refused.value.code.name,
        short_call_seconds=round(short_call_s, 2),
        restart_seconds=round(restarted_s, 1),
        patient_call_seconds=round(float(outcome.get("seconds", -1)), 1),
        patient_call_error=str(outcome.get("error", "")),
        versions_expected=expected,
        versions_served=served,
    )
    assert "error" not in outcome, outcome["error"]
    assert isinstance(outcome["scores"], np.ndarray) and outcome["scores"].shape == (3,)
    assert float(outcome["seconds"]) < deadline_s
    assert served == expected
    assert len(recommended) == 5
