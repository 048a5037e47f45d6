"""Triton repository layout and configs, and the runtime's tensor plumbing, without a server."""

import json

import numpy as np
import pandas as pd
import pytest
from merlin.schema import ColumnSchema, Schema, Tags

from recflow.artifacts import VersionConfig
from recflow.config import ServingConfig
from serving.export import encode_frame
from serving.repository import (
    EndpointNames,
    _write_config,
    next_version,
    python_model_config,
)
from serving.runtime import BadRequest, _request_k, model_inputs


@pytest.fixture
def schema():
    return Schema(
        [
            ColumnSchema("user_id", dtype=np.int64),
            ColumnSchema("genres", dtype=np.int64, is_list=True, is_ragged=True),
            ColumnSchema("item_count", dtype=np.float64),
            ColumnSchema("rating_binary", dtype=np.int32, tags=[Tags.TARGET]),
        ]
    )


def test_list_columns_become_merlin_values_and_offsets(schema):
    frame = pd.DataFrame(
        {
            "user_id": [3, 4, 5],
            "genres": [np.array([1, 2, 3]), np.array([7]), np.array([], dtype=np.int64)],
            "item_count": [0.5, -1.25, 2.0],
            "rating_binary": [1, 0, 1],
        }
    )
    tensors = encode_frame(frame, schema)
    assert tensors["genres__values"].shape == (3, 3)
    assert tensors["genres__lengths"].tolist() == [[3], [1], [0]]
    assert all(array.shape[0] == 3 for array in tensors.values())  # rows gather by id

    inputs = model_inputs(tensors, ["user_id", "genres__values", "genres__offsets", "item_count"])
    assert "rating_binary" not in inputs  # only the model's inputs
    assert inputs["user_id"].tolist() == [3, 4, 5]
    assert inputs["genres__values"].tolist() == [1, 2, 3, 7]
    assert inputs["genres__offsets"].tolist() == [0, 3, 4, 4]
    np.testing.assert_array_equal(inputs["item_count"], frame["item_count"])


def test_python_model_config_declares_everything_explicitly():
    cfg = ServingConfig(max_batch_size=64, instance_count=2, keep_versions=3)
    text = python_model_config("m", "retrieval", cfg)
    assert 'backend: "python"' in text
    assert "max_batch_size: 64" in text
    assert 'input { name: "user_id" data_type: TYPE_INT64 dims: [ 1 ] }' in text
    assert 'input { name: "k" data_type: TYPE_INT32 dims: [ 1 ] }' in text
    assert 'name: "exclude_seen" data_type: TYPE_BOOL dims: [ 1 ] optional: true' in text
    assert 'output { name: "item_ids" data_type: TYPE_INT64 dims: [ -1 ] }' in text
    assert "count: 2 kind: KIND_CPU" in text
    assert "version_policy { latest { num_versions: 3 } }" in text
    assert "dynamic_batching { max_queue_delay_microseconds: 0 }" in text
    assert 'string_value: "retrieval"' in text


def test_recommend_gets_its_own_instance_count():
    cfg = ServingConfig(instance_count=1, recommend_instance_count=3)
    assert "count: 3 kind: KIND_CPU" in python_model_config("m", "recommend", cfg)
    for stage in ("ranking", "retrieval", "similar"):
        assert "count: 1 kind: KIND_CPU" in python_model_config("m", stage, cfg)


def test_config_is_rewritten_only_when_it_changes(tmp_path):
    model = tmp_path / "recflow_ranking"
    model.mkdir()
    _write_config(model, "ranking", ServingConfig(), False)
    config = model / "config.pbtxt"
    inode = config.stat().st_ino  # a rewrite renames a new file into place
    _write_config(model, "ranking", ServingConfig(), False)
    assert config.stat().st_ino == inode
    _write_config(model, "ranking", ServingConfig(instance_count=2), False)
    assert config.stat().st_ino != inode
    assert "count: 2 kind: KIND_CPU" in config.read_text()


def test_fewer_than_two_kept_versions_are_rejected():
    with pytest.raises(ValueError):
        ServingConfig(keep_versions=1)


def test_next_version_counts_across_all_models(tmp_path):
    endpoint = EndpointNames("recflow")
    assert next_version(tmp_path, endpoint) == 1
    (tmp_path / endpoint.model("ranking") / "3").mkdir(parents=True)
    (tmp_path / endpoint.model("ranking") / ".4.staging-x").mkdir()  # not a version
    assert next_version(tmp_path, endpoint) == 4


@pytest.mark.parametrize(
    ("k", "message"), [([5, 6], "equal"), ([0, 0], "between"), ([1001, 1001], "between")]
)
def test_k_must_be_one_sane_value_per_request(k, message):
    with pytest.raises(BadRequest, match=message):
        _request_k({"k": np.array(k).reshape(-1, 1)}, 2, 1000)
    assert _request_k({"k": np.array([[7], [7]])}, 2, 1000) == 7


def test_the_config_names_each_versions_candidate(tmp_path):
    model = tmp_path / "recflow_recommend"
    for version in (1, 2, 3):
        (model / str(version)).mkdir(parents=True)
    # Version 1 as exported before the config file was renamed, 2 as exported now, 3 before
    # versions recorded their candidate.
    earlier = {"max_k": 100, "retrieval_candidates": 50, "ordering": {"ranker_weight": 1.0}}
    (model / "1" / "ranking.json").write_text(
        json.dumps({**earlier, "candidate": "20261201T030000Z-aaaaaa"})
    )
    config = VersionConfig(max_k=100, retrieval_candidates=50, candidate="20261202T030000Z-bbbbbb")
    (model / "2" / "version.json").write_text(config.model_dump_json())
    (model / "3" / "ranking.json").write_text(json.dumps(earlier))
    _write_config(model, "recommend", ServingConfig(), False)
    text = (model / "config.pbtxt").read_text()
    assert 'key: "recflow_candidate_v1" value { string_value: "20261201T030000Z-aaaaaa" }' in text
    assert 'key: "recflow_candidate_v2" value { string_value: "20261202T030000Z-bbbbbb" }' in text
    assert "recflow_candidate_v3" not in text
