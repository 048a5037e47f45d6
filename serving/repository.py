"""Export trained artifacts as a Triton model repository (layout in docs/layout.md).

The ranking endpoint is a Triton ``ensemble`` of two Python-backend models that load in the
bundled CPU server: ``<prefix>_ranking_features`` (lookup + NVTabular) and
``<prefix>_ranking_dlrm`` (the SavedModel). Each publish writes a new numeric version in every
model, each version directory built in a staging directory and renamed into place, the
ensemble last, so Triton never sees half a version.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from merlin.schema import Schema
from merlin.schema.io.tensorflow_metadata import TensorflowMetadata

from models.dlrm import RankingModel
from recflow.atomic import atomic_dir, write_text_atomic
from recflow.config import ServingConfig
from serving import runtime
from tasks.features import FeatureSet, serving_workflow

TRITON_MODEL_SOURCE = Path(__file__).with_name("triton_model.py")
CATALOG = "catalog.parquet"
# Ensemble-internal tensor names get a prefix: the features stage passes user_id/item_id on,
# and an ensemble tensor may be produced only once.
STAGE_PREFIX = "features."
_TRITON_TYPES = {
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

    def pbtxt(self) -> str:
        dims = ", ".join(str(d) for d in self.dims)
        return f'{{ name: "{self.name}" data_type: {_TRITON_TYPES[self.dtype]} dims: [ {dims} ] }}'


@dataclass(frozen=True)
class RankingEndpoint:
    """Names of the models that make up one ranking endpoint."""

    prefix: str

    @property
    def ensemble(self) -> str:
        return f"{self.prefix}_ranking"

    @property
    def features(self) -> str:
        return f"{self.prefix}_ranking_features"

    @property
    def ranker(self) -> str:
        return f"{self.prefix}_ranking_dlrm"

    @property
    def all_models(self) -> tuple[str, str, str]:
        # Load order: an ensemble loads only once its steps are there.
        return (self.features, self.ranker, self.ensemble)


RAW_INPUT_SPECS = tuple(TensorSpec(name, np.dtype("int64")) for name in runtime.RAW_INPUTS)
SCORE_SPEC = TensorSpec(runtime.SCORE, np.dtype("float32"))


def stage_tensor_specs(schema: Schema) -> list[TensorSpec]:
    specs = []
    for name in schema.column_names:
        dtype = np.dtype(schema[name].dtype.to_numpy)
        if schema[name].is_list:
            specs.append(TensorSpec(f"{name}__values", dtype, (-1,)))
            specs.append(TensorSpec(f"{name}__lengths", np.dtype("int64")))
        else:
            specs.append(TensorSpec(name, dtype))
    return specs


def python_model_config(
    name: str,
    stage: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    cfg: ServingConfig,
) -> str:
    return "\n".join(
        [
            f'name: "{name}"',
            'backend: "python"',
            f"max_batch_size: {cfg.max_batch_size}",
            *(f"input {spec.pbtxt()}" for spec in inputs),
            *(f"output {spec.pbtxt()}" for spec in outputs),
            f"instance_group [ {{ count: {cfg.instance_count} kind: KIND_CPU }} ]",
            "dynamic_batching { }",
            "version_policy { latest { num_versions: 1 } }",
            f'parameters {{ key: "recflow_stage" value {{ string_value: "{stage}" }} }}',
            "",
        ]
    )


def ensemble_config(
    endpoint: RankingEndpoint, stage_specs: list[TensorSpec], cfg: ServingConfig
) -> str:
    def mapping(kind: str, names, prefix: str = "") -> str:
        return " ".join(f'{kind} {{ key: "{n}" value: "{prefix}{n}" }}' for n in names)

    def step(model: str, *maps: str) -> str:
        return f'  step {{ model_name: "{model}" model_version: -1 {" ".join(maps)} }}'

    stage_names = [spec.name for spec in stage_specs]
    raw_inputs = mapping("input_map", [spec.name for spec in RAW_INPUT_SPECS])
    stage_outputs = mapping("output_map", stage_names, STAGE_PREFIX)
    stage_inputs = mapping("input_map", stage_names, STAGE_PREFIX)
    score_output = mapping("output_map", [runtime.SCORE])
    return "\n".join(
        [
            f'name: "{endpoint.ensemble}"',
            'platform: "ensemble"',
            f"max_batch_size: {cfg.max_batch_size}",
            *(f"input {spec.pbtxt()}" for spec in RAW_INPUT_SPECS),
            f"output {SCORE_SPEC.pbtxt()}",
            "ensemble_scheduling {",
            step(endpoint.features, raw_inputs, stage_outputs),
            step(endpoint.ranker, stage_inputs, score_output),
            "}",
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
    features: FeatureSet, ranking: RankingModel, repo: Path, cfg: ServingConfig
) -> int:
    """Write a new version of the ranking endpoint into ``repo``; return its number."""
    endpoint = RankingEndpoint(cfg.model_prefix)
    version = next_version(repo, endpoint)
    workflow = serving_workflow(_load_workflow(features.workflow_dir))
    stage_specs = stage_tensor_specs(workflow.output_schema)

    with atomic_dir(repo / endpoint.features / str(version)) as staging:
        shutil.copy(TRITON_MODEL_SOURCE, staging / "model.py")
        workflow.save(str(staging / runtime.WORKFLOW_DIR))
        shutil.copytree(features.lookup_dir, staging / runtime.LOOKUP_DIR)
    write_text_atomic(
        repo / endpoint.features / "config.pbtxt",
        python_model_config(endpoint.features, "features", list(RAW_INPUT_SPECS), stage_specs, cfg),
    )

    with atomic_dir(repo / endpoint.ranker / str(version)) as staging:
        shutil.copy(TRITON_MODEL_SOURCE, staging / "model.py")
        shutil.copytree(ranking.model_dir, staging / runtime.MODEL_DIR)
        TensorflowMetadata.from_merlin_schema(workflow.output_schema).to_proto_text_file(
            str(staging)
        )
    write_text_atomic(
        repo / endpoint.ranker / "config.pbtxt",
        python_model_config(endpoint.ranker, "ranker", stage_specs, [SCORE_SPEC], cfg),
    )

    with atomic_dir(repo / endpoint.ensemble / str(version)):
        pass  # Triton wants a version directory even for an ensemble.
    write_text_atomic(
        repo / endpoint.ensemble / "config.pbtxt", ensemble_config(endpoint, stage_specs, cfg)
    )
    _write_catalog(features, repo)
    return version


def _write_catalog(features: FeatureSet, repo: Path) -> None:
    """Item ids the CLI and clients may rank (``catalog.parquet``, column ``item_id``)."""
    items = pd.read_parquet(features.lookup_dir / "items.parquet", columns=["item_id"])
    staging = repo / f".{CATALOG}.tmp"
    items.to_parquet(staging, index=False)
    staging.replace(repo / CATALOG)


def _load_workflow(path: Path):
    import nvtabular as nvt

    return nvt.Workflow.load(str(path))
