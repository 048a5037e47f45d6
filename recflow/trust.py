"""Code-bearing artifacts are loaded only from places no other user can change.

A model version directory holds ``model.py`` and a pickled NVTabular workflow, and a feature
build holds fitted workflows: loading one runs code. README, "Security and exposure". The
feature stage loads workflows through here (``tasks.features.load_workflow``); the serving
stubs import this module, so it imports nothing heavy.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class UntrustedLocation(PermissionError):
    """Code-bearing artifacts in a place other users may write to: refused, never loaded."""


def require_trusted(path: Path) -> Path:
    """``path``, once it is clear that no other user can have changed what it holds.

    A version directory holds code: ``model.py`` and the pickled NVTabular workflow, which
    ``Workflow.load`` unpickles. Model repositories and artifact directories are therefore
    trusted inputs (README, "Security and exposure"), and loading is refused when ``path`` or
    anything under it is world-writable, or when a directory above it is world-writable
    without the sticky bit (anyone could swap ``path`` for their own).
    """
    path = Path(path).resolve()
    for directory in path.parents:
        mode = directory.stat().st_mode
        if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
            raise UntrustedLocation(f"refusing to load {path}: {directory} is world-writable")
    for root, dirs, files in os.walk(path):
        for entry in [root, *(os.path.join(root, name) for name in dirs + files)]:
            if not os.path.islink(entry) and os.stat(entry).st_mode & stat.S_IWOTH:
                raise UntrustedLocation(f"refusing to load {path}: {entry} is world-writable")
    return path
