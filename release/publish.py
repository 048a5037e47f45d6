"""Publishing: the only code that changes what Triton serves.

``publish`` serves a freshly gated candidate, ``promote`` any blessed one (after trial serving
it), ``rollback`` the one that served before. Each installs the candidate's export (the gate's,
``bundles/<id>/`` in the registry) as a new version of the live repository under the
registry's publish lock, then records the event and the new
registry state (``state.json`` last: the commit point, recflow/registry.py).
"""

from __future__ import annotations

from typing import Literal

from prefect import task

from recflow.artifacts import ExportedCandidate
from recflow.config import ReleaseConfig
from recflow.registry import (
    BLESSED,
    CandidateRecord,
    Event,
    Registry,
    RegistryError,
    RegistryState,
    check_id,
    now,
)
from release.export import exported_candidate
from release.trial import infra_validate
from serving.repository import install


def publish(
    registry: Registry,
    record: CandidateRecord,
    candidate: ExportedCandidate,
    cfg: ReleaseConfig,
    reason: str,
) -> Event:
    """Publish a freshly gated candidate's export: blessed, trial-served, judged against what
    serves now."""
    with registry.locked():
        record, state = registry.load(record.id), registry.state()
        _require_publishable(record, cfg)
        if state.serving != record.decision.compared_with:
            raise RegistryError(
                f"candidate {record.id} was judged against {record.decision.compared_with}, "
                f"but {state.serving} serves now: gate it again, or promote it with a reason"
            )
        return _republish(registry, record, candidate, state, cfg, "publish", reason)


def promote(registry: Registry, candidate_id: str, cfg: ReleaseConfig, reason: str) -> Event:
    """Publish any blessed candidate, after trial serving it (unless trial serving is off)."""
    record = registry.load(candidate_id)
    _require_blessed(record)  # before paying for a server start
    candidate = exported_candidate(registry, record, cfg.serving)
    if cfg.trial.enabled:
        infra_validate(registry, record, candidate, cfg)
    with registry.locked():
        record = registry.load(candidate_id)
        _require_publishable(record, cfg)
        state = registry.state()
        return _republish(registry, record, candidate, state, cfg, "promote", reason)


def rollback(registry: Registry, cfg: ReleaseConfig, reason: str, to: str | None = None) -> Event:
    """Serve again the candidate that served before the current one (or ``to``, which must have
    served before). No trial serving: it served these very artifacts already."""
    with registry.locked():
        state = registry.state()
        if state.serving is None:
            raise RegistryError("nothing is serving, so there is nothing to roll back")
        served = [event.candidate for event in state.history]
        if to is None:
            earlier = [candidate for candidate in served if candidate != state.serving]
            if not earlier:
                raise RegistryError(f"{state.serving} is the only candidate that ever served")
            to = earlier[-1]
        elif check_id(to) not in served:
            raise RegistryError(f"candidate {to} never served; promote it instead")
        record = registry.load(to)
        candidate = exported_candidate(registry, record, cfg.serving)
        return _republish(registry, record, candidate, state, cfg, "rollback", reason)


def _require_blessed(record: CandidateRecord) -> None:
    if record.status != BLESSED:
        raise RegistryError(f"candidate {record.id} is {record.status}: only blessed ones serve")


def _require_publishable(record: CandidateRecord, cfg: ReleaseConfig) -> None:
    """Blessed, and not failed trial serving; passed it, unless trial serving is off."""
    _require_blessed(record)
    trial = record.trial
    if trial is not None and not trial.passed:
        raise RegistryError(f"candidate {record.id} failed trial serving: {trial.message}")
    if cfg.trial.enabled and trial is None:
        raise RegistryError(f"candidate {record.id} has not been through trial serving")


def _republish(
    registry: Registry,
    record: CandidateRecord,
    candidate: ExportedCandidate,
    state: RegistryState,
    cfg: ReleaseConfig,
    action: Literal["publish", "promote", "rollback"],
    reason: str,
) -> Event:
    # The caller holds the lock. The export becomes a new version, which Triton serves once its
    # directory is renamed into place; the record and then the state follow it.
    version = install(candidate, cfg.paths.triton_repo, cfg.serving)
    event = Event(
        at=now(),
        action=action,
        candidate=record.id,
        version=version,
        previous=state.serving,
        reason=reason,
    )
    registry.save(record.model_copy(update={"events": (*record.events, event)}))
    registry.save_state(
        RegistryState(serving=record.id, version=version, history=(*state.history, event))
    )
    return event


@task(name="publish", task_run_name="publish-{record.id}")
def publish_task(
    registry: Registry,
    record: CandidateRecord,
    candidate: ExportedCandidate,
    cfg: ReleaseConfig,
    reason: str,
) -> Event:
    return publish(registry, record, candidate, cfg, reason)
