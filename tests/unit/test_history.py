"""A request's ``history`` as the retrieval and recommend stubs read it (serving/runtime.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recflow.external_ids import internal_ids
from recflow.vocabulary import HISTORY_INPUT, USER_ID
from serving.runtime import BadRequest, ExternalIdStage, RequestHistory

CATALOGUE = pd.Index(np.array([10, 20, 30, 40], dtype=np.int64))


def read(history, rows: int = 2, limit: int = 3) -> RequestHistory:
    return RequestHistory.read({HISTORY_INPUT: np.asarray(history)}, rows, limit, CATALOGUE)


def test_padding_is_dropped_and_unknown_ids_are_counted_per_row():
    history = read([[30, 99, 10], [40, -1, -1]])
    assert history.owners.tolist() == [0, 0, 1]
    assert history.positions.tolist() == [2, 0, 3]
    assert history.unknown.tolist() == [1, 0]


def test_no_history_and_an_all_padding_one_are_the_same():
    absent = RequestHistory.read({}, 2, 3, CATALOGUE)
    padded = read([[-1], [-1]])
    for got in (absent, padded):
        assert got.owners.size == got.positions.size == 0 and got.unknown.tolist() == [0, 0]


def test_the_limit_counts_items_not_padding():
    read([[10, 20, 30, -1, -1], [-1, -1, -1, -1, 40]])  # three and one: within 3
    with pytest.raises(BadRequest, match="at most 3"):
        read([[10, 20, 30, 40], [-1, -1, -1, -1]])


@pytest.mark.parametrize(
    "history",
    [np.array([10, 20]), np.array([[10], [20], [30]]), np.array([[1.5], [2.0]])],
    ids=["one-dimensional", "rows-differ-from-users", "floats"],
)
def test_malformed_histories_are_bad_requests(history):
    with pytest.raises(BadRequest, match="history"):
        read(history)


class _Echo:
    merge_requests = False

    def __call__(self, inputs):
        self.inputs = inputs
        return {}


def test_string_histories_are_hashed_like_ids_and_empty_strings_pad(tmp_path):
    echo = _Echo()
    stage = ExternalIdStage(echo, tmp_path)
    stage(
        {
            USER_ID: np.array([[b"u1"], [b"u2"]], dtype=object),
            HISTORY_INPUT: np.array([[b"sku 1", b""], [b"c-17", b"sku 1"]], dtype=object),
        }
    )
    got = echo.inputs[HISTORY_INPUT]
    sku, c17 = internal_ids([b"sku 1", b"c-17"])
    assert got.tolist() == [[sku, -1], [c17, sku]]
