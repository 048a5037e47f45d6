"""Your own data as a dataset: an interaction log (and users and items tables) declared in
``data.custom`` (recflow/config.py), read from parquet or CSV by path, glob or fsspec URL, and
written as the canonical tables every stage reads (recflow.artifacts.RawDataset).

What is checked, each failure a :class:`CustomSourceError` naming the file, the column and the
row where there is one, before the dataset is published (tasks/download.py builds it in a
staging directory): a path that matches nothing, a mapped column that is missing, a value that
cannot be parsed, a table without rows, an id listed twice in a side table, interactions whose
ids a side table lacks (``unknown_side_ids: error``). String ids are kept at the edges
(recflow/external_ids.py). The interaction log is read, checked and written a batch at a time
(``build_custom``): the import's memory follows a batch and the distinct ids, not the log.
The source's identity is the sha256 of every input file with the mapping
(``source_checksum``): the same files and mapping give the same dataset, reused; anything else
is a new one, which validation compares with the last accepted build.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from recflow.artifacts import RawDataset, SideFeatures, names_file
from recflow.config import (
    CsvOptions,
    CustomSource,
    InteractionsSource,
    SideTableSource,
    TableSource,
)
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
# What the import holds of an input file at a time: its memory does not grow with the log.
_HASH_BLOCK_BYTES = 8 << 20
_PARQUET_BATCH_ROWS = 1 << 18
# A CSV block of 4 MiB is ~100,000 rows; at 16 MiB the import of a 20M-row CSV peaked at
# 1.24 GiB, twice as much as at 1M rows (benchmarks/results/import.md).
_CSV_BLOCK_BYTES = 4 << 20
# CSV fields Arrow reads as missing in a typed column; the value columns are read as text (a
# type guessed from a file's first block would refuse a later block), so they are applied here.
_CSV_NULLS = frozenset(pacsv.ConvertOptions().null_values)
# Integer id columns read as pandas' nullable integers: as float64 (a batch with a missing id)
# an id would round beyond 2**53 and read otherwise than in a batch without one.
_NULLABLE_INTS = {
    arrow: pd.api.types.pandas_dtype(name)
    for arrow, name in (
        (pa.int8(), "Int8"),
        (pa.int16(), "Int16"),
        (pa.int32(), "Int32"),
        (pa.int64(), "Int64"),
        (pa.uint8(), "UInt8"),
        (pa.uint16(), "UInt16"),
        (pa.uint32(), "UInt32"),
        (pa.uint64(), "UInt64"),
    )
}
# The interactions between the two passes of build_custom: both forms of each id, since which
# one the dataset uses is known only once every table's ids have been seen.
_AS_INT = "{}_as_int"
_HASHED = "{}_hashed"


class CustomSourceError(MalformedSource):
    """Your data cannot be read as declared; the message names the file, column and row."""


@dataclass(frozen=True)
class SourceFile:
    """One input file: where it is and its bytes' sha256 (read again, a batch at a time, when
    the dataset is built: the import never holds a whole file)."""

    url: str
    sha256: str


def read_files(table: str, source: TableSource) -> list[SourceFile]:
    """Every file ``source.path`` names (a glob expands, in sorted order)."""
    try:
        files = fsspec.open_files(source.path, mode="rb")
    except (OSError, ValueError) as exc:
        raise CustomSourceError(f"data.custom.{table}.path {source.path!r}: {exc}") from exc
    out = []
    for file in sorted(files, key=lambda f: f.path):
        try:
            sha256 = _sha256(file)
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise CustomSourceError(
                f"data.custom.{table}.path {source.path!r}: {file.path} does not exist"
            ) from exc
        out.append(SourceFile(file.full_name, sha256))
    if not out:
        raise CustomSourceError(f"data.custom.{table}.path {source.path!r} matches no file")
    return out


def _sha256(file: fsspec.core.OpenFile) -> str:
    digest = hashlib.sha256()
    with file as handle:
        while block := handle.read(_HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


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


def read_batches(
    file: SourceFile,
    source: TableSource,
    columns: list[str],
    ids: list[str],
    numbers: list[str],
) -> Iterator[pd.DataFrame]:
    """``columns`` of one file, a batch of rows at a time (a file without rows gives one empty
    batch, with its columns' types); raises if one is missing or the file does not parse.

    CSV ``ids`` columns are read as text: Arrow would read an id beyond uint64 as a float, which
    makes distinct ids one (``_as_int_ids`` parses the integers that fit). CSV ``numbers``
    columns are read as text too and parsed batch by batch, so that a value a later block holds
    ('four', 4.5 after integers) is refused or read by row, as in a small file."""
    kind = _format(file, source)
    try:
        with fsspec.open(file.url, "rb") as handle:
            if kind == "parquet":
                tables = _parquet_tables(file, handle, columns)
            else:
                tables = _csv_tables(file, handle, source.csv, columns, ids, numbers)
            for table in tables:
                yield _to_pandas(table, ids)
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise CustomSourceError(f"{file.url}: not readable as {kind}: {exc}") from exc


def _parquet_tables(file: SourceFile, handle, columns: list[str]) -> Iterator[pa.Table]:
    parquet = pq.ParquetFile(handle)
    _require_columns(file, parquet.schema_arrow.names, columns)
    batches = parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=columns)
    empty = parquet.schema_arrow.empty_table().select(columns)
    yield from _or_empty((pa.Table.from_batches([batch]) for batch in batches), empty)


def _csv_tables(
    file: SourceFile,
    handle,
    csv: CsvOptions,
    columns: list[str],
    ids: list[str],
    numbers: list[str],
) -> Iterator[pa.Table]:
    read = pacsv.ReadOptions(
        encoding=csv.encoding,
        autogenerate_column_names=not csv.header,
        block_size=_CSV_BLOCK_BYTES,
    )
    parse = pacsv.ParseOptions(delimiter=csv.delimiter)
    # Arrow names header-less columns f0, f1, ...
    text = {column if csv.header else f"f{column}": pa.string() for column in (*ids, *numbers)}
    convert = pacsv.ConvertOptions(column_types=text)
    reader = pacsv.open_csv(handle, read_options=read, parse_options=parse, convert_options=convert)
    names = reader.schema.names
    if not csv.header:  # the config says 0, 1, ...
        names = [str(i) for i in range(len(names))]
    _require_columns(file, names, columns)
    tables = (pa.Table.from_batches([batch]).rename_columns(names) for batch in reader)
    empty = reader.schema.empty_table().rename_columns(names)
    for table in _or_empty(tables, empty):
        yield _missing_as_null(table.select(columns), [c for c in numbers if c not in ids])


def _or_empty(tables: Iterator[pa.Table], empty: pa.Table) -> Iterator[pa.Table]:
    yielded = False
    for table in tables:
        yielded = True
        yield table
    if not yielded:
        yield empty


def _missing_as_null(table: pa.Table, columns: list[str]) -> pa.Table:
    """What Arrow reads as missing in a typed CSV column ('', NA, null, ...), in text ones."""
    nulls = pa.array(sorted(_CSV_NULLS))
    for column in columns:
        values = table[column]
        missing = pc.is_in(values, value_set=nulls)
        index = table.schema.get_field_index(column)
        table = table.set_column(index, column, pc.if_else(missing, None, values))
    return table


def _to_pandas(table: pa.Table, ids: list[str]) -> pd.DataFrame:
    frame = table.to_pandas()
    for column in ids:
        if table.schema.field(column).type in _NULLABLE_INTS:
            frame[column] = table[column].to_pandas(types_mapper=_NULLABLE_INTS.get)
    return frame


def _require_columns(file: SourceFile, present: list[str], wanted: list[str]) -> None:
    missing = [column for column in wanted if column not in present]
    if missing:
        raise CustomSourceError(
            f"{file.url}: column {missing[0]!r} (mapped in data.custom) is missing; "
            f"the file has {present}"
        )


@dataclass
class _Bad:
    count: int = 0
    shown: list[str] = field(default_factory=list)


class BadValues:
    """The values of one file that were there but did not parse, counted over all its batches
    per column and kind, in the order they are checked: the refusal names the first column with
    any, how many of its values in the whole file are bad, and the first of them by row."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.found: dict[tuple[str, str], _Bad] = {}

    def check(
        self, column: str, values: pd.Series, parsed: pd.Series, what: str, first_row: int
    ) -> None:
        """Count the ``values`` (rows ``first_row + 1`` on of the file) that ``parsed`` lost."""
        found = self.found.setdefault((column, what), _Bad())
        rows = np.flatnonzero((parsed.isna() & values.notna()).to_numpy())
        found.count += len(rows)
        room = _SHOWN - len(found.shown)
        found.shown += [f"row {first_row + row + 1}: {values.iloc[row]!r}" for row in rows[:room]]

    def raise_any(self) -> None:
        for (column, what), found in self.found.items():
            if found.count:
                raise CustomSourceError(
                    f"{self.url}: column {column!r}: {found.count} values are not {what} "
                    f"({', '.join(found.shown)})"
                )


def _numbers(bad: BadValues, column: str, values: pd.Series, first_row: int) -> pd.Series:
    parsed = pd.to_numeric(values, errors="coerce")
    bad.check(column, values, parsed, "numbers", first_row)
    return parsed


def _unix_seconds(bad: BadValues, column: str, values: pd.Series, first_row: int) -> pd.Series:
    """Integer or float unix seconds, or dates pandas parses (ISO 8601 and the like)."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return values.astype("float64").floordiv(1)
    if not pd.api.types.is_datetime64_any_dtype(values):
        if _may_be_numbers(values):
            numeric = pd.to_numeric(values, errors="coerce")
            if numeric.notna().sum() == values.notna().sum():
                return numeric.floordiv(1)
        parsed = pd.to_datetime(values, errors="coerce", utc=True)
        bad.check(column, values, parsed, "unix seconds or dates", first_row)
        values = parsed
    seconds = values.dt.tz_localize(None) if values.dt.tz is not None else values
    return pd.Series(seconds.astype("int64") // 10**9, index=values.index).where(values.notna())


def _may_be_numbers(values: pd.Series) -> bool:
    """Whether the first value there is a number: parsing a column of dates as numbers, only to
    find none, costs as much as parsing the dates."""
    first = values.dropna()[:1]
    return pd.to_numeric(first, errors="coerce").notna().all()


def interaction_batches(file: SourceFile, source: InteractionsSource) -> Iterator[pd.DataFrame]:
    """user_id, item_id (as in the source), rating float, timestamp of each batch of ``file``.
    Bad values are refused once the whole file is read, counted over all of it."""
    value = source.rating or source.label
    ids = [source.user, source.item]
    numbers = [column for column in (source.timestamp, value) if column]
    bad = BadValues(file.url)
    first_row = 0
    for raw in read_batches(file, source, list(dict.fromkeys([*ids, *numbers])), ids, numbers):
        frame = pd.DataFrame({USER_ID: raw[source.user], ITEM_ID: raw[source.item]})
        if value is None:  # implicit feedback: each row is a positive
            frame[RATING] = 1.0
        else:
            frame[RATING] = _numbers(bad, value, raw[value], first_row)
            if source.label is not None:
                off = ~frame[RATING].isin([0, 1]) & frame[RATING].notna()
                bad.check(value, frame[RATING], frame[RATING].mask(off), "0 or 1", first_row)
        frame[TIMESTAMP] = (
            _unix_seconds(bad, source.timestamp, raw[source.timestamp], first_row)
            if source.timestamp
            else 0
        )
        first_row += len(raw)
        yield frame
    bad.raise_any()


def read_side_table(table: str, files: list[SourceFile], source: SideTableSource) -> pd.DataFrame:
    """The id and the declared columns under their internal names (``side_features``):
    continuous ones as float32, lists as lists of strings. Held whole: a side table has a row
    per user or item, not per interaction."""
    declared = side_features(table, source)
    named = declared.source_names
    frames = []
    for file in files:
        wanted = list(dict.fromkeys([source.id, *named.values()]))
        numbers = [named[column] for column in declared.continuous]
        raw = pd.concat(read_batches(file, source, wanted, [source.id], numbers), ignore_index=True)
        frame = pd.DataFrame({_id_column(table): raw[source.id]})
        bad = BadValues(file.url)
        for column in declared.categorical:
            frame[column] = raw[named[column]]
        for column in declared.continuous:
            frame[column] = _numbers(bad, named[column], raw[named[column]], 0).astype("float32")
        bad.raise_any()
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


class IdForms:
    """One side's ids (user_id or item_id) in both forms a dataset may use: int64 if they are
    integers, and else the hash of their strings (recflow/external_ids.py). Which one is known
    only once every table's ids were seen: if all are integers, the ids are. What it keeps of
    the log is each distinct string by its hash (the names of a string-id dataset), not rows."""

    def __init__(self, side: str) -> None:
        self.side = side
        self.all_integers = True
        self.names: dict[int, str] = {}
        self.clashes: set[str] = set()

    def forms(self, ids: pd.Series) -> tuple[pd.Series | None, np.ndarray]:
        """``ids`` as int64 (None unless every one is an integer) and hashed."""
        # One id that is not an integer makes them all strings: parsing more is wasted.
        as_int = _as_int_ids(ids) if self.all_integers else None
        self.all_integers &= as_int is not None
        strings = ids.astype(str).to_numpy()
        distinct = pd.unique(strings)
        for hashed, name in zip(internal_ids(distinct), distinct, strict=True):
            if self.names.setdefault(hashed, name) != name:
                self.clashes.update((self.names[hashed], name))
        return as_int, internal_ids(strings)

    def names_table(self) -> pd.DataFrame:
        """Each string id next to its int64 id (user_ids.parquet, item_ids.parquet)."""
        if self.clashes:
            raise CustomSourceError(
                f"{self.side}: the string ids {sorted(self.clashes)[:_SHOWN]} hash alike"
            )
        return pd.DataFrame({self.side: list(self.names), EXTERNAL_ID: list(self.names.values())})


@dataclass
class SidePolicy:
    """``data.custom.unknown_side_ids`` for one side table over the whole log: interactions
    whose ``column`` id the table lacks are counted batch by batch, dropped with ``drop``, and
    reported (or refused, with ``error``) once every batch was seen."""

    column: str
    known: pa.Array | None
    policy: str
    seen: int = 0
    unknown: int = 0

    def apply(self, batch: pa.Table) -> pa.Table:
        if self.known is None:
            return batch
        known = pc.is_in(batch[self.column], value_set=self.known)
        self.seen += batch.num_rows
        self.unknown += batch.num_rows - pc.sum(known, min_count=0).as_py()
        return batch.filter(known) if self.policy == "drop" else batch

    def report(self, dropped: Counter) -> None:
        if not self.unknown:
            return
        table = "users" if self.column == USER_ID else "items"
        message = (
            f"{self.unknown} of {self.seen} interactions have a {self.column} not in the "
            f"{table} table"
        )
        if self.policy == "error":
            raise CustomSourceError(f"data.custom: {message} (unknown_side_ids: error)")
        if self.policy == "drop":
            dropped[f"interactions: {self.column} not in the {table} table"] += self.unknown
            log.warning("%s: dropped (unknown_side_ids: drop)", message)
            return
        log.warning("%s: kept, with each feature's missing value (unknown_side_ids: keep)", message)


def stage_interactions(
    source: CustomSource,
    files: dict[str, list[SourceFile]],
    ids: dict[str, IdForms],
    path: Path,
    dropped: Counter,
) -> None:
    """Pass one: every interaction, batch by batch, with both forms of its ids, into ``path``.
    Interactions without a user or item are dropped and counted."""
    splits = ["interactions", *(["validation"] if "validation" in files else [])]
    schema = _staged_schema(validation=len(splits) > 1)
    with pq.ParquetWriter(path, schema) as writer:
        for split in splits:
            rows = 0
            for file in files[split]:
                for frame in interaction_batches(file, source.interactions):
                    rows += len(frame)
                    known = frame[[USER_ID, ITEM_ID]].notna().all(axis=1)
                    dropped["interactions: missing user or item id"] += int((~known).sum())
                    staged = _both_forms(frame[known], ids)
                    if len(splits) > 1:  # the dataset's own split (features.split=predefined)
                        staged[IN_VALIDATION] = split == "validation"
                    writer.write_table(pa.Table.from_pandas(staged, schema, preserve_index=False))
            if not rows:
                urls = [f.url for f in files[split]]
                raise CustomSourceError(f"data.custom.{split}: no rows in {urls}")


def _staged_schema(validation: bool) -> pa.Schema:
    fields = [
        (form.format(side), pa.int64())
        for side in (USER_ID, ITEM_ID)
        for form in (_AS_INT, _HASHED)
    ]
    fields += [(RATING, pa.float32()), (TIMESTAMP, pa.int64())]
    return pa.schema(fields + ([(IN_VALIDATION, pa.bool_())] if validation else []))


def _both_forms(frame: pd.DataFrame, ids: dict[str, IdForms]) -> pd.DataFrame:
    staged = {}
    for side, forms in ids.items():
        as_int, hashed = forms.forms(frame[side])
        missing = pd.Series(pd.NA, index=frame.index, dtype="Int64")
        staged[_AS_INT.format(side)] = missing if as_int is None else as_int
        staged[_HASHED.format(side)] = hashed
    staged[RATING] = frame[RATING].astype("float32")
    staged[TIMESTAMP] = frame[TIMESTAMP].astype("Int64")
    return pd.DataFrame(staged, index=frame.index)


def write_interactions(
    staged: Path, out: Path, form: str, policies: list[SidePolicy]
) -> tuple[int, np.ndarray, np.ndarray]:
    """Pass two: the staged interactions with the ids in ``form``, through the side policies,
    batch by batch into ``out``. Returns the rows written and the distinct user and item ids."""
    parquet = pq.ParquetFile(staged)
    schema = INTERACTIONS_SCHEMA
    if IN_VALIDATION in parquet.schema_arrow.names:
        schema = schema.append(pa.field(IN_VALIDATION, pa.bool_()))
    columns = [form.format(USER_ID), form.format(ITEM_ID), *schema.names[2:]]
    rows, users, items = 0, np.array([], "int64"), np.array([], "int64")
    with pq.ParquetWriter(out, schema) as writer:
        for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=columns):
            table = pa.Table.from_batches([batch]).rename_columns(schema.names)
            for policy in policies:
                table = policy.apply(table)
            writer.write_table(table)
            rows += table.num_rows
            users = np.union1d(users, pc.unique(table[USER_ID]).to_numpy())
            items = np.union1d(items, pc.unique(table[ITEM_ID]).to_numpy())
    return rows, users, items


def build_custom(
    source: CustomSource, files: dict[str, list[SourceFile]], out_dir: Path
) -> tuple[NormalizeReport, bool]:
    """Read, check and write the canonical tables into ``out_dir`` (a staging directory).

    Returns the report and whether the ids are strings (external). Interactions without a user
    or item are dropped and counted; every other check raises :class:`CustomSourceError`.
    The interactions are read and written a batch at a time, in two passes (ids are integers
    only if every table's are): the import's memory is bounded by a batch and the distinct
    ids, not by the log.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = {side: IdForms(side) for side in (USER_ID, ITEM_ID)}
    dropped: Counter = Counter()
    staged = out_dir / ".interactions.staged.parquet"
    stage_interactions(source, files, ids, staged, dropped)
    sides = {
        table: read_side_table(table, files[table], getattr(source, table))
        for table in ("users", "items")
        if table in files
    }
    integers = resolve_ids(sides, ids)
    policies = [
        SidePolicy(column, _ids_of(sides.get(table), column), source.unknown_side_ids)
        for table, column in (("users", USER_ID), ("items", ITEM_ID))
    ]
    form = _AS_INT if integers else _HASHED
    n_rows, users, items_seen = write_interactions(
        staged, out_dir / "interactions.parquet", form, policies
    )
    staged.unlink()
    for policy in policies:
        policy.report(dropped)
    if not n_rows:
        raise CustomSourceError("data.custom: no interactions left after the checks above")
    items = sides.get("items")
    if items is None:  # the catalogue is what was interacted with, without features
        items = pd.DataFrame({ITEM_ID: items_seen})
    items = items.sort_values(ITEM_ID, kind="stable")
    _write_side(items, side_features("items", source.items), out_dir / "items.parquet")
    if "users" in sides:
        users_table = sides["users"].sort_values(USER_ID, kind="stable")
        _write_side(users_table, side_features("users", source.users), out_dir / "users.parquet")
    if not integers:
        for side, forms in ids.items():
            forms.names_table().to_parquet(out_dir / names_file(side), index=False)
    for rule, rows in dropped.items():
        if rows:
            log.info("custom: dropped %d rows (%s)", rows, rule)
    report = NormalizeReport(
        n_interactions=n_rows,
        n_users=len(users),
        n_items=len(items),
        has_users="users" in sides,
        has_tags=False,
        dropped={rule: rows for rule, rows in sorted(dropped.items()) if rows},
    )
    return report, not integers


def resolve_ids(sides: dict[str, pd.DataFrame], ids: dict[str, IdForms]) -> bool:
    """Whether the dataset's ids are integers, now that the side tables' ids are seen too;
    each side table's id column is made the int64 form the dataset uses."""
    forms = {
        table: ids[_id_column(table)].forms(sides[table][_id_column(table)]) for table in sides
    }
    integers = all(side.all_integers for side in ids.values())
    for table, (as_int, hashed) in forms.items():
        sides[table][_id_column(table)] = as_int if integers else hashed
    return integers


def _ids_of(side: pd.DataFrame | None, column: str) -> pa.Array | None:
    return None if side is None else pa.array(side[column].to_numpy(), pa.int64())


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
