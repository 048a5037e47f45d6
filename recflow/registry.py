"""The local model registry: every candidate's lineage, gate decision, trial and publications.

Records and their store only; what changes what serves (publish, promote, rollback) is the
release stage's (release/publish.py), which calls :meth:`Registry.locked` and the save methods.

Layout under ``paths.registry_dir`` (docs/registry.md)::

    state.json                      which candidate Triton serves, its version, the history
    candidates/<id>/record.json     lineage, metrics, gate thresholds and decision, trial, events
    candidates/<id>/trial_sample.parquet   held-out pairs and the in-process scores they must get
    candidates/<id>/schema.pbtxt    the feature schema the model was trained on
    candidates/<id>/seen.parquet    raw user_id, item_id pairs the serving endpoints treat as
                                    already seen (every interaction of the candidate's dataset,
                                    each user's in time order)
    bundles/<id>/                   the candidate's endpoints, exported once by the gate
                                    (recflow.artifacts.ExportedCandidate): what trial serving
                                    and every publish, promote and rollback install

A candidate directory is created atomically; ``record.json`` and ``state.json`` are replaced
atomically, under the publish lock, record first: ``state.json`` is the commit point.

A record keeps pointers to its FeatureSet and model directories (:meth:`Registry.candidate`
loads them): a candidate registered before exports were kept is exported from them once, on
its first promote or rollback.
Importing this module stays cheap (no TensorFlow): the CLI lists and shows records with it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import re
import subprocess
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict

from recflow.artifacts import (
    MANIFEST,
    Candidate,
    ExportedCandidate,
    FeatureSet,
    ItemItemSource,
    RankingModel,
    RetrievalModel,
)
from recflow.atomic import atomic_dir, write_text_atomic
from recflow.config import Settings
from recflow.locks import exclusive_lock, publish_lock_file
from recflow.vocabulary import ITEM_ITEM, RANKING, RETRIEVAL

if TYPE_CHECKING:
    import pandas as pd

# Letters, digits, '_' and '-' only: an id is a directory name and can never climb out of it.
CANDIDATE_ID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_-]{0,79}$")
BLESSED, NOT_BLESSED = "BLESSED", "NOT_BLESSED"
RECORD, STATE, SAMPLE, SCHEMA = "record.json", "state.json", "trial_sample.parquet", "schema.pbtxt"
SEEN = "seen.parquet"


class RegistryError(RuntimeError):
    """A registry operation that cannot be done: unknown candidate, nothing to roll back, ..."""


def check_id(candidate_id: str) -> str:
    if not CANDIDATE_ID.fullmatch(candidate_id):
        raise ValueError(f"{candidate_id!r} is not a candidate id (letters, digits, _ and -)")
    return candidate_id


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True)


class GateCheck(_Record):
    """One line of a gate decision: a metric's value against one bound."""

    metric: str
    # absolute | change | relative change | baseline
    kind: str
    value: float
    op: Literal[">=", "<="]
    bound: float
    passed: bool
    # Where the bound comes from, e.g. "blessed X 0.8012 - 0.0100".
    reference: str = ""

    def __str__(self) -> str:
        verdict = "pass" if self.passed else "FAIL"
        source = f" ({self.kind}: {self.reference})" if self.reference else f" ({self.kind})"
        return f"{self.metric} = {self.value:.4f} {self.op} {self.bound:.4f}{source}: {verdict}"


class GateDecision(_Record):
    checks: tuple[GateCheck, ...]
    # The blessed candidate the change bounds were measured against; None on a first run.
    compared_with: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def blessed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def status(self) -> str:
        return BLESSED if self.blessed else NOT_BLESSED

    @property
    def failed(self) -> tuple[GateCheck, ...]:
        return tuple(check for check in self.checks if not check.passed)

    def report(self) -> str:
        return "\n".join([*(str(check) for check in self.checks), *self.notes])

    def markdown(self) -> str:
        """The gate's Prefect artifact: the verdict, then one row per check."""
        verdict = "**BLESSED**" if self.blessed else f"**NOT_BLESSED** ({len(self.failed)} failed)"
        against = f"blessed `{self.compared_with}`" if self.compared_with else "no blessed model"
        lines = [
            f"# Evaluation gate: {verdict}",
            "",
            f"Compared with {against}, both scored on the candidate's held-out rows.",
            "",
            "| metric | check | value | bound | result |",
            "| --- | --- | --- | --- | --- |",
        ]
        for c in self.checks:
            result = "pass" if c.passed else "**FAIL**"
            source = f"{c.kind}: {c.reference}" if c.reference else c.kind
            lines.append(
                f"| {c.metric} | {source} | {c.value:.4f} | {c.op} {c.bound:.4f} | {result} |"
            )
        return "\n".join([*lines, "", *(f"- {note}" for note in self.notes)]).rstrip()


class Evaluation(_Record):
    """Metrics of the candidate and of the blessed model, scored on the same held-out rows."""

    rows: int
    # "<kind>.<metric>", e.g. "ranking.auc".
    metrics: dict[str, float]
    baseline_metrics: dict[str, float]
    compared_with: str | None = None
    blessed_metrics: dict[str, float] = {}
    # The item-item baselines (EASE, item-kNN) fitted on the same training rows, their lists
    # scored on the same held-out users: baseline -> top-k metric ("recall@10") -> value.
    baselines: dict[str, dict[str, float]] = {}

    def strongest(self, metric: str) -> tuple[str, float] | None:
        """The item-item baseline with the best ``metric`` (a list metric, "recall@10"), and
        its value; None when no baseline was fitted."""
        scored = {name: values[metric] for name, values in self.baselines.items()}
        return max(scored.items(), key=lambda pair: pair[1], default=None)


class TrialResult(_Record):
    """Trial serving (InfraValidator): did the candidate load in Triton and answer as in-process?"""

    passed: bool
    at: datetime
    rows: int = 0
    max_abs_diff: float | None = None
    startup_s: float | None = None
    log_file: Path | None = None
    message: str = ""


class Event(_Record):
    at: datetime
    action: Literal["publish", "promote", "rollback"]
    candidate: str
    version: int
    # The candidate that served before this event.
    previous: str | None
    reason: str


class Lineage(_Record):
    run_id: str
    variant: str
    data_checksum: str
    features_fingerprint: str
    # Content hashes: the fitted NVTabular workflow and the feature schema, as trained on.
    workflow_sha256: str
    schema_sha256: str
    features_config: dict
    params: dict
    code_version: str


class Contest(_Record):
    """Champion and challengers: the candidates one run trained, judged on the same held-out
    rows; of those the gate blessed, the best by ``prefer`` is the one to publish."""

    # Candidate ids, champion (``ranking.architecture``) first.
    contenders: tuple[str, ...]
    # The held-out metric that ranks the blessed ones, e.g. "ranking.auc".
    prefer: str
    # None when the gate blessed none of them.
    chosen: str | None


class CandidateRecord(_Record):
    id: str
    created: datetime
    features: Path
    # Model kind -> the model's artifact directory (its manifest.json is there).
    models: dict[str, Path]
    lineage: Lineage
    evaluation: Evaluation
    # The metrics training reported, on the same split, through the training data loader.
    training_metrics: dict[str, float]
    # The gate configuration the decision applied, as it was then.
    gate: dict
    decision: GateDecision
    # Its run's contest (the same in each contender's record); None in records from before.
    contest: Contest | None = None
    trial: TrialResult | None = None
    events: tuple[Event, ...] = ()

    @property
    def status(self) -> str:
        return self.decision.status

    @property
    def ranking_architecture(self) -> str:
        # Records from before the architectures (#20) were DLRMs.
        return self.lineage.params.get(RANKING, {}).get("architecture", "dlrm")


class RegistryState(_Record):
    serving: str | None = None
    version: int | None = None
    history: tuple[Event, ...] = ()


class Registry:
    """Records under ``root``; every change happens under the repository's publish lock."""

    def __init__(self, root: Path, lock_file: Path, lock_timeout_s: float):
        self.root = Path(root)
        self.lock_file = lock_file
        self.lock_timeout_s = lock_timeout_s

    @classmethod
    def from_settings(cls, settings: Settings) -> Registry:
        return cls(
            settings.paths.registry_dir,
            publish_lock_file(settings.paths.triton_repo),
            settings.orchestration.publish_lock_timeout_s,
        )

    @property
    def candidates_dir(self) -> Path:
        return self.root / "candidates"

    def path(self, candidate_id: str) -> Path:
        return self.candidates_dir / check_id(candidate_id)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with exclusive_lock(self.lock_file, self.lock_timeout_s):
            yield

    def ids(self) -> list[str]:
        """Candidate ids, oldest first (run ids sort by time)."""
        if not self.candidates_dir.is_dir():
            return []
        return sorted(
            entry.name
            for entry in self.candidates_dir.iterdir()
            if CANDIDATE_ID.fullmatch(entry.name) and (entry / RECORD).is_file()
        )

    def load(self, candidate_id: str) -> CandidateRecord:
        file = self.path(candidate_id) / RECORD
        if not file.is_file():
            raise RegistryError(f"no candidate {candidate_id} in {self.root}")
        return CandidateRecord.model_validate_json(file.read_text())

    def records(self) -> list[CandidateRecord]:
        return [self.load(candidate_id) for candidate_id in self.ids()]

    def state(self) -> RegistryState:
        file = self.root / STATE
        if not file.is_file():
            return RegistryState()
        return RegistryState.model_validate_json(file.read_text())

    def serving(self) -> CandidateRecord | None:
        """The candidate Triton serves: the last blessed one, which new candidates must match."""
        serving = self.state().serving
        return None if serving is None else self.load(serving)

    def add(
        self, record: CandidateRecord, sample: pd.DataFrame, seen: pd.DataFrame, schema_file: Path
    ) -> None:
        with atomic_dir(self.path(record.id)) as staging:
            sample.to_parquet(staging / SAMPLE, index=False)
            seen.to_parquet(staging / SEEN, index=False)
            (staging / SCHEMA).write_bytes(schema_file.read_bytes())
            (staging / RECORD).write_text(record.model_dump_json(indent=2))

    def save(self, record: CandidateRecord) -> None:
        write_text_atomic(self.path(record.id) / RECORD, record.model_dump_json(indent=2))

    def save_state(self, state: RegistryState) -> None:
        write_text_atomic(self.root / STATE, state.model_dump_json(indent=2))

    def trial_sample(self, candidate_id: str) -> pd.DataFrame:
        import pandas as pd

        return pd.read_parquet(self.path(candidate_id) / SAMPLE)

    def seen_file(self, candidate_id: str) -> Path:
        """Parquet of raw ``user_id``, ``item_id`` pairs: the items each user has already seen."""
        return self.path(candidate_id) / SEEN

    def exported_dir(self, candidate_id: str) -> Path:
        """Where the candidate's endpoints are exported once (``ExportedCandidate``)."""
        return self.root / "bundles" / check_id(candidate_id)

    def exported(self, candidate_id: str) -> ExportedCandidate | None:
        """The candidate's export, or None for a record from before exports were kept."""
        directory = self.exported_dir(candidate_id)
        return ExportedCandidate.load(directory) if (directory / MANIFEST).is_file() else None

    def candidate(self, record: CandidateRecord) -> Candidate:
        """The feature set and models ``record`` points at, loaded to be exported again."""
        for path in (record.features, *record.models.values()):
            if not path.is_dir():
                raise RegistryError(f"candidate {record.id}: {path} is gone")
        retrieval, item_item = record.models.get(RETRIEVAL), record.models.get(ITEM_ITEM)
        return Candidate(
            FeatureSet.load(record.features),
            RankingModel.load(record.models[RANKING]),
            None if retrieval is None else RetrievalModel.load(retrieval),
            record.lineage.run_id,
            None if item_item is None else ItemItemSource.load(item_item),
        )

    def record_trial(self, candidate_id: str, result: TrialResult) -> CandidateRecord:
        with self.locked():
            record = self.load(candidate_id).model_copy(update={"trial": result})
            self.save(record)
        return record


def now() -> datetime:
    return datetime.now(timezone.utc)


def tree_sha256(root: Path) -> str:
    """A content hash of a directory: relative paths and bytes of every file, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def code_version() -> str:
    """The package version, plus the git commit (and whether the tree is dirty) when known."""
    version = importlib.metadata.version("recflow")
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=here, capture_output=True, text=True, timeout=30, check=True
        )
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version}+g{commit}{'.dirty' if dirty else ''}"
