"""Atomic publication of files and directories: build beside the target, then rename.

A reader (or a crash) never sees half a version: either the old target or the new one.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_dir(target: Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a staging directory that becomes ``target`` when the block exits cleanly.

    The staging directory is a hidden sibling of ``target`` (same filesystem, so the final
    ``rename`` is atomic). On error it is removed and ``target`` is left untouched.
    With ``replace=True`` an existing ``target`` is swapped out; otherwise it is an error.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not replace:
        raise FileExistsError(f"{target} already exists")
    remove_orphaned_staging(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-{_tag()}", dir=target.parent))
    try:
        yield staging
        _fsync_tree(staging)
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.retired-", dir=target.parent))
            os.rename(target, retired / target.name)
            os.rename(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.rename(staging, target)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(target: Path, mode: str = "wb") -> Iterator:
    """Open a temp file beside ``target``; it replaces ``target`` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_orphaned_staging(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{_tag()}", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(target: Path, text: str) -> None:
    with atomic_file(target, "w") as handle:
        handle.write(text)


def _tag() -> str:
    # Who is writing: a writer killed outright (SIGKILL, OOM, power loss) cannot remove its
    # staging directory or temp file, and the next writer beside it can then tell it is orphaned.
    return f"{_HOST}-{os.getpid()}-"


_HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())
# .NAME.staging-HOST-PID-RANDOM (atomic_dir) and .NAME.HOST-PID-RANDOM.tmp (atomic_file).
_ORPHAN = re.compile(r"\..+\.(?:staging-)?" + re.escape(_HOST) + r"-(\d+)-[a-z0-9_]+(?:\.tmp)?")


def remove_orphaned_staging(target: Path) -> list[Path]:
    """Remove staging directories and temp files beside ``target`` whose writers have died.

    Only writers on this host are judged (a pid means nothing elsewhere), and a live pid, even
    one reused by another process, keeps its entry: nothing in progress is ever removed.
    """
    removed = []
    for entry in Path(target).parent.glob(".*"):
        match = _ORPHAN.fullmatch(entry.name)
        if match is not None and not _alive(int(match.group(1))):
            removed.append(_remove(entry))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by someone else
    return True


def _remove(entry: Path) -> Path:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)
    return entry


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
