"""Your own data as a dataset: an interaction log (and users and items tables) declared in
``data.custom`` (recflow/config.py), read from parquet or CSV by path, glob or fsspec URL, and
written as the canonical tables every stage reads (recflow.artifacts.RawDataset).

What is checked, each failure a :class:`CustomSourceError` naming the file, the column and the
row where there is one, before anything is written: a path that matches nothing, a mapped
column that is missing, a value that cannot be parsed, a table without rows, an id listed twice
in a side table, interactions whose ids a side table lacks (``unknown_side_ids: error``).
String ids are kept at the edges (recflow/external_ids.py). The source's identity is the sha256
of every input file with the mapping (``source_checksum``): the same files and mapping give the
same dataset, reused; anything else is a new one, which validation compares with the last
accepted build.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from recflow.artifacts import RawDataset, SideFeatures, names_file
from recflow.config import CustomSource, InteractionsSource, SideTableSource, TableSource
from recflow.external_ids import EXTERNAL_ID, internal_ids
from recflow.vocabulary import IN_VALIDATION, ITEM_ID, RATING, TIMESTAMP, USER_ID
from tasks.normalize import INTERACTIONS_SCHEMA, MalformedSource, NormalizeReport

log = logging.getLogger(__name__)

CUSTOM = "custom"
_PARQUET = (".parquet", ".pq")
_CSV = (".csv", ".tsv", ".txt")
# Offending values quoted in an error message.
_SHOWN = 3
# The largest integer every float64 up to it holds exactly: float ids beyond it are not ids.
_EXACT = 2**53
# Characters of a declared column's name kept in its internal name (internal_name).
_SLUG = 32


class CustomSourceError(MalformedSource):
    """Your data cannot be read as declared; the message names the file, column and row."""


@dataclass(frozen=True)
class SourceFile:
    """One input file: where it is, its bytes' sha256, and its bytes (read once for both)."""

    url: str
    sha256: str
    data: bytes


@dataclass
class CustomTables:
    """The declared tables as read, ids as the source has them (not yet made int64)."""

    interactions: pd.DataFrame
    users: pd.DataFrame | None
    items: pd.DataFrame | None


def read_files(table: str, source: TableSource) -> list[SourceFile]:
    """Every file ``source.path`` names (a glob expands, in sorted order)."""
    try:
        files = fsspec.open_files(source.path, mode="rb")
    except (OSError, ValueError) as exc:
        raise CustomSourceError(f"data.custom.{table}.path {source.path!r}: {exc}") from exc
    out = []
    for file in sorted(files, key=lambda f: f.path):
        try:
            with file as handle:
                data = handle.read()
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise CustomSourceError(
                f"data.custom.{table}.path {source.path!r}: {file.path} does not exist"
            ) from exc
        out.append(SourceFile(file.full_name, hashlib.sha256(data).hexdigest(), data))
    if not out:
        raise CustomSourceError(f"data.custom.{table}.path {source.path!r} matches no file")
    return out


def source_checksum(source: CustomSource, files: dict[str, list[SourceFile]]) -> str:
    """sha256 of the mapping and of every input file's bytes (not of their names or places:
    the same data moved elsewhere is the same dataset)."""
    mapping = source.model_dump(mode="json")
    for table in ("interactions", "users", "items"):
        if mapping.get(table):
            mapping[table].pop("path")
    if mapping["interactions"]:
        mapping["interactions"]["validation"] = bool(mapping["interactions"]["validation"])
    payload = {
        "layout": RawDataset.LAYOUT,
        "mapping": mapping,
        "files": {table: [f.sha256 for f in found] for table, found in files.items()},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _format(file: SourceFile, source: TableSource) -> str:
    if source.format:
        return source.format
    name = file.url.lower().split("?")[0]
    if name.endswith(_PARQUET):
        return "parquet"
    if name.endswith(_CSV):
        return "csv"
    raise CustomSourceError(f"{file.url}: cannot tell parquet from CSV; set the table's format")


def read_table(
    file: SourceFile, source: TableSource, columns: list[str], ids: list[str]
) -> pd.DataFrame:
    """``columns`` of one file; raises if one is missing or the file does not parse. CSV
    ``ids`` columns are read as text: Arrow would read an id beyond uint64 as a float, which
    makes distinct ids one (``unify_ids`` parses the integers that fit)."""
    buffer = pa.BufferReader(file.data)
    try:
        if _format(file, source) == "parquet":
            present = pq.read_schema(buffer).names
            _require_columns(file, present, columns)
            table = pq.read_table(pa.BufferReader(file.data), columns=columns)
        else:
            csv = source.csv
            read = pacsv.ReadOptions(
                encoding=csv.encoding, autogenerate_column_names=not csv.header
            )
            parse = pacsv.ParseOptions(delimiter=csv.delimiter)
            # Arrow names header-less columns f0, f1, ...
            text = {column if csv.header else f"f{column}": pa.string() for column in ids}
            convert = pacsv.ConvertOptions(column_types=text)
            table = pacsv.read_csv(
                buffer, read_options=read, parse_options=parse, convert_options=convert
            )
            if not csv.header:  # Arrow names them f0, f1, ...: the config says 0, 1, ...
                table = table.rename_columns([str(i) for i in range(table.num_columns)])
            _require_columns(file, table.column_names, columns)
            table = table.select(columns)
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        message = f"{file.url}: not readable as {_format(file, source)}: {exc}"
        raise CustomSourceError(message) from exc
    return table.to_pandas()


def _require_columns(file: SourceFile, present: list[str], wanted: list[str]) -> None:
    missing = [column for column in wanted if column not in present]
    if missing:
        raise CustomSourceError(
            f"{file.url}: column {missing[0]!r} (mapped in data.custom) is missing; "
            f"the file has {present}"
        )


def _bad_rows(file: str, column: str, values: pd.Series, parsed: pd.Series, what: str) -> None:
    """Raise for the first values of ``column`` that were there but did not parse."""
    bad = parsed.isna() & values.notna()
    if bad.any():
        rows = np.flatnonzero(bad.to_numpy())[:_SHOWN]
        shown = ", ".join(f"row {row + 1}: {values.iloc[row]!r}" for row in rows)
        raise CustomSourceError(
            f"{file}: column {column!r}: {int(bad.sum())} values are not {what} ({shown})"
        )


def _numbers(file: str, column: str, values: pd.Series) -> pd.Series:
    parsed = pd.to_numeric(values, errors="coerce")
    _bad_rows(file, column, values, parsed, "numbers")
    return parsed


def _unix_seconds(file: str, column: str, values: pd.Series) -> pd.Series:
    """Integer or float unix seconds, or dates pandas parses (ISO 8601 and the like)."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return values.astype("float64").floordiv(1)
    if not pd.api.types.is_datetime64_any_dtype(values):
        numeric = pd.to_numeric(values, errors="coerce")
        if numeric.notna().sum() == values.notna().sum():
            return numeric.floordiv(1)
        parsed = pd.to_datetime(values, errors="coerce", utc=True)
        _bad_rows(file, column, values, parsed, "unix seconds or dates")
        values = parsed
    seconds = values.dt.tz_localize(None) if values.dt.tz is not None else values
    return pd.Series(seconds.astype("int64") // 10**9, index=values.index).where(values.notna())


def read_interactions(files: list[SourceFile], source: InteractionsSource) -> pd.DataFrame:
    """user_id, item_id (as in the source), rating float, timestamp int64 of every file."""
    value = source.rating or source.label
    mapped = [source.user, source.item, *filter(None, [source.timestamp, value])]
    frames = []
    for file in files:
        raw = read_table(file, source, list(dict.fromkeys(mapped)), [source.user, source.item])
        frame = pd.DataFrame({USER_ID: raw[source.user], ITEM_ID: raw[source.item]})
        if value is None:  # implicit feedback: each row is a positive
            frame[RATING] = 1.0
        else:
            frame[RATING] = _numbers(file.url, value, raw[value])
            if source.label is not None:
                off = ~frame[RATING].isin([0, 1]) & frame[RATING].notna()
                _bad_rows(file.url, value, raw[value], frame[RATING].mask(off), "0 or 1")
        frame[TIMESTAMP] = (
            _unix_seconds(file.url, source.timestamp, raw[source.timestamp])
            if source.timestamp
            else 0
        )
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _read_split(
    files: dict[str, list[SourceFile]], table: str, source: InteractionsSource
) -> pd.DataFrame:
    interactions = read_interactions(files[table], source)
    if interactions.empty:
        raise CustomSourceError(f"data.custom.{table}: no rows in {[f.url for f in files[table]]}")
    return interactions


def read_side_table(table: str, files: list[SourceFile], source: SideTableSource) -> pd.DataFrame:
    """The id and the declared columns under their internal names (``side_features``):
    continuous ones as float32, lists as lists of strings."""
    declared = side_features(table, source)
    named = declared.source_names
    frames = []
    for file in files:
        wanted = list(dict.fromkeys([source.id, *named.values()]))
        raw = read_table(file, source, wanted, [source.id])
        frame = pd.DataFrame({_id_column(table): raw[source.id]})
        for column in declared.categorical:
            frame[column] = raw[named[column]]
        for column in declared.continuous:
            frame[column] = _numbers(file.url, named[column], raw[named[column]]).astype("float32")
        for column in declared.lists:
            separator = source.csv.list_separator
            frame[column] = [_as_list(value, separator) for value in raw[named[column]].to_numpy()]
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True)
    if frame.empty:
        raise CustomSourceError(f"data.custom.{table}: no rows in {[f.url for f in files]}")
    ids = frame[_id_column(table)]
    duplicated = ids[ids.duplicated(keep=False) & ids.notna()]
    if len(duplicated):
        first = duplicated.iloc[0]
        rows = (np.flatnonzero((ids == first).to_numpy())[:_SHOWN] + 1).tolist()
        raise CustomSourceError(
            f"data.custom.{table}: column {source.id!r}: {duplicated.nunique()} ids are listed "
            f"more than once, e.g. {first!r} in rows {rows}"
        )
    return frame[ids.notna()].reset_index(drop=True)


def _id_column(table: str) -> str:
    return USER_ID if table == "users" else ITEM_ID


def _as_list(value, separator: str) -> list[str]:
    if value is None or (np.ndim(value) == 0 and pd.isna(value)):
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(separator) if part.strip()]
    return [str(part) for part in value]


def _is_string(ids: pd.Series) -> bool:
    return not (pd.api.types.is_integer_dtype(ids) or pd.api.types.is_float_dtype(ids))


def _as_int_ids(ids: pd.Series) -> pd.Series | None:
    """The ids as int64 if every one is an integer (CSV gives strings of digits), else None."""
    if _is_string(ids):
        parsed = pd.to_numeric(ids, errors="coerce")
        if parsed.isna().any():
            return None
        ids = parsed
    if pd.api.types.is_float_dtype(ids) and ((ids % 1 != 0).any() or (ids.abs() > _EXACT).any()):
        return None
    if pd.api.types.is_unsigned_integer_dtype(ids) and (ids > np.iinfo(np.int64).max).any():
        return None  # beyond int64: as strings, never wrapped round to negative ids
    return ids.astype("int64")


def unify_ids(tables: CustomTables) -> tuple[CustomTables, dict[str, pd.DataFrame] | None]:
    """Make every id column int64; string ids become their hashes, and the table of each
    string next to its int64 id is returned (None when the source's ids are integers)."""
    columns = [(tables.interactions, USER_ID), (tables.interactions, ITEM_ID)]
    columns += [
        (t, c) for t, c in ((tables.users, USER_ID), (tables.items, ITEM_ID)) if t is not None
    ]
    as_ints = [_as_int_ids(frame[column]) for frame, column in columns]
    if all(ids is not None for ids in as_ints):
        for (frame, column), ids in zip(columns, as_ints, strict=True):
            frame[column] = ids
        return tables, None
    external = {}
    for side in (USER_ID, ITEM_ID):
        names = pd.concat(
            [frame[column].astype(str) for frame, column in columns if column == side]
        )
        distinct = pd.Series(pd.unique(names))
        ids = pd.Series(internal_ids(distinct.to_numpy()))
        if (clashes := ids.duplicated(keep=False)).any():
            shown = sorted(distinct[clashes])[:_SHOWN]
            raise CustomSourceError(f"{side}: the string ids {shown} hash alike")
        external[side] = pd.DataFrame({side: ids, EXTERNAL_ID: distinct})
    for frame, column in columns:
        frame[column] = internal_ids(frame[column].astype(str).to_numpy())
    return tables, external


def apply_side_policy(
    interactions: pd.DataFrame,
    side: pd.DataFrame | None,
    column: str,
    policy: str,
    dropped: Counter,
) -> pd.DataFrame:
    """Interactions whose ``column`` id the side table lacks: counted, then kept, dropped or
    refused as ``data.custom.unknown_side_ids`` says."""
    if side is None:
        return interactions
    unknown = ~interactions[column].isin(side[column])
    n_unknown = int(unknown.sum())
    if not n_unknown:
        return interactions
    table = "users" if column == USER_ID else "items"
    message = (
        f"{n_unknown} of {len(interactions)} interactions have a {column} not in the {table} table"
    )
    if policy == "error":
        raise CustomSourceError(f"data.custom: {message} (unknown_side_ids: error)")
    if policy == "drop":
        dropped[f"interactions: {column} not in the {table} table"] += n_unknown
        log.warning("%s: dropped (unknown_side_ids: drop)", message)
        return interactions[~unknown]
    log.warning("%s: kept, with each feature's missing value (unknown_side_ids: keep)", message)
    return interactions


def build_custom(
    source: CustomSource, files: dict[str, list[SourceFile]], out_dir: Path
) -> tuple[NormalizeReport, bool]:
    """Read, check and write the canonical tables into ``out_dir`` (a staging directory).

    Returns the report and whether the ids are strings (external). Interactions without a user
    or item are dropped and counted; every other check raises :class:`CustomSourceError`.
    """
    interactions = _read_split(files, "interactions", source.interactions)
    if "validation" in files:  # the dataset's own split (features.split=predefined)
        validation = _read_split(files, "validation", source.interactions)
        interactions = pd.concat(
            [
                interactions.assign(**{IN_VALIDATION: False}),
                validation.assign(**{IN_VALIDATION: True}),
            ],
            ignore_index=True,
        )
    sides = {
        table: read_side_table(table, files[table], getattr(source, table))
        for table in ("users", "items")
        if table in files
    }
    dropped: Counter = Counter()
    known = interactions[[USER_ID, ITEM_ID]].notna().all(axis=1)
    dropped["interactions: missing user or item id"] += int((~known).sum())
    interactions = interactions[known]
    tables, external = unify_ids(CustomTables(interactions, sides.get("users"), sides.get("items")))
    inter = tables.interactions
    inter = apply_side_policy(inter, tables.users, USER_ID, source.unknown_side_ids, dropped)
    inter = apply_side_policy(inter, tables.items, ITEM_ID, source.unknown_side_ids, dropped)
    if inter.empty:
        raise CustomSourceError("data.custom: no interactions left after the checks above")
    items = tables.items
    if items is None:  # the catalogue is what was interacted with, without features
        items = pd.DataFrame({ITEM_ID: np.sort(inter[ITEM_ID].unique())})
    out_dir.mkdir(parents=True, exist_ok=True)
    schema = INTERACTIONS_SCHEMA
    if IN_VALIDATION in inter:
        schema = schema.append(pa.field(IN_VALIDATION, pa.bool_()))
    table = pa.Table.from_pandas(
        inter.astype({RATING: "float32"}).astype({TIMESTAMP: "Int64"})[schema.names],
        preserve_index=False,
    ).cast(schema)
    pq.write_table(table, out_dir / "interactions.parquet")
    items = items.sort_values(ITEM_ID, kind="stable")
    _write_side(items, side_features("items", source.items), out_dir / "items.parquet")
    if tables.users is not None:
        users = tables.users.sort_values(USER_ID, kind="stable")
        _write_side(users, side_features("users", source.users), out_dir / "users.parquet")
    if external is not None:
        for side, names in external.items():
            names.to_parquet(out_dir / names_file(side), index=False)
    for rule, rows in dropped.items():
        if rows:
            log.info("custom: dropped %d rows (%s)", rows, rule)
    report = NormalizeReport(
        n_interactions=len(inter),
        n_users=int(inter[USER_ID].nunique()),
        n_items=len(items),
        has_users=tables.users is not None,
        has_tags=False,
        dropped={rule: rows for rule, rows in sorted(dropped.items()) if rows},
    )
    return report, external is not None


def _write_side(frame: pd.DataFrame, declared: SideFeatures | None, path: Path) -> None:
    lists = {column: pa.list_(pa.string()) for column in (declared.lists if declared else ())}
    schema = pa.Schema.from_pandas(frame, preserve_index=False)
    for column, kind in lists.items():
        schema = schema.set(schema.get_field_index(column), pa.field(column, kind))
    pq.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False), path)


def side_features(table: str, source: SideTableSource | None) -> SideFeatures | None:
    """What a side table declares, as the dataset records it: each column under its
    ``internal_name``, with the name the source gave it."""
    if source is None:
        return None
    side = _id_column(table).removesuffix("_id")
    declared = (*source.categorical, *source.continuous, *source.lists)
    internal = tuple(internal_name(side, i, name) for i, name in enumerate(declared))
    continuous_from = len(source.categorical)
    lists_from = continuous_from + len(source.continuous)
    return SideFeatures(
        categorical=internal[:continuous_from],
        continuous=internal[continuous_from:lists_from],
        lists=internal[lists_from:],
        source_names=dict(zip(internal, declared, strict=True)),
    )


def internal_name(side: str, position: int, declared: str) -> str:
    """The name a declared side column is stored and encoded under: ``item_2_labels`` for the
    items table's third declared column, ``labels``.

    The position makes it unique (the same name twice, or two names alike once slugged); the
    ``<side>_<digit>`` start keeps it apart from every name the stages (recflow/vocabulary.py)
    and NVTabular (``labels``, ``order``, ...) use; the ASCII slug, cut to ``_SLUG``
    characters, keeps it readable, a valid file name (Categorify writes one per column) and a
    valid TensorFlow name.
    """
    ascii_name = unicodedata.normalize("NFKD", declared).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "_", ascii_name.lower()).strip("_")[:_SLUG]
    return "_".join(filter(None, (side, str(position), slug)))
