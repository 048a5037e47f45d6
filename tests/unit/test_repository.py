"""Triton repository layout and configs, without a server."""

import numpy as np
import pandas as pd
import pytest
from merlin.schema import ColumnSchema, Schema

from recflow.config import ServingConfig
from serving.repository import (
    RankingEndpoint,
    TensorSpec,
    ensemble_config,
    next_version,
    python_model_config,
    stage_tensor_specs,
)
from serving.runtime import decode_frame, encode_frame, tensor_names


@pytest.fixture
def schema():
    return Schema(
        [
            ColumnSchema("user_id", dtype=np.int64),
            ColumnSchema("genres", dtype=np.int64, is_list=True, is_ragged=True),
            ColumnSchema("item_count", dtype=np.float64),
        ]
    )


def test_list_columns_survive_the_stage_boundary(schema):
    frame = pd.DataFrame(
        {
            "user_id": [3, 4, 5],
            "genres": [np.array([1, 2, 3]), np.array([7]), np.array([], dtype=np.int64)],
            "item_count": [0.5, -1.25, 2.0],
        }
    )
    tensors = encode_frame(frame, schema)
    assert set(tensors) == set(tensor_names(schema))
    assert tensors["genres__values"].shape == (3, 3)
    assert tensors["genres__lengths"].ravel().tolist() == [3, 1, 0]
    assert all(array.shape[0] == 3 for array in tensors.values())  # batchable by Triton
    back = decode_frame(tensors, schema)
    assert back["user_id"].tolist() == [3, 4, 5]
    assert [list(v) for v in back["genres"]] == [[1, 2, 3], [7], []]
    np.testing.assert_array_equal(back["item_count"], frame["item_count"])


def test_stage_specs_match_encoded_tensors(schema):
    specs = stage_tensor_specs(schema)
    assert [s.name for s in specs] == tensor_names(schema)
    dims = {s.name: s.dims for s in specs}
    assert dims["genres__values"] == (-1,) and dims["genres__lengths"] == (1,)


def test_python_model_config_declares_everything_explicitly():
    cfg = ServingConfig(max_batch_size=64, instance_count=2)
    text = python_model_config(
        "m",
        "features",
        [TensorSpec("user_id", np.dtype("int64"))],
        [TensorSpec("score", np.dtype("float32"))],
        cfg,
    )
    assert 'backend: "python"' in text
    assert "max_batch_size: 64" in text
    assert 'input { name: "user_id" data_type: TYPE_INT64 dims: [ 1 ] }' in text
    assert 'output { name: "score" data_type: TYPE_FP32 dims: [ 1 ] }' in text
    assert "count: 2 kind: KIND_CPU" in text
    assert 'string_value: "features"' in text


def test_ensemble_never_produces_a_tensor_twice(schema):
    endpoint = RankingEndpoint("recflow")
    text = ensemble_config(endpoint, stage_tensor_specs(schema), ServingConfig())
    produced = [part.split('value: "')[1].split('"')[0] for part in text.split("output_map")[1:]]
    assert len(produced) == len(set(produced))
    assert 'value: "user_id"' in text  # the raw input feeds the first step
    assert 'output_map { key: "user_id" value: "features.user_id" }' in text
    assert text.index(endpoint.features) < text.index(endpoint.ranker)


def test_next_version_counts_across_all_models(tmp_path):
    endpoint = RankingEndpoint("recflow")
    assert next_version(tmp_path, endpoint) == 1
    (tmp_path / endpoint.features / "3").mkdir(parents=True)
    (tmp_path / endpoint.ensemble / "2").mkdir(parents=True)
    (tmp_path / endpoint.ensemble / ".4.staging-x").mkdir()  # a crashed export is not a version
    assert next_version(tmp_path, endpoint) == 4
