"""Generated own data (tests/support/own_data.py) through the import: every drawn source is
imported or refused in one line naming its file or table, never a traceback, never half a
dataset (issue #32); and the shop export of the issue through import, features and training.
benchmarks/own_data_fuzz.py runs hundreds of drawn sources through all three."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings

from recflow.artifacts import FeatureSet, RawDataset
from recflow.config import OrderingConfig
from tests.support.own_data import (
    TINY_RETRIEVAL,
    Table,
    declared_sources,
    features_outcome,
    import_outcome,
    training_outcome,
    write_source,
)

pytestmark = pytest.mark.unit

# Ids beyond uint64 in a CSV: Arrow read them as floats, and 2**64 + 1 and 2**64 + 2 were one.
HUGE_CSV_IDS = {
    "interactions": Table(
        pd.DataFrame({"who": [2**64 + 1, 2**64 + 2, 2**64 + 1], "what": [1, 2, 2]}),
        "csv",
        {"user": "who", "item": "what", "timestamp": None},
    )
}
# The shop export of the issue: a list column named labels beside Categorify's own.
LABELS = {
    **HUGE_CSV_IDS,
    "items": Table(
        pd.DataFrame({"product": [1, 2], "labels": [["a", "b"], []], "year": [1999.0, None]}),
        "parquet",
        {"id": "product", "continuous": ["year"], "lists": ["labels"]},
    ),
}

# The issue's shop export, small: string customer and product ids, ISO times, stars 0.5-5, a
# products parquet with a title, a nullable year and a list column named labels. 7 customers
# each rate 8 of 9 products, the latest one held out (a 5 or a 2: both classes, new to them),
# so retrieval trains on 49 rows: batches of 8 end with one row. 9 products: fewer than the
# top 10 recommend's ordering is chosen by, and than retrieval's top 100.
CUSTOMERS, PRODUCTS, EACH = 7, 9, 8
RATED = [divmod(n, EACH) for n in range(CUSTOMERS * EACH)]  # (customer, their n-th rating)
SHOP = {
    "interactions": Table(
        pd.DataFrame(
            {
                "customer": [f"c-{c}" for c, _ in RATED],
                "product": [f"sku {(4 * c + k) % PRODUCTS}" for c, k in RATED],
                "when": [f"2024-03-{1 + k:02d}T10:00:00" for _, k in RATED],
                "stars": [
                    (5.0 if c % 2 else 2.0) if k == EACH - 1 else [0.5, 3.5, 4.0, 5.0][k % 4]
                    for c, k in RATED
                ],
            }
        ),
        "csv",
        {
            "user": "customer",
            "item": "product",
            "timestamp": "when",
            "rating": "stars",
            "rating_scale": (0.5, 5.0),
            "positive_threshold": 4.0,
        },
    ),
    "items": Table(
        pd.DataFrame(
            {
                "product": [f"sku {n}" for n in range(PRODUCTS)],
                "title": [f"Product {n}" for n in range(PRODUCTS)],
                "year": [None if n % 3 else 2000.0 + n for n in range(PRODUCTS)],
                "labels": [["red", "big"][: n % 3] for n in range(PRODUCTS)],
            }
        ),
        "parquet",
        {"id": "product", "categorical": ["title"], "continuous": ["year"], "lists": ["labels"]},
    ),
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables=declared_sources())
@example(tables=HUGE_CSV_IDS)
@example(tables=LABELS)
def test_a_drawn_source_is_imported_or_refused_in_one_line(tables):
    with tempfile.TemporaryDirectory() as directory:
        custom = write_source(tables, Path(directory) / "export")
        import_outcome(custom, Path(directory) / "home")


def test_ids_beyond_int64_stay_distinct_as_string_ids(tmp_path):
    dataset = import_outcome(write_source(HUGE_CSV_IDS, tmp_path / "export"), tmp_path / "home")
    assert isinstance(dataset, RawDataset)
    assert dataset.external_ids and dataset.n_users == 2


def test_the_shop_export_of_the_issue_builds_features_and_trains(tmp_path):
    """Import, features, then the ranker, the two-tower retriever and recommend's ordering, as
    train-models runs them. Retrieval failed on its last batch of one row (a ConcatOp error
    from inside TensorFlow), and retrieval and the ordering on a catalogue smaller than their
    top k ('ranked lists hold 9 items, fewer than k=100') (#32)."""
    raw = import_outcome(write_source(SHOP, tmp_path / "export"), tmp_path / "home")
    assert isinstance(raw, RawDataset), raw
    features = features_outcome(raw, tmp_path / "features")
    assert isinstance(features, FeatureSet), features
    assert features.n_train % TINY_RETRIEVAL.batch_size == 1
    assert raw.n_items < 10 == int(OrderingConfig().monitor.partition("@")[2])
    candidate = training_outcome(features, tmp_path / "models")
    assert candidate.retrieval.n_items == PRODUCTS
