"""What a person sees of the logs: recflow's own lines and real warnings, nothing else.

A run's terminal used to show Dask's cluster chatter, Prefect's state lines and TensorFlow's
deprecation notices, but not recflow's own INFO lines (cleaning counts, epochs, the Dask
dashboard link). Now:

- recflow's loggers (``RECFLOW_LOGGERS``) log at INFO (DEBUG with ``recflow -v``), to the
  terminal and, through ``PREFECT_LOGGING_EXTRA_LOGGERS``, to the Prefect run they happen in;
- the libraries in ``QUIET_LOGGERS`` log only from the level given there up, unless ``-v``;
- below WARNING the terminal shows only records logged by recflow's code
  (``recflow.terminal.TerminalHandler``); Prefect's own INFO lines ("Beginning flow run",
  "Finished in state Completed()") still reach the run's logs in the dashboard.

``environment`` is what must be in place before Prefect, Dask or TensorFlow are imported, so the
CLI sets it first; Dask workers and a deployment's flow-run processes inherit it. Logger levels
do not cross processes: ``set_levels`` runs in the CLI and again when the pipeline flow starts.
This module imports nothing heavy: ``recflow --help`` stays fast.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from pathlib import Path

# The top-level packages of this repository; every module logs to ``logging.getLogger(__name__)``.
RECFLOW_LOGGERS = ("cli", "flows", "release", "serving", "tasks", "models", "recflow")
# What each library may log without -v. TensorFlow's and absl's WARNINGs are deprecation and
# SavedModel notices ("Found untraced functions", "No training configuration found") about
# TensorFlow itself, never about recflow's data: errors only.
QUIET_LOGGERS = {
    "distributed": logging.WARNING,
    "dask": logging.WARNING,
    # Distributed's own defaults for the dashboard's web stack (bokeh warns that its server
    # accepts any Host header, which the loopback-only dashboard does not care about).
    "bokeh": logging.ERROR,
    "tornado": logging.CRITICAL,
    "tornado.application": logging.ERROR,
    "numba": logging.WARNING,
    "merlin": logging.WARNING,
    "nvtabular": logging.WARNING,
    "tf2onnx": logging.WARNING,
    "h5py": logging.WARNING,
    "matplotlib": logging.WARNING,
    "PIL": logging.WARNING,
    "httpx": logging.WARNING,
    "tensorflow": logging.ERROR,
    "absl": logging.ERROR,
}
# Whether the user asked for everything (``recflow -v``): set by the CLI, read by the flow run.
VERBOSE_ENV = "RECFLOW_VERBOSE"
CONSOLE_CLASS_ENV = "PREFECT_LOGGING_HANDLERS_CONSOLE_CLASS"
# Where recflow's modules live, installed or in a checkout: records from files below these are
# recflow's own.
_SOURCES = tuple(Path(__file__).resolve().parents[1] / name for name in RECFLOW_LOGGERS)


def environment(verbose: bool) -> dict[str, str]:
    """Variables for this process and its children, set before the libraries are imported."""
    env = {
        VERBOSE_ENV: "1" if verbose else "0",
        # Prefect copies its API handler onto these loggers when it configures logging, so what
        # they log inside a flow or task run is part of that run's logs.
        "PREFECT_LOGGING_EXTRA_LOGGERS": ",".join(RECFLOW_LOGGERS),
        # recflow logs outside runs too (`recflow serve`): that is no reason for a warning.
        "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
        # Dask's own logging configuration, read when distributed is imported (in every worker).
        "DASK_LOGGING__DISTRIBUTED": "info" if verbose else "warning",
        # TensorFlow's C++ log: 0 all, 2 warnings and errors hidden too (they are all about
        # CPU instruction sets and graph passes).
        "TF_CPP_MIN_LOG_LEVEL": "0" if verbose else "2",
        # merlin warns that PyTorch is absent (recflow does not use it) and that CPU mode is
        # "experimental"; Dask workers import merlin too, hence the environment.
        "PYTHONWARNINGS": "ignore::UserWarning:merlin.dtypes.mappings.torch,"
        "ignore::UserWarning:merlin.io.dataset",
    }
    if not verbose:
        # Prefect builds its console handler from this class path (logging.yml's
        # handlers.console.class); -v keeps Prefect's own.
        env[CONSOLE_CLASS_ENV] = "recflow.terminal.TerminalHandler"
    return env


def configure(verbose: bool) -> None:
    """The CLI's first step: the environment (``-v`` overrides what is set, otherwise what the
    user set wins) and this process's logger levels."""
    for name, value in environment(verbose).items():
        if verbose:
            os.environ[name] = value
        else:
            os.environ.setdefault(name, value)
    if verbose:
        os.environ.pop(CONSOLE_CLASS_ENV, None)
    else:
        warnings.filterwarnings("ignore", category=UserWarning, module="merlin")
    set_levels(verbose)


def verbose_requested() -> bool:
    """What the CLI chose, in a process it started (a deployment's flow run, say)."""
    return os.environ.get(VERBOSE_ENV) == "1"


def set_levels(verbose: bool) -> None:
    """recflow's loggers at INFO (DEBUG if verbose), the noisy libraries' at their quiet level
    (left to their own defaults if verbose)."""
    for name in RECFLOW_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else level)


@functools.lru_cache(maxsize=1024)
def is_recflows(pathname: str) -> bool:
    """Whether a record logged from ``pathname`` (``LogRecord.pathname``) is recflow's own. By
    file rather than logger name: the lines a flow logs through Prefect's run logger count,
    Prefect's engine lines on the same logger do not."""
    path = Path(pathname).resolve()
    return any(path.is_relative_to(source) for source in _SOURCES)


def quiet_level(logger: str) -> int:
    """The level from which ``QUIET_LOGGERS`` shows a logger's records (its nearest listed
    ancestor's; NOTSET if none is listed)."""
    parts = logger.split(".")
    for end in range(len(parts), 0, -1):
        if (level := QUIET_LOGGERS.get(".".join(parts[:end]))) is not None:
            return level
    return logging.NOTSET


def shown_in_terminal(record: logging.LogRecord) -> bool:
    """Warnings and errors, unless from a quiet library below its level; below WARNING, only
    what recflow's code logged, except records marked ``terminal=False`` (their content is on
    screen already, e.g. in a progress bar; they still go to the run's logs).

    The quiet levels are checked here as well as set on the loggers: absl sets its logger's
    level again whenever its flags are parsed (TensorFlow does that when saving a model).
    """
    if record.levelno < quiet_level(record.name):
        return False
    if record.levelno >= logging.WARNING:
        return True
    return is_recflows(record.pathname) and getattr(record, "terminal", True)
