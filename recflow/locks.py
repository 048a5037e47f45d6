"""The publish lock: one publisher at a time per model repository.

A publish reads the newest version in the repository and writes version N+1. Two runs doing so
at once would both pick N+1. Scheduled runs are already kept apart by the deployment's
concurrency limit (``recflow schedule``, infra/prefect.yaml), but a manual ``recflow run`` or a
second deployment is not, and the Prefect server may be unreachable. An advisory file lock
beside the repository covers every case on one host or a shared file system with working locks.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

POLL_S = 1.0


class LockTimeout(TimeoutError):
    """Another process held the lock for longer than the caller was willing to wait."""


def publish_lock_file(repo: Path) -> Path:
    # Beside the repository rather than in it: Triton reads every directory in the repository.
    return repo.parent / f".{repo.name}.publish.lock"


@contextmanager
def exclusive_lock(
    path: Path, timeout_s: float, on_wait: Callable[[str], None] = lambda holder: None
) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path``, waiting at most ``timeout_s`` for it.

    ``on_wait`` is called once, with what the holder wrote into the file, if the lock is taken.
    The kernel releases the lock when its holder dies, so a crashed run never blocks the next.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        deadline = time.monotonic() + timeout_s
        waited = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    handle.seek(0)
                    on_wait(handle.read().strip() or "unknown holder")
                    waited = True
                if time.monotonic() >= deadline:
                    raise LockTimeout(f"{path} still held after {timeout_s:.0f} s") from None
                time.sleep(POLL_S)
        try:
            handle.seek(0)
            handle.truncate()
            since = datetime.now(timezone.utc).isoformat(timespec="seconds")
            handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {since}\n")
            handle.flush()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
