"""The release path's time, a reference commit against this tree, in one invocation.

    .venv/bin/python benchmarks/release_bench.py --reference 2d07986 --rounds 2 \\
        --out benchmarks/results/release.md

Each round runs ``recflow run`` on the demo's data (the built-in synthetic set, default
settings, a fresh home each time) once with the reference commit's code (checked out into a
temporary ``git worktree``) and once with this tree's, alternating, so the machine's load falls
on both alike. Both use this checkout's ``.venv``. From each run's log it reads the seconds every
stage reports in its summary line (``<stage> done in N s``) and, for this tree, how many exports
the gate logged (``exported candidate <id> once``). The table gives each stage's median over the
rounds, the load average around the runs and the command.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ("fetch-data", "build-features", "train-models", "evaluate-and-publish")
SUMMARY = re.compile(r"\b(" + "|".join(STAGES) + r") done in (\d+) s")
# Runs the CLI of the tree given first, with this venv's packages.
CLI = "import sys; sys.path.insert(0, sys.argv.pop(1)); from cli.app import app; app()"


def run_pipeline(tree: Path, home: Path) -> tuple[dict[str, int], int, float]:
    """Stage seconds, exports logged and wall seconds of one ``recflow run`` of ``tree``."""
    command = [sys.executable, "-c", CLI, str(tree), "--home", str(home), "run"]
    env = {**os.environ, "COLUMNS": "200"}
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tree)
    wall = time.perf_counter() - started
    log = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"{tree}: recflow run failed ({done.returncode}):\n{log[-4000:]}")
    stages = {stage: int(seconds) for stage, seconds in SUMMARY.findall(log)}
    exports = len(re.findall(r"exported candidate \S+ once", log))
    return stages, exports, wall


def load() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", default="2d07986")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    results: dict[str, list[tuple[dict[str, int], int, float]]] = {"reference": [], "this": []}
    loads = [load()]
    with tempfile.TemporaryDirectory(prefix="release-bench-") as scratch:
        reference = Path(scratch) / "reference"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(reference), args.reference],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        try:
            for round_ in range(args.rounds):
                for name, tree in (("reference", reference), ("this", REPO)):
                    home = Path(scratch) / f"{name}-{round_}"
                    results[name].append(run_pipeline(tree, home))
                    loads.append(load())
                    print(name, round_, results[name][-1], "load", loads[-1], flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(reference)], cwd=REPO)

    def median(name: str, stage: str) -> float:
        return statistics.median(run[0].get(stage, float("nan")) for run in results[name])

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    lines = [
        "# Release path: evaluate-and-publish, reference against this tree",
        "",
        f"`{shlex.join(['.venv/bin/python', 'benchmarks/release_bench.py', *sys.argv[1:]])}` "
        f"at {commit} (plus uncommitted changes, if any), reference {args.reference}; "
        f"{args.rounds} rounds, alternating; `recflow run` on the demo's synthetic data with "
        f"default settings, a fresh home each run. Load average (1 min) before and after each "
        f"run: {', '.join(loads)} (2 cores).",
        "",
        "| stage (median s) | reference | this tree | ratio |",
        "| --- | ---: | ---: | ---: |",
    ]
    for stage in STAGES:
        old, new = median("reference", stage), median("this", stage)
        lines.append(f"| {stage} | {old:.0f} | {new:.0f} | {new / old:.2f} |")
    old, new = (statistics.median(run[2] for run in results[name]) for name in results)
    lines.append(f"| whole run (wall) | {old:.0f} | {new:.0f} | {new / old:.2f} |")
    exports = sorted({run[1] for run in results["this"]})
    lines += [
        "",
        f"Exports the gate logged per run in this tree: {exports} (one per contender: the demo "
        "trains one ranker). Stage times are whole seconds as the stages log them.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
