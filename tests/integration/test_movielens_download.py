"""Real archives over real HTTP on 127.0.0.1: verified, normalised, and robust to faults.

Every failure must leave the cache holding either nothing under the archive's name or a
verified archive, and must not create the dataset directory.
"""

from __future__ import annotations

import hashlib
import zipfile

import pyarrow.parquet as pq
import pytest

from recflow.config import DataConfig, DownloadConfig, PathsConfig
from tasks.checksums import MIRROR_CHECKSUMS, ChecksumMismatch
from tasks.download import fetch_dataset
from tasks.extract import UnsafeArchive
from tasks.transfer import TransferFailed
from tasks.variants import VARIANTS
from tests.support.movielens_server import MovieLensServer, make_mirror, movielens_archive

pytestmark = pytest.mark.integration

# No waiting between retries; a short timeout so the stall test is quick.
DOWNLOAD = DownloadConfig(retries=3, backoff_s=0.0, timeout_s=2.0, chunk_bytes=1 << 16)
ML100K_REPACK_SHA256 = "1d4e0130b2cc2e04c60a8c3ea313eecdd96f98930fe423d186daded64207a410"


@pytest.fixture
def paths(tmp_path) -> PathsConfig:
    return PathsConfig(home=tmp_path / "home")


def fetch(variant: str, server: MovieLensServer, paths: PathsConfig, **download):
    config = DownloadConfig(**{**DOWNLOAD.model_dump(), **download})
    return fetch_dataset(DataConfig(variant=variant, mirror=server.url, download=config), paths)


def assert_nothing_unverified(paths: PathsConfig, variant: str) -> None:
    archive = paths.cache_dir / f"{variant}.zip"
    if archive.exists():
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        assert digest in (VARIANTS[variant].sha256, ML100K_REPACK_SHA256)
    assert not (paths.raw_dir / variant).exists()


# --- the real archives ----------------------------------------------------------------------


def test_ml100k_repack_declared_by_the_mirror(tmp_path, paths):
    archive = movielens_archive("ml-100k.zip")
    mirror = make_mirror(tmp_path / "mirror", [archive], declare=True)
    with MovieLensServer(mirror) as server:
        dataset = fetch("ml-100k", server, paths)
        assert dataset.checksum == ML100K_REPACK_SHA256
        assert (dataset.n_interactions, dataset.n_users, dataset.n_items) == (100_000, 943, 1682)
        assert dataset.has_users and pq.read_metadata(dataset.users).num_rows == 943
        assert pq.read_metadata(dataset.interactions).num_rows == 100_000

        served = len(server.archive_requests())
        assert fetch("ml-100k", server, paths) == dataset
        assert len(server.archive_requests()) == served  # reused: not downloaded again


def test_ml100k_repack_without_a_declaration_is_a_mismatch(tmp_path, paths):
    mirror = make_mirror(tmp_path / "mirror", [movielens_archive("ml-100k.zip")])
    with MovieLensServer(mirror) as server, pytest.raises(ChecksumMismatch) as error:
        fetch("ml-100k", server, paths)
    assert error.value.file == "ml-100k.zip"
    assert error.value.expected == VARIANTS["ml-100k"].sha256
    assert error.value.actual == ML100K_REPACK_SHA256
    assert not any(paths.cache_dir.glob("ml-100k.zip*"))
    assert_nothing_unverified(paths, "ml-100k")


def test_ml_latest_small_verified_against_the_official_checksum(tmp_path, paths):
    mirror = make_mirror(tmp_path / "mirror", [movielens_archive("ml-latest-small.zip")])
    with MovieLensServer(mirror) as server:
        dataset = fetch("ml-latest-small", server, paths)
    assert dataset.checksum == VARIANTS["ml-latest-small"].sha256
    assert (dataset.n_interactions, dataset.n_users, dataset.n_items) == (100_836, 610, 9742)
    assert not dataset.has_users and (dataset.path / "tags.parquet").exists()


# --- transfer faults ------------------------------------------------------------------------


@pytest.fixture
def server(tmp_path):
    mirror = make_mirror(tmp_path / "mirror", [movielens_archive("ml-latest-small.zip")])
    with MovieLensServer(mirror) as running:
        yield running


def test_a_dropped_connection_is_resumed_with_a_range_request(server, paths):
    server.faults.drops, server.faults.drop_after_bytes = 1, 400_000
    dataset = fetch("ml-latest-small", server, paths)
    assert dataset.n_interactions == 100_836
    first, second = server.archive_requests()
    assert first.range is None
    assert second.status == 206 and second.range.startswith("bytes=")
    assert 0 < int(second.range[len("bytes=") : -1]) <= 400_000


def test_a_server_that_ignores_range_is_downloaded_again_from_the_start(server, paths):
    server.faults.drops, server.faults.drop_after_bytes = 1, 400_000
    server.faults.honour_range = False
    assert fetch("ml-latest-small", server, paths).n_interactions == 100_836
    assert [r.status for r in server.archive_requests()] == [200, 200]


def test_a_partial_file_from_an_earlier_run_is_resumed(server, paths):
    archive = movielens_archive("ml-latest-small.zip").read_bytes()
    paths.cache_dir.mkdir(parents=True)
    (paths.cache_dir / "ml-latest-small.zip.part").write_bytes(archive[:300_000])
    assert fetch("ml-latest-small", server, paths).n_interactions == 100_836
    assert [r.range for r in server.archive_requests()] == ["bytes=300000-"]


def test_two_server_errors_then_success(server, paths):
    server.faults.errors = 2
    assert fetch("ml-latest-small", server, paths).n_interactions == 100_836
    assert [r.status for r in server.archive_requests()] == [500, 500, 200]


def test_persistent_server_errors_give_up_cleanly(server, paths):
    server.faults.errors = 100
    with pytest.raises(TransferFailed, match="giving up after 3 attempts: HTTP 500"):
        fetch("ml-latest-small", server, paths, retries=2)
    assert len(server.archive_requests()) == 3
    assert_nothing_unverified(paths, "ml-latest-small")


def test_a_stalled_server_times_out(server, paths):
    server.faults.stall_s = 30.0
    with pytest.raises(TransferFailed, match="ReadTimeout"):
        fetch("ml-latest-small", server, paths, retries=0, timeout_s=0.3)
    assert_nothing_unverified(paths, "ml-latest-small")


# --- corrupt or hostile archives ------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "flipped byte"])
def test_a_damaged_archive_is_a_mismatch_and_leaves_no_file(tmp_path, paths, damage):
    data = bytearray(movielens_archive("ml-latest-small.zip").read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0x01
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "ml-latest-small.zip").write_bytes(bytes(data))
    with MovieLensServer(mirror) as server, pytest.raises(ChecksumMismatch) as error:
        fetch("ml-latest-small", server, paths)
    assert error.value.actual == hashlib.sha256(data).hexdigest()
    assert not any(paths.cache_dir.glob("ml-latest-small.zip*"))
    assert_nothing_unverified(paths, "ml-latest-small")


def test_a_wrong_declared_checksum_is_a_mismatch_naming_the_declaration(tmp_path, paths):
    mirror = make_mirror(tmp_path / "mirror", [movielens_archive("ml-latest-small.zip")])
    (mirror / MIRROR_CHECKSUMS).write_text(f"{'0' * 64}  ml-latest-small.zip\n")
    with MovieLensServer(mirror) as server, pytest.raises(ChecksumMismatch) as error:
        fetch("ml-latest-small", server, paths)
    assert error.value.expected == "0" * 64
    assert error.value.origin == f"{server.url}/{MIRROR_CHECKSUMS}"
    assert_nothing_unverified(paths, "ml-latest-small")


def _symlink_member() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("ml-100k/u.data")
    info.create_system = 3
    info.external_attr = 0o120777 << 16  # a symbolic link
    return info


@pytest.mark.parametrize(
    ("member", "data", "reason"),
    [
        ("ml-100k/../../../escaped.txt", b"zip slip", "'..'"),
        ("ml-100k/u.data", bytes(32 << 20), "compression ratio"),
        (_symlink_member(), b"/etc/passwd", "symbolic link"),
    ],
    ids=["zip-slip", "zip-bomb", "symlink"],
)
def test_hostile_archives_are_refused_even_with_a_valid_declaration(
    tmp_path, paths, member, data, reason
):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with zipfile.ZipFile(mirror / "ml-100k.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ml-100k/README", b"looks legitimate")
        zf.writestr(member, data)
    digest = hashlib.sha256((mirror / "ml-100k.zip").read_bytes()).hexdigest()
    (mirror / MIRROR_CHECKSUMS).write_text(f"{digest}  ml-100k.zip\n")
    with MovieLensServer(mirror) as server, pytest.raises(UnsafeArchive, match=reason):
        fetch("ml-100k", server, paths)
    assert not (paths.raw_dir / "ml-100k").exists()
    assert not list(tmp_path.rglob("escaped.txt"))
    assert [p.name for p in paths.raw_dir.iterdir()] == []  # no staging left behind
