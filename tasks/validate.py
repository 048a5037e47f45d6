"""Data validation in the spirit of TFX's ExampleValidator: statistics, anomalies, a baseline.

A feature build profiles its inputs (``profile_table``: per column count, nulls, min/max,
cardinality, quantiles, value shares) and its output schema. ``compare`` checks a new profile
against the profile of the last accepted build and lists anomalies: missing or extra columns,
dtype changes, null rates, ratings out of range, duplicated rows, the share of unseen ids, and a
shift in a column's distribution beyond a bound. Checks not listed in
``ValidationConfig.warn_only`` are blocking: ``validate_features`` then raises
``DataValidationError`` before anything trains on the data.

The baseline is ``<features_dir>/accepted.json``, which names the last accepted feature build; it
is replaced atomically, and only when a build passes (docs/features.md).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
from prefect import task
from pydantic import BaseModel

from recflow.atomic import write_text_atomic
from recflow.config import Settings, ValidationConfig

if TYPE_CHECKING:
    from tasks.features import FeatureSet

log = logging.getLogger(__name__)

Check = Literal[
    "missing_column",
    "extra_column",
    "dtype",
    "empty",
    "null_rate",
    "out_of_range",
    "duplicates",
    "unseen_ids",
    "drift",
]
ACCEPTED = "accepted.json"
REPORT = "validation.json"
# Percentiles: enough points that the KS statistic read off them is within 0.01 of the exact one.
QUANTILE_PROBS = tuple(np.linspace(0.0, 1.0, 101).round(2))
# Columns with at most this many distinct values keep their value shares (for the L-infinity
# check); more would bloat the statistics file and a categorical shift among so many values is
# better caught by the unseen-id share.
MAX_SHARES = 64
# Distinct values are counted with a k-minimum-values sketch: each partition sends the
# SKETCH_SIZE smallest hashes of its values. Exact up to SKETCH_SIZE distinct values, above that
# an estimate with a standard error of ~1/sqrt(SKETCH_SIZE) (0.8%). Exact distinct counts of a
# column such as 50M rows' timestamps would meet on one worker and exceed its memory.
SKETCH_SIZE = 2**14
# Table of the transformed training split in a profile: only its columns and dtypes are checked,
# because encoded ids legitimately change between builds.
FEATURES_TABLE = "features"


class ColumnStats(BaseModel):
    dtype: str
    count: int
    nulls: int
    min: float | None = None
    max: float | None = None
    cardinality: int | None = None
    # True when cardinality is an estimate (more than SKETCH_SIZE distinct values).
    cardinality_approximate: bool = False
    quantiles: list[float] | None = None
    shares: dict[str, float] | None = None


class Profile(BaseModel):
    """Statistics of every table a feature build read, and of its output schema."""

    tables: dict[str, dict[str, ColumnStats]]
    # Rows each cleaning rule dropped (docs/features.md).
    cleaning: dict[str, int] = {}


class Anomaly(BaseModel):
    table: str
    column: str
    check: Check
    expected: str
    found: str
    blocking: bool

    def __str__(self) -> str:
        kind = "BLOCKING" if self.blocking else "warning"
        return (
            f"[{kind}] {self.table}.{self.column}: {self.check}: "
            f"expected {self.expected}, found {self.found}"
        )


class ValidationReport(BaseModel):
    fingerprint: str
    baseline: str | None
    checked_at: str
    anomalies: list[Anomaly]
    cleaning: dict[str, int]

    @property
    def blocking(self) -> list[Anomaly]:
        return [a for a in self.anomalies if a.blocking]

    @property
    def passed(self) -> bool:
        return not self.blocking


class DataValidationError(RuntimeError):
    """Data that must not reach training; the message names column, check, expected and found."""

    def __init__(self, anomalies: list[Anomaly], where: str = ""):
        self.anomalies = anomalies
        lines = "\n".join(f"  {a}" for a in anomalies)
        suffix = f" (report: {where})" if where else ""
        super().__init__(
            f"data validation failed with {len(anomalies)} anomalies{suffix}:\n{lines}"
        )


def input_error(table: str, column: str, check: Check, expected: str, found: str):
    """A problem found while reading the inputs, before any statistics exist."""
    return DataValidationError(
        [
            Anomaly(
                table=table,
                column=column,
                check=check,
                expected=expected,
                found=found,
                blocking=True,
            )
        ]
    )


# --- statistics -------------------------------------------------------------------------------


def arrow_dtype(dtype: pa.DataType) -> str:
    """The dtype name recorded in statistics; ``list<string>`` rather than Arrow's field names."""
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
        return f"list<{arrow_dtype(dtype.value_type)}>"
    if pa.types.is_large_string(dtype):
        return "string"
    return str(dtype)


def profile_table(frame: dd.DataFrame | pd.DataFrame, dtypes: Mapping[str, str]) -> dict:
    """Statistics of each column in ``dtypes`` (name -> dtype as recorded), in one Dask pass."""
    if isinstance(frame, pd.DataFrame):
        frame = dd.from_pandas(frame, npartitions=1, sort=False)
    lazy = {}
    for name, dtype in dtypes.items():
        column = frame[name]
        numeric = dtype.split("<")[-1].startswith(("int", "uint", "float", "double"))
        values = (column.explode() if dtype.startswith("list<") else column).dropna()
        lazy[name] = {
            "count": column.size,
            "nulls": column.isna().sum(),
            # At most MAX_SHARES + 1 values per partition reach the client, which merges them.
            "counts": values.map_partitions(_capped_value_counts, meta=("count", "int64")),
            "hashes": [dask.delayed(_smallest_hashes)(part) for part in values.to_delayed()],
        }
        if numeric:
            # Exploded elements come back as objects, nullable ints as pandas' Int64: dask's
            # quantiles take neither.
            numbers = values.astype("float64")
            lazy[name] |= {
                "min": numbers.min(),
                "max": numbers.max(),
                "quantiles": numbers.quantile(list(QUANTILE_PROBS)),
            }
    (computed,) = dask.compute(lazy)
    return {name: _column_stats(dtypes[name], parts) for name, parts in computed.items()}


def _capped_value_counts(values: pd.Series) -> pd.Series:
    return _capped(values.value_counts())


def _merge_capped(counts: pd.Series) -> pd.Series:
    return _capped(counts.groupby(level=0, sort=False).sum().sort_values(ascending=False))


def _capped(counts: pd.Series) -> pd.Series:
    """Exact value counts while there are at most MAX_SHARES values, else any MAX_SHARES + 1.

    Merging capped counts keeps that property: a column with few values is never cut, and one
    with many stays above the cap, so memory is bounded whatever the column's cardinality.
    """
    return counts if len(counts) <= MAX_SHARES else counts.iloc[: MAX_SHARES + 1]


def _smallest_hashes(values: pd.Series) -> np.ndarray:
    return np.unique(pd.util.hash_pandas_object(values, index=False).to_numpy())[:SKETCH_SIZE]


def distinct_count(smallest_hashes: list[np.ndarray]) -> tuple[int, bool]:
    """Distinct values, and whether that is an estimate, from each partition's smallest hashes.

    The SKETCH_SIZE smallest of all hashes are the smallest of the partitions' smallest. Below
    SKETCH_SIZE they are every distinct value; above, the k-th smallest of n uniform 64-bit
    hashes sits near k / n of the hash range.
    """
    merged = np.unique(np.concatenate(smallest_hashes))[:SKETCH_SIZE]
    if len(merged) < SKETCH_SIZE:
        return len(merged), False
    return round((SKETCH_SIZE - 1) * 2.0**64 / (float(merged[-1]) + 1)), True


def _column_stats(dtype: str, parts: dict) -> ColumnStats:
    counts = _merge_capped(parts["counts"])
    total = int(counts.sum())
    cardinality, approximate = distinct_count(parts["hashes"])
    shares = None
    if len(counts) <= MAX_SHARES and total:
        shares = {str(value): float(n) / total for value, n in counts.items()}
    quantiles = parts.get("quantiles")
    return ColumnStats(
        dtype=dtype,
        count=int(parts["count"]),
        nulls=int(parts["nulls"]),
        min=_finite(parts.get("min")),
        max=_finite(parts.get("max")),
        cardinality=cardinality,
        cardinality_approximate=approximate,
        quantiles=None if quantiles is None or not total else [float(q) for q in quantiles],
        shares=shares,
    )


def _finite(value) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


# --- checks ---------------------------------------------------------------------------------


def compare(
    new: Profile,
    baseline: Profile | None,
    cfg: ValidationConfig,
    unseen_shares: Mapping[str, float] | None = None,
) -> list[Anomaly]:
    """Every anomaly of ``new`` against ``baseline`` (None: first build, baseline-free checks).

    ``unseen_shares``: per id column, the share of training rows whose id the baseline never saw.
    """
    found: list[tuple[str, str, Check, str, str]] = []
    found += _range_checks(new, cfg)
    if baseline is not None:
        for table, columns in baseline.tables.items():
            found += _column_checks(table, new.tables.get(table, {}), columns, cfg)
        for column, share in (unseen_shares or {}).items():
            if share > cfg.max_unseen_id_share:
                found.append(
                    (
                        "interactions",
                        column,
                        "unseen_ids",
                        f"<= {cfg.max_unseen_id_share:.1%} of rows with ids the accepted build saw",
                        f"{share:.1%}",
                    )
                )
    return [
        Anomaly(
            table=t, column=c, check=check, expected=e, found=f, blocking=check not in cfg.warn_only
        )
        for t, c, check, e, f in found
    ]


def _range_checks(new: Profile, cfg: ValidationConfig):
    rating = new.tables.get("interactions", {}).get("rating")
    dropped = new.cleaning.get(OUT_OF_RANGE, 0)
    if rating is not None and dropped:
        yield (
            "interactions",
            "rating",
            "out_of_range",
            f"ratings in [{cfg.rating_min}, {cfg.rating_max}]",
            f"{dropped} rows outside, min {rating.min}, max {rating.max}",
        )
    duplicates = new.cleaning.get(DUPLICATES, 0)
    if duplicates:
        yield (
            "interactions",
            "*",
            "duplicates",
            "no duplicated (user, item, timestamp) rows",
            f"{duplicates} duplicated rows (dropped)",
        )


def _column_checks(table: str, new: dict, old: dict, cfg: ValidationConfig):
    for name in sorted(set(new) - set(old)):
        yield table, name, "extra_column", "no such column", f"column of {new[name].dtype}"
    for name, base in old.items():
        if name not in new:
            yield table, name, "missing_column", f"column of {base.dtype}", "no such column"
            continue
        stats = new[name]
        if stats.dtype != base.dtype:
            yield table, name, "dtype", base.dtype, stats.dtype
            continue
        if table == FEATURES_TABLE:
            continue
        rate, base_rate = _null_rate(stats), _null_rate(base)
        if rate > base_rate + cfg.max_null_rate_increase:
            yield (
                table,
                name,
                "null_rate",
                f"<= {base_rate + cfg.max_null_rate_increase:.2%} (accepted {base_rate:.2%})",
                f"{rate:.2%} ({stats.nulls} of {stats.count})",
            )
        if f"{table}.{name}" not in cfg.drift_exempt:
            yield from _drift(table, name, stats, base, cfg)


def _null_rate(stats: ColumnStats) -> float:
    return stats.nulls / stats.count if stats.count else 0.0


def _drift(table: str, name: str, new: ColumnStats, old: ColumnStats, cfg: ValidationConfig):
    if new.quantiles and old.quantiles:
        ks = ks_statistic(old.quantiles, new.quantiles)
        if ks > cfg.max_ks_statistic:
            yield (
                table,
                name,
                "drift",
                f"KS statistic <= {cfg.max_ks_statistic}",
                f"{ks:.3f} (median {old.quantiles[50]:g} -> {new.quantiles[50]:g})",
            )
    elif new.shares is not None and old.shares is not None:
        values = set(new.shares) | set(old.shares)
        gaps = {v: abs(new.shares.get(v, 0.0) - old.shares.get(v, 0.0)) for v in values}
        worst = max(gaps, key=gaps.get)
        if gaps[worst] > cfg.max_linf_distance:
            yield (
                table,
                name,
                "drift",
                f"L-infinity distance <= {cfg.max_linf_distance}",
                f"{gaps[worst]:.3f} (share of {worst!r}: {old.shares.get(worst, 0.0):.3f} "
                f"-> {new.shares.get(worst, 0.0):.3f})",
            )


def ks_statistic(old_quantiles: list[float], new_quantiles: list[float]) -> float:
    """Kolmogorov-Smirnov distance of two distributions given as values at QUANTILE_PROBS.

    Each CDF is the share of quantile points at or below x, compared at every point of either
    list: within 1/len of the exact statistic, and exact at the jumps of discrete columns.
    """
    old, new = np.asarray(old_quantiles), np.asarray(new_quantiles)
    points = np.union1d(old, new)
    cdf_old = np.searchsorted(old, points, side="right") / len(old)
    cdf_new = np.searchsorted(new, points, side="right") / len(new)
    return float(np.max(np.abs(cdf_old - cdf_new)))


def unseen_share(new_counts: pd.Series, accepted_ids: pd.Index) -> float:
    """Share of rows (``new_counts``: id -> rows) whose id is not in ``accepted_ids``."""
    total = new_counts.sum()
    return float(new_counts[~new_counts.index.isin(accepted_ids)].sum() / total) if total else 0.0


# Names of the cleaning rules (docs/features.md); the rows each drops are counted in Profile.
MISSING_VALUE = "interactions: missing user_id, item_id, rating or timestamp"
OUT_OF_RANGE = "interactions: rating outside [rating_min, rating_max]"
DUPLICATES = "interactions: duplicated (user_id, item_id, timestamp) row"


# --- the baseline and the task ----------------------------------------------------------------


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
    from tasks.features import FeatureSet

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
def validate_features_task(features: FeatureSet, settings: Settings) -> ValidationReport:
    return validate_features(
        features,
        settings.paths.features_dir,
        settings.validation,
        _source_cleaning(features, settings),
    )


def _source_cleaning(features: FeatureSet, settings: Settings) -> dict[str, int]:
    """What normalisation dropped from the dataset ``features`` was built from, if on disk."""
    from recflow.artifacts import MANIFEST, RawDataset
    from tasks.download import DownloadError, dataset_dir, source_cleaning
    from tasks.features import fingerprint

    try:
        dataset = dataset_dir(settings.data, settings.paths)
        raw = RawDataset.load(dataset) if (dataset / MANIFEST).is_file() else None
    except (DownloadError, OSError, ValueError):
        return {}
    if raw is None:
        return {}
    # The same fingerprint proves these are the tables the build read.
    if fingerprint(raw, settings.features, settings.validation) != features.fingerprint:
        return {}
    return source_cleaning(dataset)
