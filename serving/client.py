"""gRPC client for recflow's Triton endpoints: a generic ``infer`` plus ranking helpers.

Every call has one time budget (``timeout_s``) that covers all its attempts. Only UNAVAILABLE
(server down, starting or restarting) is retried, with capped exponential backoff, which is
safe because inference has no side effects. Any other error (INVALID_ARGUMENT, NOT_FOUND for
an unknown or unloaded model, ...) is raised at once as :class:`TritonRequestError`, carrying
Triton's message.

Ranking endpoint contract (``{model_prefix}_ranking``, written by the exporter): batched model,
inputs ``user_id`` and ``item_id`` INT64 ``[1]``, output ``score`` FP32 ``[1]``; a request for N
(user, item) pairs sends ``[N, 1]`` arrays, at most ``max_batch_size`` rows per request. The
retrieval, recommend and similar endpoints take an id and ``k`` (INT32 ``[1]``) per row and
answer ``item_ids`` INT64 and ``scores`` FP32 ``[k]`` per row, best first, padded with id -1
when fewer items qualify (docs/serving.md). Where the dataset's ids are strings, every id
tensor is BYTES (Triton ``TYPE_STRING``) instead, padded with ``b""``: the helpers read which
from the model's metadata once per model and take and return ids as ``str`` then.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcclient_aio
from tritonclient.utils import InferenceServerException, np_to_triton_dtype
from typing_extensions import Self

from recflow.config import ServingConfig
from recflow.vocabulary import (
    EXCLUDE_SEEN_INPUT,
    ITEM_INPUT,
    K_INPUT,
    RANKED_OUTPUTS,
    SCORE_OUTPUT,
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
_DEFAULTS = ServingConfig()

T = TypeVar("T")
# A user or item id: int, or str for a dataset with string ids.
Id = int | str
_BYTES = "BYTES"


class TritonRequestError(RuntimeError):
    """A request Triton (or the transport) rejected; ``code`` is None for client-side errors."""

    def __init__(self, model: str | None, code: grpc.StatusCode | None, message: str) -> None:
        self.model = model
        self.code = code
        self.message = message
        where = f"model {model!r}" if model else "server"
        super().__init__(f"{where}: {code.name if code else 'error'}: {message}")

    @classmethod
    def from_triton(cls, exc: InferenceServerException, model: str | None) -> TritonRequestError:
        # tritonclient reports the gRPC status as str(grpc.StatusCode.X), i.e. "StatusCode.X".
        status = (exc.status() or "").removeprefix("StatusCode.")
        return cls(model, grpc.StatusCode.__members__.get(status), exc.message())


class _Attempts:
    """Deadline and backoff of one call: retry UNAVAILABLE only, within the call's budget."""

    def __init__(self, timeout_s: float, retries: int) -> None:
        self._deadline = time.monotonic() + timeout_s
        self._retries_left = retries
        self._delay_s = BACKOFF_INITIAL_S

    def remaining_s(self) -> float:
        return self._deadline - time.monotonic()

    def backoff_s(self, exc: InferenceServerException, model: str) -> float:
        """Seconds to wait before the next attempt; raises if ``exc`` ends the call."""
        error = TritonRequestError.from_triton(exc, model)
        if (
            error.code is not grpc.StatusCode.UNAVAILABLE
            or self._retries_left == 0
            or self.remaining_s() <= self._delay_s
        ):
            raise error from exc
        self._retries_left -= 1
        delay, self._delay_s = self._delay_s, min(2 * self._delay_s, BACKOFF_MAX_S)
        return delay


def _infer_request(
    inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
) -> tuple[list[grpcclient.InferInput], list[grpcclient.InferRequestedOutput]]:
    request_inputs = []
    for name, array in inputs.items():
        datatype = np_to_triton_dtype(array.dtype)
        if datatype is None:
            raise TypeError(f"input {name!r}: numpy dtype {array.dtype} has no Triton type")
        request_input = grpcclient.InferInput(name, list(array.shape), datatype)
        request_input.set_data_from_numpy(array)
        request_inputs.append(request_input)
    return request_inputs, [grpcclient.InferRequestedOutput(name) for name in output_names]


def _outputs(
    result: grpcclient.InferResult, model: str, output_names: Sequence[str]
) -> dict[str, np.ndarray]:
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
    id_input: str, id_value: Id, k: int, as_strings: bool, exclude_seen: bool | None = None
) -> dict[str, np.ndarray]:
    request = {
        id_input: _id_array([id_value], as_strings),
        K_INPUT: np.array([[k]], dtype=np.int32),
    }
    if exclude_seen is not None:
        request[EXCLUDE_SEEN_INPUT] = np.array([[exclude_seen]], dtype=bool)
    return request


def _ranked_list(outputs: Mapping[str, np.ndarray]) -> list[tuple[Id, float]]:
    """One row of ``item_ids``/``scores`` as ``(item_id, score)``, without the padding."""
    ids, scores = (outputs[name].reshape(-1) for name in RANKED_OUTPUTS)
    if ids.dtype == object:
        return [(i.decode("utf-8"), float(s)) for i, s in zip(ids, scores, strict=True) if i]
    return [(int(i), float(s)) for i, s in zip(ids, scores, strict=True) if i >= 0]


def _recommend_request(
    user_id: Id, k: int, excluded: set[Id], as_strings: bool
) -> dict[str, np.ndarray]:
    # Ask for as many more as may be excluded, so k remain after dropping them.
    return _ranked_request(USER_INPUT, user_id, k + len(excluded), as_strings)


def _id_set(ids: Iterable[Id], as_strings: bool) -> set[Id]:
    """``ids`` as the endpoint answers them (str or int), so they compare with its answers."""
    array = _id_array(ids, as_strings).reshape(-1)
    return {i.decode("utf-8") for i in array} if as_strings else set(array.tolist())


def _takes_strings(metadata) -> bool:
    return any(tensor.datatype == _BYTES for tensor in metadata.inputs)


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
    """What the blocking and asyncio clients share: settings, retry policy, request shaping."""

    _client_class: Callable[..., Any]

    def __init__(
        self,
        url: str,
        timeout_s: float = _DEFAULTS.request_timeout_s,
        retries: int | None = DEFAULT_RETRIES,
        *,
        model_prefix: str = _DEFAULTS.model_prefix,
        max_batch_size: int = _DEFAULTS.max_batch_size,
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
        self._grpc = self._client_class(url, channel_args=_CHANNEL_ARGS)
        # Per model: whether its ids are strings (read from its metadata once).
        self._string_ids: dict[str, bool] = {}

    @classmethod
    def from_config(cls, config: ServingConfig, retries: int | None = DEFAULT_RETRIES) -> Self:
        return cls(
            f"{config.host}:{config.grpc_port}",
            config.request_timeout_s,
            retries,
            model_prefix=config.model_prefix,
            max_batch_size=config.max_batch_size,
        )

    @property
    def ranking_model(self) -> str:
        return f"{self.model_prefix}_ranking"

    @property
    def retrieval_model(self) -> str:
        return f"{self.model_prefix}_retrieval"

    @property
    def recommend_model(self) -> str:
        return f"{self.model_prefix}_recommend"

    @property
    def similar_model(self) -> str:
        return f"{self.model_prefix}_similar"

    def _attempts(self) -> _Attempts:
        return _Attempts(self.timeout_s, self.retries)

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


class RecflowClient(_ClientBase):
    """Blocking client. Thread-safe (one gRPC channel); close it or use it as a context manager."""

    _client_class = grpcclient.InferenceServerClient

    def _call(self, model: str | None, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return method(*args, **kwargs)
        except InferenceServerException as exc:
            raise TritonRequestError.from_triton(exc, model) from exc

    def _probe(self, model: str | None, method: Callable[..., bool], *args: Any) -> bool:
        try:
            return self._call(model, method, *args, client_timeout=self.timeout_s)
        except TritonRequestError as error:
            if error.code in _UNREACHABLE:
                return False
            raise

    def server_ready(self) -> bool:
        """Whether the server is up with its start-up models loaded; False if unreachable."""
        return self._probe(None, self._grpc.is_server_ready)

    def model_ready(self, name: str) -> bool:
        """Whether ``name`` is loaded and can serve; False if the server is unreachable."""
        return self._probe(name, self._grpc.is_model_ready, name)

    def load_model(self, name: str, timeout_s: float | None = None) -> None:
        """(Re)load ``name`` from the repository; blocks until it is ready or failed to load."""
        self._call(name, self._grpc.load_model, name, client_timeout=timeout_s or self.timeout_s)

    def unload_model(self, name: str) -> None:
        self._call(name, self._grpc.unload_model, name, client_timeout=self.timeout_s)

    def takes_strings(self, model_name: str) -> bool:
        """Whether ``model_name``'s ids are strings (BYTES), from its metadata (cached)."""
        if model_name not in self._string_ids:
            attempts = self._attempts()
            while True:
                try:
                    metadata = self._grpc.get_model_metadata(
                        model_name, client_timeout=attempts.remaining_s()
                    )
                except InferenceServerException as exc:
                    time.sleep(attempts.backoff_s(exc, model_name))
                else:
                    break
            self._string_ids[model_name] = _takes_strings(metadata)
        return self._string_ids[model_name]

    def infer(
        self, model_name: str, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """One inference request; Triton types are derived from the arrays' dtypes."""
        request_inputs, request_outputs = _infer_request(inputs, output_names)
        attempts = self._attempts()
        while True:
            try:
                result = self._grpc.infer(
                    model_name,
                    request_inputs,
                    outputs=request_outputs,
                    client_timeout=attempts.remaining_s(),
                )
            except InferenceServerException as exc:
                time.sleep(attempts.backoff_s(exc, model_name))
            else:
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
    ) -> list[tuple[Id, float]]:
        """The ``k`` best items for ``user_id`` as ``(item_id, score)``, best first.

        Without candidates, the multi-stage ``recommend`` endpoint picks them (retrieval, then
        the version's final ordering; the user's seen items never come back). With candidates,
        the ranking endpoint scores them: duplicates are scored once, those in ``exclude``
        dropped, ties keep candidate order. :class:`AsyncRecflowClient` takes the same arguments.
        """
        model = self.recommend_model if candidates is None else self.ranking_model
        excluded = _id_set(exclude, self.takes_strings(model))
        if candidates is None:
            request = _recommend_request(user_id, k, excluded, self.takes_strings(model))
            top = _ranked_list(self.infer(self.recommend_model, request, RANKED_OUTPUTS))
            return _without(top, excluded, k)
        shortlist = _shortlist(candidates, excluded, k)
        return _top_k(shortlist, self.score(user_id, shortlist), k)

    def retrieve(self, user_id: Id, k: int, exclude_seen: bool = False) -> list[tuple[Id, float]]:
        """The retrieval endpoint's ``k`` nearest items to the user's query embedding."""
        strings = self.takes_strings(self.retrieval_model)
        request = _ranked_request(USER_INPUT, user_id, k, strings, exclude_seen)
        return _ranked_list(self.infer(self.retrieval_model, request, RANKED_OUTPUTS))

    def similar(self, item_id: Id, k: int) -> list[tuple[Id, float]]:
        """The ``k`` items whose embeddings are closest to ``item_id``'s (cosine)."""
        strings = self.takes_strings(self.similar_model)
        request = _ranked_request(ITEM_INPUT, item_id, k, strings)
        return _ranked_list(self.infer(self.similar_model, request, RANKED_OUTPUTS))

    def close(self) -> None:
        self._grpc.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncRecflowClient(_ClientBase):
    """asyncio client for ``infer``/``score``; create it inside the event loop that uses it."""

    _client_class = grpcclient_aio.InferenceServerClient

    async def takes_strings(self, model_name: str) -> bool:
        """Like :meth:`RecflowClient.takes_strings`."""
        if model_name not in self._string_ids:
            attempts = self._attempts()
            while True:
                try:
                    metadata = await self._grpc.get_model_metadata(
                        model_name, client_timeout=attempts.remaining_s()
                    )
                except InferenceServerException as exc:
                    await asyncio.sleep(attempts.backoff_s(exc, model_name))
                else:
                    break
            self._string_ids[model_name] = _takes_strings(metadata)
        return self._string_ids[model_name]

    async def infer(
        self, model_name: str, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        request_inputs, request_outputs = _infer_request(inputs, output_names)
        attempts = self._attempts()
        while True:
            try:
                result = await self._grpc.infer(
                    model_name,
                    request_inputs,
                    outputs=request_outputs,
                    client_timeout=attempts.remaining_s(),
                )
            except InferenceServerException as exc:
                await asyncio.sleep(attempts.backoff_s(exc, model_name))
            else:
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
    ) -> list[tuple[Id, float]]:
        """Like :meth:`RecflowClient.recommend`."""
        model = self.recommend_model if candidates is None else self.ranking_model
        strings = await self.takes_strings(model)
        excluded = _id_set(exclude, strings)
        if candidates is None:
            request = _recommend_request(user_id, k, excluded, strings)
            top = _ranked_list(await self.infer(self.recommend_model, request, RANKED_OUTPUTS))
            return _without(top, excluded, k)
        shortlist = _shortlist(candidates, excluded, k)
        return _top_k(shortlist, await self.score(user_id, shortlist), k)

    async def retrieve(
        self, user_id: Id, k: int, exclude_seen: bool = False
    ) -> list[tuple[Id, float]]:
        strings = await self.takes_strings(self.retrieval_model)
        request = _ranked_request(USER_INPUT, user_id, k, strings, exclude_seen)
        return _ranked_list(await self.infer(self.retrieval_model, request, RANKED_OUTPUTS))

    async def similar(self, item_id: Id, k: int) -> list[tuple[Id, float]]:
        strings = await self.takes_strings(self.similar_model)
        request = _ranked_request(ITEM_INPUT, item_id, k, strings)
        return _ranked_list(await self.infer(self.similar_model, request, RANKED_OUTPUTS))

    async def close(self) -> None:
        await self._grpc.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
