"""The rankers and retrievers on small planted-factor data: they beat their baselines,
reproducibly, and every ranking architecture exports to the ONNX graph serving runs."""

from __future__ import annotations

from typing import get_args

import numpy as np
import onnx
import pytest
from merlin.schema import Tags

from models.architectures import ID_ONLY
from models.evaluation import RetrievalTask
from models.metrics import binary_metrics, top_k_metrics
from models.predict import input_columns
from models.ranking import load_model, model_schema, predict_split
from models.training import binary_target, read_columns, read_schema, read_split, side_columns
from recflow.artifacts import FeatureSet, RankingModel
from recflow.config import RankingArchitecture, RankingConfig
from recflow.vocabulary import RAW_ITEM_ID
from serving.export import write_ranker
from serving.runtime import LENGTHS, OFFSETS, VALUES
from tasks.download import fetch_dataset
from tasks.features import build_features_task
from tasks.train import item_catalogue, train_ranking, train_retrieval
from tests.support.retrieval import ExactRetriever
from tests.support.settings import small_settings

pytestmark = pytest.mark.integration
LIST_SUFFIXES = (VALUES, OFFSETS, LENGTHS)


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return small_settings(tmp_path_factory.mktemp("home"), "retrieval.epochs=6")


@pytest.fixture(scope="module")
def features(settings):
    raw = fetch_dataset(settings.data, settings.paths)
    sections = (settings.features, settings.validation, settings.compute)
    return build_features_task.fn(raw, *sections, settings.paths.features_dir)


@pytest.fixture(scope="module")
def ranking(features, settings):
    return train_ranking(features, settings.ranking, settings.paths.models_dir / "first")


@pytest.fixture(scope="module", params=["two_tower", "mf"])
def retrieval(request, features, settings):
    cfg = settings.retrieval.model_copy(update={"architecture": request.param})
    return train_retrieval(features, cfg, settings.paths.models_dir / f"retrieval-{request.param}")


def reloaded_metrics(ranking: RankingModel, features: FeatureSet) -> dict[str, float]:
    """The saved ranker, loaded as serving's export loads it, scored on the validation split."""
    schema = model_schema(read_schema(features.train_dir), ranking.architecture)
    valid = read_split(features.valid_dir, schema, schema.column_names)
    return binary_metrics(*predict_split(load_model(ranking.model_dir), valid))


def test_the_default_ranker_learns_the_planted_signal_and_beats_the_item_mean(ranking, features):
    assert ranking.metrics["auc"] >= 0.75
    assert ranking.metrics["auc"] > ranking.baseline_metrics["auc"]
    # The kept weights are those of the best epoch, and the manifest says which one that was.
    best = ranking.history[ranking.best_epoch - 1]
    assert best["auc"] == max(row["auc"] for row in ranking.history) == ranking.metrics["auc"]
    # ... and what was saved (configs and weights, no traces: models.training.save_model).
    assert reloaded_metrics(ranking, features) == pytest.approx(ranking.metrics, abs=1e-6)
    assert ranking.model_dir.is_dir() and ranking.train_examples_per_s > 0
    # Small data trains at the setting's batch; the manifest says what was applied.
    assert ranking.batch_size_applied == ranking.params["batch_size"]


def test_same_seed_and_data_give_the_same_metrics(features, settings):
    one_epoch = settings.ranking.model_copy(update={"epochs": 1})
    first, second = (
        train_ranking(features, one_epoch, settings.paths.models_dir / run_id / "ranking")
        for run_id in ("once", "twice")
    )
    assert second.metrics == pytest.approx(first.metrics, abs=1e-5)
    assert second.baseline_metrics == first.baseline_metrics


def test_same_seed_and_data_give_the_same_two_tower_metrics(features, settings):
    one_epoch = settings.retrieval.model_copy(update={"epochs": 1})
    first, second = (
        train_retrieval(features, one_epoch, settings.paths.models_dir / run_id / "retrieval")
        for run_id in ("once", "twice")
    )
    assert second.metrics == pytest.approx(first.metrics, abs=1e-6)


def test_retrieval_beats_most_popular(retrieval):
    assert retrieval.metrics["recall@10"] > retrieval.baseline_metrics["recall@10"]
    assert set(retrieval.metrics) == {
        f"{name}@{k}" for name in ("recall", "ndcg", "mrr") for k in (10, 50, 100)
    }


def test_exported_encoder_and_embeddings_reproduce_the_validation_recall(retrieval, features):
    """Serving's path (SavedModel + parquet + exact search) gives the training-time metric."""
    schema = read_schema(features.train_dir)
    user_cols = side_columns(schema, Tags.USER)
    user = schema.select_by_tag(Tags.USER_ID).first.name
    item = schema.select_by_tag(Tags.ITEM_ID).first.name
    target = binary_target(schema)
    catalogue = item_catalogue(features)
    # Every synthetic item is rated in training, so encoded and raw ids map one to one.
    assert catalogue[item].is_unique
    raw_of = catalogue.set_index(item)[RAW_ITEM_ID]

    train = read_columns(features.train_dir, [user, item, target])
    valid = read_columns(features.valid_dir, [*user_cols, item, target])
    task = RetrievalTask.build(
        train, valid[valid[target] == 1], catalogue[item].to_numpy(), user, item
    )
    rows = valid.drop_duplicates(user).set_index(user).loc[task.users].reset_index()

    def raw(positions):
        return raw_of.loc[task.candidates[positions]].to_numpy()

    retriever = ExactRetriever.load(retrieval)
    ids, scores = retriever.top_k(rows, 10, exclude=[raw(seen) for seen in task.seen])
    assert (np.diff(scores, axis=1) <= 0).all()
    assert not any(set(found) & set(raw(seen)) for found, seen in zip(ids, task.seen, strict=True))
    if retrieval.params["architecture"] == "two_tower":  # towers end in an L2 norm, MF does not
        np.testing.assert_allclose(np.linalg.norm(retriever.vectors, axis=1), 1.0, atol=1e-5)
    recall = top_k_metrics(ids, [raw(rel) for rel in task.relevant], (10,))["recall@10"]
    assert recall == pytest.approx(retrieval.metrics["recall@10"], abs=1e-6)


# Every architecture but the default one, which the `ranking` fixture trains.
OTHER_RANKERS = [
    name for name in get_args(RankingArchitecture) if name != RankingConfig().architecture
]


@pytest.mark.parametrize("architecture", OTHER_RANKERS)
def test_every_ranking_architecture_learns_and_exports_unchanged(
    architecture, features, settings, tmp_path
):
    """The same loop trains each, its saved model reloads to the kept epoch's scores, and its
    ONNX export scores held-out rows like Keras does (``write_ranker`` raises otherwise),
    reading only the columns the architecture takes."""
    cfg = settings.ranking.model_copy(update={"architecture": architecture, "epochs": 3})
    model = train_ranking(features, cfg, settings.paths.models_dir / f"ranking-{architecture}")
    assert model.architecture == architecture
    assert model.metrics["auc"] > model.baseline_metrics["auc"]
    assert reloaded_metrics(model, features) == pytest.approx(model.metrics, abs=1e-6)
    schema = read_schema(features.train_dir)
    write_ranker(model, features, schema, tmp_path / "ranking.onnx")
    graph = onnx.load(str(tmp_path / "ranking.onnx"))
    assert {i.name for i in graph.graph.input} <= {
        *input_columns(schema),
        *(f"{name}{suffix}" for name in input_columns(schema) for suffix in LIST_SUFFIXES),
    }
    if architecture in ID_ONLY:
        assert {i.name for i in graph.graph.input} == {"user_id", "item_id"}
