"""Training one model in several processes (Horovod, ``data_parallel.processes``; #33) against one
process, on one feature build, in one invocation.

    .venv/bin/python benchmarks/data_parallel_bench.py --work /tmp/dp --size ml-1m \\
        --processes 1 --processes 2 --out /tmp/dp/report.md

Needs Horovod in the venv, built against its TensorFlow (it is not a dependency: the Merlin GPU
image ships it). On this CPU machine, with Gloo for the processes' collectives::

    python3 -m uv pip install --python .venv/bin/python setuptools wheel
    HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \\
    HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_CPU_OPERATIONS=GLOO \\
        python3 -m uv pip install --python .venv/bin/python --no-build-isolation horovod==0.28.1

**Data.** The product's synthetic source shaped like the MovieLens release ``--size``, built
into features by the product's stages once (``batch_bench.build``; a later invocation reuses
the build). The split is the default (each user's latest 20 % by time, validation).

**Training.** For each model (``--model``: the default ranker and the default two-tower) and
each ``--processes`` count, ``tasks.data_parallel.train_in_processes`` trains it at the defaults
(``--set section.field=value`` changes every run alike) in a fresh subprocess, one after the
other: one process trains in that subprocess with all cores, several are started by Horovod
with the cores shared out. Reported from each model's manifest: the validation metric early
stopping reads (ranker AUC, two-tower recall@10) of the kept epoch, the epoch and the epochs
run, training seconds and examples/s (all processes together, validation excluded); and the
subprocess's wall time (process start-up included) with the load around it. The first count
is the reference each metric is compared with.

Not a test: nothing here runs in the suite.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.batch_bench import build, report_head, timed_subprocess, training_row  # noqa: E402
from benchmarks.scale_bench import SHAPES  # noqa: E402

MODELS = ("ranking", "retrieval")


def train_one(features_dir: Path, model: str, processes: int, sets: list[str], out: Path) -> dict:
    """In the subprocess: one model in ``processes`` processes, its manifest's numbers."""
    from recflow.artifacts import FeatureSet
    from recflow.config import DataParallelConfig, load_settings
    from tasks.data_parallel import train_in_processes
    from tasks.train import TRAINERS

    settings = load_settings(overrides=sets)
    cfg = getattr(settings, model)
    monitor = "auc" if model == "ranking" else cfg.monitor
    trained = train_in_processes(
        DataParallelConfig(processes=processes),
        TRAINERS[model],
        FeatureSet.load(features_dir),
        cfg,
        out,
    )
    return {
        "monitor": monitor,
        "metric": trained.metrics[monitor],
        "best_epoch": trained.best_epoch,
        "epochs_run": len(trained.history),
        "epochs_cap": cfg.epochs,
        "processes": trained.processes,
        "train_seconds": trained.train_seconds,
        "examples_per_s": trained.train_examples_per_s,
        "history": [round(epoch[monitor], 4) for epoch in trained.history],
    }


def measure(features_dir: Path, model: str, processes: int, sets: list[str], work: Path) -> dict:
    out = work / "models" / f"{model}-{processes}"
    command = [sys.executable, __file__, "--train", str(features_dir), model, str(processes)]
    command += [f"--model-dir={out}", *(f"--set={s}" for s in sets)]
    label = f"{model}, {processes} process{'es' if processes > 1 else ''}"
    result = timed_subprocess(command, label)
    print(f"[{label}] {result['monitor']} {result['metric']:.4f} in {result['wall_s']:.0f} s")
    return result


def report(size: str, runs: dict[str, list[tuple[int, dict]]], features: Path, command: str):
    title = f"One model trained in several processes (Horovod) on {size}-shaped features"
    lines = [
        *report_head(title, command, size, features),
        "| model, processes | validation metric | vs the first | kept epoch / run (cap) | train s "
        "| examples/s | wall s | load before -> after (1-min) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for model, results in runs.items():
        reference = results[0][1]["metric"]
        for processes, r in results:
            label = f"{model} ({r['monitor']}), {processes}"
            lines.append(training_row(label, r["metric"], reference, r))
    lines += ["", "Validation metric per epoch:", ""]
    lines += [
        f"- {model}, {processes}: {r['history']}"
        for model, results in runs.items()
        for processes, r in results
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path)
    parser.add_argument("--size", choices=sorted(SHAPES), default="ml-1m")
    parser.add_argument("--model", action="append", choices=MODELS, default=[])
    parser.add_argument("--processes", action="append", type=int, default=[])
    parser.add_argument("--set", action="append", default=[], help="section.field=value")
    parser.add_argument("--out", type=Path)
    # The subprocess's mode (one training).
    parser.add_argument("--train", nargs=3, metavar=("FEATURES", "MODEL", "PROCESSES"))
    parser.add_argument("--model-dir", type=Path)
    args = parser.parse_args()
    if args.train:
        features_dir, model, processes = args.train
        result = train_one(Path(features_dir), model, int(processes), args.set, args.model_dir)
        print(json.dumps(result))
        return
    if not args.work or not args.processes:
        parser.error("--work and at least one --processes are needed")
    features_dir = build(args.work, args.size)
    runs = {
        model: [(n, measure(features_dir, model, n, args.set, args.work)) for n in args.processes]
        for model in args.model or MODELS
    }
    text = report(args.size, runs, features_dir, shlex.join(sys.argv))
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
