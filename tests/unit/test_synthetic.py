"""The synthetic dataset: shape, determinism, chunking, and that its planted signal is there."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from recflow.config import DataConfig, PathsConfig, SyntheticConfig
from tasks import synthetic
from tasks.download import fetch_dataset
from tasks.normalize import INTERACTIONS_FILE, ITEMS_FILE, USERS_FILE

SMALL = SyntheticConfig(n_users=300, n_items=120, n_ratings=6_000, chunk_rows=1_000, seed=7)


@pytest.fixture(scope="module")
def default_dataset(tmp_path_factory):
    """The default size: what the flows train on when no MovieLens variant is chosen."""
    out = tmp_path_factory.mktemp("synthetic")
    config = SyntheticConfig()
    synthetic.generate(config, out)
    return config, pd.read_parquet(out / INTERACTIONS_FILE)


def generate(config: SyntheticConfig, out) -> dict[str, pd.DataFrame]:
    synthetic.generate(config, out)
    return {
        name: pd.read_parquet(out / name) for name in (INTERACTIONS_FILE, ITEMS_FILE, USERS_FILE)
    }


def test_planted_scores_separate_liked_from_disliked(default_dataset):
    config, ratings = default_dataset
    liked = ratings["rating"] >= 4
    assert 0.40 <= liked.mean() <= 0.55
    scores = synthetic.true_scores(config, ratings["user_id"], ratings["item_id"])
    assert roc_auc_score(liked, scores) > 0.85


def test_which_items_get_rated_depends_on_preference(default_dataset):
    """Rated items score higher for their user than the same items do for everyone else."""
    config, ratings = default_dataset
    rng = np.random.default_rng(0)
    others = rng.integers(1, config.n_users + 1, len(ratings))
    own = synthetic.true_scores(config, ratings["user_id"], ratings["item_id"])
    theirs = synthetic.true_scores(config, others, ratings["item_id"])
    assert own.mean() - theirs.mean() > 0.5


def test_layout_and_value_ranges(tmp_path):
    tables = generate(SMALL, tmp_path)
    ratings, items, users = tables[INTERACTIONS_FILE], tables[ITEMS_FILE], tables[USERS_FILE]
    assert len(ratings) == SMALL.n_ratings
    assert set(ratings["rating"].unique()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert not ratings.duplicated(["user_id", "item_id"]).any()
    per_user = ratings.groupby("user_id").size()
    assert len(per_user) == SMALL.n_users
    assert per_user.min() >= synthetic.MIN_RATINGS_PER_USER
    assert per_user.max() <= SMALL.n_items
    assert ratings.groupby("user_id")["timestamp"].is_monotonic_increasing.all()
    span = ratings["timestamp"].agg(["min", "max"])
    assert synthetic.START_TIMESTAMP <= span["min"]
    assert span["max"] <= synthetic.START_TIMESTAMP + synthetic.WINDOW_SECONDS
    assert set(ratings["item_id"]) <= set(items["item_id"])
    assert items["title"].str.fullmatch(r"Synthetic Movie \d+ \(\d{4}\)").all()
    assert items["genres"].map(len).between(1, 3).all()
    assert set(users["gender"]) == {"M", "F"} and users["zip"].str.fullmatch(r"\d{5}").all()


def test_generation_is_chunked_into_row_groups(tmp_path):
    synthetic.generate(SMALL, tmp_path)
    metadata = pq.ParquetFile(tmp_path / INTERACTIONS_FILE).metadata
    assert metadata.num_row_groups >= SMALL.n_ratings // SMALL.chunk_rows
    sizes = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
    # A chunk holds whole users, so it overshoots chunk_rows by less than one user's ratings.
    assert max(sizes) < SMALL.chunk_rows + SMALL.n_items


def test_same_seed_same_data_other_seed_other_data(tmp_path):
    first = generate(SMALL, tmp_path / "a")
    second = generate(SMALL, tmp_path / "b")
    for name, table in first.items():
        pd.testing.assert_frame_equal(table, second[name])
    reseeded = generate(SMALL.model_copy(update={"seed": 8}), tmp_path / "c")
    assert not reseeded[INTERACTIONS_FILE].equals(first[INTERACTIONS_FILE])
    assert synthetic.config_checksum(SMALL) != synthetic.config_checksum(
        SMALL.model_copy(update={"seed": 8})
    )


def test_impossible_sizes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="n_ratings=100 must lie between"):
        synthetic.generate(SyntheticConfig(n_users=100, n_items=50, n_ratings=100), tmp_path)


def test_fetch_dataset_generates_once_per_config(tmp_path):
    paths = PathsConfig(home=tmp_path)
    data = DataConfig(variant="synthetic", synthetic=SMALL)
    dataset = fetch_dataset(data, paths)
    assert dataset.path == paths.raw_dir / synthetic.dataset_name(SMALL)
    assert dataset.checksum == synthetic.config_checksum(SMALL)
    assert (dataset.n_interactions, dataset.n_users, dataset.n_items) == (6_000, 300, 120)
    assert dataset.has_users
    made = dataset.interactions.stat().st_mtime_ns
    assert fetch_dataset(data, paths) == dataset
    assert dataset.interactions.stat().st_mtime_ns == made
