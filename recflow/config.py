"""Typed configuration: the one place that holds recflow's defaults.

Precedence, highest first: explicit overrides (CLI ``--set a.b=c``), environment variables
(``RECFLOW_<SECTION>__<FIELD>``, e.g. ``RECFLOW_SERVING__GRPC_PORT=9001``), a YAML file
(``--config`` or ``RECFLOW_CONFIG``), then the defaults below.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from recflow.vocabulary import MetricKey
from recflow_client.contract import (
    DEFAULT_GRPC_PORT,
    DEFAULT_HOST,
    DEFAULT_HTTP_PORT,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_HISTORY,
    DEFAULT_MODEL_PREFIX,
    DEFAULT_TIMEOUT_S,
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PathsConfig(_Section):
    """Where artifacts live. The layout under ``home`` is documented in docs/layout.md."""

    home: Path = Path("artifacts")

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def raw_dir(self) -> Path:
        return self.home / "data"

    @property
    def features_dir(self) -> Path:
        return self.home / "features"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def registry_dir(self) -> Path:
        return self.home / "registry"

    @property
    def triton_repo(self) -> Path:
        return self.home / "triton"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def runs_dir(self) -> Path:
        """One directory per pipeline run: its pictures (flows/pictures.py)."""
        return self.home / "runs"


class SyntheticConfig(_Section):
    """The embedded offline dataset, generated from planted latent factors."""

    n_users: PositiveInt = 2_000
    n_items: PositiveInt = 800
    n_ratings: PositiveInt = 100_000
    n_factors: PositiveInt = 8
    seed: int = 42
    chunk_rows: PositiveInt = 1_000_000


class DownloadConfig(_Section):
    timeout_s: float = Field(60.0, gt=0)
    retries: int = Field(4, ge=0)
    backoff_s: float = Field(1.0, ge=0)
    chunk_bytes: PositiveInt = 1 << 20
    # Refuse archives that would expand beyond these (zip bombs).
    max_uncompressed_bytes: PositiveInt = 8 << 30
    max_compression_ratio: float = Field(200.0, gt=1)


class CsvOptions(_Section):
    delimiter: str = Field(",", min_length=1, max_length=1)
    header: bool = True  # without one, columns are named by position: "0", "1", ...
    encoding: str = "utf-8"
    # A list column's values inside one CSV field, e.g. "Comedy|Drama".
    list_separator: str = "|"


class TableSource(_Section):
    """Where one of your tables is: a path, a glob or an fsspec URL, in parquet or CSV."""

    # "data/ratings.parquet", "exports/part-*.csv", "https://host/ratings.csv",
    # "s3://bucket/ratings/*.parquet" (s3/gcs need their fsspec driver installed).
    path: str
    # None: from the file names' extension (.parquet/.pq or .csv/.tsv/.txt).
    format: Literal["parquet", "csv"] | None = None
    csv: CsvOptions = CsvOptions()


class InteractionsSource(TableSource):
    """The interaction log and how its columns map onto recflow's.

    Feedback is one of: a ``rating`` on ``rating_scale`` (positive from ``positive_threshold``),
    a 0/1 ``label``, or neither (implicit: every row is a positive, and the feature stage
    samples the ranker's negatives, features.implicit_negatives per positive).
    """

    user: str = "user_id"
    item: str = "item_id"
    # Unix seconds or anything pandas parses as a date; None: no time (no time/last_n split).
    timestamp: str | None = "timestamp"
    rating: str | None = None
    rating_scale: tuple[float, float] | None = None
    positive_threshold: float | None = None
    label: str | None = None
    # The held-out interactions, if you have your own split: same format and mapping as
    # ``path``; features.split=predefined then validates on exactly these rows.
    validation: str | None = None

    @model_validator(mode="after")
    def _one_kind_of_feedback(self) -> InteractionsSource:
        if self.rating is not None and self.label is not None:
            raise ValueError("map either a rating or a label column, not both")
        if self.rating is not None:
            if self.rating_scale is None or self.positive_threshold is None:
                raise ValueError("a rating column needs rating_scale and positive_threshold")
            low, high = self.rating_scale
            if not low <= self.positive_threshold <= high:
                raise ValueError(f"positive_threshold must lie on rating_scale {low}..{high}")
        elif self.rating_scale is not None or self.positive_threshold is not None:
            raise ValueError("rating_scale and positive_threshold need a rating column")
        return self

    @property
    def feedback(self) -> Literal["rating", "label", "implicit"]:
        return "rating" if self.rating else "label" if self.label else "implicit"


class SideTableSource(TableSource):
    """A users or items table: its id column and the feature columns by kind."""

    id: str
    categorical: tuple[str, ...] = ()
    continuous: tuple[str, ...] = ()
    # Multi-hot columns: a list per row (parquet) or a list_separator-joined string (CSV).
    lists: tuple[str, ...] = ()


class CustomSource(_Section):
    """Your own data as the dataset (``data.variant=custom``); docs/data.md, "Your own data"."""

    # Names the dataset's directory (<home>/data/<name>) and its lineage.
    name: str = Field("custom", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    interactions: InteractionsSource | None = None
    users: SideTableSource | None = None
    items: SideTableSource | None = None
    # Interactions whose user or item is missing from a given side table: keep them (the id
    # gets each feature's missing value, as an id unknown at serving time does), drop them, or
    # refuse the data. Counted in every case.
    unknown_side_ids: Literal["keep", "drop", "error"] = "keep"


class DataConfig(_Section):
    # synthetic, a MovieLens variant (tasks/variants.py), or custom (data.custom).
    variant: str = "synthetic"
    # A base URL or a local directory that replaces the GroupLens host.
    mirror: str | None = None
    synthetic: SyntheticConfig = SyntheticConfig()
    custom: CustomSource = CustomSource()
    download: DownloadConfig = DownloadConfig()


class ComputeConfig(_Section):
    """The Dask cluster the ETL runs on."""

    device: Literal["auto", "cpu", "gpu"] = "auto"
    # Address of an existing scheduler (tcp://host:8786); None starts a local cluster.
    scheduler_address: str | None = None
    n_workers: PositiveInt = 2
    threads_per_worker: PositiveInt = 1
    memory_limit: str = "4GB"
    spill_dir: Path | None = None
    host: str = "127.0.0.1"
    dashboard_address: str | None = "127.0.0.1:0"
    # GPU only, as fractions of each device's memory: spill device -> host from this fill level
    # (dask-cuda's own default), and pre-allocate an RMM pool this large so cuDF does not pay
    # cudaMalloc per partition (NVIDIA's NVTabular multi-GPU examples do the same).
    gpu_spill_fraction: float = Field(0.8, gt=0, le=1)
    rmm_pool_fraction: float = Field(0.9, gt=0, le=1)


class DataParallelConfig(_Section):
    """Training one model in several processes: Horovod, Merlin Models' data-parallel route
    (docs/sizing.md, "Several GPUs"). Each process trains on its share of the training rows and
    the gradients are averaged at every step; the first process scores the validation split
    and writes the model. The tuning flow's trials train in one process."""

    # "auto": one process per visible GPU where there are two or more and Horovod is installed
    # (the Merlin GPU image), else one. A number asks for that many processes on this machine,
    # on GPUs or CPUs, and fails without Horovod.
    processes: Literal["auto"] | PositiveInt = "auto"


class ValidationConfig(_Section):
    """Checks of each feature build against the last accepted one (docs/features.md)."""

    # The rating scale every MovieLens variant and the synthetic data use (half stars).
    rating_min: float = 0.5
    rating_max: float = 5.0
    # A column's null rate may exceed the accepted run's by this much (absolute share).
    max_null_rate_increase: float = Field(0.01, ge=0, le=1)
    # Share of training interactions whose user or item id the accepted run never saw.
    max_unseen_id_share: float = Field(0.2, ge=0, le=1)
    # Distribution shift bounds: L-infinity distance between value shares (categorical, as
    # TFX's ExampleValidator) and the Kolmogorov-Smirnov statistic (numeric).
    max_linf_distance: float = Field(0.1, gt=0, le=1)
    max_ks_statistic: float = Field(0.1, gt=0, le=1)
    # Columns whose distribution moves by design between runs: time (new data is newer) and ids
    # (nominal values; the unseen-id share covers them).
    drift_exempt: tuple[str, ...] = (
        "interactions.timestamp",
        "interactions.user_id",
        "interactions.item_id",
        "items.item_id",
        "users.user_id",
    )
    # Checks that only warn; every other check stops the flow before training.
    warn_only: tuple[
        Literal[
            "missing_column",
            "extra_column",
            "dtype",
            "null_rate",
            "out_of_range",
            "duplicates",
            "unseen_ids",
            "drift",
        ],
        ...,
    ] = ("extra_column", "duplicates")


class FeaturesConfig(_Section):
    rating_threshold: float = 4.0
    # Default last_fraction: deployment predicts each user's next interactions (docs/features.md);
    # data without timestamps falls back to random (tasks.features.split_for).
    # random: hashed (user, item) pairs; time: one global cutoff at the valid_fraction quantile
    # of timestamps; last_n: each user's last valid_last_n interactions (users with more);
    # last_fraction: each user's latest valid_fraction of interactions by timestamp (users
    # with fewer than 1/valid_fraction stay whole in training); predefined: the dataset's own
    # validation rows (data.custom.interactions.validation).
    split: Literal["random", "time", "last_n", "last_fraction", "predefined"] = "last_fraction"
    valid_fraction: float = Field(0.2, gt=0, lt=1)
    valid_last_n: PositiveInt = 1
    seed: int = 42
    # How user and item ids become embedding rows: a vocabulary (Categorify) or hashing.
    id_encoding: Literal["categorify", "hash"] = "categorify"
    # Categorify: ids seen fewer times than this share the out-of-vocabulary bucket.
    freq_threshold: int = Field(0, ge=0)
    # HashBucket: buckets per id column; collisions grow as ids approach this count.
    hash_buckets: PositiveInt = 100_000
    # Log-normalised training-split counts of each item and user as continuous features.
    popularity: bool = True
    # Implicit feedback only (every interaction a positive): negatives per positive that the
    # ranker learns from, drawn from the catalogue with probability ~ count^0.75 (word2vec's
    # popularity smoothing), never an item the user interacted with.
    implicit_negatives: PositiveInt = 4
    # Also emit the raw rating as a REGRESSION target next to the binary one: the ranker's
    # graded labels read it (ranking.label_grading). No model takes it as an input, and
    # serving's workflow drops it with the binary target (tasks/features.py).
    rating_target: bool = True
    # Rows per Dask partition, from the raw interactions as read to the splits joined with their
    # side features, which NVTabular fits and transforms one at a time per worker thread: a
    # joined row takes ~300 bytes in pandas (the genre lists dominate), so this bounds a
    # worker's memory whatever the dataset's size.
    partition_rows: PositiveInt = 250_000


Optimizer = Literal["adam", "adagrad", "sgd"]
# How the learning rate moves over the epoch budget (models.training.optimizer_for): held;
# lowered from ``learning_rate`` to 0 along a half cosine ending with the last epoch; or held
# until an epoch gains no more than ``min_delta``, then divided by ten after each such epoch.
LearningRateSchedule = Literal["constant", "cosine", "plateau"]
# Top-k metric names the retrieval model reports, e.g. recall@10.
TOP_K_METRICS = ("recall", "ndcg", "mrr")


RankingArchitecture = Literal["dlrm", "dcn", "mlp", "ncf", "mf"]
RetrievalArchitecture = Literal["two_tower", "mf"]


class RankingConfig(_Section):
    """The ranker (docs/training.md; architectures in models/architectures.py). The other
    defaults were tuned for DLRM on ml-100k u1 (benchmarks/results/training.md); the Merlin
    README's overfit there. The fields are shared: ``top_mlp`` is DLRM's top MLP, DCN's deep
    MLP, the MLP model's and NCF's MLP branch; ``mf`` reads only the embedding width and its L2."""

    # The MLP served the best ranking AUC of the five, on each of ml-100k's five folds, with
    # these shared settings (benchmarks/results/architectures.md).
    architecture: RankingArchitecture = "mlp"
    # Champion and challengers: more architectures a run trains, with these same fields, each
    # judged by the gate on the same held-out rows; the best that passes is published
    # (``gate.prefer`` decides "best"; docs/registry.md).
    challengers: tuple[RankingArchitecture, ...] = ()
    embedding_dim: PositiveInt = 32
    # Hidden layers over the continuous features; a last layer of embedding_dim is added, as
    # DLRM's dot interaction needs it as wide as the embeddings.
    bottom_mlp: tuple[PositiveInt, ...] = (64,)
    top_mlp: tuple[PositiveInt, ...] = (64, 32)
    # DCN-v2's cross layers before its deep MLP.
    cross_depth: PositiveInt = 2
    dropout: float = Field(0.2, ge=0, lt=1)
    # L2 on every embedding table (whole table, each step). On ml-100k u1, 1e-5 and 1e-4 peak
    # at epoch 3 and overfit; 1e-3 learns too slowly (AUC 0.784 after 6 epochs).
    embeddings_l2: float = Field(3e-4, ge=0)
    # Train on graded labels rather than 0/1 (models/ranking.py: graded_labels): a liked rating
    # trains as 1 - label_grading (the lowest liked) up to 1, a disliked one as 0 up to
    # label_grading (the highest disliked), so the ranker learns that a 5 is liked more than a
    # 4 and a 3 less badly than a 1. 0: binary labels. Validation, the gate and the served
    # AUC still judge rating >= threshold (benchmarks/results/recommend.md).
    label_grading: float = Field(0.25, ge=0, lt=0.5)
    optimizer: Optimizer = "adam"
    learning_rate: float = Field(3e-3, gt=0)
    learning_rate_schedule: LearningRateSchedule = "constant"
    # The batch on up to 100,000 training rows; above them it doubles with each doubling of the
    # rows, up to max_batch_size (models.training.batch_for_rows; equal to batch_size: fixed).
    batch_size: PositiveInt = 512
    max_batch_size: PositiveInt = 8192
    # Graded labels learn for longer: on ml-100k u1.base's validation split the best epoch was
    # 17 (binary labels: 10, after which they overfit).
    epochs: PositiveInt = 25
    # Epochs without a better validation AUC before training stops; the best weights are kept.
    patience: int = Field(3, ge=0)
    # How much better than the last better epoch an epoch must be to count as better for
    # patience (the weights kept are the best epoch's all the same).
    min_delta: float = Field(0.0, ge=0)
    seed: int = 42

    @model_validator(mode="after")
    def _challengers_are_others(self) -> RankingConfig:
        contenders = (self.architecture, *self.challengers)
        if len(set(contenders)) != len(contenders):
            raise ValueError(
                f"challengers {list(self.challengers)} must differ from each other and from "
                f"architecture {self.architecture!r}"
            )
        return self

    @property
    def contenders(self) -> tuple[RankingConfig, ...]:
        """One configuration per architecture a run trains: this one's, then each
        challenger's with the same fields."""
        return tuple(
            self.model_copy(update={"architecture": name, "challengers": ()})
            for name in (self.architecture, *self.challengers)
        )


class RetrievalConfig(_Section):
    """Retrieval on rated pairs with in-batch negatives (docs/training.md): a two-tower model
    over every user and item feature, or matrix factorisation of the ids alone (``mf``: one
    embedding per id; ``tower_mlp`` and ``dropout`` do not apply)."""

    architecture: RetrievalArchitecture = "two_tower"
    # Width of every id and side-feature embedding inside the towers. 64 and training on every
    # rated pair were chosen on the validation split inside ml-100k u1.base (docs/training.md).
    embedding_dim: PositiveInt = 64
    # Each tower's MLP; the last width is the dimension of the served embeddings.
    tower_mlp: tuple[PositiveInt, ...] = (128, 64)
    dropout: float = Field(0.1, ge=0, lt=1)
    embeddings_l2: float = Field(1e-5, ge=0)
    # Tower outputs are L2-normalised, so logits are cosines in [-1, 1]: dividing by a small
    # temperature is what lets the softmax become confident.
    logits_temperature: float = Field(0.1, gt=0)
    # In-batch negatives over-sample popular items; subtracting log(item frequency) from the
    # logits (Yi et al. 2019) corrects for it. Without it the model stays below most-popular.
    logq_correction: bool = True
    # The pairs the towers learn from: every rated pair (a user's pick, whatever the rating) or
    # only the positives (rated >= threshold). Validation always asks for the positives; the
    # ranker's P(like | rated) is what recommend's ordering may add (models/ordering.py).
    interactions: Literal["rated", "positives"] = "rated"
    # Where the user and item id embeddings start: "svd", the truncated SVD of the pairs the
    # towers learn from (scaled to the random initialiser's size, which the L2 and the learning
    # rate were chosen at), or "random", Merlin's initialiser. From the SVD, the ml-1m-shaped
    # two-tower reached after 3 epochs the validation recall it reached after 10 from random
    # (docs/training.md, "Where the id embeddings start").
    initial_embeddings: Literal["svd", "random"] = "svd"
    optimizer: Optimizer = "adam"
    learning_rate: float = Field(3e-3, gt=0)
    # From the SVD start the validation recall stalls within a few epochs at the full rate; a
    # tenth of it then gained more than any epoch at the full rate did: ml-1m-shaped recall@10
    # 0.2797 -> 0.2867 (docs/training.md, "The learning rate after a stall").
    learning_rate_schedule: LearningRateSchedule = "plateau"
    batch_size: PositiveInt = 1024
    epochs: PositiveInt = 20
    # Epochs without a gain (``min_delta``) after which training stops. With ``plateau`` each
    # of them but the last lowers the rate tenfold for the next, so at 1 a stall gets one epoch
    # at a tenth of the rate, and the fit ends if that gains nothing too. No epoch after two
    # lowerings in a row gained in the runs measured (ml-1m-shaped; ml-latest-small by time,
    # both shapes; ml-100k u1), so 3 only paid for two more: 30 s of the two-tower's 207 at
    # ml-1m's shape (docs/training.md, "The learning rate after a stall"; scale.md).
    patience: int = Field(1, ge=0)
    # How much higher than at the last better epoch the monitored metric must be for an epoch to
    # count as better for patience; the best epoch's weights are kept either way. In one run from
    # the SVD the ml-1m-shaped two-tower gained 0.0001-0.0009 an epoch up to the 20-epoch cap;
    # 0.001 stopped it after 10 (docs/training.md, "Where the id embeddings start").
    min_delta: float = Field(0.001, ge=0)
    seed: int = 42
    top_k: tuple[PositiveInt, ...] = (10, 50, 100)
    # The validation metric early stopping and tuning maximise.
    monitor: str = "recall@10"

    @model_validator(mode="after")
    def _monitor_is_reported(self) -> RetrievalConfig:
        reported = {f"{name}@{k}" for name in TOP_K_METRICS for k in self.top_k}
        if self.monitor not in reported:
            raise ValueError(f"monitor {self.monitor!r} is not one of {sorted(reported)}")
        return self


class ItemItemConfig(_Section):
    """recommend's item-item candidate source (models/item_item.py, docs/training.md): EASE
    fitted on the training split, its λ chosen on the validation split."""

    enabled: bool = True
    # EASE's L2 weights tried (the grid of issue #29's baseline).
    l2_grid: tuple[PositiveFloat, ...] = (10.0, 50.0, 100.0, 200.0, 400.0, 800.0, 1600.0)
    # Weights kept per target item when the model is stored (the largest in magnitude). EASE
    # fitted on ml-latest-small's time-ordered training rows recalled its held-out ratings at
    # 10 with 0.0857 dense, 0.0851 keeping 1024 and 0.0798 keeping 256; 1024 is 80 MB at the
    # 10,000-item limit.
    neighbours: PositiveInt = 1024
    # What each later interaction takes off an earlier one's weight in a history
    # (models/item_item.py), chosen on validation after λ; 1 reads a history as a set
    # (docs/training.md, "Recency": 0.8 on ml-latest-small by time, 1 on a random split).
    recency_decays: tuple[float, ...] = (1.0, 0.95, 0.9, 0.85, 0.8, 0.7, 0.5)

    @field_validator("recency_decays")
    @classmethod
    def _decays_in_unit_interval(cls, decays: tuple[float, ...]) -> tuple[float, ...]:
        if not decays or not all(0.0 < d <= 1.0 for d in decays):
            raise ValueError(f"recency decays must be a non-empty list in (0, 1], got {decays}")
        return decays


class OrderingConfig(_Section):
    """How ``recommend`` orders its candidates (models/ordering.py), chosen at training time on
    the validation split: the weights of the ranker's and the item-item model's scores in a
    per-user standardised blend with the retrieval score, which gets the rest (ranker 1: the
    ranker alone; both 0: retrieval alone). Every pair of the two grids that sums to at most 1
    is tried."""

    ranker_weights: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
    item_item_weights: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    # The composed list's validation metric the weights maximise (ties: the earlier pair).
    monitor: str = "recall@10"
    # Users the version never saw who send a history get weights of their own, chosen on
    # validation users scored as new with their first n interactions as the history, for each
    # n here (models/composed.py); the mean over the lengths decides. Empty: no choice, such
    # users are ordered by the history's item-item scores alone. 5 and 20: a sign-up's first
    # session and a user a few sessions in.
    new_user_histories: tuple[PositiveInt, ...] = (5, 20)
    # Validation users scored as new: at most this many, a seeded sample above it.
    new_user_sample: PositiveInt = 2000

    @field_validator("ranker_weights", "item_item_weights")
    @classmethod
    def _weights_in_unit_interval(cls, weights: tuple[float, ...]) -> tuple[float, ...]:
        if not weights or not all(0.0 <= w <= 1.0 for w in weights):
            raise ValueError(f"ordering weights must be a non-empty list in [0, 1], got {weights}")
        return weights

    def weight_pairs(self, item_item: bool) -> list[tuple[float, float]]:
        """(ranker, item-item) weights to try, in grid order; item-item 0 only without it."""
        item_weights = self.item_item_weights if item_item else (0.0,)
        return [
            (ranker, item)
            for ranker in self.ranker_weights
            for item in item_weights
            if ranker + item <= 1 + 1e-9
        ]

    @field_validator("monitor")
    @classmethod
    def _monitor_is_top_k(cls, monitor: str) -> str:
        name, _, k = monitor.partition("@")
        if name not in TOP_K_METRICS or not k.isdigit() or int(k) < 1:
            raise ValueError(f"monitor {monitor!r} is not one of {TOP_K_METRICS} at some k")
        return monitor


class SearchRange(_Section):
    """A numeric range of one field of the tuned section, e.g. ``{low: 1e-4, high: 1e-2, log:
    true}``. Integers when the field is an int (then ``step`` is an int too), floats otherwise.
    Optuna may lower ``high`` to the last multiple of ``step`` above ``low``."""

    low: int | float
    high: int | float
    # Sample uniformly in log space (both bounds > 0); excludes ``step``.
    log: bool = False
    step: int | float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> SearchRange:
        if not self.low < self.high:
            raise ValueError(f"a range needs low < high, got low={self.low} high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        if self.log and self.step is not None:
            raise ValueError("a range is either log or stepped, not both")
        return self


# One dimension of a search space: the values to try (categorical), or a numeric range.
SearchDimension = SearchRange | tuple[Any, ...]


def section_field(section: type[BaseModel], name: str) -> Any:
    """The pydantic field that a (dotted, for a nested section) name of ``section`` denotes.
    Raises KeyError when there is none."""
    *parents, leaf = name.split(".")
    for part in parents:
        annotation = section.model_fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            raise KeyError(name)
        section = annotation
    return section.model_fields[leaf]


def field_value(section: type[BaseModel], name: str, value: Any) -> Any:
    """``value`` validated (and coerced, e.g. YAML's "1e-4" to a float) as the field ``name`` of
    ``section``, with the field's own constraints; a ValueError names the field."""
    info = section_field(section, name)
    try:
        return TypeAdapter(Annotated[info.annotation, info]).validate_python(value)
    except ValidationError as error:
        problem = error.errors()[0]["msg"]
        raise ValueError(f"{value!r} is not a value of {name}: {problem}") from None


class TuningConfig(_Section):
    """Hyperparameter search (flows/tune.py): an Optuna study stored under
    ``<home>/tuning/<study>/``, one trial per Prefect task, best by validation metric."""

    study: str = Field("default", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    model: Literal["ranking", "retrieval"] = "ranking"
    # Field of the model's section (ranking or retrieval; dotted for a nested section) -> the
    # values to try, or a range ({low, high, log, step}). Any field may be searched, the
    # architecture's own ones too: the rest of the section is the configured one.
    space: dict[str, SearchDimension] = {
        "embedding_dim": (16, 32, 64),
        "dropout": SearchRange(low=0.0, high=0.5),
        "learning_rate": SearchRange(low=1e-3, high=1e-2, log=True),
    }
    # tpe: Optuna's TPE, seeded with ``seed``; grid: every combination of a space of value lists
    # once (``n_trials`` is then ignored), as the search before Optuna did.
    sampler: Literal["tpe", "grid"] = "tpe"
    # The trials TPE draws at random before it models the space (Optuna's default is 10).
    startup_trials: PositiveInt = 5
    # The study's total of finished (complete or pruned) trials: a re-run runs only the rest.
    n_trials: PositiveInt = 20
    seed: int = 0
    # median: stop a trial whose validation metric after an epoch is below the median of the
    # earlier trials' at that epoch, once ``prune_after_trials`` trials have completed and the
    # trial has run ``warmup_epochs`` epochs. none: every trial runs to its early stopping.
    pruner: Literal["median", "none"] = "median"
    prune_after_trials: int = Field(3, ge=0)
    warmup_epochs: int = Field(1, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _strategy_is_gone(cls, values: Any) -> Any:
        if isinstance(values, dict) and "strategy" in values:
            raise ValueError(
                "tuning.strategy is gone (#20): tuning.sampler is tpe or grid (grid: every "
                "combination, as strategy=grid did)"
            )
        return values

    @model_validator(mode="after")
    def _space_names_fields(self) -> TuningConfig:
        section = RankingConfig if self.model == "ranking" else RetrievalConfig
        if not self.space:
            raise ValueError("tuning.space is empty")
        for name, dimension in self.space.items():
            try:
                section_field(section, name)
            except KeyError:
                raise ValueError(f"tuning.space names no {self.model} field: {name}") from None
            if isinstance(dimension, SearchRange):
                _check_range(section, name, dimension)
                if self.sampler == "grid":
                    raise ValueError(f"tuning.sampler grid takes value lists, {name} is a range")
            elif not dimension:
                raise ValueError(f"tuning.space gives no values for {name}")
            else:
                for value in dimension:
                    field_value(section, name, value)
        return self


def _check_range(section: type[BaseModel], name: str, dimension: SearchRange) -> None:
    """Both bounds must be values of the field, numbers of one kind (int or float)."""
    low, high = (field_value(section, name, bound) for bound in (dimension.low, dimension.high))
    numeric = {type(low), type(high)}
    if numeric == {int}:
        if not isinstance(dimension.step, (int, type(None))):
            raise ValueError(f"tuning.space: {name} is an int field, its step must be an int")
    elif numeric != {float}:
        raise ValueError(f"tuning.space: {name} is not a number field, give it a list of values")


# How far recommend's recall@10 may trail the strongest item-item baseline by default, as a
# share of the baseline's: not at all (docs/registry.md, "Strong baselines", says why).
STRONGEST_SHORTFALL = 0.0


class MetricBounds(_Section):
    """What one metric must satisfy to pass the gate, after TFX's MetricThreshold.

    Every bound is optional (None switches it off). Change bounds and the baseline margin are
    measured in the better direction, so a negative value tolerates a regression that small.
    """

    higher_is_better: bool = True
    # Absolute bounds: the only ones a first run (no blessed model yet) is judged on.
    min_value: float | None = None
    max_value: float | None = None
    # Against the blessed model, re-scored on the candidate's held-out rows; the relative
    # change is a fraction of the blessed model's value.
    min_change: float | None = None
    min_relative_change: float | None = None
    # Against the candidate's own baseline (per-item mean, most popular) on the same rows.
    min_baseline_gain: float | None = None
    # Against another metric of the candidate itself on the same rows, e.g. recommend's
    # recall@10 against retrieval alone's: ``reference`` names it ("retrieval.recall@10").
    reference: str | None = None
    min_reference_gain: float | None = None
    # Lists only: against the strongest of the item-item baselines (EASE, item-kNN) fitted in
    # the same run and scored on the same held-out users, as a share of its value: 0.1 lets the
    # metric trail the strongest by at most 10% of it, 0 asks for at least as good.
    max_shortfall_to_strongest: float | None = Field(None, ge=0, lt=1)


class GateConfig(_Section):
    """Bounds per model kind and metric name (docs/registry.md).

    A partial override (``--set gate.ranking.auc.min_value=0.7``) changes that one field and
    keeps the other defaults; set a bound to null to switch it off.
    """

    # AUC noise between two models on a few thousand held-out rows is ~0.005: a drop of 0.01 is
    # a regression, not chance. Log loss may worsen by 5% (AUC ignores calibration).
    ranking: dict[str, MetricBounds] = {
        "auc": MetricBounds(min_value=0.6, min_change=-0.01, min_baseline_gain=0.0),
        "logloss": MetricBounds(higher_is_better=False, min_relative_change=-0.05),
    }
    # Checked when the candidate has a retrieval model; the baseline is most-popular.
    retrieval: dict[str, MetricBounds] = {
        "recall@10": MetricBounds(min_change=-0.01, min_baseline_gain=0.0),
    }
    # The lists apps get (retrieve, then the final ordering): they must beat most popular
    # unseen, match the strongest item-item baseline (STRONGEST_SHORTFALL), and re-ranking may
    # cost at most 0.01 recall@10 against retrieval alone.
    recommend: dict[str, MetricBounds] = {
        "recall@10": MetricBounds(
            min_change=-0.01,
            min_baseline_gain=0.0,
            reference="retrieval.recall@10",
            min_reference_gain=-0.01,
            max_shortfall_to_strongest=STRONGEST_SHORTFALL,
        ),
    }
    # The item-item baselines every run fits on its training rows and scores on the held-out
    # ones (models/baselines.py): EASE and item-kNN, or none (an empty list skips the fits).
    baselines: tuple[Literal["ease", "item_knn"], ...] = ("ease", "item_knn")

    @field_validator("ranking", "retrieval", "recommend", mode="before")
    @classmethod
    def _onto_defaults(cls, given: Any, info) -> Any:
        if not isinstance(given, dict):
            return given
        defaults = cls.model_fields[info.field_name].default
        merged = {name: bounds.model_dump() for name, bounds in defaults.items()}
        for name, fields in given.items():
            if isinstance(fields, MetricBounds):
                fields = fields.model_dump()
            if isinstance(fields, dict):
                fields = {**merged.get(name, {}), **fields}
            merged[name] = fields
        return merged

    # Of the contenders that pass (``ranking.challengers``), the one published: best by this
    # held-out metric, e.g. "recommend.ndcg@10" to choose by the lists apps get.
    prefer: str = Field("ranking.auc", pattern=r"^(ranking|retrieval|recommend)\.\S+$")

    @property
    def tables(self) -> dict[str, dict[str, MetricBounds]]:
        """The bounds by model kind: ``ranking``, ``retrieval``, ``recommend``."""
        return {"ranking": self.ranking, "retrieval": self.retrieval, "recommend": self.recommend}

    def higher_is_better(self, metric: str) -> bool:
        """As the metric's bounds say; a metric with no bounds is a quality (higher is better)."""
        key = MetricKey.parse(metric)
        bounds = self.tables[key.kind].get(key.name)
        return bounds is None or bounds.higher_is_better


class TrialConfig(_Section):
    """Trial serving (TFX's InfraValidator): the candidate in a real Triton before publishing."""

    # Off only where no server should start (unit-level flow tests): it costs a server start-up.
    enabled: bool = True
    # Held-out rows whose served scores must match the in-process ones.
    rows: PositiveInt = 256
    # The same float32 computation in two processes agrees to ~1e-7; beyond this it differs.
    atol: float = Field(1e-5, gt=0)
    # Requests sent and discarded first: the first ones pay for TensorFlow's graph tracing.
    warmup_requests: int = Field(3, ge=0)
    # Users (items, for ``similar``) whose top-k each ranked endpoint must answer as in-process.
    ranked_rows: PositiveInt = 4
    ranked_k: PositiveInt = 10


class ServingConfig(_Section):
    # The defaults an app's client assumes too (recflow_client.contract: the client installs
    # without recflow, so they are written there).
    host: str = DEFAULT_HOST
    grpc_port: int = Field(DEFAULT_GRPC_PORT, ge=0, le=65535)
    http_port: int = Field(DEFAULT_HTTP_PORT, ge=0, le=65535)
    metrics_port: int = Field(8002, ge=0, le=65535)
    model_prefix: str = Field(DEFAULT_MODEL_PREFIX, pattern=r"^[a-z][a-z0-9_]{0,40}$")
    max_batch_size: PositiveInt = DEFAULT_MAX_BATCH_SIZE
    # Stub processes per endpoint. recommend gets more: one request for 1024 users takes about
    # a second, and an instance answers one request at a time, so on a single instance every
    # other caller waited behind it (p50 845 ms instead of 6 ms; benchmarks/results/serving.md).
    instance_count: PositiveInt = 1
    recommend_instance_count: PositiveInt = 2
    # Versions each model keeps loaded (Triton version_policy latest N). At least 2: while a
    # publish's version loads, every endpoint's previous version goes on answering.
    keep_versions: int = Field(2, ge=2)
    # Requests the dynamic batcher may hold back to merge them (0: merge only what is queued).
    max_queue_delay_us: int = Field(0, ge=0)
    # Multi-stage recommend: candidates retrieved per user before ranking.
    retrieval_candidates: PositiveInt = 100
    # Catalogues of at least this many items are searched through an approximate index of the
    # item embeddings (serving/item_index.py) by retrieval, recommend and similar; smaller
    # ones exactly (docs/serving.md, "Large catalogues"). Measured on a 1M-item version's
    # embeddings (benchmarks/results/catalogue.md): one exact query costs 0.15 ms at 10k items,
    # 1.8 ms at 100k and 23 ms at 1M, the index under 0.5 ms at each. Below 100k exact search
    # stays under a tenth of recommend's 25 ms budget and answers exactly.
    ann_min_items: PositiveInt = 100_000
    # Inverted lists the index scans per query (of about 4 * sqrt(items)). On the 1M-item
    # version retrieval's recall@100 against exact search was 0.944 at 8, 0.992 at 16 and 1.0
    # from 32 on, at 0.24-0.45 ms a query; 64 leaves room for less clustered embeddings.
    ann_probes: PositiveInt = 64
    # Larger k is rejected as INVALID_ARG; k above the catalog size returns the whole catalog.
    max_k: PositiveInt = 1000
    # The longest request-time history (item ids per user) retrieval and recommend take;
    # longer is rejected as INVALID_ARG (docs/serving.md, "Request-time history").
    max_history: PositiveInt = DEFAULT_MAX_HISTORY
    # For the whole start-up, every model included (a stub initializes in about a second; the
    # margin is for a machine busy with training).
    startup_timeout_s: float = Field(600.0, gt=0)
    request_timeout_s: float = Field(DEFAULT_TIMEOUT_S, gt=0)


class OrchestrationConfig(_Section):
    """How Prefect runs the stages: time limits and the publish lock."""

    fetch_timeout_s: float = Field(4 * 3600.0, gt=0)
    features_timeout_s: float = Field(6 * 3600.0, gt=0)
    train_timeout_s: float = Field(12 * 3600.0, gt=0)
    publish_timeout_s: float = Field(3600.0, gt=0)
    # How long a run waits for another run's publish to finish before it gives up.
    publish_lock_timeout_s: float = Field(3600.0, ge=0)


class ScheduleConfig(_Section):
    """The deployment ``recflow schedule`` serves (infra/prefect.yaml deploys the same one)."""

    deployment: str = "daily"
    cron: str = "0 3 * * *"
    timezone: str = "UTC"


class ReleaseConfig(BaseModel):
    """What trial serving, publish, promote and rollback read (``Settings.release``): how a
    candidate is tried (``trial``) and served (``serving``), and where (``paths``: the live
    repository, scratch space, logs). They get these three sections, not the whole settings."""

    model_config = ConfigDict(frozen=True)

    trial: TrialConfig
    serving: ServingConfig
    paths: PathsConfig


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RECFLOW_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    paths: PathsConfig = PathsConfig()
    data: DataConfig = DataConfig()
    compute: ComputeConfig = ComputeConfig()
    data_parallel: DataParallelConfig = DataParallelConfig()
    features: FeaturesConfig = FeaturesConfig()
    validation: ValidationConfig = ValidationConfig()
    ranking: RankingConfig = RankingConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    item_item: ItemItemConfig = ItemItemConfig()
    ordering: OrderingConfig = OrderingConfig()
    tuning: TuningConfig = TuningConfig()
    gate: GateConfig = GateConfig()
    trial: TrialConfig = TrialConfig()
    serving: ServingConfig = ServingConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()
    schedule: ScheduleConfig = ScheduleConfig()

    @property
    def release(self) -> ReleaseConfig:
        return ReleaseConfig(trial=self.trial, serving=self.serving, paths=self.paths)

    @field_validator("paths", mode="after")
    @classmethod
    def _absolute_home(cls, paths: PathsConfig) -> PathsConfig:
        return paths.model_copy(update={"home": paths.home.expanduser().resolve()})

    @model_validator(mode="after")
    def _graded_labels_have_ratings(self) -> Settings:
        if self.ranking.label_grading and not self.features.rating_target:
            raise ValueError(
                f"ranking.label_grading={self.ranking.label_grading} needs the raw rating in the "
                "features: set features.rating_target=true, or ranking.label_grading=0"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlSource(settings_cls))


class _YamlSource(PydanticBaseSettingsSource):
    """Reads the YAML file named by ``RECFLOW_CONFIG`` (set by ``--config``)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get("RECFLOW_CONFIG")
        if not path:
            return {}
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {path} must hold a mapping, not {type(loaded).__name__}")
        return loaded


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn ``["ranking.epochs=3", "data.variant=ml-100k"]`` into a nested dict.

    Values are parsed as YAML scalars/flow collections, so ``[64,32]`` and ``true`` work.
    """
    nested: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"override {pair!r} is not of the form section.field=value")
        node = nested
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        try:
            node[leaf] = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            problem = getattr(error, "problem", None) or error.__class__.__name__
            raise ValueError(f"override {pair!r}: the value is not YAML ({problem})") from None
    return nested


def load_settings(config_file: Path | None = None, overrides: list[str] | None = None) -> Settings:
    if config_file is not None:
        os.environ["RECFLOW_CONFIG"] = str(config_file)
    return Settings(**parse_overrides(overrides or []))


# Where a setting can come from, highest precedence first (Settings.settings_customise_sources).
SOURCES = ("--set", "env", "yaml")


def flat_settings(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping (e.g. ``settings.model_dump()``) by dotted name of its leaves; a list,
    None or an empty mapping is a leaf."""
    flat = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        nested = isinstance(value, dict) and value
        flat |= flat_settings(value, f"{name}.") if nested else {name: value}
    return flat


def setting_sources(settings: Settings, overrides: list[str] | None = None) -> dict[str, str]:
    """Each setting's dotted name -> where its value came from: one of :data:`SOURCES`, or
    ``default``. ``overrides`` are the ``--set`` pairs (``--home`` included)."""
    given = {
        "--set": parse_overrides(overrides or []),
        "env": EnvSettingsSource(Settings)(),
        "yaml": _YamlSource(Settings)(),
    }
    given_names = {source: set(flat_settings(values)) for source, values in given.items()}
    return {
        name: next((src for src in SOURCES if _covers(given_names[src], name)), "default")
        for name in flat_settings(settings.model_dump())
    }


def _covers(given: set[str], name: str) -> bool:
    """Whether a source that gave ``given`` set ``name``: the setting itself, a part of it (a
    mapping-valued setting), or the whole section holding it."""
    return any(g == name or g.startswith(f"{name}.") or name.startswith(f"{g}.") for g in given)
