"""Two ``recflow run`` processes started together on one home: publishing is serialised by the
publish lock; exactly one run publishes what it was judged for, and the other either waits and
publishes the next version (when it was judged against the first) or exits with a clear
refusal. The repository and the registry agree afterwards."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import REPO_ROOT, finish, leftovers, version_dirs
from tests.support.settings import SMALL_DATA

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

RUN_TIMEOUT_S = 900.0
RECFLOW = Path(sys.executable).with_name("recflow")
# The gate is not what this test is about: no bound may refuse a one-epoch model.
OPEN_GATE = [
    "gate.ranking.auc.min_value=null",
    "gate.ranking.auc.min_change=null",
    "gate.ranking.auc.min_baseline_gain=null",
    "gate.ranking.logloss.min_relative_change=null",
    "gate.retrieval.recall@10.min_change=null",
    "gate.retrieval.recall@10.min_baseline_gain=null",
    # Two one-epoch runs' recommend lists differ by more than 0.01 (each chooses its own blend
    # with the item-item source on validation): the second must not be refused for that.
    "gate.recommend.recall@10.min_change=null",
    "gate.recommend.recall@10.min_baseline_gain=null",
    "gate.recommend.recall@10.min_reference_gain=null",
    # ... nor trail EASE by more than a quarter, as a one-epoch model does: none are fitted.
    "gate.baselines=[]",
]
SETTINGS = [
    *SMALL_DATA,
    "ranking.epochs=1",
    "retrieval.epochs=1",
    "trial.enabled=false",
    "orchestration.publish_lock_timeout_s=600",
    *OPEN_GATE,
]


def recflow_run(home: Path, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    overrides = [arg for pair in SETTINGS for arg in ("--set", pair)]
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(RECFLOW), "--home", str(home), *overrides, "run"],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def test_two_runs_started_together_publish_one_at_a_time(
    published, prefect_harness, tmp_path: Path, observe
) -> None:
    from prefect.settings import PREFECT_API_URL

    home = tmp_path / "home"
    for name in ("data", "features"):  # the ETL is reused: the runs differ from here on
        shutil.copytree(published.settings.paths.home / name, home / name)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    logs = [tmp_path / f"run-{n}.log" for n in (1, 2)]
    runs = [recflow_run(home, log, env) for log in logs]
    codes = [finish_quietly(run) for run in runs]
    outputs = [log.read_text(errors="replace") for log in logs]

    state_file = home / "registry" / "state.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    history = state.get("history", [])
    repo = home / "triton"
    ranking = f"{published.settings.serving.model_prefix}_ranking"
    versions = version_dirs(repo, ranking) if (repo / ranking).is_dir() else []
    lines = [line for text in outputs for line in text.splitlines()]
    published_lines = [line for line in lines if line.startswith("Published")]
    observe(
        exit_codes=codes,
        publishes=[(event["candidate"], event["version"]) for event in history],
        ranking_versions_on_disk=versions,
        published_lines=published_lines,
        refusal=[reason(text) for text, code in zip(outputs, codes, strict=True) if code != 0],
    )
    assert sorted(codes) in ([0, 0], [0, 1]), [tail(text) for text in outputs]
    # Each publish is one new version, in order; none was written twice or half.
    assert [event["version"] for event in history] == list(range(1, len(history) + 1))
    assert versions == [event["version"] for event in history]
    assert len(history) == codes.count(0)
    assert state["serving"] == history[-1]["candidate"]
    assert leftovers(repo) == []
    if codes.count(0) == 2:
        # The second waited for the lock and was judged against the first.
        assert history[1]["previous"] == history[0]["candidate"]
    else:
        refused = outputs[codes.index(1)]
        assert "serves now" in refused or "publish lock" in refused, tail(refused)


def finish_quietly(run: subprocess.Popen[bytes]) -> int:
    code, _ = finish(run, RUN_TIMEOUT_S)
    return code


def reason(text: str) -> str:
    """The refusal the CLI printed: its last line naming the error."""
    lines = [line.strip() for line in text.splitlines()]
    found = [line for line in lines if "RegistryError:" in line or "LockTimeout:" in line]
    return found[-1] if found else tail(text, 3)


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.splitlines()[-lines:])
