"""Feature engineering: raw MovieLens-layout tables -> NVTabular workflow -> parquet + schema.

The workflow is fitted on the training split only (statistics never see validation rows), then
applied to both splits on whatever Dask cluster is active. The fitted workflow is saved so that
serving applies exactly the same transformation to raw ids.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import dask.dataframe as dd
import numpy as np
import nvtabular as nvt
import nvtabular.ops as ops
import pandas as pd
from merlin.io import Dataset
from merlin.schema import Tags
from prefect import task

from recflow.artifacts import Artifact, RawDataset
from recflow.atomic import atomic_dir
from recflow.compute import dataset_cpu_flag, open_cluster
from recflow.config import FeaturesConfig, Settings

log = logging.getLogger(__name__)

# Column names shared with training and serving.
USER_ID, ITEM_ID = "user_id", "item_id"
TARGET = "rating_binary"
ITEM_COUNT, USER_COUNT = "item_count", "user_count"
NO_GENRES = "(no genres listed)"
BUCKETS = ("age_bucket", "year_bucket")
# The value each side feature takes when it is missing from the source or the id is unknown.
MISSING = {
    "age_bucket": -1,
    "year_bucket": -1,
    "zip_prefix": "?",
    "gender": "?",
    "occupation": "?",
    ITEM_COUNT: 0.0,
    USER_COUNT: 0.0,
}
USER_CATEGORICALS = ("gender", "age_bucket", "occupation", "zip_prefix")
ITEM_CATEGORICALS = ("year_bucket",)
ITEM_LISTS = ("genres",)
# Ages in MovieLens-1M's own buckets, so ml-100k and ml-1m users land on the same scale.
AGE_BOUNDARIES = (18, 25, 35, 45, 50, 56)
FEATURES_VERSION = "1"


class FeatureSet(Artifact):
    """Transformed splits, the fitted workflow and its output schema."""

    fingerprint: str
    variant: str
    n_train: int
    n_valid: int
    cardinalities: dict[str, int]

    @property
    def train_dir(self) -> Path:
        return self.path / "train"

    @property
    def valid_dir(self) -> Path:
        return self.path / "valid"

    @property
    def workflow_dir(self) -> Path:
        return self.path / "workflow"

    @property
    def lookup_dir(self) -> Path:
        return self.path / "lookup"

    @property
    def schema_file(self) -> Path:
        return self.train_dir / "schema.pbtxt"


def fingerprint(raw: RawDataset, cfg: FeaturesConfig) -> str:
    """What the outputs depend on: the source data, the feature config, the code version."""
    payload = json.dumps(
        {"data": raw.checksum, "cfg": cfg.model_dump(mode="json"), "v": FEATURES_VERSION},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def derive_raw_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Columns computed row-wise from raw side features, before the workflow sees them.

    Shared by training-time ETL and serving-time lookup so both build identical inputs.
    """
    df = df.copy()
    if "age" in df:
        age = pd.to_numeric(df["age"], errors="coerce")
        df["age_bucket"] = np.searchsorted(AGE_BOUNDARIES, age.fillna(0).to_numpy(), side="right")
        df.loc[age.isna().to_numpy(), "age_bucket"] = MISSING["age_bucket"]
        df["age_bucket"] = df["age_bucket"].astype("int64")
    if "zip" in df:
        df["zip_prefix"] = df["zip"].astype("string").str[:1].fillna(MISSING["zip_prefix"])
        df["zip_prefix"] = df["zip_prefix"].astype(str)
    if "genres" in df:
        df["genres"] = [_genres_or_placeholder(g) for g in df["genres"]]
    if "year" in df:
        year = pd.to_numeric(df["year"], errors="coerce")
        df["year_bucket"] = ((year // 5) * 5).fillna(MISSING["year_bucket"]).astype("int64")
    return df


def _genres_or_placeholder(genres) -> list[str]:
    # An empty list would make the genre embedding a mean over nothing (NaN).
    if genres is None or (not isinstance(genres, list | np.ndarray) and pd.isna(genres)):
        return [NO_GENRES]
    return list(genres) or [NO_GENRES]


def side_feature_tables(
    raw: RawDataset, train_interactions: dd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Per-item and per-user raw features plus training-split activity counts.

    These are the lookup tables serving uses to turn bare ids into model inputs, so the same
    tables feed ETL and serving. Counts come from the training split only.
    """
    item_counts = train_interactions[ITEM_ID].value_counts().compute().rename(ITEM_COUNT)
    items = pd.read_parquet(raw.items, columns=[ITEM_ID, "year", "genres"])
    items = derive_raw_columns(items).join(item_counts, on=ITEM_ID)
    items[ITEM_COUNT] = items[ITEM_COUNT].fillna(0).astype("float32")
    if not raw.has_users:
        return items, None
    user_counts = train_interactions[USER_ID].value_counts().compute().rename(USER_COUNT)
    users = pd.read_parquet(raw.users, columns=[USER_ID, "gender", "age", "occupation", "zip"])
    users = derive_raw_columns(users).join(user_counts, on=USER_ID)
    users[USER_COUNT] = users[USER_COUNT].fillna(0).astype("float32")
    return items, users


def attach_side_features(
    interactions: dd.DataFrame | pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame | None
):
    """Join side features onto (user_id, item_id) rows.

    Ids missing from the tables get the "missing" value of each feature (the same one a known id
    with a missing field gets), count 0 and the no-genre placeholder, so an unknown id is scored
    as a cold item or user, never an error.
    """
    joined = interactions.merge(items.drop(columns=["year"]), on=ITEM_ID, how="left")
    if users is not None:
        joined = joined.merge(users.drop(columns=["age", "zip"]), on=USER_ID, how="left")
    if isinstance(joined, dd.DataFrame):
        return joined.map_partitions(_fill_unknown)
    return _fill_unknown(joined)


def _fill_unknown(df: pd.DataFrame) -> pd.DataFrame:
    df = df.fillna({col: MISSING[col] for col in df.columns.intersection(list(MISSING))})
    # A left join with misses turns int columns into float; restore the training dtypes.
    for col in df.columns.intersection(list(BUCKETS)):
        df[col] = df[col].astype("int64")
    for col in df.columns.intersection([ITEM_COUNT, USER_COUNT]):
        df[col] = df[col].astype("float32")
    df["genres"] = [_genres_or_placeholder(g) for g in df["genres"]]
    return df


def split(ddf: dd.DataFrame, cfg: FeaturesConfig) -> tuple[dd.DataFrame, dd.DataFrame]:
    """Train/validation split that does not depend on how the data is partitioned."""
    if cfg.split == "time":
        cutoff = ddf["timestamp"].quantile(1 - cfg.valid_fraction).compute()
        is_valid = ddf["timestamp"] > cutoff
    else:
        is_valid = ddf.map_partitions(_hashed_valid_mask, cfg.valid_fraction, cfg.seed, meta=bool)
    return ddf[~is_valid], ddf[is_valid]


def _hashed_valid_mask(df: pd.DataFrame, fraction: float, seed: int) -> pd.Series:
    keys = pd.util.hash_pandas_object(df[[USER_ID, ITEM_ID]], index=False, hash_key=f"{seed:016d}")
    return pd.Series((keys.to_numpy() % 10_000) < fraction * 10_000, index=df.index)


def build_workflow(cfg: FeaturesConfig, has_users: bool, stats_dir: Path) -> nvt.Workflow:
    def categorify(cols, *tags):
        encode = ops.Categorify(freq_threshold=cfg.freq_threshold, out_path=str(stats_dir))
        return list(cols) >> encode >> ops.AddTags(list(tags))

    def log_normalized(cols, *tags):
        return list(cols) >> ops.LogOp() >> ops.Normalize() >> ops.AddTags([Tags.CONTINUOUS, *tags])

    user_id = categorify([USER_ID], Tags.USER_ID, Tags.USER)
    item_id = categorify([ITEM_ID], Tags.ITEM_ID, Tags.ITEM)
    item_side = categorify(ITEM_CATEGORICALS + ITEM_LISTS, Tags.ITEM)
    # Log-popularity from the training split: a strong prior for rarely seen items.
    item_popularity = log_normalized([ITEM_COUNT], Tags.ITEM)
    target = (
        ["rating"]
        >> ops.LambdaOp(lambda col: (col >= cfg.rating_threshold).astype("int32"))
        >> ops.Rename(name=TARGET)
        >> ops.AddTags([Tags.TARGET, Tags.BINARY_CLASSIFICATION])
    )
    outputs = user_id + item_id + item_side + item_popularity + target
    if has_users:
        outputs += categorify(USER_CATEGORICALS, Tags.USER) + log_normalized(
            [USER_COUNT], Tags.USER
        )
    return nvt.Workflow(outputs)


def serving_workflow(workflow: nvt.Workflow) -> nvt.Workflow:
    """The fitted workflow without its target branch: what serving applies to raw requests."""
    return workflow.remove_inputs(["rating"])


def build_features(
    raw: RawDataset, cfg: FeaturesConfig, out_root: Path, *, cpu: bool = True
) -> FeatureSet:
    """Fit the workflow on the training split and write both splits, atomically.

    Runs on the Dask client that is active in the caller (see recflow.compute).
    """
    fp = fingerprint(raw, cfg)
    target = out_root / fp
    if (target / "manifest.json").exists():
        log.info("features %s already built for %s; reusing", fp, raw.variant)
        return FeatureSet.load(target)

    train, valid = split(dd.read_parquet(str(raw.interactions)), cfg)
    with atomic_dir(target) as staging:
        items, users = side_feature_tables(raw, train)
        (staging / "lookup").mkdir()
        items.to_parquet(staging / "lookup" / "items.parquet", index=False)
        if users is not None:
            users.to_parquet(staging / "lookup" / "users.parquet", index=False)
        train = attach_side_features(train, items, users)
        valid = attach_side_features(valid, items, users)
        workflow = build_workflow(cfg, raw.has_users, staging / "stats")
        workflow.fit(Dataset(train, cpu=cpu))
        for name, ddf in (("train", train), ("valid", valid)):
            workflow.transform(Dataset(ddf, cpu=cpu)).to_parquet(
                str(staging / name), shuffle=None, out_files_per_proc=None
            )
        workflow.save(str(staging / "workflow"))
        counts = {
            name: Dataset(str(staging / name), engine="parquet", cpu=cpu).num_rows
            for name in ("train", "valid")
        }
        features = FeatureSet(
            path=target,
            fingerprint=fp,
            variant=raw.variant,
            n_train=counts["train"],
            n_valid=counts["valid"],
            cardinalities=cardinalities(workflow),
        )
        features.save_manifest(staging)
    log.info("features %s: %d train / %d valid rows", fp, features.n_train, features.n_valid)
    return features


def cardinalities(workflow: nvt.Workflow) -> dict[str, int]:
    out = {}
    for col in workflow.output_schema:
        domain = col.int_domain
        if domain is not None and Tags.CATEGORICAL in col.tags:
            out[col.name] = int(domain.max) + 1
    return out


@task(name="build-features", task_run_name="build-features-{raw.variant}")
def build_features_task(raw: RawDataset, settings: Settings) -> FeatureSet:
    with open_cluster(settings.compute) as (_client, device):
        return build_features(
            raw, settings.features, settings.paths.features_dir, cpu=dataset_cpu_flag(device)
        )
