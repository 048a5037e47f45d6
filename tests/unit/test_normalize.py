"""Parsing the original MovieLens files into the canonical tables.

The real ml-100k and ml-latest-small archives cover the ml-100k and CSV layouts directly. No
'::' (ml-1m, ml-10m) archive is available to tests, so that layout is exercised by rewriting the
real files in it, line for line, and checking the result equals the directly parsed one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from recflow.config import SyntheticConfig
from tasks import synthetic
from tasks.extract import safe_extract
from tasks.normalize import (
    INTERACTIONS_FILE,
    INTERACTIONS_SCHEMA,
    ITEMS_FILE,
    ITEMS_SCHEMA,
    ML1M_OCCUPATIONS,
    NO_GENRES,
    TAGS_FILE,
    TAGS_SCHEMA,
    USERS_FILE,
    USERS_SCHEMA,
    Layout,
    MalformedSource,
    normalize,
    parse_year,
    split_genres,
)
from tests.support.movielens_server import movielens_archive

LIMITS = {"max_bytes": 1 << 30, "max_ratio": 200.0}


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ml-100k")
    safe_extract(movielens_archive("ml-100k.zip"), out, **LIMITS)
    return out / "ml-100k"


@pytest.fixture(scope="module")
def latest_small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ml-latest-small")
    safe_extract(movielens_archive("ml-latest-small.zip"), out, **LIMITS)
    return out / "ml-latest-small"


@pytest.fixture(scope="module")
def ml100k_tables(ml100k, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("ml-100k-tables")
    return out, normalize(Layout.ML100K, ml100k, out)


@pytest.fixture(scope="module")
def latest_small_tables(latest_small, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("latest-small-tables")
    return out, normalize(Layout.CSV, latest_small, out)


def read(directory: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(directory / name)


def test_ml100k_counts_match_the_original(ml100k_tables):
    out, report = ml100k_tables
    assert (report.n_interactions, report.n_users, report.n_items) == (100_000, 943, 1682)
    assert report.has_users and not report.has_tags and report.dropped == {}
    assert len(read(out, USERS_FILE)) == 943


def test_ml100k_items_users_and_genres_from_flags(ml100k_tables):
    out, _ = ml100k_tables
    items = read(out, ITEMS_FILE).set_index("item_id")
    toy_story = items.loc[1]
    assert toy_story.title == "Toy Story (1995)"
    assert toy_story.year == 1995
    assert list(toy_story.genres) == ["Animation", "Children's", "Comedy"]
    # Item 267 is literally "unknown": no year, and the "unknown" genre flag means no genre.
    assert pd.isna(items.loc[267].year) and list(items.loc[267].genres) == [NO_GENRES]
    users = read(out, USERS_FILE).set_index("user_id")
    assert users.loc[1].to_dict() == {
        "gender": "M", "age": 24, "occupation": "technician", "zip": "85711",
        "age_bucket": 1, "zip_prefix": "8",
    }  # fmt: skip
    assert users.loc[74].zip == "T8H1N"  # Canadian postcodes stay strings


def test_latest_small_counts_half_stars_and_tags(latest_small_tables):
    out, report = latest_small_tables
    assert (report.n_interactions, report.n_users, report.n_items) == (100_836, 610, 9742)
    assert not report.has_users and report.has_tags and report.dropped == {}
    ratings = read(out, INTERACTIONS_FILE)["rating"]
    assert ratings.dtype == "float32"
    assert sorted(ratings.unique()) == [x / 2 for x in range(1, 11)]
    assert len(read(out, TAGS_FILE)) == 3683
    items = read(out, ITEMS_FILE).set_index("item_id")
    assert list(items.loc[143410].genres) == [NO_GENRES]
    assert items.loc[171749].year == 2006  # "Death Note: Desu nôto (2006–2007)"


def write_dat(directory: Path, name: str, rows, encoding: str = "latin-1") -> None:
    lines = ["::".join(str(field) for field in row) for row in rows]
    (directory / name).write_bytes(("\n".join(lines) + "\n").encode(encoding))


def test_ml1m_dat_layout_parses_like_the_original(ml100k, ml100k_tables, tmp_path):
    """ml-100k's own files rewritten as ml-1m's ratings.dat, movies.dat and users.dat."""
    expected_dir, expected = ml100k_tables
    src = tmp_path / "ml-1m"
    src.mkdir()
    ratings = pd.read_csv(ml100k / "u.data", sep="\t", header=None)
    write_dat(src, "ratings.dat", ratings.itertuples(index=False))
    items = read(expected_dir, ITEMS_FILE)
    write_dat(
        src, "movies.dat", zip(items.item_id, items.title, items.genres.map("|".join), strict=True)
    )
    users = read(expected_dir, USERS_FILE)
    codes = users.user_id % len(ML1M_OCCUPATIONS)  # ml-1m stores occupation codes
    write_dat(
        src, "users.dat", zip(users.user_id, users.gender, users.age, codes, users.zip, strict=True)
    )

    out = tmp_path / "out"
    report = normalize(Layout.DAT, src, out)
    assert (report.n_interactions, report.n_users, report.n_items) == (
        expected.n_interactions, expected.n_users, expected.n_items
    )  # fmt: skip
    pd.testing.assert_frame_equal(
        read(out, INTERACTIONS_FILE), read(expected_dir, INTERACTIONS_FILE)
    )
    pd.testing.assert_frame_equal(read(out, ITEMS_FILE), items)
    parsed_users = read(out, USERS_FILE)
    assert list(parsed_users.occupation) == [ML1M_OCCUPATIONS[c] for c in codes]


def test_ml10m_dat_layout_with_half_stars_and_tags(latest_small, latest_small_tables, tmp_path):
    """ml-latest-small's files rewritten as ml-10m's (UTF-8, no users.dat, tags.dat)."""
    expected_dir, expected = latest_small_tables
    src = tmp_path / "ml-10M100K"
    src.mkdir()
    ratings = pd.read_csv(latest_small / "ratings.csv")
    write_dat(src, "ratings.dat", ratings.itertuples(index=False))
    movies = pd.read_csv(latest_small / "movies.csv")
    write_dat(src, "movies.dat", movies.itertuples(index=False), encoding="utf-8")
    tags = pd.read_csv(latest_small / "tags.csv")
    write_dat(src, "tags.dat", tags.itertuples(index=False), encoding="utf-8")

    out = tmp_path / "out"
    report = normalize(Layout.DAT, src, out)
    assert (report.n_interactions, report.n_items, report.has_users, report.has_tags) == (
        expected.n_interactions, expected.n_items, False, True
    )  # fmt: skip
    for name in (INTERACTIONS_FILE, ITEMS_FILE, TAGS_FILE):
        pd.testing.assert_frame_equal(read(out, name), read(expected_dir, name))


def test_latin1_titles_are_decoded(tmp_path):
    (tmp_path / "ratings.dat").write_text("1::1::5::978300760\n")
    (tmp_path / "movies.dat").write_bytes("1::Misérables, Les (1995)::Drama\n".encode("latin-1"))
    normalize(Layout.DAT, tmp_path, tmp_path / "out")
    assert read(tmp_path / "out", ITEMS_FILE).title[0] == "Misérables, Les (1995)"


def test_schemas_are_identical_across_variants(ml100k_tables, latest_small_tables, tmp_path):
    generated = tmp_path / "synthetic"
    synthetic.generate(SyntheticConfig(n_users=50, n_items=40, n_ratings=500), generated)
    expected = {
        INTERACTIONS_FILE: INTERACTIONS_SCHEMA,
        ITEMS_FILE: ITEMS_SCHEMA,
        USERS_FILE: USERS_SCHEMA,
        TAGS_FILE: TAGS_SCHEMA,
    }
    for directory in (ml100k_tables[0], latest_small_tables[0], generated):
        for name, schema in expected.items():
            if (directory / name).exists():
                # Parquet names list elements "element"; compare everything else exactly.
                written = pq.read_schema(directory / name).remove_metadata()
                assert [(f.name, str(f.type).replace("element", "item")) for f in written] == [
                    (f.name, str(f.type)) for f in schema
                ], (directory, name)


def test_cleaning_rules_drop_and_count(ml100k, tmp_path):
    src = tmp_path / "ml-100k"
    shutil.copytree(ml100k, src)
    with open(src / "u.data", "a") as handle:
        handle.write(
            "1\t1\t2\t999999999\n"  # re-rating of (1, 1): the later one wins
            "1\t1000\t6\t881250949\n"  # off the scale
            "1\t1001\t0\t881250949\n"  # off the scale
            "1\t1002\t\t881250949\n"  # missing rating
            "1\t5000\t4\t881250949\n"  # no such item
            "9999\t1\t4\t881250949\n"  # no such user
            "1\t1003\t4\n"  # a field short
        )
    report = normalize(Layout.ML100K, src, tmp_path / "out")
    assert report.dropped == {
        "interactions: earlier rating of a re-rated item": 1,
        "interactions: item not in the item table": 1,
        "interactions: malformed line": 1,
        "interactions: missing value": 1,
        "interactions: rating off the 0.5-5 half-star scale": 2,
        "interactions: user not in the user table": 1,
    }
    assert report.n_interactions == 100_000
    ratings = read(tmp_path / "out", INTERACTIONS_FILE).set_index(["user_id", "item_id"])
    assert ratings.loc[(1, 1)].rating == 2.0


def test_a_non_numeric_rating_file_is_malformed(tmp_path):
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,great,5\n")
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n1,A (2000),Drama\n")
    with pytest.raises(MalformedSource, match="ratings.csv"):
        normalize(Layout.CSV, tmp_path, tmp_path / "out")


def test_a_missing_file_says_which(tmp_path):
    with pytest.raises(MalformedSource, match="u.data is missing"):
        normalize(Layout.ML100K, tmp_path, tmp_path / "out")


@pytest.mark.parametrize(
    ("title", "year"),
    [
        ("Toy Story (1995)", 1995),
        ("Land Before Time III: The Time of the Great Giving (1995) (V)", 1995),
        ("Death Note: Desu nôto (2006–2007)", 2006),
        ("1984 (1984)", 1984),
        ("Babylon 5", None),
        ("unknown", None),
    ],
)
def test_parse_year(title, year):
    assert parse_year(title) == year


def test_split_genres():
    assert split_genres("Adventure|Children|Fantasy") == ["Adventure", "Children", "Fantasy"]
    assert split_genres("(no genres listed)") == []
