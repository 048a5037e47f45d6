"""Generated own data through the import and the features stage (issue #32): every drawn source
(tests/support/own_data.py) is imported and its features built, or it is refused with the
project's own error (one line naming the file or table); anything else is a failure, which
Hypothesis shrinks to its smallest example and this script reports.

    .venv/bin/python benchmarks/own_data_fuzz.py --cases 300 --seed 32 \\
        --out benchmarks/results/own_data_fuzz.md

Feature builds run in-process on Dask's default scheduler, as tests/unit/test_features.py
builds them; the unit suite runs the import part alone (tests/unit/test_own_data_generated.py).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hypothesis import HealthCheck, given, seed, settings  # noqa: E402

from recflow.artifacts import RawDataset  # noqa: E402
from tests.support.own_data import (  # noqa: E402
    declared_sources,
    features_outcome,
    import_outcome,
    write_source,
)


def fuzz(cases: int, seed_value: int) -> tuple[Counter, str | None]:
    """How many sources ended each way, and the shrunk failure if one was found."""
    outcomes: Counter = Counter()

    @seed(seed_value)
    @settings(max_examples=cases, deadline=None, suppress_health_check=list(HealthCheck))
    @given(tables=declared_sources())
    def one(tables):
        with tempfile.TemporaryDirectory() as directory:
            custom = write_source(tables, Path(directory) / "export")
            raw = import_outcome(custom, Path(directory) / "home")
            if not isinstance(raw, RawDataset):
                outcomes["refused at import"] += 1
                return
            built = features_outcome(raw, Path(directory) / "features")
            outcomes["features built" if built.__class__.__name__ == "FeatureSet" else
                     "refused by the features stage"] += 1  # fmt: skip

    try:
        one()
    except Exception as failure:  # the shrunk example Hypothesis re-raises: the finding
        return outcomes, f"{type(failure).__name__}: {failure}"
    return outcomes, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--seed", type=int, default=32)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    started = time.monotonic()
    outcomes, failure = fuzz(args.cases, args.seed)
    minutes = (time.monotonic() - started) / 60
    command = shlex.join([".venv/bin/python", "benchmarks/own_data_fuzz.py", *sys.argv[1:]])
    lines = [
        "# Generated own data: import and features (issue #32)",
        "",
        f"`{command}`: {sum(outcomes.values())} sources drawn (seed {args.seed}), "
        f"{minutes:.1f} min on 2 shared cores.",
        "",
        "| outcome | sources |",
        "| --- | --- |",
        *(f"| {outcome} | {n} |" for outcome, n in sorted(outcomes.items())),
        "",
        f"Failure (shrunk): {failure}" if failure else "No traceback, no partial write.",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
