"""Declared own-data tables drawn by Hypothesis, the shapes real exports have (issue #32):
column names (ours, NVTabular's, pandas', Dask's, spaces, dots, slashes, unicode, leading
digits, very long, one name in two tables), id types, timestamps, ratings on and off the
scale, list columns, categorical dtypes, duplicate rows; and the one contract every such
source is held to (``import_outcome``, ``features_outcome``, ``training_outcome``).

Used by tests/unit/test_own_data_generated.py (the import, a few dozen examples; one source
through training) and by benchmarks/own_data_fuzz.py (import, features and training,
hundreds).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import strategies as st

from recflow.artifacts import Candidate, FeatureSet, RawDataset
from recflow.config import (
    CustomSource,
    DataConfig,
    FeaturesConfig,
    ItemItemConfig,
    OrderingConfig,
    PathsConfig,
    RankingConfig,
    RetrievalConfig,
    ServingConfig,
)
from tasks.custom import CustomSourceError
from tasks.data_checks import DataValidationError
from tasks.download import fetch_dataset
from tasks.features import build_features

# Names that met an internal one before #32, or that a file system, pandas or TF chokes on.
HOSTILE_NAMES = (
    "labels", "order", "user_id", "item_id", "rating", "timestamp", "rating_binary",
    "in_validation", "__valid", "item_count", "user_count", "label", "index", "level_0",
    "__null_dask_index__", "external_id", "brand name", "a.b", "a/b", "..", "1st", "größe",
    "名前", "x" * 300, " ", "item_0_x",
)  # fmt: skip
NAMES = st.one_of(st.sampled_from(HOSTILE_NAMES), st.text(min_size=1, max_size=12))
N_ROWS = 40


@dataclass(frozen=True)
class Table:
    """One declared table: its rows, its format, and the mapping keys of ``data.custom``."""

    frame: pd.DataFrame
    format: str
    mapping: dict


@st.composite
def ids(draw, n: int) -> list:
    """``n`` ids of one kind: int, float with .0, string, mixed, nullable, huge, negative, ''."""
    kind = draw(st.sampled_from(["int", "float", "str", "mixed", "null", "huge", "neg", "empty"]))
    base = list(range(n))
    return {
        "int": base,
        "float": [float(i) for i in base],
        "str": [f"sku {i}" for i in base],
        "mixed": [i if i % 2 else f"c-{i}" for i in base],
        "null": [None if i % 5 == 0 else i for i in base],
        "huge": [2**63 - 1 - i if i % 2 else 2**64 + i for i in base],
        "neg": [-i for i in base],
        "empty": ["" if i % 4 == 0 else f"u{i}" for i in base],
    }[kind]


@st.composite
def timestamps(draw, n: int) -> list | pd.Series | None:
    """Unix s or ms, ISO 8601 with or without a zone, datetime64, dates, or no time at all."""
    kind = draw(st.sampled_from(["s", "ms", "iso", "iso_tz", "datetime64", "date", "bad", None]))
    if kind is None:
        return None
    seconds = 1_600_000_000 + np.arange(n) * 3_600
    times = pd.to_datetime(seconds, unit="s")
    return {
        "s": seconds.tolist(),
        "ms": (seconds * 1000).tolist(),
        "iso": times.strftime("%Y-%m-%dT%H:%M:%S").tolist(),
        "iso_tz": times.strftime("%Y-%m-%dT%H:%M:%S+02:00").tolist(),
        "datetime64": pd.Series(times),
        "date": [t.date() for t in times],
        "bad": ["soon" if i == n // 2 else str(t) for i, t in enumerate(times)],
    }[kind]


@st.composite
def feature_values(draw, kind: str, n: int) -> list | pd.Series:
    """A side column of ``kind``: categorical (strings, ints, a category dtype), continuous
    (floats, numbers as strings, a word), lists (empty, null, ints, nested)."""
    shape = draw(st.integers(0, 2))
    if kind == "categorical":
        values = [None if i % 7 == 0 else f"c{i % 3}" for i in range(n)]
        return [values, list(range(n)), pd.Series(values, dtype="category")][shape]
    if kind == "continuous":
        return [
            [None if i % 6 == 0 else i / 2 for i in range(n)],
            [str(i / 2) for i in range(n)],
            ["many" if i == n - 1 else i for i in range(n)],
        ][shape]
    return [
        [["red", "big"][: i % 3] for i in range(n)],
        [None if i % 2 else [i, i + 1] for i in range(n)],
        [[["a"], ["b", "c"]] if i % 2 else [] for i in range(n)],
    ][shape]


@st.composite
def side_table(draw, n: int, id_values: list) -> Table:
    kinds = draw(st.lists(st.sampled_from(["categorical", "continuous", "lists"]), max_size=3))
    names = draw(st.lists(NAMES, min_size=len(kinds) + 1, max_size=len(kinds) + 1, unique=True))
    frame = pd.DataFrame({names[0]: id_values[:n]})
    mapping: dict = {"id": names[0]}
    for name, kind in zip(names[1:], kinds, strict=True):
        frame[name] = draw(feature_values(kind, n))
        mapping.setdefault(kind, []).append(name)
    if draw(st.booleans()):  # a duplicated row: an id listed twice
        frame = pd.concat([frame, frame.tail(1)], ignore_index=True)
    return Table(frame, draw(st.sampled_from(["parquet", "csv"])), mapping)


@st.composite
def declared_sources(draw) -> dict[str, Table]:
    """The interactions and, each maybe, an items and a users table. Each user walks the
    catalogue from their own start, so a user's latest items repeat earlier ones only where
    the catalogue is smaller than their history (retrieval is judged on new ones)."""
    n_users, n_items = draw(st.integers(2, 6)), draw(st.integers(2, N_ROWS))
    users, items = draw(ids(N_ROWS)), draw(ids(N_ROWS))
    names = draw(st.lists(NAMES, min_size=4, max_size=4, unique=True))
    frame = pd.DataFrame(
        {
            names[0]: [users[i % n_users] for i in range(N_ROWS)],
            names[1]: [items[(i % n_users * 3 + i // n_users) % n_items] for i in range(N_ROWS)],
        }
    )
    mapping: dict = {"user": names[0], "item": names[1], "timestamp": None}
    when = draw(timestamps(N_ROWS))
    if when is not None:
        frame[names[2]] = when
        mapping["timestamp"] = names[2]
    feedback = draw(st.sampled_from(["rating", "label", "implicit"]))
    # Values off the scale (dropped by cleaning) or not 0/1 (refused) in half the sources, not
    # in nearly all: the other half is what reaches training.
    if feedback == "rating":
        low = draw(st.sampled_from([0.5, 1.0]))
        scale = [low, 3.0, 4.0, 5.0, *([0.0, 6.0, None] if draw(st.booleans()) else [])]
        frame[names[3]] = draw(st.lists(st.sampled_from(scale), min_size=N_ROWS, max_size=N_ROWS))
        mapping |= {"rating": names[3], "rating_scale": (low, 5.0), "positive_threshold": 4.0}
    elif feedback == "label":
        labels = draw(st.lists(st.sampled_from([0, 1]), min_size=N_ROWS, max_size=N_ROWS))
        if draw(st.booleans()):
            labels[draw(st.integers(0, N_ROWS - 1))] = 2
        frame[names[3]] = labels
        mapping["label"] = names[3]
    if draw(st.booleans()):
        frame = pd.concat([frame, frame.head(3)], ignore_index=True)
    tables = {"interactions": Table(frame, draw(st.sampled_from(["parquet", "csv"])), mapping)}
    if draw(st.booleans()):
        tables["items"] = draw(side_table(n_items, items))
    if draw(st.booleans()):
        tables["users"] = draw(side_table(n_users, users))
    return tables


def write_source(tables: dict[str, Table], directory: Path) -> CustomSource:
    """Each table as a file in ``directory`` and the ``data.custom`` that declares them. A
    table parquet cannot hold (mixed types in a column) is written as CSV, as an export
    tool would."""
    directory.mkdir(parents=True, exist_ok=True)
    declared: dict = {"name": "drawn", "unknown_side_ids": "keep"}
    for name, table in tables.items():
        path = directory / f"{name}.{table.format}"
        if table.format == "parquet":
            try:
                table.frame.to_parquet(path, index=False)
            except (TypeError, ValueError, OverflowError, ArithmeticError):
                path = path.with_suffix(".csv")
        if path.suffix == ".csv":
            table.frame.to_csv(path, index=False)
        declared[name] = {"path": str(path), **table.mapping}
    return CustomSource.model_validate(declared)


def import_outcome(custom: CustomSource, home: Path) -> RawDataset | CustomSourceError:
    """The dataset, or the one-line refusal naming the file or the table; anything else (a
    traceback from inside pandas or Arrow, a half-written dataset) fails the caller."""
    paths = PathsConfig(home=home)
    try:
        return fetch_dataset(DataConfig(variant="custom", custom=custom), paths)
    except CustomSourceError as refusal:
        message = str(refusal)
        assert "\n" not in message, message
        assert any(f in message for f in ("interactions", "items", "users", "data.custom"))
        written = list(paths.raw_dir.iterdir()) if paths.raw_dir.exists() else []
        assert not written, f"a refused import left {written}"
        return refusal


def features_outcome(raw: RawDataset, out: Path) -> FeatureSet | DataValidationError:
    """The feature build, or the validation error naming table and column."""
    try:
        return build_features(raw, FeaturesConfig(partition_rows=16), out)
    except DataValidationError as refusal:
        assert not [p for p in out.glob("*") if not (p / "manifest.json").exists()]
        return refusal


# The pipeline's ranker and retriever (their default architectures, graded labels, log-q
# correction and top-k included), as small as they go: one epoch of a few batches of a drawn
# source's 40 rows. A case's seconds go to tracing the new models and saving them.
TINY_RANKING = RankingConfig(
    embedding_dim=4, bottom_mlp=(4,), top_mlp=(4,), batch_size=8, epochs=1, patience=0
)
TINY_RETRIEVAL = RetrievalConfig(embedding_dim=4, tower_mlp=(4,), batch_size=8, epochs=1)


def training_outcome(features: FeatureSet, out: Path) -> Candidate:
    """What the pipeline's train-models flow makes of ``features`` (flows/stages.py), by its own
    code (tasks/train.py): the ranker, the two-tower retriever, the item-item source, and
    recommend's ordering chosen on validation, each saved whole. A drawn source always has user
    and item ids, so it can have retrieval as well as a ranker. This stage has no refusal of its
    own: a feature set that was built must train, and any exception fails the caller, as a
    traceback in ``recflow run`` would."""
    # Imported here: TensorFlow takes seconds to import, and the import cases never need it.
    from tasks.train import (
        choose_recommend_ordering,
        fit_item_item,
        train_ranking,
        train_retrieval,
    )

    ranking = train_ranking(features, TINY_RANKING, out / "ranking")
    retrieval = train_retrieval(features, TINY_RETRIEVAL, out / "retrieval")
    item_item = fit_item_item(features, ItemItemConfig(), out / "item_item")
    candidate = choose_recommend_ordering(
        Candidate(features, ranking, retrieval, out.name, item_item),
        OrderingConfig(),
        ServingConfig().retrieval_candidates,
    )
    for model in (candidate.ranking, candidate.retrieval):
        assert (model.path / "manifest.json").exists(), model.path
        assert len(model.history) == 1, model.history
    assert candidate.ranking.ordering.validation, candidate.ranking.ordering
    return candidate
