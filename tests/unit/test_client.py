"""The client's transport-independent logic, without a server: error mapping for gRPC and HTTP,
the one retry loop every request goes through, metadata reading and the shared signatures.
Against a real Triton: tests/integration/test_triton_server.py and test_serving.py."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from types import SimpleNamespace

import grpc
import pytest
from tritonclient.utils import InferenceServerException

from recflow.config import ServingConfig
from recflow_client import AsyncRecflowClient, HttpRecflowClient, RecflowClient, TritonRequestError
from recflow_client.client import BACKOFF_INITIAL_S
from recflow_client.http import error_from_http

CLOSED = "127.0.0.1:1"  # nothing is ever sent there: the fakes below stand in for tritonclient


def grpc_error(code: grpc.StatusCode) -> InferenceServerException:
    # What tritonclient.grpc raises: the status as str(grpc.StatusCode.X).
    return InferenceServerException(msg=f"{code.name} said the server", status=str(code))


def http_error(status: int) -> InferenceServerException:
    # What tritonclient.http raises for a non-200 answer: the status code as a string.
    return InferenceServerException(msg=f"HTTP {status} said the server", status=str(status))


class Flaky:
    """A tritonclient method that fails with each of ``failures`` in turn, then answers."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.calls: list[dict[str, object]] = []

    def __call__(self, *args: object, **kwargs: object) -> str:
        self.calls.append(kwargs)
        if self.failures:
            raise self.failures.pop(0)
        return "answer"


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, grpc.StatusCode.INVALID_ARGUMENT),
        (404, grpc.StatusCode.NOT_FOUND),
        (500, grpc.StatusCode.INTERNAL),
        (503, grpc.StatusCode.UNAVAILABLE),
        (418, grpc.StatusCode.UNKNOWN),
    ],
)
def test_http_statuses_are_read_as_the_canonical_codes(status: int, code: grpc.StatusCode) -> None:
    error = error_from_http(http_error(status), "recflow_ranking")

    assert error.code is code and error.http_status == status
    assert error.message == f"HTTP {status} said the server"
    assert str(error) == (
        f"model 'recflow_ranking': {code.name} (HTTP {status}): HTTP {status} said the server"
    )


@pytest.mark.parametrize(
    ("failure", "code"),
    [
        (ConnectionRefusedError(111, "Connection refused"), grpc.StatusCode.UNAVAILABLE),
        (ConnectionResetError(104, "Connection reset by peer"), grpc.StatusCode.UNAVAILABLE),
        (TimeoutError("timed out"), grpc.StatusCode.DEADLINE_EXCEEDED),
    ],
)
def test_an_unreachable_http_server_is_unavailable_as_over_grpc(
    failure: OSError, code: grpc.StatusCode
) -> None:
    error = error_from_http(failure, None)

    assert error.code is code and error.http_status is None


def test_errors_that_are_not_the_transports_pass_through() -> None:
    assert error_from_http(ValueError("a bug"), None) is None
    assert RecflowClient._error(ValueError("a bug"), None) is None


def test_grpc_statuses_are_read_from_tritonclients_text() -> None:
    error = RecflowClient._error(grpc_error(grpc.StatusCode.NOT_FOUND), "m")

    assert error.code is grpc.StatusCode.NOT_FOUND and error.http_status is None
    assert str(error) == "model 'm': NOT_FOUND: NOT_FOUND said the server"


RETRYABLE = {
    RecflowClient: grpc_error(grpc.StatusCode.UNAVAILABLE),
    HttpRecflowClient: ConnectionRefusedError(111, "Connection refused"),
}
FINAL = {
    RecflowClient: grpc_error(grpc.StatusCode.INVALID_ARGUMENT),
    HttpRecflowClient: http_error(400),
}


@pytest.mark.parametrize("client_class", [RecflowClient, HttpRecflowClient])
def test_unavailable_is_retried_with_backoff_then_answered(client_class) -> None:
    method = Flaky(RETRYABLE[client_class], RETRYABLE[client_class])
    with client_class(CLOSED, timeout_s=5.0) as client:
        started = time.monotonic()
        assert client._request("m", method, "m") == "answer"

    assert len(method.calls) == 3
    # Backoff 0.1 s, then 0.2 s.
    assert time.monotonic() - started >= 3 * BACKOFF_INITIAL_S


@pytest.mark.parametrize("client_class", [RecflowClient, HttpRecflowClient])
def test_any_other_error_ends_the_call_at_once(client_class) -> None:
    method = Flaky(FINAL[client_class])
    with client_class(CLOSED, timeout_s=5.0) as client:
        with pytest.raises(TritonRequestError) as refused:
            client._request("m", method, "m")

    assert len(method.calls) == 1
    assert refused.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.__cause__ is FINAL[client_class]


@pytest.mark.parametrize("client_class", [RecflowClient, HttpRecflowClient])
def test_retries_stop_at_the_retry_count_and_at_the_deadline(client_class) -> None:
    method = Flaky(*[RETRYABLE[client_class]] * 50)
    with client_class(CLOSED, timeout_s=5.0, retries=2) as counted:
        with pytest.raises(TritonRequestError) as unavailable:
            counted._request("m", method, "m")
    assert len(method.calls) == 3 and unavailable.value.code is grpc.StatusCode.UNAVAILABLE

    method = Flaky(*[RETRYABLE[client_class]] * 50)
    with client_class(CLOSED, timeout_s=0.5) as hurried:
        started = time.monotonic()
        with pytest.raises(TritonRequestError):
            hurried._request("m", method, "m")
    assert time.monotonic() - started < 0.5
    assert len(method.calls) == 3  # 0.1 s and 0.2 s of backoff fit, 0.4 s more do not


def test_only_grpc_bounds_each_attempt_by_the_remaining_deadline() -> None:
    # tritonclient.http takes no per-call timeout: passing client_timeout would be a TypeError.
    grpc_method, http_method = Flaky(), Flaky()
    with RecflowClient(CLOSED, timeout_s=5.0) as over_grpc:
        over_grpc._request("m", grpc_method, "m")
    with HttpRecflowClient(CLOSED, timeout_s=5.0) as over_http:
        over_http._request("m", http_method, "m")

    (grpc_call,), (http_call,) = grpc_method.calls, http_method.calls
    assert 4.9 < grpc_call["client_timeout"] <= 5.0
    assert http_call == {}


def test_the_async_client_retries_through_the_same_attempts() -> None:
    calls = 0

    async def flaky_infer(*args: object, **kwargs: object) -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise grpc_error(grpc.StatusCode.UNAVAILABLE)
        return "answer"

    async def retried() -> str:
        async with AsyncRecflowClient(CLOSED, timeout_s=5.0) as client:
            return await client._request("m", flaky_infer, "m")

    assert asyncio.run(retried()) == "answer" and calls == 3


def test_both_transports_read_string_ids_from_the_model_metadata() -> None:
    grpc_metadata = SimpleNamespace(inputs=[SimpleNamespace(datatype="BYTES")])
    http_metadata = {"inputs": [{"name": "user_id", "datatype": "INT64", "shape": [-1, 1]}]}
    with RecflowClient(CLOSED) as over_grpc, HttpRecflowClient(CLOSED) as over_http:
        assert over_grpc._takes_strings(grpc_metadata)
        assert not over_http._takes_strings(http_metadata)
        http_metadata["inputs"][0]["datatype"] = "BYTES"
        assert over_http._takes_strings(http_metadata)


def test_from_config_takes_each_transports_port() -> None:
    config = ServingConfig(host="10.0.0.5", grpc_port=9001, http_port=9000, max_batch_size=7)

    with RecflowClient.from_config(config) as over_grpc:
        assert over_grpc.url == "10.0.0.5:9001" and over_grpc.max_batch_size == 7
    with HttpRecflowClient.from_config(config, retries=0) as over_http:
        assert over_http.url == "10.0.0.5:9000" and over_http.retries == 0


def test_the_defaults_are_those_of_a_default_server() -> None:
    config = ServingConfig()
    with RecflowClient(f"{config.host}:{config.grpc_port}") as client:
        assert client.timeout_s == config.request_timeout_s
        assert client.model_prefix == config.model_prefix
        assert client.max_batch_size == config.max_batch_size


PUBLIC = ["infer", "score", "recommend", "retrieve", "similar", "takes_strings"]


@pytest.mark.parametrize("method", PUBLIC)
def test_every_client_takes_the_same_arguments(method: str) -> None:
    def signature(client_class: type) -> inspect.Signature:
        function: Callable[..., object] = getattr(client_class, method)
        return inspect.signature(function)

    assert signature(HttpRecflowClient) == signature(RecflowClient) == signature(AsyncRecflowClient)
    if method == "recommend":
        parameters = signature(RecflowClient).parameters
        assert list(parameters) == ["self", "user_id", "k", "candidates", "exclude", "history"]
        assert parameters["candidates"].kind is inspect.Parameter.KEYWORD_ONLY
