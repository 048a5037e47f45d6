"""Data checks (TFX's ExampleValidator): the anomalies of a profile against an accepted one.

``compare`` lists missing or extra columns, dtype changes, null rates, ratings out of range,
duplicated rows, the share of unseen ids, and a shift in a column's distribution beyond a
bound. Checks not listed in ``ValidationConfig.warn_only`` are blocking. ``input_error`` is the
same report for a problem found while reading the inputs, before any statistics exist.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from recflow.artifacts import Anomaly, ColumnStats, DataCheck, Profile
from recflow.config import ValidationConfig
from recflow.vocabulary import RATING
from tasks.statistics import FEATURES_TABLE


class DataValidationError(RuntimeError):
    """Data that must not reach training; the message names column, check, expected and found."""

    def __init__(self, anomalies: list[Anomaly], where: str = ""):
        self.anomalies = anomalies
        lines = "\n".join(f"  {a}" for a in anomalies)
        suffix = f" (report: {where})" if where else ""
        super().__init__(
            f"data validation failed with {len(anomalies)} anomalies{suffix}:\n{lines}"
        )


def input_error(table: str, column: str, check: DataCheck, expected: str, found: str):
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


def compare(
    new: Profile,
    baseline: Profile | None,
    cfg: ValidationConfig,
    unseen_shares: Mapping[str, float] | None = None,
) -> list[Anomaly]:
    """Every anomaly of ``new`` against ``baseline`` (None: first build, baseline-free checks).

    ``unseen_shares``: per id column, the share of training rows whose id the baseline never saw.
    """
    found: list[tuple[str, str, DataCheck, str, str]] = []
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
    rating = new.tables.get("interactions", {}).get(RATING)
    dropped = new.cleaning.get(OUT_OF_RANGE, 0)
    if rating is not None and dropped:
        yield (
            "interactions",
            RATING,
            "out_of_range",
            "ratings on the dataset's scale (a custom source's rating_scale, else "
            f"[{cfg.rating_min}, {cfg.rating_max}])",
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
