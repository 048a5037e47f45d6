"""What trial serving asks the top-k endpoints (release.trial.probe_requests), without a server.

tests/integration/test_gate_registry.py and every pipeline test send these requests to a real
Triton and compare the answers with the same version directory in-process; here: that the
history path is among them, for a known user and for one the version never saw.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from recflow.vocabulary import (
    EXCLUDE_SEEN_INPUT,
    HISTORY_INPUT,
    ITEM_INPUT,
    K_INPUT,
    RECOMMEND,
    RETRIEVAL,
    SIMILAR,
    USER_INPUT,
)
from release.gate import COLD_ID
from release.trial import probe_requests

# The gate's sample: held-out pairs with their in-process scores, the cold pair last.
SAMPLE = pd.DataFrame(
    {
        USER_INPUT: [1, 1, 2, 3, COLD_ID],
        ITEM_INPUT: [10, 11, 12, 10, COLD_ID],
        "score": [0.5, 0.4, 0.3, 0.2, 0.1],
    }
)


def histories(probes) -> dict[str, list]:
    return {
        asked: request[HISTORY_INPUT].ravel().tolist()
        for asked, request in probes
        if HISTORY_INPUT in request
    }


def test_recommend_is_asked_with_and_without_a_history_known_and_cold_users_alike():
    probes = probe_requests(RECOMMEND, SAMPLE, n=3, k=5)
    asked = [name for name, _ in probes]
    # Two known users and the cold one, each without and then with a history.
    assert asked == ["user 1", "user 1", "user 2", "user 2", f"user {COLD_ID}", f"user {COLD_ID}"]
    # A known user sends their held-out items, the cold user the sample's first ones (a list
    # made from a history alone); each ends with an item the version does not know.
    assert histories(probes) == {
        "user 1": [10, 11, COLD_ID],
        "user 2": [12, COLD_ID],
        f"user {COLD_ID}": [10, 11, 12, COLD_ID],
    }
    for _, request in probes:
        assert request[USER_INPUT].shape == (1, 1) and request[K_INPUT].tolist() == [[5]]
        assert request.get(HISTORY_INPUT, np.zeros((1, 1))).shape[0] == 1


def test_retrieval_excludes_seen_items_and_reads_the_history_too():
    probes = probe_requests(RETRIEVAL, SAMPLE, n=2, k=5)
    assert all(request[EXCLUDE_SEEN_INPUT].tolist() == [[True]] for _, request in probes)
    assert set(histories(probes)) == {"user 1", f"user {COLD_ID}"}


def test_similar_is_asked_about_known_items_without_a_history():
    probes = probe_requests(SIMILAR, SAMPLE, n=4, k=5)
    assert [name for name, _ in probes] == ["item 10", "item 11", "item 12"]
    assert histories(probes) == {}


def test_string_ids_travel_as_utf8_in_one_history_row():
    sample = SAMPLE.assign(
        **{column: [str(v).encode() for v in SAMPLE[column]] for column in (USER_INPUT, ITEM_INPUT)}
    )
    history = histories(probe_requests(RECOMMEND, sample, n=1, k=5))
    assert history == {
        f"user {str(COLD_ID).encode()}": [b"10", b"11", b"12", str(COLD_ID).encode()]
    }
    request = dict(probe_requests(RECOMMEND, sample, n=1, k=5))[f"user {str(COLD_ID).encode()}"]
    assert request[HISTORY_INPUT].dtype == object and request[HISTORY_INPUT].shape == (1, 4)
