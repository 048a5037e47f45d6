"""Small helpers for ``recflow demo``: whom to recommend for."""

from __future__ import annotations

import pandas as pd

from recflow.artifacts import RawDataset


def most_active_user(raw: RawDataset) -> int:
    users = pd.read_parquet(raw.interactions, columns=["user_id"])["user_id"]
    return int(users.value_counts().idxmax())
