"""Small helpers for ``recflow demo``: whom to recommend for."""

from __future__ import annotations

import pandas as pd

from recflow.artifacts import RawDataset
from recflow.vocabulary import USER_ID


def most_active_user(raw: RawDataset) -> int:
    users = pd.read_parquet(raw.interactions, columns=[USER_ID])[USER_ID]
    return int(users.value_counts().idxmax())
