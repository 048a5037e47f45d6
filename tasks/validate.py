"""Data validation's acceptance step: a feature build against the last accepted one.

The feature build records statistics of its inputs and output schema (``tasks/statistics.py``);
``validate_features`` compares them with the last accepted build's (``tasks/data_checks.py``),
writes the report and, if nothing blocks, makes the build the new baseline. A blocking anomaly
raises ``DataValidationError`` before anything trains on the data.

The baseline is ``<features_dir>/accepted.json``, which names the last accepted feature build; it
is replaced atomically, and only when a build passes (docs/features.md).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

from prefect import task

from recflow.artifacts import FeatureSet, RawDataset, ValidationReport
from recflow.atomic import write_text_atomic
from recflow.config import ValidationConfig
from tasks.data_checks import DataValidationError, compare, unseen_share
from tasks.download import source_cleaning

log = logging.getLogger(__name__)

ACCEPTED = "accepted.json"
REPORT = "validation.json"


def accepted_fingerprint(features_dir: Path) -> str | None:
    """Fingerprint of the last accepted feature build under ``features_dir``, if any."""
    path = Path(features_dir) / ACCEPTED
    return json.loads(path.read_text())["fingerprint"] if path.exists() else None


def accept(features: FeatureSet, features_dir: Path) -> None:
    record = {"fingerprint": features.fingerprint, "accepted_at": _now()}
    write_text_atomic(Path(features_dir) / ACCEPTED, json.dumps(record, indent=2))


def validate_features(
    features: FeatureSet,
    features_dir: Path,
    cfg: ValidationConfig,
    source_cleaning: Mapping[str, int] | None = None,
) -> ValidationReport:
    """Check ``features`` against the accepted build; write the report; accept it if it passes.

    Raises ``DataValidationError`` listing the blocking anomalies; the report is written first,
    to ``<features>/validation.json``. ``source_cleaning`` (the rows normalisation dropped from
    the source, ``tasks.download.source_cleaning``) is counted in the report as ``source: ...``.
    """
    base_fp = accepted_fingerprint(features_dir)
    baseline = (
        None
        if base_fp in (None, features.fingerprint)
        else FeatureSet.load(Path(features_dir) / base_fp)
    )
    new = features.profile()
    unseen = None
    if baseline is not None:
        unseen = {
            column: unseen_share(features.id_counts(column), baseline.id_counts(column).index)
            for column in features.id_columns
        }
    report = ValidationReport(
        fingerprint=features.fingerprint,
        baseline=baseline.fingerprint if baseline else None,
        checked_at=_now(),
        anomalies=compare(new, baseline.profile() if baseline else None, cfg, unseen),
        cleaning={
            **{f"source: {rule}": int(n) for rule, n in (source_cleaning or {}).items()},
            **new.cleaning,
        },
    )
    where = features.path / REPORT
    write_text_atomic(where, report.model_dump_json(indent=2))
    for anomaly in report.anomalies:
        log.warning("%s", anomaly)
    if not report.passed:
        raise DataValidationError(report.blocking, str(where))
    accept(features, features_dir)
    log.info("features %s accepted (baseline was %s)", features.fingerprint, report.baseline)
    return report


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@task(name="validate-features", task_run_name="validate-features-{features.fingerprint}")
def validate_features_task(
    features: FeatureSet, features_dir: Path, cfg: ValidationConfig, raw: RawDataset
) -> ValidationReport:
    """Validate ``features``, built from ``raw`` (whose normalisation counts join the report),
    against the last accepted build in ``features_dir``."""
    return validate_features(features, features_dir, cfg, source_cleaning(raw.path))
