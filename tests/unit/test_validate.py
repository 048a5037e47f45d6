"""Data validation: each class of anomaly is found on a crafted bad batch, a clean batch passes."""

from __future__ import annotations

import json

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

from recflow.artifacts import FeatureSet, Profile
from recflow.config import ValidationConfig
from tasks.data_checks import DUPLICATES, DataValidationError, compare, ks_statistic, unseen_share
from tasks.features import _rule_counts, _write_statistics
from tasks.statistics import FEATURES_TABLE, MAX_SHARES, SKETCH_SIZE, distinct_count, profile_table
from tasks.validate import ACCEPTED, REPORT, validate_features

CFG = ValidationConfig()
INTERACTION_DTYPES = {
    "user_id": "int64",
    "item_id": "int64",
    "rating": "float",
    "timestamp": "int64",
}
USER_DTYPES = {"user_id": "int64", "gender": "string", "age": "int32"}


def batch(seed: int, n: int = 4_000) -> dict[str, pd.DataFrame]:
    """Interactions and users drawn from one fixed distribution; ``seed`` picks the sample."""
    rng = np.random.default_rng(seed)
    interactions = pd.DataFrame(
        {
            "user_id": rng.integers(1, 200, n),
            "item_id": rng.integers(1, 100, n),
            "rating": rng.choice([1.0, 2.0, 3.0, 4.0, 5.0], n, p=[0.1, 0.1, 0.3, 0.3, 0.2]),
            "timestamp": rng.integers(1_500_000_000, 1_600_000_000, n),
        }
    )
    users = pd.DataFrame(
        {
            "user_id": np.arange(1, 200),
            "gender": rng.choice(["M", "F"], 199, p=[0.7, 0.3]),
            "age": rng.normal(33, 10, 199).round().astype("int32"),
        }
    )
    return {"interactions": interactions, "users": users}


def profile(tables: dict[str, pd.DataFrame], dtypes: dict | None = None) -> Profile:
    dtypes = dtypes or {}
    inter = tables["interactions"]
    complete = set(INTERACTION_DTYPES) <= set(inter.columns)
    counts = _rule_counts(inter, CFG.rating_min, CFG.rating_max).iloc[0] if complete else {}
    return Profile(
        tables={
            "interactions": profile_table(inter, dtypes.get("interactions", INTERACTION_DTYPES)),
            "users": profile_table(tables["users"], dtypes.get("users", USER_DTYPES)),
        },
        cleaning={rule: int(n) for rule, n in counts.items()}
        | {DUPLICATES: int(inter.duplicated().sum()) if complete else 0},
    )


@pytest.fixture(scope="module")
def baseline() -> Profile:
    return profile(batch(seed=0))


def checks(anomalies) -> set[tuple[str, str, bool]]:
    return {(a.column, a.check, a.blocking) for a in anomalies}


def test_a_clean_batch_from_the_same_distribution_passes(baseline):
    assert compare(profile(batch(seed=1)), baseline, CFG, {"user_id": 0.0}) == []


def test_statistics_per_column(baseline):
    rating = baseline.tables["interactions"]["rating"]
    assert (rating.count, rating.nulls, rating.min, rating.max, rating.cardinality) == (
        4_000, 0, 1.0, 5.0, 5,
    )  # fmt: skip
    assert len(rating.quantiles) == 101 and rating.quantiles[50] in (3.0, 4.0)
    assert set(rating.shares) == {"1.0", "2.0", "3.0", "4.0", "5.0"}
    assert baseline.tables["users"]["gender"].quantiles is None  # not numeric


@pytest.mark.parametrize("per_partition", [32, 33, 5_000])
def test_value_shares_up_to_the_cap_and_exact_cardinality_up_to_the_sketch(per_partition):
    # Two partitions with disjoint values: only their union can cross MAX_SHARES.
    values = np.concatenate([np.arange(per_partition), per_partition + np.arange(per_partition)])
    frame = dd.from_pandas(pd.DataFrame({"v": np.repeat(values, 3)}), npartitions=2, sort=False)
    stats = profile_table(frame, {"v": "int64"})["v"]
    n = 2 * per_partition
    assert (stats.cardinality, stats.cardinality_approximate) == (n, False)
    assert stats.shares == ({str(v): 1 / n for v in values} if n <= MAX_SHARES else None)


def test_cardinality_beyond_the_sketch_is_estimated_within_a_few_percent():
    rng = np.random.default_rng(0)
    for n in (SKETCH_SIZE + 1, 200_000, 3_000_000):
        hashes = np.sort(rng.integers(0, 2**64, size=n, dtype=np.uint64))
        count, approximate = distinct_count(np.array_split(hashes, 7))
        assert approximate and abs(count - n) <= 0.03 * n


def test_missing_and_extra_columns(baseline):
    bad = batch(seed=1)
    bad["interactions"] = bad["interactions"].drop(columns="timestamp").assign(source="web")
    dtypes = {k: v for k, v in INTERACTION_DTYPES.items() if k != "timestamp"}
    anomalies = compare(
        profile(bad, {"interactions": dtypes | {"source": "string"}}), baseline, CFG
    )
    assert checks(anomalies) == {
        ("timestamp", "missing_column", True),
        ("source", "extra_column", False),
    }


def test_a_dtype_change(baseline):
    bad = batch(seed=1)
    bad["interactions"]["rating"] = bad["interactions"]["rating"].astype("int64")
    anomalies = compare(
        profile(bad, {"interactions": INTERACTION_DTYPES | {"rating": "int64"}}), baseline, CFG
    )
    [anomaly] = anomalies
    assert (anomaly.column, anomaly.check, anomaly.expected, anomaly.found) == (
        "rating", "dtype", "float", "int64",
    )  # fmt: skip


def test_a_null_rate_above_the_accepted_one(baseline):
    bad = batch(seed=1)
    bad["users"].loc[:40, "gender"] = None
    [anomaly] = compare(profile(bad), baseline, CFG)
    assert (anomaly.table, anomaly.column, anomaly.check) == ("users", "gender", "null_rate")
    assert anomaly.found.startswith("20.60%") and anomaly.blocking


def test_ratings_out_of_range_are_counted_and_block(baseline):
    bad = batch(seed=1)
    bad["interactions"].loc[:9, "rating"] = [-1.0, 0.0, 7.0, 99.0, np.nan, 5.5, 3, 3, 3, 3]
    new = profile(bad)
    assert new.cleaning["interactions: rating outside [rating_min, rating_max]"] == 5
    assert new.cleaning["interactions: missing user_id, item_id, rating or timestamp"] == 1
    out_of_range = [a for a in compare(new, baseline, CFG) if a.check == "out_of_range"]
    assert [(a.column, a.blocking) for a in out_of_range] == [("rating", True)]
    assert "5 rows outside" in out_of_range[0].found and "max 99.0" in out_of_range[0].found


def test_duplicated_rows_are_a_warning(baseline):
    bad = batch(seed=1)
    bad["interactions"] = pd.concat([bad["interactions"], bad["interactions"].head(30)])
    assert checks(compare(profile(bad), baseline, CFG)) == {("*", "duplicates", False)}


def test_the_share_of_unseen_ids(baseline):
    accepted = pd.Index([1, 2, 3])
    assert unseen_share(pd.Series({1: 10, 2: 5, 9: 5}), accepted) == 0.25
    [anomaly] = compare(profile(batch(seed=1)), baseline, CFG, {"item_id": 0.25, "user_id": 0.0})
    assert (anomaly.column, anomaly.check, anomaly.found) == ("item_id", "unseen_ids", "25.0%")


def test_a_categorical_shift_beyond_the_bound(baseline):
    bad = batch(seed=1)
    bad["users"]["gender"] = np.where(np.arange(199) % 2, "F", "M")  # 70/30 -> 50/50
    [anomaly] = compare(profile(bad), baseline, CFG)
    assert (anomaly.column, anomaly.check) == ("gender", "drift")
    assert anomaly.expected == "L-infinity distance <= 0.1"


def test_a_numeric_shift_beyond_the_bound(baseline):
    bad = batch(seed=1)
    bad["users"]["age"] = bad["users"]["age"] + 8
    [anomaly] = compare(profile(bad), baseline, CFG)
    assert (anomaly.column, anomaly.check) == ("age", "drift")
    assert anomaly.expected.startswith("KS statistic")


def test_a_timestamp_shift_is_exempt(baseline):
    later = batch(seed=1)
    later["interactions"]["timestamp"] += 100_000_000
    assert compare(profile(later), baseline, CFG) == []


def test_the_features_table_is_checked_for_columns_and_dtypes_only():
    def table(**stats):
        return Profile(tables={FEATURES_TABLE: {"user_id": {"dtype": "int64", **stats}}})

    same_dtype = table(count=10, nulls=9, quantiles=[5.0] * 101)
    assert compare(same_dtype, table(count=10, nulls=0, quantiles=[0.0] * 101), CFG) == []
    hashed = Profile(
        tables={FEATURES_TABLE: {"user_id": {"dtype": "int32", "count": 1, "nulls": 0}}}
    )
    assert checks(compare(hashed, same_dtype, CFG)) == {("user_id", "dtype", True)}


def test_ks_statistic_reads_the_cdf_off_percentiles():
    probs = np.linspace(0, 1, 101)
    uniform = list(probs * 100)
    assert ks_statistic(uniform, uniform) == 0.0
    assert ks_statistic(uniform, list(probs * 100 + 20)) == pytest.approx(0.2, abs=0.011)
    stars = [1.0] * 10 + [3.0] * 40 + [4.0] * 30 + [5.0] * 21
    assert ks_statistic(stars, stars) == 0.0
    fewer_threes = [1.0] * 30 + [3.0] * 20 + [4.0] * 30 + [5.0] * 21
    assert ks_statistic(stars, fewer_threes) == pytest.approx(0.2, abs=0.011)


def test_warn_only_makes_a_check_non_blocking(baseline):
    bad = batch(seed=1)
    bad["users"]["age"] = bad["users"]["age"] + 8
    cfg = ValidationConfig(warn_only=("drift",))
    assert checks(compare(profile(bad), baseline, cfg)) == {("age", "drift", False)}


def _feature_set(root, name: str, tables, user_ids) -> FeatureSet:
    features = FeatureSet(
        path=root / name, fingerprint=name, variant="t", n_train=1, n_valid=1, cardinalities={}
    )
    features.path.mkdir(parents=True)
    features.save_manifest()
    vocab = {"user_id": pd.Series(1, index=user_ids), "item_id": pd.Series(1, index=[1])}
    _write_statistics(features.statistics_dir, profile(tables), vocab)
    return features


def test_validate_features_accepts_only_passing_builds(tmp_path):
    first = _feature_set(tmp_path, "first", batch(seed=0), range(100))
    assert validate_features(first, tmp_path, CFG).baseline is None
    assert json.loads((tmp_path / ACCEPTED).read_text())["fingerprint"] == "first"

    bad = batch(seed=1)
    bad["users"]["age"] = bad["users"]["age"] + 8
    second = _feature_set(tmp_path, "second", bad, range(50, 150))
    with pytest.raises(DataValidationError) as error:
        validate_features(second, tmp_path, CFG)
    message = str(error.value)
    assert "users.age: drift: expected KS statistic <= 0.1, found" in message
    assert "interactions.user_id: unseen_ids: expected <= 20.0% of rows" in message
    assert "found 50.0%" in message and str(second.path / REPORT) in message
    report = json.loads((second.path / REPORT).read_text())
    assert report["baseline"] == "first" and len(report["anomalies"]) == 2
    assert json.loads((tmp_path / ACCEPTED).read_text())["fingerprint"] == "first"

    third = _feature_set(tmp_path, "third", batch(seed=2), range(100))
    assert validate_features(third, tmp_path, CFG).passed
    assert json.loads((tmp_path / ACCEPTED).read_text())["fingerprint"] == "third"
