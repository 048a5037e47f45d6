"""The features stage on small synthetic data, computed in-process (no Dask cluster)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from merlin.schema import Tags

from recflow.artifacts import RawDataset
from recflow.config import FeaturesConfig, SyntheticConfig
from tasks import synthetic
from tasks.data_checks import DUPLICATES, MISSING_VALUE, OUT_OF_RANGE, DataValidationError
from tasks.features import (
    SPLIT_FLAG,
    _dedupe_and_flag,
    attach_side_features,
    build_features,
    feature_statistics,
    input_dtypes,
    load_workflow,
    partition_count,
    read_interactions,
    side_feature_tables,
    side_workflow,
    split_for,
    write_joined_splits,
)
from tasks.normalize import INTERACTIONS_SCHEMA
from tasks.statistics import profile_table

SMALL = SyntheticConfig(n_users=120, n_items=60, n_ratings=3_000)


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> RawDataset:
    path = tmp_path_factory.mktemp("raw")
    synthetic.generate(SMALL, path)
    return RawDataset(
        path=path, variant="synthetic", checksum="small", n_interactions=SMALL.n_ratings,
        n_users=SMALL.n_users, n_items=SMALL.n_items,
    )  # fmt: skip


def with_interactions(raw: RawDataset, directory, frame: pd.DataFrame, schema=None) -> RawDataset:
    """A copy of ``raw`` whose interactions table is ``frame``."""
    directory.mkdir()
    for name in ("items.parquet", "users.parquet"):
        (directory / name).symlink_to(raw.path / name)
    table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
    pq.write_table(table, directory / "interactions.parquet")
    return raw.model_copy(update={"path": directory, "checksum": directory.name})


@pytest.fixture(scope="module")
def dirty(raw, tmp_path_factory) -> tuple[RawDataset, dict[str, int]]:
    """Interactions with every kind of row the cleaning rules drop, and how many of each."""
    clean = pd.read_parquet(raw.interactions)
    bad = clean.head(6).copy()
    bad["user_id"] = bad["user_id"].astype("float64")
    bad.loc[bad.index[0], "user_id"] = np.nan
    bad.loc[bad.index[1], "rating"] = np.nan
    bad.loc[bad.index[2:5], "rating"] = [-1.0, 0.0, 6.0]
    bad.loc[bad.index[5], "timestamp"] = None
    frame = pd.concat([clean, bad, clean.tail(7)], ignore_index=True)
    frame = frame.astype({"user_id": "Int64", "timestamp": "Int64"})
    path = tmp_path_factory.mktemp("dirty") / "data"
    expected = {MISSING_VALUE: 3, OUT_OF_RANGE: 3, DUPLICATES: 7}
    return with_interactions(raw, path, frame, INTERACTIONS_SCHEMA), expected


@pytest.fixture(scope="module")
def built(dirty, tmp_path_factory):
    raw, _ = dirty
    return build_features(raw, FeaturesConfig(), tmp_path_factory.mktemp("features"))


def test_the_schema_carries_the_tags_merlin_models_builds_from(built):
    schema = pq.read_schema(built.train_dir / "part_0.parquet")
    from merlin.io import Dataset

    merlin_schema = Dataset(str(built.train_dir), engine="parquet").schema
    assert merlin_schema.select_by_tag(Tags.USER_ID).column_names == ["user_id"]
    assert merlin_schema.select_by_tag(Tags.ITEM_ID).column_names == ["item_id"]
    assert set(merlin_schema.select_by_tag(Tags.USER).column_names) == {
        "user_id", "gender", "age_bucket", "occupation", "zip_prefix", "user_count",
    }  # fmt: skip
    assert set(merlin_schema.select_by_tag(Tags.ITEM).column_names) == {
        "item_id", "year_bucket", "genres", "item_count",
    }  # fmt: skip
    # The label the gate judges, and the raw rating the ranker grades it by (docs/features.md).
    assert merlin_schema.select_by_tag(Tags.BINARY_CLASSIFICATION).column_names == ["rating_binary"]
    assert merlin_schema.select_by_tag(Tags.REGRESSION).column_names == ["rating"]
    assert set(merlin_schema.select_by_tag(Tags.TARGET).column_names) == {"rating_binary", "rating"}
    assert merlin_schema["genres"].is_list and not merlin_schema["user_id"].is_list
    assert pa.types.is_list(schema.field("genres").type)
    assert (built.statistics_dir / "schema.pbtxt").read_text() == built.schema_file.read_text()


def test_cleaning_rules_drop_and_count_bad_rows(built, dirty):
    _, expected = dirty
    assert built.cleaning == expected
    assert built.n_train + built.n_valid == SMALL.n_ratings
    assert built.profile().cleaning == expected
    rating = built.profile().tables["interactions"]["rating"]
    assert (rating.min, rating.max, rating.nulls) == (-1.0, 6.0, 1)


def test_cardinalities_count_reserved_indices_and_the_vocabulary(built, raw):
    inter = pd.read_parquet(raw.interactions)
    # Categorify reserves 0 (padding), 1 (null) and 2 (out of vocabulary).
    assert built.cardinalities["user_id"] == built.id_counts("user_id").size + 3
    assert built.cardinalities["item_id"] == built.id_counts("item_id").size + 3
    assert built.id_counts("user_id").size == inter["user_id"].nunique()
    assert built.cardinalities["gender"] == 2 + 3


def test_statistics_of_the_transformed_split(built):
    features = built.profile().tables["features"]
    assert features["rating_binary"].shares.keys() <= {"0", "1"}
    assert features["user_id"].nulls == 0 and features["user_id"].min >= 3
    assert features["genres"].dtype == "list<int64>"


def test_hashed_ids_depend_on_the_id_alone(raw, tmp_path):
    # More buckets than users: a hash of anything but the id shows up as extra buckets.
    buckets = 10_000
    built = build_features(raw, FeaturesConfig(id_encoding="hash", hash_buckets=buckets), tmp_path)
    assert built.cardinalities["user_id"] == buckets + 1 and built.id_encoding == "hash"
    users = pd.read_parquet(built.lookup_dir / "users.parquet")
    train = pd.concat(pd.read_parquet(part) for part in built.train_dir.glob("*.parquet"))
    assert train["user_id"].nunique() <= users["user_id"].nunique()

    workflow = load_workflow(built.user_workflow_dir)
    inputs = users[workflow.input_schema.column_names]
    # The same rows in another order and under another index, as a serving request has them.
    shuffled = inputs.sample(frac=1.0, random_state=0).set_axis(range(7, 7 + len(inputs)))
    buckets_of = [
        dict(zip(frame["user_id"], workflow.transform(frame)["user_id"], strict=True))
        for frame in (inputs, shuffled)
    ]
    assert buckets_of[0] == buckets_of[1]
    assert set(train["user_id"]) <= set(buckets_of[0].values())


def test_a_rebuild_replaces_the_build_that_a_plain_call_reuses(raw, tmp_path):
    first = build_features(raw, FeaturesConfig(), tmp_path)
    stale = first.path / "stale"  # stands for anything the earlier build left
    stale.write_text("from the earlier build")

    assert build_features(raw, FeaturesConfig(), tmp_path).path == first.path
    assert stale.exists(), "an unchanged build is reused as it is"
    rebuilt = build_features(raw, FeaturesConfig(), tmp_path, rebuild=True)

    assert rebuilt.path == first.path and not stale.exists()
    assert (rebuilt.n_train, rebuilt.n_valid) == (first.n_train, first.n_valid)
    assert [p.name for p in tmp_path.iterdir()] == [first.path.name]  # no staging left


def test_side_workflows_hold_one_side_each(built):
    import nvtabular as nvt

    workflow = nvt.Workflow.load(str(built.workflow_dir))
    user = side_workflow(nvt.Workflow.load(str(built.workflow_dir)), "user")
    assert set(user.output_schema.column_names) == set(
        workflow.output_schema.select_by_tag(Tags.USER).column_names
    )
    item = nvt.Workflow.load(str(built.item_workflow_dir))
    assert set(item.output_schema.column_names) == set(
        workflow.output_schema.select_by_tag(Tags.ITEM).column_names
    )


def _history() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": [1, 1, 1, 1, 2, 2, 3],
            "item_id": [10, 11, 12, 12, 10, 13, 10],
            "rating": [4.0] * 7,
            "timestamp": [300, 100, 200, 200, 50, 60, 10],
        }
    )


def test_last_n_holds_out_each_users_latest_and_keeps_short_histories():
    cfg = FeaturesConfig(split="last_n", valid_last_n=1)
    flagged = _dedupe_and_flag(_history(), cfg, None, None)
    valid = flagged[flagged[SPLIT_FLAG]]
    assert sorted(zip(valid.user_id, valid.item_id, strict=True)) == [(1, 10), (2, 13)]
    assert len(flagged) == 6  # the duplicated (1, 12, 200) row is gone
    for user, rows in flagged.groupby("user_id"):
        train, held_out = rows[~rows[SPLIT_FLAG]], rows[rows[SPLIT_FLAG]]
        assert len(train) >= 1, user
        if len(held_out):
            assert held_out.timestamp.min() >= train.timestamp.max()


def test_last_fraction_holds_out_each_users_latest_share_and_keeps_short_histories():
    # User 1: ten interactions, the latest two (20 %) held out, whatever their item ids; user 2:
    # four, fewer than 1 / 0.2, so none held out (nobody becomes cold); user 3: five, one.
    frame = pd.DataFrame(
        {
            "user_id": [1] * 10 + [2] * 4 + [3] * 5,
            "item_id": [*range(20, 10, -1), 10, 11, 12, 13, 30, 31, 32, 33, 34],
            "rating": [4.0] * 19,
            "timestamp": [*range(100, 110), 1, 2, 3, 4, 50, 40, 30, 20, 10],
        }
    )
    cfg = FeaturesConfig(split="last_fraction", valid_fraction=0.2)
    flagged = _dedupe_and_flag(frame.sample(frac=1, random_state=0), cfg, None, None)
    valid = flagged[flagged[SPLIT_FLAG]]
    assert sorted(zip(valid.user_id, valid.item_id, strict=True)) == [(1, 11), (1, 12), (3, 30)]


def test_the_default_split_is_each_users_latest_unless_the_data_has_no_time():
    default = FeaturesConfig()
    assert default.split == "last_fraction"
    assert split_for(default, [100.0] * 50 + [200.0] * 51).split == "last_fraction"
    # A source without timestamps reads as 0 everywhere: no order, so the random split.
    assert split_for(default, [0.0] * 101).split == "random"
    assert split_for(FeaturesConfig(split="time"), [0.0] * 101).split == "time"


def test_time_split_uses_one_global_cutoff():
    flagged = _dedupe_and_flag(_history(), FeaturesConfig(split="time"), 150.0, None)
    assert flagged.loc[flagged[SPLIT_FLAG], "timestamp"].min() > 150
    assert flagged.loc[~flagged[SPLIT_FLAG], "timestamp"].max() <= 150


@pytest.mark.parametrize(
    ("change", "column", "check", "expected", "found"),
    [
        (
            lambda f: f.drop(columns="timestamp"),
            "timestamp",
            "missing_column",
            "a int column",
            "none",
        ),
        (lambda f: f.astype({"item_id": "uint64"}), "item_id", "dtype", "int64", "uint64"),
        (lambda f: f.astype({"rating": "str"}), "rating", "dtype", "a number dtype", "string"),
        (lambda f: f.head(0), "*", "empty", "at least one row", "0 rows"),
    ],
    ids=["missing column", "ids beyond int64", "wrong type", "empty file"],
)
def test_unusable_inputs_are_errors_naming_column_check_expected_found(
    raw, tmp_path, change, column, check, expected, found
):
    bad = with_interactions(raw, tmp_path / "bad", change(pd.read_parquet(raw.interactions)))
    with pytest.raises(DataValidationError) as error:
        input_dtypes(bad)
    [anomaly] = error.value.anomalies
    assert (anomaly.table, anomaly.column, anomaly.check) == ("interactions", column, check)
    assert anomaly.expected == expected and anomaly.found.startswith(found)
    assert f"interactions.{column}: {check}: expected {expected}, found {found}" in str(error.value)


def test_no_rows_left_after_cleaning_is_an_error(raw, tmp_path):
    frame = pd.read_parquet(raw.interactions).assign(rating=9.0)
    bad = with_interactions(raw, tmp_path / "bad", frame)
    with pytest.raises(DataValidationError, match="interactions.\\*: empty: expected rows left"):
        build_features(bad, FeaturesConfig(), tmp_path / "features")
    assert not any((tmp_path / "features").iterdir())


@pytest.mark.parametrize(
    ("rating", "found"), [(5.0, "all positive"), (1.0, "all negative")], ids=["liked", "not"]
)
def test_a_valid_split_of_one_class_is_an_error(raw, tmp_path, rating, found):
    """Ranker training scores the validation split's AUC after each epoch: on one class it
    failed there with a traceback from inside Keras (#32), after the features were written."""
    frame = pd.read_parquet(raw.interactions).assign(rating=rating)
    bad = with_interactions(raw, tmp_path / "bad", frame)
    with pytest.raises(DataValidationError, match=f"interactions.rating: empty: .* {found}"):
        build_features(bad, FeaturesConfig(), tmp_path / "features")
    assert not any((tmp_path / "features").iterdir())


@pytest.mark.parametrize(
    ("history", "column", "found"),
    [
        # One train row: retrieval learns each interaction against the others of its batch.
        ([(10, 5.0), (11, 5.0), (12, 1.0)], "*", "1"),
        # The held-out positive is item 10 again: retrieval is judged on items new to the user.
        ([(10, 5.0), (11, 2.0), (10, 5.0), (12, 1.0)], "item_id", "none: each of the 1"),
    ],
    ids=["one train row", "no new positive"],
)
def test_splits_retrieval_cannot_learn_from_or_be_judged_on_are_an_error(
    raw, tmp_path, history, column, found
):
    """One user's history, their latest two held out (last_n): with one train row two-tower
    training failed inside TensorFlow (ConcatOp), with no new positive in validation it failed
    on 'no validation user has a relevant item' (#32)."""
    frame = pd.DataFrame(
        [(1, item, rating, t) for t, (item, rating) in enumerate(history)],
        columns=["user_id", "item_id", "rating", "timestamp"],
    )
    bad = with_interactions(raw, tmp_path / "bad", frame, INTERACTIONS_SCHEMA)
    with pytest.raises(DataValidationError) as error:
        build_features(bad, FeaturesConfig(split="last_n", valid_last_n=2), tmp_path / "out")
    [anomaly] = error.value.anomalies
    assert (anomaly.column, anomaly.check) == (column, "empty")
    assert anomaly.found.startswith(found), anomaly
    assert not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize(
    ("rows", "per_partition", "expected"), [(0, 10, 1), (1, 10, 1), (10, 10, 1), (11, 10, 2)]
)
def test_partition_count_bounds_rows_per_partition(rows, per_partition, expected):
    assert partition_count(rows, per_partition) == expected


def test_interactions_are_read_in_partitions_of_at_most_partition_rows(raw, tmp_path):
    # One row group holding every row, as other tools may write it.
    frame = pd.read_parquet(raw.interactions)
    one_group = with_interactions(raw, tmp_path / "one-group", frame)
    frame.to_parquet(one_group.interactions, index=False, row_group_size=len(frame))
    limit = -(-len(frame) // 3)
    parts = read_interactions(one_group, FeaturesConfig(partition_rows=limit))
    sizes = parts.map_partitions(len).compute().tolist()
    assert len(sizes) == 3 and max(sizes) <= limit and sum(sizes) == len(frame)


def test_small_partitions_give_the_same_features(raw, built, dirty, tmp_path):
    """partition_rows changes how the work is cut, not what comes out."""
    dirty_raw, _ = dirty
    small = build_features(dirty_raw, FeaturesConfig(partition_rows=500), tmp_path)
    assert len(list(small.train_dir.glob("*.parquet"))) > 1
    assert (small.n_train, small.n_valid) == (built.n_train, built.n_valid)
    assert small.cardinalities == built.cardinalities
    assert small.cleaning == built.cleaning
    # Dask's quantiles are approximate and depend on the partitioning, and Categorify may
    # order ids of equal frequency differently: the encoded values are not compared.
    small_tables, tables = small.profile().tables, built.profile().tables
    assert small_tables.keys() == tables.keys()
    for table, columns in tables.items():
        exclude = {"quantiles"} | ({"min", "max", "shares"} if table == "features" else set())
        assert columns.keys() == small_tables[table].keys()
        for name, stats in columns.items():
            other = small_tables[table][name].model_dump(exclude=exclude)
            assert other == stats.model_dump(exclude=exclude), (table, name)
    for column in ("user_id", "item_id"):
        pd.testing.assert_series_equal(
            small.id_counts(column).sort_index(), built.id_counts(column).sort_index()
        )


def test_joined_splits_are_written_once_with_side_features(raw, tmp_path):
    import dask.dataframe as dd

    interactions = pd.read_parquet(raw.interactions)
    splits = {
        "train": dd.from_pandas(interactions, npartitions=3),
        "valid": dd.from_pandas(interactions.head(0), npartitions=1),
    }
    items, users, _ = side_feature_tables(raw, splits["train"])
    files = write_joined_splits(splits, items, users, tmp_path)
    assert files["valid"] == []  # empty partitions are left out
    assert len(files["train"]) == 3
    assert all(pq.ParquetFile(f).num_row_groups == 1 for f in files["train"])
    assert pa.types.is_list(pq.read_schema(files["train"][0]).field("genres").type)
    joined = pd.concat(pd.read_parquet(f) for f in files["train"])
    expected = attach_side_features(interactions, items, users)
    assert list(joined.columns) == list(expected.columns)
    assert len(joined) == len(interactions)
    assert joined["user_count"].sum() == pytest.approx(expected["user_count"].sum())


def test_list_columns_are_profiled_as_in_one_pass(built):
    import dask.dataframe as dd
    import nvtabular as nvt

    schema = nvt.Workflow.load(str(built.workflow_dir)).output_schema
    stats = feature_statistics(built.train_dir, schema)
    assert list(stats) == schema.column_names
    assert stats == built.profile().tables["features"]
    genres = profile_table(dd.read_parquet(str(built.train_dir)), {"genres": "list<int64>"})
    assert stats["genres"] == genres["genres"]


def test_each_users_rows_are_written_in_time_order(raw, tmp_path):
    """recommend's item-item source reads a user's rows as a sequence, oldest first
    (models/item_item.py): every split, in raw and encoded ids, keeps each user's time order,
    across several partitions too."""
    built = build_features(raw, FeaturesConfig(partition_rows=500), tmp_path)
    interactions = pd.read_parquet(raw.interactions)
    when = interactions.groupby(["user_id", "item_id"])["timestamp"].agg(["min", "max"])
    for split in ("train", "valid"):
        rows, encoded = (
            pd.concat(
                pd.read_parquet(part) for part in sorted(directory.glob("*.parquet"), key=_number)
            )
            for directory in (built.held_out_dir / split, getattr(built, f"{split}_dir"))
        )
        np.testing.assert_array_equal(rows["rating"].to_numpy(), encoded["rating"].to_numpy())
        times = when.loc[pd.MultiIndex.from_frame(rows[["user_id", "item_id"]])]
        # A pair rated twice is kept at one of its times: the earliest bounds what follows.
        earliest, latest = times["min"].to_numpy(), times["max"].to_numpy()
        same_user = rows["user_id"].to_numpy()[1:] == rows["user_id"].to_numpy()[:-1]
        assert (rows["user_id"].diff().fillna(1) != 0).sum() == rows["user_id"].nunique()
        assert (latest[1:][same_user] >= earliest[:-1][same_user]).all()


def _number(part) -> int:
    """part.12.parquet, part_12.parquet: 12."""
    return int("".join(c for c in part.stem if c.isdigit()))
