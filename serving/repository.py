"""Export trained artifacts as a Triton model repository (layout in docs/layout.md).

Every endpoint is one Python-backend model that loads in the bundled CPU server, and each of
its version directories holds all the files that version needs (serving/runtime.py runs them):

* ``<prefix>_ranking``: ``user_id``, ``item_id`` -> ``score`` (workflow + DLRM);
* ``<prefix>_retrieval``: ``user_id``, ``k`` [, ``exclude_seen``] -> ``item_ids``, ``scores``;
* ``<prefix>_recommend``: ``user_id``, ``k`` -> ``item_ids``, ``scores`` (retrieve, then order
  by the ranking model's ``ordering`` policy, models/ordering.py);
* ``<prefix>_similar``: ``item_id``, ``k`` -> ``item_ids``, ``scores``.

The last three exist once a retrieval model is exported. Each publish writes version N+1 of
every endpoint, each directory built in a staging directory and renamed into place.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from merlin.schema.io.tensorflow_metadata import TensorflowMetadata

from models.dlrm import RankingModel
from recflow.atomic import atomic_dir, write_text_atomic
from recflow.config import ServingConfig
from recflow.trust import load_workflow
from serving import runtime
from tasks.features import FeatureSet, serving_workflow

TRITON_MODEL_SOURCE = Path(__file__).with_name("triton_model.py")
CATALOG = "catalog.parquet"
_TRITON_TYPES = {
    np.dtype("bool"): "TYPE_BOOL",
    np.dtype("int32"): "TYPE_INT32",
    np.dtype("int64"): "TYPE_INT64",
    np.dtype("float32"): "TYPE_FP32",
    np.dtype("float64"): "TYPE_FP64",
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: np.dtype
    dims: tuple[int, ...] = (1,)
    optional: bool = False

    def pbtxt(self) -> str:
        dims = ", ".join(str(d) for d in self.dims)
        optional = " optional: true" if self.optional else ""
        return (
            f'{{ name: "{self.name}" data_type: {_TRITON_TYPES[self.dtype]} dims: [ {dims} ]'
            f"{optional} }}"
        )


INT64, INT32, FP32 = np.dtype("int64"), np.dtype("int32"), np.dtype("float32")
USER = TensorSpec(runtime.USER_ID, INT64)
ITEM = TensorSpec(runtime.ITEM_ID, INT64)
K = TensorSpec(runtime.K, INT32)
EXCLUDE_SEEN = TensorSpec(runtime.EXCLUDE_SEEN, np.dtype("bool"), optional=True)
RANKED = [TensorSpec(runtime.ITEM_IDS, INT64, (-1,)), TensorSpec(runtime.SCORES, FP32, (-1,))]
# Each endpoint's stage (serving/runtime.py STAGES), inputs and outputs.
CONTRACTS = {
    "ranking": ([USER, ITEM], [TensorSpec(runtime.SCORE, FP32)]),
    "retrieval": ([USER, K, EXCLUDE_SEEN], RANKED),
    "recommend": ([USER, K], RANKED),
    "similar": ([ITEM, K], RANKED),
}


def published_stages(with_retrieval: bool) -> tuple[str, ...]:
    """The endpoints a publish writes: every one, or without a retrieval model ranking alone."""
    return tuple(CONTRACTS) if with_retrieval else ("ranking",)


@dataclass(frozen=True)
class RankingEndpoint:
    """Names of recflow's Triton models for one ``model_prefix``."""

    prefix: str

    def model(self, endpoint: str) -> str:
        return f"{self.prefix}_{endpoint}"

    @property
    def ensemble(self) -> str:
        """The ranking endpoint (the name is kept for callers of the earlier ensemble)."""
        return self.model("ranking")

    @property
    def all_models(self) -> tuple[str, ...]:
        """Every endpoint's model, as a publish with a retrieval model writes them."""
        return tuple(self.model(endpoint) for endpoint in CONTRACTS)


def python_model_config(name: str, stage: str, cfg: ServingConfig) -> str:
    inputs, outputs = CONTRACTS[stage]
    return "\n".join(
        [
            f'name: "{name}"',
            'backend: "python"',
            f"max_batch_size: {cfg.max_batch_size}",
            *(f"input {spec.pbtxt()}" for spec in inputs),
            *(f"output {spec.pbtxt()}" for spec in outputs),
            f"instance_group [ {{ count: {cfg.instance_count} kind: KIND_CPU }} ]",
            f"dynamic_batching {{ max_queue_delay_microseconds: {cfg.max_queue_delay_us} }}",
            f"version_policy {{ latest {{ num_versions: {cfg.keep_versions} }} }}",
            f'parameters {{ key: "recflow_stage" value {{ string_value: "{stage}" }} }}',
            "",
        ]
    )


def next_version(repo: Path, endpoint: RankingEndpoint) -> int:
    versions = [
        int(child.name)
        for model in endpoint.all_models
        if (repo / model).is_dir()
        for child in (repo / model).iterdir()
        if child.is_dir() and child.name.isdigit()
    ]
    return max(versions, default=0) + 1


def export_ranking(
    features: FeatureSet,
    ranking: RankingModel,
    repo: Path,
    cfg: ServingConfig,
    retrieval=None,
    interactions: Path | None = None,
) -> int:
    """Write a new version of every endpoint into ``repo``; return its number.

    Without ``retrieval`` (a ``models.two_tower.RetrievalModel``) only ``ranking`` is written.
    ``interactions`` (parquet with ``user_id``, ``item_id``) are the items each user has seen,
    which retrieval may exclude and recommend always excludes; the retrieval model's training
    split is the natural choice.
    """
    endpoint = RankingEndpoint(cfg.model_prefix)
    version = next_version(repo, endpoint)
    for stage in published_stages(retrieval is not None):
        name = endpoint.model(stage)
        with atomic_dir(repo / name / str(version)) as staging:
            shutil.copy(TRITON_MODEL_SOURCE, staging / "model.py")
            _write_stage_files(staging, stage, features, ranking, retrieval, interactions, cfg)
        write_text_atomic(repo / name / "config.pbtxt", python_model_config(name, stage, cfg))
    _write_catalog(features, repo)
    return version


def _write_stage_files(staging: Path, stage, features, ranking, retrieval, interactions, cfg):
    settings = {
        "max_k": cfg.max_k,
        "retrieval_candidates": cfg.retrieval_candidates,
        # The final ordering recommend applies, as measured on validation at training time.
        runtime.ORDERING: {"ranker_weight": ranking.ordering.ranker_weight},
    }
    (staging / runtime.RANKING_CONFIG).write_text(json.dumps(settings))
    if stage in ("ranking", "retrieval", "recommend"):
        workflow = serving_workflow(load_workflow(features.workflow_dir))
        workflow.save(str(staging / runtime.WORKFLOW_DIR))
        shutil.copytree(features.lookup_dir, staging / runtime.LOOKUP_DIR)
    if stage in ("ranking", "recommend"):
        shutil.copytree(ranking.model_dir, staging / runtime.MODEL_DIR)
        TensorflowMetadata.from_merlin_schema(workflow.output_schema).to_proto_text_file(
            str(staging)
        )
    if stage in ("retrieval", "recommend"):
        shutil.copytree(retrieval.query_encoder_dir, staging / runtime.QUERY_ENCODER_DIR)
        shutil.copytree(retrieval.query_schema_dir, staging / runtime.QUERY_SCHEMA_DIR)
        seen = pd.read_parquet(interactions, columns=[runtime.USER_ID, runtime.ITEM_ID])
        seen.drop_duplicates().to_parquet(staging / runtime.SEEN, index=False)
    if stage != "ranking":
        shutil.copy(retrieval.item_embeddings, staging / runtime.ITEM_EMBEDDINGS)


def _write_catalog(features: FeatureSet, repo: Path) -> None:
    """Item ids the CLI and clients may rank (``catalog.parquet``, column ``item_id``)."""
    items = pd.read_parquet(features.lookup_dir / "items.parquet", columns=["item_id"])
    staging = repo / f".{CATALOG}.tmp"
    items.to_parquet(staging, index=False)
    staging.replace(repo / CATALOG)
