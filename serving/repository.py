"""Export trained artifacts as a Triton model repository (layout in docs/layout.md).

Every endpoint is one Python-backend model that loads in the bundled CPU server, and each of
its version directories holds all the files that version needs (serving/runtime.py runs them):

* ``<prefix>_ranking``: ``user_id``, ``item_id`` -> ``score`` (feature rows + the ranker as ONNX);
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
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recflow.artifacts import (
    Candidate,
    ExportedCandidate,
    FeatureSet,
    VersionConfig,
)
from recflow.atomic import atomic_dir, atomic_file, write_text_atomic
from recflow.config import ServingConfig
from recflow.external_ids import EXTERNAL_ID
from recflow.vocabulary import (
    EXCLUDE_SEEN_INPUT,
    HISTORY_INPUT,
    HISTORY_UNKNOWN_OUTPUT,
    ITEM_ID,
    ITEM_IDS_OUTPUT,
    ITEM_INPUT,
    K_INPUT,
    MODEL_NAME,
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
from serving.export import write_queries, write_ranker, write_rows
from serving.item_index import ITEM_INDEX, export_index
from tasks.features import ServingFeatures

log = logging.getLogger(__name__)

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
    history = TensorSpec(HISTORY_INPUT, ids, (-1,), optional=True)
    with_history = [*ranked, TensorSpec(HISTORY_UNKNOWN_OUTPUT, INT64)]
    return {
        RANKING: ([user, item], [TensorSpec(SCORE_OUTPUT, FP32)]),
        RETRIEVAL: ([user, K, EXCLUDE_SEEN, history], with_history),
        RECOMMEND: ([user, K, history], with_history),
        SIMILAR: ([item, K], ranked),
    }


CONTRACTS = contracts()


def published_stages(with_retrieval: bool) -> tuple[str, ...]:
    """The endpoints a publish writes: every one, or without a retrieval model ranking alone."""
    return tuple(CONTRACTS) if with_retrieval else (RANKING,)


@dataclass(frozen=True)
class EndpointNames:
    """Names of recflow's Triton models for one ``model_prefix``."""

    prefix: str

    def model(self, endpoint: str) -> str:
        return MODEL_NAME.format(prefix=self.prefix, endpoint=endpoint)

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


def next_version(repo: Path, endpoint: EndpointNames) -> int:
    versions = [
        int(child.name)
        for model in endpoint.all_models
        if (repo / model).is_dir()
        for child in (repo / model).iterdir()
        if child.is_dir() and child.name.isdigit()
    ]
    return max(versions, default=0) + 1


def export_candidate(
    candidate_id: str,
    candidate: Candidate,
    seen: pd.DataFrame,
    cfg: ServingConfig,
    target: Path,
) -> ExportedCandidate:
    """Export a candidate's endpoints once into ``target`` (atomically, replacing an older
    export of the same candidate); :func:`install` makes it a version of a repository.

    Without a retrieval model only ``ranking`` is written. ``seen`` (``user_id``, ``item_id``)
    holds the items each user has seen, which retrieval may exclude and recommend always
    excludes (and reads as each user's history where the candidate has an item-item source).
    Raises ``serving.export.ExportMismatch`` (and writes nothing) when the ONNX ranking model
    does not score the held-out rows like Keras.
    """
    started = time.perf_counter()
    stages = published_stages(candidate.retrieval is not None)
    with atomic_dir(target, replace=True) as staging:
        directories = {stage: staging / stage for stage in stages}
        for directory in directories.values():
            directory.mkdir()
        _write_versions(directories, staging, candidate_id, candidate, seen, cfg)
        _write_catalog(candidate.features, staging / CATALOG)
        exported = ExportedCandidate(
            path=target,
            candidate=candidate_id,
            stages=stages,
            external_ids=candidate.features.external_ids,
            export_seconds=time.perf_counter() - started,
        )
        exported.save_manifest(staging)
    # The release path counts these lines: one per contender and run (docs/registry.md).
    log.info(
        "exported candidate %s once: %s in %.1f s",
        candidate_id,
        ", ".join(stages),
        exported.export_seconds,
    )
    return exported


def install(exported: ExportedCandidate, repo: Path, cfg: ServingConfig) -> int:
    """Copy an exported candidate into ``repo`` as version N+1 of each of its endpoints; return
    N+1.

    The set is published as one: every endpoint's version is copied into its staging
    directory first, and only then are they renamed into place, ranking first.
    """
    names = EndpointNames(cfg.model_prefix)
    version = next_version(repo, names)
    with contextlib.ExitStack() as renames:
        # Exits run last-in first-out: entering in reverse renames ranking first.
        for stage in reversed(exported.stages):
            staging = renames.enter_context(atomic_dir(repo / names.model(stage) / str(version)))
            # File by file rather than copytree, which gathers every failure into one
            # shutil.Error without an errno: a full disk must say ENOSPC.
            for file in exported.version_dir(stage).iterdir():
                shutil.copy2(file, staging / file.name)
    for stage in exported.stages:
        _write_config(repo / names.model(stage), stage, cfg, exported.external_ids)
    with atomic_file(repo / CATALOG) as catalog:
        catalog.write((exported.path / CATALOG).read_bytes())
    return version


# The files each endpoint's version directory holds besides model.py and version.json.
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

# The endpoints that search the item embeddings, and so the approximate index where the
# catalogue has one.
INDEXED_STAGES = (RETRIEVAL, RECOMMEND, SIMILAR)


def _write_versions(
    staging: dict[str, Path],
    work_root: Path,
    candidate_id: str,
    candidate: Candidate,
    seen: pd.DataFrame,
    cfg: ServingConfig,
) -> None:
    """Compute each file once, in a scratch directory inside the export's staging directory
    (removed with it if the export fails or is killed), then link it into every version
    directory that needs it: one copy on disk however many endpoints read it (at 1M items the
    embeddings and the index are 0.5 GB, which three copies made 1.5 GB). Nothing writes to
    an exported file afterwards; publishing copies them into the Triton repository."""
    features, ranking, retrieval = candidate.features, candidate.ranking, candidate.retrieval
    config = VersionConfig(
        max_k=cfg.max_k,
        max_history=cfg.max_history,
        retrieval_candidates=cfg.retrieval_candidates,
        # The final ordering recommend applies, as measured on validation at training time.
        ordering=ranking.ordering.served(),
        external_ids=features.external_ids,
        candidate=candidate_id,
    ).model_dump_json()
    work = work_root / ".export"
    work.mkdir()
    try:
        serving = ServingFeatures(features)
        user_rows = write_rows(serving, work)
        write_ranker(ranking, features, serving.output_schema, work / runtime.RANKER)
        if retrieval is not None:
            known_users = serving.known[USER_ID]
            write_queries(retrieval, known_users, user_rows, work / runtime.QUERIES)
            pairs = seen[[USER_ID, ITEM_ID]].drop_duplicates()
            pairs.to_parquet(work / runtime.SEEN, index=False)
            shutil.copy(retrieval.item_embeddings, work / runtime.ITEM_EMBEDDINGS)
            export_index(runtime.item_embeddings(work)[1], cfg, work / ITEM_INDEX)
        for stage, directory in staging.items():
            shutil.copy(TRITON_MODEL_SOURCE, directory / "model.py")
            (directory / runtime.VERSION_CONFIG).write_text(config)
            for name in STAGE_FILES[stage]:
                os.link(work / name, directory / name)
            if stage == RECOMMEND and candidate.item_item is not None:
                served = candidate.item_item.served_weights_file
                shutil.copy(served, directory / runtime.ITEM_ITEM)
            if stage in INDEXED_STAGES and (work / ITEM_INDEX).is_file():
                os.link(work / ITEM_INDEX, directory / ITEM_INDEX)
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
    configs = {
        int(version.name): runtime.version_config(version)
        for version in model_dir.iterdir()
        if version.name.isdigit()
        and any(
            (version / name).is_file()
            for name in (runtime.VERSION_CONFIG, runtime.EARLIER_VERSION_CONFIG)
        )
    }
    return {version: c.candidate for version, c in configs.items() if c.candidate}


def _write_catalog(features: FeatureSet, target: Path) -> None:
    """Item ids the CLI and clients may rank (``catalog.parquet``, column ``item_id``): the
    dataset's own, strings where they are strings."""
    items = pd.read_parquet(features.lookup_dir / "items.parquet", columns=[ITEM_ID])
    if features.external_ids:
        names = pd.read_parquet(features.external_ids_file(ITEM_ID))
        items = pd.DataFrame(
            {ITEM_ID: names.set_index(ITEM_ID)[EXTERNAL_ID].reindex(items[ITEM_ID])}
        )
    items.to_parquet(target, index=False)
