"""The command line itself: what ``recflow --help`` costs.

Help and argument errors must answer at once, so the CLI imports the pipeline's libraries only
inside the commands that use them. Checked by what a fresh interpreter has imported, which does
not depend on how busy the machine is.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version

import pytest
from typer.testing import CliRunner

from cli.app import app

# Each takes from a second (tritonclient) to many (TensorFlow) to import on 2 cores.
HEAVY = ("prefect", "pandas", "dask", "tensorflow", "merlin", "nvtabular", "tritonclient")
PROBE = """
import json, sys
from typer.testing import CliRunner
from cli.app import app
result = CliRunner().invoke(app, sys.argv[1:])
heavy = [name for name in {heavy!r} if name in sys.modules]
print(json.dumps({{"exit_code": result.exit_code, "heavy": heavy}}))
"""


@pytest.mark.parametrize(
    ("args", "exit_code"),
    [
        (["--help"], 0),
        (["--version"], 0),
        (["data", "--help"], 0),
        (["models", "--help"], 0),
        (["serve", "--help"], 0),
        (["recommend", "--no-such-option"], 2),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else str(v),
)
def test_help_and_argument_errors_import_no_heavy_library(args: list[str], exit_code: int):
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome == {"exit_code": exit_code, "heavy": []}


def test_version_is_the_installed_distributions():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"recflow {version('recflow')}"
