"""The ranker's batch size at scale (#33): validation AUC, epochs, time and examples/s per
batch on one feature build, in one invocation.

    .venv/bin/python benchmarks/batch_bench.py --work /tmp/batch --size ml-1m \\
        --config 512 --config 2048 --config 4096 --config 8192 --config 4096:0.0085 \\
        --out /tmp/batch/report.md

**Data.** The product's synthetic source shaped like the MovieLens release ``--size``
(scale_bench's ``SHAPES``), fetched and built into features by the product's own stages
(``tasks.download.fetch_dataset``, ``tasks.features.build_features`` on the default Dask
cluster) under ``--work``/home, once: a later invocation with the same size reuses the build
(its fingerprint). The split is the default (each user's latest 20 % by time, validation).

**Training.** Each ``--config BATCH[:LEARNING_RATE]`` trains the default ranker
(``tasks.train.train_ranking`` with ``RankingConfig()`` but ``batch_size`` and, if given,
``learning_rate``; ``--set field=value`` changes every config alike) in a fresh subprocess, one
after the other, so each starts with TensorFlow's state clean and has the machine's two cores
to itself. Early stopping, the epoch cap and the kept epoch are the defaults'. Reported from
each model's manifest: validation AUC of the kept epoch, the epoch it came from and the epochs
run, training seconds and examples/s (training only, validation excluded); and the
subprocess's wall time with the load around it. The first config is the reference every AUC
is compared with: the largest batch whose AUC is within ``TOLERANCE`` of it is named.

Not a test: nothing here runs in the suite.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.recommend_bench import code_state, uptime  # noqa: E402
from benchmarks.scale_bench import SHAPES  # noqa: E402

# The bound: the largest batch whose validation AUC stays this close to the default's.
TOLERANCE = 0.005


@dataclass(frozen=True)
class Config:
    batch: int
    learning_rate: float | None

    @classmethod
    def parse(cls, text: str) -> Config:
        batch, _, rate = text.partition(":")
        return cls(int(batch), float(rate) if rate else None)

    @property
    def label(self) -> str:
        rate = "default" if self.learning_rate is None else f"{self.learning_rate:g}"
        return f"batch {self.batch}, learning rate {rate}"


def build(work: Path, size: str) -> Path:
    """The features of ``size``'s synthetic dataset under ``work``/home (reused if built)."""
    from recflow.compute import dataset_cpu_flag, open_cluster
    from recflow.config import load_settings
    from tasks.download import fetch_dataset
    from tasks.features import build_features

    users, items, ratings = SHAPES[size]
    settings = load_settings(
        overrides=[
            f"paths.home={work / 'home'}",
            f"data.synthetic.n_users={users}",
            f"data.synthetic.n_items={items}",
            f"data.synthetic.n_ratings={ratings}",
        ]
    )
    raw = fetch_dataset(settings.data, settings.paths)
    with open_cluster(settings.compute) as (_client, device):
        features = build_features(
            raw, settings.features, settings.paths.features_dir, cpu=dataset_cpu_flag(device)
        )
    return features.path


def train_one(features_dir: Path, config: Config, sets: list[str], out: Path) -> dict:
    """In the subprocess: one ranker, its manifest's numbers as a dict."""
    from recflow.artifacts import FeatureSet
    from recflow.config import load_settings
    from tasks.train import train_ranking

    overrides = [f"ranking.{s}" for s in sets] + [f"ranking.batch_size={config.batch}"]
    if config.learning_rate is not None:
        overrides.append(f"ranking.learning_rate={config.learning_rate}")
    cfg = load_settings(overrides=overrides).ranking
    model = train_ranking(FeatureSet.load(features_dir), cfg, out)
    return {
        "learning_rate": cfg.learning_rate,
        "auc": model.metrics["auc"],
        "best_epoch": model.best_epoch,
        "epochs_run": len(model.history),
        "epochs_cap": cfg.epochs,
        "train_seconds": model.train_seconds,
        "examples_per_s": model.train_examples_per_s,
        "history": [round(epoch["auc"], 4) for epoch in model.history],
    }


def measure(features_dir: Path, config: Config, sets: list[str], work: Path) -> dict:
    out = work / "models" / f"batch-{config.batch}-{config.learning_rate}"
    command = [sys.executable, __file__, "--train", str(features_dir), f"{config.batch}"]
    command += [f"--rate={config.learning_rate}" if config.learning_rate else "--rate="]
    command += [f"--model-dir={out}", *(f"--set={s}" for s in sets)]
    result = timed_subprocess(command, config.label)
    print(f"[{config.label}] AUC {result['auc']:.4f} in {result['wall_s']:.0f} s", flush=True)
    return result


def timed_subprocess(command: list[str], label: str) -> dict:
    """Run one measurement's subprocess from the repository root: the JSON object it prints
    last, with its wall seconds and the ``uptime`` lines before and after it."""
    before, started = uptime(), time.perf_counter()
    print(f"[{label}] {before}", flush=True)
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if finished.returncode:
        raise SystemExit(f"{label} failed:\n{finished.stderr[-3000:]}")
    result = json.loads(finished.stdout.strip().splitlines()[-1])
    return result | {"wall_s": time.perf_counter() - started, "before": before, "after": uptime()}


def report(
    size: str, configs: list[Config], results: list[dict], features_dir: Path, command: str
) -> str:
    reference = results[0]["auc"]
    within = [
        c.batch for c, r in zip(configs, results, strict=True) if r["auc"] >= reference - TOLERANCE
    ]
    lines = [
        *report_head(
            f"The ranker's batch size on {size}-shaped features", command, size, features_dir
        ),
        "| config | validation AUC | vs the first | kept epoch / run (cap) | train s | examples/s "
        "| wall s | load before -> after (1-min) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for config, r in zip(configs, results, strict=True):
        label = f"batch {config.batch}, lr {r['learning_rate']:g}"
        lines.append(training_row(label, r["auc"], reference, r))
    lines += [
        "",
        f"Largest batch tried within {TOLERANCE} AUC of the first config: **{max(within)}**.",
        "",
        "Validation AUC per epoch:",
        "",
    ]
    lines += [f"- {c.label}: {r['history']}" for c, r in zip(configs, results, strict=True)]
    return "\n".join(lines) + "\n"


def report_head(title: str, command: str, size: str, features: Path) -> list[str]:
    """The first lines of a training benchmark's report: its title, the command, the code
    measured and the feature build (``build``'s, of ``size``)."""
    return [
        f"# {title} (#33)",
        "",
        f"`python {command}`",
        "",
        *code_state(),
        "",
        f"Features: `{features}` ({SHAPES[size][0]:,} users, {SHAPES[size][1]:,} items, "
        f"{SHAPES[size][2]:,} ratings; each user's latest 20 % by time is validation).",
        "",
    ]


def training_row(label: str, metric: float, reference: float, r: dict) -> str:
    """A table row of one training: its validation metric and difference to the reference,
    kept epoch / epochs run (cap), training seconds, examples/s, wall seconds and load."""
    load = f"{one_minute_load(r['before'])} -> {one_minute_load(r['after'])}"
    return (
        f"| {label} | {metric:.4f} | {metric - reference:+.4f} | {r['best_epoch']} / "
        f"{r['epochs_run']} ({r['epochs_cap']}) | {r['train_seconds']:.0f} | "
        f"{r['examples_per_s']:,.0f} | {r['wall_s']:.0f} | {load} |"
    )


def one_minute_load(line: str) -> str:
    """The 1-minute load average of an ``uptime`` line."""
    return line.rsplit("load average:", 1)[-1].split(",")[0].strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path)
    parser.add_argument("--size", choices=sorted(SHAPES), default="ml-1m")
    parser.add_argument("--config", action="append", type=Config.parse, default=[])
    parser.add_argument("--set", action="append", default=[], help="ranking field=value")
    parser.add_argument("--out", type=Path)
    # The subprocess's mode (one training).
    parser.add_argument("--train", nargs=2, metavar=("FEATURES", "BATCH"))
    parser.add_argument("--rate", default="")
    parser.add_argument("--model-dir", type=Path)
    args = parser.parse_args()
    if args.train:
        features_dir, batch = args.train
        config = Config(int(batch), float(args.rate) if args.rate else None)
        print(json.dumps(train_one(Path(features_dir), config, args.set, args.model_dir)))
        return
    if not args.work or not args.config:
        parser.error("--work and at least one --config are needed")
    features_dir = build(args.work, args.size)
    results = [measure(features_dir, c, args.set, args.work) for c in args.config]
    text = report(args.size, args.config, results, features_dir, shlex.join(sys.argv))
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
