"""``recflow data``: fetch a dataset variant, import your own tables, list what is on disk.

The dataset stage is imported inside the commands: it pulls in Prefect and pandas (seconds),
which ``recflow --help`` and every other command would otherwise pay.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.filesize import decimal

from cli.common import JsonOpt, console, error, print_rows, settings_of
from recflow.artifacts import MANIFEST

# Data the source checks or the validation stage refuse stops a run before training: the
# problem is the message (file, column, row; or the anomalies), and nothing was written.
EXIT_INVALID_DATA = 5

data_app = typer.Typer(
    name="data", help="Download, verify and normalise datasets.", no_args_is_help=True
)


@data_app.command("fetch")
def fetch(
    ctx: typer.Context,
    variant: Annotated[str, typer.Argument(help="ml-100k, ml-1m, ..., or synthetic")],
    mirror: Annotated[
        str | None,
        typer.Option(help="Base URL or local directory that replaces the GroupLens host"),
    ] = None,
) -> None:
    """Download (or generate) VARIANT, verify it and write its canonical tables."""
    from tasks.download import fetch_dataset
    from tasks.normalize import MalformedSource
    from tasks.variants import DownloadError

    settings = settings_of(ctx)
    update = {"variant": variant} | ({"mirror": mirror} if mirror is not None else {})
    data = settings.data.model_copy(update=update)
    try:
        dataset = fetch_dataset(data, settings.paths)
    except (DownloadError, MalformedSource, ValueError) as exc:
        error(f"error: {exc}")
        raise typer.Exit(1) from exc
    console.print(
        f"{dataset.variant}: {dataset.n_interactions:,} interactions, {dataset.n_users:,} users, "
        f"{dataset.n_items:,} items -> {dataset.path}"
    )


@data_app.command("import")
def import_tables(
    ctx: typer.Context,
    interactions: Annotated[
        str | None,
        typer.Option(help="Path, glob or URL of the interactions (data.custom.interactions.path)"),
    ] = None,
) -> None:
    """Read your own tables as data.custom declares them (--config YAML or --set), check them
    and write the dataset that `recflow -s data.variant=custom run` trains on."""
    from tasks.custom import CustomSourceError
    from tasks.download import fetch_dataset, source_cleaning

    settings = settings_of(ctx)
    custom = settings.data.custom
    if interactions is not None:
        if custom.interactions is None:
            error("error: data.custom.interactions needs its column mapping (see docs/data.md)")
            raise typer.Exit(EXIT_INVALID_DATA)
        given = custom.interactions.model_copy(update={"path": interactions})
        custom = custom.model_copy(update={"interactions": given})
    data = settings.data.model_copy(update={"variant": "custom", "custom": custom})
    try:
        dataset = fetch_dataset(data, settings.paths)
    except CustomSourceError as exc:
        error(f"error: {exc}")
        raise typer.Exit(EXIT_INVALID_DATA) from exc
    ids = "string ids (served as TYPE_STRING)" if dataset.external_ids else "integer ids"
    console.print(
        f"{custom.name}: {dataset.n_interactions:,} interactions ({dataset.feedback} feedback), "
        f"{dataset.n_users:,} users, {dataset.n_items:,} items, {ids} -> {dataset.path}\n"
        f"source sha256 {dataset.checksum}"
    )
    # The features carry internal names (docs/data.md); messages and pictures use yours.
    for table, declared in (("items", dataset.items_features), ("users", dataset.users_features)):
        if declared is not None and declared.source_names:
            stored = ", ".join(
                f"{name!r} as {column}" for column, name in declared.source_names.items()
            )
            console.print(f"{table} features: {stored}")
    for rule, rows in source_cleaning(dataset.path).items():
        console.print(f"dropped {rows:,} rows: {rule}")


@data_app.command("list")
def list_variants(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """The variants, their archive sizes, and whether the archive and tables are on disk."""
    from tasks.synthetic import dataset_name
    from tasks.variants import SYNTHETIC, VARIANTS

    settings = settings_of(ctx)
    paths = settings.paths
    rows = [
        {
            "variant": v.name,
            "archive": decimal(v.size) if v.size else "varies",
            "verified by": "sha256" if v.sha256 else "md5" if v.md5 else "published md5",
            "archive cached": _yes((paths.cache_dir / v.filename).is_file()),
            "tables": _yes((paths.raw_dir / v.name / MANIFEST).is_file()),
        }
        for v in VARIANTS.values()
    ]
    generated = paths.raw_dir / dataset_name(settings.data.synthetic) / MANIFEST
    rows.append(
        {
            "variant": SYNTHETIC,
            "archive": "generated",
            "verified by": "config hash",
            "archive cached": "-",
            "tables": _yes(generated.is_file()),
        }
    )
    print_rows(None, rows, as_json)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"
