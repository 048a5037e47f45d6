"""Training one model in several processes on this machine: Horovod, Merlin Models' data-parallel
route (docs/sizing.md, "Several GPUs").

Horovod's launcher (``horovodrun``, a subprocess of its own: it takes over SIGINT and SIGTERM in
the process it runs in) starts the processes, and each runs this module on the trainer and
arguments pickled for it. Merlin initialises Horovod when it is installed and then averages
the processes' gradients at every step, scales the learning rate by their number and starts
every process from the first one's weights; the trainers give each process its share of the
rows and let the first score and write the model (models/training.py ``process_rank``). What
the first process returns is the artifact.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from recflow.compute import detect_gpus
from recflow.config import DataParallelConfig

Trained = TypeVar("Trained")


class DataParallelUnavailableError(RuntimeError):
    """Several training processes were asked for where Horovod is not installed."""


def horovod_installed() -> bool:
    """Looked up without importing: importing Horovod's TensorFlow module initialises it."""
    return importlib.util.find_spec("horovod") is not None


def training_processes(cfg: DataParallelConfig, n_gpus: int, horovod: bool) -> int:
    """How many processes train each model: ``cfg.processes``, or with ``auto`` one per GPU
    where there are two or more and Horovod is there to join them."""
    if cfg.processes == "auto":
        return n_gpus if horovod and n_gpus > 1 else 1
    if cfg.processes > 1 and not horovod:
        raise DataParallelUnavailableError(
            f"data_parallel.processes={cfg.processes} needs Horovod, which is not installed: "
            "use the Merlin GPU image (infra/README.md), or set data_parallel.processes=auto"
        )
    return cfg.processes


def train_in_processes(
    cfg: DataParallelConfig, train: Callable[..., Trained], *args: object
) -> Trained:
    """``train(*args)`` here, or in the processes :func:`training_processes` asks for."""
    processes = training_processes(cfg, detect_gpus(), horovod_installed())
    if processes == 1:
        return train(*args)
    with tempfile.TemporaryDirectory(prefix="recflow-data-parallel-") as exchange:
        job, result = Path(exchange) / "job.pickle", Path(exchange) / "result.pickle"
        # The trainer goes by name: unpickling it would import Merlin, which starts TensorFlow's
        # runtime before the process has chosen its device and threads (fixed from then on).
        job.write_bytes(pickle.dumps((train.__module__, train.__qualname__, args)))
        # Loopback: the processes share this machine and talk to nothing else.
        launcher = [sys.executable, "-m", "horovod.runner.launch", "-np", str(processes)]
        launcher += ["-H", f"localhost:{processes}", "--network-interfaces", "lo"]
        finished = subprocess.run([*launcher, sys.executable, "-m", __name__, str(job)])
        if finished.returncode:
            raise RuntimeError(
                f"training in {processes} Horovod processes failed (exit {finished.returncode}); "
                "their output, each line marked with its process, is above"
            )
        return pickle.loads(result.read_bytes())


def _one_process(job: Path) -> None:
    """In each process: its own GPU (Horovod's documented pinning, by the local rank), or on
    CPUs its share of the cores, then the trainer; the first process keeps its result."""
    import horovod.tensorflow as hvd
    import tensorflow as tf

    hvd.init()
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        tf.config.set_visible_devices(gpus[hvd.local_rank()], "GPU")
    else:
        cores = max(1, (os.cpu_count() or 1) // hvd.size())
        tf.config.threading.set_intra_op_parallelism_threads(cores)
    module, name, args = pickle.loads(job.read_bytes())
    trained = getattr(importlib.import_module(module), name)(*args)
    if hvd.rank() == 0:
        (job.parent / "result.pickle").write_bytes(pickle.dumps(trained))


if __name__ == "__main__":
    _one_process(Path(sys.argv[1]))
