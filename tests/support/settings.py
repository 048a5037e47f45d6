"""Settings for fast pipeline runs on small synthetic data."""

from __future__ import annotations

from pathlib import Path

from recflow.config import Settings, load_settings

# Small enough to train in well under a minute, large enough for the planted signal to show.
SMALL_DATA = [
    "data.synthetic.n_users=400",
    "data.synthetic.n_items=200",
    "data.synthetic.n_ratings=30000",
    "compute.n_workers=1",
    "compute.threads_per_worker=2",
    "ranking.epochs=6",
    "ranking.batch_size=512",
    "retrieval.epochs=6",
]


def small_settings(home: Path, *overrides: str) -> Settings:
    """Settings for a fast pipeline run on small synthetic data under ``home``."""
    return load_settings(overrides=[f"paths.home={home}", *SMALL_DATA, *overrides])
