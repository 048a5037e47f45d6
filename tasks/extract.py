"""Safe extraction of a zip archive: every member is checked before the first byte is written."""

from __future__ import annotations

import re
import shutil
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from tasks.variants import DownloadError

# Members smaller than this are not ratio-checked: tiny files compress absurdly well and harmlessly.
RATIO_CHECK_MIN_BYTES = 1 << 20


class UnsafeArchive(DownloadError):
    def __init__(self, archive: Path, member: str | None, reason: str):
        self.archive, self.member, self.reason = archive, member, reason
        where = f"{archive.name}: member {member!r}" if member is not None else archive.name
        super().__init__(f"refusing to extract {where}: {reason}")


def safe_extract(archive: Path, target: Path, *, max_bytes: int, max_ratio: float) -> None:
    """Extract a zip archive into ``target``, refusing anything that could escape or explode.

    Every member is checked before the first byte is written: no absolute paths, no '..', no
    links or special files, no duplicates, total size and per-member ratio within bounds. The
    declared sizes can be trusted as bounds because zipfile stops reading a member at its
    declared size and fails the CRC check if the data differs.
    """
    target.mkdir(parents=True, exist_ok=True)
    root = target.resolve()
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            _check_members(archive, members, max_bytes, max_ratio)
            for info in members:
                dest = target.joinpath(*PurePosixPath(info.filename).parts)
                if not dest.resolve().is_relative_to(root):
                    raise UnsafeArchive(archive, info.filename, "resolves outside the target")
                if info.is_dir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                # "x": never write through something that already exists (e.g. a planted link).
                with zf.open(info) as src, open(dest, "xb") as out:
                    shutil.copyfileobj(src, out)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise UnsafeArchive(archive, None, f"corrupt zip archive ({exc})") from exc


def _check_members(
    archive: Path, members: list[zipfile.ZipInfo], max_bytes: int, max_ratio: float
) -> None:
    seen: set[str] = set()
    total = 0
    for info in members:
        name = info.filename
        reason = _unsafe_name(name) or _unsafe_kind(info)
        if reason:
            raise UnsafeArchive(archive, name, reason)
        key = name.rstrip("/")
        if key in seen:
            raise UnsafeArchive(archive, name, "duplicate entry (a later one would overwrite)")
        seen.add(key)
        total += info.file_size
        if total > max_bytes:
            raise UnsafeArchive(
                archive, name, f"uncompressed size exceeds the {max_bytes:,}-byte limit"
            )
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > RATIO_CHECK_MIN_BYTES and ratio > max_ratio:
            raise UnsafeArchive(
                archive, name, f"compression ratio {ratio:,.0f}:1 exceeds {max_ratio:,.0f}:1"
            )


def _unsafe_name(name: str) -> str | None:
    if not name or "\x00" in name:
        return "empty name or NUL byte"
    if "\\" in name:
        return "backslash in name (a Windows path separator)"
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        return "absolute path"
    if ".." in PurePosixPath(name).parts:
        return "path with '..'"
    return None


_KINDS = {
    stat.S_IFLNK: "symbolic link",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFIFO: "FIFO",
    stat.S_IFSOCK: "socket",
}


def _unsafe_kind(info: zipfile.ZipInfo) -> str | None:
    # Unix modes live in the high 16 bits; archives made elsewhere leave them 0 (= regular).
    kind = stat.S_IFMT(info.external_attr >> 16)
    return _KINDS.get(kind) or (None if kind in (0, stat.S_IFREG, stat.S_IFDIR) else "special file")
