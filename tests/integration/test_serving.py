"""The exported endpoints on a real tritonserver over gRPC: equality with in-process results,
bad input, and a hot swap under a steady stream of requests (no mocks). The HTTP client answers
as the gRPC one does, from the same server."""

from __future__ import annotations

import json
import threading
import time

import grpc
import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as grpcclient
import typer
from typer.testing import CliRunner

from cli.serve import register
from models.predict import predict_frame
from models.ranking import load_model
from recflow_client import HttpRecflowClient, RecflowClient, TritonRequestError
from serving.export import ExportMismatch, check_equivalence, held_out_rows
from serving.repository import EndpointNames
from serving.runtime import HEAVY_MODULES, RANKER, RankingPipeline, RecommendStage
from serving.server import TritonServer
from tasks.features import ServingFeatures
from tests.support.published import CANDIDATE, Published
from tests.support.retrieval import ExactRetriever

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

COLD_USER = 10**9


@pytest.fixture(scope="module")
def users(published: Published) -> np.ndarray:
    inter = pd.read_parquet(published.raw.interactions)
    return inter["user_id"].drop_duplicates().sample(20, random_state=0).to_numpy(np.int64)


def test_every_endpoint_is_served(server: TritonServer, endpoint: EndpointNames) -> None:
    assert all(server.is_model_ready(name) for name in endpoint.all_models)


def test_each_served_config_names_the_candidate_of_its_versions(
    server: TritonServer, endpoint: EndpointNames, published: Published
) -> None:
    """What an app reads to log which model answered (README, "Calling it from an app")."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        for name in endpoint.all_models:
            version = published.newest_version_dir(name).name
            parameters = client.get_model_config(name).config.parameters
            candidate = parameters[f"recflow_candidate_v{version}"].string_value
            assert candidate == CANDIDATE, name
    finally:
        client.close()


def test_stubs_import_nothing_heavy(server: TritonServer, endpoint: EndpointNames) -> None:
    # Each stub logs the HEAVY_MODULES it has imported once its version is initialized.
    lines = [line for line in server.log_tail(10_000).splitlines() if "recflow stub" in line]
    for name in endpoint.all_models:
        logged = [line for line in lines if f"recflow stub {name} version" in line]
        assert logged and all(line.endswith("heavy modules: []") for line in logged), lines
    assert HEAVY_MODULES == ("tensorflow", "merlin", "nvtabular", "prefect", "dask")


def test_onnx_ranker_scores_like_keras_and_a_different_model_is_refused(
    published: Published, endpoint: EndpointNames
) -> None:
    onnx = published.newest_version_dir(endpoint.model("ranking")) / RANKER
    rows = held_out_rows(published.features)
    schema = ServingFeatures(published.features).output_schema
    model = load_model(published.ranking.model_dir)
    assert check_equivalence(model, onnx, rows, schema).max_abs_diff <= 1e-5
    # The same model with its weights moved a little: the export guard must see the difference.
    model.set_weights([weights + 0.01 for weights in model.get_weights()])
    with pytest.raises(ExportMismatch, match="not published"):
        check_equivalence(model, onnx, rows, schema)


def test_served_ranking_scores_equal_in_process_scores(
    published: Published, client: RecflowClient, endpoint: EndpointNames
) -> None:
    rows = pd.read_parquet(published.raw.interactions).sample(200, random_state=1)
    users = np.append(rows["user_id"].to_numpy(np.int64), [COLD_USER, 1])
    items = np.append(rows["item_id"].to_numpy(np.int64), [1, COLD_USER])
    features = ServingFeatures(published.features)
    expected = predict_frame(
        load_model(published.ranking.model_dir),
        features.transform(users, items),
        features.output_schema,
    )

    served = client.infer(
        client.ranking_model,
        {"user_id": users.reshape(-1, 1), "item_id": items.reshape(-1, 1)},
        ["score"],
    )["score"].reshape(-1)

    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-5)


def test_retrieval_equals_exact_top_k_in_process(
    published: Published, client: RecflowClient, endpoint: EndpointNames, users: np.ndarray
) -> None:
    k = 15
    user_rows = ServingFeatures(published.features).transform(users, np.zeros_like(users))
    retriever = ExactRetriever.load(published.retrieval)
    seen = [published.seen(int(user)) for user in users]
    for exclude_seen in (False, True):
        ids, scores = retriever.top_k(user_rows, k, seen if exclude_seen else None)
        for row, user in enumerate(users):
            served = client.retrieve(int(user), k, exclude_seen=exclude_seen)
            # A user who has seen all but a few items gets fewer than k; the client drops the
            # -1 padding that ExactRetriever.top_k keeps.
            found = ids[row] >= 0
            assert [item for item, _ in served] == ids[row][found].tolist()
            np.testing.assert_allclose([s for _, s in served], scores[row][found], atol=1e-5)
            if exclude_seen:
                assert not seen[row] & {item for item, _ in served}


def test_recommend_orders_unseen_candidates_by_the_exported_policy(
    published: Published, client: RecflowClient, endpoint: EndpointNames, users: np.ndarray
) -> None:
    stage = RecommendStage(published.newest_version_dir(endpoint.model("recommend")))
    assert stage.item_item is not None and stage.ordering.item_item_weight > 0
    # The same version without its item-item source: retrieval's candidates, two scores.
    two_scores = RecommendStage(published.newest_version_dir(endpoint.model("recommend")))
    two_scores.item_item = None
    two_scores.ordering = stage.ordering.model_copy(update={"item_item_weight": 0.0})
    n = published.settings.serving.retrieval_candidates
    differs = 0
    for user in users[:5]:
        top = client.recommend(int(user), k=10)
        items = [item for item, _ in top]
        scores = [score for _, score in top]
        assert len(items) == len(set(items)) == 10
        assert not published.seen(int(user)) & set(items)
        assert scores == sorted(scores, reverse=True)
        # The list is the exported policy applied to the candidates of both sources, as the
        # stage computes it in-process (what the gate judged).
        expected, expected_scores = stage.recommend(np.array([user], np.int64), 10)
        assert items == expected[0].tolist()
        np.testing.assert_allclose(scores, expected_scores[0], atol=1e-5)
        # Its ranker scores are the ranking endpoint's, and its retrieval candidates the
        # retrieval endpoint's unseen top n.
        retrieved = dict(client.retrieve(int(user), n, exclude_seen=True))
        ranked = client.score(int(user), items)
        candidates = stage.retrieval.top_k(np.array([user], np.int64), n, exclude_seen=True)[0]
        assert set(retrieved) == set(candidates[0].tolist())
        np.testing.assert_allclose(
            ranked, stage.ranking.scores(np.full(10, user), np.array(items)), atol=1e-5
        )
        differs += items != two_scores.recommend(np.array([user], np.int64), 10)[0][0].tolist()
    # The item-item source changes what is served.
    assert differs


def test_recommend_for_many_users_at_once_equals_one_at_a_time(
    client: RecflowClient, endpoint: EndpointNames, users: np.ndarray
) -> None:
    rows = np.append(users, COLD_USER)
    batch = client.infer(
        endpoint.model("recommend"),
        {"user_id": rows.reshape(-1, 1), "k": _k(10, len(rows))},
        ["item_ids", "scores"],
    )
    for row, user in enumerate(rows):
        alone = client.recommend(int(user), k=10)  # without the -1 padding
        found = batch["item_ids"][row] >= 0
        assert set(batch["item_ids"][row][found].tolist()) == {item for item, _ in alone}
        np.testing.assert_allclose(batch["scores"][row][found], [s for _, s in alone], atol=1e-5)


def test_a_user_with_no_unseen_candidates_gets_an_empty_list(
    published: Published, client: RecflowClient, endpoint: EndpointNames
) -> None:
    stage = RankingPipeline(published.settings.paths.triton_repo / endpoint.model("ranking") / "1")
    none = np.empty(0, np.int64)
    assert stage.scores(none, none).shape == (0,)
    catalog = set(pd.read_parquet(published.retrieval.item_embeddings)["raw_item_id"])
    seen = pd.read_parquet(published.raw.interactions).groupby("user_id")["item_id"].agg(set)
    user = max(seen.index, key=lambda u: len(seen[u] & catalog))
    left = catalog - seen[user]
    assert {item for item, _ in client.recommend(int(user), k=10)} <= left
    assert len(client.recommend(int(user), k=10)) == min(10, len(left))


def test_similar_items_exclude_the_item_itself(client: RecflowClient) -> None:
    top = client.similar(1, 5)
    assert len(top) == 5 and 1 not in {item for item, _ in top}
    assert [s for _, s in top] == sorted((s for _, s in top), reverse=True)


def test_cold_user_gets_recommendations(client: RecflowClient) -> None:
    assert len(client.recommend(COLD_USER, k=5)) == 5
    assert len(client.retrieve(COLD_USER, 5)) == 5


def test_a_history_makes_a_new_users_list_and_is_left_out_of_it(
    published: Published,
    client: RecflowClient,
    endpoint: EndpointNames,
    server: TritonServer,
    users: np.ndarray,
) -> None:
    # A user the model never saw, who has done what a known user did.
    history = sorted(published.seen(int(users[0])))[:20]
    cold = client.recommend(COLD_USER, k=10)
    told = client.recommend(COLD_USER, k=10, history=history)
    assert told != cold and not set(history) & {item for item, _ in told}
    # As the stage computes it in-process, duplicates and unknown ids change nothing.
    stage = RecommendStage(published.newest_version_dir(endpoint.model("recommend")))
    request = np.array([[*history, history[0], COLD_USER]], np.int64)
    answer = client.infer(
        endpoint.model("recommend"),
        {"user_id": _ids(COLD_USER), "k": _k(10), "history": request},
        ["item_ids", "scores", "history_unknown"],
    )
    read = stage.retrieval.history({"history": request}, 1)
    expected, _ = stage.recommend(np.array([COLD_USER]), 10, read)
    assert answer["item_ids"][0].tolist() == expected[0].tolist() == [i for i, _ in told]
    assert answer["history_unknown"].tolist() == [[1]]
    # An empty history is none; retrieval leaves the history out; HTTP says the same.
    assert client.recommend(COLD_USER, k=10, history=[]) == cold
    retrieved = client.retrieve(COLD_USER, 30, history=history)
    assert not set(history) & {item for item, _ in retrieved}
    with HttpRecflowClient.from_config(server.config) as over_http:
        assert over_http.recommend(COLD_USER, k=10, history=history) == told
    # The CLI sends it too, integer ids written as the dataset has them.
    cli = typer.Typer()
    register(cli)
    settings = published.settings.model_copy(update={"serving": server.config})
    printed = CliRunner().invoke(
        cli,
        ["recommend", "--user", str(COLD_USER), "-k", "10", "--json"]
        + ["--history", ",".join(map(str, history))],
        obj=settings,
    )
    assert printed.exit_code == 0, printed.output
    assert [row["item_id"] for row in json.loads(printed.output)] == [i for i, _ in told]


def test_http_client_answers_every_endpoint_as_grpc_does(
    server: TritonServer, client: RecflowClient, users: np.ndarray
) -> None:
    user, other = (int(u) for u in users[:2])
    with HttpRecflowClient.from_config(server.config) as over_http:
        assert over_http.server_ready() and over_http.model_ready(over_http.recommend_model)
        top = over_http.recommend(user, k=5)
        assert len(top) == 5 and top == client.recommend(user, k=5)
        assert over_http.recommend(COLD_USER, k=3) == client.recommend(COLD_USER, k=3)
        assert over_http.retrieve(other, 7, exclude_seen=True) == client.retrieve(
            other, 7, exclude_seen=True
        )
        assert over_http.similar(1, 4) == client.similar(1, 4)
        items = [item for item, _ in top]
        np.testing.assert_array_equal(over_http.score(user, items), client.score(user, items))
        ranked = over_http.recommend(user, 3, candidates=items, exclude=items[:1])
        assert ranked == client.recommend(user, 3, candidates=items, exclude=items[:1])
        with pytest.raises(TritonRequestError) as refused:
            over_http.similar(1, 0)  # k outside 1..max_k
    assert refused.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.http_status == 400


def _ids(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64).reshape(-1, 1)


def _k(value: int, rows: int = 1) -> np.ndarray:
    return np.full((rows, 1), value, dtype=np.int32)


BAD_REQUESTS = {
    "missing-input": ("ranking", {"user_id": _ids(1)}, "item_id"),
    "wrong-dtype": (
        "ranking",
        {"user_id": _ids(1).astype(np.float32), "item_id": _ids(1)},
        "FP32",
    ),
    "wrong-shape": ("ranking", {"user_id": _ids(1, 2).reshape(1, 2), "item_id": _ids(1)}, "shape"),
    "empty-batch": ("ranking", {"user_id": _ids()[:0], "item_id": _ids()[:0]}, ""),
    "k-zero": ("recommend", {"user_id": _ids(1), "k": _k(0)}, "k must be between"),
    "k-absurd": ("retrieval", {"user_id": _ids(1), "k": _k(10**9)}, "k must be between"),
    "k-mixed": ("retrieval", {"user_id": _ids(1, 2), "k": np.array([[1], [2]], np.int32)}, "equal"),
    "unknown-similar-item": ("similar", {"item_id": _ids(COLD_USER), "k": _k(3)}, "unknown item"),
    "history-too-long": (
        "recommend",
        {"user_id": _ids(1), "k": _k(3), "history": np.ones((1, 201), np.int64)},
        "at most 200 items",
    ),
    "history-wrong-dtype": (
        "retrieval",
        {"user_id": _ids(1), "k": _k(3), "history": np.ones((1, 2), np.float32)},
        "FP32",
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS), ids=list(BAD_REQUESTS))
def test_bad_input_gets_a_clear_error_and_the_server_keeps_serving(
    client: RecflowClient, endpoint: EndpointNames, case: str
) -> None:
    stage, inputs, message = BAD_REQUESTS[case]
    outputs = ["score"] if stage == "ranking" else ["item_ids", "scores"]
    with pytest.raises(TritonRequestError) as caught:
        client.infer(endpoint.model(stage), inputs, outputs)
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert message in caught.value.message
    assert len(client.recommend(1, k=3)) == 3


def test_k_beyond_the_catalog_returns_the_whole_catalog(
    published: Published, client: RecflowClient
) -> None:
    catalog = len(pd.read_parquet(published.retrieval.item_embeddings))
    assert len(client.retrieve(1, published.settings.serving.max_k)) == catalog


def test_hot_swap_under_steady_requests_loses_none(
    published: Published, server: TritonServer, endpoint: EndpointNames
) -> None:
    stop = threading.Event()
    answered: list[int] = []
    failures: list[str] = []

    def stream(model: str) -> None:
        with RecflowClient.from_config(server.config, retries=0) as client:
            while not stop.is_set():
                try:
                    if model == "ranking":
                        client.score(1, list(range(1, 101)))
                    else:
                        client.recommend(1, k=10)
                    answered.append(1)
                except TritonRequestError as error:
                    failures.append(str(error))

    names = (endpoint.model("ranking"), endpoint.model("recommend"))
    threads = [threading.Thread(target=stream, args=(stage,)) for stage in ("ranking", "recommend")]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)
        before = len(answered)
        version = published.export()
        loaders = [threading.Thread(target=server.load, args=(name,)) for name in names]
        for loader in loaders:
            loader.start()
        for loader in loaders:
            loader.join()
        during = len(answered) - before
        time.sleep(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join()

    assert failures == []
    assert during > 0 and len(answered) > before + during
    with grpcclient.InferenceServerClient(server.grpc_url) as admin:
        for name in names:
            assert admin.is_model_ready(name, str(version))
            assert admin.is_model_ready(name, str(version - 1))  # keep_versions = 2
