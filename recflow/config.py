"""Typed configuration: the one place that holds recflow's defaults.

Precedence, highest first: explicit overrides (CLI ``--set a.b=c``), environment variables
(``RECFLOW_<SECTION>__<FIELD>``, e.g. ``RECFLOW_SERVING__GRPC_PORT=9001``), a YAML file
(``--config`` or ``RECFLOW_CONFIG``), then the defaults below.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict


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


class DataConfig(_Section):
    variant: str = "synthetic"
    # A base URL or a local directory that replaces the GroupLens host.
    mirror: str | None = None
    synthetic: SyntheticConfig = SyntheticConfig()
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


class FeaturesConfig(_Section):
    rating_threshold: float = 4.0
    split: Literal["random", "time"] = "random"
    valid_fraction: float = Field(0.2, gt=0, lt=1)
    seed: int = 42
    # Categorify: ids seen fewer times than this share the out-of-vocabulary bucket.
    freq_threshold: int = Field(0, ge=0)
    part_size: str = "64MB"


class RankingConfig(_Section):
    """DLRM. Defaults are the regularised ones; the Merlin README's overfit on MovieLens."""

    embedding_dim: PositiveInt = 32
    bottom_mlp: tuple[PositiveInt, ...] = (64, 32)
    top_mlp: tuple[PositiveInt, ...] = (64, 32)
    dropout: float = Field(0.2, ge=0, lt=1)
    embeddings_l2: float = Field(1e-5, ge=0)
    learning_rate: float = Field(3e-3, gt=0)
    batch_size: PositiveInt = 1024
    epochs: PositiveInt = 8
    patience: int = Field(2, ge=0)
    seed: int = 42


class GateConfig(_Section):
    min_auc: float = Field(0.6, ge=0, le=1)


class ServingConfig(_Section):
    host: str = "127.0.0.1"
    grpc_port: int = Field(8001, ge=0, le=65535)
    http_port: int = Field(8000, ge=0, le=65535)
    metrics_port: int = Field(8002, ge=0, le=65535)
    model_prefix: str = Field("recflow", pattern=r"^[a-z][a-z0-9_]{0,40}$")
    max_batch_size: PositiveInt = 1024
    instance_count: PositiveInt = 1
    startup_timeout_s: float = Field(180.0, gt=0)
    request_timeout_s: float = Field(30.0, gt=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RECFLOW_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    paths: PathsConfig = PathsConfig()
    data: DataConfig = DataConfig()
    compute: ComputeConfig = ComputeConfig()
    features: FeaturesConfig = FeaturesConfig()
    ranking: RankingConfig = RankingConfig()
    gate: GateConfig = GateConfig()
    serving: ServingConfig = ServingConfig()

    @field_validator("paths", mode="after")
    @classmethod
    def _absolute_home(cls, paths: PathsConfig) -> PathsConfig:
        return paths.model_copy(update={"home": paths.home.expanduser().resolve()})

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
        node[leaf] = yaml.safe_load(raw)
    return nested


def load_settings(config_file: Path | None = None, overrides: list[str] | None = None) -> Settings:
    if config_file is not None:
        os.environ["RECFLOW_CONFIG"] = str(config_file)
    return Settings(**parse_overrides(overrides or []))
