"""Your own tables as a dataset (tasks/custom.py): what is read, what is refused and how."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recflow.config import (
    CustomSource,
    DataConfig,
    FeaturesConfig,
    PathsConfig,
    SideTableSource,
)
from recflow.external_ids import EXTERNAL_ID, internal_ids
from tasks.custom import CustomSourceError
from tasks.download import fetch_dataset, source_cleaning
from tasks.features import Negatives, build_features

pytestmark = pytest.mark.unit

RATINGS = pd.DataFrame(
    {
        "who": ["alice", "bob", "bob", "carol", "dave"],
        "what": ["x1", "x1", "x2", "x3", "x9"],
        "stars": [5, 3, 4, 1, 2],
        "when": ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05"],
    }
)
ITEMS = pd.DataFrame(
    {
        "sku": ["x1", "x2", "x3"],
        "brand": ["a", "b", None],
        "price": [1.0, 2.5, None],
        "tags": [["red", "big"], [], ["red"]],
    }
)
MAPPING = {
    "user": "who",
    "item": "what",
    "timestamp": "when",
    "rating": "stars",
    "rating_scale": (1, 5),
    "positive_threshold": 4,
}
ITEMS_MAPPING = {"id": "sku", "categorical": ["brand"], "continuous": ["price"], "lists": ["tags"]}


def source(tmp_path: Path, ratings=RATINGS, items=ITEMS, **custom) -> CustomSource:
    ratings.to_parquet(tmp_path / "ratings.parquet", index=False)
    given = {"interactions": {"path": str(tmp_path / "ratings.parquet"), **MAPPING}}
    if items is not None:
        items.to_parquet(tmp_path / "items.parquet", index=False)
        given["items"] = {"path": str(tmp_path / "items.parquet"), **ITEMS_MAPPING}
    return CustomSource.model_validate({"name": "shop", **given, **custom})


def fetch(tmp_path: Path, custom: CustomSource):
    data = DataConfig(variant="custom", custom=custom)
    return fetch_dataset(data, PathsConfig(home=tmp_path / "home"))


def tree(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` with its sha256: what "unchanged" compares."""
    return {
        str(f.relative_to(directory)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(directory.rglob("*"))
        if f.is_file()
    }


def test_string_ids_are_hashed_and_named_back(tmp_path):
    dataset = fetch(tmp_path, source(tmp_path))
    assert dataset.external_ids and dataset.feedback == "rating"
    assert dataset.rating_scale == (1, 5) and dataset.positive_threshold == 4
    # Stored under internal names (tasks/custom.py internal_name), each mapped to its own.
    assert dataset.items_features.columns == ("item_0_brand", "item_1_price", "item_2_tags")
    assert dataset.source_names == {
        "item_0_brand": "brand",
        "item_1_price": "price",
        "item_2_tags": "tags",
    }
    interactions = pd.read_parquet(dataset.interactions)
    # x9 is not in the items table: kept (unknown_side_ids: keep), as a cold item.
    assert len(interactions) == 5
    assert interactions["item_id"].tolist() == internal_ids(RATINGS["what"]).tolist()
    assert interactions["timestamp"].iloc[0] == pd.Timestamp("2024-01-01", tz="UTC").timestamp()
    names = pd.read_parquet(dataset.external_ids_file("item_id"))
    assert (
        dict(zip(names[EXTERNAL_ID], names["item_id"], strict=True))["x2"]
        == internal_ids(["x2"])[0]
    )
    items = pd.read_parquet(dataset.items).set_index("item_id")
    assert list(items.loc[internal_ids(["x1"])[0], "item_2_tags"]) == ["red", "big"]


def test_integer_ids_in_csv_stay_integers_and_other_names_map(tmp_path):
    csv = tmp_path / "log.csv"
    csv.write_text("u;i;ts\n1;10;100\n2;10;200\n2;11;300\n")
    custom = CustomSource.model_validate(
        {
            "interactions": {
                "path": str(tmp_path / "*.csv"),
                "user": "u",
                "item": "i",
                "timestamp": "ts",
                "csv": {"delimiter": ";"},
            }
        }
    )
    dataset = fetch(tmp_path, custom)
    assert not dataset.external_ids and dataset.feedback == "implicit"
    interactions = pd.read_parquet(dataset.interactions)
    assert interactions["item_id"].tolist() == [10, 10, 11]
    assert interactions["rating"].tolist() == [1.0, 1.0, 1.0]
    # No items table: the catalogue is what was interacted with.
    assert pd.read_parquet(dataset.items)["item_id"].tolist() == [10, 11]


def test_column_names_of_ours_or_nvtabulars_build_features_and_are_shown_as_declared(tmp_path):
    # Issue #32: a list column named labels met Categorify's own "labels" column; item_count,
    # rating, user_id and the same name in both tables met the stages' columns in the joins.
    n_users, n_items = 12, 8
    ratings = pd.DataFrame(
        {
            "who": [f"u{i % n_users}" for i in range(96)],
            # Each user rates every item once, so the latest held out is new to them.
            "what": [f"x{(i * 7 + i // n_users) % n_items}" for i in range(96)],
            "stars": [1 + i % 5 for i in range(96)],
            "when": range(96),
        }
    )
    items = pd.DataFrame(
        {
            "sku": [f"x{i}" for i in range(n_items)],
            "labels": [["red", "big"][: i % 3] for i in range(n_items)],
            "item_count": [float(i) for i in range(n_items)],
            "user_id": [f"maker {i % 3}" for i in range(n_items)],
        }
    )
    users = pd.DataFrame({"uid": [f"u{i}" for i in range(n_users)], "labels": ["a", "b"] * 6})
    users.to_parquet(tmp_path / "users.parquet", index=False)
    custom = source(tmp_path, ratings=ratings, items=items).model_copy(
        update={
            "items": SideTableSource(
                path=str(tmp_path / "items.parquet"),
                id="sku",
                categorical=("user_id",),
                continuous=("item_count",),
                lists=("labels",),
            ),
            "users": SideTableSource(
                path=str(tmp_path / "users.parquet"), id="uid", categorical=("labels",)
            ),
        }
    )
    dataset = fetch(tmp_path, custom)
    built = build_features(dataset, FeaturesConfig(), tmp_path / "features")
    profile = built.profile().tables
    assert set(profile["items"]) == {"item_id", "user_id", "item_count", "labels"}
    assert set(profile["users"]) == {"user_id", "labels"}
    # Both tables' labels are features; the features table keeps them apart.
    assert {"item_2_labels", "user_0_labels"} <= set(profile["features"])


def test_an_unchanged_source_is_reused_and_a_changed_one_is_a_new_dataset(tmp_path):
    first = fetch(tmp_path, source(tmp_path))
    before = tree(first.path)
    assert fetch(tmp_path, source(tmp_path)).checksum == first.checksum
    assert tree(first.path) == before
    changed = fetch(tmp_path, source(tmp_path, ratings=RATINGS.assign(stars=[5, 3, 4, 1, 3])))
    assert changed.checksum != first.checksum


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"ratings": RATINGS.drop(columns="stars")},
            r"ratings.parquet: column 'stars' \(mapped in data.custom\) is missing",
        ),
        (
            {"ratings": RATINGS.assign(stars=["5", "3", "four", "1", "2"])},
            r"ratings.parquet: column 'stars': 1 values are not numbers \(row 3: 'four'\)",
        ),
        (
            {"ratings": RATINGS.assign(when=["2024-01-01", "soon", "x", "2024-01-04", "y"])},
            r"column 'when': 3 values are not unix seconds or dates \(row 2: 'soon'",
        ),
        ({"ratings": RATINGS.iloc[:0]}, r"data.custom.interactions: no rows in"),
        (
            {"items": pd.concat([ITEMS, ITEMS.iloc[[1]]], ignore_index=True)},
            r"data.custom.items: column 'sku': 1 ids are listed more than once, e.g. 'x2' "
            r"in rows \[2, 4\]",
        ),
        (
            {"unknown_side_ids": "error"},
            r"1 of 5 interactions have a item_id not in the items table",
        ),
    ],
    ids=["missing-column", "not-a-number", "bad-date", "empty", "duplicate-id", "unknown-id"],
)
def test_bad_input_names_file_column_and_row_and_writes_nothing(tmp_path, change, message):
    good = fetch(tmp_path, source(tmp_path))
    before = tree(tmp_path / "home")
    tables = {k: change.pop(k) for k in ("ratings", "items") if k in change}
    with pytest.raises(CustomSourceError, match=message):
        fetch(tmp_path, source(tmp_path, **tables, **change))
    # The dataset built before is intact, and nothing else was left behind.
    assert tree(tmp_path / "home") == before
    assert fetch(tmp_path, source(tmp_path)).checksum == good.checksum


def test_a_path_that_matches_nothing_is_named(tmp_path):
    custom = source(tmp_path).model_copy(
        update={
            "interactions": source(tmp_path).interactions.model_copy(
                update={"path": str(tmp_path / "exports" / "*.parquet")}
            )
        }
    )
    with pytest.raises(CustomSourceError, match=r"exports/\*\.parquet' matches no file"):
        fetch(tmp_path, custom)
    assert not (tmp_path / "home").exists()


def test_unknown_side_ids_dropped_are_counted(tmp_path):
    dataset = fetch(tmp_path, source(tmp_path, unknown_side_ids="drop"))
    assert dataset.n_interactions == 4
    assert source_cleaning(dataset.path) == {"interactions: item_id not in the items table": 1}


def test_rating_mapping_needs_its_scale_and_threshold():
    with pytest.raises(ValueError, match="rating_scale and positive_threshold"):
        CustomSource.model_validate({"interactions": {"path": "x", "rating": "stars"}})
    with pytest.raises(ValueError, match="either a rating or a label"):
        CustomSource.model_validate({"interactions": {"path": "x", "rating": "r", "label": "l"}})


def test_sampled_negatives_avoid_the_users_items_and_follow_popularity():
    rng = np.random.default_rng(0)
    positives = pd.DataFrame(
        {
            "user_id": np.repeat(np.arange(50), 4),
            "item_id": rng.integers(0, 100, 200),
            "rating": 1.0,
            "timestamp": 0,
        }
    ).drop_duplicates(["user_id", "item_id"])
    counts = pd.Series(np.r_[np.full(10, 1000), np.ones(90)], index=np.arange(100))
    negatives = Negatives(counts, per_positive=4, seed=1).sample(positives)
    assert (negatives["rating"] == 0).all()
    pairs = set(zip(positives.user_id, positives.item_id, strict=True))
    assert not pairs & set(zip(negatives.user_id, negatives.item_id, strict=True))
    assert len(negatives) > 1.5 * len(positives)  # a repeated draw counts once
    # Items 0-9 hold 1000^0.75/(10*1000^0.75 + 90) = 97% of the sampling weight.
    assert (negatives["item_id"] < 10).mean() > 0.8
    again = Negatives(counts, per_positive=4, seed=1).sample(positives)
    pd.testing.assert_frame_equal(negatives, again)


def test_a_label_column_is_0_or_1(tmp_path):
    labelled = RATINGS.assign(clicked=[1, 0, 1, 0, 1])
    mapping = {"path": str(tmp_path / "ratings.parquet"), "user": "who", "item": "what"}
    custom = CustomSource.model_validate(
        {"interactions": {**mapping, "timestamp": "when", "label": "clicked"}}
    )
    labelled.to_parquet(tmp_path / "ratings.parquet", index=False)
    dataset = fetch(tmp_path, custom)
    assert (dataset.feedback, dataset.rating_scale, dataset.positive_threshold) == (
        "label",
        (0.0, 1.0),
        1.0,
    )
    labelled.assign(clicked=[1, 0, 2, 0, 1]).to_parquet(tmp_path / "ratings.parquet", index=False)
    with pytest.raises(CustomSourceError, match=r"'clicked': 1 values are not 0 or 1 \(row 3: 2\)"):
        fetch(tmp_path, custom)


def test_an_http_url_is_read_like_a_local_file(tmp_path):
    """fsspec URLs: a local HTTP server stands in for a web or object store."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    exports = tmp_path / "exports"
    exports.mkdir()
    RATINGS.to_csv(exports / "ratings.csv", index=False)
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(exports))
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/ratings.csv"
        custom = CustomSource.model_validate({"interactions": {"path": url, **MAPPING}})
        try:
            dataset = fetch(tmp_path, custom)
        finally:
            server.shutdown()
    assert dataset.n_interactions == len(RATINGS) and dataset.external_ids
    local = CustomSource.model_validate(
        {"interactions": {"path": str(exports / "ratings.csv"), **MAPPING}}
    )
    # The same bytes from another place are the same dataset.
    assert fetch(tmp_path / "local", local).checksum == dataset.checksum


def test_your_own_validation_rows_are_the_predefined_split(tmp_path):
    from recflow.config import FeaturesConfig
    from tasks.data_checks import DataValidationError
    from tasks.features import SPLIT_FLAG, _dedupe_and_flag, input_dtypes

    held_out = pd.DataFrame(
        {"who": ["alice", "bob"], "what": ["x2", "x3"], "stars": [4, 2], "when": ["2024-02-01"] * 2}
    )
    held_out.to_parquet(tmp_path / "held_out.parquet", index=False)
    custom = source(tmp_path)
    given = custom.interactions.model_copy(
        update={"validation": str(tmp_path / "held_out.parquet")}
    )
    dataset = fetch(tmp_path, custom.model_copy(update={"interactions": given}))
    rows = pd.read_parquet(dataset.interactions)
    assert rows["in_validation"].tolist() == [False] * 5 + [True] * 2
    predefined = FeaturesConfig(split="predefined")
    flagged = _dedupe_and_flag(rows, predefined, None, None)
    assert "in_validation" not in flagged
    valid = flagged[flagged[SPLIT_FLAG]]
    assert sorted(valid["item_id"]) == sorted(internal_ids(["x2", "x3"]))
    input_dtypes(dataset, "predefined")
    # A dataset without its own validation rows cannot be split by them.
    (tmp_path / "other").mkdir()
    with pytest.raises(DataValidationError, match="in_validation"):
        input_dtypes(fetch(tmp_path / "other", source(tmp_path / "other")), "predefined")
