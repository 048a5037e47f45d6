import merlin.models.tf as mm
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from merlin.schema import ColumnSchema, Schema, Tags

from models.baselines import item_mean_scores, popularity_scores
from models.evaluation import RetrievalTask, evaluate_retrieval
from models.predict import predict_rows
from models.retrieval import (
    QueryEncoder,
    build_retriever,
    interaction_factors,
    start_from_interactions,
)
from models.training import save_model
from recflow.config import RetrievalConfig
from recflow.vocabulary import EMBEDDING, RAW_ITEM_ID
from tests.support.retrieval import ExactRetriever

USER, ITEM = "user_id", "item_id"


def frame(pairs):
    return pd.DataFrame(pairs, columns=[USER, ITEM])


def test_task_excludes_training_items_and_users_without_relevant_items():
    train = frame([(1, 10), (1, 11), (2, 10)])
    # User 1's only new positive is item 12; user 2's positive was seen in training; item 99 is
    # not in the catalogue.
    valid = frame([(1, 12), (1, 10), (2, 10), (3, 99), (3, 11)])
    task = RetrievalTask.build(train, valid, np.array([12, 10, 11, 13]), USER, ITEM)
    assert task.candidates.tolist() == [10, 11, 12, 13]
    assert task.users.tolist() == [1, 3]
    assert [r.tolist() for r in task.relevant] == [[2], [1]]
    assert [sorted(s.tolist()) for s in task.seen] == [[0, 1], []]
    assert task.seen_mask(slice(0, 2)).tolist() == [[True, True, False, False], [False] * 4]


def test_evaluation_never_recommends_seen_items_and_scores_the_baseline():
    train = frame([(1, 10), (2, 10), (2, 11), (3, 11)])
    valid = frame([(1, 11), (2, 12), (3, 13)])
    task = RetrievalTask.build(train, valid, np.array([10, 11, 12, 13]), USER, ITEM)
    popular = popularity_scores(train[ITEM].to_numpy(), task.candidates)
    assert popular.tolist() == [2, 2, 0, 0]
    metrics = evaluate_retrieval(task, lambda rows: np.tile(popular, (3, 1))[rows], ks=(1,))
    # Seen items are skipped: user 1 gets 11 (a hit), user 2 gets 12 (a hit), user 3 gets 10.
    assert metrics == pytest.approx({"recall@1": 2 / 3, "ndcg@1": 2 / 3, "mrr@1": 2 / 3})


def test_a_catalogue_smaller_than_k_is_ranked_whole():
    """A shop of 3 items with retrieval.top_k up to 100 (the default): training failed after
    its first epoch with 'ranked lists hold 3 items, fewer than k=100' (#32)."""
    train = frame([(1, 10), (2, 11)])
    valid = frame([(1, 12), (2, 10)])
    task = RetrievalTask.build(train, valid, np.array([10, 11, 12]), USER, ITEM)
    scores = np.array([[0.0, 0.2, 0.1], [0.3, 0.0, 0.1]])
    metrics = evaluate_retrieval(task, lambda rows: scores[rows], ks=(1, 100))
    # User 1 gets 11 then 12 (10 was theirs); user 2 gets 10, a hit.
    assert metrics["recall@1"] == 0.5 and metrics["recall@100"] == 1.0
    assert metrics["mrr@100"] == pytest.approx((1 / 2 + 1) / 2)


@pytest.mark.parametrize(
    ("rows", "sizes"), [(17, [8, 8]), (18, [8, 8, 2]), (16, [8, 8]), (1, [1]), (3, [3])]
)
def test_retrieval_batches_leave_out_a_last_batch_of_one_row(rows, sizes):
    """Merlin's contrastive output and log-q correction fail on a batch of one row (a ConcatOp
    error from inside TensorFlow): with rows % batch_size == 1 two-tower training ended every
    epoch on one (#32). Keras must still know the number of batches."""
    import tensorflow as tf

    from models.training import SplitTensors

    split = SplitTensors({USER: tf.range(rows, dtype=tf.int64)}, None, rows)
    batches = split.batches(8, shuffle=True, min_rows=2)
    assert [len(batch[USER]) for batch in batches] == sizes
    assert int(batches.cardinality()) == len(sizes)
    # tf.data's autotuner held each epoch's end until its next wake-up, up to 8 s of a 12 s
    # two-tower epoch at ml-1m (benchmarks/results/epoch_gap.md).
    assert batches.options().autotune.enabled is False


def test_item_mean_baseline_is_smoothed_towards_the_global_rate():
    train = pd.DataFrame({ITEM: [1] * 10 + [2], "y": [1] * 10 + [0]})
    rows = pd.DataFrame({ITEM: [1, 2, 3]})
    scores = item_mean_scores(train, rows, ITEM, "y")
    prior = 10 / 11
    assert scores[0] == pytest.approx((10 + 10 * prior) / 20)
    assert scores[1] == pytest.approx((0 + 10 * prior) / 11)
    assert scores[2] == pytest.approx(prior)


def test_retriever_returns_raw_ids_best_first_without_excluded_items():
    schema = Schema(
        [ColumnSchema(USER, dtype=np.int64, tags=[Tags.USER_ID, Tags.USER, Tags.CATEGORICAL])]
    )
    vectors = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
    items = pd.DataFrame(
        {RAW_ITEM_ID: [100, 200, 300, 400], ITEM: [3, 4, 5, 6], EMBEDDING: list(vectors)}
    )

    def encoder(inputs, training=False):
        # User u's query is item u's vector (in TensorFlow: predict_rows traces the encoder).
        return tf.gather(vectors, inputs[USER])

    retriever = ExactRetriever(QueryEncoder(encoder, schema), items)
    ids, scores = retriever.top_k(pd.DataFrame({USER: [0, 2]}), k=3, exclude=[{100}, {999}])
    assert ids.tolist() == [[200, 300, 400], [300, 200, 100]]
    np.testing.assert_allclose(scores[1], [1.0, 0.6, 0.0], atol=1e-6)
    ids, scores = retriever.top_k(pd.DataFrame({USER: [0]}), k=4, exclude=[{100, 200}])
    assert ids.tolist() == [[300, 400, -1, -1]] and np.isneginf(scores[0, 2:]).all()


def test_predict_rows_traces_the_model_once_for_batches_of_every_length():
    """Each batch of another length (the last one, list columns' values) used to trace the
    model's call again: 184 traces, 12 of the 79 s of choosing ml-1m's ordering."""
    schema = Schema(
        [
            ColumnSchema(USER, dtype=np.int64, tags=[Tags.USER_ID, Tags.USER, Tags.CATEGORICAL]),
            ColumnSchema(
                "genres",
                dtype=np.int64,
                tags=[Tags.USER, Tags.CATEGORICAL],
                dims=(None, None),
            ),
        ]
    )
    traces = []

    def model(inputs, training=False):
        traces.append(1)  # Python runs only while TensorFlow traces
        counts = tf.cast(inputs["genres__offsets"][1:] - inputs["genres__offsets"][:-1], tf.int64)
        return inputs[USER] * 10 + counts

    rows = pd.DataFrame({USER: np.arange(7), "genres": [[1] * (i % 3) for i in range(7)]})
    scores = predict_rows(model, rows, schema, batch_size=3)
    assert scores.tolist() == [10 * i + i % 3 for i in range(7)]
    assert len(traces) == 1


class ConfiglessTower(tf.keras.Model):
    """A tower Keras cannot rebuild from a config (it has none): only its traces revive it."""

    def __init__(self):
        super().__init__()
        self.table = tf.keras.layers.Embedding(4, 2)

    def call(self, inputs, training=False):
        return self.table(inputs[USER]) * 2.0


def test_a_model_that_does_not_rebuild_from_its_configs_is_saved_with_traces(tmp_path, caplog):
    schema = Schema(
        [ColumnSchema(USER, dtype=np.int64, tags=[Tags.USER_ID, Tags.USER, Tags.CATEGORICAL])]
    )
    rows = pd.DataFrame({USER: [0, 1, 2, 3]})
    tower = ConfiglessTower()
    trained = predict_rows(tower, rows, schema)
    save_model(tower, tmp_path / "query_encoder", lambda model: predict_rows(model, rows, schema))
    assert "saving it with traces" in caplog.text
    reloaded = tf.keras.models.load_model(str(tmp_path / "query_encoder"))
    np.testing.assert_array_equal(predict_rows(reloaded, rows, schema), trained)


def test_interaction_factors_reproduce_a_low_rank_matrix_of_pairs_counted_once():
    # Users 0-2 pick items 0-2, users 3-4 items 3-5 (user 0 twice the same item): rank 2.
    # User 5 and item 6 have no pairs.
    blocks = [(u, i) for u in range(3) for i in range(3)] + [(0, 0)]
    blocks += [(u, i) for u in range(3, 5) for i in range(3, 6)]
    users, items = np.array(blocks).T
    picks = np.zeros((6, 7))
    picks[users, items] = 1.0
    user_factors, item_factors = interaction_factors(users, items, (6, 7), dim=2, seed=0)
    np.testing.assert_allclose(user_factors @ item_factors.T, picks, atol=1e-9)
    assert not user_factors[5].any() and not item_factors[6].any()
    again = interaction_factors(users, items, (6, 7), dim=2, seed=0)
    np.testing.assert_array_equal(again[0], user_factors)
    # Fewer components than asked where a side is smaller: 4 users give 3.
    assert interaction_factors(users % 4, items, (4, 7), dim=8, seed=0)[0].shape == (4, 3)


def test_the_id_tables_start_from_the_factors_at_the_initialisers_size():
    def column(name, tags, max_id):
        return ColumnSchema(
            name,
            dtype=np.int64,
            tags=[*tags, Tags.CATEGORICAL],
            properties={"domain": {"min": 0, "max": max_id}},
        )

    schema = Schema(
        [column(USER, [Tags.USER_ID, Tags.USER], 39), column(ITEM, [Tags.ITEM_ID, Tags.ITEM], 49)]
    )
    model = build_retriever(
        schema, RetrievalConfig(architecture="mf", embedding_dim=8, logq_correction=False)
    )
    model({USER: tf.constant([0, 1]), ITEM: tf.constant([0, 1])}, training=False)
    tables = {
        layer.col_schema.name: layer.table.embeddings
        for layer in model.submodules
        if isinstance(layer, mm.EmbeddingTable)
    }
    random_size = {name: np.sqrt(np.mean(table.numpy() ** 2)) for name, table in tables.items()}
    # Four groups of ten users, each picking its own ten items; items 40-49 have no pairs.
    pairs = pd.DataFrame({USER: np.repeat(np.arange(40), 10)})
    pairs[ITEM] = pairs[USER] // 10 * 10 + np.tile(np.arange(10), 40)
    start_from_interactions(model, pairs, USER, ITEM, seed=0)

    users, items = tables[USER].numpy(), tables[ITEM].numpy()
    for name, values in ((USER, users), (ITEM, items)):
        assert np.sqrt(np.mean(values**2)) == pytest.approx(random_size[name], rel=1e-5)
    # Every user's id embedding now scores its group's items above all others.
    scores = users @ items.T
    same_group = np.arange(40)[:, None] // 10 == np.arange(50)[None, :] // 10
    assert scores[same_group].min() > scores[~same_group].max() + 1e-3
