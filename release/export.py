"""A registered candidate's export: the one the gate made, installed by trial serving and by
every publish; one version of every endpoint, by serving/repository.py."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from recflow.artifacts import ExportedCandidate
from recflow.config import ServingConfig
from recflow.registry import CandidateRecord, Registry
from serving.repository import EndpointNames, export_candidate


def exported_candidate(
    registry: Registry, record: CandidateRecord, cfg: ServingConfig
) -> ExportedCandidate:
    """The candidate's export; a candidate registered before exports were kept (no
    ``bundles/<id>/``) is exported now, once, from the artifacts its record points at."""
    exported = registry.exported(record.id)
    if exported is not None:
        return exported
    return export_candidate(
        record.id,
        registry.candidate(record),
        pd.read_parquet(registry.seen_file(record.id)),
        cfg,
        registry.exported_dir(record.id),
    )


def version_dirs(repo: Path, cfg: ServingConfig, version: int, stages) -> dict[str, Path]:
    """Each endpoint's directory of ``version`` in ``repo``, by stage (``ranking``, ...)."""
    names = EndpointNames(cfg.model_prefix)
    return {stage: repo / names.model(stage) / str(version) for stage in stages}
