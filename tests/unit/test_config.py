from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from cli.app import app
from recflow.config import Settings, load_settings, parse_overrides


def test_overrides_parse_yaml_values_into_nested_keys():
    assert parse_overrides(["ranking.epochs=3", "ranking.bottom_mlp=[8, 4]", "a.b.c=true"]) == {
        "ranking": {"epochs": 3, "bottom_mlp": [8, 4]},
        "a": {"b": {"c": True}},
    }


@pytest.mark.parametrize("bad", ["ranking.epochs", "=3", ""])
def test_malformed_override_is_rejected(bad):
    with pytest.raises(ValueError, match="section.field=value"):
        parse_overrides([bad])


@pytest.mark.parametrize("value", ["evil\x00x", "[1, 2", "{a: 1"])
def test_override_values_that_are_not_yaml_are_rejected_by_name(value):
    with pytest.raises(ValueError, match="ranking.epochs.*is not YAML"):
        parse_overrides([f"ranking.epochs={value}"])


@pytest.mark.parametrize("override", ["ranking.epochz=3", "ranking.epochs=[1, 2"])
def test_the_cli_refuses_bad_settings_with_a_message_and_exit_code_2(tmp_path, override):
    result = CliRunner().invoke(app, ["--home", str(tmp_path), "--set", override, "models", "list"])
    assert result.exit_code == 2 and "invalid settings" in result.output
    assert "Traceback" not in result.output and not any(tmp_path.iterdir())


def test_precedence_cli_over_env_over_yaml(tmp_path, monkeypatch):
    config = tmp_path / "recflow.yaml"
    config.write_text("ranking:\n  epochs: 5\n  batch_size: 64\nserving:\n  grpc_port: 9000\n")
    monkeypatch.setenv("RECFLOW_RANKING__EPOCHS", "7")
    monkeypatch.setenv("RECFLOW_SERVING__GRPC_PORT", "9100")
    settings = load_settings(config, ["ranking.epochs=9"])
    assert settings.ranking.epochs == 9  # CLI beats env and YAML
    assert settings.serving.grpc_port == 9100  # env beats YAML
    assert settings.ranking.batch_size == 64  # YAML beats defaults
    assert settings.ranking.learning_rate == Settings().ranking.learning_rate


def test_unknown_keys_and_bad_values_fail_loudly(monkeypatch):
    monkeypatch.delenv("RECFLOW_CONFIG", raising=False)
    with pytest.raises(ValidationError):
        load_settings(overrides=["ranking.epochz=3"])
    with pytest.raises(ValidationError):
        load_settings(overrides=["features.valid_fraction=1.5"])
    with pytest.raises(ValidationError):
        load_settings(overrides=["serving.model_prefix=../escape"])


def test_home_is_made_absolute(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RECFLOW_CONFIG", raising=False)
    settings = load_settings(overrides=["paths.home=rel"])
    assert settings.paths.home == tmp_path / "rel"
    assert settings.paths.triton_repo == tmp_path / "rel" / "triton"


def test_servers_bind_to_loopback_by_default(monkeypatch):
    monkeypatch.delenv("RECFLOW_CONFIG", raising=False)
    settings = load_settings()
    assert settings.serving.host == "127.0.0.1"
    assert settings.compute.host == "127.0.0.1"
    assert Path(settings.paths.home).is_absolute()


def test_config_show_names_where_each_value_came_from(tmp_path, monkeypatch):
    config = tmp_path / "recflow.yaml"
    config.write_text(
        "ranking: {embedding_dim: 32, epochs: 7}\ngate: {ranking: {auc: {min_change: null}}}\n"
    )
    # As --config FILE does, without leaving it set for the tests after this one.
    monkeypatch.setenv("RECFLOW_CONFIG", str(config))
    monkeypatch.setenv("RECFLOW_SERVING__GRPC_PORT", "9001")
    monkeypatch.setenv("RECFLOW_RANKING__EPOCHS", "5")  # env beats yaml, --set beats env
    args = ["--home", str(tmp_path), "--set", "ranking.epochs=3", "config", "show"]

    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, args)

    assert result.exit_code == 0, result.output
    rows = {
        cells[0]: (cells[1], cells[2])
        for line in result.output.splitlines()
        if len(cells := [c.strip() for c in line.strip("│ ").split("│")]) == 3
    }
    assert rows["ranking.epochs"] == ("3", "--set")
    assert rows["paths.home"] == (f'"{tmp_path}"', "--set")
    assert rows["serving.grpc_port"] == ("9001", "env")
    assert rows["ranking.embedding_dim"] == ("32", "yaml")
    assert rows["gate.ranking.auc.min_change"] == ("null", "yaml")
    assert rows["gate.ranking.auc.min_value"][1] == "default"
    assert rows["data.variant"] == ('"synthetic"', "default")


def test_challengers_train_with_the_champions_fields_and_differ_from_it():
    champion = ["ranking.architecture=dlrm", "ranking.epochs=4"]
    settings = load_settings(overrides=[*champion, "ranking.challengers=[mf, ncf]"])
    contenders = settings.ranking.contenders
    assert [cfg.architecture for cfg in contenders] == ["dlrm", "mf", "ncf"]
    assert all(cfg.epochs == 4 and cfg.challengers == () for cfg in contenders)
    default = load_settings().ranking
    assert [cfg.architecture for cfg in default.contenders] == [default.architecture]
    for twice in ("[mf, mf]", "[dlrm]"):
        with pytest.raises(ValueError, match="must differ"):
            load_settings(overrides=[*champion, f"ranking.challengers={twice}"])
    with pytest.raises(ValueError, match="prefer"):
        load_settings(overrides=["gate.prefer=auc"])
