"""Hostile archives and data through the real fetch path (a local mirror that declares its own
checksums, i.e. a mirror that lies), and hostile names from the command line.

Each archive below passes the checksum check, so only the extraction and normalisation rules
stand between it and the data directory. Each dirty table is either a clear error or a
documented cleaning rule (docs/data.md, docs/features.md) whose count reaches the validation
report. The archive unit tests (tests/unit/test_download.py) stay in the suite; these add the
end-to-end path and what a failure leaves on disk."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recflow.config import DataConfig, PathsConfig
from tasks.download import fetch_dataset, source_cleaning
from tasks.extract import UnsafeArchive
from tasks.normalize import MalformedSource
from tests.support.archives import entry, make_zip
from tests.support.movielens_server import make_mirror

VARIANT = "ml-latest-small"
ROOT = f"{VARIANT}/"
MOVIES = "movieId,title,genres\n1,A (1995),Drama\n2,B (1996),Comedy\n3,C (1997),Drama|Comedy\n"
HEADER = "userId,movieId,rating,timestamp\n"
# Each user's latest (item 3, held out) is liked by half the users: the valid split needs both.
GOOD_ROWS = "".join(
    f"{u},{i},{2.0 if (u + i) % 2 else 4.0},{1000 + 10 * u + i}\n"
    for u in range(1, 9)
    for i in (1, 2, 3)
)


def fetch_from(tmp_path: Path, archive_members: list) -> tuple[Path, object]:
    """Fetch ``VARIANT`` from a mirror holding an archive of ``archive_members``."""
    (tmp_path / "src").mkdir(exist_ok=True)
    archive = make_zip(tmp_path / "src" / f"{VARIANT}.zip", archive_members)
    mirror = make_mirror(tmp_path / "mirror", [archive], declare=True)
    home = tmp_path / "home"
    data = DataConfig(variant=VARIANT, mirror=str(mirror))
    return home, lambda: fetch_dataset(data, PathsConfig(home=home))


def layout(ratings: str, movies: str = MOVIES) -> list:
    return [(ROOT + "ratings.csv", ratings.encode()), (ROOT + "movies.csv", movies.encode())]


ARCHIVES = {
    "zip-slip": ([*layout(HEADER + GOOD_ROWS), ("ml-latest-small/../../evil.csv", b"x")], "'..'"),
    "absolute-path": ([*layout(HEADER + GOOD_ROWS), ("/tmp/evil.csv", b"x")], "absolute"),
    "symlink": (
        [*layout(HEADER + GOOD_ROWS), (entry(ROOT + "tags.csv", stat.S_IFLNK | 0o777), b"/etc")],
        "symbolic link",
    ),
    "zip-bomb": ([*layout(HEADER + GOOD_ROWS), (ROOT + "zeros", bytes(32 << 20))], "ratio"),
}


@pytest.mark.parametrize("name", list(ARCHIVES))
def test_hostile_archives_are_refused_and_nothing_is_written(tmp_path: Path, name: str) -> None:
    members, reason = ARCHIVES[name]
    home, fetch = fetch_from(tmp_path, members)
    with pytest.raises(UnsafeArchive, match=reason):
        fetch()
    assert not (home / "data").exists() or not any((home / "data").iterdir())
    assert not list(tmp_path.parent.rglob("evil.csv"))


def test_a_truncated_archive_is_a_clear_error(tmp_path: Path) -> None:
    whole = make_zip(tmp_path / "whole.zip", layout(HEADER + GOOD_ROWS * 50))
    truncated = whole.read_bytes()[: whole.stat().st_size // 2]
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / f"{VARIANT}.zip").write_bytes(truncated)
    mirror = make_mirror(tmp_path / "mirror", [tmp_path / "src" / f"{VARIANT}.zip"], declare=True)
    home = tmp_path / "home"
    with pytest.raises(UnsafeArchive, match="corrupt zip"):
        fetch_dataset(DataConfig(variant=VARIANT, mirror=str(mirror)), PathsConfig(home=home))
    assert not (home / "data" / VARIANT).exists()


# Dirty rows among clean ones: each is dropped by a documented rule and counted.
DIRTY = {
    "null user id": (",1,4.0,5\n", "interactions: missing value"),
    "NaN rating": ("1,1,NaN,6\n", "interactions: missing value"),
    "negative rating": ("1,2,-3.0,7\n", "interactions: rating off the 0.5-5 half-star scale"),
    "duplicated row": ("1,3,4.0,1013\n", "interactions: earlier rating of a re-rated item"),
}
# Files that cannot be cleaned: a clear error naming the file and the problem.
BROKEN = {
    "id beyond int64": (HEADER + GOOD_ROWS + f"{2**63},1,4.0,5\n", str(2**63)),
    "wrong type column": (HEADER + GOOD_ROWS + "1,1,four,5\n", "four"),
    "empty file": ("", "ratings.csv"),
}


def test_dirty_rows_are_dropped_by_documented_rules_and_counted_in_the_report(
    tmp_path: Path, observe
) -> None:
    from tasks.features import build_features
    from tasks.validate import validate_features

    rows = HEADER + GOOD_ROWS + "".join(row for row, _ in DIRTY.values())
    home, fetch = fetch_from(tmp_path, layout(rows))
    raw = fetch()
    expected: dict[str, int] = {}
    for _, rule in DIRTY.values():
        expected[rule] = expected.get(rule, 0) + 1
    assert source_cleaning(raw.path) == expected
    assert raw.n_interactions == GOOD_ROWS.count("\n")

    features = build_features(raw, _features_config(), home / "features")
    report = validate_features(
        features, home / "features", _validation_config(), source_cleaning(raw.path)
    )
    observe(cleaning=report.cleaning)
    for rule, count in expected.items():
        assert report.cleaning[f"source: {rule}"] == count


@pytest.mark.parametrize("name", list(BROKEN))
def test_files_that_cannot_be_cleaned_are_clear_errors(tmp_path: Path, name: str) -> None:
    ratings, named = BROKEN[name]
    home, fetch = fetch_from(tmp_path, layout(ratings))
    with pytest.raises(MalformedSource, match="ratings.csv") as error:
        fetch()
    assert named in str(error.value)
    assert not (home / "data" / VARIANT).exists()


def test_no_rows_left_after_cleaning_stops_before_training(tmp_path: Path) -> None:
    from tasks.data_checks import DataValidationError
    from tasks.features import input_dtypes

    home, fetch = fetch_from(tmp_path, layout(HEADER + "1,1,9.0,5\n1,2,-1,6\n"))
    raw = fetch()
    assert raw.n_interactions == 0
    with pytest.raises(DataValidationError, match="empty: expected at least one row"):
        input_dtypes(raw)


def _features_config():
    from recflow.config import FeaturesConfig

    # Three good rows a user: the default split (each user's latest share by time) holds one
    # out with a share of a third or more, none with less (floor(3 x 0.3) = 0: an empty split).
    return FeaturesConfig(valid_fraction=0.34)


def _validation_config():
    from recflow.config import ValidationConfig

    return ValidationConfig()


# --- names from the command line --------------------------------------------------------------

HOSTILE_NAMES = ["../../evil", "/tmp/evil", "a/../../evil", "..", "evil\x00x", "ev il;rm"]


# Each refusal: the exit code (2 for a bad argument or setting, 1 for an unknown variant) and
# the message that names what is wrong.
CANDIDATE_ID = "is not a candidate id (letters, digits, _ and -)"
MODEL_NAMES = "not model names (letters, digits, '_', '.', '-')"
UNKNOWN_VARIANT = "unknown dataset variant"


def _setting_refused(field: str, pattern: str, name: str) -> str:
    if "\x00" in name:  # YAML cannot carry a NUL byte, so the override is refused before pydantic
        return f"invalid settings: override '{field}=evil\\x00x': the value is not YAML"
    refused = f"{field} String should match pattern '{pattern}'"
    return f"invalid settings: 1 validation error for Settings {refused}"


def cli_cases() -> list:
    cases = []
    for name in HOSTILE_NAMES:
        cases += [
            (["models", "show", name], 2, CANDIDATE_ID),
            (["models", "promote", name, "--reason", "test"], 2, CANDIDATE_ID),
            (["models", "rollback", "--to", name, "--reason", "test"], 2, CANDIDATE_ID),
            (["serve", "--models", name], 2, MODEL_NAMES),
            (["data", "fetch", name], 1, UNKNOWN_VARIANT),
            (
                ["--set", f"serving.model_prefix={name}", "models", "list"],
                2,
                _setting_refused("serving.model_prefix", r"^[a-z][a-z0-9_]{0,40}$", name),
            ),
            (
                ["--set", f"tuning.study={name}", "models", "list"],
                2,
                _setting_refused("tuning.study", r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", name),
            ),
        ]
    return cases


def _one_line(output: str) -> str:
    """The CLI's words without rich's error box and line wrapping."""
    return " ".join(output.translate(str.maketrans("", "", "│╭╮╰╯─")).split())


@pytest.mark.parametrize(
    ("args", "exit_code", "message"),
    [pytest.param(*case, id=" ".join(case[0])[:60]) for case in cli_cases()],
)
def test_hostile_names_from_the_cli_are_refused_and_write_nothing(
    tmp_path: Path, args: list[str], exit_code: int, message: str
) -> None:
    from cli.app import app

    home = tmp_path / "home"
    home.mkdir()
    result = CliRunner().invoke(app, ["--home", str(home), *args])
    assert result.exit_code == exit_code, result.output
    assert message in _one_line(result.output), result.output
    # A deliberate exit with a message, never a failure further in.
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert {p.name for p in tmp_path.iterdir()} == {"home"}
    assert not any(tmp_path.parent.glob("evil*"))
    assert not Path("/tmp/evil").exists()
