"""What an archive's checksum must be, and whether a file has it (docs/data.md, "Checksums")."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tasks.transfer import Source
from tasks.variants import DownloadError, Variant

# A mirror declares the sha256 of re-packed archives in this file next to them (sha256sum format).
MIRROR_CHECKSUMS = "SHA256SUMS"
# GroupLens publishes "<archive>.md5" next to each archive; used for variants with no pinned value.
PUBLISHED_MD5_SUFFIX = ".md5"


class ChecksumUnavailable(DownloadError):
    """Nothing says what the archive's checksum should be, so it cannot be verified."""


class ChecksumMismatch(DownloadError):
    def __init__(self, file: str, algorithm: str, expected: str, actual: str, origin: str):
        self.file, self.algorithm = file, algorithm
        self.expected, self.actual, self.origin = expected, actual, origin
        hint = (
            ""
            if origin.endswith(MIRROR_CHECKSUMS)
            else f"; if a mirror re-packed this archive, declare its sha256 in {MIRROR_CHECKSUMS}"
        )
        super().__init__(
            f"{file}: {algorithm} mismatch: expected {expected} (from {origin}), got {actual}{hint}"
        )


@dataclass(frozen=True)
class Checksum:
    algorithm: str  # "sha256" or "md5"
    value: str
    origin: str  # where the value came from, for error messages


def expected_checksum(variant: Variant, source: Source) -> Checksum:
    """The checksum the archive must match, from the most specific declaration available.

    A mirror's own declaration wins (it may have re-packed the archive), then the official
    values of the registry, then the md5 that the source publishes next to the archive.
    """
    if source.is_mirror:
        declared = source.read_text(MIRROR_CHECKSUMS)
        if declared is not None:
            origin = source.location(MIRROR_CHECKSUMS)
            value = parse_checksum_file(declared, origin).get(variant.filename)
            if value is not None:
                return Checksum("sha256", value, origin)
    if variant.sha256:
        return Checksum("sha256", variant.sha256, "recflow's registry of official values")
    if variant.md5:
        return Checksum("md5", variant.md5, "recflow's registry of GroupLens-published md5s")
    published = source.read_text(variant.filename + PUBLISHED_MD5_SUFFIX)
    found = re.search(r"\b[0-9a-fA-F]{32}\b", published or "")
    if found is None:
        raise ChecksumUnavailable(
            f"{variant.filename}: no checksum pinned and none published at "
            f"{source.location(variant.filename + PUBLISHED_MD5_SUFFIX)}; a mirror can declare "
            f"one in {MIRROR_CHECKSUMS}"
        )
    return Checksum(
        "md5", found.group(0).lower(), source.location(variant.filename + PUBLISHED_MD5_SUFFIX)
    )


def parse_checksum_file(text: str, origin: str) -> dict[str, str]:
    """Parse ``sha256sum`` output: '<64 hex>  <name>' (or '<hex> *<name>') per line."""
    sums = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([0-9a-fA-F]{64}) [ *]?(.+)", line)
        if match is None:
            raise DownloadError(
                f"{origin} line {number}: expected '<sha256>  <file>', got {line!r}"
            )
        sums[PurePosixPath(match.group(2).strip()).name] = match.group(1).lower()
    return sums


def file_digests(path: Path, chunk_bytes: int = 1 << 20) -> dict[str, str]:
    """sha256 and md5 of a file in one pass."""
    digests = {"sha256": hashlib.sha256(), "md5": hashlib.md5(usedforsecurity=False)}
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            for digest in digests.values():
                digest.update(chunk)
    return {name: digest.hexdigest() for name, digest in digests.items()}
