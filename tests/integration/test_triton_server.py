"""The Triton launcher and client against a real tritonserver on 127.0.0.1 (no mocks).

The model repository is generated from tests/fixtures/ranking_model.py, a Python-backend model
honouring the ranking endpoint contract with ``score = user_id * 1000 + item_id``. The tests
that take ``client`` run once over gRPC and once over HTTP, against the same server.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tritonclient.grpc as grpcclient
import typer
from typer.testing import CliRunner

from cli.serve import CATALOG_FILE, register
from recflow.config import ServingConfig, Settings
from recflow.vocabulary import ITEM_INPUT, SCORE_OUTPUT, USER_INPUT
from recflow_client import (
    AsyncRecflowClient,
    HttpRecflowClient,
    RecflowClient,
    TritonRequestError,
)
from serving import server as server_module
from serving.server import (
    SHM_DIR,
    STOP_GRACE_S,
    TritonServer,
    TritonServerError,
    find_free_port,
    process_group,
)
from tests.support.network import listening_addresses

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MODEL_SOURCE = Path(__file__).resolve().parent.parent / "fixtures" / "ranking_model.py"
# Small, so a short item list already needs several requests.
CONFIG = ServingConfig(
    grpc_port=0, http_port=0, metrics_port=0, max_batch_size=4, startup_timeout_s=60
)
RANKING = f"{CONFIG.model_prefix}_ranking"
# Same model under another name, not loaded at start: for the load/unload tests.
SPARE = f"{CONFIG.model_prefix}_spare"
# The blocking clients, one per transport; both talk to the same server.
TRANSPORTS = {"grpc": RecflowClient, "http": HttpRecflowClient}
Client = RecflowClient | HttpRecflowClient


def model_config(name: str, config: ServingConfig) -> str:
    return f"""\
name: "{name}"
backend: "python"
max_batch_size: {config.max_batch_size}
input [
  {{ name: "{USER_INPUT}" data_type: TYPE_INT64 dims: [ 1 ] }},
  {{ name: "{ITEM_INPUT}" data_type: TYPE_INT64 dims: [ 1 ] }}
]
output [ {{ name: "{SCORE_OUTPUT}" data_type: TYPE_FP32 dims: [ 1 ] }} ]
instance_group [ {{ count: {config.instance_count} kind: KIND_CPU }} ]
"""


def write_repository(root: Path, config: ServingConfig) -> Path:
    for name in (RANKING, SPARE):
        (root / name / "1").mkdir(parents=True)
        shutil.copy(MODEL_SOURCE, root / name / "1" / "model.py")
        (root / name / "config.pbtxt").write_text(model_config(name, config))
    return root


def expected_scores(user_id: int, item_ids: list[int]) -> np.ndarray:
    return np.array([user_id * 1000 + item for item in item_ids], dtype=np.float32)


def pairs(user_ids: list[int], item_ids: list[int]) -> dict[str, np.ndarray]:
    return {
        USER_INPUT: np.array(user_ids, dtype=np.int64).reshape(-1, 1),
        ITEM_INPUT: np.array(item_ids, dtype=np.int64).reshape(-1, 1),
    }


def model_executions(server: TritonServer, model: str) -> int:
    """How many times ``model`` ran (once per request here: no dynamic batching), per Triton."""
    with grpcclient.InferenceServerClient(server.grpc_url) as admin:
        return admin.get_inference_statistics(model).model_stats[0].execution_count


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_repository(tmp_path_factory.mktemp("triton_repo"), CONFIG)


@pytest.fixture(scope="module")
def backend_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def make_server(
    repository: Path,
    backend_cache: Path,
    log_dir: Path,
    config: ServingConfig = CONFIG,
    models: tuple[str, ...] = (RANKING,),
) -> TritonServer:
    return TritonServer(
        repository,
        config,
        log_file=log_dir / "tritonserver.log",
        backend_cache_dir=backend_cache,
        models=models,
    )


@pytest.fixture(scope="module")
def server(
    repository: Path, backend_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonServer]:
    with make_server(repository, backend_cache, tmp_path_factory.mktemp("logs")) as running:
        yield running


@pytest.fixture(params=sorted(TRANSPORTS))
def client(request: pytest.FixtureRequest, server: TritonServer) -> Iterator[Client]:
    with TRANSPORTS[request.param].from_config(server.config) as connected:
        yield connected


def test_find_free_port_can_be_bound_and_is_below_the_ephemeral_range() -> None:
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [find_free_port() for _ in range(20)]
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
    # Outgoing connections and port-0 binds, the kernel's choices, cannot take them.
    assert all(port < ephemeral_low for port in ports), (ephemeral_low, ports)


def test_find_free_port_takes_the_kernels_choice_when_no_room_is_below_the_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wide = tmp_path / "ip_local_port_range"
    wide.write_text("1024\t65535\n")  # a host whose ephemeral range starts below PORT_FLOOR
    monkeypatch.setattr(server_module, "EPHEMERAL_RANGE_FILE", wide)
    port = find_free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_from_settings_serves_every_model_of_the_repository(tmp_path: Path) -> None:
    settings = Settings(paths={"home": tmp_path})
    write_repository(settings.paths.triton_repo, CONFIG)
    # An export still being written (recflow.atomic staging) must not be loaded.
    staging = settings.paths.triton_repo / f".{RANKING}.staging-x"
    shutil.copytree(settings.paths.triton_repo / RANKING, staging)

    server = TritonServer.from_settings(settings)

    assert server.models == sorted([RANKING, SPARE])
    assert server.log_file.is_relative_to(settings.paths.home)
    assert server.backend_cache_dir == settings.paths.cache_dir


def test_server_is_ready_on_loopback_only(server: TritonServer, client: Client) -> None:
    assert client.server_ready()
    assert client.model_ready(RANKING)
    assert not client.model_ready(SPARE)
    for port in (server.config.grpc_port, server.config.http_port, server.config.metrics_port):
        addresses = listening_addresses(port)
        assert addresses and all(address.is_loopback for address in addresses)


def test_infer_returns_model_scores(client: Client) -> None:
    outputs = client.infer(RANKING, pairs([1, 2, 3], [7, 8, 9]), [SCORE_OUTPUT])

    score = outputs[SCORE_OUTPUT]
    assert score.dtype == np.float32 and score.shape == (3, 1)
    np.testing.assert_array_equal(score.ravel(), [1007, 2008, 3009])


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({USER_INPUT: np.array([[1]], dtype=np.int64)}, "missing required input"),
        (
            {
                USER_INPUT: np.array([[1.0]], dtype=np.float32),
                ITEM_INPUT: np.array([[1]], dtype=np.int64),
            },
            "data-type is 'FP32'",
        ),
        (pairs([1], [-1]), "ids must be >= 0"),  # raised by the model itself
    ],
    ids=["missing-input", "wrong-dtype", "model-error"],
)
def test_bad_request_gets_triton_error_and_server_keeps_serving(
    client: Client, inputs: dict[str, np.ndarray], message: str
) -> None:
    with pytest.raises(TritonRequestError) as caught:
        client.infer(RANKING, inputs, [SCORE_OUTPUT])

    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
    # Over HTTP the same error, with Triton's HTTP status beside the canonical code.
    assert caught.value.http_status == (400 if isinstance(client, HttpRecflowClient) else None)
    assert message in caught.value.message
    good = client.infer(RANKING, pairs([4], [5]), [SCORE_OUTPUT])
    np.testing.assert_array_equal(good[SCORE_OUTPUT].ravel(), [4005])


def test_invalid_argument_is_not_retried(server: TritonServer, client: Client) -> None:
    executions_before = model_executions(server, RANKING)

    with pytest.raises(TritonRequestError):
        client.infer(RANKING, pairs([1], [-1]), [SCORE_OUTPUT])  # rejected by the model

    assert client.retries > 0
    assert model_executions(server, RANKING) == executions_before + 1


def test_an_unloaded_model_is_not_found_and_not_retried(client: Client) -> None:
    started = time.monotonic()
    with pytest.raises(TritonRequestError) as caught:
        client.infer(SPARE, pairs([1], [2]), [SCORE_OUTPUT])  # in the repository, not loaded

    assert caught.value.code is grpc.StatusCode.NOT_FOUND, caught.value
    assert caught.value.http_status == (404 if isinstance(client, HttpRecflowClient) else None)
    assert caught.value.model == SPARE and SPARE in caught.value.message
    assert time.monotonic() - started < 1.0  # no backoff


def test_score_splits_long_item_lists_into_max_batch_size_requests(
    server: TritonServer, client: Client
) -> None:
    items = list(range(10, 20))  # 10 items at max_batch_size 4: requests of 4, 4 and 2
    executions_before = model_executions(server, RANKING)

    scores = client.score(42, items)

    np.testing.assert_array_equal(scores, expected_scores(42, items))
    assert model_executions(server, RANKING) == executions_before + 3
    assert client.score(42, []).shape == (0,)


def test_recommend_returns_top_k_unseen_candidates(client: Client) -> None:
    top = client.recommend(2, 3, candidates=[5, 1, 9, 3, 9, 7], exclude={9})

    assert top == [(7, 2007.0), (5, 2005.0), (3, 2003.0)]


def test_async_client_recommends_like_the_blocking_one(
    server: TritonServer, client: Client
) -> None:
    # The same call, the same arguments: recommend(user, k, candidates=..., exclude=...).
    async def recommend_async() -> list[tuple[int, float]]:
        async with AsyncRecflowClient.from_config(server.config) as async_client:
            return await async_client.recommend(2, 3, candidates=[5, 1, 9, 3, 9, 7], exclude={9})

    assert asyncio.run(recommend_async()) == client.recommend(
        2, 3, candidates=[5, 1, 9, 3, 9, 7], exclude={9}
    )


def test_async_client_scores_like_the_blocking_one(server: TritonServer, client: Client) -> None:
    items = list(range(11))

    async def score_async() -> np.ndarray:
        async with AsyncRecflowClient.from_config(server.config) as async_client:
            return await async_client.score(7, items)

    np.testing.assert_array_equal(asyncio.run(score_async()), client.score(7, items))


def test_load_and_unload_a_model(server: TritonServer, client: Client) -> None:
    assert not server.is_model_ready(SPARE)

    server.load(SPARE)
    assert server.is_model_ready(SPARE)
    np.testing.assert_array_equal(
        client.infer(SPARE, pairs([3], [4]), [SCORE_OUTPUT])[SCORE_OUTPUT].ravel(), [3004]
    )

    server.unload(SPARE)
    assert not server.is_model_ready(SPARE)


def test_clients_retry_unavailable_until_a_late_server_is_up(
    repository: Path, backend_cache: Path, tmp_path: Path
) -> None:
    ports = {"grpc_port": find_free_port(), "http_port": find_free_port()}
    config = CONFIG.model_copy(update={**ports, "request_timeout_s": 45.0})
    late = make_server(repository, backend_cache, tmp_path, config)
    request = pairs([6], [1])
    for transport in TRANSPORTS.values():
        with transport.from_config(config, retries=0) as impatient:
            assert not impatient.server_ready()
            with pytest.raises(TritonRequestError) as caught:
                impatient.infer(RANKING, request, [SCORE_OUTPUT])
            assert caught.value.code is grpc.StatusCode.UNAVAILABLE

    def patient_infer(transport: type[Client]) -> np.ndarray:
        with transport.from_config(config, retries=1000) as patient:
            return patient.infer(RANKING, request, [SCORE_OUTPUT])[SCORE_OUTPUT]

    late.start()  # not waiting: the clients' retries must bridge the start-up
    try:
        started = time.monotonic()
        # Both at once, so that each retries while the server starts (the HTTP client's
        # connection is refused, the gRPC one's channel is UNAVAILABLE).
        with ThreadPoolExecutor(len(TRANSPORTS)) as pool:
            answers = list(pool.map(patient_infer, TRANSPORTS.values()))
        assert time.monotonic() - started < config.request_timeout_s
        for scores in answers:
            np.testing.assert_array_equal(scores.ravel(), [6001])
    finally:
        late.stop()


def test_wait_ready_reports_the_log_when_the_server_dies(
    repository: Path, backend_cache: Path, tmp_path: Path
) -> None:
    broken = make_server(repository, backend_cache, tmp_path, models=("no_such_model",))

    with pytest.raises(TritonServerError, match="no_such_model") as caught:
        with broken:
            pass
    assert "exited with code" in str(caught.value)
    assert not broken.is_running()


def test_wait_ready_fails_when_another_process_holds_a_port(
    repository: Path, backend_cache: Path, tmp_path: Path
) -> None:
    """Seen in CI: a restarted server's metrics or HTTP port, free while it was down, was taken.
    Triton answers ready on gRPC, fails to bind the next endpoint and exits tens of ms later.
    wait_ready used to return if a poll fell in that window, so without the fix this test fails
    only sometimes; tests/unit/test_listening_ports.py checks the reading it relies on."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        config = CONFIG.model_copy(update={"metrics_port": squatter.getsockname()[1]})
        server = make_server(repository, backend_cache, tmp_path, config)
        with pytest.raises(TritonServerError, match="already in use"):
            with server:
                pass
    assert not server.is_running()


@pytest.mark.parametrize("grace_s", [30.0, 0.0], ids=["sigterm", "sigkill"])
def test_stop_leaves_no_process_behind(
    repository: Path, backend_cache: Path, tmp_path: Path, grace_s: float
) -> None:
    server = make_server(repository, backend_cache, tmp_path)
    with server:
        pgid = server.pid
        assert pgid is not None
        running = process_group(pgid)
        assert len(running) >= 2  # tritonserver and the model's Python stub
        server.stop(grace_s)

    assert not process_group(pgid)
    assert not list(SHM_DIR.glob(f"{server.shm_prefix}*"))


def test_cli_score_and_recommend_print_tables(server: TritonServer, tmp_path: Path) -> None:
    settings = Settings(paths={"home": tmp_path}, serving=server.config.model_dump())
    settings.paths.triton_repo.mkdir()
    catalog = pa.table({"item_id": pa.array([4, 5, 6, 7], pa.int64())})
    pq.write_table(catalog, settings.paths.triton_repo / CATALOG_FILE)
    app = typer.Typer()
    register(app)
    runner = CliRunner()

    scored = runner.invoke(app, ["score", "--user", "3", "--items", "1,2"], obj=settings)
    assert scored.exit_code == 0, scored.output
    assert "3001.0000" in scored.output and "3002.0000" in scored.output

    top = runner.invoke(
        app, ["recommend", "--user", "3", "-k", "2", "--exclude", "7"], obj=settings
    )
    assert top.exit_code == 0, top.output
    assert "3006.0000" in top.output and "3005.0000" in top.output
    assert "3007" not in top.output and "3004" not in top.output


# Runs serve_forever as `recflow serve` does, printing the tritonserver pid once ready.
SERVE_FOREVER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from recflow.config import ServingConfig
    from serving.server import TritonServer

    repository, cache, log_file, config, model = sys.argv[1:]
    server = TritonServer(
        Path(repository),
        ServingConfig.model_validate_json(config),
        log_file=Path(log_file),
        backend_cache_dir=Path(cache),
        models=[model],
    )
    server.serve_forever(on_ready=lambda: print(server.pid, flush=True))
    """
)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_serve_forever_stops_cleanly_on_signal(
    repository: Path, backend_cache: Path, tmp_path: Path, signum: signal.Signals
) -> None:
    args = [repository, backend_cache, tmp_path / "tritonserver.log", CONFIG.model_dump_json()]
    serving = subprocess.Popen(
        [sys.executable, "-c", SERVE_FOREVER, *map(str, args), RANKING],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        announced = serving.stdout.readline()
        assert announced.strip().isdigit(), serving.stderr.read() if serving.poll() else announced
        server_pid = int(announced)
        assert process_group(server_pid)

        serving.send_signal(signum)

        assert serving.wait(STOP_GRACE_S) == 0, serving.stderr.read()
        assert not process_group(server_pid)
    finally:
        serving.kill()
        serving.wait()
