"""The registry's records and state transitions, and `recflow models`, without models or servers.

Exports are replaced by a counter: what is checked here is which candidate gets published when,
and what is recorded. tests/integration/test_gate_registry.py does the same with real exports
and a real Triton.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest

from cli.models import EXIT_TRIAL_FAILED
from recflow import registry as reg
from recflow.config import Settings, load_settings
from recflow.registry import (
    CandidateRecord,
    Evaluation,
    GateCheck,
    GateDecision,
    Lineage,
    Registry,
    RegistryError,
    TrialResult,
    check_id,
)
from release import publish as release
from release.publish import promote, publish, rollback
from tests.support.cli import cli_for

A, B, C = "20250101T000000Z-aaaaaa", "20250102T000000Z-bbbbbb", "20250103T000000Z-cccccc"


@pytest.fixture
def settings(tmp_path) -> Settings:
    return load_settings(overrides=[f"paths.home={tmp_path}", "trial.enabled=false"])


@pytest.fixture
def registry(settings) -> Registry:
    return Registry.from_settings(settings)


@pytest.fixture(autouse=True)
def exports(monkeypatch) -> list[str]:
    """Stand-ins for a candidate's export (its id) and for installing it into the live
    repository (version N+1)."""
    installed: list[str] = []

    def install(candidate, repo, cfg):
        installed.append(candidate)
        return len(installed)

    monkeypatch.setattr(release, "exported_candidate", lambda registry, record, cfg: record.id)
    monkeypatch.setattr(release, "install", install)
    return installed


def publish_gated(registry: Registry, candidate_id: str, settings: Settings, reason: str):
    """Publish as the pipeline does, with the record and export the gate handed over."""
    return publish(registry, registry.load(candidate_id), candidate_id, settings.release, reason)


def record(candidate_id: str, blessed: bool = True, compared_with: str | None = None):
    check = GateCheck(
        metric="ranking.auc", kind="absolute", value=0.8, op=">=", bound=0.6, passed=blessed
    )
    return CandidateRecord(
        id=candidate_id,
        created=datetime(2025, 1, 1, tzinfo=timezone.utc),
        features=Path("/features/f"),
        models={"ranking": Path(f"/models/{candidate_id}/ranking")},
        lineage=Lineage(
            run_id=candidate_id,
            variant="synthetic",
            data_checksum="d" * 64,
            features_fingerprint="f" * 16,
            workflow_sha256="w" * 64,
            schema_sha256="s" * 64,
            features_config={},
            params={"epochs": 1},
            code_version="0.1.0",
        ),
        evaluation=Evaluation(
            rows=10,
            metrics={"ranking.auc": 0.8},
            baseline_metrics={"ranking.auc": 0.7},
            compared_with=compared_with,
        ),
        training_metrics={"ranking.auc": 0.8},
        gate={},
        decision=GateDecision(checks=(check,), compared_with=compared_with),
    )


def add(registry: Registry, tmp_path: Path, *records: CandidateRecord) -> None:
    schema = tmp_path / "schema.pbtxt"
    schema.write_text("feature {}\n")
    sample = pd.DataFrame({"user_id": [1], "item_id": [2], "score": [0.5]})
    seen = pd.DataFrame({"user_id": [1], "item_id": [2]})
    for one in records:
        registry.add(one, sample, seen, schema)


@pytest.mark.parametrize(
    "bad", ["", "../x", "a/b", ".hidden", "-x", "x" * 81, "a b", "a.b", "..", "/etc"]
)
def test_candidate_ids_are_checked_before_touching_the_file_system(registry, bad):
    with pytest.raises(ValueError, match="not a candidate id"):
        registry.path(bad)
    with pytest.raises(ValueError):
        registry.load(bad)


def test_run_ids_are_candidate_ids():
    assert check_id(A) == A


def test_records_are_stored_listed_and_loaded(registry, tmp_path):
    assert registry.ids() == [] and registry.serving() is None
    add(registry, tmp_path, record(B), record(A))
    (registry.candidates_dir / ".x.staging-123").mkdir()
    assert registry.ids() == [A, B]
    loaded = registry.load(A)
    assert loaded == record(A)
    assert (registry.path(A) / "schema.pbtxt").read_text() == "feature {}\n"
    assert registry.trial_sample(A)["score"].tolist() == [0.5]
    with pytest.raises(RegistryError, match="no candidate"):
        registry.load(C)
    with pytest.raises(FileExistsError):
        add(registry, tmp_path, record(A))


def test_publish_needs_a_blessing_a_trial_and_the_current_baseline(registry, settings, tmp_path):
    add(registry, tmp_path, record(A), record(B, blessed=False), record(C, compared_with=B))
    with pytest.raises(RegistryError, match="NOT_BLESSED"):
        publish_gated(registry, B, settings, "r")
    with pytest.raises(RegistryError, match="judged against"):
        publish_gated(registry, C, settings, "r")
    registry.record_trial(C, TrialResult(passed=False, at=reg.now(), message="no load"))
    with pytest.raises(RegistryError, match="failed trial serving: no load"):
        publish_gated(registry, C, settings, "r")
    trial_on = with_trial(settings)
    with pytest.raises(RegistryError, match="not been through trial serving"):
        publish_gated(registry, A, trial_on, "r")
    registry.record_trial(A, TrialResult(passed=True, at=reg.now()))
    event = publish_gated(registry, A, trial_on, "run A")
    assert (event.candidate, event.version, event.previous, event.action) == (A, 1, None, "publish")
    state = registry.state()
    assert (state.serving, state.version) == (A, 1)
    assert registry.serving() == registry.load(A)
    assert registry.load(A).events == (event,)
    assert registry.load(A).trial.passed


def test_rollback_and_promote_record_who_why_and_when(registry, settings, tmp_path, exports):
    add(registry, tmp_path, record(A), record(B, compared_with=A), record(C, blessed=False))
    with pytest.raises(RegistryError, match="nothing is serving"):
        rollback(registry, settings.release, "r")
    publish_gated(registry, A, settings, "run A")
    with pytest.raises(RegistryError, match="only candidate"):
        rollback(registry, settings.release, "r")
    publish_gated(registry, B, settings, "run B")

    back = rollback(registry, settings.release, "B hurts CTR")
    assert (back.candidate, back.version, back.previous, back.reason) == (A, 3, B, "B hurts CTR")
    assert exports == [A, B, A]
    assert (registry.state().serving, registry.state().version) == (A, 3)
    assert [e.action for e in registry.load(A).events] == ["publish", "rollback"]
    assert [e.candidate for e in registry.state().history] == [A, B, A]

    with pytest.raises(RegistryError, match="never served"):
        rollback(registry, settings.release, "r", to=C)
    with pytest.raises(RegistryError, match="NOT_BLESSED"):
        promote(registry, C, settings.release, "r")
    again = promote(registry, B, settings.release, "fixed upstream")
    assert (again.candidate, again.version, again.action, again.previous) == (B, 4, "promote", A)
    assert rollback(registry, settings.release, "r", to=A).version == 5
    state = json.loads((registry.root / "state.json").read_text())
    assert state["serving"] == A and len(state["history"]) == 5


def with_trial(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"trial": settings.trial.model_copy(update={"enabled": True})}
    )


@pytest.fixture
def cli(settings):
    return cli_for(settings)


def test_cli_lists_shows_promotes_and_rolls_back(cli, registry, settings, tmp_path):
    add(registry, tmp_path, record(A), record(B, compared_with=A), record(C, blessed=False))
    publish_gated(registry, A, settings, "run A")

    listed = cli("list")
    assert listed.exit_code == 0, listed.output
    assert A in listed.output and "NOT_BLESSED" in listed.output and "version 1" in listed.output
    # Every id whole, on one line, as a script reading the table piped would need it.
    rows = [line for line in listed.output.splitlines() if B in line]
    assert len(rows) == 1 and "NOT_BLESSED" not in rows[0]
    as_json = json.loads(cli("list", "--json").output)
    assert [row["id"] for row in as_json] == [A, B, C]
    assert (as_json[0]["serving"], as_json[0]["ranking.auc"]) == ("version 1", 0.8)

    shown = cli("show", A)
    assert shown.exit_code == 0, shown.output
    assert "ranking.auc" in shown.output and "publish as version 1" in shown.output
    assert json.loads(cli("show", A, "--json").output)["id"] == A

    assert cli("show", "../../etc").exit_code == 2
    assert cli("show", C[:-1] + "d").exit_code == 1
    assert cli("promote", C, "--reason", "try").exit_code == 1
    assert cli("promote", B, "--reason", " ").exit_code == 2

    promoted = cli("promote", B, "--reason", "better on the new data")
    assert promoted.exit_code == 0, promoted.output
    assert registry.state().serving == B
    rolled = cli("rollback", "--reason", "latency regression")
    assert rolled.exit_code == 0, rolled.output
    assert "serves as version 3" in rolled.output
    assert registry.load(A).events[-1].reason == "latency regression"
    assert cli("rollback", "--reason", "x", "--to", "a/../b").exit_code == 2


def test_cli_exit_code_when_trial_serving_blocks(registry, settings, tmp_path, monkeypatch):
    from release import trial

    add(registry, tmp_path, record(A))
    failed = TrialResult(passed=False, at=reg.now(), message="model did not load")

    def failing(registry, record, candidate, cfg):
        raise trial.TrialServingFailed(record.id, failed)

    monkeypatch.setattr(release, "infra_validate", failing)
    result = cli_for(with_trial(settings))("promote", A, "--reason", "go")
    assert result.exit_code == EXIT_TRIAL_FAILED
    assert "model did not load" in result.output
    assert registry.state().serving is None


def test_a_piped_listing_keeps_every_id_whole(registry, settings, tmp_path):
    """`recflow models list > file`: rich fitted tables into 80 columns when not writing to a
    terminal, cutting every id to ``20250…``."""
    add(registry, tmp_path, record(A), record(B, compared_with=A))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    recflow = Path(sys.executable).with_name("recflow")
    done = subprocess.run(
        [recflow, "--home", settings.paths.home, "models", "list"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    assert A in done.stdout and B in done.stdout, done.stdout
