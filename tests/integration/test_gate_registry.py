"""Gate, trial serving and registry end to end, with real models, exports and Triton.

One module-scoped story on small synthetic data, two trainings and three server starts:

1. a good model, first of its kind: blessed on absolute bounds, trial-served, published (v1);
2. a deliberately worse model (a DLRM of one epoch, 2-dim embeddings): NOT_BLESSED by the
   change bound against the re-scored blessed model, nothing published; the same models with
   recommend ordered by that ranker alone: NOT_BLESSED because the lists lose to most popular,
   even with the ranking bounds switched off;
3. a blessed candidate whose exported model file is corrupted before trial serving: blocked;
4. a blessed candidate published as v2, then `recflow models rollback`: the first model is
   served again as v3, and a real Triton answers with its scores;
5. a run whose challenger wins: published as v4 under the challenger's own registry id.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from models import baselines
from recflow.artifacts import (
    Candidate,
    ItemItemSource,
    OrderingPolicy,
    RankingModel,
    RetrievalModel,
)
from recflow.registry import Registry, RegistryError
from recflow.vocabulary import ITEM_ITEM, RANKING, RETRIEVAL
from recflow_client import RecflowClient
from release.gate import GateFailed, gate
from release.publish import publish
from release.trial import TrialServingFailed, infra_validate
from serving.repository import EndpointNames
from serving.runtime import RANKER, RecommendStage
from serving.server import TritonServer
from tasks.download import fetch_dataset
from tasks.features import build_features
from tasks.train import (
    choose_recommend_ordering,
    fit_item_item,
    train_ranking,
    train_retrieval,
)
from tests.support.cli import cli_for
from tests.support.retrieval import record_judged_users
from tests.support.settings import small_settings

pytestmark = pytest.mark.integration

FIRST, WORSE, CORRUPT, SECOND, RANKER_ALONE, WINNER, SAMPLED = (
    "20250101T000000Z-111111",
    "20250102T000000Z-222222",
    "20250103T000000Z-333333",
    "20250104T000000Z-444444",
    "20250105T000000Z-555555",
    "20250106T000000Z-666666",
    "20250107T000000Z-777777",
)
SERVING = [
    "serving.grpc_port=0",
    "serving.http_port=0",
    "serving.metrics_port=0",
    # The machine running the suite may be shared; start-up must not time out for that.
    "serving.startup_timeout_s=900",
]
WORSE_MODEL = [
    "ranking.architecture=dlrm",
    "ranking.epochs=1",
    "ranking.embedding_dim=2",
    "ranking.bottom_mlp=[8,2]",
]
# A gate an operator loosened: no comparison with the blessed model or the baseline.
LOOSE_GATE = [
    "gate.ranking.auc.min_change=null",
    "gate.ranking.auc.min_baseline_gain=null",
    "gate.ranking.logloss.min_relative_change=null",
]
# ... and for the worse ranker's own lists too: blended with the first candidate's retrieval as
# validation chose, they may trail the first candidate's, whose ranker adds to them (#15).
WORSE_ADMITTED = [*LOOSE_GATE, "gate.recommend.recall@10.min_change=null"]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("registry-home")


def settings_for(home, *overrides):
    return small_settings(home, *SERVING, *overrides)


@pytest.fixture(scope="module")
def data(home):
    settings = settings_for(home)
    raw = fetch_dataset(settings.data, settings.paths)
    features = build_features(
        raw, settings.features, settings.paths.features_dir, validation=settings.validation
    )
    return raw, features


def train(settings, features, run_id, retrieval_from: Candidate | None = None) -> Candidate:
    """Train a candidate; with ``retrieval_from``, only its ranking model, and reuse that
    candidate's retrieval model and item-item source (this story is about the ranking model)."""
    run_dir = settings.paths.models_dir / run_id
    ranking = train_ranking(features, settings.ranking, run_dir / RANKING)
    if retrieval_from is None:
        retrieval = train_retrieval(features, settings.retrieval, run_dir / RETRIEVAL)
        item_item = fit_item_item(features, settings.item_item, run_dir / ITEM_ITEM)
    else:
        for source in (retrieval_from.retrieval, retrieval_from.item_item):
            shutil.copytree(source.path, run_dir / source.path.name)
        retrieval = RetrievalModel.load(run_dir / RETRIEVAL)
        item_item = ItemItemSource.load(run_dir / ITEM_ITEM)
    return ordered(Candidate(features, ranking, retrieval, run_id, item_item), settings)


def ordered(candidate: Candidate, settings) -> Candidate:
    return choose_recommend_ordering(
        candidate, settings.ordering, settings.serving.retrieval_candidates
    )


def copy_of(candidate: Candidate, settings, run_id) -> Candidate:
    """The same trained models under another run: a candidate without another training."""
    target = settings.paths.models_dir / run_id
    shutil.copytree(candidate.ranking.path.parent, target)
    return Candidate(
        candidate.features,
        RankingModel.load(target / RANKING),
        RetrievalModel.load(target / RETRIEVAL),
        run_id,
        ItemItemSource.load(target / ITEM_ITEM),
    )


def live_versions(settings) -> set[str]:
    repo = settings.paths.triton_repo
    return {
        child.name
        for model in EndpointNames(settings.serving.model_prefix).all_models
        for child in (repo / model).iterdir()
        if child.is_dir()
    }


@pytest.fixture(scope="module")
def first(home, data):
    settings = settings_for(home)
    raw, features = data
    candidate = train(settings, features, FIRST)
    judged = gate(raw, [candidate], settings)
    registry = Registry.from_settings(settings)
    record = infra_validate(registry, judged.chosen, judged.exported, settings.release)
    publish(registry, record, judged.exported, settings.release, "first run")
    return candidate, judged.chosen


@pytest.fixture(scope="module")
def worse(home, data, first):
    settings = settings_for(home, *WORSE_MODEL)
    raw, features = data
    candidate = train(settings, features, WORSE, retrieval_from=first[0])
    with pytest.raises(GateFailed) as failed:
        gate(raw, [candidate], settings)
    return candidate, failed.value


def test_first_run_is_blessed_on_absolute_bounds_alone(home, data, first):
    raw, features = data
    candidate, record = first
    ranking = candidate.ranking
    registry = Registry.from_settings(settings_for(home))
    stored = registry.load(FIRST)
    assert stored.status == "BLESSED"
    assert stored.decision.compared_with is None
    # Reference bounds compare the candidate with itself (recommend vs retrieval alone).
    assert {check.kind for check in stored.decision.checks} == {
        "absolute",
        "baseline",
        "reference",
        "strongest baseline",
    }
    assert any("first candidate" in note for note in stored.decision.notes)
    # The reproduced held-out rows are the validation split training scored.
    assert stored.evaluation.rows == features.n_valid
    assert stored.evaluation.metrics["ranking.auc"] == pytest.approx(
        ranking.metrics["auc"], abs=1e-4
    )
    # Retrieval is judged too, against most-popular on the same users, in raw ids.
    recall = stored.evaluation.metrics["retrieval.recall@10"]
    assert recall > stored.evaluation.baseline_metrics["retrieval.recall@10"]
    assert ("retrieval.recall@10", "baseline") in {
        (check.metric, check.kind) for check in stored.decision.checks
    }
    # So is recommend, the composed endpoint: against most popular unseen and retrieval alone.
    recommend = {
        check.kind: check for check in stored.decision.checks if check.metric.startswith("recom")
    }
    assert set(recommend) == {"baseline", "reference", "strongest baseline"}
    assert all(check.passed for check in recommend.values())
    assert recommend["reference"].reference.startswith("retrieval.recall@10")
    # The item-item baselines were fitted in the run and scored on the same users.
    baselines = stored.evaluation.baselines
    assert set(baselines) == {"ease", "item_knn"}
    popular = stored.evaluation.baseline_metrics["recommend.recall@10"]
    assert all(scored["recall@10"] > popular for scored in baselines.values())
    strongest, value = stored.evaluation.strongest("recall@10")
    assert recommend["strongest baseline"].reference.startswith(f"{strongest} {value:.4f}")
    # Its ordering was measured on validation for every weight of the grid and is what the
    # published version executes (trial serving checked that Triton's lists equal these).
    ordering = candidate.ranking.ordering
    tried = settings_for(home).ordering.weight_pairs(item_item=True)
    assert set(ordering.validation) == {
        OrderingPolicy(ranker_weight=r, item_item_weight=i).key for r, i in tried
    }
    assert ordering.validation[ordering.key] == max(ordering.validation.values())
    endpoint = EndpointNames(settings_for(home).serving.model_prefix)
    live = settings_for(home).paths.triton_repo / endpoint.model("recommend") / "1"
    served = RecommendStage(live)
    assert served.ordering.key == ordering.key and served.item_item is not None
    # New users who send a history get the weights chosen for them, on the same grid.
    new_users = ordering.new_users
    assert new_users is not None and set(new_users.validation) == set(ordering.validation)
    assert new_users.validation[new_users.key] == max(new_users.validation.values())
    assert served.new_user_ordering == new_users.served() == served.ordering.new_users
    lineage = stored.lineage
    assert (lineage.variant, lineage.data_checksum) == (raw.variant, raw.checksum)
    assert lineage.features_fingerprint == features.fingerprint
    assert lineage.params["ranking"]["epochs"] == ranking.params["epochs"]
    assert lineage.code_version.startswith("0.")
    assert stored.models == {
        "ranking": ranking.path,
        "retrieval": candidate.retrieval.path,
        "item_item": candidate.item_item.path,
    }

    assert stored.trial.passed, stored.trial.message
    assert stored.trial.rows == 257 and stored.trial.max_abs_diff <= 1e-5
    state = registry.state()
    assert (state.serving, state.version) == (FIRST, 1)
    assert [event.reason for event in stored.events] == ["first run"]


def test_worse_model_is_not_blessed_by_the_change_bound(home, first, worse):
    settings = settings_for(home)
    _, first_record = first
    _, failure = worse
    registry = Registry.from_settings(settings)
    stored = registry.load(WORSE)
    assert stored.status == "NOT_BLESSED"
    assert stored.decision.compared_with == FIRST
    failed = {(check.metric, check.kind) for check in stored.decision.failed}
    assert ("ranking.auc", "change") in failed
    assert "ranking.auc" in str(failure) and "FAIL" in str(failure)
    # The blessed model re-scored on the worse candidate's held-out rows: the same rows here,
    # so the same number as when it was judged itself.
    assert stored.evaluation.blessed_metrics["ranking.auc"] == pytest.approx(
        first_record.evaluation.metrics["ranking.auc"], abs=1e-6
    )
    # Its lists too: re-scored with its item-item fit on the training split, as it was judged,
    # not with the served refit that saw these held-out rows.
    assert stored.evaluation.blessed_metrics["recommend.recall@10"] == pytest.approx(
        first_record.evaluation.metrics["recommend.recall@10"], abs=1e-6
    )
    assert stored.trial is None and stored.events == ()
    assert (registry.state().serving, registry.state().version) == (FIRST, 1)
    assert live_versions(settings) == {"1"}


def test_recommend_that_loses_to_most_popular_is_not_blessed(home, data, worse):
    """The worse ranker's models, recommend ordered by that ranker alone (the ordering before
    it was measured): the ranking bounds are off, only the lists can fail the gate."""
    settings = settings_for(
        home,
        *LOOSE_GATE,
        "ordering.ranker_weights=[1.0]",
        "gate.recommend.recall@10.max_shortfall_to_strongest=0",
    )
    raw, _ = data
    candidate = ordered(copy_of(worse[0], settings, RANKER_ALONE), settings)
    assert candidate.ranking.ordering.ranker_weight == 1.0
    with pytest.raises(GateFailed, match="recommend.recall@10"):
        gate(raw, [candidate], settings)
    registry = Registry.from_settings(settings)
    stored = registry.load(RANKER_ALONE)
    metrics = stored.evaluation.metrics
    popular = stored.evaluation.baseline_metrics["recommend.recall@10"]
    assert metrics["recommend.recall@10"] < popular < metrics["retrieval.recall@10"]
    # Only recommend's checks fail: against most popular, retrieval alone, the blessed one and
    # the strongest item-item baseline (asked here to be matched).
    assert {(c.metric, c.kind) for c in stored.decision.failed} == {
        ("recommend.recall@10", "baseline"),
        ("recommend.recall@10", "reference"),
        ("recommend.recall@10", "change"),
        ("recommend.recall@10", "strongest baseline"),
    }
    # The blessed model's recommend was re-scored on the same rows, by its own ordering.
    assert stored.evaluation.blessed_metrics["recommend.recall@10"] > popular
    assert stored.events == () and registry.state().serving == FIRST
    assert live_versions(settings) == {"1"}


def test_the_ordering_is_judged_on_a_seeded_sample_of_users_above_the_cap(home, first, monkeypatch):
    """At ml-10m's 70,000 validation users, scoring every one of them took 190 s of the
    ordering's choice; above ``TUNING_USERS`` it judges the seeded sample the item-item
    choices are judged on (models.baselines.judged_sample)."""
    settings = settings_for(home)
    monkeypatch.setattr(baselines, "TUNING_USERS", 5)
    judged = record_judged_users(monkeypatch)
    candidate = ordered(copy_of(first[0], settings, SAMPLED), settings)
    (users,) = judged
    assert len(users) == 5
    assert len(candidate.ranking.ordering.validation) == len(first[0].ranking.ordering.validation)


def test_candidate_that_cannot_load_is_blocked_by_trial_serving(home, data, worse):
    settings = settings_for(home, *WORSE_ADMITTED)
    raw, features = data
    candidate = copy_of(worse[0], settings, CORRUPT)
    judged = gate(raw, [candidate], settings)
    assert judged.chosen.status == "BLESSED"
    # Trial serving loads the very files the gate exported and scored: damage one of them.
    (judged.exported.version_dir(RANKING) / RANKER).write_bytes(b"not an ONNX model")

    registry = Registry.from_settings(settings)
    with pytest.raises(TrialServingFailed, match=CORRUPT):
        infra_validate(registry, judged.chosen, judged.exported, settings.release)
    trial = registry.load(CORRUPT).trial
    assert not trial.passed and trial.log_file is not None
    with pytest.raises(RegistryError, match="trial serving"):
        record = registry.load(CORRUPT)
        publish(registry, record, judged.exported, settings.release, "should not happen")
    assert registry.state().serving == FIRST
    assert live_versions(settings) == {"1"}


def test_rollback_restores_the_previous_version_and_triton_serves_it(home, data, first, worse):
    settings = settings_for(home, *WORSE_ADMITTED, "trial.enabled=false")
    raw, features = data
    candidate = copy_of(worse[0], settings, SECOND)
    judged = gate(raw, [candidate], settings)
    registry = Registry.from_settings(settings)
    published = publish(registry, judged.chosen, judged.exported, settings.release, "looser gate")
    assert published.version == 2

    result = cli_for(settings)("rollback", "--reason", "AUC dropped")
    assert result.exit_code == 0, result.output
    state = registry.state()
    assert (state.serving, state.version) == (FIRST, 3)
    assert [(e.candidate, e.action) for e in state.history] == [
        (FIRST, "publish"),
        (SECOND, "publish"),
        (FIRST, "rollback"),
    ]
    assert state.history[-1].reason == "AUC dropped" and state.history[-1].previous == SECOND

    ranking_model = EndpointNames(settings.serving.model_prefix).model("ranking")
    expected = registry.trial_sample(FIRST)
    not_expected = registry.trial_sample(SECOND)["score"].to_numpy()
    with (
        # Ranking alone: with two versions kept, all four endpoints would start eight stubs.
        TritonServer.from_settings(settings, [ranking_model]) as server,
        RecflowClient.from_config(server.config) as client,
    ):
        served = client.infer(
            client.ranking_model,
            {
                name: expected[name].to_numpy(np.int64).reshape(-1, 1)
                for name in ("user_id", "item_id")
            },
            ["score"],
        )["score"].reshape(-1)
    np.testing.assert_allclose(served, expected["score"].to_numpy(), rtol=0, atol=1e-5)
    assert np.abs(served - not_expected).max() > 1e-3


def test_a_winning_challenger_is_served_under_its_own_id(home, data, first, worse):
    """One run, two contenders: the worse ranker as champion (NOT_BLESSED by the change bound)
    and the first candidate's ranker as a challenger beside it. The challenger wins, and every
    endpoint's config names its registry id ``<run>-<architecture>`` for the new version: the
    id the gate assigned, not the run's directory name (which named the champion's record)."""
    settings = settings_for(home, "trial.enabled=false")
    raw, _ = data
    champion = copy_of(worse[0], settings, WINNER)
    architecture = first[0].ranking.architecture
    challenger_dir = settings.paths.models_dir / WINNER / f"{RANKING}-{architecture}"
    shutil.copytree(first[0].ranking.path, challenger_dir)
    challenger = champion._replace(ranking=RankingModel.load(challenger_dir))
    registry = Registry.from_settings(settings)
    assert registry.state().serving == FIRST  # the rollback's
    judged = gate(raw, [champion, challenger], settings)

    winner = f"{WINNER}-{architecture}"
    assert judged.chosen.id == judged.exported.candidate == winner
    assert registry.load(WINNER).status == "NOT_BLESSED"
    version = publish(
        registry, judged.chosen, judged.exported, settings.release, "challenger"
    ).version
    parameter = f'key: "recflow_candidate_v{version}" value {{ string_value: "{winner}" }}'
    repo = settings.paths.triton_repo
    for model in EndpointNames(settings.serving.model_prefix).all_models:
        assert parameter in (repo / model / "config.pbtxt").read_text(), model
    assert registry.state().serving == winner
