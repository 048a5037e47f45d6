"""tuning.space: what the config accepts, and how a space becomes Optuna's distributions and a
trial's point becomes the section a model trains with (flows/study.py)."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from pydantic import BaseModel, ValidationError

from flows.study import (
    check_identity,
    distributions,
    finished,
    grid_size,
    point,
    requeue_interrupted,
    sampler,
    trial_section,
)
from recflow.config import RankingConfig, TuningConfig, load_settings, section_field

optuna.logging.set_verbosity(optuna.logging.WARNING)


def tuning(space: str, *more: str) -> TuningConfig:
    return load_settings(overrides=[f"tuning.space={space}", *more]).tuning


@pytest.mark.parametrize(
    ("space", "problem"),
    [
        ("{embedding_dimm: [8]}", "names no ranking field: embedding_dimm"),
        ("{logq_correction: [true]}", "names no ranking field"),  # a retrieval field
        ("{dropout: []}", "no values for dropout"),
        ("{dropout: [0.1, 1.5]}", "1.5 is not a value of dropout"),
        ("{optimizer: [adam, rmsprop]}", "'rmsprop' is not a value of optimizer"),
        ("{learning_rate: {low: 0.01, high: 0.001}}", "low < high"),
        ("{learning_rate: {low: 0.0, high: 0.1, log: true}}", "log range needs low > 0"),
        ("{learning_rate: {low: 0.001, high: 0.1, log: true, step: 0.01}}", "log or stepped"),
        ("{dropout: {low: 0.0, high: 1.0}}", "1.0 is not a value of dropout"),
        ("{embedding_dim: {low: 8.5, high: 64}}", "8.5 is not a value of embedding_dim"),
        ("{embedding_dim: {low: 8, high: 64, step: 0.5}}", "its step must be an int"),
        ("{optimizer: {low: 1, high: 2}}", "is not a value of optimizer"),
        ("{top_mlp: {low: 1, high: 2}}", "1 is not a value of top_mlp"),
        ("{}", "tuning.space is empty"),
    ],
)
def test_a_bad_space_is_refused_naming_the_field(space, problem):
    with pytest.raises(ValidationError, match=problem):
        tuning(space)


def test_the_space_names_fields_of_the_tuned_model_section():
    assert tuning("{logq_correction: [true, false]}", "tuning.model=retrieval").space
    with pytest.raises(ValidationError, match="names no retrieval field: bottom_mlp"):
        tuning("{bottom_mlp: [[8]]}", "tuning.model=retrieval")
    # 0 and 1 are values of a bool field, but a range of it is not a range.
    with pytest.raises(ValidationError, match="logq_correction is not a number field"):
        tuning("{logq_correction: {low: 0, high: 1}}", "tuning.model=retrieval")


def test_the_old_strategy_key_is_refused_with_what_replaces_it():
    with pytest.raises(ValidationError, match="tuning.strategy is gone.*tuning.sampler"):
        load_settings(overrides=["tuning.strategy=grid"])


def test_the_grid_sampler_takes_value_lists_only():
    assert grid_size(tuning("{embedding_dim: [8, 16, 32], top_mlp: [[8], [16, 8]]}")) == 6
    with pytest.raises(ValidationError, match="grid takes value lists, dropout is a range"):
        tuning("{dropout: {low: 0.0, high: 0.5}}", "tuning.sampler=grid")


def test_a_grid_is_asked_and_told_to_its_last_point():
    """The flow asks and tells (flows/tune.py): Optuna's own grid sampler stops the study when
    told its last point, which raises outside Study.optimize, failing the search."""
    cfg = tuning("{embedding_dim: [8, 16, 32]}", "tuning.sampler=grid")
    study = optuna.create_study(direction="maximize", sampler=sampler(cfg, 0))
    for _ in range(grid_size(cfg)):
        trial = study.ask(distributions(cfg))
        study.tell(trial, float(trial.params["embedding_dim"]))
    assert sorted(t.params["embedding_dim"] for t in study.trials) == [8, 16, 32]


def test_the_defaults_are_a_valid_space_of_both_models():
    for model in ("ranking", "retrieval"):
        cfg = load_settings(overrides=[f"tuning.model={model}"]).tuning
        assert set(distributions(cfg)) == {"embedding_dim", "dropout", "learning_rate"}


def test_ranges_become_int_or_float_distributions_by_the_fields_type():
    cfg = tuning(
        "{learning_rate: {low: 1e-4, high: 1e-2, log: true}, embedding_dim: {low: 8, high: 64,"
        " step: 8}, dropout: {low: 0, high: 0.5}, batch_size: {low: 64, high: 1024, log: true}}"
    )
    assert distributions(cfg) == {
        # YAML reads 1e-4 as a string and 0 as an int: the field's type decides.
        "learning_rate": FloatDistribution(1e-4, 1e-2, log=True),
        "embedding_dim": IntDistribution(8, 64, step=8),
        "dropout": FloatDistribution(0.0, 0.5),
        "batch_size": IntDistribution(64, 1024, log=True),
    }


def test_value_lists_become_categorical_choices_coerced_to_the_field():
    cfg = tuning("{learning_rate: ['1e-3', 0.003], optimizer: [adam, sgd]}")
    assert distributions(cfg) == {
        "learning_rate": CategoricalDistribution([0.001, 0.003]),
        "optimizer": CategoricalDistribution(["adam", "sgd"]),
    }


def test_a_list_valued_choice_is_offered_as_json_and_decoded_back():
    cfg = tuning("{top_mlp: [[64, 32], [128]], embedding_dim: [8, 16]}")
    dists = distributions(cfg)
    # Optuna's choices must be primitives, so the MLP's widths go through JSON text.
    assert dists["top_mlp"] == CategoricalDistribution(["[64, 32]", "[128]"])
    assert point(cfg, {"top_mlp": "[128]", "embedding_dim": 16}) == {
        "top_mlp": [128],
        "embedding_dim": 16,
    }
    section = trial_section(RankingConfig(), point(cfg, {"top_mlp": "[128]", "embedding_dim": 8}))
    assert section.top_mlp == (128,) and section.embedding_dim == 8
    assert section.dropout == RankingConfig().dropout  # the rest stays as configured


def test_a_trial_draws_a_point_inside_the_space_and_the_section_keeps_the_rest():
    cfg = tuning("{learning_rate: {low: 1e-4, high: 1e-2, log: true}, embedding_dim: [8, 16]}")
    base = RankingConfig(epochs=3, optimizer="sgd")
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    for _ in range(5):
        trial = study.ask(distributions(cfg))
        section = trial_section(base, point(cfg, trial.params))
        assert 1e-4 <= section.learning_rate <= 1e-2 and section.embedding_dim in (8, 16)
        assert (section.epochs, section.optimizer) == (3, "sgd")
        study.tell(trial, 0.5)


class _Cross(BaseModel):
    layers: int = 2


class _Nested(BaseModel):
    dim: int = 8
    cross: _Cross = _Cross()


def test_a_dotted_name_reaches_a_nested_sections_field():
    assert section_field(_Nested, "cross.layers").annotation is int
    with pytest.raises(KeyError):
        section_field(_Nested, "dim.layers")
    section = trial_section(_Nested(), {"cross.layers": 4, "dim": 16})
    assert section == _Nested(dim=16, cross=_Cross(layers=4))


IDENTITY = {"model": "ranking", "metric": "auc", "features": "f1", "base": {"epochs": 2, "lr": 1}}


def test_a_study_run_under_other_settings_is_refused_except_for_the_space():
    study = optuna.create_study(direction="maximize")
    check_identity(study, IDENTITY, {"lr": None})  # a new study records them
    assert study.user_attrs == IDENTITY
    # The searched field may have any configured value; the space may change.
    check_identity(study, {**IDENTITY, "base": {"epochs": 2, "lr": 7}}, {"lr": None})
    with pytest.raises(ValueError, match=r"ranking\.epochs differ"):
        check_identity(study, {**IDENTITY, "base": {"epochs": 3, "lr": 1}}, {"lr": None})
    with pytest.raises(ValueError, match="features differ"):
        check_identity(study, {**IDENTITY, "features": "f2"}, {"lr": None})


def test_a_trial_left_running_by_a_dead_search_fails_and_its_point_is_asked_again():
    dists = {"x": FloatDistribution(0, 1)}
    study = optuna.create_study(direction="maximize")
    done = study.ask(dists)
    study.tell(done, 0.1)
    stale = study.ask(dists)  # its process died here
    assert requeue_interrupted(study) == [stale.number]
    assert study.trials[stale.number].state == TrialState.FAIL
    assert finished(study) == 1  # a failed trial does not count towards n_trials
    again = study.ask(dists)
    assert again.params == stale.params and again.user_attrs["retry_of"] == stale.number
    study.tell(again, 0.2)
    assert requeue_interrupted(study) == []  # finished trials are left alone
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL] + [
        TrialState.COMPLETE
    ]
