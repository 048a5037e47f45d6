"""Generated own data through the import, the features stage and training (issue #32): every
drawn source (tests/support/own_data.py) is imported, its features built and a tiny ranker,
two-tower retriever and recommend ordering trained on them as train-models trains them, or it
is refused with the project's own error (one line naming the file or table at import, the
table and column at the features stage); anything else is a failure, which Hypothesis shrinks
to its smallest example and this script reports.

    nice -n 10 .venv/bin/python benchmarks/own_data_fuzz.py --cases 300 --seed 32 \\
        --out benchmarks/results/own_data_fuzz.md

Everything runs in this one process: feature builds on Dask's default scheduler, as
tests/unit/test_features.py builds them, and training with TensorFlow imported once (a
process per case would pay its import and start-up each time). The unit suite runs the import
part alone, and the issue's shop export through training
(tests/unit/test_own_data_generated.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from hypothesis import HealthCheck, given, seed, settings  # noqa: E402

from recflow.artifacts import FeatureSet, RawDataset  # noqa: E402
from tests.support.own_data import (  # noqa: E402
    declared_sources,
    features_outcome,
    import_outcome,
    training_outcome,
    write_source,
)

TRAINED = "features built, models trained"
OUTCOMES = ("refused at import", "refused by the features stage", TRAINED)


def fuzz(cases: int, seed_value: int) -> tuple[Counter, Counter, str | None]:
    """How many sources ended each way, the features stage's refusals by what they expected,
    and the shrunk failure if one was found."""
    outcomes: Counter = Counter()
    refusals: Counter = Counter()
    started = time.monotonic()

    @seed(seed_value)
    @settings(max_examples=cases, deadline=None, suppress_health_check=list(HealthCheck))
    @given(tables=declared_sources())
    def one(tables):
        with tempfile.TemporaryDirectory() as directory:
            ended, refusal = outcome(tables, Path(directory))
        outcomes[ended] += 1
        if refusal is not None:
            refusals[refusal] += 1
        n = sum(outcomes.values())
        if n % 10 == 0:
            counts = ", ".join(f"{name} {outcomes[name]}" for name in OUTCOMES)
            print(f"{n} sources, {time.monotonic() - started:.0f} s: {counts}", flush=True)

    try:
        one()
    except Exception as failure:  # the shrunk example Hypothesis re-raises: the finding
        return outcomes, refusals, f"{type(failure).__name__}: {failure}"
    return outcomes, refusals, None


def outcome(tables, directory: Path) -> tuple[str, str | None]:
    """Which way one drawn source ends, and what a features stage that refused it expected;
    an exception that is not a refusal propagates."""
    custom = write_source(tables, directory / "export")
    raw = import_outcome(custom, directory / "home")
    if not isinstance(raw, RawDataset):
        return "refused at import", None
    built = features_outcome(raw, directory / "features")
    if not isinstance(built, FeatureSet):
        [anomaly] = built.anomalies
        shown = f"{anomaly.table}.{anomaly.column}: {anomaly.check}: expected {anomaly.expected}"
        return "refused by the features stage", shown
    training_outcome(built, directory / "models")
    return TRAINED, None


def load() -> str:
    return ", ".join(f"{n:.2f}" for n in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--seed", type=int, default=32)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    started, load_before = time.monotonic(), load()
    outcomes, refusals, failure = fuzz(args.cases, args.seed)
    minutes = (time.monotonic() - started) / 60
    command = shlex.join(
        ["nice", "-n", "10", ".venv/bin/python", "benchmarks/own_data_fuzz.py", *sys.argv[1:]]
    )
    lines = [
        "# Generated own data: import, features and training (issue #32)",
        "",
        f"`{command}`: {sum(outcomes.values())} sources drawn (seed {args.seed}), "
        f"{minutes:.1f} min wall on 2 shared cores (`uptime` load averages, 1/5/15 min: "
        f"{load_before} before, {load()} after).",
        "",
        "Each source that builds features trains the pipeline's ranker (mlp) and two-tower "
        "retriever for one epoch (tests/support/own_data.py `TINY_RANKING`, `TINY_RETRIEVAL`: "
        "4-wide embeddings, batches of 8, retrieval's default top-k 10/50/100), fits the "
        "item-item source and chooses recommend's ordering on validation, as train-models does.",
        "",
        "| outcome | sources |",
        "| --- | --- |",
        *(f"| {name} | {outcomes[name]} |" for name in OUTCOMES),
        "",
        "The features stage's refusals by their anomaly, one line each "
        "(`[BLOCKING] <table>.<column>: <check>: expected ..., found ...`):",
        "",
        "| anomaly | sources |",
        "| --- | --- |",
        *(f"| {reason} | {n} |" for reason, n in refusals.most_common()),
        "",
        f"Failure (shrunk): {failure}" if failure else "No traceback, no partial write.",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
