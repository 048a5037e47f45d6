"""Parse the original MovieLens files into the canonical parquet tables.

Every variant ends up with the same four schemas below (``TAGS_SCHEMA`` only where the variant
has tags, ``USERS_SCHEMA`` only where it has users), so nothing downstream needs to know which
variant it is reading. The cleaning rules are documented in docs/data.md; every row a rule drops
is counted, logged and returned in the report.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from recflow.vocabulary import ITEM_ID, RATING, TIMESTAMP, USER_ID

log = logging.getLogger(__name__)

INTERACTIONS_SCHEMA = pa.schema(
    [
        (USER_ID, pa.int64()),
        (ITEM_ID, pa.int64()),
        (RATING, pa.float32()),
        (TIMESTAMP, pa.int64()),
    ]
)
ITEMS_SCHEMA = pa.schema(
    [
        (ITEM_ID, pa.int64()),
        ("title", pa.string()),
        ("year", pa.int32()),
        ("genres", pa.list_(pa.string())),
        ("year_bucket", pa.int64()),
    ]
)
USERS_SCHEMA = pa.schema(
    [
        (USER_ID, pa.int64()),
        ("gender", pa.string()),
        ("age", pa.int32()),
        ("occupation", pa.string()),
        ("zip", pa.string()),
        ("age_bucket", pa.int64()),
        ("zip_prefix", pa.string()),
    ]
)
TAGS_SCHEMA = pa.schema(
    [
        (USER_ID, pa.int64()),
        (ITEM_ID, pa.int64()),
        ("tag", pa.string()),
        (TIMESTAMP, pa.int64()),
    ]
)

INTERACTIONS_FILE = "interactions.parquet"
ITEMS_FILE = "items.parquet"
USERS_FILE = "users.parquet"
TAGS_FILE = "tags.parquet"

# All MovieLens scales are subsets of 0.5..5 in half stars (ml-100k/1m use whole stars only).
MIN_RATING = 0.5
MAX_RATING = 5.0

# Genre markers that mean "no genre": ml-100k flags "unknown", the CSV variants say so in words.
_NO_GENRE = frozenset({"unknown", "(no genres listed)"})

# ml-1m's users.dat stores occupations as codes; names from the ml-1m README.
ML1M_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
)  # fmt: skip

# "Toy Story (1995)", "Land Before Time III (1995) (V)", "Death Note (2006–2007)": the last
# parenthesised year (or the start of a year range) is the release year.
_YEAR = re.compile(r"\((\d{4})(?:\s*[-–]\s*\d{0,4})?\)")


class Layout(str, Enum):
    """How a variant lays out its files; the registry in tasks/download.py names one per variant."""

    ML100K = "ml-100k"  # u.data (tab), u.item/u.user/u.genre ('|', latin-1)
    DAT = "dat"  # ml-1m, ml-10m: '::'-separated ratings.dat, movies.dat, users.dat, tags.dat
    CSV = "csv"  # ml-20m, ml-25m, ml-latest(-small): ratings.csv, movies.csv, tags.csv


class MalformedSource(ValueError):
    """A source file is not in the format its variant promises (wrong file, wrong variant)."""


@dataclass(frozen=True)
class NormalizeReport:
    """What was written: by ``normalize`` for a MovieLens variant, or by the synthetic generator."""

    n_interactions: int
    n_users: int  # distinct users with at least one interaction
    n_items: int  # rows of the item catalogue, rated or not
    has_users: bool
    has_tags: bool
    dropped: dict[str, int] = field(default_factory=dict)  # cleaning rule -> rows dropped


@dataclass
class _Tables:
    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame | None = None
    tags: pd.DataFrame | None = None
    dropped: Counter = field(default_factory=Counter)


def normalize(layout: Layout | str, root: Path, out_dir: Path) -> NormalizeReport:
    """Parse the extracted archive folder ``root`` and write the canonical tables to ``out_dir``.

    ``out_dir`` is expected to be a staging directory (see ``recflow.atomic.atomic_dir``): the
    tables are published together or not at all by the caller.
    """
    root = Path(root)
    tables = _PARSERS[Layout(layout)](root)
    _clean(tables)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_table(tables.interactions, INTERACTIONS_SCHEMA, out_dir / INTERACTIONS_FILE)
    write_table(tables.items, ITEMS_SCHEMA, out_dir / ITEMS_FILE)
    if tables.users is not None:
        write_table(tables.users, USERS_SCHEMA, out_dir / USERS_FILE)
    if tables.tags is not None:
        write_table(tables.tags, TAGS_SCHEMA, out_dir / TAGS_FILE)
    dropped = {rule: rows for rule, rows in sorted(tables.dropped.items()) if rows}
    for rule, rows in dropped.items():
        log.info("%s: dropped %d rows (%s)", root.name, rows, rule)
    if not dropped:
        log.info("%s: the cleaning rules dropped nothing", root.name)
    return NormalizeReport(
        n_interactions=len(tables.interactions),
        n_users=int(tables.interactions[USER_ID].nunique()),
        n_items=len(tables.items),
        has_users=tables.users is not None,
        has_tags=tables.tags is not None,
        dropped=dropped,
    )


def write_table(frame: pd.DataFrame, schema: pa.Schema, path: Path) -> None:
    """Write ``frame`` with exactly ``schema``'s column names, order and types."""
    table = pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)
    pq.write_table(table, path)


def parse_year(title: str) -> int | None:
    years = _YEAR.findall(title)
    return int(years[-1]) if years else None


def split_genres(names: list[str] | str) -> list[str]:
    parts = names.split("|") if isinstance(names, str) else names
    return [g for g in (p.strip() for p in parts) if g and g not in _NO_GENRE]


# ---------------------------------------------------------------------------------------------
# The side features MovieLens declares (recflow.artifacts.MOVIELENS_ITEMS/USERS), derived from
# its raw columns here, once, so the feature stage reads declared columns of any dataset alike.

# Ages in MovieLens-1M's own buckets, so ml-100k and ml-1m users land on the same scale.
AGE_BOUNDARIES = (18, 25, 35, 45, 50, 56)
# The bucket of a missing age or year; a missing zip's prefix.
MISSING_BUCKET, MISSING_PREFIX = -1, "?"
NO_GENRES = "(no genres listed)"


def movielens_items(items: pd.DataFrame) -> pd.DataFrame:
    """``year_bucket`` (5-year bins) from the year, and a genre placeholder for none."""
    year = pd.to_numeric(items["year"], errors="coerce")
    # An empty list would make the genre embedding a mean over nothing (NaN).
    genres = [list(g) if len(g) else [NO_GENRES] for g in items["genres"]]
    return items.assign(
        year_bucket=((year // 5) * 5).fillna(MISSING_BUCKET).astype("int64"), genres=genres
    )


def movielens_users(users: pd.DataFrame) -> pd.DataFrame:
    """``age_bucket`` on ml-1m's scale and ``zip_prefix`` (the zip's first character)."""
    age = pd.to_numeric(users["age"], errors="coerce")
    buckets = np.searchsorted(AGE_BOUNDARIES, age.fillna(0).to_numpy(), side="right")
    prefix = users["zip"].astype("string").str[:1].fillna(MISSING_PREFIX).astype(str)
    return users.assign(
        age_bucket=np.where(age.isna(), MISSING_BUCKET, buckets).astype("int64"),
        zip_prefix=prefix,
    )


# ---------------------------------------------------------------------------------------------
# Layout parsers: read the files as published. Small tables come back as strings; numbers are
# coerced (and unparseable rows counted) by _clean, the same way for every variant.


def _parse_ml100k(root: Path) -> _Tables:
    dropped: Counter = Counter()
    interactions = _read_ratings(root / "u.data", delimiter="\t", header=False)
    genres = sorted(_split_lines(root / "u.genre", "|", 2, dropped), key=lambda f: int(f[1]))
    names = [name for name, _index in genres]
    # id|title|release date|video release date|IMDb URL|one 0/1 flag per genre of u.genre
    items = [
        (f[0], f[1], [g for g, on in zip(names, f[-len(names) :], strict=True) if on == "1"])
        for f in _split_lines(root / "u.item", "|", 5 + len(names), dropped)
    ]
    # id|age|gender|occupation|zip
    users = [(f[0], f[2], f[1], f[3], f[4]) for f in _split_lines(root / "u.user", "|", 5, dropped)]
    return _Tables(interactions, _items_frame(items), _users_frame(users), None, dropped)


def _parse_dat(root: Path) -> _Tables:
    dropped: Counter = Counter()
    # Arrow takes one-character delimiters only; splitting on ':' turns 'a::b' into 'a', '', 'b'.
    # Safe for ratings.dat, whose fields are all numeric.
    interactions = _read_ratings(root / "ratings.dat", delimiter=":", header=False, stride=2)
    # Text fields may hold ':' (and in principle '::'): ids come first, genres/timestamps last.
    items = [
        (f[0], "::".join(f[1:-1]), f[-1])
        for f in _split_lines(root / "movies.dat", "::", 3, dropped)
    ]
    users = tags = None
    if (root / "users.dat").exists():
        # id::gender::age band::occupation code::zip
        users = _users_frame(
            [
                (f[0], f[1], f[2], _ml1m_occupation(f[3]), f[4])
                for f in _split_lines(root / "users.dat", "::", 5, dropped)
            ]
        )
    if (root / "tags.dat").exists():
        tags = pd.DataFrame(
            [
                (f[0], f[1], "::".join(f[2:-1]), f[-1])
                for f in _split_lines(root / "tags.dat", "::", 4, dropped)
            ],
            columns=TAGS_SCHEMA.names,
        )
    return _Tables(interactions, _items_frame(items), users, tags, dropped)


def _parse_csv(root: Path) -> _Tables:
    interactions = _read_ratings(root / "ratings.csv", delimiter=",", header=True)
    movies = _read_strings(root / "movies.csv", [ITEM_ID, "title", "genres"])
    items = list(zip(movies[ITEM_ID], movies["title"], movies["genres"], strict=True))
    tags = None
    if (root / "tags.csv").exists():
        tags = _read_strings(root / "tags.csv", TAGS_SCHEMA.names)
    return _Tables(interactions, _items_frame(items), None, tags)


_PARSERS: dict[Layout, Callable[[Path], _Tables]] = {
    Layout.ML100K: _parse_ml100k,
    Layout.DAT: _parse_dat,
    Layout.CSV: _parse_csv,
}

# Ratings as float64 and ids as int64 so out-of-range values are seen by _clean, not wrapped.
_RATING_TYPES = (pa.int64(), pa.int64(), pa.float64(), pa.int64())


def _read_ratings(path: Path, *, delimiter: str, header: bool, stride: int = 1) -> pd.DataFrame:
    """Read a ratings file (up to 10^8 lines) with Arrow's multithreaded CSV reader.

    Lines with the wrong number of fields are skipped and counted. A non-numeric value raises:
    in a verified archive it means the file is not the format we think, not a stray bad row.
    """
    names = INTERACTIONS_SCHEMA.names
    columns = [f"f{i}" for i in range(stride * (len(names) - 1) + 1)]
    wanted = columns[::stride]
    malformed = 0

    def skip(_row: pacsv.InvalidRow) -> str:
        nonlocal malformed
        malformed += 1
        return "skip"

    try:
        table = pacsv.read_csv(
            _require(path),
            read_options=pacsv.ReadOptions(column_names=columns, skip_rows=int(header)),
            parse_options=pacsv.ParseOptions(
                delimiter=delimiter, quote_char=False, invalid_row_handler=skip
            ),
            convert_options=pacsv.ConvertOptions(
                include_columns=wanted, column_types=dict(zip(wanted, _RATING_TYPES, strict=True))
            ),
        )
    except pa.ArrowInvalid as exc:
        raise MalformedSource(f"{path}: {exc}") from exc
    frame = table.rename_columns(names).to_pandas()
    frame.attrs["malformed"] = malformed
    return frame


def _read_strings(path: Path, names: list[str]) -> pd.DataFrame:
    """Read a quoted CSV with a header line (movies.csv, tags.csv), every column a string."""
    try:
        table = pacsv.read_csv(
            _require(path),
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=1),
            convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string())),
        )
    except pa.ArrowInvalid as exc:
        raise MalformedSource(f"{path}: {exc}") from exc
    return table.to_pandas()


def _split_lines(path: Path, sep: str, min_fields: int, dropped: Counter) -> list[list[str]]:
    """Split a small text file into fields; lines with too few fields are counted and skipped."""
    rows = []
    for line in _read_text(path).splitlines():
        if not line.strip():
            continue
        fields = line.split(sep)
        if len(fields) < min_fields:
            dropped[f"{path.name}: malformed line"] += 1
            continue
        rows.append(fields)
    return rows


def _read_text(path: Path) -> str:
    """UTF-8 where the file is valid UTF-8 (ml-10m and later), else latin-1 (ml-100k, ml-1m)."""
    raw = _require(path).read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _require(path: Path) -> Path:
    if not path.is_file():
        raise MalformedSource(f"{path} is missing: the archive is not the variant it claims to be")
    return path


def _ml1m_occupation(code: str) -> str:
    # Code 0 is '"other" or not specified' in the ml-1m README; unknown codes mean the same.
    index = int(code) if code.strip().isdigit() else 0
    return ML1M_OCCUPATIONS[index] if index < len(ML1M_OCCUPATIONS) else ML1M_OCCUPATIONS[0]


def _items_frame(rows: list[tuple[str, str, list[str] | str]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=[ITEM_ID, "title", "genres"])
    frame["title"] = frame["title"].fillna("").str.strip()
    frame["year"] = pd.array([parse_year(t) for t in frame["title"]], dtype="Int32")
    frame["genres"] = [split_genres(g) if isinstance(g, list | str) else [] for g in frame.genres]
    return frame


def _users_frame(rows: list[tuple[str, str, str, str, str]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=[USER_ID, "gender", "age", "occupation", "zip"])
    for column in ("gender", "occupation", "zip"):
        frame[column] = frame[column].str.strip()
    return frame


# ---------------------------------------------------------------------------------------------
# Cleaning: one set of rules for every variant, each drop counted under its rule's name.


def _clean(tables: _Tables) -> None:
    dropped = tables.dropped
    inter = tables.interactions
    dropped["interactions: malformed line"] += inter.attrs.pop("malformed", 0)
    inter = _drop(inter, inter.notna().all(axis=1), "interactions: missing value", dropped)
    rating = inter[RATING].to_numpy()
    half_stars = np.round(rating * 2) == rating * 2
    on_scale = (rating >= MIN_RATING) & (rating <= MAX_RATING) & half_stars
    inter = _drop(inter, on_scale, "interactions: rating off the 0.5-5 half-star scale", dropped)
    # A re-rating is the user's latest opinion: keep the last one.
    inter = inter.sort_values([USER_ID, ITEM_ID, TIMESTAMP], kind="stable")
    latest = ~inter.duplicated([USER_ID, ITEM_ID], keep="last")
    inter = _drop(inter, latest, "interactions: earlier rating of a re-rated item", dropped)

    items = _coerce_ints(tables.items, [ITEM_ID], "items", dropped)
    items = _drop(items, ~items[ITEM_ID].duplicated(), "items: duplicate item_id", dropped)
    known = inter[ITEM_ID].isin(items[ITEM_ID])
    inter = _drop(inter, known, "interactions: item not in the item table", dropped)

    if tables.users is not None:
        users = _coerce_ints(tables.users, [USER_ID, "age"], "users", dropped)
        users = _drop(users, ~users[USER_ID].duplicated(), "users: duplicate user_id", dropped)
        known = inter[USER_ID].isin(users[USER_ID])
        inter = _drop(inter, known, "interactions: user not in the user table", dropped)
        tables.users = users.astype({"age": "int32"}).sort_values(USER_ID, kind="stable")

    if tables.tags is not None:
        tags = _coerce_ints(tables.tags, [USER_ID, ITEM_ID, TIMESTAMP], "tags", dropped)
        tables.tags = _drop(tags, tags["tag"].notna(), "tags: missing tag", dropped)

    inter = inter.astype({RATING: "float32"})
    tables.interactions = inter.sort_values([USER_ID, TIMESTAMP, ITEM_ID], kind="stable")
    tables.items = movielens_items(items.sort_values(ITEM_ID, kind="stable"))
    if tables.users is not None:
        tables.users = movielens_users(tables.users)


def _coerce_ints(frame: pd.DataFrame, columns: list[str], table: str, dropped: Counter):
    frame = frame.copy()
    for column in columns:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    valid = frame[columns].notna().all(axis=1)
    frame = _drop(frame, valid, f"{table}: missing or non-numeric {'/'.join(columns)}", dropped)
    return frame.astype(dict.fromkeys(columns, "int64"))


def _drop(frame: pd.DataFrame, keep, rule: str, dropped: Counter) -> pd.DataFrame:
    keep = np.asarray(keep, dtype=bool)
    n_dropped = int((~keep).sum())
    if not n_dropped:
        return frame
    dropped[rule] += n_dropped
    return frame[keep]
