"""Export trained artifacts as a Triton model repository (layout in docs/layout.md).

Every endpoint is one Python-backend model that loads in the bundled CPU server, and each of
its version directories holds all the files that version needs (serving/runtime.py runs them):

* ``<prefix>_ranking``: ``user_id``, ``item_id`` -> ``score`` (feature rows + DLRM as ONNX);
* ``<prefix>_retrieval``: ``user_id``, ``k`` [, ``exclude_seen``] -> ``item_ids``, ``scores``;
* ``<prefix>_recommend``: ``user_id``, ``k`` -> ``item_ids``, ``scores`` (retrieve, then order
  by the ranking model's ``ordering`` policy, models/ordering.py);
* ``<prefix>_similar``: ``item_id``, ``k`` -> ``item_ids``, ``scores``.

The last three exist once a retrieval model is exported. Each publish writes version N+1 of
every endpoint: all directories are built in staging directories, then renamed into place.
What they hold is computed by serving/export.py.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recflow.artifacts import FeatureSet, RankingModel
from recflow.atomic import atomic_dir, write_text_atomic
from recflow.config import ServingConfig
from recflow.external_ids import EXTERNAL_ID
from recflow.vocabulary import (
    EXCLUDE_SEEN_INPUT,
    ITEM_ID,
    ITEM_IDS_OUTPUT,
    ITEM_INPUT,
    K_INPUT,
    RANKING,
    RECOMMEND,
    RETRIEVAL,
    SCORE_OUTPUT,
    SCORES_OUTPUT,
    SIMILAR,
    USER_ID,
    USER_INPUT,
)
from serving import runtime
from serving.export import ServingFeatures, write_queries, write_ranker, write_rows

TRITON_MODEL_SOURCE = Path(__file__).with_name("triton_model.py")
CATALOG = "catalog.parquet"
_TRITON_TYPES = {
    np.dtype("object"): "TYPE_STRING",
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
# Ids are TYPE_STRING where the dataset's are strings (FeatureSet.external_ids).
STRING = np.dtype("object")
K = TensorSpec(K_INPUT, INT32)
EXCLUDE_SEEN = TensorSpec(EXCLUDE_SEEN_INPUT, np.dtype("bool"), optional=True)


def contracts(external_ids: bool = False) -> dict[str, tuple[list[TensorSpec], list[TensorSpec]]]:
    """Each endpoint's stage (serving/runtime.py STAGES), inputs and outputs; a publish writes
    them in this order."""
    ids = STRING if external_ids else INT64
    user, item = TensorSpec(USER_INPUT, ids), TensorSpec(ITEM_INPUT, ids)
    ranked = [TensorSpec(ITEM_IDS_OUTPUT, ids, (-1,)), TensorSpec(SCORES_OUTPUT, FP32, (-1,))]
    return {
        RANKING: ([user, item], [TensorSpec(SCORE_OUTPUT, FP32)]),
        RETRIEVAL: ([user, K, EXCLUDE_SEEN], ranked),
        RECOMMEND: ([user, K], ranked),
        SIMILAR: ([item, K], ranked),
    }


CONTRACTS = contracts()


def published_stages(with_retrieval: bool) -> tuple[str, ...]:
    """The endpoints a publish writes: every one, or without a retrieval model ranking alone."""
    return tuple(CONTRACTS) if with_retrieval else (RANKING,)


@dataclass(frozen=True)
class RankingEndpoint:
    """Names of recflow's Triton models for one ``model_prefix``."""

    prefix: str

    def model(self, endpoint: str) -> str:
        return f"{self.prefix}_{endpoint}"

    @property
    def all_models(self) -> tuple[str, ...]:
        """Every endpoint's model, as a publish with a retrieval model writes them."""
        return tuple(self.model(endpoint) for endpoint in CONTRACTS)


def instance_count(stage: str, cfg: ServingConfig) -> int:
    return cfg.recommend_instance_count if stage == RECOMMEND else cfg.instance_count


# A config parameter per version: the candidate (= training run id) that version serves, so an
# app can log which model answered (the response names the version).
CANDIDATE_PARAMETER = "recflow_candidate_v{version}"


def python_model_config(
    name: str,
    stage: str,
    cfg: ServingConfig,
    external_ids: bool = False,
    candidates: dict[int, str] | None = None,
) -> str:
    inputs, outputs = contracts(external_ids)[stage]
    served = sorted((candidates or {}).items())
    return "\n".join(
        [
            f'name: "{name}"',
            'backend: "python"',
            f"max_batch_size: {cfg.max_batch_size}",
            *(f"input {spec.pbtxt()}" for spec in inputs),
            *(f"output {spec.pbtxt()}" for spec in outputs),
            f"instance_group [ {{ count: {instance_count(stage, cfg)} kind: KIND_CPU }} ]",
            f"dynamic_batching {{ max_queue_delay_microseconds: {cfg.max_queue_delay_us} }}",
            f"version_policy {{ latest {{ num_versions: {cfg.keep_versions} }} }}",
            f'parameters {{ key: "recflow_stage" value {{ string_value: "{stage}" }} }}',
            *(
                f'parameters {{ key: "{CANDIDATE_PARAMETER.format(version=version)}" '
                f'value {{ string_value: "{candidate}" }} }}'
                for version, candidate in served
            ),
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

    Without ``retrieval`` (a ``models.retrieval.RetrievalModel``) only ``ranking`` is written.
    ``interactions`` (parquet with ``user_id``, ``item_id``) are the items each user has seen,
    which retrieval may exclude and recommend always excludes; the retrieval model's training
    split is the natural choice. Raises ``serving.export.ExportMismatch`` (and publishes
    nothing) when the ONNX ranking model does not score the held-out rows like Keras.

    The set is published as one: every endpoint's version is built in its staging directory
    first, and only then are they renamed into place, one after the other.
    """
    endpoint = RankingEndpoint(cfg.model_prefix)
    version = next_version(repo, endpoint)
    stages = published_stages(retrieval is not None)
    with contextlib.ExitStack() as renames:
        # Exits run last-in first-out: entering in reverse renames ranking first.
        staging = {
            stage: renames.enter_context(atomic_dir(repo / endpoint.model(stage) / str(version)))
            for stage in reversed(stages)
        }
        _write_versions(staging, features, ranking, retrieval, interactions, cfg)
    for stage in stages:
        _write_config(repo / endpoint.model(stage), stage, cfg, features.external_ids)
    _write_catalog(features, repo)
    return version


# The files each endpoint's version directory holds besides model.py and ranking.json.
STAGE_FILES = {
    RANKING: (runtime.USER_ROWS, runtime.ITEM_ROWS, runtime.RANKER),
    RETRIEVAL: (runtime.QUERIES, runtime.SEEN, runtime.ITEM_EMBEDDINGS),
    RECOMMEND: (
        runtime.USER_ROWS,
        runtime.ITEM_ROWS,
        runtime.RANKER,
        runtime.QUERIES,
        runtime.SEEN,
        runtime.ITEM_EMBEDDINGS,
    ),
    SIMILAR: (runtime.ITEM_EMBEDDINGS,),
}


def _write_versions(staging: dict[str, Path], features, ranking, retrieval, interactions, cfg):
    """Compute each file once, in a scratch directory inside a staging directory (removed with
    it if the export fails or is killed), then copy it into every version that needs it."""
    settings = {
        "max_k": cfg.max_k,
        "retrieval_candidates": cfg.retrieval_candidates,
        # The final ordering recommend applies, as measured on validation at training time.
        runtime.ORDERING: {"ranker_weight": ranking.ordering.ranker_weight},
        runtime.EXTERNAL_IDS: features.external_ids,
        runtime.CANDIDATE: ranking.path.parent.name,  # the training run: the candidate's id
    }
    work = next(iter(staging.values())) / ".export"
    work.mkdir()
    try:
        serving = ServingFeatures(features)
        user_rows = write_rows(serving, work)
        write_ranker(ranking, features, serving.output_schema, work / runtime.RANKER)
        if retrieval is not None:
            known_users = serving.known[USER_ID]
            write_queries(retrieval, known_users, user_rows, work / runtime.QUERIES)
            seen = pd.read_parquet(interactions, columns=[USER_ID, ITEM_ID])
            seen.drop_duplicates().to_parquet(work / runtime.SEEN, index=False)
            shutil.copy(retrieval.item_embeddings, work / runtime.ITEM_EMBEDDINGS)
        for stage, directory in staging.items():
            shutil.copy(TRITON_MODEL_SOURCE, directory / "model.py")
            (directory / runtime.RANKING_CONFIG).write_text(json.dumps(settings))
            for name in STAGE_FILES[stage]:
                shutil.copy(work / name, directory / name)
            if features.external_ids and stage != RANKING:  # they answer with item ids
                shutil.copy(features.external_ids_file(ITEM_ID), directory)
    finally:
        shutil.rmtree(work)


def _write_config(model_dir: Path, stage: str, cfg: ServingConfig, external_ids: bool) -> None:
    """Write ``config.pbtxt`` only when its text changes (it names each version's candidate,
    so a publish changes it). Measured on Triton 2.51: an explicit load restarts every kept
    version, config changed or not (a light stub makes that a second's work)."""
    config = model_dir / "config.pbtxt"
    text = python_model_config(
        model_dir.name, stage, cfg, external_ids, version_candidates(model_dir)
    )
    if not config.is_file() or config.read_text() != text:
        write_text_atomic(config, text)


def version_candidates(model_dir: Path) -> dict[int, str]:
    """The candidate each version directory of ``model_dir`` serves (versions exported before
    the candidate was recorded have none)."""
    candidates = {}
    for version in model_dir.iterdir():
        settings = version / runtime.RANKING_CONFIG
        if version.name.isdigit() and settings.is_file():
            candidate = json.loads(settings.read_text()).get(runtime.CANDIDATE)
            if candidate:
                candidates[int(version.name)] = candidate
    return candidates


def _write_catalog(features: FeatureSet, repo: Path) -> None:
    """Item ids the CLI and clients may rank (``catalog.parquet``, column ``item_id``): the
    dataset's own, strings where they are strings."""
    items = pd.read_parquet(features.lookup_dir / "items.parquet", columns=[ITEM_ID])
    if features.external_ids:
        names = pd.read_parquet(features.external_ids_file(ITEM_ID))
        items = pd.DataFrame(
            {ITEM_ID: names.set_index(ITEM_ID)[EXTERNAL_ID].reindex(items[ITEM_ID])}
        )
    staging = repo / f".{CATALOG}.tmp"
    items.to_parquet(staging, index=False)
    staging.replace(repo / CATALOG)
