"""The layering (docs/architecture.md), as the import-linter contracts in pyproject.toml state
it: a wrong-way import, a cycle between modules or a heavy import into the foundation or the
Triton stubs fails here, whether it is written at the top of a module or inside a function."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def test_import_contracts_are_kept():
    result = subprocess.run(
        [LINT_IMPORTS, "--no-cache", "--config", "pyproject.toml"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
