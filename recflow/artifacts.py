"""The artifacts one stage hands to the next (TFX-style): small, typed, JSON-serialisable.

Each describes a directory on disk (layout in docs/layout.md) plus what a later stage or the
registry needs to know about it without opening it.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from recflow.atomic import write_text_atomic

MANIFEST = "manifest.json"


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


class RawDataset(Artifact):
    """Canonical tables of one dataset variant, identical in schema across variants.

    ``interactions.parquet``: user_id int64, item_id int64, rating float32, timestamp int64 (unix s)
    ``items.parquet``: item_id int64, title string, year Int32 (nullable), genres list<string>
    ``users.parquet`` (only where the variant has users): user_id int64, gender string,
        age int32, occupation string, zip string
    """

    variant: str
    # sha256 of the source archive (or of the generator config for synthetic data)
    checksum: str
    n_interactions: int
    n_users: int
    n_items: int
    has_users: bool

    @property
    def interactions(self) -> Path:
        return self.path / "interactions.parquet"

    @property
    def items(self) -> Path:
        return self.path / "items.parquet"

    @property
    def users(self) -> Path:
        return self.path / "users.parquet"


class TrainedModel(Artifact):
    """A model fit on one feature build, with its validation metrics and its baseline's."""

    features_fingerprint: str
    params: dict
    metrics: dict[str, float]
    baseline_metrics: dict[str, float]
    # One entry per epoch; the weights of ``best_epoch`` (counted from 1) were kept.
    history: list[dict[str, float]]
    best_epoch: int
    train_seconds: float
    train_examples_per_s: float
