"""Turn a MovieLens archive into "your own data": the tables and the ``recflow.yaml`` that
declares them, in one of three shapes a product's export might have.

    python examples/movielens_as_own_data.py ml-latest-small.zip out/ --shape parquet
    recflow --config out/recflow.yaml run

Shapes (README, "Run it on your data"):

* ``parquet``: parquet files with string ids (``u1``, ``m296``), dates as ISO 8601 strings, an
  items table with genres as a list column and the release year as a continuous feature;
* ``csv``: CSV files with the product's own column names (``customer``, ``product``,
  ``stars``, ``ts``, ``labels``) and integer ids, genres as one ``|``-joined ``labels`` field;
* ``implicit``: the ``parquet`` shape without the ratings: every row is an interaction.

The archive is the GroupLens one (ml-latest-small or a variant with ``ratings.csv`` and
``movies.csv``); nothing of it is shipped with recflow (its licence forbids redistribution).
"""

from __future__ import annotations

import argparse
import re
import zipfile
from pathlib import Path

import pandas as pd
import yaml

SHAPES = ("parquet", "csv", "implicit")
_YEAR = re.compile(r"\((\d{4})\)\s*$")


def read_archive(archive: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``ratings.csv`` and ``movies.csv`` of a MovieLens CSV-layout archive."""
    with zipfile.ZipFile(archive) as zf:
        names = {Path(name).name: name for name in zf.namelist()}
        with zf.open(names["ratings.csv"]) as f:
            ratings = pd.read_csv(f)
        with zf.open(names["movies.csv"]) as f:
            movies = pd.read_csv(f)
    return ratings, movies


def write_example(archive: Path, out_dir: Path, shape: str, users: int | None = None) -> Path:
    """Write the tables of ``shape`` and their ``recflow.yaml`` into ``out_dir``; returns the
    YAML's path (its ``paths.home`` is ``out_dir/home``). ``users``: keep the ratings of the
    first ``users`` users only (a quicker example)."""
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, not {shape!r}")
    ratings, movies = read_archive(archive)
    if users is not None:
        ratings = ratings[ratings["userId"].isin(sorted(ratings["userId"].unique())[:users])]
    out_dir.mkdir(parents=True, exist_ok=True)
    genres = movies["genres"].where(movies["genres"] != "(no genres listed)", "")
    year = movies["title"].str.extract(_YEAR, expand=False).astype("float64")
    if shape == "csv":
        interactions = ratings.rename(
            columns={
                "userId": "customer",
                "movieId": "product",
                "rating": "stars",
                "timestamp": "ts",
            }
        )
        # A shop's export names its tag lists ``labels``: a name NVTabular uses too (#32).
        items = pd.DataFrame({"product": movies["movieId"], "labels": genres, "year": year})
        interactions.to_csv(out_dir / "interactions.csv", index=False)
        items.to_csv(out_dir / "items.csv", index=False)
        source = {
            "interactions": {
                "path": str(out_dir / "interactions.csv"),
                "user": "customer",
                "item": "product",
                "timestamp": "ts",
                "rating": "stars",
                "rating_scale": [0.5, 5.0],
                "positive_threshold": 4.0,
            },
            "items": {
                "path": str(out_dir / "items.csv"),
                "id": "product",
                "continuous": ["year"],
                "lists": ["labels"],
            },
        }
    else:
        when = pd.to_datetime(ratings["timestamp"], unit="s", utc=True)
        interactions = pd.DataFrame(
            {
                "user": "u" + ratings["userId"].astype(str),
                "movie": "m" + ratings["movieId"].astype(str),
                "rated_at": when.dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        )
        mapping = {"path": str(out_dir / "interactions.parquet"), "user": "user", "item": "movie"}
        mapping["timestamp"] = "rated_at"
        if shape == "parquet":
            interactions["stars"] = ratings["rating"]
            mapping |= {"rating": "stars", "rating_scale": [0.5, 5.0], "positive_threshold": 4.0}
        items = pd.DataFrame(
            {
                "movie": "m" + movies["movieId"].astype(str),
                "genres": [g.split("|") if g else [] for g in genres],
                "year": year,
            }
        )
        interactions.to_parquet(out_dir / "interactions.parquet", index=False)
        items.to_parquet(out_dir / "items.parquet", index=False)
        source = {
            "interactions": mapping,
            "items": {
                "path": str(out_dir / "items.parquet"),
                "id": "movie",
                "continuous": ["year"],
                "lists": ["genres"],
            },
        }
    config = {
        "paths": {"home": str(out_dir / "home")},
        "data": {"variant": "custom", "custom": {"name": f"movielens-{shape}", **source}},
    }
    path = out_dir / "recflow.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("archive", type=Path, help="a MovieLens zip with ratings.csv, movies.csv")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--shape", choices=SHAPES, default="parquet")
    parser.add_argument("--users", type=int, help="keep the first N users' ratings only")
    args = parser.parse_args()
    print(write_example(args.archive, args.out_dir, args.shape, args.users))


if __name__ == "__main__":
    main()
