"""Dask cluster selection: which device the ETL runs on, and the cluster that runs it.

``open_cluster`` either connects to an existing scheduler (``compute.scheduler_address``, e.g. a
``dask cuda worker`` fleet on several nodes) or starts a local cluster for the resolved device:
``distributed.LocalCluster`` on CPUs, ``dask_cuda.LocalCUDACluster`` (one worker per visible GPU)
on GPUs. NVTabular finds the yielded client as distributed's default client (merlin's
``global_dask_client``); with no client it would compute synchronously in the calling process.
``merlin.core.utils.set_dask_client(client)`` pins it explicitly, in merlin's ``ContextVar``, so in
the thread that makes the NVTabular calls.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import dask.config
import pynvml
from distributed import Client, LocalCluster

from recflow.config import ComputeConfig
from recflow.dask_worker import WithoutTensorFlow

logger = logging.getLogger(__name__)

Device = Literal["cpu", "gpu"]
RequestedDevice = Literal["auto", "cpu", "gpu"]


class GPUUnavailableError(RuntimeError):
    """``device=gpu`` was requested where a GPU or cuDF is missing."""


def detect_gpus() -> int:
    """Number of NVIDIA GPUs this process may use; 0 on machines without a driver."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        # NVML_ERROR_LIBRARY_NOT_FOUND / DRIVER_NOT_LOADED: a CPU-only machine, not a failure.
        return 0
    try:
        physical = pynvml.nvmlDeviceGetCount()
    finally:
        pynvml.nvmlShutdown()
    return _visible_gpu_count(physical, os.environ.get("CUDA_VISIBLE_DEVICES"))


def _visible_gpu_count(physical: int, cuda_visible_devices: str | None) -> int:
    if cuda_visible_devices is None:
        return physical
    # CUDA stops enumerating at the first invalid entry, which is why "" and "-1" hide every GPU
    # (dask_cuda.utils.get_n_gpus counts "" as one device, hence not using it).
    listed = 0
    for entry in cuda_visible_devices.split(","):
        entry = entry.strip()
        if not entry or entry.startswith("-"):
            break
        listed += 1
    return min(listed, physical)


def cudf_available() -> bool:
    """Whether cuDF is installed. Looks it up without importing: importing it touches CUDA."""
    return importlib.util.find_spec("cudf") is not None


def resolve_device(
    requested: RequestedDevice, n_gpus: int, has_cudf: bool, *, where: str = "this machine"
) -> Device:
    """Pick the ETL device: ``auto`` means GPU only when both a GPU and cuDF are there.

    ``where`` names the place that was inspected, for the error message.
    """
    if requested == "cpu":
        return "cpu"
    missing = []
    if n_gpus < 1:
        missing.append(
            "no NVIDIA GPU is visible (NVML found none, or CUDA_VISIBLE_DEVICES hides them)"
        )
    if not has_cudf:
        missing.append(
            "cuDF is not installed (it is not on PyPI for this stack: use the Merlin GPU image)"
        )
    if not missing:
        return "gpu"
    if requested == "gpu":
        raise GPUUnavailableError(
            f"compute.device=gpu, but on {where}: {'; '.join(missing)}. "
            "Set compute.device=auto or cpu to run the ETL on CPUs."
        )
    return "cpu"


def dataset_cpu_flag(device: Device) -> bool:
    """The ``cpu=`` argument of ``merlin.io.Dataset`` (pandas partitions vs cuDF) for ``device``."""
    return device == "cpu"


@contextmanager
def open_cluster(cfg: ComputeConfig) -> Iterator[tuple[Client, Device]]:
    """Yield a client and the device its workers compute on; close only what was started here.

    With ``cfg.scheduler_address`` the scheduler and its workers belong to someone else: only the
    client is closed. Otherwise a local cluster is started and torn down. On GPUs the local
    cluster has one worker per visible GPU (dask-cuda's model), so ``cfg.n_workers`` is a CPU
    setting; restrict GPUs with ``CUDA_VISIBLE_DEVICES``.
    """
    if cfg.scheduler_address:
        with Client(cfg.scheduler_address) as client:
            device = _remote_device(client, cfg.device)
            _log_cluster(client, device)
            yield client, device
        return

    device = resolve_device(cfg.device, detect_gpus(), cudf_available())
    with (
        _workers_environment_kept_out(),
        _start_local_cluster(cfg, device) as cluster,
        Client(cluster) as client,
    ):
        # Only workers started here: a scheduler's own workers may well run TensorFlow.
        client.register_worker_plugin(WithoutTensorFlow())
        _log_cluster(client, device)
        yield client, device


@contextmanager
def _workers_environment_kept_out() -> Iterator[None]:
    """Give this process its environment back once the local cluster is closed.

    Dask's nannies set ``distributed.nanny.pre-spawn-environ`` (MALLOC_TRIM_THRESHOLD_=65536,
    OMP/MKL/OPENBLAS_NUM_THREADS=1) in the spawning process's own environment, on purpose, so
    that workers start with them (dask/distributed#6841), and leave them there. Every process
    recflow started afterwards inherited them: Triton's stubs, a CLI run inside a test, a
    benchmark's training subprocess, where TensorFlow trained the ml-1m two-tower at half
    speed with that trim threshold (docs/stack.md, "Dask's worker environment").
    """
    names = dask.config.get("distributed.nanny.pre-spawn-environ", {}).keys()
    before = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _remote_device(client: Client, requested: RequestedDevice) -> Device:
    if requested == "cpu":
        # Nothing to verify, and the workers need not be up yet.
        return "cpu"
    # GPU mode needs every worker on a GPU with cuDF, and cuDF here too: merlin.io.Dataset
    # builds its dask_cudf graph in the client process.
    reports: dict[str, tuple[int, bool]] = client.run(_gpu_support)
    if not reports:
        raise RuntimeError(
            f"the scheduler at {client.scheduler.address} has no workers to inspect for "
            f"compute.device={requested}: start the workers first, or set compute.device=cpu"
        )
    n_gpus = min(count for count, _ in reports.values())
    has_cudf = cudf_available() and all(cudf for _, cudf in reports.values())
    return resolve_device(requested, n_gpus, has_cudf, where="the Dask workers and this client")


def _gpu_support() -> tuple[int, bool]:
    """Runs on each worker: what ``resolve_device`` needs to know about that machine."""
    return detect_gpus(), cudf_available()


def _start_local_cluster(cfg: ComputeConfig, device: Device) -> LocalCluster:
    common: dict[str, Any] = {
        "threads_per_worker": cfg.threads_per_worker,
        "memory_limit": cfg.memory_limit,
        "local_directory": str(cfg.spill_dir) if cfg.spill_dir else None,
        "host": cfg.host,
        "dashboard_address": cfg.dashboard_address,
    }
    if device == "cpu":
        # Processes, not threads: pandas groupbys hold the GIL.
        return LocalCluster(n_workers=cfg.n_workers, processes=True, **common)

    # Imported here: it pulls in numba and costs seconds that CPU runs should not pay.
    from dask_cuda import LocalCUDACluster

    # dask-cuda reads floats <= 1 as fractions of device memory. The RMM pool holds its memory
    # until the cluster closes, which is why training starts only after the features stage ends.
    return LocalCUDACluster(
        protocol="tcp",
        device_memory_limit=cfg.gpu_spill_fraction,
        rmm_pool_size=cfg.rmm_pool_fraction,
        **common,
    )


def _log_cluster(client: Client, device: Device) -> None:
    logger.info(
        "Dask cluster %s: %d workers on %s, dashboard %s",
        client.scheduler.address,
        len(client.scheduler_info()["workers"]),
        device,
        client.dashboard_link or "disabled",
    )
