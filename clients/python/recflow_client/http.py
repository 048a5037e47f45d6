"""The HTTP/REST (KServe v2) transport: :class:`HttpRecflowClient`, the same methods as the gRPC
:class:`~recflow_client.client.RecflowClient` on Triton's HTTP port (``serving.http_port``).

For where gRPC is awkward: a proxy or load balancer that speaks HTTP/1.1 only, or an app that
already talks to Triton over REST. Requests are built and answers read by the same code as over
gRPC (``recflow_client.client``); only the connection, the errors and the metadata's form
differ. tritonclient's HTTP client runs on gevent (geventhttpclient) and, unlike the gRPC one,
is not thread-safe: use one client per thread.
"""

from __future__ import annotations

from typing import Any

import grpc
import tritonclient.http as httpclient
from geventhttpclient.response import HTTPParseError
from tritonclient.utils import InferenceServerException

from recflow_client.client import TritonRequestError, _BlockingClient

# Triton answers an error with the HTTP status its error code maps to (http_server.cc,
# HttpCodeFromError); a proxy in front may add others. Read back as the canonical codes, so
# that TritonRequestError.code means the same whichever transport carried the request.
HTTP_STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ALREADY_EXISTS,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    501: grpc.StatusCode.UNIMPLEMENTED,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def error_from_http(exc: BaseException, model: str | None) -> TritonRequestError | None:
    """An HTTP call's failure as a TritonRequestError, or None if it is not the transport's.

    Triton's own errors carry the response's status. A server that cannot be reached (refused,
    reset, closed while starting or stopping) is UNAVAILABLE, as over gRPC, and so retried;
    an attempt that ran out of time is DEADLINE_EXCEEDED.
    """
    if isinstance(exc, InferenceServerException):
        status = exc.status()
        http_status = int(status) if status and status.isdigit() else None
        code = HTTP_STATUS_CODES.get(http_status, grpc.StatusCode.UNKNOWN) if http_status else None
        return TritonRequestError(model, code, exc.message(), http_status)
    if isinstance(exc, TimeoutError):
        return TritonRequestError(model, grpc.StatusCode.DEADLINE_EXCEEDED, str(exc) or "timed out")
    if isinstance(exc, OSError | HTTPParseError):
        message = f"{type(exc).__name__}: {exc}"
        return TritonRequestError(model, grpc.StatusCode.UNAVAILABLE, message)
    return None


class HttpRecflowClient(_BlockingClient):
    """Blocking HTTP client, ``url`` being ``host:port`` of Triton's HTTP endpoint (no scheme).

    The same constructor, ``from_config`` (which takes ``http_port``), methods and errors as
    :class:`~recflow_client.client.RecflowClient`. tritonclient's HTTP client has no per-call
    deadline: each attempt is bounded by ``timeout_s`` (the connection's network timeout), and
    the retries stop at the call's deadline as over gRPC. Not thread-safe.
    """

    _port_setting = "http_port"
    _infer_input = httpclient.InferInput
    _requested_output = httpclient.InferRequestedOutput

    def _connect(self, url: str, timeout_s: float) -> Any:
        return httpclient.InferenceServerClient(
            url, connection_timeout=timeout_s, network_timeout=timeout_s
        )

    @staticmethod
    def _deadline(remaining_s: float) -> dict[str, float]:
        return {}

    @staticmethod
    def _error(exc: BaseException, model: str | None) -> TritonRequestError | None:
        return error_from_http(exc, model)

    @staticmethod
    def _input_datatypes(metadata: Any) -> list[str]:
        return [tensor["datatype"] for tensor in metadata["inputs"]]
