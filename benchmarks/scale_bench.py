"""How far one machine goes (issue #33): `recflow run` per stage on MovieLens-shaped synthetic data.

    .venv/bin/python benchmarks/scale_bench.py --work-dir /tmp/scale \\
        --size ml-1m:full --size ml-10m:epoch --size ml-25m:features \\
        --out benchmarks/results/scale.md

Each ``--size NAME:MODE`` runs the real pipeline, ``recflow --set ... run`` as a subprocess
with a home and a temporary Prefect server of its own (recommend_bench's ``in_fold_home`` rules),
on the product's synthetic source shaped like the MovieLens release NAME (``SHAPES``: users,
items, ratings). MODE bounds what runs:

- ``full``: every stage at the training defaults;
- ``epoch``: every stage with ``ranking.epochs=1`` and ``retrieval.epochs=1`` (one epoch of each
  model; the report extrapolates per epoch, labelled as such);
- ``features``: fetch (the synthetic generation) and build-features, then the run is stopped
  (SIGINT) as soon as Prefect records the train-models flow run;
- ``sample=N``: ``features`` on a sample of the shape: N ratings, users and items scaled by the
  same factor.

While it runs, the whole process tree under the subprocess (recflow's main process, the
temporary Prefect server, the Dask workers, tritonserver and its Python stubs) is polled with
psutil at features_bench's interval (CPU seconds and RSS per process), and the size of each
top-level directory of the home every few polls. Stage boundaries are not guessed from the
terminal: they are the start and end times of the run's Prefect flow runs (fetch-data,
build-features) and task runs (each model's training task, the item-item fit, recommend's
ordering, gate, trial, publish), read from the run's own Prefect database afterwards.
Per-epoch times are the timestamps of training's ``epoch N: {...}`` log records in the same
database (models/training.py logs one at each epoch's end, after its validation); examples/s
of training alone are the models' manifests (``train_examples_per_s``). ``--timeout`` kills a
size's run (its table says which stages did not finish). ``uptime`` is recorded before and
after each size.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.features_bench import (  # noqa: E402
    SAMPLE_POLL_S,
    PeakSampler,
    _cpu_seconds,
    _tree_bytes,
    gib,
)
from benchmarks.recommend_bench import code_state, uptime  # noqa: E402

# (users, items, ratings) of the MovieLens releases the issue names.
SHAPES = {
    "ml-1m": (6_040, 3_706, 1_000_000),
    "ml-10m": (70_000, 10_000, 10_000_000),
    "ml-25m": (160_000, 60_000, 25_000_000),
}
MODES = ("full", "epoch", "features")
# Directory sizes are walked every this many polls (a walk of a trained home takes a while).
DISK_EVERY = 10
EPOCH_LINE = re.compile(r"^epoch (\d+): ")
# Task runs by their task_key (Prefect: "<function name>-<hash of its code>"), and the stage
# each one is reported as. Flow runs give fetch and features (their tasks are inside).
TASK_STAGES = (
    ("train_ranking_task-", "train: ranker"),
    ("train_retrieval_task-", "train: two-tower"),
    ("fit_item_item_task-", "train: item-item (EASE)"),
    ("choose_ordering_task-", "train: recommend ordering"),
    ("gate_task-", "gate (export, EASE + item-kNN baselines)"),
    ("trial_task-", "trial serving"),
    ("publish_task-", "publish"),
)
FLOW_STAGES = (
    ("fetch-data", "fetch (synthetic generation)"),
    ("build-features", "features"),
    ("train-models", "train-models (whole)"),
    ("evaluate-and-publish", "evaluate-and-publish (whole)"),
)


@dataclass
class Sample:
    t: float
    # pid -> (kind, cumulative CPU seconds, RSS bytes)
    processes: dict[int, tuple[str, float, int]]
    # top-level directory of the home -> bytes (only every DISK_EVERY polls)
    disk: dict[str, int] | None = None
    # the machine's 1-minute load average
    load: float = 0.0


@dataclass
class Stage:
    name: str
    start: float
    end: float | None
    rows: int | None = None
    unit: str = "rows"
    note: str = ""


@dataclass
class SizeRun:
    name: str
    mode: str
    shape: tuple[int, int, int]
    command: str
    uptime_before: str
    uptime_after: str = ""
    exit_code: int | None = None
    wall_s: float = 0.0
    stages: list[Stage] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    training: list[dict] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def kind_of(process: psutil.Process, main_pid: int) -> str:
    if process.pid == main_pid:
        return "main"
    try:
        name, cmdline = process.name(), " ".join(process.cmdline())
    except psutil.Error:
        return "other"
    if "triton_python_backend_stub" in cmdline or "triton_python_backend_stub" in name:
        return "triton stub"
    if "tritonserver" in name or "tritonserver" in cmdline.split(" ")[0]:
        return "tritonserver"
    if "resource_tracker" in cmdline:
        return "other"
    if "multiprocessing.spawn" in cmdline or "multiprocessing.forkserver" in cmdline:
        return "dask worker"
    if "prefect" in cmdline or "uvicorn" in cmdline:
        return "prefect server"
    return "other"


class TreeSampler(PeakSampler):
    """Polls the process tree under ``pid`` and the home's top-level directory sizes: features
    bench's sampler (its thread, its poll interval), other readings."""

    def __init__(self, pid: int, home: Path):
        self.pid, self.home, self.polls = pid, home, 0
        self.samples: list[Sample] = []
        self._kinds: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _sample(self) -> None:
        disk, self.polls = self.polls % DISK_EVERY == 0, self.polls + 1
        processes = {}
        try:
            root = psutil.Process(self.pid)
            family = [root, *root.children(recursive=True)]
        except psutil.Error:
            family = []
        for process in family:
            try:
                if process.pid not in self._kinds:
                    self._kinds[process.pid] = kind_of(process, self.pid)
                processes[process.pid] = (
                    self._kinds[process.pid],
                    _cpu_seconds(process),
                    process.memory_info().rss,
                )
            except psutil.Error:
                continue
        sizes = None
        if disk and self.home.is_dir():
            sizes = {entry.name: _tree_bytes(entry) for entry in self.home.iterdir()}
        self.samples.append(Sample(time.time(), processes, sizes, os.getloadavg()[0]))


def recflow_command(home: Path, sets: list[str]) -> list[str]:
    recflow = Path(sys.executable).parent / "recflow"
    return [str(recflow), "--home", str(home), *(a for s in sets for a in ("--set", s)), "run"]


def size_sets(name: str, mode: str) -> tuple[list[str], str, tuple[int, int, int]]:
    """The ``--set`` pairs of a size, the mode without its argument, and the shape run."""
    users, items, ratings = SHAPES[name]
    if mode.startswith("sample="):
        rows = int(float(mode.split("=", 1)[1]))
        factor = rows / ratings
        users, items, ratings = max(1, round(users * factor)), max(1, round(items * factor)), rows
        mode = "features"
    sets = [
        f"data.synthetic.n_users={users}",
        f"data.synthetic.n_items={items}",
        f"data.synthetic.n_ratings={ratings}",
    ]
    if mode == "epoch":
        sets += ["ranking.epochs=1", "retrieval.epochs=1"]
    return sets, mode, (users, items, ratings)


def run_size(
    name: str, mode_arg: str, work: Path, timeout: float, rss_cap: float, extra: list[str]
) -> SizeRun:
    """One size through ``recflow run``, with the ``extra`` settings (``KEY=VALUE``) after the
    size's own."""
    sets, mode, shape = size_sets(name, mode_arg)
    sets += extra
    home = work / f"{name}-{mode_arg.replace('=', '')}"
    if home.exists():
        raise SystemExit(f"{home} exists: give a fresh --work-dir or remove it")
    home.mkdir(parents=True)
    command = recflow_command(home, sets)
    # A temporary Prefect server of the run's own, recording into its home (as recommend_bench).
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(home / "prefect")
    result = SizeRun(name, mode_arg, shape, shlex.join(command), uptime())
    print(f"[{name} {mode_arg}] {result.uptime_before}\n+ {result.command}", flush=True)
    started = time.time()
    with (home / "run.log").open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
            start_new_session=True,
        )  # fmt: skip
        with TreeSampler(process.pid, home) as sampler:
            stopped = watch(process, home, mode, started + timeout, sampler, rss_cap)
        result.exit_code = process.returncode
    result.wall_s = time.time() - started
    result.uptime_after = uptime()
    result.samples = sampler.samples
    if stopped:
        result.notes.append(stopped)
    read_prefect(home, result)
    read_training(home, result)
    print(f"[{name} {mode_arg}] exit {result.exit_code} after {result.wall_s:.0f} s; "
          f"{result.uptime_after}", flush=True)  # fmt: skip
    return result


def watch(
    process: subprocess.Popen,
    home: Path,
    mode: str,
    deadline: float,
    sampler: TreeSampler,
    rss_cap: float,
) -> str:
    """Wait for the run; stop it after the features in ``features`` mode, at ``deadline``, or
    when the tree's RSS passes ``rss_cap`` bytes (the machine is shared: the kernel's OOM
    killer would pick the largest process, maybe someone else's). Returns why it was stopped,
    or ''."""
    while process.poll() is None:
        time.sleep(2)
        latest = sampler.samples[-1] if sampler.samples else None
        tree = sum(rss for _, _, rss in latest.processes.values()) if latest else 0
        if tree > rss_cap:
            # At once: the ml-10m run grew from the 10 GiB cap to 20.5 GiB during the grace
            # period of a SIGINT, and the kernel's OOM killer ended it.
            stop(process, signals=((signal.SIGKILL, 10),))
            return (
                f"**stopped at the --rss-cap**: the process tree held {gib(tree)} "
                f"({time.strftime('%H:%M:%S')})"
            )
        if mode == "features" and "train-models" in flow_runs_started(home):
            stop(process)
            return "stopped (SIGINT) when Prefect recorded the train-models flow run: bounded run"
        if time.time() > deadline:
            stop(process)
            return f"**killed at the --timeout** ({time.strftime('%H:%M:%S')})"
    return ""


def stop(
    process: subprocess.Popen,
    signals: tuple[tuple[signal.Signals, float], ...] = (
        (signal.SIGINT, 60),
        (signal.SIGTERM, 30),
        (signal.SIGKILL, 10),
    ),
) -> None:
    """Send the run's process group each signal in turn until it exits."""
    for sig, wait in signals:
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def prefect_db(home: Path) -> sqlite3.Connection | None:
    path = home / "prefect" / "prefect.db"
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True) if path.is_file() else None


def flow_runs_started(home: Path) -> set[str]:
    db = prefect_db(home)
    if db is None:
        return set()
    try:
        rows = db.execute(
            "SELECT f.name FROM flow_run r JOIN flow f ON f.id = r.flow_id "
            "WHERE r.start_time IS NOT NULL"
        ).fetchall()
    except sqlite3.Error:
        return set()
    finally:
        db.close()
    return {row[0] for row in rows}


def epoch_seconds(text: str | None) -> float | None:
    if not text:
        return None
    stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    # Prefect's SQLite database stores UTC without an offset.
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)).timestamp()


def read_prefect(home: Path, result: SizeRun) -> None:
    """Stage windows from the run's flow runs and task runs; epoch ends from its logs."""
    db = prefect_db(home)
    if db is None:
        result.notes.append("no Prefect database: no stage boundaries")
        return
    with db:
        flows = db.execute(
            "SELECT f.name, r.start_time, r.end_time FROM flow_run r "
            "JOIN flow f ON f.id = r.flow_id ORDER BY r.start_time"
        ).fetchall()
        tasks = db.execute(
            "SELECT task_key, start_time, end_time, id FROM task_run ORDER BY start_time"
        ).fetchall()
        logs = db.execute(
            "SELECT task_run_id, timestamp, message FROM log WHERE message LIKE 'epoch %' "
            "ORDER BY timestamp"
        ).fetchall()
    db.close()
    for prefix, label in FLOW_STAGES:
        for flow, start, end in flows:
            if flow == prefix and start:
                result.stages.append(Stage(label, epoch_seconds(start), epoch_seconds(end)))
    task_names = {}
    for prefix, label in TASK_STAGES:
        mine = [t for t in tasks if t[0].startswith(prefix) and t[1]]
        for number, (_task, start, end, task_id) in enumerate(mine, 1):
            suffix = f" #{number}" if len(mine) > 1 else ""
            result.stages.append(Stage(label + suffix, epoch_seconds(start), epoch_seconds(end)))
            task_names[task_id] = label + suffix
    result.stages.sort(key=lambda s: s.start)
    result.counts["epoch_ends"] = len(logs)
    for task_id, stamp, message in logs:
        match = EPOCH_LINE.match(message)
        if match:
            result.training.append(
                {
                    "stage": task_names.get(task_id, "?"),
                    "epoch": int(match.group(1)),
                    "t": epoch_seconds(stamp),
                    "metrics": message.split(": ", 1)[1],
                }
            )


def read_training(home: Path, result: SizeRun) -> None:
    """Rows of the features and every trained model's manifest."""
    features = sorted((home / "features").glob("*/manifest.json"))
    if features:
        manifest = json.loads(features[-1].read_text())
        result.counts["n_train"] = manifest.get("n_train", 0)
        result.counts["n_valid"] = manifest.get("n_valid", 0)
    result.counts["n_ratings"] = result.shape[2]
    for path in sorted((home / "models").glob("*/*/manifest.json")):
        manifest = json.loads(path.read_text())
        if "train_examples_per_s" in manifest:
            result.counts[f"model:{path.parent.name}"] = 1
            result.training.append(
                {
                    "model": path.parent.name,
                    "examples_per_s": manifest["train_examples_per_s"],
                    "train_seconds": manifest["train_seconds"],
                    "best_epoch": manifest["best_epoch"],
                    "epochs": len(manifest["history"]),
                }
            )


# ---------------------------------------------------------------------------------------------
# Per-stage numbers from the samples


def window(samples: list[Sample], start: float, end: float | None) -> list[Sample]:
    end = end if end is not None else float("inf")
    return [s for s in samples if start <= s.t <= end]


def cpu_between(samples: list[Sample], start: float, end: float | None) -> float:
    """CPU seconds the tree used in [start, end]: per process, its last reading in the
    window minus its last reading before it (0 for a process born inside)."""
    before: dict[int, float] = {}
    last: dict[int, float] = {}
    end = end if end is not None else float("inf")
    for sample in samples:
        for pid, (_kind, cpu, _rss) in sample.processes.items():
            if sample.t < start:
                before[pid] = cpu
            elif sample.t <= end:
                last[pid] = cpu
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in last.items())


def rss_by_kind(samples: list[Sample]) -> dict[str, tuple[int, int]]:
    """kind -> (the largest single process's peak RSS, how many such processes there were)."""
    peak: dict[int, tuple[str, int]] = {}
    for sample in samples:
        for pid, (kind, _cpu, rss) in sample.processes.items():
            peak[pid] = (kind, max(rss, peak.get(pid, (kind, 0))[1]))
    kinds: dict[str, tuple[int, int]] = {}
    for kind, rss in peak.values():
        largest, count = kinds.get(kind, (0, 0))
        kinds[kind] = (max(largest, rss), count + 1)
    return kinds


def disk_growth(samples: list[Sample], start: float, end: float | None) -> int:
    """Bytes the home's directories grew by over [start, end] (sum of positive changes)."""
    with_disk = [s for s in samples if s.disk is not None]
    first = [s for s in with_disk if s.t <= start]
    after = [s for s in with_disk if end is not None and s.t >= end]
    begin = first[-1].disk if first else {}
    finish = after[0].disk if after else (with_disk[-1].disk if with_disk else {})
    return sum(max(0, size - begin.get(name, 0)) for name, size in finish.items())


def mean_load(samples: list[Sample]) -> str:
    loads = [s.load for s in samples if getattr(s, "load", 0.0)]
    return f"{sum(loads) / len(loads):.1f}" if loads else ""


KIND_ORDER = ("main", "prefect server", "dask worker", "tritonserver", "triton stub", "other")


def rss_cell(kinds: dict[str, tuple[int, int]]) -> str:
    parts = []
    for kind in KIND_ORDER:
        if kind in kinds and kinds[kind][0] > 0:
            largest, count = kinds[kind]
            parts.append(f"{kind} {gib(largest)}" + (f" (x{count})" if count > 1 else ""))
    return ", ".join(parts)


def stage_rows(run: SizeRun, stage: Stage) -> tuple[int | None, str]:
    """What a stage processes: ratings for fetch and features, training examples (rows x
    epochs) for a model, the validation rows for the ordering and the gate."""
    epochs = {t["model"]: t["epochs"] for t in run.training if "model" in t}
    n_train = run.counts.get("n_train")
    if stage.name.startswith(("fetch", "features")):
        return run.counts["n_ratings"], "ratings"
    if stage.name.startswith("train: ranker") and n_train:
        ranked = [e for m, e in epochs.items() if m.startswith("ranking")]
        return (n_train * ranked[0], "examples") if ranked else (None, "")
    if stage.name.startswith("train: two-tower") and n_train and "retrieval" in epochs:
        return n_train * epochs["retrieval"], "examples (rated pairs)"
    if stage.name.startswith("train: item-item") and n_train:
        return n_train, "training rows"
    if stage.name.startswith(("train: recommend", "gate")) and run.counts.get("n_valid"):
        return run.counts["n_valid"], "validation rows"
    return None, ""


def size_table(run: SizeRun) -> list[str]:
    users, items, ratings = run.shape
    lines = [
        f"## {run.name} ({run.mode}): {users:,} users, {items:,} items, {ratings:,} ratings",
        "",
        "```bash",
        run.command,
        "```",
        "",
        f"- before: `{run.uptime_before}`",
        f"- after: `{run.uptime_after}`",
        f"- exit code {run.exit_code}, {run.wall_s:.0f} s from the command's start to its end "
        f"({run.wall_s / 60:.1f} min); features: {run.counts.get('n_train', 0):,} training / "
        f"{run.counts.get('n_valid', 0):,} validation rows",
        *(f"- {note}" for note in run.notes),
        "",
        "| stage | wall s | CPU s (whole tree) | per CPU-s | peak RSS per process | home grew by "
        "| load (1-min, mean) |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for stage in run.stages:
        end = stage.end if stage.end is not None else run.samples[-1].t
        cpu = cpu_between(run.samples, stage.start, stage.end)
        rows, unit = stage_rows(run, stage)
        per_cpu = f"{rows / cpu:,.0f} {unit}" if rows and cpu > 0 and stage.end else ""
        unfinished = "" if stage.end is not None else " (unfinished)"
        lines.append(
            f"| {stage.name}{unfinished} | {end - stage.start:,.0f} | {cpu:,.0f} | {per_cpu} | "
            f"{rss_cell(rss_by_kind(window(run.samples, stage.start, stage.end)))} | "
            f"{gib(disk_growth(run.samples, stage.start, stage.end))} | "
            f"{mean_load(window(run.samples, stage.start, stage.end))} |"
        )
    whole = run.samples[0].t if run.samples else 0
    lines.append(
        f"| **whole command** (Python start-up, Prefect server, all stages) | {run.wall_s:,.0f} | "
        f"{cpu_between(run.samples, whole, None):,.0f} | | "
        f"{rss_cell(rss_by_kind(run.samples))} | {gib(disk_growth(run.samples, whole, None))} | "
        f"{mean_load(run.samples)} |"
    )
    lines += training_table(run)
    return lines


def training_table(run: SizeRun) -> list[str]:
    models = [t for t in run.training if "model" in t]
    if not models:
        return []
    stages = {s.name: s for s in run.stages}
    lines = [
        "",
        "| model | epochs run | best epoch | train examples/s (training only, manifest) | "
        "seconds per epoch incl. validation (Prefect log times) | time to the best epoch "
        "from the task's start |",
        "| --- | ---: | ---: | ---: | --- | ---: |",
    ]
    label = {"retrieval": "train: two-tower"}
    for model in models:
        stage_name = label.get(model["model"], "train: ranker")
        stage = stages.get(stage_name)
        ends = [t["t"] for t in run.training if t.get("stage") == stage_name]
        per_epoch, best = "", ""
        if stage and ends:
            marks = [stage.start, *ends]
            per_epoch = ", ".join(f"{b - a:.0f}" for a, b in zip(marks, marks[1:], strict=False))
            if model["best_epoch"] <= len(ends):
                best = f"{ends[model['best_epoch'] - 1] - stage.start:,.0f} s"
        lines.append(
            f"| {model['model']} | {model['epochs']} | {model['best_epoch']} | "
            f"{model['examples_per_s']:,.0f} | {per_epoch} | {best} |"
        )
    return lines


def report(runs: list[SizeRun], command: str, notes: str) -> str:
    lines = [
        "# How far one machine goes: `recflow run` per stage at MovieLens sizes (issue #33)",
        "",
        "Produced by (from the repository root):",
        "",
        "```bash",
        command,
        "```",
        "",
        *code_state(),
        "",
        f"Machine: {os.cpu_count()} cores, {gib(psutil.virtual_memory().total)} RAM, no GPU, "
        "**shared with other engineers' jobs**: the `uptime` lines before and after each size "
        "give its load. Data: the product's synthetic source (tasks/synthetic.py) at each "
        "release's users, items and ratings. Stage windows: the run's Prefect flow and task "
        "runs. CPU s: the whole process tree (main process, Prefect server, Dask workers, "
        f"Triton, stubs) over the stage's window, polled with psutil (every {SAMPLE_POLL_S} s; "
        "1 s in the ml-1m run, measured with the first revision of this script). Peak RSS: the "
        "largest process of each kind in the window (xN: how many there were). Home grew by: the "
        "growth of the home's directories over the window (sampled; the Dask spill directory "
        "is outside it).",
        "",
    ]
    for run in runs:
        lines += [*size_table(run), ""]
    if notes.strip():
        lines += [notes.strip(), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size",
        action="append",
        default=[],
        help=f"NAME:MODE, NAME one of {list(SHAPES)}, MODE one of {list(MODES)} or sample=N",
    )
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/scale"))
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per size")
    parser.add_argument(
        "--rss-cap", type=float, default=10.0, help="GiB of the tree's RSS that stop a run"
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/scale.md")
    parser.add_argument("--notes", type=Path, help="markdown appended to the report")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting for every size's run, after the size's own (e.g. retrieval.epochs=10)",
    )
    parser.add_argument(
        "--report-from",
        type=Path,
        nargs="+",
        help="write the report from these saved runs (<work-dir>/<size>.pickle), run nothing",
    )
    args = parser.parse_args()
    notes = args.notes.read_text() if args.notes else ""
    if args.report_from:
        saved = [pickle.loads(path.read_bytes()) for path in args.report_from]
        commands = "\n".join(dict.fromkeys(command for _, command in saved))
        args.out.write_text(report([run for run, _ in saved], commands, notes))
        print(args.out.read_text())
        return
    if not args.size:
        parser.error("give --size (or --report-from)")
    command = shlex.join([".venv/bin/python", "benchmarks/scale_bench.py", *sys.argv[1:]])
    runs = []
    for spec in args.size:
        name, _, mode = spec.partition(":")
        if name not in SHAPES or not (mode in MODES or mode.startswith("sample=")):
            parser.error(f"--size {spec!r}")
        runs.append(
            run_size(name, mode, args.work_dir, args.timeout, args.rss_cap * 2**30, args.set)
        )
        # Everything measured, samples included, to rewrite the report without running again.
        saved = args.work_dir / f"{name}-{mode.replace('=', '')}.pickle"
        saved.write_bytes(pickle.dumps((runs[-1], command)))
        args.out.write_text(report(runs, command, notes))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
