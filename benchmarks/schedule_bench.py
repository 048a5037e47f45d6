"""Epoch budgets and learning-rate schedules at scale (#33): the validation metric, kept epoch
and training time of one model per config, on one feature build, in one invocation.

    .venv/bin/python benchmarks/schedule_bench.py --work /tmp/schedule --size ml-1m \\
        --model retrieval --config epochs=20 \\
        --config epochs=10,learning_rate_schedule=cosine --out /tmp/schedule/retrieval.md

**Data.** As ``batch_bench``: the product's synthetic source shaped like ``--size``, built into
features by the product's own stages under ``--work``/home once (reused by fingerprint). The
split is the default (each user's latest 20 % by time is validation).

**Training.** Each ``--config field=value[,field=value...]`` sets fields of the ``--model``
section (``ranking`` or ``retrieval``) over the defaults, and trains it through the product's
train function (``tasks.train.TRAINERS``: validation after every epoch, early stopping and the
kept epoch as the product has them) in a fresh subprocess, one after the other, so each starts
with TensorFlow's state clean and has the machine's two cores to itself. The first config is
the reference the others' metric is compared with. Reported from each model's manifest: the
monitored validation metric of the kept epoch (the ranker's AUC, the two-tower's recall@10),
the kept epoch, the epochs run and the budget, training seconds and examples/s (validation
excluded); and the subprocess's wall time with the load around it. These are validation
numbers, the split early stopping reads: what a config serves is measured on held-out rows by
the gate (scale_bench).

Not a test: nothing here runs in the suite.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.batch_bench import build, report_head, timed_subprocess, training_row  # noqa: E402
from benchmarks.scale_bench import SHAPES  # noqa: E402

MONITORS = {"ranking": "auc", "retrieval": "recall@10"}


def train_one(features_dir: Path, model: str, config: str, out: Path) -> dict:
    """In the subprocess: one model of ``model``'s section with ``config``, its numbers."""
    from recflow.artifacts import FeatureSet
    from recflow.config import load_settings
    from tasks.train import TRAINERS

    overrides = [f"{model}.{pair}" for pair in config.split(",") if pair]
    cfg = getattr(load_settings(overrides=overrides), model)
    trained = TRAINERS[model](FeatureSet.load(features_dir), cfg, out)
    monitor = MONITORS[model]
    return {
        "metric": trained.metrics[monitor],
        "best_epoch": trained.best_epoch,
        "epochs_run": len(trained.history),
        "epochs_cap": cfg.epochs,
        "train_seconds": trained.train_seconds,
        "examples_per_s": trained.train_examples_per_s,
        "history": [round(epoch[monitor], 4) for epoch in trained.history],
    }


def measure(features_dir: Path, model: str, config: str, models_dir: Path) -> dict:
    out = models_dir / config.replace(",", "_")
    command = [sys.executable, __file__, "--train", str(features_dir), model, config]
    result = timed_subprocess([*command, f"--model-dir={out}"], config)
    print(f"[{config}] {result['metric']:.4f} in {result['wall_s']:.0f} s", flush=True)
    return result


def report(
    size: str, model: str, configs: list[str], results: list[dict], features: Path, command: str
) -> str:
    monitor, reference = MONITORS[model], results[0]["metric"]
    title = f"{model}: epoch budgets and learning-rate schedules on {size}-shaped features"
    lines = [
        *report_head(title, command, size, features),
        f"| config over the defaults | validation {monitor} | vs the first | kept epoch / run "
        "(budget) | train s | examples/s | wall s | load before -> after (1-min) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for config, r in zip(configs, results, strict=True):
        lines.append(training_row(f"`{config}`", r["metric"], reference, r))
    lines += ["", f"Validation {monitor} per epoch:", ""]
    lines += [f"- `{c}`: {r['history']}" for c, r in zip(configs, results, strict=True)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path)
    parser.add_argument("--size", choices=sorted(SHAPES), default="ml-1m")
    parser.add_argument("--model", choices=sorted(MONITORS), default="retrieval")
    parser.add_argument("--config", action="append", default=[], help="field=value[,...]")
    parser.add_argument("--out", type=Path)
    # The subprocess's mode (one training).
    parser.add_argument("--train", nargs=3, metavar=("FEATURES", "MODEL", "CONFIG"))
    parser.add_argument("--model-dir", type=Path)
    args = parser.parse_args()
    if args.train:
        features_dir, model, config = args.train
        print(json.dumps(train_one(Path(features_dir), model, config, args.model_dir)))
        return
    if not args.work or not args.config:
        parser.error("--work and at least one --config are needed")
    features = build(args.work, args.size)
    # One directory per invocation: models are saved atomically and never overwritten.
    models_dir = Path(tempfile.mkdtemp(prefix=f"{args.model}-", dir=args.work))
    results = [measure(features, args.model, config, models_dir) for config in args.config]
    text = report(args.size, args.model, args.config, results, features, shlex.join(sys.argv))
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
