"""Registry, checksum resolution, safe extraction, the local-directory mirror, cache and CLI.

Transfers over HTTP (resume, retries, faults) are in tests/integration/test_movielens_download.py.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest
import typer
from prefect.states import Failed
from typer.testing import CliRunner

from cli.app import main as root_callback
from cli.data import data_app
from recflow.config import DataConfig, DownloadConfig, PathsConfig
from tasks.checksums import (
    MIRROR_CHECKSUMS,
    ChecksumMismatch,
    ChecksumUnavailable,
    expected_checksum,
    file_digests,
    parse_checksum_file,
)
from tasks.download import TASK_RETRIES, _retry_transfer_only, fetch_dataset, fetch_dataset_task
from tasks.extract import UnsafeArchive, safe_extract
from tasks.transfer import SourceRefused, TransferFailed, open_source
from tasks.variants import VARIANTS, DownloadError, UnknownVariant, get_variant
from tests.support.archives import entry, make_zip
from tests.support.movielens_server import make_mirror, movielens_archive

DOWNLOAD = DownloadConfig(retries=0, backoff_s=0.0, timeout_s=5.0)
LIMITS = {"max_bytes": 1 << 30, "max_ratio": 200.0}
SHA = "ab" * 32


# --- registry -------------------------------------------------------------------------------


def test_registry_holds_every_grouplens_variant_with_well_formed_checksums():
    assert set(VARIANTS) == {
        "ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-latest-small", "ml-latest"
    }  # fmt: skip
    for variant in VARIANTS.values():
        assert variant.filename == f"{variant.name}.zip"
        assert variant.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", variant.sha256)
        assert variant.md5 is None or re.fullmatch(r"[0-9a-f]{32}", variant.md5)
    assert VARIANTS["ml-10m"].root == "ml-10M100K"


def test_unknown_variant_names_the_known_ones():
    with pytest.raises(UnknownVariant, match="ml-1m.*synthetic"):
        get_variant("ml-2m")


# --- checksums ------------------------------------------------------------------------------


def test_checksum_file_accepts_sha256sum_output_and_rejects_garbage():
    text = f"# re-packed by us\n{SHA}  ml-100k.zip\n\n{'CD' * 32} *./ml-1m.zip\n"
    assert parse_checksum_file(text, "SHA256SUMS") == {
        "ml-100k.zip": SHA,
        "ml-1m.zip": "cd" * 32,
    }
    with pytest.raises(DownloadError, match="SHA256SUMS line 2"):
        parse_checksum_file(f"{SHA}  a.zip\nmd5 is fine too\n", "SHA256SUMS")


def test_a_mirror_declaration_takes_precedence_over_the_registry(tmp_path):
    (tmp_path / MIRROR_CHECKSUMS).write_text(f"{SHA}  ml-100k.zip\n")
    with open_source(str(tmp_path), DOWNLOAD) as source:
        declared = expected_checksum(VARIANTS["ml-100k"], source)
        official = expected_checksum(VARIANTS["ml-1m"], source)  # not declared by the mirror
    assert (declared.algorithm, declared.value) == ("sha256", SHA)
    assert declared.origin.endswith(MIRROR_CHECKSUMS)
    assert (official.algorithm, official.value) == ("sha256", VARIANTS["ml-1m"].sha256)


def test_variants_without_a_pinned_value_use_the_published_md5(tmp_path):
    with open_source(f"file://{tmp_path}", DOWNLOAD) as source:
        assert expected_checksum(VARIANTS["ml-10m"], source).algorithm == "md5"
        with pytest.raises(ChecksumUnavailable, match=r"ml-latest\.zip\.md5"):
            expected_checksum(VARIANTS["ml-latest"], source)
        (tmp_path / "ml-latest.zip.md5").write_text(f"MD5 (ml-latest.zip) = {'A1' * 16}\n")
        published = expected_checksum(VARIANTS["ml-latest"], source)
    assert (published.algorithm, published.value) == ("md5", "a1" * 16)


def test_a_missing_mirror_directory_is_refused(tmp_path):
    with pytest.raises(SourceRefused, match="does not exist"):
        with open_source(str(tmp_path / "nowhere"), DOWNLOAD):
            pass


# --- safe extraction ------------------------------------------------------------------------


def test_extracts_a_plain_archive(tmp_path):
    archive = make_zip(tmp_path / "ok.zip", [("ml/", b""), ("ml/u.data", b"1\t2\t3\t4\n")])
    safe_extract(archive, tmp_path / "out", **LIMITS)
    assert (tmp_path / "out" / "ml" / "u.data").read_bytes() == b"1\t2\t3\t4\n"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../evil.txt", "'..'"),
        ("ml/../../evil.txt", "'..'"),
        ("/tmp/evil.txt", "absolute path"),
        ("C:/evil.txt", "absolute path"),
        ("ml\\..\\evil.txt", "backslash"),
    ],
)
def test_refuses_names_that_escape_the_target(tmp_path, name, reason):
    # The harmless first member proves nothing is written before every member is checked.
    archive = make_zip(tmp_path / "slip.zip", [("ml/ok.txt", b"ok"), (name, b"pwned")])
    target = tmp_path / "out"
    with pytest.raises(UnsafeArchive, match=re.escape(reason)) as error:
        safe_extract(archive, target, **LIMITS)
    assert repr(name) in str(error.value)
    assert list(target.rglob("*")) == []
    assert not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize(
    ("mode", "kind"),
    [
        (stat.S_IFLNK | 0o777, "symbolic link"),
        (stat.S_IFIFO | 0o644, "FIFO"),
        (stat.S_IFCHR | 0o644, "character device"),
    ],
)
def test_refuses_links_and_special_files(tmp_path, mode, kind):
    archive = make_zip(tmp_path / "link.zip", [(entry("ml/passwd", mode), b"/etc/passwd")])
    with pytest.raises(UnsafeArchive, match=kind):
        safe_extract(archive, tmp_path / "out", **LIMITS)
    assert not (tmp_path / "out" / "ml" / "passwd").exists()


def test_refuses_duplicate_entries(tmp_path):
    archive = make_zip(tmp_path / "dup.zip", [("ml/a", b"first"), ("ml/a", b"second")])
    with pytest.raises(UnsafeArchive, match="duplicate"):
        safe_extract(archive, tmp_path / "out", **LIMITS)


def test_refuses_a_zip_bomb_by_ratio(tmp_path):
    archive = make_zip(tmp_path / "bomb.zip", [("ml/zeros", bytes(16 << 20))])
    assert archive.stat().st_size < 100_000
    with pytest.raises(UnsafeArchive, match=r"compression ratio [\d,]+:1 exceeds 200:1"):
        safe_extract(archive, tmp_path / "out", **LIMITS)
    assert not (tmp_path / "out" / "ml" / "zeros").exists()


def test_refuses_archives_larger_than_the_limit(tmp_path):
    archive = make_zip(tmp_path / "big.zip", [("ml/a", os.urandom(3000))])
    with pytest.raises(UnsafeArchive, match="exceeds the 2,000-byte limit"):
        safe_extract(archive, tmp_path / "out", max_bytes=2000, max_ratio=200.0)


def test_a_file_that_is_not_a_zip_is_an_error_not_a_crash(tmp_path):
    archive = tmp_path / "junk.zip"
    archive.write_bytes(b"<html>503 Service Unavailable</html>")
    with pytest.raises(UnsafeArchive, match="corrupt zip"):
        safe_extract(archive, tmp_path / "out", **LIMITS)


# --- fetch_dataset from a local mirror directory --------------------------------------------


@pytest.fixture
def small_mirror(tmp_path) -> Path:
    return make_mirror(tmp_path / "mirror", [movielens_archive("ml-latest-small.zip")])


def test_local_mirror_fetch_caches_the_archive_and_reuses_the_output(tmp_path, small_mirror):
    paths = PathsConfig(home=tmp_path / "home")
    data = DataConfig(variant="ml-latest-small", mirror=str(small_mirror), download=DOWNLOAD)
    first = fetch_dataset(data, paths)
    assert (first.n_interactions, first.n_users) == (100_836, 610)
    assert first.checksum == VARIANTS["ml-latest-small"].sha256
    assert sorted(p.name for p in paths.cache_dir.iterdir() if not p.name.startswith(".")) == [
        "ml-latest-small.zip"
    ]
    made = first.interactions.stat().st_mtime_ns
    (small_mirror / "ml-latest-small.zip").unlink()  # the mirror is gone: nothing to fetch
    again = fetch_dataset(data, paths)
    assert again == first
    assert again.interactions.stat().st_mtime_ns == made


def test_a_corrupt_cached_archive_is_fetched_again(tmp_path, small_mirror):
    paths = PathsConfig(home=tmp_path / "home")
    paths.cache_dir.mkdir(parents=True)
    (paths.cache_dir / "ml-latest-small.zip").write_bytes(b"bit rot")
    data = DataConfig(variant="ml-latest-small", mirror=str(small_mirror), download=DOWNLOAD)
    dataset = fetch_dataset(data, paths)
    assert dataset.n_interactions == 100_836
    cached = file_digests(paths.cache_dir / "ml-latest-small.zip")
    assert cached["sha256"] == VARIANTS["ml-latest-small"].sha256


def test_a_wrong_archive_in_a_mirror_names_file_expected_and_actual(tmp_path):
    real = movielens_archive("ml-latest-small.zip")
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "ml-100k.zip").symlink_to(real)  # the wrong file under the right name
    paths = PathsConfig(home=tmp_path / "home")
    with pytest.raises(ChecksumMismatch) as error:
        fetch_dataset(DataConfig(variant="ml-100k", mirror=str(mirror), download=DOWNLOAD), paths)
    message = str(error.value)
    assert "ml-100k.zip" in message
    assert VARIANTS["ml-100k"].sha256 in message
    assert VARIANTS["ml-latest-small"].sha256 in message  # what it actually got
    assert MIRROR_CHECKSUMS in message  # how to fix it for a re-packed archive
    assert not any(paths.cache_dir.glob("ml-100k.zip*"))
    assert not (paths.raw_dir / "ml-100k").exists()


# --- Prefect task and CLI -------------------------------------------------------------------


def test_the_task_retries_unreachable_sources_only():
    assert fetch_dataset_task.retries == TASK_RETRIES
    assert _retry_transfer_only(None, None, Failed(data=TransferFailed("503")))
    mismatch = ChecksumMismatch("a.zip", "sha256", SHA, "00" * 32, "registry")
    assert not _retry_transfer_only(None, None, Failed(data=mismatch))
    unsafe = UnsafeArchive(Path("a.zip"), "../x", "path with '..'")
    assert not _retry_transfer_only(None, None, Failed(data=unsafe))


def _cli(*args: str):
    root = typer.Typer()
    root.callback()(root_callback)
    root.add_typer(data_app, name="data")
    return CliRunner().invoke(root, list(args))


def test_cli_fetch_then_list(tmp_path, small_mirror):
    home = str(tmp_path / "home")
    listed = _cli("--home", home, "data", "list")
    assert listed.exit_code == 0, listed.output
    assert re.search(
        r"ml-latest-small\s+│\s+978\.2 kB\s+│\s+sha256\s+│\s+no\s+│\s+no", listed.output
    )

    fetched = _cli(
        "--home", home, "data", "fetch", "ml-latest-small", "--mirror", str(small_mirror)
    )
    assert fetched.exit_code == 0, fetched.output
    assert "100,836 interactions, 610 users" in fetched.output

    listed = _cli("--home", home, "data", "list")
    assert re.search(r"ml-latest-small\s+│.*│\s+yes\s+│\s+yes", listed.output)


def test_cli_reports_errors_without_a_traceback(tmp_path):
    result = _cli("--home", str(tmp_path), "data", "fetch", "ml-2m")
    assert result.exit_code == 1
    assert "unknown dataset variant 'ml-2m'" in result.output
