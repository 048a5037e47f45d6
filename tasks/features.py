"""Feature engineering: the canonical raw tables -> NVTabular workflow -> parquet + schema.

Steps (docs/features.md): check the inputs' columns and dtypes, profile them, clean the
interactions (every dropped row counted under its rule), split train/validation, fit the
workflow on the training split only (statistics never see validation rows), transform both
splits on whatever Dask cluster is active, and save the fitted workflow, its user-side and
item-side sub-workflows, the output schema and the statistics that validation compares.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import dask.dataframe as dd
import numpy as np
import nvtabular as nvt
import nvtabular.ops as ops
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from merlin.io import Dataset
from merlin.schema import Schema, Tags
from prefect import task

from recflow.artifacts import HELD_OUT, ColumnStats, FeatureSet, Profile, RawDataset
from recflow.atomic import atomic_dir
from recflow.compute import dataset_cpu_flag, open_cluster
from recflow.config import ComputeConfig, FeaturesConfig, ValidationConfig
from recflow.trust import require_trusted
from recflow.vocabulary import (
    IN_VALIDATION,
    ITEM_COUNT,
    ITEM_ID,
    RATING,
    TARGET,
    TIMESTAMP,
    USER_COUNT,
    USER_ID,
)
from tasks.data_checks import DUPLICATES, MISSING_VALUE, OUT_OF_RANGE, input_error
from tasks.statistics import FEATURES_TABLE, QUANTILE_PROBS, arrow_dtype, profile_table

log = logging.getLogger(__name__)

# The value a categorical side feature takes where the source has none or the id is unknown:
# integer categories, string categories (and each missing element of a list).
MISSING_INT, MISSING_STRING = -1, "?"
# 3: the splits are joined with their side features once and written as parquet partitions of
# at most features.partition_rows rows, which NVTabular then fits and transforms from files.
# 4: hashed ids are a function of the id alone (ValueHashBucket).
# 5: the split is kept in raw ids (held_out/), which the gate reads instead of redoing it.
# 6: side features as the dataset declares them; implicit feedback's sampled negatives.
FEATURES_VERSION = "6"
# What the interaction columns must hold: integer ids (signed: an id beyond int64 does not fit
# the embedding tables' int64 lookups), numeric ratings, integer unix timestamps.
INTERACTIONS = {USER_ID: "int", ITEM_ID: "int", RATING: "number", TIMESTAMP: "int"}
_KINDS = {
    "int": ("int8", "int16", "int32", "int64"),
    "number": ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "float", "double"),
    "list": ("list<",),
}
SPLIT_FLAG = "__valid"
# Implicit feedback's negatives: the power of an item's count its sampling weight is.
NEGATIVE_POPULARITY_POWER = 0.75
SIDES = {USER_ID: Tags.USER, ITEM_ID: Tags.ITEM}


def fingerprint(raw: RawDataset, cfg: FeaturesConfig, validation: ValidationConfig) -> str:
    """What the outputs depend on: the source data, the feature config and cleaning bounds, the
    code version."""
    payload = json.dumps(
        {
            "data": raw.checksum,
            "cfg": cfg.model_dump(mode="json"),
            "range": rating_bounds(raw, validation),
            "v": FEATURES_VERSION,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def rating_bounds(raw: RawDataset, validation: ValidationConfig) -> list[float]:
    """The ratings cleaning keeps: the dataset's declared scale, else the configured one."""
    return list(raw.rating_scale or (validation.rating_min, validation.rating_max))


def positive_threshold(raw: RawDataset, cfg: FeaturesConfig) -> float:
    """The rating from which an interaction is a positive (the training target's 1)."""
    return cfg.rating_threshold if raw.positive_threshold is None else raw.positive_threshold


def required_columns(raw: RawDataset) -> dict[str, dict[str, str]]:
    """Each input table's columns the stage reads, with the kind of dtype each must have."""

    def side(id_column: str, declared) -> dict[str, str]:
        kinds = {id_column: "int"} | dict.fromkeys(declared.categorical, "any")
        return (
            kinds
            | dict.fromkeys(declared.continuous, "number")
            | dict.fromkeys(declared.lists, "list")
        )

    tables = {"interactions": INTERACTIONS, "items": side(ITEM_ID, raw.items_features)}
    if raw.users_features is not None:
        tables["users"] = side(USER_ID, raw.users_features)
    return tables


# --- inputs: structure, statistics, cleaning, split --------------------------------------------


def input_dtypes(raw: RawDataset, split: str = "random") -> dict[str, dict[str, str]]:
    """Each input table's columns and dtypes, read from the parquet footers (no data).

    Raises ``DataValidationError`` for a missing required column, a dtype the stage cannot use
    (ids beyond int64 among them), an interactions file without rows, or a ``predefined`` split
    of a dataset without its own validation rows.
    """
    required = required_columns(raw)
    dtypes = {}
    for table, path in ((name, getattr(raw, name)) for name in required):
        schema = pq.read_schema(path)
        dtypes[table] = {field.name: arrow_dtype(field.type) for field in schema}
        for column, kind in required[table].items():
            shown = raw.source_names.get(column, column)
            if column not in dtypes[table]:
                raise input_error(table, shown, "missing_column", f"a {kind} column", "none")
            found = dtypes[table][column]
            if kind in _KINDS and not found.startswith(_KINDS[kind]):
                expected = "int64" if kind == "int" else f"a {kind} dtype"
                raise input_error(table, shown, "dtype", expected, found)
    if split == "predefined" and IN_VALIDATION not in dtypes["interactions"]:
        raise input_error(
            "interactions",
            IN_VALIDATION,
            "missing_column",
            "validation rows of the dataset's own (data.custom.interactions.validation)",
            "none: use another features.split",
        )
    if pq.read_metadata(raw.interactions).num_rows == 0:
        raise input_error("interactions", "*", "empty", "at least one row", f"0 rows in {path}")
    return dtypes


def read_interactions(raw: RawDataset, cfg: FeaturesConfig) -> dd.DataFrame:
    """The raw interactions in partitions of at most ``cfg.partition_rows`` rows.

    Dask reads whole row groups (files from other tools may hold millions of rows in one);
    larger ones are split after the read, so later tasks never hold more than a partition.
    """
    frame = dd.read_parquet(str(raw.interactions), split_row_groups=True)
    n_rows = pq.read_metadata(raw.interactions).num_rows
    wanted = partition_count(n_rows, cfg.partition_rows)
    return frame.repartition(npartitions=wanted) if wanted > frame.npartitions else frame


def _keep_valid_rows(df: pd.DataFrame, rating_min: float, rating_max: float) -> pd.DataFrame:
    df = df[[*INTERACTIONS, *df.columns.intersection([IN_VALIDATION])]].dropna()
    df = df[(df[RATING] >= rating_min) & (df[RATING] <= rating_max)]
    return df.astype({USER_ID: "int64", ITEM_ID: "int64", RATING: "float32", TIMESTAMP: "int64"})


def _rule_counts(df: pd.DataFrame, rating_min: float, rating_max: float) -> pd.DataFrame:
    missing = df[list(INTERACTIONS)].isna().any(axis=1)
    rating = df.loc[~missing, RATING]
    outside = int(((rating < rating_min) | (rating > rating_max)).sum())
    return pd.DataFrame({MISSING_VALUE: [int(missing.sum())], OUT_OF_RANGE: [outside]})


def _dedupe_and_flag(
    df: pd.DataFrame, cfg: FeaturesConfig, cutoff: float | None, negatives: Negatives | None
):
    """Runs on a partition holding all rows of its users: drops duplicates, marks validation,
    and for implicit feedback adds each split's sampled negatives."""
    df = df.sort_values([USER_ID, TIMESTAMP, ITEM_ID], kind="stable")
    df = df[~df.duplicated([USER_ID, ITEM_ID, TIMESTAMP])]
    df = df.assign(**{SPLIT_FLAG: _validation_flag(df, cfg, cutoff)})
    df = df.drop(columns=df.columns.intersection([IN_VALIDATION]))
    return df if negatives is None else pd.concat([df, negatives.sample(df)], ignore_index=True)


def _validation_flag(df: pd.DataFrame, cfg: FeaturesConfig, cutoff: float | None) -> np.ndarray:
    if cfg.split == "predefined":
        flag = df[IN_VALIDATION]
    elif cfg.split == "time":
        flag = df[TIMESTAMP] > cutoff
    elif cfg.split == "last_n":
        # Users with no more than N interactions stay whole in training: none becomes cold.
        flag = each_users_latest(
            df, lambda size: np.where(size > cfg.valid_last_n, cfg.valid_last_n, 0)
        )
    elif cfg.split == "last_fraction":
        flag = latest_share(df, cfg.valid_fraction)
    else:
        keys = pd.util.hash_pandas_object(
            df[[USER_ID, ITEM_ID]], index=False, hash_key=f"{cfg.seed:016d}"
        )
        flag = pd.Series((keys.to_numpy() % 10_000) < cfg.valid_fraction * 10_000, index=df.index)
    return flag.to_numpy()


def each_users_latest(
    df: pd.DataFrame, held: Callable[[pd.Series], pd.Series | np.ndarray]
) -> pd.Series:
    """Whether each row of ``df`` (sorted by user, then time) is among its user's latest
    ``held(size)`` rows, ``size`` being the user's number of rows (one per row)."""
    users = df.groupby(USER_ID)
    return users.cumcount(ascending=False) < held(users[USER_ID].transform("size"))


def latest_share(df: pd.DataFrame, share: float) -> pd.Series:
    """Whether each row of ``df`` (sorted by user, then time) is among its user's latest
    ``share`` of rows: floor(share x rows) of them, so a user with fewer than 1/share rows
    stays whole in training and none becomes cold."""
    return each_users_latest(df, lambda size: np.floor(size * share))


class Negatives:
    """Implicit feedback's negatives: for each positive, ``per_positive`` items the user never
    interacted with, drawn with probability ~ count^NEGATIVE_POPULARITY_POWER (popular items
    are the informative negatives, as in word2vec's and Merlin's popularity samplers), with the
    positive's split and timestamp and rating 0. Seeded by the partition's users: a rebuild
    draws the same rows."""

    def __init__(self, item_counts: pd.Series, per_positive: int, seed: int):
        self.items = item_counts.index.to_numpy(np.int64)
        weights = item_counts.to_numpy(np.float64) ** NEGATIVE_POPULARITY_POWER
        self.cumulative = np.cumsum(weights / weights.sum())
        self.per_positive = per_positive
        self.seed = seed

    def sample(self, positives: pd.DataFrame) -> pd.DataFrame:
        if positives.empty:
            return positives.iloc[:0]
        users = positives[USER_ID].to_numpy(np.int64)
        rng = np.random.default_rng([self.seed, int(users.min()) & (2**63 - 1), len(users)])
        drawn = np.searchsorted(self.cumulative, rng.random(len(users) * self.per_positive))
        rows = np.repeat(np.arange(len(positives)), self.per_positive)
        negatives = positives.iloc[rows].assign(
            **{ITEM_ID: self.items[np.minimum(drawn, len(self.items) - 1)], RATING: 0.0}
        )
        # Never an item the user interacted with, and each (user, item) once.
        interacted = pd.MultiIndex.from_frame(positives[[USER_ID, ITEM_ID]])
        pairs = pd.MultiIndex.from_frame(negatives[[USER_ID, ITEM_ID]])
        negatives = negatives[~pairs.isin(interacted) & ~pairs.duplicated()]
        return negatives.astype({RATING: "float32"})


def split_for(cfg: FeaturesConfig, timestamp_quantiles: list[float]) -> FeaturesConfig:
    """``cfg`` with the split the data allows: ``last_fraction`` (the default) on interactions
    that all share one timestamp (a source without timestamps reads as 0) has no order to hold
    each user's latest out by, and would hold out their highest item ids; it is ``random``."""
    if cfg.split != "last_fraction" or timestamp_quantiles[0] < timestamp_quantiles[-1]:
        return cfg
    log.warning(
        "every interaction has the same timestamp: features.split=random, not %s", cfg.split
    )
    return cfg.model_copy(update={"split": "random"})


def clean_and_split(
    interactions: dd.DataFrame,
    cfg: FeaturesConfig,
    bounds: list[float],
    timestamp_quantiles: list[float],
    work_dir: Path,
    implicit: bool = False,
) -> tuple[dd.DataFrame, dd.DataFrame, dict[str, int]]:
    """Apply the cleaning rules, split, and write the result to ``work_dir`` once.

    Rows are shuffled by user so that duplicates and each user's history meet in one partition;
    writing the outcome keeps later passes (fit, transform) from repeating that shuffle. The
    shuffle keeps the partition count of ``interactions`` (see ``read_interactions``). Returns
    the training and validation rows and the rows each rule dropped. With ``implicit``, both
    splits also hold their sampled negatives (:class:`Negatives`), counted as such.
    """
    meta = pd.DataFrame({MISSING_VALUE: pd.Series(dtype="int64"), OUT_OF_RANGE: []}).astype("int64")
    counts = interactions.map_partitions(_rule_counts, *bounds, meta=meta).sum()
    # The split's global cutoff, read off the profile's percentiles instead of another pass.
    cutoff = float(np.interp(1 - cfg.valid_fraction, QUANTILE_PROBS, timestamp_quantiles))
    kept = interactions.map_partitions(_keep_valid_rows, *bounds)
    # The task-based shuffle, not P2P (the default on a distributed cluster): when a worker dies
    # mid-shuffle, the scheduler recomputes lost tasks, while distributed 2023.7's P2P shuffle
    # can hang for good (seen in tests/reliability/test_faults_dask.py; dask/distributed#7970).
    shuffled = kept.shuffle(USER_ID, shuffle="tasks")
    negatives = None
    if implicit:
        item_counts = kept[ITEM_ID].value_counts().compute()
        negatives = Negatives(item_counts, cfg.implicit_negatives, cfg.seed)
    flagged = shuffled.map_partitions(_dedupe_and_flag, cfg, cutoff, negatives)
    n_raw = interactions.shape[0]
    write = flagged.to_parquet(str(work_dir), compute=False, write_metadata_file=False)
    counts, n_raw, _ = dd.compute(counts, n_raw, write)
    written = dd.read_parquet(str(work_dir))
    n_written = sum(pq.read_metadata(part).num_rows for part in work_dir.glob("*.parquet"))
    n_negatives = int((written[RATING] == 0).sum().compute()) if implicit else 0
    n_kept = n_written - n_negatives
    cleaning = {rule: int(n) for rule, n in counts.items()}
    cleaning[DUPLICATES] = int(n_raw) - sum(cleaning.values()) - n_kept
    if n_kept == 0:
        raise input_error(
            "interactions",
            "*",
            "empty",
            "rows left after cleaning",
            f"0 of {n_raw} rows ({cleaning})",
        )
    is_valid = written[SPLIT_FLAG]
    train, valid = (written[mask].drop(columns=SPLIT_FLAG) for mask in (~is_valid, is_valid))
    return train, valid, cleaning


def partition_count(n_rows: int, partition_rows: int) -> int:
    """Partitions that hold ``n_rows`` rows with at most ``partition_rows`` in each."""
    return max(1, -(-n_rows // partition_rows))


def write_joined_splits(
    splits: dict[str, dd.DataFrame],
    items: pd.DataFrame,
    users: pd.DataFrame | None,
    work_dir: Path,
) -> dict[str, list[Path]]:
    """Join each split with its side features once and write it as parquet, one file (and one
    row group) per partition; returns each split's non-empty files, in order.

    The workflow's passes (dtype sampling, fit, transforms) then read these files instead of
    repeating the join, and the workers write partitions rather than sending rows to the client.
    """
    # Dask infers string for object columns; the list columns hold lists of strings.
    lists = {
        column: pa.list_(pa.string())
        for table in filter(lambda t: t is not None, (items, users))
        for column, dtype in side_columns(table).items()
        if dtype is None
    }
    writes = [
        attach_side_features(ddf, items, users).to_parquet(
            str(work_dir / name),
            compute=False,
            write_index=False,
            write_metadata_file=False,
            schema=lists,
        )
        for name, ddf in splits.items()
    ]
    dd.compute(*writes)
    files = {}
    for name in splits:
        parts = sorted((work_dir / name).glob("*.parquet"), key=_part_number)
        # Empty partitions (a small split over many partitions) would be empty NVTabular ones.
        files[name] = [part for part in parts if pq.read_metadata(part).num_rows]
    return files


def _part_number(path: Path) -> int:
    return int(path.stem.rsplit(".", 1)[-1].rsplit("_", 1)[-1])


def side_feature_tables(
    raw: RawDataset, train_interactions: dd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame | None, dict[str, pd.Series]]:
    """Per-item and per-user declared features plus training-split activity counts.

    These are the lookup tables serving uses to turn bare ids into model inputs, so the same
    tables feed ETL and serving. Counts come from the training split only (for implicit
    feedback, of its positives); they are also returned per id column, as the vocabulary
    validation compares between builds.
    """
    if raw.feedback == "implicit":
        train_interactions = train_interactions[train_interactions[RATING] > 0]
    item_counts, user_counts = dd.compute(
        train_interactions[ITEM_ID].value_counts(), train_interactions[USER_ID].value_counts()
    )
    items = _side_table(raw.items, ITEM_ID, raw.items_features, item_counts, ITEM_COUNT)
    vocab = {ITEM_ID: item_counts, USER_ID: user_counts}
    if raw.users_features is None:
        return items, None, vocab
    users = _side_table(raw.users, USER_ID, raw.users_features, user_counts, USER_COUNT)
    return items, users, vocab


def _side_table(path: Path, id_column: str, declared, counts: pd.Series, count_column: str):
    table = pd.read_parquet(path, columns=[id_column, *declared.columns])
    for column in declared.continuous:
        table[column] = table[column].astype("float32")
    for column in declared.lists:
        # An empty list would make the column's embedding a mean over nothing (NaN).
        table[column] = [_list_or_missing(values) for values in table[column]]
    table = table.join(counts.rename(count_column), on=id_column)
    table[count_column] = table[count_column].fillna(0).astype("float32")
    return _fill_missing(table, side_columns(table))


def _list_or_missing(values) -> list:
    if values is None or (np.ndim(values) == 0 and pd.isna(values)) or not len(values):
        return [MISSING_STRING]
    return [MISSING_STRING if v is None else v for v in values]


def attach_side_features(
    interactions: dd.DataFrame | pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame | None
):
    """Join side features onto (user_id, item_id) rows.

    Ids missing from the tables get the missing value of each feature (the same one a known id
    with a missing field gets) and count 0, so an unknown id is scored as a cold item or user,
    never an error.
    """
    joined = interactions.merge(items, on=ITEM_ID, how="left")
    columns = side_columns(items)
    if users is not None:
        joined = joined.merge(users, on=USER_ID, how="left")
        columns |= side_columns(users)
    if isinstance(joined, dd.DataFrame):
        return joined.map_partitions(_fill_missing, columns)
    return _fill_missing(joined, columns)


def side_columns(table: pd.DataFrame) -> dict[str, np.dtype | None]:
    """A side table's feature columns and their dtypes; None for a list column."""
    columns = {}
    for column in table.columns.difference([USER_ID, ITEM_ID]):
        present = table[column].dropna()
        is_list = table[column].dtype == object and len(present) and _is_list(present.iloc[0])
        columns[column] = None if is_list else table[column].dtype
    return columns


def _fill_missing(df: pd.DataFrame, columns: dict[str, np.dtype | None]) -> pd.DataFrame:
    """The gaps of ``columns`` filled by kind, each column back in its side table's dtype (a
    left join with misses makes integer columns float). Continuous features keep theirs, which
    the workflow fills with the training split's median (an unknown id's count is 0)."""
    df = df.copy()
    for column, dtype in columns.items():
        values = df[column]
        if dtype is None:
            missing = ~values.map(_is_list).to_numpy(bool)
            if missing.any():
                df.loc[missing, column] = pd.Series(
                    [[MISSING_STRING]] * int(missing.sum()), dtype=object
                ).values
        elif pd.api.types.is_integer_dtype(dtype):
            df[column] = values.fillna(MISSING_INT).astype(dtype)
        elif column in (ITEM_COUNT, USER_COUNT):
            df[column] = values.fillna(0.0).astype(dtype)
        elif pd.api.types.is_numeric_dtype(dtype):
            pass  # a continuous feature: the workflow fills it with its training median
        elif values.isna().any():
            df[column] = values.astype(object).where(values.notna(), MISSING_STRING)
    return df


def _is_list(value) -> bool:
    return isinstance(value, list | np.ndarray)


class ValueHashBucket(ops.HashBucket):
    """``HashBucket`` whose bucket depends on the value alone, on pandas as on cuDF.

    On CPU, merlin-core's ``hash_series`` goes through dask's ``hash_object_dispatch``, which
    hashes the pandas index with the values: the same id landed in a different bucket on every
    row (and again at serving time), so its embedding learned nothing. cuDF's ``hash_values``
    hashes values only and needs no change.
    """

    def transform(self, col_selector, df):
        if not isinstance(df, pd.DataFrame):
            return super().transform(col_selector, df)
        for col in col_selector.names:
            hashes = pd.util.hash_pandas_object(df[col], index=False).to_numpy()
            df[col] = (hashes % self.num_buckets).astype(self.output_dtype)
        return df


def build_workflow(cfg: FeaturesConfig, raw: RawDataset, categories_dir: Path) -> nvt.Workflow:
    """Encoded ids, the dataset's declared side features, popularity and the binary target."""
    threshold = positive_threshold(raw, cfg)

    def categorify(cols, *tags, freq_threshold=0):
        encode = ops.Categorify(freq_threshold=freq_threshold, out_path=str(categories_dir))
        return list(cols) >> encode >> ops.AddTags(list(tags))

    def encode_id(col, *tags):
        if cfg.id_encoding == "hash":
            return [col] >> ValueHashBucket(cfg.hash_buckets) >> ops.AddTags(list(tags))
        return categorify([col], *tags, freq_threshold=cfg.freq_threshold)

    def log_normalized(cols, *tags):
        return list(cols) >> ops.LogOp() >> ops.Normalize() >> ops.AddTags([Tags.CONTINUOUS, *tags])

    def side(declared, count: str, tag: Tags):
        nodes = []
        if declared.categorical or declared.lists:
            nodes.append(categorify([*declared.categorical, *declared.lists], tag))
        if declared.continuous:
            normalized = list(declared.continuous) >> ops.FillMedian() >> ops.Normalize()
            nodes.append(normalized >> ops.AddTags([Tags.CONTINUOUS, tag]))
        if cfg.popularity:
            # Log-popularity from the training split: a strong prior for rarely seen ids.
            nodes.append(log_normalized([count], tag))
        return nodes

    outputs = encode_id(USER_ID, Tags.USER_ID, Tags.USER) + encode_id(
        ITEM_ID, Tags.ITEM_ID, Tags.ITEM
    )
    for node in side(raw.items_features, ITEM_COUNT, Tags.ITEM):
        outputs += node
    if raw.users_features is not None:
        for node in side(raw.users_features, USER_COUNT, Tags.USER):
            outputs += node
    outputs += (
        [RATING]
        >> ops.LambdaOp(lambda col: (col >= threshold).astype("int32"))
        >> ops.Rename(name=TARGET)
        >> ops.AddTags([Tags.TARGET, Tags.BINARY_CLASSIFICATION])
    )
    if cfg.rating_target:
        outputs += [RATING] >> ops.AddTags([Tags.TARGET, Tags.REGRESSION])
    return nvt.Workflow(outputs)


def load_workflow(path: Path) -> nvt.Workflow:
    """The NVTabular workflow saved at ``path``, unpickled only once ``require_trusted`` agrees."""
    return nvt.Workflow.load(str(require_trusted(path)))


def serving_workflow(workflow: nvt.Workflow) -> nvt.Workflow:
    """The fitted workflow without its target branch: what serving applies to raw requests."""
    return workflow.remove_inputs([RATING])


def side_workflow(workflow: nvt.Workflow, side: str) -> nvt.Workflow:
    """The fitted workflow restricted to one side's features (``user`` or ``item``).

    Retrieval encodes a user (query tower) without any item, and item towers without users.
    The other side's inputs are the ones its tag marks in the output (every side op keeps its
    column's name). Like ``Workflow.remove_inputs``, this modifies ``workflow`` itself.
    """
    other = Tags.ITEM if side == "user" else Tags.USER
    drop = {*workflow.output_schema.select_by_tag(other).column_names, RATING}
    return workflow.remove_inputs([c for c in workflow.input_schema.column_names if c in drop])


class ServingFeatures:
    """A feature build's serving workflow and side-feature tables: raw ids -> workflow rows."""

    def __init__(self, features: FeatureSet):
        self.workflow = serving_workflow(load_workflow(features.workflow_dir))
        self.items = pd.read_parquet(features.lookup_dir / "items.parquet")
        users = features.lookup_dir / "users.parquet"
        self.users = pd.read_parquet(users) if users.exists() else None
        vocabulary = features.id_counts(USER_ID).index.to_numpy(np.int64)
        lookup = np.empty(0, np.int64) if self.users is None else self.users[USER_ID]
        self.known = {
            USER_ID: np.unique(np.concatenate([vocabulary, np.asarray(lookup, np.int64)])),
            ITEM_ID: np.unique(self.items[ITEM_ID].to_numpy(np.int64)),
        }

    @property
    def output_schema(self) -> Schema:
        return self.workflow.output_schema

    def transform(self, user_ids: np.ndarray, item_ids: np.ndarray) -> pd.DataFrame:
        raw = pd.DataFrame({USER_ID: user_ids.astype(np.int64), ITEM_ID: item_ids.astype(np.int64)})
        return self.workflow.transform(attach_side_features(raw, self.items, self.users))

    def side_rows(self, side: str) -> tuple[np.ndarray, pd.DataFrame]:
        """The known ids of ``side`` and their encoded columns, then one row for unseen ids
        (the row serving gives an id it does not know)."""
        known = self.known[side]
        return known, self._encoded(side, np.concatenate([known, self._unseen(side)]))

    def unseen_row(self, side: str) -> pd.DataFrame:
        """The encoded columns of ``side`` for an id the build never saw: the last row of
        :meth:`side_rows`, without encoding the known ones."""
        return self._encoded(side, self._unseen(side))

    def _unseen(self, side: str) -> np.ndarray:
        return np.array([self.known[side].max(initial=0) + 1], dtype=np.int64)

    def _encoded(self, side: str, ids: np.ndarray) -> pd.DataFrame:
        """Each side's columns are encoded from pairs with an arbitrary id of the other side;
        the workflow's ops are column-wise, so those columns do not depend on the other id."""
        other = np.zeros_like(ids)
        pairs = (ids, other) if side == USER_ID else (other, ids)
        columns = self.output_schema.select_by_tag(SIDES[side]).column_names
        return self.transform(*pairs)[columns].reset_index(drop=True)


def build_features(
    raw: RawDataset,
    cfg: FeaturesConfig,
    out_root: Path,
    *,
    cpu: bool = True,
    validation: ValidationConfig | None = None,
    rebuild: bool = False,
) -> FeatureSet:
    """Check, profile, clean and split the inputs, fit the workflow, write everything atomically.

    A finished build with the same fingerprint is reused unless ``rebuild``; a rebuild replaces
    it only once the new one is complete. Runs on the Dask client that is active in the caller
    (see recflow.compute). Raises ``DataValidationError`` for inputs the stage cannot use
    (missing columns, wrong dtypes, no rows, no rows left after cleaning, an empty split,
    splits the models cannot learn from or be judged on: ``check_learnable``).
    """
    validation = validation or ValidationConfig()
    fp = fingerprint(raw, cfg, validation)
    target = out_root / fp
    if (target / "manifest.json").exists() and not rebuild:
        log.info("features %s already built for %s; reusing", fp, raw.variant)
        return FeatureSet.load(target)

    interactions, tables = profile_inputs(raw, cfg)
    # The split made, which the feature set records: the configured one unless the data has none.
    cfg = split_for(cfg, tables["interactions"][TIMESTAMP].quantiles)
    with atomic_dir(target, replace=rebuild) as staging:
        work = staging / "work"
        train, valid, cleaning = clean_and_split(
            interactions,
            cfg,
            rating_bounds(raw, validation),
            tables["interactions"][TIMESTAMP].quantiles,
            work / "clean",
            implicit=raw.feedback == "implicit",
        )
        write_held_out({"train": train, "valid": valid}, staging / HELD_OUT)
        items, users, vocab = side_feature_tables(raw, train)
        write_lookups(staging / "lookup", items, users, raw)
        joined = write_joined_splits({"train": train, "valid": valid}, items, users, work)
        workflow = fit_and_transform(joined, cfg, raw, staging, cpu)
        shutil.rmtree(work)
        save_workflows(workflow, staging)
        counts = {name: _rows(staging / name) for name in ("train", "valid")}
        features = FeatureSet(
            path=target,
            fingerprint=fp,
            variant=raw.variant,
            n_train=counts["train"],
            n_valid=counts["valid"],
            cardinalities=cardinalities(workflow),
            id_encoding=cfg.id_encoding,
            split=cfg.split,
            cleaning=cleaning,
            positive_threshold=positive_threshold(raw, cfg),
            feedback=raw.feedback,
            external_ids=raw.external_ids,
        )
        tables[FEATURES_TABLE] = feature_statistics(staging / "train", workflow.output_schema)
        profile = Profile(tables=in_source_names(tables, raw.source_names), cleaning=cleaning)
        _write_statistics(staging / "statistics", profile, vocab)
        shutil.copy(staging / "train" / "schema.pbtxt", staging / "statistics" / "schema.pbtxt")
        features.save_manifest(staging)
    log.info(
        "features %s: %d train / %d valid rows, cleaning dropped %s",
        fp,
        features.n_train,
        features.n_valid,
        {rule: n for rule, n in cleaning.items() if n} or "nothing",
    )
    return features


def profile_inputs(raw: RawDataset, cfg: FeaturesConfig) -> tuple[dd.DataFrame, dict]:
    """The interactions (lazily, in partitions) and the statistics of every input table."""
    dtypes = input_dtypes(raw, cfg.split)
    interactions = read_interactions(raw, cfg)
    tables = {"interactions": profile_table(interactions, dtypes["interactions"])}
    for name in ("items", "users"):
        if name in dtypes:
            tables[name] = profile_table(pd.read_parquet(getattr(raw, name)), dtypes[name])
    return interactions, tables


def write_held_out(splits: dict[str, dd.DataFrame], directory: Path) -> None:
    """Each split in raw ids (``user_id``, ``item_id``, ``rating``): the rows the gate scores
    every model on, kept so it never has to reproduce the split (FeatureSet.held_out_dir)."""
    columns = [USER_ID, ITEM_ID, RATING]
    dd.compute(
        *(
            split[columns].to_parquet(
                str(directory / name), compute=False, write_index=False, write_metadata_file=False
            )
            for name, split in splits.items()
        )
    )


def write_lookups(
    directory: Path, items: pd.DataFrame, users: pd.DataFrame | None, raw: RawDataset
) -> None:
    """The side-feature tables serving looks raw ids up in (serving/export.py), and where the
    dataset's ids are strings, the string of each id (what the endpoints answer with)."""
    directory.mkdir()
    items.to_parquet(directory / "items.parquet", index=False)
    if users is not None:
        users.to_parquet(directory / "users.parquet", index=False)
    if raw.external_ids:
        for column in (USER_ID, ITEM_ID):
            shutil.copy(raw.external_ids_file(column), directory)


def fit_and_transform(
    joined: dict[str, list[Path]], cfg: FeaturesConfig, raw: RawDataset, staging: Path, cpu: bool
) -> nvt.Workflow:
    """Fit the workflow on the training files only, then transform every split into
    ``staging/<split>``; raises ``DataValidationError`` for an empty split or one the models
    cannot use (``check_learnable``)."""
    for name, files in joined.items():
        if not files:
            found = f"0 ({cfg.split} split)"
            if cfg.split == "last_fraction":
                # floor(valid_fraction x n) rows of a user's n: none below 1 / valid_fraction.
                fewest = math.ceil(1 / cfg.valid_fraction)
                found += (
                    f": no user has {fewest} or more interactions; a larger "
                    "features.valid_fraction or features.split=random holds rows out"
                )
            raise input_error("interactions", "*", "empty", f"rows in the {name} split", found)
    check_learnable(joined, positive_threshold(raw, cfg), raw.feedback == "implicit")
    # One partition per file: write_joined_splits sized them (features.partition_rows).
    datasets = {
        name: Dataset([str(f) for f in files], engine="parquet", cpu=cpu, row_groups_per_part=1)
        for name, files in joined.items()
    }
    workflow = build_workflow(cfg, raw, staging / "categories")
    workflow.fit(datasets["train"])
    for name, dataset in datasets.items():
        workflow.transform(dataset).to_parquet(
            str(staging / name), shuffle=None, out_files_per_proc=None
        )
    return workflow


def check_learnable(joined: dict[str, list[Path]], threshold: float, implicit: bool) -> None:
    """Raise ``DataValidationError`` unless the models can learn from the splits and be judged
    on them. Training failed after its first epoch on either, with a traceback from inside
    Keras or TensorFlow:

    - the validation split must hold positive and negative rows: the ranker's AUC, its early
      stopping and the gate score both classes (``AUC needs both positive and negative labels``);
    - the training split must hold 2 or more of the interactions retrieval learns from (all of
      them; implicit feedback's positives): each learns against the others in its batch, and
      Merlin's contrastive output fails on a batch of one row (``ConcatOp``);
    - a validation positive must be new to its user: retrieval is judged on the items a user
      did not have in training (``no validation user has a relevant item``).
    """
    positives, rows = _positives(joined["valid"], threshold)
    if not 0 < positives < rows:
        if implicit:
            # A user's negatives are items they never interacted with, drawn by popularity.
            expected = "sampled negatives in the valid split"
            found = f"none beside its {rows} interactions: too few items its users never chose"
        else:
            kind = "negative (below" if positives else "positive (at least"
            expected = f"{kind} {threshold:g}) rows in the valid split as well"
            found = f"{rows} rows, all {'positive' if positives else 'negative'}"
        raise input_error("interactions", RATING, "empty", expected, found)
    if implicit:
        learned, _ = _positives(joined["train"], threshold)
    else:
        learned = sum(pq.read_metadata(part).num_rows for part in joined["train"])
    if learned < 2:
        expected = "2 or more interactions in the train split (retrieval learns each one "
        raise input_error(
            "interactions", "*", "empty", expected + "against the others)", str(learned)
        )
    if not _any_new_positive(joined, threshold):
        expected = "valid positives new to their user (retrieval is judged on those)"
        found = f"none: each of the {positives} was its user's in the train split too"
        raise input_error("interactions", ITEM_ID, "empty", expected, found)


def _any_new_positive(joined: dict[str, list[Path]], threshold: float) -> bool:
    """Whether a validation positive's user did not have its item in training. The train and
    valid files of one number come from one partition of the cleaned interactions, which holds
    every row of its users (``clean_and_split``), so each pair of files is checked alone."""
    train = {_part_number(part): part for part in joined["train"]}
    pair = [USER_ID, ITEM_ID]
    for part in joined["valid"]:
        valid = pd.read_parquet(part, columns=[*pair, RATING])
        positives = pd.MultiIndex.from_frame(valid.loc[valid[RATING] >= threshold, pair])
        seen = _part_number(part) in train
        had = pd.read_parquet(train[_part_number(part)], columns=pair) if seen else valid[:0]
        if not positives.isin(pd.MultiIndex.from_frame(had[pair])).all():
            return True
    return False


def _positives(files: list[Path], threshold: float) -> tuple[int, int]:
    """Rows rated ``threshold`` or more, and all rows, of a split's joined files."""
    positives = rows = 0
    for part in files:
        rating = pq.read_table(part, columns=[RATING]).column(RATING).to_numpy()
        positives += int((rating >= threshold).sum())
        rows += len(rating)
    return positives, rows


def save_workflows(workflow: nvt.Workflow, staging: Path) -> None:
    """The fitted workflow and its user-side and item-side sub-workflows."""
    workflow.save(str(staging / "workflow"))
    for side in ("user", "item"):
        # remove_inputs edits the graph in place: each side starts from a saved copy.
        fitted = nvt.Workflow.load(str(staging / "workflow"))
        side_workflow(fitted, side).save(str(staging / f"workflow_{side}"))


def feature_statistics(split_dir: Path, schema: Schema) -> dict[str, ColumnStats]:
    """Statistics of a transformed split, one per output column of the workflow."""
    dtypes = {}
    for col in schema:
        name = np.dtype(col.dtype.to_numpy).name
        dtypes[col.name] = f"list<{name}>" if col.is_list else name
    frame = dd.read_parquet(str(split_dir))
    # List columns (object arrays of arrays) are profiled apart from the rest: in one graph
    # the workers pass whole partitions, list column included, to each other, which cost
    # several times the statistics themselves.
    lists = [name for name, dtype in dtypes.items() if dtype.startswith("list<")]
    groups = [[name for name in dtypes if name not in lists], *([name] for name in lists)]
    stats = {}
    for columns in filter(None, groups):
        stats |= profile_table(frame[columns], {name: dtypes[name] for name in columns})
    return {name: stats[name] for name in dtypes}


def in_source_names(
    tables: dict[str, dict[str, ColumnStats]], source_names: dict[str, str]
) -> dict[str, dict[str, ColumnStats]]:
    """Each table's statistics with a renamed column under the name the source gave it: the
    profile is what validation reports (and ``validation.drift_exempt`` names) and the
    pictures draw. A name two columns of one table would share (``region`` declared by both
    side tables, in the features table) keeps the internal names apart."""
    shown = {}
    for table, columns in tables.items():
        wanted = {column: source_names.get(column, column) for column in columns}
        uses = Counter(wanted.values())
        shown[table] = {
            wanted[column] if uses[wanted[column]] == 1 else column: stats
            for column, stats in columns.items()
        }
    return shown


def _write_statistics(directory: Path, profile: Profile, vocab: dict[str, pd.Series]) -> None:
    directory.mkdir()
    (directory / "statistics.json").write_text(profile.model_dump_json(indent=2))
    for column, counts in vocab.items():
        frame = counts.rename("count").rename_axis(column).reset_index()
        frame.to_parquet(directory / f"{column}.parquet", index=False)


def _rows(split_dir: Path) -> int:
    return sum(pq.read_metadata(part).num_rows for part in split_dir.glob("*.parquet"))


def cardinalities(workflow: nvt.Workflow) -> dict[str, int]:
    out = {}
    for col in workflow.output_schema:
        domain = col.int_domain
        if domain is not None and Tags.CATEGORICAL in col.tags:
            out[col.name] = int(domain.max) + 1
    return out


@task(name="build-features", task_run_name="build-features-{raw.variant}")
def build_features_task(
    raw: RawDataset,
    cfg: FeaturesConfig,
    validation: ValidationConfig,
    compute: ComputeConfig,
    features_dir: Path,
    rebuild: bool = False,
) -> FeatureSet:
    """``build_features`` on a Dask cluster of ``compute`` (GPUs where there are, else CPUs)."""
    with open_cluster(compute) as (_client, device):
        return build_features(
            raw,
            cfg,
            features_dir,
            cpu=dataset_cpu_flag(device),
            validation=validation,
            rebuild=rebuild,
        )
