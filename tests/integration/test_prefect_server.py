"""The pipeline as users run it: a real Prefect server, ``recflow schedule`` serving a scheduled
deployment, a run triggered through the API, its dashboard artifacts, and a cached re-run.

Everything is checked through the server's REST API, as the dashboard sees it. The pipeline runs
twice in this module: once in the shared fixture, once as the cached re-run.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from uuid import UUID

import pytest

from flows import pictures
from flows.reporting import PICTURES, Keys
from recflow.config import RankingConfig

if TYPE_CHECKING:
    # Only for types: tests/conftest.py imports it as a plugin, so pytest rewrites its asserts.
    from tests.support.prefect_server import ScheduledPipeline

pytestmark = pytest.mark.integration


def story(pipeline: ScheduledPipeline, run: UUID) -> tuple[list[dict], dict[str, dict]]:
    """A pipeline run's subflow runs and every artifact they made, by key."""
    subflows = pipeline.server.subflow_runs(run)
    return subflows, pipeline.server.artifacts(run, *(UUID(s["id"]) for s in subflows))


def table(artifact: dict[str, Any]) -> list[dict[str, Any]]:
    return json.loads(artifact["data"])


@pytest.fixture(scope="module")
def first(scheduled_pipeline: ScheduledPipeline) -> tuple[dict, list[dict], dict[str, dict]]:
    run = scheduled_pipeline.server.flow_run(scheduled_pipeline.flow_run_id)
    return (run, *story(scheduled_pipeline, scheduled_pipeline.flow_run_id))


@pytest.fixture(scope="module")
def rerun(scheduled_pipeline: ScheduledPipeline, first) -> tuple[dict, list[dict], dict[str, dict]]:
    """The same deployment run again: nothing changed, so the ETL must come from the cache."""
    server = scheduled_pipeline.server
    run_id = server.trigger(scheduled_pipeline.deployment_id)
    run = server.finished(run_id, scheduled_pipeline.serve_log)
    return (run, *story(scheduled_pipeline, run_id))


def test_deployment_is_scheduled_with_its_parameters(scheduled_pipeline: ScheduledPipeline):
    server = scheduled_pipeline.server
    deployment = server.api("GET", f"/deployments/{scheduled_pipeline.deployment_id}")
    assert deployment["name"] == scheduled_pipeline.deployment_name
    assert [s["schedule"]["cron"] for s in deployment["schedules"]] == [scheduled_pipeline.cron]
    assert deployment["global_concurrency_limit"]["limit"] == 1
    settings = deployment["parameters"]["settings"]
    assert settings["paths"]["home"] == str(scheduled_pipeline.artifacts_home)
    assert settings["data"]["synthetic"]["n_ratings"] == 30000

    body = {
        "flow_runs": {
            "deployment_id": {"any_": [str(scheduled_pipeline.deployment_id)]},
            "state": {"type": {"any_": ["SCHEDULED"]}},
        }
    }
    scheduled = server.api("POST", "/flow_runs/filter", json=body)
    assert scheduled, "the server's scheduler created no run for the cron schedule"
    now = datetime.now(timezone.utc)
    assert all(datetime.fromisoformat(r["expected_start_time"]) > now for r in scheduled)


def test_triggered_run_completes_through_the_serve_process(first, scheduled_pipeline):
    run, subflows, _ = first
    assert run["state"]["type"] == "COMPLETED", run["state"]["message"]
    assert run["name"] == "pipeline-synthetic"
    assert [s["name"].rsplit("-", 1)[0] for s in subflows[:3]] == [
        "fetch-data",
        "build-features",
        "train-models",
    ]
    assert subflows[3]["name"].startswith("evaluate-and-publish-")
    assert {s["state"]["type"] for s in subflows} == {"COMPLETED"}
    ensemble = scheduled_pipeline.artifacts_home / "triton" / "recflow_ranking" / "1"
    assert ensemble.is_dir()


def test_run_tells_its_story_in_artifacts(first, scheduled_pipeline):
    _, _, found = first
    assert set(found) >= {
        # On the pipeline run's own page; a run of one ranker has no contest picture.
        *(key for name, (key, _) in PICTURES.items() if name != pictures.CONTEST),
        Keys.DATASET,
        Keys.FEATURES,
        Keys.ANOMALIES,
        Keys.TRAINING_CURVES,
        Keys.METRICS,
        Keys.GATE,
        Keys.PUBLISHED,
    }
    dataset = {row["field"]: row["value"] for row in table(found[Keys.DATASET])}
    assert dataset["variant"] == "synthetic" and dataset["interactions"] > 0
    assert found[Keys.FEATURES]["description"].startswith("features built: ")
    columns = {(row["table"], row["column"]) for row in table(found[Keys.FEATURES])}
    assert {("features", "user_id"), ("features", "item_id")} <= columns
    assert "accepted" in found[Keys.ANOMALIES]["description"]
    rows = table(found[Keys.TRAINING_CURVES])
    ranker = f"ranking {RankingConfig().architecture}"
    assert {row["model"] for row in rows} == {ranker, "retrieval"}
    for model in (ranker, "retrieval"):
        curves = [row for row in rows if row["model"] == model]
        assert [row["epoch"] for row in curves] == list(range(1, len(curves) + 1))
        assert "loss" in curves[0]
        assert [row["kept"] for row in curves].count("best") == 1
    metrics = {row["metric"]: row for row in table(found[Keys.METRICS])}
    assert metrics["ranking.auc"]["candidate"] > metrics["ranking.auc"]["baseline"]
    assert "**BLESSED**" in found[Keys.GATE]["data"]
    published = found[Keys.PUBLISHED]["data"]
    assert "as version 1" in published
    assert str(scheduled_pipeline.artifacts_home / "triton") in published


def test_recflows_logs_reach_the_run_and_only_they_reach_the_terminal(first, scheduled_pipeline):
    """recflow's loggers are attached to the run; the serve process's output (the terminal of
    ``recflow schedule``, the flow run's included) has them and warnings, not library chatter."""
    run, subflows, _ = first
    logged = scheduled_pipeline.server.logs(UUID(run["id"]), *(UUID(s["id"]) for s in subflows))
    by_logger = {(record["name"], record["message"].split(" ", 2)[0]) for record in logged}
    # A module logger's line (the stage summary) and one logged only for the run (the epochs).
    assert ("flows.stages", "train-models") in by_logger, sorted(by_logger)
    assert ("models.training", "epoch") in by_logger, sorted(by_logger)
    # Prefect's own lines stay in the run's logs.
    assert any(record["message"].startswith("Finished in state") for record in logged)

    terminal = scheduled_pipeline.serve_log.read_text(errors="replace")
    assert "train-models done in" in terminal
    assert "Finished in state" not in terminal
    assert "INFO    | distributed" not in terminal
    assert "distributed.scheduler - INFO" not in terminal  # a worker's own handler's format


def test_cached_rerun_skips_the_etl_and_says_so(rerun, scheduled_pipeline):
    run, subflows, found = rerun
    assert run["state"]["type"] == "COMPLETED", run["state"]["message"]
    build = UUID(subflows[1]["id"])
    (features_task,) = [
        t
        for t in scheduled_pipeline.server.task_runs(build)
        if t["name"].startswith("build-features-")
    ]
    assert features_task["state"]["name"] == "Cached"
    fingerprint = features_task["name"].rsplit("-", 1)[1]
    assert found[Keys.FEATURES]["description"].startswith(f"features reused: {fingerprint}")
    assert found[Keys.DATASET]["description"].startswith("dataset reused: ")
    assert "as version 2" in found[Keys.PUBLISHED]["data"]
