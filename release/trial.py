"""Trial serving, after TFX's InfraValidator: prove a candidate loads and answers in real Triton.

The candidate's export (the gate's, ``recflow.artifacts.ExportedCandidate``) is installed into a
scratch repository (never the live one) and served by the bundled ``tritonserver`` on free
loopback ports. After a few warm-up requests it scores the
held-out pairs the gate sampled (``trial_sample.parquet`` in the registry, one cold pair
included), and every served score must equal the in-process score the gate computed for that
pair within ``trial.atol``. The retrieval, recommend and similar endpoints answer top-k requests
for a few of those users and items (retrieval and recommend once more with a request-time
history, :func:`probe_requests`), which must equal what the same version directories answer
in-process: the same ids, scores within ``trial.atol``. The server starts with no model and
loads the endpoints one by one through its API, a progress bar advancing as each is ready (the
wait of the trial: each stub loads its version directory). The server is stopped whatever
happens. A failure to start, load, answer or agree blocks publishing: :func:`infra_validate`
records it and raises :class:`TrialServingFailed`. ``release.publish.promote`` runs it too.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import task

from recflow.artifacts import ExportedCandidate, FeatureSet
from recflow.config import ReleaseConfig
from recflow.external_ids import EXTERNAL_ID
from recflow.progress import run_each
from recflow.registry import CandidateRecord, Registry, TrialResult, now
from recflow.vocabulary import (
    EXCLUDE_SEEN_INPUT,
    HISTORY_INPUT,
    ITEM_IDS_OUTPUT,
    ITEM_INPUT,
    K_INPUT,
    RANKING,
    RETRIEVAL,
    SCORE_OUTPUT,
    SCORES_OUTPUT,
    USER_INPUT,
)
from recflow_client import RecflowClient, TritonRequestError
from release.export import version_dirs
from serving.repository import CONTRACTS, EndpointNames, install
from serving.runtime import load_stage
from serving.server import TritonServer, TritonServerError

FREE_PORTS = {"grpc_port": 0, "http_port": 0, "metrics_port": 0}

log = logging.getLogger(__name__)


class TrialServingFailed(RuntimeError):
    """The candidate did not load, answer, or agree with its in-process scores in Triton."""

    def __init__(self, candidate_id: str, result: TrialResult):
        self.candidate_id = candidate_id
        self.result = result
        super().__init__(
            f"candidate {candidate_id} failed trial serving, nothing published: {result.message}"
        )


def trial_serve(
    record: CandidateRecord, candidate: ExportedCandidate, sample: pd.DataFrame, cfg: ReleaseConfig
) -> TrialResult:
    """Serve the candidate's export in a scratch Triton and compare its answers for ``sample``
    (``user_id``, ``item_id``, ``score``) with the in-process scores."""
    endpoint = EndpointNames(cfg.serving.model_prefix)
    sample = _as_requested(sample, FeatureSet.load(record.features))
    log_file = cfg.paths.logs_dir / f"trial-{record.id}-tritonserver.log"
    cfg.paths.cache_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="trial-", dir=cfg.paths.cache_dir) as scratch:
        repo = Path(scratch)
        version = install(candidate, repo, cfg.serving)
        exported = version_dirs(repo, cfg.serving, version, candidate.stages)
        models = [endpoint.model(stage) for stage in exported]
        # No model at start: they are loaded one by one below, so the bar can follow them.
        server = TritonServer(
            repo,
            cfg.serving.model_copy(update=FREE_PORTS),
            log_file=log_file,
            backend_cache_dir=cfg.paths.cache_dir,
        )
        # The trial checks answers, not latency: on a busy machine the first requests may take
        # longer than a serving deadline.
        patient = server.config.model_copy(
            update={"request_timeout_s": cfg.serving.startup_timeout_s}
        )
        try:
            with server, RecflowClient.from_config(patient) as client:
                # The wait of the trial: one bar over the loads, advancing as each is ready.
                title = f"trial serving {record.id}"
                run_each(title, models, server.load, doing="loading", done="models loaded")
                startup_s = time.perf_counter() - started
                log.info(
                    "trial serving %s: %s up in %.0f s", record.id, ", ".join(models), startup_s
                )
                served = _served_scores(client, sample, cfg.trial.warmup_requests)
                disagreement = _ranked_disagreement(client, endpoint, exported, sample, cfg)
        except (TritonServerError, TimeoutError, TritonRequestError) as error:
            return TrialResult(passed=False, at=now(), log_file=log_file, message=str(error))
    expected = sample[SCORE_OUTPUT].to_numpy(np.float32)
    result = {"at": now(), "rows": len(sample), "startup_s": startup_s, "log_file": log_file}
    if served.shape != expected.shape or not np.isfinite(served).all():
        return TrialResult(
            passed=False,
            message=f"served {served.shape} scores (finite: {np.isfinite(served).all()}) "
            f"for {expected.shape} pairs",
            **result,
        )
    diff = np.abs(served - expected)
    worst = int(diff.argmax())
    if diff[worst] > cfg.trial.atol:
        message = (
            f"user {sample[USER_INPUT].iloc[worst]} item {sample[ITEM_INPUT].iloc[worst]}: "
            f"served {served[worst]:.6f}, in-process {expected[worst]:.6f}"
        )
    else:
        others = [endpoint.model(stage) for stage in exported if stage != RANKING]
        message = disagreement or (
            f"{len(sample)} served scores equal the in-process ones within {cfg.trial.atol}"
            f", and {', '.join(others) or 'no other endpoint'} answered as in-process (with and"
            " without a request-time history where they read one)"
        )
    passed = bool(diff[worst] <= cfg.trial.atol) and disagreement is None
    return TrialResult(passed=passed, max_abs_diff=float(diff[worst]), message=message, **result)


def _as_requested(sample: pd.DataFrame, features: FeatureSet) -> pd.DataFrame:
    """The sample's ids as an app sends them: the dataset's strings (UTF-8) where its ids are
    strings; an id no table names (the cold pair) gets a string no table holds either."""
    if not features.external_ids:
        return sample
    sample = sample.copy()
    for column in (USER_INPUT, ITEM_INPUT):
        names = pd.read_parquet(features.external_ids_file(column))
        named = names.set_index(column)[EXTERNAL_ID].reindex(sample[column])
        cold = "recflow-cold-" + sample[column].astype(str)
        sample[column] = [name.encode("utf-8") for name in named.fillna(cold.set_axis(named.index))]
    return sample


def _id_array(values) -> np.ndarray:
    """[rows, 1] ids: int64, or UTF-8 bytes (TYPE_STRING) for string ids."""
    array = np.asarray(values).reshape(-1, 1)
    return array.astype(object) if array.dtype.kind in "OSU" else array.astype(np.int64)


def _ranked_disagreement(
    client: RecflowClient,
    endpoint: EndpointNames,
    exported: dict[str, Path],  # version directories by stage
    sample: pd.DataFrame,
    cfg: ReleaseConfig,
) -> str | None:
    """Ask each top-k endpoint about a few sampled users (items, for ``similar``) and compare
    with the same version directory run in-process; the first disagreement, or None."""
    for stage, version_dir in exported.items():
        if stage == RANKING:
            continue  # its scores were compared with the gate's already
        name = endpoint.model(stage)
        local = load_stage(stage, version_dir)
        for value, request in probe_requests(
            stage, sample, cfg.trial.ranked_rows, cfg.trial.ranked_k
        ):
            expected = local(request)
            served = client.infer(name, request, list(expected))
            served_ids, expected_ids = served[ITEM_IDS_OUTPUT], expected[ITEM_IDS_OUTPUT]
            same = np.array_equal(served_ids, expected_ids) and all(
                np.array_equal(served[output], expected[output])
                for output in expected
                if output not in (ITEM_IDS_OUTPUT, SCORES_OUTPUT)
            )
            if not same or not np.allclose(
                served[SCORES_OUTPUT], expected[SCORES_OUTPUT], atol=cfg.trial.atol, rtol=0
            ):
                with_history = " with a history" if HISTORY_INPUT in request else ""
                return (
                    f"{name} for {value}{with_history}: served {served_ids.ravel()[:5].tolist()}"
                    f"..., in-process {expected_ids.ravel()[:5].tolist()}..."
                )
    return None


def probe_requests(
    stage: str, sample: pd.DataFrame, n: int, k: int
) -> list[tuple[str, dict[str, np.ndarray]]]:
    """The top-k requests trial serving sends ``stage``, each with what it asks about.

    ``n`` of the sample's users, the cold one (the sample's last pair) included, or ``n`` of
    its known items for ``similar`` (which rejects an item without an embedding). Where the
    endpoint reads a request-time history, each user is asked again with one, so the history
    path is served = in-process too: a known user's sampled held-out items (the events since
    training an app would send), the cold user's the first sampled items (a user the version
    never saw, ordered by a history), and each ends with the cold item, which the version
    does not know (ignored and counted)."""
    inputs = {spec.name for spec in CONTRACTS[stage][0]}
    known = sample.iloc[:-1]
    # Column by column: a row of the frame would be floats (the scores'), not ids.
    cold_user, cold_item = sample[USER_INPUT].iloc[-1], sample[ITEM_INPUT].iloc[-1]
    if ITEM_INPUT in inputs:
        return [
            (f"item {item}", _top_k_request(ITEM_INPUT, item, k))
            for item in known[ITEM_INPUT].unique()[:n]
        ]
    users = [*known[USER_INPUT].drop_duplicates()[: n - 1], cold_user]
    probes = []
    for user in users:
        request = _top_k_request(USER_INPUT, user, k)
        if stage == RETRIEVAL:
            request[EXCLUDE_SEEN_INPUT] = np.array([[True]])
        probes.append((f"user {user}", request))
        if HISTORY_INPUT in inputs:
            own = known.loc[known[USER_INPUT] == user, ITEM_INPUT]
            events = own if len(own) else known[ITEM_INPUT]
            history = [*events.unique()[:k], cold_item]
            probes.append((f"user {user}", request | {HISTORY_INPUT: _id_array(history).T}))
    return probes


def _top_k_request(key: str, value, k: int) -> dict[str, np.ndarray]:
    return {key: _id_array([value]), K_INPUT: np.array([[k]], np.int32)}


def _served_scores(client: RecflowClient, sample: pd.DataFrame, warmup: int) -> np.ndarray:
    pairs = {name: _id_array(sample[name].to_numpy()) for name in (USER_INPUT, ITEM_INPUT)}
    step = client.max_batch_size
    batches = [
        {name: column[start : start + step] for name, column in pairs.items()}
        for start in range(0, len(sample), step)
    ]
    for _ in range(warmup):
        client.infer(client.ranking_model, batches[0], [SCORE_OUTPUT])
    scores = [
        client.infer(client.ranking_model, batch, [SCORE_OUTPUT])[SCORE_OUTPUT].reshape(-1)
        for batch in batches
    ]
    return np.concatenate(scores)


def infra_validate(
    registry: Registry, record: CandidateRecord, candidate: ExportedCandidate, cfg: ReleaseConfig
) -> CandidateRecord:
    """Trial-serve a registered candidate's export, record the outcome, and raise if it failed;
    returns the record with its trial."""
    result = trial_serve(record, candidate, registry.trial_sample(record.id), cfg)
    record = registry.record_trial(record.id, result)
    if not result.passed:
        raise TrialServingFailed(record.id, result)
    return record


@task(name="trial-serving", task_run_name="trial-serving-{record.id}")
def trial_task(
    registry: Registry, record: CandidateRecord, candidate: ExportedCandidate, cfg: ReleaseConfig
) -> CandidateRecord:
    return infra_validate(registry, record, candidate, cfg)
