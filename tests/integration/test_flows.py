"""The flows' control paths, on a temporary Prefect server, with the heavy stages faked.

The fakes write real artifact directories (manifests, a schema, a parquet part) so that the
flows, the features cache and the dashboard reports run exactly as they do on real data.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from merlin.schema import ColumnSchema, Schema, Tags
from merlin.schema.io.tensorflow_metadata import TensorflowMetadata
from prefect import task
from typer.testing import CliRunner

import flows.stages
import tasks.download
from cli.app import EXIT_INVALID_DATA, app
from flows.pipeline import pipeline
from flows.reporting import Keys, published_markdown
from flows.stages import as_settings, fetch_data
from recflow.artifacts import (
    MANIFEST,
    Anomaly,
    ColumnStats,
    ExportedCandidate,
    FeatureSet,
    Profile,
    Published,
    RankingModel,
    RawDataset,
    RetrievalModel,
    TrainedModel,
    ValidationReport,
)
from recflow.config import Settings, load_settings
from recflow.locks import LockTimeout, exclusive_lock
from recflow.registry import CandidateRecord, Evaluation, Event
from release.gate import GateFailed, Judged, judge
from tasks.checksums import ChecksumMismatch
from tasks.data_checks import DataValidationError
from tasks.features import fingerprint
from tasks.transfer import TransferFailed
from tasks.validate import REPORT
from tests.support.prefect_server import latest_artifact


def saved_model(
    kind: type[TrainedModel], features: FeatureSet, out: Path, **fields
) -> TrainedModel:
    """A trained-model manifest for ``features`` at ``out``, as a trainer would leave it."""
    out.mkdir(parents=True)
    model = kind(
        path=out,
        features_fingerprint=features.fingerprint,
        params={},
        best_epoch=1,
        train_seconds=1.0,
        train_examples_per_s=3.0,
        **fields,
    )
    model.save_manifest()
    return model


class FakeStages:
    """Stand-ins for the heavy stages; the gate applies the real ``judge`` to the model's AUC."""

    def __init__(self, auc: float, anomalies: tuple[Anomaly, ...] = ()) -> None:
        self.auc = auc
        self.anomalies = list(anomalies)
        stages = ("fetch", "features", "features_rebuilt", "train", "publish")
        self.calls: dict[str, int] = dict.fromkeys(stages, 0)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        fakes = {
            "fetch_dataset_task": self.fetch,
            "build_features_task": self.features,
            "validate_features_task": self.validate,
            "train_ranking_task": self.train,
            "train_retrieval_task": self.train_retrieval,
            "fit_item_item_task": self.fit_item_item,
            "choose_ordering_task": self.choose_ordering,
            "gate_task": self.gate,
            "publish_task": self.publish,
        }
        for name, fake in fakes.items():
            monkeypatch.setattr(flows.stages, name, task(name=fake.__name__)(fake))

    def fetch(self, data, paths) -> RawDataset:
        self.calls["fetch"] += 1
        out = paths.raw_dir / "fake"
        if (out / MANIFEST).is_file():
            return RawDataset.load(out)
        out.mkdir(parents=True)
        raw = RawDataset(
            path=out,
            variant=data.variant,
            checksum="c0ffee",
            n_interactions=3,
            n_users=2,
            n_items=2,
            users_features=None,
        )
        raw.save_manifest()
        return raw

    def features(
        self, raw: RawDataset, cfg, validation, compute, features_dir: Path, rebuild: bool = False
    ) -> FeatureSet:
        self.calls["features"] += 1
        self.calls["features_rebuilt"] += rebuild
        key = fingerprint(raw, cfg, validation)
        out = features_dir / key
        (out / "train").mkdir(parents=True, exist_ok=True)
        schema = Schema(
            [
                ColumnSchema("user_id", dtype=np.int64, tags=[Tags.CATEGORICAL, Tags.USER_ID]),
                ColumnSchema("rating_binary", dtype=np.int32, tags=[Tags.TARGET]),
            ]
        )
        TensorflowMetadata.from_merlin_schema(schema).to_proto_text_file(str(out / "train"))
        stats = ColumnStats(dtype="int64", count=3, nulls=0, min=1.0, max=2.0, cardinality=2)
        (out / "statistics").mkdir(exist_ok=True)
        profile = Profile(
            tables={"interactions": {"user_id": stats}, "features": {"user_id": stats}}
        )
        (out / "statistics" / "statistics.json").write_text(profile.model_dump_json())
        features = FeatureSet(
            path=out,
            fingerprint=key,
            variant=raw.variant,
            n_train=3,
            n_valid=1,
            cardinalities={"user_id": 3},
        )
        features.save_manifest()
        return features

    def validate(
        self, features: FeatureSet, features_dir: Path, cfg, raw: RawDataset
    ) -> ValidationReport:
        report = ValidationReport(
            fingerprint=features.fingerprint,
            baseline=None,
            checked_at="now",
            anomalies=self.anomalies,
            cleaning={},
        )
        blocking = [anomaly for anomaly in self.anomalies if anomaly.blocking]
        if blocking:  # as validate_features does: the report on disk, the blockers raised
            (features.path / REPORT).write_text(report.model_dump_json())
            raise DataValidationError(blocking, str(features.path / REPORT))
        return report

    def train(self, features: FeatureSet, cfg, model_dir: Path, parallel) -> RankingModel:
        self.calls["train"] += 1
        return saved_model(
            RankingModel,
            features,
            model_dir,
            metrics={"auc": self.auc},
            baseline_metrics={"auc": 0.55},
            history=[{"loss": 0.7, "auc": 0.6, "val_auc": self.auc}],
        )

    def train_retrieval(self, features: FeatureSet, cfg, model_dir: Path, parallel):
        return saved_model(
            RetrievalModel,
            features,
            model_dir,
            metrics={"recall@10": 0.3},
            baseline_metrics={"recall@10": 0.2},
            history=[{"loss": 2.0, "recall@10": 0.3}],
            n_items=2,
            dim=4,
        )

    def fit_item_item(self, features, cfg, model_dir) -> None:
        return None  # the stand-in candidates have no item-item source

    def choose_ordering(self, candidate, cfg, retrieval_candidates):
        return candidate

    def gate(self, raw, contenders, settings) -> Judged:
        (candidate,) = contenders
        ranking = candidate.ranking
        evaluation = Evaluation(
            rows=1,
            metrics={"ranking.auc": ranking.metrics["auc"]},
            baseline_metrics={"ranking.auc": ranking.baseline_metrics["auc"]},
        )
        record = CandidateRecord.model_construct(
            id=candidate.run_id, evaluation=evaluation, decision=judge(evaluation, settings.gate)
        )
        if not record.decision.blessed:
            raise GateFailed(record)
        exported = ExportedCandidate.model_construct(candidate=record.id, stages=("ranking",))
        return Judged(record, (record,), exported)

    def publish(self, registry, record, candidate, cfg, reason: str) -> Event:
        self.calls["publish"] += 1
        cfg.paths.triton_repo.mkdir(parents=True, exist_ok=True)
        return Event.model_construct(candidate=record.id, version=self.calls["publish"])


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(overrides=[f"paths.home={tmp_path}", "trial.enabled=false"])


def test_gate_failure_fails_the_run_with_the_reason_and_publishes_nothing(
    prefect_harness, settings, monkeypatch
):
    stages = FakeStages(auc=0.51)
    stages.install(monkeypatch)

    state = pipeline(settings, return_state=True)

    assert state.is_failed()
    assert "NOT_BLESSED" in state.message and "ranking.auc = 0.5100" in state.message
    assert stages.calls["publish"] == 0
    assert not settings.paths.triton_repo.exists()
    gate = latest_artifact(Keys.GATE)["data"]
    assert "NOT_BLESSED" in gate and "**FAIL**" in gate
    # Table artifacts hold their rows as JSON.
    assert json.loads(latest_artifact(Keys.METRICS)["data"])[0]["candidate"] == 0.51
    # `recflow run` maps this exception to its exit code 3.
    with pytest.raises(GateFailed):
        pipeline(settings)


def test_invalid_data_exits_with_its_own_code_naming_the_anomalies(
    prefect_harness, settings, monkeypatch
):
    out_of_range = Anomaly(
        table="interactions",
        column="rating",
        check="out_of_range",
        expected="values in [0.5, 5.0]",
        found="12 rows above 5.0",
        blocking=True,
    )
    stages = FakeStages(auc=0.9, anomalies=(out_of_range,))
    stages.install(monkeypatch)

    # Wide enough that rich does not wrap the message.
    result = CliRunner(env={"COLUMNS": "1000"}).invoke(
        app, ["--home", str(settings.paths.home), "--set", "trial.enabled=false", "run"]
    )

    assert result.exit_code == EXIT_INVALID_DATA == 5, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert "data validation failed with 1 anomalies" in result.output
    assert str(out_of_range) in result.output  # "[BLOCKING] interactions.rating: ..." as written
    assert stages.calls["train"] == 0 and not settings.paths.triton_repo.exists()


def test_rerun_reuses_cached_features_and_force_rebuilds_them(
    prefect_harness, settings, monkeypatch
):
    stages = FakeStages(auc=0.9)
    stages.install(monkeypatch)

    first = pipeline(settings)
    assert first.version == 1 and first.metrics == {"ranking.auc": 0.9}
    assert latest_artifact(Keys.FEATURES)["description"].startswith("features built: ")
    for key in (Keys.DATASET, Keys.ANOMALIES, Keys.TRAINING_CURVES, Keys.METRICS, Keys.GATE):
        assert latest_artifact(key)["data"]
    assert "as version 1" in latest_artifact(Keys.PUBLISHED)["data"]

    second = pipeline(settings)
    assert stages.calls["features"] == 1, "unchanged ETL must come from the cache"
    assert second.version == 2
    features_note = latest_artifact(Keys.FEATURES)["description"]
    assert features_note.startswith(f"features reused: {second.features.name}")
    assert latest_artifact(Keys.DATASET)["description"] == "dataset reused: c0ffee"

    pipeline(settings, force=True)
    assert stages.calls["features"] == 2
    # The stage must be told to rebuild: a build it finds on disk would otherwise be returned.
    assert stages.calls["features_rebuilt"] == 1


def test_download_is_retried_when_the_source_is_unreachable(prefect_harness, settings, monkeypatch):
    flaky = FakeStages(auc=0.9)
    failures = iter([TransferFailed("connection reset")])

    def fetch_dataset(data, paths):
        for failure in failures:
            raise failure
        return flaky.fetch(data, paths)

    monkeypatch.setattr(tasks.download, "fetch_dataset", fetch_dataset)
    # The real task and its retry policy, minus the wait between attempts.
    fast = tasks.download.fetch_dataset_task.with_options(retry_delay_seconds=0)
    monkeypatch.setattr(flows.stages, "fetch_dataset_task", fast)

    raw = fetch_data(settings)

    assert raw.checksum == "c0ffee" and flaky.calls["fetch"] == 1


def test_download_is_not_retried_when_the_archive_is_wrong(prefect_harness, settings, monkeypatch):
    attempts = []

    def fetch_dataset(data, paths):
        attempts.append(data.variant)
        raise ChecksumMismatch("ml-100k.zip", "sha256", "aa", "bb", "pinned")

    monkeypatch.setattr(tasks.download, "fetch_dataset", fetch_dataset)
    fast = tasks.download.fetch_dataset_task.with_options(retry_delay_seconds=0)
    monkeypatch.setattr(flows.stages, "fetch_dataset_task", fast)

    state = fetch_data(settings, return_state=True)

    assert state.is_failed() and "sha256 mismatch" in state.message
    assert len(attempts) == 1


def test_flow_parameters_may_be_a_settings_object_json_or_absent(tmp_path, monkeypatch):
    monkeypatch.setenv("RECFLOW_PATHS__HOME", str(tmp_path))
    given = load_settings(overrides=["data.variant=ml-100k"])
    assert as_settings(given) is given
    assert as_settings(given.model_dump(mode="json")) == given
    assert as_settings(None).paths.home == tmp_path


def test_published_report_names_each_version_directory(tmp_path):
    published = Published(candidate="r1", version=7, repository=tmp_path, models=["a", "b"])
    text = published_markdown(published)
    assert f"`{tmp_path / 'a' / '7'}`" in text and f"`{tmp_path / 'b' / '7'}`" in text


def test_publish_lock_waits_for_its_holder_then_gives_up(tmp_path):
    lock = tmp_path / "repo.lock"
    holders = []
    with exclusive_lock(lock, timeout_s=0):
        # flock locks belong to open files, so a second open() contends even in one process.
        worker = threading.Thread(target=_try_lock, args=(lock, holders))
        worker.start()
        worker.join()
    assert isinstance(holders[-1], LockTimeout)
    assert holders[0].startswith("pid ")
    with exclusive_lock(lock, timeout_s=0):
        pass  # released by its holder: free again


def _try_lock(lock: Path, seen: list) -> None:
    try:
        with exclusive_lock(lock, timeout_s=0.5, on_wait=seen.append):
            pass
    except LockTimeout as exc:
        seen.append(exc)
