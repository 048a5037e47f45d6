"""``recflow serve``, ``recflow score``, ``recflow recommend`` and ``recflow similar``.

The serving modules are imported inside the commands: tritonclient takes about a second to
import, which every other ``recflow`` command (and ``--help``) would otherwise pay.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.common import JsonOpt, console, error, print_scores, settings_of

# The exporter writes the candidate items next to the model repository: one row per item,
# column item_id (int64, or the dataset's strings). `recommend` ranks all of them.
CATALOG_FILE = "catalog.parquet"
CATALOG_COLUMN = "item_id"
MAX_PORT = 65535
# A Triton model is a directory of the repository: one path component, no '..', no separators.
MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def register(app: typer.Typer) -> None:
    """Add the serving commands to the ``recflow`` app."""
    app.command("serve")(serve)
    app.command("score")(score)
    app.command("recommend")(recommend)
    app.command("similar")(similar)


@contextmanager
def _exit_on(*errors: type[Exception]) -> Iterator[None]:
    """Report an expected failure as one red line and exit 1, rather than a traceback."""
    try:
        yield
    except errors as exc:
        error(str(exc))
        raise typer.Exit(1) from exc


def _split(csv: str) -> list[str]:
    return [part.strip() for part in csv.split(",") if part.strip()]


# Ids are the dataset's own: integers, or strings where its ids are strings. The client sends
# them as the endpoint's metadata says (INT64 or BYTES), and says so if one cannot be.
USER_HELP = "User id (the dataset's own: an integer, or a string where its ids are strings)"
ITEM_HELP = USER_HELP.replace("User", "Item")


def model_names(csv: str, repository: Path) -> list[str]:
    """``--models``: names of model directories that exist in ``repository``."""
    from serving.server import discover_models

    names = _split(csv)
    bad = [name for name in names if not MODEL_NAME.fullmatch(name) or ".." in name]
    if bad:
        message = f"not model names (letters, digits, '_', '.', '-'): {bad!r}"
        raise typer.BadParameter(message, param_hint="--models")
    available = discover_models(repository) if repository.is_dir() else []
    unknown = [name for name in names if name not in available]
    if unknown:
        message = f"{unknown} not in {repository}; it holds {available or 'no models'}"
        raise typer.BadParameter(message, param_hint="--models")
    return names


def read_catalog(path: Path) -> list[int | str]:
    """Item ids of the candidate catalog (``item_id`` column of a parquet file)."""
    import pyarrow.parquet as pq  # only recommend needs pyarrow

    if not path.is_file():
        raise FileNotFoundError(f"no catalog at {path}: the exporter writes it, or pass --catalog")
    return pq.read_table(path, columns=[CATALOG_COLUMN]).column(CATALOG_COLUMN).to_pylist()


def _port_option(setting: str) -> Any:
    return typer.Option(min=0, max=MAX_PORT, help=f"Overrides serving.{setting}; 0: any free port")


def serve(
    ctx: typer.Context,
    grpc_port: Annotated[int | None, _port_option("grpc_port")] = None,
    http_port: Annotated[int | None, _port_option("http_port")] = None,
    metrics_port: Annotated[int | None, _port_option("metrics_port")] = None,
    models: Annotated[
        str | None,
        typer.Option(help="Comma-separated models to load; default every model in the repository"),
    ] = None,
) -> None:
    """Run Triton on the model repository (paths.triton_repo) until Ctrl-C or SIGTERM."""
    from serving.server import TritonServer, TritonServerError

    settings = settings_of(ctx)
    ports = {"grpc_port": grpc_port, "http_port": http_port, "metrics_port": metrics_port}
    serving = settings.serving.model_copy(
        update={name: port for name, port in ports.items() if port is not None}
    )
    settings = settings.model_copy(update={"serving": serving})

    chosen = None if models is None else model_names(models, settings.paths.triton_repo)
    with _exit_on(TritonServerError, TimeoutError):
        server = TritonServer.from_settings(settings, chosen)

        def announce() -> None:
            console.print(
                f"[green]Triton ready[/], models: {', '.join(server.models) or '(none)'}\n"
                f"  gRPC    {server.grpc_url}\n  HTTP    {server.http_url}\n"
                f"  metrics {server.metrics_url}\nCtrl-C to stop"
            )

        console.print(f"Starting Triton on {server.repository}, log: {server.log_file}")
        server.serve_forever(on_ready=announce)
    console.print("Triton stopped")


def score(
    ctx: typer.Context,
    user: Annotated[str, typer.Option(help=USER_HELP)],
    items: Annotated[str, typer.Option(help="Comma-separated item ids, e.g. 1,2,3")],
    as_json: JsonOpt = False,
) -> None:
    """Score items for a user with the ranking model, in the order given."""
    from recflow_client import RecflowClient, TritonRequestError

    item_ids = _split(items)
    settings = settings_of(ctx)
    with _exit_on(TritonRequestError), RecflowClient.from_config(settings.serving) as client:
        scores = client.score(user, item_ids)
    print_scores(f"user {user}", list(zip(item_ids, scores.tolist(), strict=True)), as_json)


def recommend(
    ctx: typer.Context,
    user: Annotated[str, typer.Option(help=USER_HELP)],
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="How many items")] = 10,
    catalog: Annotated[
        Path | None,
        typer.Option(
            help=f"Rank these candidates (parquet file with an {CATALOG_COLUMN} column) with "
            "the ranking endpoint instead of asking the multi-stage recommend endpoint "
            f"[default without that endpoint: <paths.triton_repo>/{CATALOG_FILE}]"
        ),
    ] = None,
    exclude: Annotated[
        str, typer.Option(help="Comma-separated item ids to leave out, e.g. already seen")
    ] = "",
    history: Annotated[
        str,
        typer.Option(
            help="Comma-separated item ids the user interacted with since the model was "
            "trained, most recent last: the list is made with them and leaves them out"
        ),
    ] = "",
    as_json: JsonOpt = False,
) -> None:
    """Top-k items for a user: retrieval then ranking on the server, or ranking of --catalog."""
    from recflow_client import RecflowClient, TritonRequestError

    excluded, recent = _split(exclude), _split(history)
    settings = settings_of(ctx)
    repo = settings.paths.triton_repo
    if catalog is None and not (repo / f"{settings.serving.model_prefix}_recommend").is_dir():
        # Published without a retrieval model: rank the whole catalog instead.
        catalog = repo / CATALOG_FILE
    if recent and catalog is not None:
        raise typer.BadParameter(
            "--history is read by the recommend endpoint: not with --catalog, nor where only "
            "a ranking model is published"
        )
    with _exit_on(FileNotFoundError):
        candidates = None if catalog is None else read_catalog(catalog)
    with _exit_on(TritonRequestError), RecflowClient.from_config(settings.serving) as client:
        if candidates is None:
            top = client.recommend(user, k, exclude=excluded, history=recent)
        else:
            top = client.recommend(user, k, candidates=candidates, exclude=excluded)
    print_scores(f"top {k} for user {user}", top, as_json)


def similar(
    ctx: typer.Context,
    item: Annotated[str, typer.Option(help=ITEM_HELP)],
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="How many items")] = 10,
    as_json: JsonOpt = False,
) -> None:
    """The items closest to an item in the retrieval model's embedding space."""
    from recflow_client import RecflowClient, TritonRequestError

    settings = settings_of(ctx)
    with _exit_on(TritonRequestError), RecflowClient.from_config(settings.serving) as client:
        top = client.similar(item, k)
    print_scores(f"top {k} similar to item {item}", top, as_json)
