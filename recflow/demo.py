"""Small helpers for ``recflow demo``: whom to recommend for, and what they have seen."""

from __future__ import annotations

import pandas as pd

from recflow.artifacts import RawDataset


def most_active_user(raw: RawDataset) -> int:
    users = pd.read_parquet(raw.interactions, columns=["user_id"])["user_id"]
    return int(users.value_counts().idxmax())


def seen_items(raw: RawDataset, user_id: int) -> set[int]:
    rated = pd.read_parquet(
        raw.interactions, columns=["user_id", "item_id"], filters=[("user_id", "==", user_id)]
    )
    return set(rated["item_id"].tolist())
