"""Training throughput on CPU, old code against new, in one run: ml-100k u1 and a big synthetic run.

    .venv/bin/python benchmarks/train_throughput_bench.py --home /tmp/tp-bench \\
        --reference 10c6266 --config batch_size=512 --config batch_size=2048,learning_rate=0.006 \\
        --repeats 2 --synthetic-rows 10M --out benchmarks/results/throughput.md

Part 1 (old vs new). The features of ml-100k's official u1 split are built once
(benchmarks/train_bench.py's mirror and split). The reference commit's code (``--reference``,
checked out into a temporary ``git worktree``; it trains with Merlin's dataloader, one step per
graph call) and this tree's code each train the ranker on those features in a subprocess of
the same interpreter, alternating, ``--repeats`` times each, so the machine's load falls on
both alike. The reference trains with its own defaults; this tree with each ``--config``
(comma-separated ``field=value`` of ``ranking``). Every run reports what its manifest records:
validation AUC of the kept epoch and training examples/s (training time only, validation
excluded, graph tracing included), the steady-state rate (rows / median time of the epochs
after the first, timed by a callback the driver adds to every fit, ahead of validation), the
first epoch's seconds (where tracing the graph goes) and the load average around the run.

Part 2 (``--synthetic-rows``): synthetic data of that many interactions (features_bench's
generator and features stage), then one ranker training with this tree's defaults and
``--synthetic-set`` overrides, timed end to end.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Runs in a subprocess with the tree under test first on sys.path: the reference's ranker is
# ``models.dlrm.train_dlrm`` (before #20), this tree's ``models.ranking.train_ranker``.
DRIVER = """
import json, statistics, sys, time
from pathlib import Path
tree, features_json, out_dir, overrides = sys.argv[1:5]
sys.path.insert(0, tree)
import tensorflow as tf

# Per-epoch training time, the same way for both trees: a callback put first in every fit's
# list, so its epoch ends before early stopping's validation runs.
epoch_seconds = []
class EpochTimer(tf.keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()
    def on_epoch_end(self, epoch, logs=None):
        epoch_seconds.append(time.perf_counter() - self.started)
fit = tf.keras.Model.fit
def timed_fit(self, *args, callbacks=(), **kwargs):
    return fit(self, *args, callbacks=[EpochTimer(), *callbacks], **kwargs)
tf.keras.Model.fit = timed_fit
from recflow.artifacts import FeatureSet
from recflow.config import RankingConfig
try:
    from models.ranking import train_ranker as train
except ImportError:
    from models.dlrm import train_dlrm as train
import models
assert models.__file__.startswith(tree), f"{models.__file__} is not from {tree}"
features = FeatureSet.model_validate_json(Path(features_json).read_text())
cfg = RankingConfig(**json.loads(overrides))
model = train(features.train_dir, features.valid_dir, cfg, Path(out_dir), features.fingerprint)
print("RESULT " + json.dumps({
    "auc": model.metrics["auc"], "best_epoch": model.best_epoch,
    "epochs": len(model.history), "examples_per_s": model.train_examples_per_s,
    "train_seconds": model.train_seconds,
    "first_epoch_s": epoch_seconds[0],
    "steady_examples_per_s": features.n_train / statistics.median(epoch_seconds[1:]),
}))
"""


def parse_config(text: str) -> dict:
    """``batch_size=2048,learning_rate=0.006`` -> typed values (JSON where it parses)."""
    config = {}
    for item in filter(None, text.split(",")):
        name, value = item.split("=", 1)
        try:
            config[name] = json.loads(value)
        except json.JSONDecodeError:
            config[name] = value
    return config


def train_in(tree: Path, features_json: Path, out_dir: Path, config: dict) -> dict:
    before = os.getloadavg()[0]
    started = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            DRIVER,
            str(tree),
            str(features_json),
            str(out_dir),
            json.dumps(config),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    if done.returncode != 0:
        raise RuntimeError(f"training in {tree} failed:\n{done.stderr[-4000:]}")
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    result["wall_s"] = time.perf_counter() - started
    result["load"] = (before + os.getloadavg()[0]) / 2
    return result


def ml100k_features(home: Path, movielens: Path) -> Path:
    """Build (or reuse) the u1 features under ``home``; returns their manifest as a JSON file."""
    import train_bench

    archive = movielens / train_bench.ARCHIVE
    settings, raw = train_bench.fetch_movielens(archive, home, train_bench.OFFICIAL_SPLIT_SETTINGS)
    raw = train_bench.with_official_split(raw, archive, "u1", settings.paths.raw_dir / "u1")
    features = train_bench.build_features_task.fn(
        raw, settings.features, settings.validation, settings.compute, settings.paths.features_dir
    )
    path = home / "features-u1.json"
    path.write_text(features.model_dump_json())
    return path


def compare(args, features_json: Path, reference_tree: Path) -> list[dict]:
    runs = []
    variants = [("reference " + args.reference, reference_tree, {})]
    variants += [(f"new {text}", REPO, parse_config(text)) for text in args.config]
    for repeat in range(args.repeats):
        for label, tree, config in variants:
            out = args.home / "models" / f"{label.replace(' ', '_')}-{repeat}-{time.time():.0f}"
            result = train_in(tree, features_json, out, config)
            print(f"{label} #{repeat + 1}: {result}", flush=True)
            runs.append({"variant": label, **result})
    return runs


def synthetic_run(args) -> dict:
    from benchmarks.features_bench import dataset, parse_size, run_features
    from models.ranking import train_ranker
    from recflow.config import ComputeConfig, FeaturesConfig, RankingConfig

    rows = parse_size(args.synthetic_rows)
    raw = dataset(rows, args.home / "synthetic")
    # features_bench samples the cluster's spill directory for its peaks: give it one.
    compute = ComputeConfig(device="cpu", spill_dir=args.home / "synthetic" / "spill")
    features = run_features(
        raw, FeaturesConfig(), compute, args.home / "synthetic" / f"features-{rows}"
    ).features
    cfg = RankingConfig(**parse_config(args.synthetic_set))
    load_before, started = os.getloadavg()[0], time.perf_counter()
    model = train_ranker(
        features.train_dir,
        features.valid_dir,
        cfg,
        args.home / "synthetic" / f"ranker-{time.time():.0f}",
        features.fingerprint,
    )
    return {
        "rows": rows,
        "n_train": features.n_train,
        "n_valid": features.n_valid,
        "auc": model.metrics["auc"],
        "epochs": len(model.history),
        "best_epoch": model.best_epoch,
        "examples_per_s": model.train_examples_per_s,
        "train_seconds": model.train_seconds,
        "wall_s": time.perf_counter() - started,
        "load": (load_before + os.getloadavg()[0]) / 2,
        "params": cfg.model_dump(mode="json"),
    }


def report(command: str, args, runs: list[dict], synthetic: dict | None) -> str:
    lines = [
        "# Training throughput on CPU (issue #20)",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Machine: {os.cpu_count()} cores, no GPU, shared (load average per run in the table).",
        "",
        "## Old vs new on ml-100k u1 (80,000 training rows)",
        "",
        "| variant | runs | validation AUC | train examples/s (mean, min-max) | steady-state "
        "examples/s | first epoch s | best epoch | epochs | load |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    reference = steady_reference = None
    for variant in dict.fromkeys(run["variant"] for run in runs):
        mine = [run for run in runs if run["variant"] == variant]
        rate = [run["examples_per_s"] for run in mine]
        mean = statistics.mean(rate)
        steady = statistics.mean(run["steady_examples_per_s"] for run in mine)
        reference, steady_reference = reference or mean, steady_reference or steady
        lines.append(
            f"| {variant} | {len(mine)} | "
            f"{statistics.mean(run['auc'] for run in mine):.4f} | "
            f"{mean:,.0f} ({min(rate):,.0f}-{max(rate):,.0f}), {mean / reference:.1f}x | "
            f"{steady:,.0f}, {steady / steady_reference:.1f}x | "
            f"{statistics.mean(run['first_epoch_s'] for run in mine):.0f} | "
            f"{', '.join(str(run['best_epoch']) for run in mine)} | "
            f"{', '.join(str(run['epochs']) for run in mine)} | "
            f"{statistics.mean(run['load'] for run in mine):.1f} |"
        )
    if synthetic:
        lines += [
            "",
            f"## {synthetic['rows']:,} synthetic interactions, this tree",
            "",
            f"{synthetic['n_train']:,} training / {synthetic['n_valid']:,} validation rows; "
            f"params `{synthetic['params']}`.",
            "",
            "| validation AUC | epochs (best) | train examples/s | training s | wall s (incl. "
            "validation, save) | load |",
            "| --- | --- | --- | --- | --- | --- |",
            f"| {synthetic['auc']:.4f} | {synthetic['epochs']} ({synthetic['best_epoch']}) | "
            f"{synthetic['examples_per_s']:,.0f} | {synthetic['train_seconds']:,.0f} | "
            f"{synthetic['wall_s']:,.0f} | {synthetic['load']:.1f} |",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--movielens", type=Path, default=REPO.parent / "shared/data/movielens")
    parser.add_argument("--reference", default="10c6266", help="commit of the old code")
    parser.add_argument("--config", action="append", default=[], help="ranking overrides")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--synthetic-rows", help="e.g. 10M; omit to skip part 2")
    parser.add_argument("--synthetic-set", default="", help="ranking overrides for part 2")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/throughput.md")
    args = parser.parse_args()
    command = shlex.join(["python", "benchmarks/train_throughput_bench.py", *sys.argv[1:]])
    args.home.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO / "benchmarks"))

    features_json = ml100k_features(args.home, args.movielens)
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "reference"
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), args.reference],
            check=True,
            capture_output=True,
        )
        try:
            runs = compare(args, features_json, tree)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)])
    synthetic = synthetic_run(args) if args.synthetic_rows else None
    text = report(command, args, runs, synthetic)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
