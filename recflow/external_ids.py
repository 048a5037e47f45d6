"""String ids at the edges: the int64 id recflow uses inside for each of a source's string ids.

A dataset whose ids are strings (a custom source, tasks/custom.py) keeps them only at its two
ends: the source's tables are written with ``internal_ids`` of them, and a served endpoint hashes
a request's strings the same way and names its answers back (serving/runtime.py). Everything in
between (features, training, the gate) sees int64 ids, as with MovieLens.

The id is a function of the string alone, so the same user keeps one id across every refresh of
the data and at serving time, without a vocabulary to ship: a keyed SipHash (pandas' hash_array)
truncated to 63 bits, so ids stay non-negative (recflow pads answers with -1). Two strings of
one source that hash alike are refused when the source is read (tasks/custom.py).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# The external id next to its int64 id in user_ids.parquet and item_ids.parquet.
EXTERNAL_ID = "external_id"


# SipHash's 16-byte key; changing it changes every id, so it is part of the raw layout.
_HASH_KEY = "recflow-ids-v1.0"


def internal_ids(external) -> np.ndarray:
    """The int64 id of each string (or UTF-8 bytes, as Triton delivers them) in ``external``."""
    values = np.asarray(external, dtype=object).reshape(-1)
    if values.size and isinstance(values[0], bytes):
        values = np.array([value.decode("utf-8") for value in values], dtype=object)
    hashed = pd.util.hash_array(values, hash_key=_HASH_KEY, categorize=False)
    return (hashed >> np.uint64(1)).astype(np.int64)
