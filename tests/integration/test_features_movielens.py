"""The features stage on real ml-100k (served over HTTP on 127.0.0.1) on a local Dask cluster."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from merlin.io import Dataset
from merlin.schema import Tags

from recflow.compute import open_cluster
from recflow.config import ComputeConfig, DataConfig, FeaturesConfig, PathsConfig, ValidationConfig
from tasks.data_checks import DataValidationError
from tasks.download import fetch_dataset
from tasks.features import build_features, clean_and_split, input_dtypes
from tasks.normalize import NO_GENRES
from tasks.statistics import profile_table
from tasks.validate import ACCEPTED, validate_features
from tests.support.movielens_server import REPO, MovieLensServer, make_mirror, movielens_archive

pytestmark = pytest.mark.integration

LAST_N = FeaturesConfig(split="last_n", valid_last_n=1)
# Training rows transformed again in a fresh process: enough to meet every column's encodings.
RELOAD_ROWS = 3_000
# Runs in a fresh interpreter: load the saved workflows, transform raw rows, write the result.
RELOAD = """
import sys
import nvtabular as nvt
import pandas as pd
from tasks.features import attach_side_features

features, rows, out = sys.argv[1:]
raw = pd.read_parquet(rows)
items = pd.read_parquet(f"{features}/lookup/items.parquet")
users = pd.read_parquet(f"{features}/lookup/users.parquet")
joined = attach_side_features(raw, items, users)
for name in ("workflow", "workflow_user", "workflow_item"):
    transformed = nvt.Workflow.load(f"{features}/{name}").transform(joined)
    transformed.to_parquet(f"{out}/{name}.parquet", index=False)
"""


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("ml100k")
    mirror = make_mirror(root / "mirror", [movielens_archive("ml-100k.zip")], declare=True)
    with MovieLensServer(mirror) as server:
        return fetch_dataset(
            DataConfig(variant="ml-100k", mirror=server.url), PathsConfig(home=root / "home")
        )


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    cfg = ComputeConfig(
        device="cpu",
        n_workers=1,
        threads_per_worker=2,
        memory_limit="3GB",
        spill_dir=tmp_path_factory.mktemp("spill"),
    )
    with open_cluster(cfg) as (running, _device):
        yield running


@pytest.fixture(scope="module")
def features_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("features")


@pytest.fixture(scope="module")
def built(raw, client, features_dir):
    features = build_features(raw, LAST_N, features_dir)
    validate_features(features, features_dir, ValidationConfig())
    return features


@pytest.fixture(scope="module")
def splits(raw, client, tmp_path_factory):
    """The cleaned, split interactions as the build saw them, for each split kind."""
    import dask.dataframe as dd

    interactions = dd.read_parquet(str(raw.interactions))
    timestamps = profile_table(interactions, {"timestamp": "int64"})["timestamp"].quantiles
    out = {}
    for cfg in (LAST_N, FeaturesConfig(split="time")):
        work = tmp_path_factory.mktemp(cfg.split)
        train, valid, cleaning = clean_and_split(interactions, cfg, [0.5, 5.0], timestamps, work)
        out[cfg.split] = (train.compute(), valid.compute(), cleaning)
    return out


def read_split(directory: Path) -> pd.DataFrame:
    return pd.concat(pd.read_parquet(part) for part in sorted(directory.glob("*.parquet")))


def test_schema_tags_cardinalities_and_list_columns(built, raw):
    schema = Dataset(str(built.train_dir), engine="parquet").schema
    for tag, names in {
        Tags.USER_ID: ["user_id"],
        Tags.ITEM_ID: ["item_id"],
        Tags.BINARY_CLASSIFICATION: ["rating_binary"],
        # The raw rating, which the ranker grades its labels by (features.rating_target).
        Tags.REGRESSION: ["rating"],
        Tags.TARGET: ["rating_binary", "rating"],
    }.items():
        assert schema.select_by_tag(tag).column_names == names, tag
    assert {"gender", "age_bucket", "occupation", "zip_prefix"} <= set(
        schema.select_by_tag(Tags.USER).column_names
    )
    assert {"year_bucket", "genres"} <= set(schema.select_by_tag(Tags.ITEM).column_names)
    assert schema["genres"].is_list and not schema["item_id"].is_list

    # Categorify's three reserved indices (padding, null, out of vocabulary) plus the vocabulary.
    assert built.cardinalities["user_id"] == 943 + 3  # every user keeps training rows
    assert built.cardinalities["item_id"] == built.id_counts("item_id").size + 3
    genres = pd.read_parquet(raw.items)["genres"]
    names = {g for gs in genres for g in gs} | (
        {NO_GENRES} if (genres.str.len() == 0).any() else set()
    )
    assert built.cardinalities["genres"] == len(names) + 3
    assert built.cardinalities["gender"] == 2 + 3
    assert (built.n_train, built.n_valid) == (100_000 - 943, 943)


def test_statistics_and_report_sit_next_to_the_schema(built, features_dir):
    profile = built.profile()
    rating = profile.tables["interactions"]["rating"]
    assert (rating.count, rating.nulls, rating.min, rating.max) == (100_000, 0, 1.0, 5.0)
    assert rating.cardinality == 5 and len(rating.quantiles) == 101
    assert profile.tables["users"]["occupation"].cardinality == 21
    assert profile.tables["features"]["genres"].dtype == "list<int64>"
    assert (built.statistics_dir / "schema.pbtxt").exists()
    assert json.loads((features_dir / ACCEPTED).read_text())["fingerprint"] == built.fingerprint
    assert json.loads((built.path / "validation.json").read_text())["anomalies"] == []


def test_last_n_split_never_validates_before_training(splits):
    train, valid, cleaning = splits["last_n"]
    assert len(valid) == 943 and valid["user_id"].is_unique
    first_valid = valid.groupby("user_id")["timestamp"].min()
    last_train = train.groupby("user_id")["timestamp"].max()
    assert (first_valid >= last_train.reindex(first_valid.index)).all()
    assert sum(cleaning.values()) == 0  # ml-100k is clean after normalisation


def test_time_split_has_one_cutoff(splits):
    train, valid, _ = splits["time"]
    assert valid["timestamp"].min() > train["timestamp"].max()
    assert 0.15 < len(valid) / 100_000 < 0.25


def test_saved_workflows_reloaded_in_a_fresh_process_give_the_training_values(
    built, splits, tmp_path
):
    train_rows, _, _ = splits["last_n"]
    rows = tmp_path / "rows.parquet"
    train_rows.sample(RELOAD_ROWS, random_state=0).to_parquet(rows, index=False)
    subprocess.run(
        [sys.executable, "-c", RELOAD, str(built.path), str(rows), str(tmp_path)],
        cwd=REPO,
        check=True,
        timeout=300,
    )
    reloaded = pd.read_parquet(tmp_path / "workflow.parquet")
    key = ["user_id", "item_id"]  # encoded ids: unique per training row after cleaning
    expected = reloaded[key].merge(read_split(built.train_dir), on=key, how="left")
    assert list(expected.columns) == list(reloaded.columns) and len(expected) == RELOAD_ROWS
    for column in expected.columns:
        if column == "genres":
            assert [list(g) for g in reloaded[column]] == [list(g) for g in expected[column]]
        else:
            np.testing.assert_array_equal(reloaded[column], expected[column], err_msg=column)
    for side in ("user", "item"):
        part = pd.read_parquet(tmp_path / f"workflow_{side}.parquet")
        assert f"{side}_id" in part.columns and "rating_binary" not in part.columns
        columns = [c for c in part.columns if c != "genres"]
        pd.testing.assert_frame_equal(part[columns], reloaded[columns], check_dtype=False)


def test_a_bad_batch_is_blocked_and_the_baseline_kept(built, raw, client, features_dir, tmp_path):
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    inter = pd.read_parquet(raw.interactions)
    rng = np.random.default_rng(0)
    inter.loc[rng.random(len(inter)) < 0.4, "rating"] = 1.0  # the rating distribution shifts
    inter.loc[inter["user_id"] > 600, "user_id"] += 10_000  # a third of the users are new
    pq.write_table(pq.read_table(raw.items), bad_dir / "items.parquet")
    users = pd.read_parquet(raw.users)
    users.loc[users.index[:100], "gender"] = None  # 10% nulls where there were none
    users = pd.concat([users, users.assign(user_id=users["user_id"] + 10_000)])
    users.to_parquet(bad_dir / "users.parquet", index=False)
    inter.to_parquet(bad_dir / "interactions.parquet", index=False)
    bad = raw.model_copy(update={"path": bad_dir, "checksum": "bad"})
    assert input_dtypes(bad)  # structurally fine: the anomalies are in the values

    features = build_features(bad, LAST_N, features_dir)
    with pytest.raises(DataValidationError) as error:
        validate_features(features, features_dir, ValidationConfig())
    found = {(a.table, a.column, a.check) for a in error.value.anomalies}
    assert found == {
        ("interactions", "rating", "drift"),
        ("interactions", "user_id", "unseen_ids"),
        ("users", "gender", "null_rate"),
    }
    assert "interactions.rating: drift: expected KS statistic <= 0.1, found" in str(error.value)
    assert json.loads((features_dir / ACCEPTED).read_text())["fingerprint"] == built.fingerprint
