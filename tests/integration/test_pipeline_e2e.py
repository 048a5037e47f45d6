"""The walking skeleton end to end: flow -> Triton repository -> real server -> gRPC."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys

import numpy as np
import pandas as pd
import pytest

from flows.pipeline import pipeline
from flows.reporting import Keys
from models.predict import predict_frame
from models.ranking import load_model
from recflow.artifacts import FeatureSet
from recflow.config import RankingConfig
from recflow.registry import Registry
from recflow.vocabulary import RANKING
from recflow_client import RecflowClient, TritonRequestError
from serving.repository import EndpointNames
from serving.server import TritonServer
from tasks.features import ServingFeatures
from tests.support.prefect_server import latest_artifact
from tests.support.settings import small_settings

pytestmark = pytest.mark.integration

# Champion (the default architecture) and two challengers: trained in one run, judged on the
# same rows.
CHAMPION = RankingConfig().architecture
CHALLENGERS = tuple(name for name in ("mf", "mlp", "dlrm") if name != CHAMPION)[:2]


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory, prefect_harness):
    settings = small_settings(
        tmp_path_factory.mktemp("home"),
        "serving.grpc_port=0",
        "serving.http_port=0",
        "serving.metrics_port=0",
        f"ranking.challengers=[{','.join(CHALLENGERS)}]",
    )
    # What the run draws on stderr (its progress bars): kept for the tests, and shown again.
    drawn = io.StringIO()
    # The export log lines (serving.repository): how often each candidate was exported.
    exports = Recorder()
    logging.getLogger("serving.repository").addHandler(exports)
    try:
        with contextlib.redirect_stderr(drawn):
            result = pipeline(settings)
    finally:
        logging.getLogger("serving.repository").removeHandler(exports)
        sys.stderr.write(drawn.getvalue())
    return settings, result, drawn.getvalue(), exports.messages


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def server(pipeline_run):
    settings, *_ = pipeline_run
    with TritonServer.from_settings(settings) as running:
        yield running


@pytest.fixture
def client(server):
    with RecflowClient.from_config(server.config) as connected:
        yield connected


def test_planted_signal_is_learned_by_both_models(pipeline_run):
    _, result, *_ = pipeline_run
    # The gate's numbers: each model served from its export, on the held-out rows.
    assert result.metrics["ranking.auc"] >= 0.75
    assert result.metrics["ranking.auc"] > result.baseline_metrics["ranking.auc"]
    recall = result.metrics["retrieval.recall@10"]
    assert recall > result.baseline_metrics["retrieval.recall@10"]
    assert result.version == 1


def test_the_best_blessed_contender_is_published_and_every_judgement_recorded(pipeline_run):
    settings, result, *_ = pipeline_run
    registry = Registry.from_settings(settings)
    contest = registry.load(result.candidate).contest
    assert contest.contenders == (result.run_id, *(f"{result.run_id}-{a}" for a in CHALLENGERS))
    records = [registry.load(candidate) for candidate in contest.contenders]
    assert [r.ranking_architecture for r in records] == [CHAMPION, *CHALLENGERS]
    # Each judged by the gate, all on the same held-out rows, each filed with the same contest.
    assert all(r.contest == contest and r.decision.checks for r in records)
    assert len({r.evaluation.rows for r in records}) == 1
    assert len({r.evaluation.baseline_metrics["recommend.recall@10"] for r in records}) == 1
    blessed = [r for r in records if r.decision.blessed]
    best = max(blessed, key=lambda r: r.evaluation.metrics[contest.prefer])
    assert contest.chosen == best.id == result.candidate
    assert registry.state().serving == result.candidate
    assert result.metrics == best.evaluation.metrics
    # The models kept apart: each challenger its own directory next to the champion's.
    assert {r.models["ranking"].name for r in records} == {
        "ranking",
        *(f"ranking-{a}" for a in CHALLENGERS),
    }


def test_each_contender_is_exported_once_and_served_under_its_id(pipeline_run):
    """The gate exports every contender once; trial serving and publish install that export,
    whose every endpoint names the published candidate's registry id (#31)."""
    settings, result, _, exports = pipeline_run
    contenders = Registry.from_settings(settings).load(result.candidate).contest.contenders
    exported = [message.split()[2] for message in exports if message.startswith("exported ")]
    assert sorted(exported) == sorted(contenders)
    repo = settings.paths.triton_repo
    parameter = f'"recflow_candidate_v{result.version}" value {{ string_value: "{result.candidate}"'
    for model in EndpointNames(settings.serving.model_prefix).all_models:
        assert parameter in (repo / model / "config.pbtxt").read_text(), model


def test_the_dashboard_shows_the_contenders_side_by_side(pipeline_run):
    settings, result, *_ = pipeline_run
    chosen = Registry.from_settings(settings).load(result.candidate).ranking_architecture
    artifact = latest_artifact(Keys.CONTEST)
    assert result.candidate in artifact["description"]
    rows = json.loads(artifact["data"])  # table artifacts hold their rows as JSON
    columns = {name.removesuffix(" *") for name in rows[0]} - {"metric", "baseline", "blessed"}
    assert columns == {CHAMPION, *CHALLENGERS}
    assert f"{chosen} *" in rows[0]  # the one published, starred
    assert rows[-1]["metric"] == "gate" and rows[-1][f"{chosen} *"] == "BLESSED"
    assert (settings.paths.runs_dir / result.run_id / "contest.png").is_file()


def test_trial_serving_drew_one_bar_over_its_model_loads(pipeline_run):
    _, _, drawn, _ = pipeline_run
    # stderr is no terminal here: rich printed the bar once, in its final state.
    bars = [
        line
        for line in drawn.splitlines()
        if line.startswith("trial serving ") and (": loading" in line or ": models loaded" in line)
    ]
    assert len(bars) == 1, drawn[-3000:]
    assert ": models loaded" in bars[0] and "4/4" in bars[0], bars


def test_served_scores_equal_in_process_scores(pipeline_run, client):
    settings, result, *_ = pipeline_run
    rows = pd.read_parquet(result.raw.interactions).sample(300, random_state=0)
    # Include ids the model never saw: they must be scored (as cold), not rejected.
    rows = pd.concat([rows, pd.DataFrame({"user_id": [10**9], "item_id": [10**9 + 1]})])

    stage = ServingFeatures(FeatureSet.load(result.features))
    features = stage.transform(rows["user_id"].to_numpy(), rows["item_id"].to_numpy())
    published = Registry.from_settings(settings).load(result.candidate)
    model = load_model(published.models[RANKING] / "model")
    expected = predict_frame(model, features, stage.output_schema)

    served = client.infer(
        client.ranking_model,
        {
            "user_id": rows["user_id"].to_numpy(np.int64).reshape(-1, 1),
            "item_id": rows["item_id"].to_numpy(np.int64).reshape(-1, 1),
        },
        ["score"],
    )["score"].reshape(-1)
    assert served.shape == expected.shape
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-5)
    assert np.isfinite(served).all()


def test_bad_requests_get_triton_errors_and_server_keeps_serving(client):
    good = {"user_id": np.array([[1]], np.int64), "item_id": np.array([[2]], np.int64)}
    with pytest.raises(TritonRequestError, match="item_id"):
        client.infer(client.ranking_model, {"user_id": good["user_id"]}, ["score"])
    with pytest.raises(TritonRequestError, match="(?i)data.?type|dtype|FP32"):
        client.infer(
            client.ranking_model,
            {"user_id": good["user_id"].astype(np.float32), "item_id": good["item_id"]},
            ["score"],
        )
    assert client.server_ready()
    score = client.infer(client.ranking_model, good, ["score"])["score"]
    assert score.shape == (1, 1) and 0.0 <= float(score[0, 0]) <= 1.0


def test_recommend_over_grpc_returns_unseen_top_k(pipeline_run, client):
    _, result, *_ = pipeline_run
    inter = pd.read_parquet(result.raw.interactions)
    user = int(inter["user_id"].iloc[0])
    seen = set(inter.loc[inter["user_id"] == user, "item_id"])
    top = client.recommend(user, k=10)  # the multi-stage endpoint: retrieval, then ranking
    assert len(top) == 10
    assert len({item for item, _ in top}) == 10
    assert not seen & {item for item, _ in top}
    scores = [score for _, score in top]
    assert scores == sorted(scores, reverse=True)
