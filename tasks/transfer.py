"""Reading a dataset's files from their source: the GroupLens host, a mirror base URL, or a
local mirror directory. HTTP transfers are streamed, resumed from a partial file and retried
with exponential backoff (``DownloadConfig``); a client error is not retried."""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

import httpx
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from recflow.config import DownloadConfig
from tasks.variants import DownloadError

log = logging.getLogger(__name__)
T = TypeVar("T")

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens"


class TransferFailed(DownloadError):
    """The source could not be read, even after retries: worth trying again later."""


class SourceRefused(DownloadError):
    """The source answered with a client error (404, 403...): retrying will not help."""


class _HttpSource:
    def __init__(self, base_url: str, config: DownloadConfig, *, is_mirror: bool):
        self.base_url = base_url.rstrip("/")
        self.is_mirror = is_mirror
        self.config = config
        # identity: Range offsets must count bytes of the file, not of a re-encoding of it.
        self.client = httpx.Client(
            timeout=config.timeout_s,
            follow_redirects=True,
            headers={"Accept-Encoding": "identity", "User-Agent": "recflow"},
        )

    def location(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def read_text(self, name: str) -> str | None:
        """A small optional file from the source, or None if the source has no such file."""

        def attempt() -> str | None:
            response = self.client.get(self.location(name))
            # Object stores answer 403, not 404, for a missing key that may not be listed.
            if response.status_code in (403, 404):
                return None
            _raise_for_status(response)
            return response.text

        return _retrying(self.location(name), self.config, attempt)

    def fetch(self, name: str, part: Path, progress: Progress) -> None:
        """Complete ``part`` from the source, resuming from its current length."""
        bar = progress.add_task(name, total=None)
        _retrying(self.location(name), self.config, lambda: self._resume(name, part, progress, bar))

    def _resume(self, name: str, part: Path, progress: Progress, bar) -> None:
        offset = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        with self.client.stream("GET", self.location(name), headers=headers) as response:
            if response.status_code == 416 and offset:
                if _range_total(response) == offset:
                    return  # the partial file is already complete
                part.unlink()
                raise _Retryable(f"{name}: partial file does not fit the remote one, restarting")
            _raise_for_status(response)
            if response.status_code == 206 and _range_start(response) != offset:
                part.unlink()
                raise _Retryable(f"{name}: server sent another range than asked for, restarting")
            if response.status_code != 206:
                offset = 0  # the server ignored the Range header: start over
            length = response.headers.get("Content-Length")
            progress.update(bar, completed=offset, total=offset + int(length) if length else None)
            with open(part, "ab" if offset else "wb") as out:
                for chunk in response.iter_bytes(self.config.chunk_bytes):
                    out.write(chunk)
                    progress.advance(bar, len(chunk))

    def close(self) -> None:
        self.client.close()


class _DirSource:
    is_mirror = True

    def __init__(self, root: Path, config: DownloadConfig):
        if not root.is_dir():
            raise SourceRefused(f"mirror directory {root} does not exist")
        self.root = root
        self.config = config

    def location(self, name: str) -> str:
        return str(self.root / name)

    def read_text(self, name: str) -> str | None:
        path = self.root / name
        return path.read_text() if path.is_file() else None

    def fetch(self, name: str, part: Path, progress: Progress) -> None:
        source = self.root / name
        if not source.is_file():
            raise SourceRefused(f"{source} does not exist")
        bar = progress.add_task(name, total=source.stat().st_size)
        with open(source, "rb") as src, open(part, "wb") as out:
            while chunk := src.read(self.config.chunk_bytes):
                out.write(chunk)
                progress.advance(bar, len(chunk))

    def close(self) -> None:
        pass


Source = _HttpSource | _DirSource


@contextlib.contextmanager
def open_source(mirror: str | None, config: DownloadConfig) -> Iterator[Source]:
    """The GroupLens host, or the mirror (a base URL, a file:// URL or a directory) replacing it."""
    if mirror is None:
        source = _HttpSource(GROUPLENS_URL, config, is_mirror=False)
    elif mirror.startswith(("http://", "https://")):
        source = _HttpSource(mirror, config, is_mirror=True)
    elif mirror.startswith("file://"):
        source = _DirSource(Path(urlparse(mirror).path), config)
    else:
        source = _DirSource(Path(mirror).expanduser(), config)
    try:
        yield source
    finally:
        source.close()


class _Retryable(Exception):
    """A failure worth another attempt (5xx, 429, a partial file that no longer fits)."""


def _raise_for_status(response: httpx.Response) -> None:
    code = response.status_code
    if code >= 500 or code == 429:
        raise _Retryable(f"HTTP {code} from {response.request.url}")
    if code >= 400:
        raise SourceRefused(f"GET {response.request.url}: HTTP {code} {response.reason_phrase}")


def _retrying(what: str, config: DownloadConfig, attempt: Callable[[], T]) -> T:
    """Run ``attempt`` up to 1 + retries times, backing off exponentially in between."""
    for number in range(config.retries):
        try:
            return attempt()
        except (httpx.TransportError, _Retryable) as exc:
            delay = config.backoff_s * 2**number
            log.warning(
                "%s: %s; retry %d of %d in %.1f s",
                what,
                _describe(exc),
                number + 1,
                config.retries,
                delay,
            )
            time.sleep(delay)
    try:
        return attempt()
    except (httpx.TransportError, _Retryable) as exc:
        raise TransferFailed(
            f"{what}: giving up after {config.retries + 1} attempts: {_describe(exc)}"
        ) from exc


def _describe(exc: Exception) -> str:
    return str(exc) if isinstance(exc, _Retryable) else f"{type(exc).__name__}: {exc}"


def _range_start(response: httpx.Response) -> int | None:
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _range_total(response: httpx.Response) -> int | None:
    match = re.match(r"bytes [^/]*/(\d+)", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def progress_bars() -> Progress:
    """Transfer progress on the terminal, gone once the transfer ends."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        transient=True,
    )
