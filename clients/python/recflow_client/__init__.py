"""recflow's app-side client: score, recommend, retrieve and similar on recflow's Triton
endpoints, over gRPC or HTTP, with retries within one deadline, batching and string ids.

    pip install ./clients/python      # the recflow-client wheel: tritonclient and numpy only

    from recflow_client import HttpRecflowClient, RecflowClient

    with RecflowClient("127.0.0.1:8001") as client:  # or HttpRecflowClient("127.0.0.1:8000")
        top = client.recommend(42, k=10)  # [(item_id, score)], best first

The classes are imported on first use, so ``recflow_client.contract`` (the tensor names, which
recflow's Triton stubs import through ``recflow.vocabulary``) costs no tritonclient import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from recflow_client.client import (
        AsyncRecflowClient,
        RecflowClient,
        ServingSettings,
        TritonRequestError,
    )
    from recflow_client.http import HttpRecflowClient

_HOMES = {
    "AsyncRecflowClient": "recflow_client.client",
    "RecflowClient": "recflow_client.client",
    "ServingSettings": "recflow_client.client",
    "TritonRequestError": "recflow_client.client",
    "HttpRecflowClient": "recflow_client.http",
}
__all__ = [
    "AsyncRecflowClient",
    "HttpRecflowClient",
    "RecflowClient",
    "ServingSettings",
    "TritonRequestError",
]


def __getattr__(name: str) -> Any:  # PEP 562: the module's attributes, imported when asked for
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
