"""A real HTTP server on 127.0.0.1 serving one directory, with faults switched on per test.

    with MovieLensServer(mirror_dir) as server:
        server.faults.errors = 2            # the next two archive requests get HTTP 500
        fetch(..., mirror=server.url)
        assert server.archive_requests()[1].range == "bytes=..."

Faults apply to archive requests (``*.zip``) only, so checksum files are always served plainly.
Handlers never outlive the server: stopping it also releases any stalled response.

Also here: where the real archives are (``movielens_archive``) and how a test builds a mirror
directory of them (``make_mirror``). The archives' licence keeps them out of the repository, so
tests link to them and skip when they are absent.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

from tests.support.environment import unavailable

REPO = Path(__file__).resolve().parents[2]


def movielens_dir() -> Path:
    default = REPO.parent / "shared" / "data" / "movielens"
    return Path(os.environ.get("RECFLOW_MOVIELENS_DIR", default))


def movielens_archive(name: str) -> Path:
    """A real GroupLens archive from the shared data directory; skips the test if it is absent."""
    path = movielens_dir() / name
    if not path.is_file():
        unavailable(f"{path} not found: set RECFLOW_MOVIELENS_DIR to the MovieLens archive dir")
    return path


def make_mirror(directory: Path, archives: list[Path], declare: bool = False) -> Path:
    """A mirror directory linking to ``archives``; ``declare`` writes their sha256 to SHA256SUMS."""
    directory.mkdir(parents=True, exist_ok=True)
    for archive in archives:
        (directory / archive.name).symlink_to(archive)
    if declare:
        lines = [f"{hashlib.sha256(a.read_bytes()).hexdigest()}  {a.name}\n" for a in archives]
        (directory / "SHA256SUMS").write_text("".join(lines))
    return directory


@dataclass
class Faults:
    errors: int = 0  # answer HTTP 500 to this many archive requests, then serve normally
    drops: int = 0  # close the connection mid-body on this many archive responses...
    drop_after_bytes: int = 0  # ...after sending this many body bytes
    honour_range: bool = True  # False: ignore Range headers and always send the whole file
    stall_s: float = 0.0  # wait this long after the headers before sending the body


@dataclass(frozen=True)
class Request:
    name: str
    range: str | None
    status: int


@dataclass
class MovieLensServer:
    root: Path
    faults: Faults = field(default_factory=Faults)
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        # A short poll interval makes stopping the server (once per test) near-instant.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def archive_requests(self) -> list[Request]:
        return [r for r in self.requests if r.name.endswith(".zip")]

    def __enter__(self) -> MovieLensServer:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def _record(self, name: str, range_header: str | None, status: int) -> None:
        with self._lock:
            self.requests.append(Request(name, range_header, status))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: MovieLensServer

    def handle_error(self, request, client_address) -> None:
        # Clients hanging up on purpose (timeouts, dropped connections) are part of the tests.
        pass


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format, *args) -> None:  # noqa: A002 - the stdlib's signature
        pass

    def do_GET(self) -> None:
        owner = self.server.owner
        name = unquote(urlparse(self.path).path).lstrip("/")
        range_header = self.headers.get("Range")
        path = owner.root / name
        if "/" in name or not path.is_file():
            return self._status(owner, name, range_header, 404)
        faults = owner.faults
        is_archive = name.endswith(".zip")
        with owner._lock:
            fail = is_archive and faults.errors > 0
            drop = is_archive and not fail and faults.drops > 0
            faults.errors -= 1 if fail else 0
            faults.drops -= 1 if drop else 0
        if fail:
            return self._status(owner, name, range_header, 500)

        data = path.read_bytes()
        start, status = 0, 200
        match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
        if match and faults.honour_range:
            start, status = int(match.group(1)), 206
            if start >= len(data):
                return self._status(
                    owner, name, range_header, 416, {"Content-Range": f"bytes */{len(data)}"}
                )
        body = data[start:]
        owner._record(name, range_header, status)
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes" if faults.honour_range else "none")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if is_archive and faults.stall_s and owner._stopping.wait(faults.stall_s):
            return
        if drop and faults.drop_after_bytes < len(body):
            self.wfile.write(body[: faults.drop_after_bytes])
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body)

    def _status(self, owner, name, range_header, code, headers=None) -> None:
        owner._record(name, range_header, code)
        self.send_response(code)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", "0")
        self.end_headers()
