"""Every input of every endpoint with a wrong dtype and a wrong rank, a batch beyond
``max_batch_size``, a negative k, a k beyond ``max_k`` and one beyond the catalogue: a clear
INVALID_ARGUMENT (or, for k beyond the catalogue, the documented padded answer), and the server
stays healthy, which is checked after each request. The cases are generated from the exported
contracts (serving.repository.CONTRACTS), so a new input gets its cases without editing this."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import numpy as np
import pandas as pd
import pytest

from recflow_client import RecflowClient, TritonRequestError
from serving.repository import CONTRACTS, K, TensorSpec

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

WRONG_DTYPE = {
    np.dtype("int64"): np.float32,
    np.dtype("int32"): np.int64,
    np.dtype("bool"): np.int32,
}
ID_VALUE = 1


@dataclass(frozen=True)
class Case:
    stage: str
    change: str
    input: str | None = None
    k: int | None = None


def _value(spec: TensorSpec, k: int) -> object:
    return k if spec.name == K.name else (False if spec.dtype == np.dtype("bool") else ID_VALUE)


def good_inputs(stage: str, rows: int = 1, k: int = 3) -> dict[str, np.ndarray]:
    inputs, _ = CONTRACTS[stage]
    return {
        spec.name: np.full((rows, 1), _value(spec, k), dtype=spec.dtype)
        for spec in inputs
        if not spec.optional or rows == 1
    }


def outputs_of(stage: str) -> list[str]:
    return [spec.name for spec in CONTRACTS[stage][1]]


def cases() -> list[Case]:
    found = []
    for stage, (inputs, _) in CONTRACTS.items():
        for spec in inputs:
            found += [Case(stage, "dtype", spec.name), Case(stage, "rank", spec.name)]
        found.append(Case(stage, "huge-batch"))
        if any(spec.name == K.name for spec in inputs):
            found += [Case(stage, "negative-k", k=-1), Case(stage, "k-above-max", k=10**6)]
    return found


CASES = cases()


def bad_request(case: Case, max_batch_size: int) -> dict[str, np.ndarray]:
    if case.change == "huge-batch":
        return good_inputs(case.stage, rows=max_batch_size + 1)
    if case.k is not None:
        return good_inputs(case.stage, k=case.k)
    inputs = good_inputs(case.stage)
    array = inputs[case.input]
    if case.change == "dtype":
        inputs[case.input] = array.astype(WRONG_DTYPE[array.dtype])
    else:  # rank: one dimension too many
        inputs[case.input] = array.reshape(1, 1, 1)
    return inputs


def assert_healthy(client: RecflowClient, stage: str) -> None:
    assert client.server_ready()
    answer = client.infer(client.model_prefix + "_" + stage, good_inputs(stage), outputs_of(stage))
    assert all(len(array) == 1 for array in answer.values())


@pytest.mark.parametrize(
    "case", CASES, ids=[f"{c.stage}-{c.change}{'-' + c.input if c.input else ''}" for c in CASES]
)
def test_bad_input_is_refused_and_the_server_stays_healthy(
    case: Case, server, client: RecflowClient, observations
) -> None:
    inputs = bad_request(case, server.config.max_batch_size)
    with pytest.raises(TritonRequestError) as refused:
        client.infer(client.model_prefix + "_" + case.stage, inputs, outputs_of(case.stage))
    code = refused.value.code.name if refused.value.code else None
    seen = observations.setdefault("grpc_bad_input", {})
    message = refused.value.message
    seen[f"{case.stage} {case.change} {case.input or ''}"] = f"{code}: {message[:120]}"
    assert refused.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.message.strip()
    assert_healthy(client, case.stage)


@pytest.mark.parametrize("stage", [s for s, (ins, _) in CONTRACTS.items() if K in ins])
def test_k_beyond_the_catalogue_is_the_padded_catalogue(
    stage: str, published, server, client: RecflowClient
) -> None:
    catalogue = len(pd.read_parquet(published.retrieval.item_embeddings))
    k = min(catalogue + 50, server.config.max_k)
    assert k > catalogue
    model = client.model_prefix + "_" + stage
    answer = client.infer(model, good_inputs(stage, k=k), outputs_of(stage))
    ids = answer["item_ids"].reshape(-1)
    # The catalogue, best first: k is capped at its size (docs/serving.md).
    assert ids.shape == (catalogue,)
    real = ids[ids >= 0]
    assert 0 < len(real) <= catalogue and len(set(real.tolist())) == len(real)
    assert (ids[len(real) :] == -1).all()  # the padding comes last
    assert_healthy(client, stage)
