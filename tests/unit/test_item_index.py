"""The approximate index of large catalogues (serving/item_index.py) as the stages use it: real
Faiss over a small version directory written here, against the same stages' exact search."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.item_item import ItemItemWeights
from models.metrics import top_k
from models.ordering import candidate_positions, gather
from recflow.artifacts import VersionConfig
from recflow.config import ServingConfig
from recflow.vocabulary import EMBEDDING, ITEM_ID, ITEM_IDS_OUTPUT, K_INPUT, RAW_ITEM_ID, USER_ID
from serving import runtime
from serving.item_index import ITEM_INDEX, ItemIndex, export_index

pytestmark = pytest.mark.unit

ITEMS, USERS, DIM = 2_000, 40, 16


def _unit_rows(rng: np.random.Generator, rows: int) -> np.ndarray:
    vectors = rng.normal(size=(rows, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture()
def version_dir(tmp_path):
    """A retrieval version of ITEMS items (raw ids 1000 + position), each user having seen
    about 150 of them; no index yet."""
    rng = np.random.default_rng(0)
    vectors = _unit_rows(rng, ITEMS)
    raw = np.arange(ITEMS, dtype=np.int64) + 1000
    pd.DataFrame(
        {RAW_ITEM_ID: raw, ITEM_ID: np.arange(ITEMS) + 3, EMBEDDING: list(vectors)}
    ).to_parquet(tmp_path / runtime.ITEM_EMBEDDINGS)
    users = np.arange(USERS, dtype=np.int64)
    np.savez(
        tmp_path / runtime.QUERIES,
        **{runtime.IDS: users, runtime.VECTORS: _unit_rows(rng, USERS + 1)},
    )
    seen = pd.DataFrame(
        {USER_ID: np.repeat(users, 150), ITEM_ID: rng.choice(raw, USERS * 150)}
    ).drop_duplicates()
    seen.to_parquet(tmp_path / runtime.SEEN, index=False)
    config = VersionConfig(max_k=ITEMS, retrieval_candidates=100)
    (tmp_path / runtime.VERSION_CONFIG).write_text(config.model_dump_json())
    return tmp_path


def _with_index(version_dir, probes, min_items=1):
    """The retrieval stage after the export's step: index written if ITEMS >= ``min_items``."""
    _, vectors = runtime.item_embeddings(version_dir)
    cfg = ServingConfig(ann_min_items=min_items, ann_probes=probes)
    written = export_index(vectors, cfg, version_dir / ITEM_INDEX)
    assert written == (ITEMS >= min_items) == (version_dir / ITEM_INDEX).is_file()
    return runtime.RetrievalStage(version_dir)


def test_below_the_switch_no_index_is_written_and_the_search_is_exact(version_dir):
    stage = _with_index(version_dir, probes=1, min_items=ITEMS + 1)
    assert stage.index is None and runtime.SimilarStage(version_dir).index is None
    users = np.arange(5, dtype=np.int64)
    _, scores = stage.top_k(users, 10, exclude_seen=False)
    assert np.array_equal(np.sort(stage.scores(users), axis=1)[:, ::-1][:, :10], scores)


def test_scanning_every_list_gives_the_exact_answers_without_the_seen_items(version_dir):
    exact, similar_exact = runtime.RetrievalStage(version_dir), runtime.SimilarStage(version_dir)
    users = np.arange(USERS, dtype=np.int64)
    expected, expected_scores = exact.top_k(users, 100, exclude_seen=True)
    # At the switch, and more probes than lists: every item is scanned, the index is exact.
    indexed = _with_index(version_dir, probes=10_000, min_items=ITEMS)
    assert indexed.index is not None
    ids, scores = indexed.top_k(users, 100, exclude_seen=True)
    assert np.array_equal(ids, expected)
    assert np.allclose(scores, expected_scores, atol=1e-5)
    similar = runtime.SimilarStage(version_dir)
    assert similar.index is not None
    request = {ITEM_ID: np.array([1000, 1500]), K_INPUT: np.array([20, 20])}
    assert np.array_equal(
        similar(request)[ITEM_IDS_OUTPUT], similar_exact(request)[ITEM_IDS_OUTPUT]
    )


def test_excluded_items_never_come_back_and_each_row_keeps_k(version_dir):
    stage = _with_index(version_dir, probes=1)  # one list of about 180 items per query
    users = np.arange(USERS, dtype=np.int64)
    seen = pd.read_parquet(version_dir / runtime.SEEN)
    ids, scores = stage.top_k(users, 300, exclude_seen=True)
    # The probed list cannot fill 300: those rows were searched exactly.
    assert (ids >= 0).all() and np.isfinite(scores).all()
    for user, row in zip(users, ids, strict=True):
        assert not set(row) & set(seen.loc[seen[USER_ID] == user, ITEM_ID])
        assert len(set(row)) == 300


def test_the_index_is_approximate_but_finds_most_of_the_exact_top_100(version_dir):
    exact = runtime.RetrievalStage(version_dir)
    users = np.arange(USERS, dtype=np.int64)
    expected, _ = exact.top_k(users, 100, exclude_seen=True)
    ids, _ = _with_index(version_dir, probes=16).top_k(users, 100, exclude_seen=True)
    recall = np.mean([len(set(a) & set(b)) / 100 for a, b in zip(ids, expected, strict=True)])
    # Random vectors are the hard case for an inverted-file index (no clusters): this pins
    # that the search is approximate but sound, not a quality level.
    assert 0.5 < recall < 1.0


def test_the_lists_are_capped_by_the_items_and_an_item_is_not_its_own_neighbour(tmp_path):
    vectors = _unit_rows(np.random.default_rng(1), 500)
    export_index(vectors, ServingConfig(ann_min_items=500, ann_probes=64), tmp_path / "i")
    index = ItemIndex(tmp_path / "i")
    assert index.index.nlist == 500 // 64 and index.index.nprobe == 500 // 64
    best, _ = index.top_k(vectors[:3], 5, (np.arange(3), np.arange(3)))
    assert best.shape == (3, 5) and not (best == np.arange(3)[:, None]).any()


def test_item_item_candidates_without_catalogue_matrices_equal_the_dense_ones(version_dir):
    """recommend's index path (ItemItemScores.candidates) against its exact path
    (models.ordering.candidate_positions over [users, catalogue] matrices)."""
    rng = np.random.default_rng(2)
    encoded = np.arange(ITEMS) + 3
    # Weights over 300 of the catalogue's items and 20 ids the catalogue does not hold.
    held = np.sort(
        np.concatenate([rng.choice(encoded, 300, replace=False), ITEMS + 10 + np.arange(20)])
    )
    dense = rng.normal(size=(len(held), len(held))).astype(np.float32)
    weights = ItemItemWeights.from_dense(held, dense, neighbours=50)
    stage = runtime.RetrievalStage(version_dir)
    item_item = runtime.ItemItemScores(version_dir, weights)
    users = np.arange(USERS, dtype=np.int64)
    interactions = stage.interactions(users)
    n = 30
    mask = stage.mask(USERS, interactions)
    full = item_item(USERS, interactions)
    expected = candidate_positions(stage.scores(users), full, n, mask)
    first, _ = top_k(stage.scores(users), n, mask)
    got, scores = item_item.candidates(interactions, first, n)
    assert np.array_equal(got, expected)
    assert np.allclose(scores, gather(full, expected))


def test_with_an_index_the_vectors_are_read_back_from_it_unchanged(version_dir):
    _, exported = runtime.item_embeddings(version_dir)
    _with_index(version_dir, probes=4)
    # Nor is the embeddings column read: a stage loads from the ids and the index alone.
    embeddings = version_dir / runtime.ITEM_EMBEDDINGS
    pd.read_parquet(embeddings).drop(columns=[EMBEDDING]).to_parquet(embeddings)
    stage = runtime.RetrievalStage(version_dir)
    assert np.array_equal(runtime.SimilarStage(version_dir).item_ids, np.arange(ITEMS) + 1000)
    # One copy: the stage keeps no matrix of its own beside the index's lists.
    assert stage.index is not None and stage.vectors._matrix is None
    positions = np.array([[0, 7, ITEMS - 1], [3, 3, 1]])
    assert np.array_equal(stage.vectors(positions), exported[positions])
    assert np.array_equal(stage.vectors(), exported)
    users = np.arange(5, dtype=np.int64)
    assert np.array_equal(stage.scores(users), stage.query(users) @ exported.T)
