"""Clients of recflow's Triton endpoints: a generic ``infer`` plus ranking helpers, over gRPC
(:class:`RecflowClient`, :class:`AsyncRecflowClient`) and HTTP (``recflow_client.http``).

Every call has one time budget (``timeout_s``) that covers all its attempts. Only UNAVAILABLE
(server down, starting or restarting) is retried, with capped exponential backoff, which is
safe because inference has no side effects. Any other error (INVALID_ARGUMENT, NOT_FOUND for
an unknown or unloaded model, ...) is raised at once as :class:`TritonRequestError`, carrying
Triton's message. The transports differ only in how they connect, bound an attempt, read a
model's metadata and report errors (the ``_ClientBase`` hooks); requests are built and answers
read by the same code.

Ranking endpoint contract (``{model_prefix}_ranking``, written by recflow's exporter): batched
model, inputs ``user_id`` and ``item_id`` INT64 ``[1]``, output ``score`` FP32 ``[1]``; a request
for N (user, item) pairs sends ``[N, 1]`` arrays, at most ``max_batch_size`` rows per request.
The retrieval, recommend and similar endpoints take an id and ``k`` (INT32 ``[1]``) per row and
answer ``item_ids`` INT64 and ``scores`` FP32 ``[k]`` per row, best first, padded with id -1
when fewer items qualify (docs/serving.md). Where the dataset's ids are strings, every id
tensor is BYTES (Triton ``TYPE_STRING``) instead, padded with ``b""``: the helpers read which
from the model's metadata once per model and take and return ids as ``str`` then.

This module is what the ``recflow-client`` wheel ships: it imports tritonclient, grpc and numpy
only, never recflow itself (tests/unit/test_client_install.py).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcclient_aio
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from recflow_client.contract import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MODEL_PREFIX,
    DEFAULT_TIMEOUT_S,
    EXCLUDE_SEEN_INPUT,
    HISTORY_INPUT,
    ITEM_INPUT,
    K_INPUT,
    MODEL_NAME,
    RANKED_OUTPUTS,
    RANKING,
    RECOMMEND,
    RETRIEVAL,
    SCORE_OUTPUT,
    SIMILAR,
    USER_INPUT,
)

BACKOFF_INITIAL_S = 0.1
BACKOFF_MAX_S = 1.0
# retries=None: retry UNAVAILABLE for as long as the call's deadline allows. A server restart
# takes minutes when its models import TensorFlow; a fixed count of 3 gave up after 0.7 s.
DEFAULT_RETRIES: int | None = None
_BACKOFF_STEPS = 4  # attempts before the backoff reaches BACKOFF_MAX_S
# gRPC's own reconnect backoff grows to 2 minutes, during which calls fail without even trying
# to connect; capping it lets retries and readiness polls find a restarted server within ~1 s.
RECONNECT_BACKOFF_MAX_MS = 1000
# tritonclient's default limit; passing channel_args replaces all its defaults, so restate it.
MAX_MESSAGE_BYTES = 2**31 - 1
_CHANNEL_ARGS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MAX_MS),
]
# A probe answers "not ready" rather than raising when the server cannot be reached.
_UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

T = TypeVar("T")
C = TypeVar("C", bound="_ClientBase")
# A user or item id: int, or str for a dataset with string ids.
Id = int | str
_BYTES = "BYTES"


class ServingSettings(Protocol):
    """What :meth:`RecflowClient.from_config` reads: recflow's ``ServingConfig`` has it, and so
    may any object of an app's own (a dataclass, ``types.SimpleNamespace``)."""

    host: str
    grpc_port: int
    http_port: int
    request_timeout_s: float
    model_prefix: str
    max_batch_size: int


class TritonRequestError(RuntimeError):
    """A request Triton (or the transport) rejected.

    ``code`` is the canonical status (a ``grpc.StatusCode``, the codes Triton itself uses) for
    either transport, so one ``except`` serves both; None for errors found on the client side.
    ``http_status`` is the HTTP response's status code where the HTTP client got one.
    """

    def __init__(
        self,
        model: str | None,
        code: grpc.StatusCode | None,
        message: str,
        http_status: int | None = None,
    ) -> None:
        self.model = model
        self.code = code
        self.message = message
        self.http_status = http_status
        where = f"model {model!r}" if model else "server"
        status = code.name if code else "error"
        if http_status is not None:
            status += f" (HTTP {http_status})"
        super().__init__(f"{where}: {status}: {message}")

    @classmethod
    def from_triton(cls, exc: InferenceServerException, model: str | None) -> TritonRequestError:
        """A gRPC call's error: tritonclient reports the status as str(grpc.StatusCode.X)."""
        status = (exc.status() or "").removeprefix("StatusCode.")
        return cls(model, grpc.StatusCode.__members__.get(status), exc.message())


class _Attempts:
    """Deadline and backoff of one call: retry UNAVAILABLE only, within the call's budget.

    Iterate it (``for`` in blocking code, ``async for`` in asyncio) and make each attempt inside
    ``with attempt:``. A retryable failure is swallowed there and the next iteration first waits
    out the backoff; any other failure, or one past the budget, leaves the ``with`` as
    :class:`TritonRequestError`. The caller returns from inside the ``with`` on success, so the
    iteration never ends on its own. One loop of each kind serves every request of every client.
    """

    def __init__(
        self,
        timeout_s: float,
        retries: int,
        model: str | None,
        to_error: Callable[[BaseException, str | None], TritonRequestError | None],
    ) -> None:
        self._deadline = time.monotonic() + timeout_s
        self._retries_left = retries
        self._delay_s = BACKOFF_INITIAL_S
        self._wait_s = 0.0  # before the next attempt: nothing before the first
        self._model = model
        self._to_error = to_error

    def remaining_s(self) -> float:
        return self._deadline - time.monotonic()

    def _take_wait_s(self) -> float:
        wait_s, self._wait_s = self._wait_s, 0.0
        return wait_s

    def __iter__(self) -> _Attempts:
        return self

    def __next__(self) -> _Attempts:
        time.sleep(self._take_wait_s())
        return self

    def __aiter__(self) -> _Attempts:
        return self

    async def __anext__(self) -> _Attempts:
        await asyncio.sleep(self._take_wait_s())
        return self

    def __enter__(self) -> _Attempts:
        return self

    def __exit__(self, kind: object, exc: BaseException | None, traceback: object) -> bool:
        if exc is None:
            return False
        error = self._to_error(exc, self._model)
        if error is None:
            return False  # not the transport's: let it through as it is
        if (
            error.code is not grpc.StatusCode.UNAVAILABLE
            or self._retries_left == 0
            or self.remaining_s() <= self._delay_s
        ):
            raise error from exc
        self._retries_left -= 1
        self._wait_s, self._delay_s = self._delay_s, min(2 * self._delay_s, BACKOFF_MAX_S)
        return True


def _outputs(result: Any, model: str, output_names: Sequence[str]) -> dict[str, np.ndarray]:
    outputs = {name: result.as_numpy(name) for name in output_names}
    missing = [name for name, array in outputs.items() if array is None]
    if missing:
        raise TritonRequestError(model, None, f"response lacks outputs {missing}")
    return outputs


def _join_scores(parts: Iterable[Mapping[str, np.ndarray]]) -> np.ndarray:
    scores = [part[SCORE_OUTPUT].reshape(-1) for part in parts]
    return np.concatenate(scores) if scores else np.empty(0, dtype=np.float32)


def _id_array(ids: Iterable[Id], as_strings: bool) -> np.ndarray:
    """[rows, 1] ids as the endpoint takes them: UTF-8 bytes (BYTES) or int64."""
    ids = list(ids)
    if as_strings:
        return np.array([str(i).encode("utf-8") for i in ids], dtype=object).reshape(-1, 1)
    try:
        return np.array([int(i) for i in ids], dtype=np.int64).reshape(-1, 1)
    except ValueError as exc:
        raise TritonRequestError(None, None, f"this model takes integer ids: {exc}") from exc


def _ranked_request(
    id_input: str,
    id_value: Id,
    k: int,
    as_strings: bool,
    exclude_seen: bool | None = None,
    history: Sequence[Id] = (),
) -> dict[str, np.ndarray]:
    request = {
        id_input: _id_array([id_value], as_strings),
        K_INPUT: np.array([[k]], dtype=np.int32),
    }
    if exclude_seen is not None:
        request[EXCLUDE_SEEN_INPUT] = np.array([[exclude_seen]], dtype=bool)
    if len(history):  # an empty history is no history: the answer without one
        request[HISTORY_INPUT] = _id_array(history, as_strings).reshape(1, -1)
    return request


def _ranked_list(outputs: Mapping[str, np.ndarray]) -> list[tuple[Id, float]]:
    """One row of ``item_ids``/``scores`` as ``(item_id, score)``, without the padding."""
    ids, scores = (outputs[name].reshape(-1) for name in RANKED_OUTPUTS)
    if ids.dtype == object:
        return [(i.decode("utf-8"), float(s)) for i, s in zip(ids, scores, strict=True) if i]
    return [(int(i), float(s)) for i, s in zip(ids, scores, strict=True) if i >= 0]


def _recommend_request(
    user_id: Id, k: int, excluded: set[Id], as_strings: bool, history: Sequence[Id]
) -> dict[str, np.ndarray]:
    # Ask for as many more as may be excluded, so k remain after dropping them.
    return _ranked_request(USER_INPUT, user_id, k + len(excluded), as_strings, None, history)


def _no_history_with_candidates(candidates: object, history: Sequence[Id]) -> None:
    if candidates is not None and len(history):
        raise ValueError(
            "history is read by the recommend endpoint; with candidates (the ranking endpoint) "
            "pass the items to leave out as exclude"
        )


def _id_set(ids: Iterable[Id], as_strings: bool) -> set[Id]:
    """``ids`` as the endpoint answers them (str or int), so they compare with its answers."""
    array = _id_array(ids, as_strings).reshape(-1)
    return {i.decode("utf-8") for i in array} if as_strings else set(array.tolist())


def _without(top: list[tuple[Id, float]], excluded: set[Id], k: int) -> list[tuple[Id, float]]:
    return [(item, score) for item, score in top if item not in excluded][:k]


def _shortlist(candidates: Iterable[Id], excluded: set[Id], k: int) -> list[Id]:
    """The distinct candidates in order, without the excluded ones."""
    if k < 0:
        raise ValueError(f"k must be >= 0, not {k}")
    return [item for item in dict.fromkeys(candidates) if item not in excluded]


def _top_k(item_ids: Sequence[Id], scores: np.ndarray, k: int) -> list[tuple[Id, float]]:
    # Stable sort: equal scores keep candidate order, so results are reproducible.
    order = np.argsort(-scores, kind="stable")[:k]
    return [(item_ids[i], float(scores[i])) for i in order]


class _ClientBase:
    """What every client shares: settings, retry policy, request shaping and answer reading.

    A transport supplies the hooks below (gRPC here, HTTP in ``recflow_client.http``); the
    blocking and asyncio request methods are in :class:`_BlockingClient` and
    :class:`AsyncRecflowClient`.
    """

    # The ServingSettings attribute from_config takes the port from.
    _port_setting = "grpc_port"
    # tritonclient's request objects for this transport.
    _infer_input: Callable[..., Any] = grpcclient.InferInput
    _requested_output: Callable[..., Any] = grpcclient.InferRequestedOutput

    def __init__(
        self,
        url: str,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int | None = DEFAULT_RETRIES,
        *,
        model_prefix: str = DEFAULT_MODEL_PREFIX,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    ) -> None:
        if timeout_s <= 0 or (retries is not None and retries < 0) or max_batch_size <= 0:
            raise ValueError("need timeout_s > 0, retries >= 0 and max_batch_size > 0")
        self.url = url
        self.timeout_s = timeout_s
        # None: as many as fit in the deadline (the backoff is capped at BACKOFF_MAX_S).
        self.retries = (
            math.ceil(timeout_s / BACKOFF_MAX_S) + _BACKOFF_STEPS if retries is None else retries
        )
        self.model_prefix = model_prefix
        self.max_batch_size = max_batch_size
        self._triton = self._connect(url, timeout_s)
        # Per model: whether its ids are strings (read from its metadata once).
        self._string_ids: dict[str, bool] = {}

    @classmethod
    def from_config(
        cls: type[C], config: ServingSettings, retries: int | None = DEFAULT_RETRIES
    ) -> C:
        """The client of the server ``config`` describes (recflow's ``settings.serving``)."""
        return cls(
            f"{config.host}:{getattr(config, cls._port_setting)}",
            config.request_timeout_s,
            retries,
            model_prefix=config.model_prefix,
            max_batch_size=config.max_batch_size,
        )

    # --- the transport's hooks (gRPC here) -------------------------------------------------

    def _connect(self, url: str, timeout_s: float) -> Any:
        return grpcclient.InferenceServerClient(url, channel_args=_CHANNEL_ARGS)

    @staticmethod
    def _deadline(remaining_s: float) -> dict[str, float]:
        """The keyword arguments that bound one attempt to the call's remaining budget."""
        return {"client_timeout": remaining_s}

    @staticmethod
    def _error(exc: BaseException, model: str | None) -> TritonRequestError | None:
        """``exc`` as a TritonRequestError, or None if it is not the transport's error."""
        if isinstance(exc, InferenceServerException):
            return TritonRequestError.from_triton(exc, model)
        return None

    @staticmethod
    def _input_datatypes(metadata: Any) -> list[str]:
        return [tensor.datatype for tensor in metadata.inputs]

    # --- shared by both transports ---------------------------------------------------------

    def model(self, endpoint: str) -> str:
        """The Triton model serving ``endpoint`` (contract.RANKING, ...) under this prefix."""
        return MODEL_NAME.format(prefix=self.model_prefix, endpoint=endpoint)

    @property
    def ranking_model(self) -> str:
        return self.model(RANKING)

    @property
    def retrieval_model(self) -> str:
        return self.model(RETRIEVAL)

    @property
    def recommend_model(self) -> str:
        return self.model(RECOMMEND)

    @property
    def similar_model(self) -> str:
        return self.model(SIMILAR)

    def _attempts(
        self, model: str | None, timeout_s: float | None = None, retry: bool = True
    ) -> _Attempts:
        retries = self.retries if retry else 0
        return _Attempts(timeout_s or self.timeout_s, retries, model, self._error)

    def _infer_request(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> tuple[list[Any], list[Any]]:
        request_inputs = []
        for name, array in inputs.items():
            datatype = np_to_triton_dtype(array.dtype)
            if datatype is None:
                raise TypeError(f"input {name!r}: numpy dtype {array.dtype} has no Triton type")
            request_input = self._infer_input(name, list(array.shape), datatype)
            request_input.set_data_from_numpy(array)
            request_inputs.append(request_input)
        return request_inputs, [self._requested_output(name) for name in output_names]

    def _takes_strings(self, metadata: Any) -> bool:
        return _BYTES in self._input_datatypes(metadata)

    def _ranking_batches(
        self, user_id: Id, item_ids: Sequence[Id], as_strings: bool
    ) -> list[dict[str, np.ndarray]]:
        items = _id_array(item_ids, as_strings)
        users = _id_array([user_id] * len(items), as_strings)
        step = self.max_batch_size
        return [
            {USER_INPUT: users[start : start + step], ITEM_INPUT: items[start : start + step]}
            for start in range(0, len(items), step)
        ]


class _BlockingClient(_ClientBase):
    """The blocking requests, the same for every transport."""

    def _request(
        self,
        model: str | None,
        method: Callable[..., T],
        *args: Any,
        timeout_s: float | None = None,
        retry: bool = True,
        **kwargs: Any,
    ) -> T:
        """``method(*args, **kwargs)``, retried on UNAVAILABLE within the deadline."""
        for attempt in self._attempts(model, timeout_s, retry):
            with attempt:
                return method(*args, **kwargs, **self._deadline(attempt.remaining_s()))
        raise AssertionError("unreachable: _Attempts ends a call by returning or raising")

    def _probe(self, model: str | None, method: Callable[..., bool], *args: Any) -> bool:
        try:
            return self._request(model, method, *args, retry=False)
        except TritonRequestError as error:
            if error.code in _UNREACHABLE:
                return False
            raise

    def server_ready(self) -> bool:
        """Whether the server is up with its start-up models loaded; False if unreachable."""
        return self._probe(None, self._triton.is_server_ready)

    def model_ready(self, name: str) -> bool:
        """Whether ``name`` is loaded and can serve; False if the server is unreachable."""
        return self._probe(name, self._triton.is_model_ready, name)

    def load_model(self, name: str, timeout_s: float | None = None) -> None:
        """(Re)load ``name`` from the repository; blocks until it is ready or failed to load."""
        self._request(name, self._triton.load_model, name, timeout_s=timeout_s, retry=False)

    def unload_model(self, name: str) -> None:
        self._request(name, self._triton.unload_model, name, retry=False)

    def takes_strings(self, model_name: str) -> bool:
        """Whether ``model_name``'s ids are strings (BYTES), from its metadata (cached)."""
        if model_name not in self._string_ids:
            metadata = self._request(model_name, self._triton.get_model_metadata, model_name)
            self._string_ids[model_name] = self._takes_strings(metadata)
        return self._string_ids[model_name]

    def infer(
        self, model_name: str, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """One inference request; Triton types are derived from the arrays' dtypes."""
        request_inputs, request_outputs = self._infer_request(inputs, output_names)
        result = self._request(
            model_name, self._triton.infer, model_name, request_inputs, outputs=request_outputs
        )
        return _outputs(result, model_name, output_names)

    def score(self, user_id: Id, item_ids: Sequence[Id]) -> np.ndarray:
        """Ranking scores (float32, in ``item_ids`` order) of ``user_id`` for each item."""
        strings = self.takes_strings(self.ranking_model)
        batches = self._ranking_batches(user_id, item_ids, strings)
        return _join_scores(self.infer(self.ranking_model, b, [SCORE_OUTPUT]) for b in batches)

    def recommend(
        self,
        user_id: Id,
        k: int = 10,
        *,
        candidates: Iterable[Id] | None = None,
        exclude: Collection[Id] = (),
        history: Sequence[Id] = (),
    ) -> list[tuple[Id, float]]:
        """The ``k`` best items for ``user_id`` as ``(item_id, score)``, best first.

        Without candidates, the multi-stage ``recommend`` endpoint picks them (retrieval and
        the item-item source, then the version's final ordering; the user's seen items never
        come back). ``history``: the user's recent item ids, most recent last, which the
        endpoint adds to what it knows of the user (a user it never saw gets a list made from
        them) and leaves out of the list. With candidates, the ranking endpoint scores them:
        duplicates are scored once, those in ``exclude`` dropped, ties keep candidate order.
        :class:`AsyncRecflowClient` takes the same arguments.
        """
        _no_history_with_candidates(candidates, history)
        model = self.recommend_model if candidates is None else self.ranking_model
        excluded = _id_set(exclude, self.takes_strings(model))
        if candidates is None:
            request = _recommend_request(user_id, k, excluded, self.takes_strings(model), history)
            top = _ranked_list(self.infer(self.recommend_model, request, RANKED_OUTPUTS))
            return _without(top, excluded, k)
        shortlist = _shortlist(candidates, excluded, k)
        return _top_k(shortlist, self.score(user_id, shortlist), k)

    def retrieve(
        self, user_id: Id, k: int, exclude_seen: bool = False, history: Sequence[Id] = ()
    ) -> list[tuple[Id, float]]:
        """The retrieval endpoint's ``k`` nearest items to the user's query embedding; the
        ``history``'s items are left out."""
        strings = self.takes_strings(self.retrieval_model)
        request = _ranked_request(USER_INPUT, user_id, k, strings, exclude_seen, history)
        return _ranked_list(self.infer(self.retrieval_model, request, RANKED_OUTPUTS))

    def similar(self, item_id: Id, k: int) -> list[tuple[Id, float]]:
        """The ``k`` items whose embeddings are closest to ``item_id``'s (cosine)."""
        strings = self.takes_strings(self.similar_model)
        request = _ranked_request(ITEM_INPUT, item_id, k, strings)
        return _ranked_list(self.infer(self.similar_model, request, RANKED_OUTPUTS))

    def close(self) -> None:
        self._triton.close()

    def __enter__(self: C) -> C:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class RecflowClient(_BlockingClient):
    """Blocking gRPC client. Thread-safe (one gRPC channel); close it or use it as a context
    manager."""


class AsyncRecflowClient(_ClientBase):
    """asyncio gRPC client for ``infer``/``score``/``recommend``/``retrieve``/``similar``;
    create it inside the event loop that uses it."""

    def _connect(self, url: str, timeout_s: float) -> Any:
        return grpcclient_aio.InferenceServerClient(url, channel_args=_CHANNEL_ARGS)

    async def _request(
        self, model: str | None, method: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:
        """Like :meth:`RecflowClient._request`, awaiting ``method`` and the backoff."""
        async for attempt in self._attempts(model):
            with attempt:
                return await method(*args, **kwargs, **self._deadline(attempt.remaining_s()))
        raise AssertionError("unreachable: _Attempts ends a call by returning or raising")

    async def takes_strings(self, model_name: str) -> bool:
        """Like :meth:`RecflowClient.takes_strings`."""
        if model_name not in self._string_ids:
            metadata = await self._request(model_name, self._triton.get_model_metadata, model_name)
            self._string_ids[model_name] = self._takes_strings(metadata)
        return self._string_ids[model_name]

    async def infer(
        self, model_name: str, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        request_inputs, request_outputs = self._infer_request(inputs, output_names)
        result = await self._request(
            model_name, self._triton.infer, model_name, request_inputs, outputs=request_outputs
        )
        return _outputs(result, model_name, output_names)

    async def score(self, user_id: Id, item_ids: Sequence[Id]) -> np.ndarray:
        """Like :meth:`RecflowClient.score`, sending the batches concurrently."""
        strings = await self.takes_strings(self.ranking_model)
        batches = self._ranking_batches(user_id, item_ids, strings)
        parts = await asyncio.gather(
            *(self.infer(self.ranking_model, b, [SCORE_OUTPUT]) for b in batches)
        )
        return _join_scores(parts)

    async def recommend(
        self,
        user_id: Id,
        k: int = 10,
        *,
        candidates: Iterable[Id] | None = None,
        exclude: Collection[Id] = (),
        history: Sequence[Id] = (),
    ) -> list[tuple[Id, float]]:
        """Like :meth:`RecflowClient.recommend`."""
        _no_history_with_candidates(candidates, history)
        model = self.recommend_model if candidates is None else self.ranking_model
        strings = await self.takes_strings(model)
        excluded = _id_set(exclude, strings)
        if candidates is None:
            request = _recommend_request(user_id, k, excluded, strings, history)
            top = _ranked_list(await self.infer(self.recommend_model, request, RANKED_OUTPUTS))
            return _without(top, excluded, k)
        shortlist = _shortlist(candidates, excluded, k)
        return _top_k(shortlist, await self.score(user_id, shortlist), k)

    async def retrieve(
        self, user_id: Id, k: int, exclude_seen: bool = False, history: Sequence[Id] = ()
    ) -> list[tuple[Id, float]]:
        strings = await self.takes_strings(self.retrieval_model)
        request = _ranked_request(USER_INPUT, user_id, k, strings, exclude_seen, history)
        return _ranked_list(await self.infer(self.retrieval_model, request, RANKED_OUTPUTS))

    async def similar(self, item_id: Id, k: int) -> list[tuple[Id, float]]:
        strings = await self.takes_strings(self.similar_model)
        request = _ranked_request(ITEM_INPUT, item_id, k, strings)
        return _ranked_list(await self.infer(self.similar_model, request, RANKED_OUTPUTS))

    async def close(self) -> None:
        await self._triton.close()

    async def __aenter__(self: C) -> C:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
