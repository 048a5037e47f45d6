"""Statistics of a table in one Dask pass, as a feature build records them (TFX's StatisticsGen).

Per column: count, nulls, min/max, cardinality (a k-minimum-values sketch), quantiles and, for
columns with few values, value shares. ``tasks/features.py`` profiles its inputs and output
schema with ``profile_table``; ``tasks/data_checks.py`` compares two profiles.
"""

from __future__ import annotations

from collections.abc import Mapping

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa

from recflow.artifacts import ColumnStats

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
