"""What tf.data's autotuner costs between training epochs (#33): the product's training
batches (``models.training.SplitTensors.batches``, autotuning off) against the same batches with
it on, each training the same model for the same epochs, in one invocation.

    .venv/bin/python benchmarks/epoch_gap_bench.py --work /tmp/gap --size ml-1m \\
        --model retrieval --epochs 4 --out /tmp/gap/retrieval.md

**Why.** The autotuner's thread wakes on a period that doubles from 10 ms to 60 s, and freeing
an epoch's iterator waited for its next wake-up: an epoch that ended 12 s after its iterator
started resumed at 20.47 s (10 ms x (2^11 - 1)). Two-tower epochs at ml-1m alternated between
12-13 and 20-22 s.

**Data.** As ``batch_bench``: the product's synthetic source shaped like ``--size``, built
into features by the product's own stages under ``--work``/home once (reused by fingerprint).

**Training.** Each pipeline trains the model of ``--model`` with the section's defaults but
``epochs`` (and patience as high, so every epoch runs), through the product's train function
(``tasks.train.train_retrieval`` or ``train_ranking``: validation after every epoch included),
in a fresh subprocess, one after the other: first with tf.data's autotuning switched back on
(``with_options`` over the product's batches, the reference), then as the product runs. The
seed is the same, so both see the same batches and must end at the same validation metric.
Reported: each epoch's seconds from the end of the previous one (the train function's
``on_epoch`` hook, validation included; the first from the call, reading the splits included),
the training seconds and examples/s of the manifest, the validation metric, and the subprocess's
wall time with the load around it.

Not a test: nothing here runs in the suite.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.batch_bench import build, one_minute_load, timed_subprocess  # noqa: E402
from benchmarks.recommend_bench import code_state  # noqa: E402
from benchmarks.scale_bench import SHAPES  # noqa: E402

PIPELINES = ("autotuned", "product")


def train_one(features_dir: Path, model: str, epochs: int, pipeline: str, out: Path) -> dict:
    """In the subprocess: one model trained for ``epochs``, the seconds between its epochs."""
    import tensorflow as tf

    from models.training import SplitTensors
    from recflow.artifacts import FeatureSet
    from recflow.config import load_settings
    from tasks.train import TRAINERS

    if pipeline == "autotuned":
        product_batches = SplitTensors.batches
        autotuning = tf.data.Options()
        autotuning.autotune.enabled = True

        def autotuned(self, *args, **kwargs):
            return product_batches(self, *args, **kwargs).with_options(autotuning)

        SplitTensors.batches = autotuned
    cfg = getattr(load_settings(), model).model_copy(update={"epochs": epochs, "patience": epochs})
    marks = [time.perf_counter()]

    def mark(*_) -> None:
        marks.append(time.perf_counter())

    trained = TRAINERS[model](FeatureSet.load(features_dir), cfg, out, on_epoch=mark)
    return {
        "epoch_seconds": [round(b - a, 1) for a, b in zip(marks, marks[1:], strict=False)],
        "train_seconds": trained.train_seconds,
        "examples_per_s": trained.train_examples_per_s,
        "monitor": cfg.monitor,
        "value": trained.metrics[cfg.monitor],
    }


def measure(features_dir: Path, model: str, epochs: int, pipeline: str, work: Path) -> dict:
    out = work / "models" / f"{model}-{pipeline}-{time.strftime('%Y%m%dT%H%M%S')}"
    command = [sys.executable, __file__, "--train", str(features_dir), model, str(epochs)]
    command += [pipeline, str(out)]
    result = timed_subprocess(command, pipeline)
    print(f"[{pipeline}] {result['epoch_seconds']} in {result['wall_s']:.0f} s", flush=True)
    return result


def report(size: str, model: str, epochs: int, results: dict[str, dict], command: str) -> str:
    lines = [
        f"# {model}: {epochs} epochs on {size}-shaped features, tf.data autotuning on and off",
        "",
        f"`python {command}`",
        "",
        *code_state(),
        "",
        f"| training batches | seconds per epoch (validation included) | train s | examples/s "
        f"| validation {results['product']['monitor']} | wall s | load before -> after (1-min) |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for pipeline, r in results.items():
        load = f"{one_minute_load(r['before'])} -> {one_minute_load(r['after'])}"
        label = "autotuned (before)" if pipeline == "autotuned" else "product (autotuning off)"
        lines.append(
            f"| {label} | {', '.join(f'{s:g}' for s in r['epoch_seconds'])} | "
            f"{r['train_seconds']:.0f} | {r['examples_per_s']:,.0f} | {r['value']:.4f} | "
            f"{r['wall_s']:.0f} | {load} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path)
    parser.add_argument("--size", choices=sorted(SHAPES), default="ml-1m")
    parser.add_argument("--model", choices=("retrieval", "ranking"), default="retrieval")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--out", type=Path)
    # The subprocess's mode (one training).
    parser.add_argument("--train", nargs=5, metavar=("FEATURES", "MODEL", "EPOCHS", "PIPE", "OUT"))
    args = parser.parse_args()
    if args.train:
        features_dir, model, epochs, pipeline, out = args.train
        print(json.dumps(train_one(Path(features_dir), model, int(epochs), pipeline, Path(out))))
        return
    if not args.work:
        parser.error("--work is needed")
    features_dir = build(args.work, args.size)
    results = {p: measure(features_dir, args.model, args.epochs, p, args.work) for p in PIPELINES}
    text = report(args.size, args.model, args.epochs, results, shlex.join(sys.argv))
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
