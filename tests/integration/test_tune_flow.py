"""The tuning flow on a real Prefect API: an Optuna study on disk, pruning, resume, the table."""

from __future__ import annotations

import json

import pytest
from optuna.trial import TrialState
from prefect.client.orchestration import get_client

from flows.study import JOURNAL, distributions, load_study
from flows.tune import artifact_key, study_dir, tune
from recflow.vocabulary import RANKING
from tasks.train import TRAINERS
from tests.support.settings import small_settings

pytestmark = pytest.mark.integration

GOOD, ABSURD, RETRIED = 0.01, 1000.0, 0.005


STUDY = [
    "tuning.study=optuna_test",
    "tuning.space={learning_rate: {low: 0.001, high: 1000.0, log: true}}",
    # Prune from the first epoch on, once one trial has completed.
    "tuning.prune_after_trials=1",
    "tuning.warmup_epochs=1",
    "ranking.epochs=2",
    "ranking.patience=2",
]


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return small_settings(tmp_path_factory.mktemp("home"), *STUDY, "tuning.n_trials=2")


@pytest.fixture(scope="module")
def trained_points():
    """The learning rate of every model the flow trains, in order."""
    points = []
    train = TRAINERS[RANKING]  # the pipeline's own trainer: the tuning flow calls it

    def counting(features, cfg, out_dir, on_epoch):
        points.append(cfg.learning_rate)
        return train(features, cfg, out_dir, on_epoch)

    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(TRAINERS, RANKING, counting)
        yield points


@pytest.fixture(scope="module")
def first(settings, trained_points, prefect_harness):
    # The points to try first, in this order: a sane learning rate, then an absurd one.
    study = load_study(settings)
    study.enqueue_trial({"learning_rate": GOOD})
    study.enqueue_trial({"learning_rate": ABSURD})
    return tune(settings)


def test_the_study_is_on_disk_and_the_absurd_trial_was_pruned_after_one_epoch(
    first, settings, trained_points
):
    assert (study_dir(settings) / JOURNAL).stat().st_size > 0
    assert trained_points == [GOOD, ABSURD]
    good, absurd = load_study(settings).get_trials()  # read back from the file
    assert (good.state, absurd.state) == (TrialState.COMPLETE, TrialState.PRUNED)
    assert sorted(good.intermediate_values) == [1, 2]
    assert sorted(absurd.intermediate_values) == [1]  # epoch 2 never ran
    assert absurd.user_attrs["epochs"] == 1 and absurd.user_attrs["artifact"] is None
    # The record of a trial is the whole section it trained with, not only its point.
    assert good.user_attrs["config"]["learning_rate"] == GOOD
    assert good.user_attrs["config"]["embedding_dim"] == settings.ranking.embedding_dim
    assert first.best.number == good.number
    assert first.best.value == good.value == good.user_attrs["metrics"]["auc"]
    assert (study_dir(settings) / "trials" / str(good.number) / "manifest.json").exists()
    assert first.ran == [0, 1]


def latest_artifact(key: str) -> dict:
    # The raw API: Artifact.get in this Prefect release sends nulls the server refuses.
    body = {"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 1}
    with get_client(sync_client=True) as client:
        response = client.request("POST", "/artifacts/filter", json=body)
    response.raise_for_status()
    (artifact,) = response.json()
    return artifact


def test_the_table_artifact_lists_all_trials_with_their_state(first, settings):
    assert artifact_key(settings.tuning.study) == "tuning-optuna-test"
    artifact = latest_artifact("tuning-optuna-test")
    assert artifact["type"] == "table"
    rows = json.loads(artifact["data"])
    assert [(row["trial"], row["state"], row["best"]) for row in rows] == [
        (0, "complete", "yes"),
        (1, "pruned", ""),
    ]
    assert rows[1]["epochs"] == 1 and rows[1]["seconds"] > 0
    assert rows[0]["learning_rate"] == repr(GOOD)


def test_a_rerun_after_a_crash_retrains_only_the_interrupted_trial(first, settings, trained_points):
    # A search that died while training its third trial: asked, never told.
    study = load_study(settings)
    study.enqueue_trial({"learning_rate": RETRIED})
    interrupted = study.ask(distributions(settings.tuning))
    before = {t.number: t for t in study.get_trials()}
    trained_points.clear()

    again = tune(small_settings(settings.paths.home, *STUDY, "tuning.n_trials=3"))

    assert trained_points == [RETRIED]  # the finished trials did not train again
    after = {t.number: t for t in load_study(settings).get_trials()}
    assert after[interrupted.number].state == TrialState.FAIL
    (retry,) = (t for n, t in after.items() if n not in before)
    # Complete, or pruned: the pruner judges it against the first trial.
    assert retry.state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert retry.params == {"learning_rate": RETRIED}
    assert retry.user_attrs["retry_of"] == interrupted.number
    for number in (0, 1):
        assert after[number].datetime_complete == before[number].datetime_complete
    assert again.ran == [retry.number]
    assert [t.state for t in again.trials][:3] == ["complete", "pruned", "fail"]
