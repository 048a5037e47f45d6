"""Launch the Triton Inference Server that ships inside the ``nvidia-pytriton`` wheel.

The wheel carries a CPU-capable ``tritonserver`` 2.51 binary, its shared libraries and a Python
backend, but not laid out so the binary can run as is: the Python backend needs the stub built
for our interpreter next to it, the binary and the stub need library paths, and the stub must
find our venv's interpreter. :class:`TritonServer` prepares all of that, runs the binary on
loopback with explicit model control, and stops it (and the stub processes it forks) without
leaving anything behind. Linux only, like the binary.
"""

from __future__ import annotations

import collections
import hashlib
import importlib.metadata
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from types import TracebackType

from recflow.atomic import atomic_dir
from recflow.config import PathsConfig, ServingConfig, Settings
from recflow_client import RecflowClient

STUB_NAME = "triton_python_backend_stub"
# The name the stub looks up on PATH to find its interpreter and, from it, its site-packages.
STUB_INTERPRETER = "python3"
# Triton finishes in-flight requests and unloads models for at most this long after SIGTERM;
# we wait a little longer before SIGKILL so a clean shutdown is never cut short.
EXIT_TIMEOUT_S = 20
STOP_GRACE_S = EXIT_TIMEOUT_S + 10.0
READY_POLL_S = 0.25
LOG_TAIL_LINES = 40
SHM_DIR = Path("/dev/shm")
KILL_WAIT_S = 5.0
KILL_POLL_S = 0.05
# Ports for servers configured with port 0 are drawn from [PORT_FLOOR, start of the ephemeral
# range): above the well-known and most registered services' ports.
PORT_FLOOR = 10_000
PORT_DRAWS = 100
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


class TritonServerError(RuntimeError):
    """The server could not be started or died; the message ends with the tail of its log."""


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (another process may still take it).

    Drawn below the kernel's ephemeral range, from which the kernel gives ports to every
    outgoing connection and every bind to port 0 on the host. A server keeps its ports across a
    restart, and they are free while it is down: in that range, any connection the host opens
    meanwhile may take one, and the restarted server then cannot bind it.
    """
    ephemeral_low = int(EPHEMERAL_RANGE_FILE.read_text().split()[0])
    if ephemeral_low <= PORT_FLOOR:  # no room below the range: the kernel's own choice
        candidates = [0]
    else:
        room = ephemeral_low - PORT_FLOOR
        candidates = [PORT_FLOOR + secrets.randbelow(room) for _ in range(PORT_DRAWS)]
    for port in candidates:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue  # taken: draw again
            return sock.getsockname()[1]
    raise TritonServerError(f"no free port on {host} in [{PORT_FLOOR}, {ephemeral_low})")


def process_group(pgid: int) -> set[int]:
    """Pids of the live (not zombie) processes in process group ``pgid``, read from /proc."""
    members = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name is in parentheses and may contain spaces: split after it.
            state, _ppid, group = stat.read_text().rpartition(")")[2].split()[:3]
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited while we looked
        if int(group) == pgid and state != "Z":
            members.add(int(stat.parent.name))
    return members


def listening_ports(pid: int) -> set[int]:
    """TCP ports on which process ``pid`` holds a listening socket (IPv4 or IPv6), from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with suppress(FileNotFoundError):  # closed while we looked
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            # local address "ADDR:PORT" in hex, state 0A is LISTEN, inode is the tenth field.
            if fields[3] == "0A" and fields[9] in inodes:
                ports.add(int(fields[1].rpartition(":")[2], 16))
    return ports


def discover_models(repository: Path) -> list[str]:
    """Names of the model directories in ``repository`` (those holding a ``config.pbtxt``).

    Hidden entries are skipped: they are staging directories of an export still in progress.
    """
    if not Path(repository).is_dir():
        raise TritonServerError(f"no model repository at {repository}")
    return sorted(
        entry.name
        for entry in Path(repository).iterdir()
        if not entry.name.startswith(".") and (entry / "config.pbtxt").is_file()
    )


def default_log_file(paths: PathsConfig) -> Path:
    """Where ``recflow serve`` writes the server's output (stdout and stderr, stubs included)."""
    return paths.logs_dir / "tritonserver.log"


def _pytriton_root() -> Path:
    # find_spec locates the package without importing it (importing pytriton takes ~2 s).
    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        raise TritonServerError("nvidia-pytriton is not installed; it provides tritonserver")
    return Path(spec.origin).parent


def tritonserver_binary() -> Path:
    return _pytriton_root() / "tritonserver" / "bin" / "tritonserver"


def prepare_backend_dir(cache_dir: Path) -> Path:
    """Build (once) a backend directory holding the bundled backends plus our Python's stub.

    Backend files are symlinked; the stub is copied because the Python backend chmods it at
    start-up, which must not touch (possibly read-only) site-packages. The directory is keyed
    by pytriton and Python version, so an upgrade of either builds a fresh one, and by where
    pytriton is installed: the links point into that environment, and one built for a venv
    since deleted or moved left Triton "unable to find backend library for backend 'python'".
    """
    dist = _pytriton_root() / "tritonserver"
    python_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / python_version / STUB_NAME
    if not stub.is_file():
        raise TritonServerError(f"nvidia-pytriton has no Python backend stub for {python_version}")
    pytriton_version = importlib.metadata.version("nvidia-pytriton")
    installed_at = hashlib.sha256(str(dist.resolve()).encode()).hexdigest()[:12]
    target = Path(cache_dir) / (
        f"triton-backends-pytriton{pytriton_version}-py{python_version}-{installed_at}"
    )
    if (target / "python" / STUB_NAME).is_file():
        return target
    try:
        with atomic_dir(target) as staging:
            for backend in (dist / "backends").iterdir():
                (staging / backend.name).mkdir()
                for item in backend.iterdir():
                    (staging / backend.name / item.name).symlink_to(item)
            shutil.copy2(stub, staging / "python" / STUB_NAME)
    except OSError:
        # Another process building the same directory concurrently won the rename.
        if not (target / "python" / STUB_NAME).is_file():
            raise
    return target


def server_env(base: Mapping[str, str]) -> dict[str, str]:
    """``base`` plus the library paths and ``PATH`` that tritonserver and the Python stub need."""
    env = dict(base)
    # The wheel's bundled libraries, then our interpreter's libpython: without the latter the
    # stub picks up the system libpython3.11, which is older and fails on `import ssl`.
    bundled = _pytriton_root().parent / "nvidia_pytriton.libs"
    libs = [str(bundled), sysconfig.get_config_var("LIBDIR")]
    inherited = [entry for entry in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if entry]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(dict.fromkeys(libs + inherited))
    # The stub runs an isolated interpreter: PYTHONPATH is ignored and sys.path comes from the
    # first `python3` on PATH. Putting our venv's first gives model.py our packages (recflow
    # included, being installed in the venv) and our numpy; another numpy makes the stub send
    # empty outputs without any error.
    venv_bin = Path(sys.executable).parent
    if not (venv_bin / STUB_INTERPRETER).exists():
        raise TritonServerError(f"{venv_bin} has no {STUB_INTERPRETER}; the Python stub needs it")
    env["PATH"] = os.pathsep.join([str(venv_bin), env.get("PATH", os.defpath)])
    return env


def _raise_interrupt(signum: int, frame: object) -> None:
    # SIGTERM (systemd, docker stop, kill) takes the same clean path as Ctrl-C.
    raise KeyboardInterrupt


class TritonServer:
    """One tritonserver process serving ``repository`` with explicit model control.

    Use as a context manager (start, wait until ready, stop on exit) or call :meth:`start`,
    :meth:`wait_ready` and :meth:`stop` yourself. Ports set to 0 in ``config`` are replaced by
    free ones when the object is created, so :attr:`grpc_url` is known before start.
    """

    def __init__(
        self,
        repository: Path,
        config: ServingConfig,
        *,
        log_file: Path,
        backend_cache_dir: Path,
        models: Sequence[str] = (),
    ) -> None:
        self.repository = Path(repository).resolve()
        self.config = config.model_copy(
            update={
                name: getattr(config, name) or find_free_port(config.host)
                for name in ("grpc_port", "http_port", "metrics_port")
            }
        )
        self.log_file = Path(log_file)
        self.backend_cache_dir = Path(backend_cache_dir)
        self.models = list(models)
        self._process: subprocess.Popen[bytes] | None = None
        # Names the Python backend's /dev/shm regions: unique, so two servers on one host
        # (parallel test runs, a second `recflow serve`) never collide, and so stop() can
        # remove the regions a killed server leaves behind.
        self.shm_prefix = f"recflow{os.getpid()}_{secrets.token_hex(4)}_"
        self._client = RecflowClient.from_config(self.config, retries=0)

    @classmethod
    def from_settings(cls, settings: Settings, models: Sequence[str] | None = None) -> TritonServer:
        """The server for ``paths.triton_repo``; ``models=None`` loads every model there."""
        repository = settings.paths.triton_repo
        return cls(
            repository,
            settings.serving,
            log_file=default_log_file(settings.paths),
            backend_cache_dir=settings.paths.cache_dir,
            models=discover_models(repository) if models is None else models,
        )

    @property
    def grpc_url(self) -> str:
        return f"{self.config.host}:{self.config.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.config.host}:{self.config.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.config.host}:{self.config.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def command(self, backend_dir: Path) -> list[str]:
        """The command line that runs tritonserver for this configuration."""
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            raise TritonServerError("setpriv (util-linux) is needed to launch tritonserver")
        cfg = self.config
        return [
            # If we are killed outright, the kernel sends tritonserver SIGTERM instead of
            # leaving it orphaned and holding the ports. setpriv sets that up, then execs the
            # server; a preexec_fn would fork() under gRPC's threads, which crashes the child.
            setpriv,
            "--pdeathsig=TERM",
            "--",
            str(tritonserver_binary()),
            f"--model-repository={self.repository}",
            f"--backend-directory={backend_dir}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            "--model-control-mode=explicit",
            *(f"--load-model={name}" for name in self.models),
            # One model at a time: several Python stubs initializing at once crashed the Python
            # backend (boost::interprocess::lock_exception), with TensorFlow stubs and, less
            # often, with the light ones too (#16). A light stub loads in about 2 s.
            "--model-load-thread-count=1",
            f"--grpc-address={cfg.host}",
            f"--grpc-port={cfg.grpc_port}",
            f"--http-address={cfg.host}",
            f"--http-port={cfg.http_port}",
            f"--metrics-address={cfg.host}",
            f"--metrics-port={cfg.metrics_port}",
            f"--exit-timeout-secs={EXIT_TIMEOUT_S}",
        ]

    def start(self) -> None:
        """Spawn tritonserver, truncating the log file; returns at once (see :meth:`wait_ready`).

        The server gets SIGTERM when the *thread* that started it exits (so it never outlives
        a killed launcher): start it from a thread that lives as long as the server should.
        """
        if self.is_running():
            raise TritonServerError(f"tritonserver is already running (pid {self.pid})")
        command = self.command(prepare_backend_dir(self.backend_cache_dir))
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("wb") as log:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=server_env(os.environ),
                # Own process group: Ctrl-C in the terminal reaches only us, so we control the
                # shutdown, and stop() can sweep up the Python stubs the server forks.
                start_new_session=True,
            )

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            with self.log_file.open(errors="replace") as log:
                return "".join(collections.deque(log, maxlen=lines))
        except FileNotFoundError:
            return ""

    def _raise_if_exited(self, during: str) -> None:
        if self._process is None:
            raise TritonServerError("tritonserver was not started")
        code = self._process.poll()
        if code is not None:
            raise TritonServerError(
                f"tritonserver exited with code {code} {during}; end of {self.log_file}:\n"
                f"{self.log_tail()}"
            )

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Block until the server and its start-up models are ready.

        Raises :class:`TritonServerError` if the process exits first and :class:`TimeoutError`
        after ``timeout_s`` (default ``startup_timeout_s``); both carry the tail of the log.
        """
        timeout_s = timeout_s or self.config.startup_timeout_s
        deadline = time.monotonic() + timeout_s
        while True:
            self._raise_if_exited("during start-up")
            # gRPC answers ready before the HTTP and metrics endpoints start; if one of their
            # ports is taken, tritonserver exits right after. Ready means it holds all three.
            if self._client.server_ready() and self._listens_on_every_port():
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"tritonserver not ready at {self.grpc_url} after {timeout_s} s; "
                    f"end of {self.log_file}:\n{self.log_tail()}"
                )
            time.sleep(READY_POLL_S)

    def _listens_on_every_port(self) -> bool:
        ports = {self.config.grpc_port, self.config.http_port, self.config.metrics_port}
        try:
            return self.pid is not None and ports <= listening_ports(self.pid)
        except FileNotFoundError:  # exited meanwhile: the next poll reports it
            return False

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM, SIGKILL after ``grace_s``, then kill whatever is left of the process group."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(grace_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        # A killed (or crashed) server leaves its Python stubs orphaned in its process group.
        # The group id cannot be reused while any member is alive, so this hits only them.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        # SIGKILL takes effect asynchronously; return only once nothing of the server runs.
        deadline = time.monotonic() + KILL_WAIT_S
        while process_group(process.pid) and time.monotonic() < deadline:
            time.sleep(KILL_POLL_S)
        for region in SHM_DIR.glob(f"{self.shm_prefix}*"):
            region.unlink(missing_ok=True)

    def serve_forever(self, on_ready: Callable[[], None] | None = None) -> None:
        """Start, wait until ready, call ``on_ready``, then serve until SIGINT or SIGTERM.

        Returns after a clean stop; raises :class:`TritonServerError` if the server dies on its
        own. Must run in the main thread (it installs signal handlers).
        """
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, _raise_interrupt) for sig in handled}
        try:
            self.start()
            self.wait_ready()
            if on_ready is not None:
                on_ready()
            while True:
                time.sleep(READY_POLL_S)
                self._raise_if_exited("while serving")
        except KeyboardInterrupt:
            pass
        finally:
            # A second Ctrl-C must not abandon the shutdown half-way; stop() escalates itself.
            for sig in handled:
                signal.signal(sig, signal.SIG_IGN)
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def load(self, name: str) -> None:
        """Load (or reload, after the files changed) ``name``; returns once it is ready."""
        self._client.load_model(name, timeout_s=self.config.startup_timeout_s)

    def unload(self, name: str) -> None:
        self._client.unload_model(name)

    def is_model_ready(self, name: str) -> bool:
        return self._client.model_ready(name)

    def __enter__(self) -> TritonServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
