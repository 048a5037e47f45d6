"""Get a dataset variant onto disk as canonical tables: ``fetch_dataset`` and its Prefect task.

For a MovieLens variant: resolve the checksum the archive must have (tasks/checksums.py), fetch
the archive into the cache (tasks/transfer.py: streamed, resumed, retried; verified before it is
renamed into place), extract it with every member checked (tasks/extract.py), and normalise it
into ``paths.raw_dir/<variant>`` (tasks/normalize.py). The variants are in tasks/variants.py;
``synthetic`` is generated instead. An existing output made from the same source checksum is
reused. File formats, the mirror checksum file and the safety rules are in docs/data.md.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from recflow.artifacts import (
    MANIFEST,
    MOVIELENS_USERS,
    DatasetDeclaration,
    RawDataset,
    SideFeatures,
)
from recflow.atomic import atomic_dir
from recflow.config import (
    CustomSource,
    DataConfig,
    DownloadConfig,
    InteractionsSource,
    PathsConfig,
    SyntheticConfig,
)
from recflow.locks import exclusive_lock
from tasks import synthetic
from tasks.checksums import Checksum, ChecksumMismatch, expected_checksum, file_digests
from tasks.custom import (
    CUSTOM,
    CustomSourceError,
    build_custom,
    read_files,
    side_features,
    source_checksum,
)
from tasks.extract import safe_extract
from tasks.normalize import NormalizeReport, normalize
from tasks.transfer import Source, TransferFailed, open_source, progress_bars
from tasks.variants import SYNTHETIC, Variant, get_variant

log = logging.getLogger(__name__)

# Rows each normalisation cleaning rule dropped, beside the tables (validation reports them).
SOURCE_CLEANING = "cleaning.json"
# Prefect-level retries, on top of the per-request retries of DownloadConfig.
TASK_RETRIES = 2
TASK_RETRY_BACKOFF_S = 30.0


def fetch_archive(
    variant: Variant,
    source: Source,
    expected: Checksum,
    cache_dir: Path,
    config: DownloadConfig,
) -> tuple[Path, str]:
    """The verified archive in ``cache_dir`` and its sha256, downloading it if needed.

    The download goes to ``<archive>.part``, which survives a failed transfer so the next
    attempt resumes it, and is renamed to ``<archive>`` only once its checksum matches: a file
    under the archive's own name in the cache is always a verified one.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / variant.filename
    part = cache_dir / (variant.filename + ".part")
    # Serialise fetches of one archive: two writers appending to one .part would corrupt it.
    with exclusive_lock(cache_dir / f".{variant.filename}.lock", math.inf):
        if final.exists():
            digests = file_digests(final, config.chunk_bytes)
            if digests[expected.algorithm] == expected.value:
                log.info("%s: verified copy in cache %s", variant.filename, cache_dir)
                return final, digests["sha256"]
            log.warning(
                "%s: cached copy does not match %s %s (from %s); fetching again",
                variant.filename,
                expected.algorithm,
                expected.value,
                expected.origin,
            )
        log.info("%s: fetching from %s", variant.filename, source.location(variant.filename))
        with progress_bars() as progress:
            source.fetch(variant.filename, part, progress)
        digests = file_digests(part, config.chunk_bytes)
        if digests[expected.algorithm] != expected.value:
            part.unlink()
            raise ChecksumMismatch(
                variant.filename,
                expected.algorithm,
                expected.value,
                digests[expected.algorithm],
                expected.origin,
            )
        # No fsync: every use of a cached archive re-verifies it, so a rename or data lost to a
        # crash shows up as a mismatch and a fresh download, never as a corrupt dataset.
        os.replace(part, final)
        log.info("%s: %s verified (%s)", variant.filename, expected.algorithm, expected.origin)
        return final, digests["sha256"]


def source_cleaning(dataset: Path) -> dict[str, int]:
    """Rows each cleaning rule dropped while the tables in ``dataset`` were normalised."""
    file = Path(dataset) / SOURCE_CLEANING
    return json.loads(file.read_text()) if file.is_file() else {}


def fetch_dataset(data: DataConfig, paths: PathsConfig) -> RawDataset:
    """The canonical tables of ``data.variant`` in ``paths.raw_dir``, made unless already there."""
    if data.variant == SYNTHETIC:
        return _synthetic_dataset(data.synthetic, paths.raw_dir)
    if data.variant == CUSTOM:
        return _custom_dataset(data.custom, paths.raw_dir)
    variant = get_variant(data.variant)
    out = paths.raw_dir / variant.name
    with open_source(data.mirror, data.download) as source:
        expected = expected_checksum(variant, source)
        if expected.algorithm == "sha256":
            if done := _reusable(out, variant.name, expected.value):
                return done
        archive, sha256 = fetch_archive(variant, source, expected, paths.cache_dir, data.download)
    if done := _reusable(out, variant.name, sha256):
        return done

    def build(staging: Path) -> tuple[NormalizeReport, DatasetDeclaration]:
        extracted = staging / ".extracted"
        safe_extract(
            archive,
            extracted,
            max_bytes=data.download.max_uncompressed_bytes,
            max_ratio=data.download.max_compression_ratio,
        )
        report = normalize(variant.layout, extracted / variant.root, staging)
        shutil.rmtree(extracted)
        return report, _movielens_declaration(report)

    return _publish(out, variant.name, sha256, build)


def _movielens_declaration(report: NormalizeReport) -> DatasetDeclaration:
    return DatasetDeclaration(users_features=MOVIELENS_USERS if report.has_users else None)


def _synthetic_dataset(config: SyntheticConfig, raw_dir: Path) -> RawDataset:
    checksum = synthetic.config_checksum(config)
    out = raw_dir / synthetic.dataset_name(config)

    def build(staging: Path) -> tuple[NormalizeReport, DatasetDeclaration]:
        report = synthetic.generate(config, staging)
        return report, _movielens_declaration(report)

    return _reusable(out, SYNTHETIC, checksum) or _publish(out, SYNTHETIC, checksum, build)


def _custom_dataset(source: CustomSource, raw_dir: Path) -> RawDataset:
    """Your tables (data.custom), read and checked, as a dataset named ``source.name``."""
    if source.interactions is None:
        raise CustomSourceError(
            "data.variant=custom needs data.custom.interactions (a path and its column mapping)"
        )
    declared = {"interactions": source.interactions, "users": source.users, "items": source.items}
    if source.interactions.validation:  # read as the interactions are
        declared["validation"] = source.interactions.model_copy(
            update={"path": source.interactions.validation}
        )
    files = {table: read_files(table, given) for table, given in declared.items() if given}
    checksum = source_checksum(source, files)
    out = raw_dir / source.name
    mapping = source.interactions

    def build(staging: Path) -> tuple[NormalizeReport, DatasetDeclaration]:
        report, external = build_custom(source, files, staging)
        return report, DatasetDeclaration(
            items_features=side_features("items", source.items) or SideFeatures(),
            users_features=side_features("users", source.users),
            feedback=mapping.feedback,
            rating_scale=_scale(mapping),
            positive_threshold=mapping.positive_threshold if mapping.rating else 1.0,
            external_ids=external,
        )

    return _reusable(out, CUSTOM, checksum) or _publish(out, CUSTOM, checksum, build)


def _scale(mapping: InteractionsSource) -> tuple[float, float]:
    """The values ``rating`` holds: the declared scale, 0/1 labels, or 1 (implicit)."""
    if mapping.feedback == "rating":
        return mapping.rating_scale
    return (0.0, 1.0) if mapping.feedback == "label" else (1.0, 1.0)


def _reusable(out: Path, variant: str, checksum: str) -> RawDataset | None:
    if not (out / MANIFEST).is_file():
        return None
    dataset = RawDataset.load(out)
    if (dataset.variant, dataset.checksum, dataset.layout) != (
        variant,
        checksum,
        RawDataset.LAYOUT,
    ):
        return None
    log.info("%s: reusing %s (source checksum %s)", variant, out, checksum)
    return dataset


def _publish(
    out: Path,
    variant: str,
    checksum: str,
    build: Callable[[Path], tuple[NormalizeReport, DatasetDeclaration]],
) -> RawDataset:
    """Build in a staging directory that replaces ``out`` once complete, manifest included.

    ``build`` writes the tables and returns its report with what the dataset declares."""
    with atomic_dir(out, replace=True) as staging:
        report, declared = build(staging)
        dataset = RawDataset(
            path=out,
            variant=variant,
            checksum=checksum,
            n_interactions=report.n_interactions,
            n_users=report.n_users,
            n_items=report.n_items,
            layout=RawDataset.LAYOUT,
            # Its fields (not a dump): the side features stay the objects the builder made.
            **dict(declared),
        )
        (staging / SOURCE_CLEANING).write_text(json.dumps(report.dropped, indent=2))
        dataset.save_manifest(staging)
    log.info(
        "%s: %d interactions, %d users, %d items -> %s",
        variant,
        report.n_interactions,
        report.n_users,
        report.n_items,
        out,
    )
    return dataset


def _retry_transfer_only(_task, _task_run, state) -> bool:
    """An unreachable source may come back; a bad checksum or an unsafe archive will not."""
    return isinstance(state.result(raise_on_failure=False), TransferFailed)


@task(
    name="fetch-dataset",
    retries=TASK_RETRIES,
    retry_delay_seconds=exponential_backoff(backoff_factor=TASK_RETRY_BACKOFF_S),
    retry_condition_fn=_retry_transfer_only,
    cache_policy=NO_CACHE,  # fetch_dataset reuses its own verified output
)
def fetch_dataset_task(data: DataConfig, paths: PathsConfig) -> RawDataset:
    get_run_logger().info("fetching dataset %s", data.variant)
    return fetch_dataset(data, paths)
