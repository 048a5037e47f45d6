"""Exporting a candidate for a release step: into a scratch repository (the gate, trial
serving) or the live one (publish). One version of every endpoint, by serving/repository.py."""

from __future__ import annotations

from pathlib import Path

from recflow.config import ServingConfig
from recflow.registry import CandidateRecord, Registry
from serving.repository import RankingEndpoint, export_ranking, published_stages


def export_candidate(
    registry: Registry, record: CandidateRecord, repo: Path, cfg: ServingConfig
) -> int:
    """Export a registered candidate as a new version of ``repo``; return the version."""
    features, ranking, retrieval = registry.candidate(record)
    return export_ranking(features, ranking, repo, cfg, retrieval, registry.seen_file(record.id))


def version_dirs(repo: Path, cfg: ServingConfig, version: int, retrieval: bool) -> dict[str, Path]:
    """Each endpoint's directory of ``version`` in ``repo``, by stage (``ranking``, ...)."""
    endpoint = RankingEndpoint(cfg.model_prefix)
    return {
        stage: repo / endpoint.model(stage) / str(version) for stage in published_stages(retrieval)
    }
