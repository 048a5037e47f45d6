"""Faults while publishing: the exporting process killed (SIGKILL) half-way, a full disk and a
read-only directory during ETL and export. In every case Triton keeps serving what it served,
no version directory is half-written, the previous outputs are byte-for-byte intact, and the
next export completes.

Full disk: a real tmpfs of a few hundred KB more than the previous outputs need (mount(8); the
test skips where mounting is not permitted). Unwritable: a read-only bind mount, because root
ignores permission bits (as another user, ``chmod 0555`` would do the same)."""

from __future__ import annotations

import errno
import shutil
import signal
from pathlib import Path

import pytest

from tests.support.processes import (
    finish,
    leftovers,
    mounted,
    python_process,
    ready_versions,
    tree_state,
    version_dirs,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

# Exports a candidate and installs it as the next version, as a pipeline run's gate and publish
# do, in a process of its own.
EXPORT = """
import sys
from pathlib import Path
import pandas as pd
from recflow.artifacts import Candidate, FeatureSet, ItemItemSource, RankingModel, RetrievalModel
from recflow.config import ServingConfig
from serving.repository import export_candidate, install

features, ranking, retrieval, item_item, interactions, repo, config = sys.argv[1:]
cfg = ServingConfig.model_validate_json(config)
print("exporting", flush=True)
candidate = Candidate(
    FeatureSet.load(Path(features)),
    RankingModel.load(Path(ranking)),
    RetrievalModel.load(Path(retrieval)),
    "killed-half-way",
    ItemItemSource.load(Path(item_item)),
)
exported = export_candidate(
    "killed-half-way",
    candidate,
    pd.read_parquet(interactions),
    cfg,
    Path(repo).parent / "bundles" / "killed-half-way",
)
version = install(exported, Path(repo), cfg)
print("version", version, flush=True)
"""
IMPORT_TIMEOUT_S = 300.0
# Leftovers of the kill tests in the shared repository are not what the disk tests check.
IGNORED = shutil.ignore_patterns(".*.staging-*", ".*.tmp")
FREE_BYTES = 256 << 10


def export_process(published, repo: Path):
    args = [
        published.features.path,
        published.ranking.path,
        published.retrieval.path,
        published.item_item.path,
        published.raw.interactions,
        repo,
        published.settings.serving.model_dump_json(),
    ]
    return python_process(EXPORT, *map(str, args))


def complete_versions(repo: Path, names) -> dict[str, list[int]]:
    """Version directories per model, checked to hold the same files as the model's first."""
    found = {}
    for name in names:
        versions = version_dirs(repo, name)
        first = _files(repo / name / str(versions[0]))
        for version in versions[1:]:
            assert _files(repo / name / str(version)) == first, f"{name}/{version} is incomplete"
        found[name] = versions
    return found


def _files(directory: Path) -> list[Path]:
    # __pycache__ appears once Triton has imported a version's model.py.
    return sorted(
        path.relative_to(directory)
        for path in directory.rglob("*")
        if "__pycache__" not in path.parts
    )


def _ranking_renamed(repo: Path, model: str, version: int):
    return (repo / model / str(version)).is_dir()


@pytest.mark.parametrize("moment", ["during-export", "between-endpoints"])
def test_export_killed_half_way_leaves_the_served_version_and_the_next_export_completes(
    moment: str, published, server, endpoint, observe
) -> None:
    repo = published.settings.paths.triton_repo
    names = endpoint.all_models
    served_before = ready_versions(server.grpc_url)
    on_disk_before = complete_versions(repo, names)
    next_version = max(max(v) for v in on_disk_before.values()) + 1

    # The EXPORT script's: where the candidate is exported before it is installed.
    exports = repo.parent / "bundles"
    process = export_process(published, repo)
    try:
        if moment == "during-export":
            wait_until(
                "the export's staging directory", lambda: leftovers(exports), IMPORT_TIMEOUT_S
            )
        else:
            ranking = endpoint.model("ranking")
            wait_until(
                "the ranking version renamed into place",
                lambda: _ranking_renamed(repo, ranking, next_version),
                IMPORT_TIMEOUT_S,
            )
        process.send_signal(signal.SIGKILL)
    finally:
        code, output = finish(process, 60)
    assert code == -signal.SIGKILL, output

    after_kill = complete_versions(repo, names)
    stale = leftovers(repo) + leftovers(exports)
    assert ready_versions(server.grpc_url) == served_before  # nothing was loaded
    assert all(max(v) <= next_version for v in after_kill.values())

    rerun = export_process(published, repo)
    code, output = finish(rerun, IMPORT_TIMEOUT_S)
    assert code == 0, output
    version = int(output.split("version ")[-1].split()[0])
    served_after = ready_versions(server.grpc_url)
    observe(
        killed_at=moment,
        versions_on_disk_before=on_disk_before,
        versions_on_disk_after_kill=after_kill,
        staging_leftovers_after_kill=stale,
        leftovers_after_next_export=leftovers(repo),
        served_before=served_before,
        next_export_version=version,
        served_after_next_export=served_after,
    )
    assert version >= next_version
    # Loading is an operator's (or the soak's) step: until then the previous version serves.
    assert served_after == served_before
    assert all(max(versions) == version for versions in complete_versions(repo, names).values())
    # The next export removed what the killed one left (recflow.atomic: orphaned staging).
    assert leftovers(repo) == leftovers(exports) == []


@pytest.fixture
def roomy_copy(published, tmp_path: Path):
    """A tmpfs holding copies of the previous outputs, with FREE_BYTES left free."""
    source = published.settings.paths.home
    needed = sum(p.stat().st_size + 4096 for p in source.rglob("*") if p.is_file() or p.is_dir())
    home = tmp_path / "home"
    with mounted(home, "-t", "tmpfs", "-o", f"size={needed + FREE_BYTES}", "tmpfs"):
        for name in ("data", "features", "triton"):
            shutil.copytree(source / name, home / name, ignore=IGNORED)
        yield home


def fill(home: Path, leave_bytes: int) -> None:
    """Fill the file system of ``home`` up to ``leave_bytes`` free."""
    stats = shutil.disk_usage(home)
    with open(home / "ballast", "wb") as ballast:
        ballast.truncate(0)
        ballast.write(bytes(max(0, stats.free - leave_bytes)))


def test_full_disk_during_export_and_install_publishes_nothing(
    published, roomy_copy: Path, tmp_path: Path, observe
) -> None:
    from serving.repository import install

    repo, bundles = roomy_copy / "triton", roomy_copy / "bundles"
    exported = published.exported(tmp_path / "exported")  # made before the disk filled up
    fill(roomy_copy, 64 << 10)
    before = tree_state(repo)
    with pytest.raises(OSError) as export_failure:
        published.exported(bundles / "full")
    with pytest.raises(OSError) as install_failure:
        install(exported, repo, published.settings.serving)
    observe(
        export_error=str(export_failure.value)[:200],
        install_error=str(install_failure.value)[:200],
        leftovers=leftovers(repo) + leftovers(bundles),
    )
    assert export_failure.value.errno == install_failure.value.errno == errno.ENOSPC
    assert tree_state(repo) == before
    assert not (bundles / "full").exists()
    assert leftovers(repo) == leftovers(bundles) == []


def test_full_disk_during_etl_keeps_the_previous_features(
    published, roomy_copy: Path, observe
) -> None:
    from tasks.features import build_features

    features_dir = roomy_copy / "features"
    fill(roomy_copy, 64 << 10)
    before = tree_state(features_dir)
    changed = published.settings.features.model_copy(update={"seed": 7})  # a new fingerprint
    with pytest.raises(OSError) as failure:
        build_features(published.raw, changed, features_dir)
    observe(error=str(failure.value)[:200], leftovers=leftovers(features_dir))
    assert failure.value.errno == errno.ENOSPC
    assert tree_state(features_dir) == before
    assert leftovers(features_dir) == []


@pytest.fixture
def read_only_home(published, tmp_path: Path):
    home = tmp_path / "home"
    for name in ("data", "features", "triton"):
        shutil.copytree(published.settings.paths.home / name, home / name, ignore=IGNORED)
    with mounted(home, "--bind", str(home)):
        with mounted(home, "-o", "remount,bind,ro", str(home)):
            yield home


def test_read_only_directories_during_etl_and_export(
    published, read_only_home: Path, tmp_path: Path, observe
) -> None:
    from recflow.config import DataConfig, PathsConfig
    from serving.repository import install
    from tasks.download import fetch_dataset
    from tasks.features import build_features

    exported = published.exported(tmp_path / "exported")
    before = tree_state(read_only_home)
    other_data = DataConfig(synthetic={"n_users": 50, "n_items": 20, "n_ratings": 500})
    errors = {}
    for stage, run in {
        "fetch": lambda: fetch_dataset(other_data, PathsConfig(home=read_only_home)),
        "features": lambda: build_features(
            published.raw,
            published.settings.features.model_copy(update={"seed": 7}),
            read_only_home / "features",
        ),
        "export": lambda: published.exported(read_only_home / "bundles" / "read-only"),
        "install": lambda: install(exported, read_only_home / "triton", published.settings.serving),
    }.items():
        with pytest.raises(OSError) as failure:
            run()
        errors[stage] = str(failure.value)[:200]
        assert failure.value.errno in (errno.EROFS, errno.EACCES), failure.value
        assert str(read_only_home) in str(failure.value)
    observe(errors=errors)
    assert tree_state(read_only_home) == before
