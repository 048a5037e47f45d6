"""The artifacts one stage hands to the next (TFX-style): small, typed, JSON-serialisable.

Every type a stage returns or takes from another stage is here, and nothing else: the raw
dataset, the feature set and its statistics and validation report, the trained models, the
candidate a training run hands to the release stage, and what a publish wrote. Most describe a
directory on disk (layout in docs/layout.md) plus what a later stage or the registry needs to
know about it without opening it. No heavy imports (the CLI, the registry and the serving stubs
import this module): pandas only inside the one method that reads a table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, model_validator

from recflow.atomic import write_text_atomic
from recflow.vocabulary import ITEM_ID, USER_ID
from recflow_client.contract import DEFAULT_MAX_HISTORY

if TYPE_CHECKING:
    import pandas as pd

MANIFEST = "manifest.json"
# FeatureSet.held_out_dir's name in a feature set.
HELD_OUT = "held_out"


def names_file(column: str) -> str:
    """The file of each int64 id's string (recflow/external_ids.py): ``user_ids.parquet`` or
    ``item_ids.parquet``, in a raw dataset, a feature build's ``lookup/`` and the served version
    directories alike."""
    return f"{column.removesuffix('_id')}_ids.parquet"


class Artifact(BaseModel):
    model_config = ConfigDict(frozen=True)

    # Where the artifact lives now; not stored, so a directory can be moved or renamed
    # (staging -> final) without rewriting its manifest.
    path: Path

    def save_manifest(self, directory: Path | None = None) -> None:
        """Write the manifest into ``directory`` (default: ``self.path``)."""
        target = Path(directory or self.path) / MANIFEST
        write_text_atomic(target, self.model_dump_json(indent=2, exclude={"path"}))

    @classmethod
    def load(cls, path: Path):
        fields = json.loads((Path(path) / MANIFEST).read_text())
        return cls.model_validate({**fields, "path": Path(path)})


class SideFeatures(BaseModel):
    """The feature columns of a users or items table, by kind (docs/features.md)."""

    model_config = ConfigDict(frozen=True)

    categorical: tuple[str, ...] = ()  # one vocabulary each (NVTabular Categorify)
    continuous: tuple[str, ...] = ()  # float32, normalised
    lists: tuple[str, ...] = ()  # multi-hot: a list of categories per row
    # Your own data's columns are renamed on import (tasks/custom.py, internal_name): a column
    # is the user's to name, and a name such as ``labels`` or ``item_id`` would meet the ones
    # NVTabular and the stages use. Each internal name -> the name the source declared it as,
    # for every message and picture; empty where the tables keep their names (MovieLens).
    source_names: dict[str, str] = {}

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.categorical, *self.continuous, *self.lists)


# What the MovieLens variants and the synthetic data declare (tasks/normalize.py derives the
# buckets and the zip prefix when it writes the tables).
MOVIELENS_ITEMS = SideFeatures(categorical=("year_bucket",), lists=("genres",))
MOVIELENS_USERS = SideFeatures(categorical=("gender", "age_bucket", "occupation", "zip_prefix"))
Feedback = Literal["rating", "label", "implicit"]


class DatasetDeclaration(BaseModel):
    """What a dataset's builder declares of its tables beyond their counts (tasks/download.py:
    MovieLens, synthetic and your own data each return one); a ``RawDataset`` records it."""

    model_config = ConfigDict(frozen=True)

    items_features: SideFeatures = MOVIELENS_ITEMS
    # None: no users table
    users_features: SideFeatures | None = MOVIELENS_USERS
    # What ``rating`` holds: a rating (positive from the feature stage's threshold unless
    # ``positive_threshold`` says), a 0/1 label, or 1 for every row (implicit feedback).
    feedback: Feedback = "rating"
    rating_scale: tuple[float, float] | None = None  # None: validation.rating_min/max
    positive_threshold: float | None = None  # None: features.rating_threshold
    # True when the source's ids are strings: the int64 ids are their hashes.
    external_ids: bool = False


class RawDataset(Artifact, DatasetDeclaration):
    """The canonical tables of one dataset (docs/data.md), whatever its source.

    ``interactions.parquet``: user_id int64, item_id int64, rating float32, timestamp int64 (unix s)
    ``items.parquet``: item_id int64 and the columns ``items`` declares
    ``users.parquet`` (only where the dataset has users): user_id int64 and ``users``' columns
    ``user_ids.parquet``, ``item_ids.parquet`` (only with ``external_ids``): each int64 id next
    to the source's own string id (``external_id``), see recflow/external_ids.py
    """

    # Bump when the tables' layout changes: a dataset of another layout is made again.
    # 3: your own data's side columns under internal names (SideFeatures.source_names).
    LAYOUT: ClassVar[int] = 3

    variant: str
    # sha256 of the source archive, of the generator config (synthetic data), or of every input
    # file and the column mapping (custom data)
    checksum: str
    n_interactions: int
    n_users: int
    n_items: int
    layout: int = 1

    @property
    def has_users(self) -> bool:
        return self.users_features is not None

    @property
    def source_names(self) -> dict[str, str]:
        """Each renamed side column's internal name -> the name the source gave it."""
        users = self.users_features.source_names if self.users_features else {}
        return self.items_features.source_names | users

    @property
    def interactions(self) -> Path:
        return self.path / "interactions.parquet"

    @property
    def items(self) -> Path:
        return self.path / "items.parquet"

    @property
    def users(self) -> Path:
        return self.path / "users.parquet"

    def external_ids_file(self, column: str) -> Path:
        """``user_ids.parquet`` or ``item_ids.parquet`` (``column``: user_id or item_id)."""
        return self.path / names_file(column)


class FitSummary(BaseModel):
    """What a training loop reports of a fit (models/training.py ``fit_keeping_best``): the
    validation metrics of the epoch whose weights were kept, every epoch's, and throughput."""

    model_config = ConfigDict(frozen=True)

    metrics: dict[str, float]
    # One entry per epoch ("epoch" counted from 1, an int; its metrics); the weights of
    # ``best_epoch`` were kept.
    history: list[dict[str, int | float]]
    best_epoch: int
    # Training time only, the per-epoch validation excluded.
    train_seconds: float
    train_examples_per_s: float


class TrainedModel(Artifact, FitSummary):
    """A model fit on one feature build: its fit, its parameters and its baseline's metrics."""

    features_fingerprint: str
    params: dict
    baseline_metrics: dict[str, float]
    # The L2 factor applied to the embedding tables at each step: ``params``' embeddings_l2
    # scaled for the training rows (models.training.scaled_for_rows). None: an older manifest.
    embeddings_l2_per_step: float | None = None
    # The batch trained with: the ranker's grows with the training rows
    # (models.training.batch_for_rows). None: an older manifest, or the retrieval model's.
    batch_size_applied: int | None = None
    # Processes that trained it together, each on its share of the rows with that batch
    # (models.training.process_rank; tasks/data_parallel.py).
    processes: int = 1


# --- features -----------------------------------------------------------------------------

# What a data validation check looked at (tasks/data_checks.py).
DataCheck = Literal[
    "missing_column",
    "extra_column",
    "dtype",
    "empty",
    "null_rate",
    "out_of_range",
    "duplicates",
    "unseen_ids",
    "drift",
]


class ColumnStats(BaseModel):
    dtype: str
    count: int
    nulls: int
    min: float | None = None
    max: float | None = None
    cardinality: int | None = None
    # True when cardinality is an estimate (tasks/statistics.py: more than SKETCH_SIZE values).
    cardinality_approximate: bool = False
    quantiles: list[float] | None = None
    shares: dict[str, float] | None = None


class Profile(BaseModel):
    """Statistics of every table a feature build read, and of its output schema."""

    tables: dict[str, dict[str, ColumnStats]]
    # Rows each cleaning rule dropped (docs/features.md).
    cleaning: dict[str, int] = {}


class Anomaly(BaseModel):
    table: str
    column: str
    check: DataCheck
    expected: str
    found: str
    blocking: bool

    def __str__(self) -> str:
        kind = "BLOCKING" if self.blocking else "warning"
        return (
            f"[{kind}] {self.table}.{self.column}: {self.check}: "
            f"expected {self.expected}, found {self.found}"
        )


class ValidationReport(BaseModel):
    fingerprint: str
    baseline: str | None
    checked_at: str
    anomalies: list[Anomaly]
    cleaning: dict[str, int]

    @property
    def blocking(self) -> list[Anomaly]:
        return [a for a in self.anomalies if a.blocking]

    @property
    def passed(self) -> bool:
        return not self.blocking


class FeatureSet(Artifact):
    """Transformed splits, the fitted workflows, the output schema and the input statistics."""

    fingerprint: str
    variant: str
    n_train: int
    n_valid: int
    cardinalities: dict[str, int]
    # Added with FEATURES_VERSION 2; defaults keep older manifests loadable.
    id_encoding: str = "categorify"
    split: str = "random"
    cleaning: dict[str, int] = {}
    # Added with FEATURES_VERSION 6. The label is ``rating >= positive_threshold``; implicit
    # feedback's splits also hold the sampled negatives (rating 0), which no user has seen.
    positive_threshold: float = 4.0
    feedback: Feedback = "rating"
    # The dataset's ids are strings (RawDataset.external_ids); lookup/ holds their table.
    external_ids: bool = False

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
    def user_workflow_dir(self) -> Path:
        return self.path / "workflow_user"

    @property
    def item_workflow_dir(self) -> Path:
        return self.path / "workflow_item"

    @property
    def lookup_dir(self) -> Path:
        return self.path / "lookup"

    def external_ids_file(self, column: str) -> Path:
        """The dataset's strings of ``column``'s ids (only with ``external_ids``)."""
        return self.lookup_dir / names_file(column)

    @property
    def schema_file(self) -> Path:
        return self.train_dir / "schema.pbtxt"

    @property
    def statistics_dir(self) -> Path:
        return self.path / "statistics"

    @property
    def held_out_dir(self) -> Path:
        """The split in raw ids (FEATURES_VERSION 5): ``train/`` and ``valid/`` parquet of
        ``user_id``, ``item_id``, ``rating``, the rows the gate evaluates on."""
        return self.path / HELD_OUT

    id_columns: ClassVar[tuple[str, ...]] = (USER_ID, ITEM_ID)

    def profile(self) -> Profile:
        return Profile.model_validate_json((self.statistics_dir / "statistics.json").read_text())

    def id_counts(self, column: str) -> pd.Series:
        """Training-split rows per id of ``column`` (the vocabulary the build saw)."""
        import pandas as pd

        counts = pd.read_parquet(self.statistics_dir / f"{column}.parquet")
        return counts.set_index(column)["count"]


# --- models -------------------------------------------------------------------------------


class OrderingPolicy(BaseModel):
    """What ``recommend`` ranks its candidates by (models/ordering.py); recorded in the ranking
    model's manifest and exported into each served version's ``version.json``."""

    model_config = ConfigDict(frozen=True)

    # Weights of the ranker's and the item-item model's standardised scores; the retrieval
    # score gets the rest. 1.0 and 0.0 (the ranker alone) is what a manifest without a policy
    # was served with.
    ranker_weight: float = Field(1.0, ge=0.0, le=1.0)
    item_item_weight: float = Field(0.0, ge=0.0, le=1.0)
    # The validation metric of every pair of weights that was tried (:attr:`key` -> value), so
    # the record shows how close the alternatives were; empty if nothing was measured.
    validation: dict[str, float] = {}
    # How the lists of users the version never saw who send a history are ordered, chosen on
    # validation users scored as new (models/composed.py). None: by the history's item-item
    # scores alone, what versions exported before it serve.
    new_users: OrderingPolicy | None = None

    @model_validator(mode="after")
    def _weights_leave_retrieval_a_share(self) -> OrderingPolicy:
        if self.ranker_weight + self.item_item_weight > 1 + 1e-9:
            raise ValueError(
                f"ranker_weight {self.ranker_weight} + item_item_weight {self.item_item_weight} "
                "exceeds 1"
            )
        return self

    @property
    def key(self) -> str:
        """How :attr:`validation` names these weights: ``ranker <w>, item-item <w>``."""
        return f"ranker {self.ranker_weight:g}, item-item {self.item_item_weight:g}"

    def served(self) -> OrderingPolicy:
        """The weights without the validation record: what a version's ``version.json`` holds."""
        new_users = None if self.new_users is None else self.new_users.served()
        return self.model_copy(update={"validation": {}, "new_users": new_users})


class VersionConfig(BaseModel):
    """What every endpoint of an exported version reads when it loads (``version.json`` in each
    version directory): written by serving/repository.py, read by serving/runtime.py."""

    model_config = ConfigDict(frozen=True)

    # The largest k a request may ask for.
    max_k: int
    # The longest history a request may send (retrieval, recommend); versions exported before
    # histories existed take the default.
    max_history: int = DEFAULT_MAX_HISTORY
    # How many items recommend retrieves before the ranker orders them.
    retrieval_candidates: int
    # A version exported before the policy existed ranked by the ranker alone, the default.
    ordering: OrderingPolicy = OrderingPolicy()
    # Whether requests and answers carry the dataset's string ids.
    external_ids: bool = False
    # The registry id the version was exported as (assigned by the gate): the served model
    # config names it for apps; None in versions exported before it was recorded.
    candidate: str | None = None


class RankingModel(TrainedModel):
    """A trained ranker (SavedModel in ``model/``) with its validation metrics.

    ``architecture`` names its builder in models/architectures.py, which also says which
    feature columns it reads (``ranker_inputs``); manifests from before it was recorded are DLRMs.

    ``ordering`` is how ``recommend`` combines this ranker with the retrieval model of the same
    run, chosen on validation after both trained (``tasks.train.choose_recommend_ordering``).
    """

    architecture: str = "dlrm"
    ordering: OrderingPolicy = OrderingPolicy()

    @property
    def model_dir(self) -> Path:
        return self.path / "model"


class RetrievalModel(TrainedModel):
    """A trained two-tower model: the query encoder (SavedModel), item embeddings, metrics."""

    n_items: int
    dim: int

    @property
    def query_encoder_dir(self) -> Path:
        return self.path / "query_encoder"

    @property
    def query_schema_dir(self) -> Path:
        """Holds ``schema.pbtxt``: the user columns the query encoder takes."""
        return self.path / "query_schema"

    @property
    def item_embeddings(self) -> Path:
        """Parquet: ``raw_item_id`` int64, ``item_id`` (encoded) int64, ``embedding`` list<f32>."""
        return self.path / "item_embeddings.parquet"


class ItemItemSource(Artifact):
    """recommend's second candidate source (models/item_item.py): EASE, its λ and the history's
    recency decay chosen on the validation split. Two fits with that λ and decay, each's kept
    weights in a file: :attr:`weights_file`, on the training split (what the ordering is chosen
    with and the gate judges), and :attr:`served_weights_file`, on the training and validation
    splits (what the export serves: the most recent interactions say most about the next
    ones)."""

    features_fingerprint: str
    # Which training rows are a user's history: every rated pair, or only the positives
    # (implicit feedback, whose other rows are sampled negatives).
    interactions: Literal["rated", "positives"]
    l2: float
    # The weights kept per target item (models/item_item.py) and the items the model holds.
    neighbours: int
    n_items: int
    # recall@10 of the validation split's positives for every λ tried (λ as a string -> value).
    validation: dict[str, float]
    # The history's recency decay chosen after λ (models/item_item.py; 1: a set, as before it
    # existed), and recall@10 of the validation positives for every decay tried.
    recency_decay: float = 1.0
    recency_validation: dict[str, float] = {}
    fit_seconds: float

    @property
    def weights_file(self) -> Path:
        return self.path / "item_item.npz"

    @property
    def served_weights_file(self) -> Path:
        return self.path / "item_item_served.npz"


class Candidate(NamedTuple):
    """What one training run hands to the release stage: the features and the models fit on
    them, and the run that trained them (assigned once by the pipeline, carried from there;
    the gate names the candidate from it). The registry loads the same from a record to export
    an older candidate again, where the retrieval model may be absent (``None``: ranking alone
    is served)."""

    features: FeatureSet
    ranking: RankingModel
    retrieval: RetrievalModel | None
    run_id: str
    # None where the run fitted none (``item_item.enabled: false``) or for a record from before.
    item_item: ItemItemSource | None = None


class ExportedCandidate(Artifact):
    """One candidate's endpoints, exported once by the gate (serving/repository.py
    ``export_candidate``) into ``<registry>/bundles/<candidate>/``: a version directory per
    endpoint (``<path>/<stage>/``) and the catalogue. Trial serving and every publish install
    these very files as a version of a repository; nothing exports the candidate again."""

    # The registry id, written into every version's version.json: what the served model config
    # names for apps (``recflow_candidate_v<N>``).
    candidate: str
    # The endpoints' stages, in publish order: ranking first.
    stages: tuple[str, ...]
    external_ids: bool
    export_seconds: float

    def version_dir(self, stage: str) -> Path:
        return self.path / stage


# --- release ------------------------------------------------------------------------------


class Published(BaseModel):
    """A candidate written to the Triton repository as a new version."""

    candidate: str
    version: int
    repository: Path
    models: list[str]
    # What the gate measured on the held-out rows ("ranking.auc", "retrieval.recall@10", ...).
    metrics: dict[str, float] = {}
    baseline_metrics: dict[str, float] = {}

    def version_dirs(self) -> list[Path]:
        return [self.repository / model / str(self.version) for model in self.models]
