"""What the terminal shows of the logs (recflow/logs.py, recflow/terminal.py), with and without
``recflow -v``.

The end-to-end check, that a recflow logger's records reach a Prefect run's logs, is in
tests/integration/test_prefect_server.py (it needs a server and a pipeline run).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import prefect
import pytest

import flows.stages
import models.training
from recflow.logs import quiet_level, set_levels, shown_in_terminal

PREFECT_ENGINE = str(Path(prefect.__file__).with_name("flow_engine.py"))


def record(name: str, level: int, pathname: str, **extra) -> logging.LogRecord:
    made = logging.LogRecord(name, level, pathname, 1, "message", (), None)
    made.__dict__.update(extra)
    return made


def describe(made: logging.LogRecord) -> str:
    marked = "-terminal-false" if getattr(made, "terminal", True) is False else ""
    return f"{made.name}-{made.levelname}-{Path(made.pathname).name}{marked}"


@pytest.mark.parametrize(
    ("made", "shown"),
    [
        # A flow's line through Prefect's run logger, and a module logger's: recflow's own.
        (record("prefect.flow_runs", logging.INFO, flows.stages.__file__), True),
        (record("models.training", logging.INFO, models.training.__file__), True),
        # Prefect's engine on the same logger: "Beginning flow run", "Finished in state".
        (record("prefect.flow_runs", logging.INFO, PREFECT_ENGINE), False),
        (record("prefect.flow_runs", logging.WARNING, PREFECT_ENGINE), True),
        (record("distributed.scheduler", logging.INFO, "/x/distributed/scheduler.py"), False),
        (record("distributed.nanny", logging.WARNING, "/x/distributed/nanny.py"), True),
        # TensorFlow's and absl's warnings are notices about TensorFlow itself.
        (record("absl", logging.WARNING, "/x/tensorflow/saved_model/save.py"), False),
        (record("tensorflow", logging.ERROR, "/x/tensorflow/x.py"), True),
        # Already on screen as a progress bar.
        (record("models.training", logging.INFO, models.training.__file__, terminal=False), False),
    ],
    ids=lambda v: describe(v) if isinstance(v, logging.LogRecord) else str(v),
)
def test_terminal_shows_recflows_lines_and_real_warnings(made: logging.LogRecord, shown: bool):
    assert shown_in_terminal(made) is shown


def test_quiet_level_is_the_nearest_listed_ancestors():
    assert quiet_level("tornado.application") == logging.ERROR
    assert quiet_level("tornado.access") == logging.CRITICAL
    assert quiet_level("distributed.worker.memory") == logging.WARNING
    assert quiet_level("tasks.features") == logging.NOTSET


def test_levels_quiet_the_libraries_unless_verbose():
    try:
        set_levels(verbose=False)
        assert logging.getLogger("tasks.features").getEffectiveLevel() == logging.INFO
        assert logging.getLogger("distributed.scheduler").getEffectiveLevel() == logging.WARNING
        set_levels(verbose=True)
        assert logging.getLogger("tasks.features").getEffectiveLevel() == logging.DEBUG
        assert logging.getLogger("distributed").level == logging.NOTSET
    finally:
        set_levels(verbose=False)


# The CLI's callback configures logging; then Prefect and distributed configure theirs at import,
# as in any command that runs the pipeline. Each line says which records reached stderr.
PROBE = """
import logging, sys
from typer.testing import CliRunner
from cli.app import app
assert CliRunner().invoke(app, [*sys.argv[1:], "config", "show"]).exit_code == 0
import distributed, prefect, recflow.logs
from prefect import flow  # noqa: F401  (Prefect configures logging when its API is loaded)
def emit(name, level, pathname, message):
    logger = logging.getLogger(name)
    if logger.isEnabledFor(level):
        logger.handle(logger.makeRecord(name, level, pathname, 1, message, (), None))
emit("tasks.features", logging.INFO, recflow.logs.__file__, "RECFLOW-INFO")
emit("tasks.features", logging.DEBUG, recflow.logs.__file__, "RECFLOW-DEBUG")
emit("prefect.flow_runs", logging.INFO, prefect.__file__, "PREFECT-INFO")
logging.getLogger("distributed.scheduler").info("DASK-INFO")
logging.getLogger("distributed.scheduler").warning("DASK-WARNING")
logging.getLogger("tensorflow").warning("TF-DEPRECATION")
"""
MARKS = ("RECFLOW-INFO", "RECFLOW-DEBUG", "PREFECT-INFO", "DASK-INFO", "DASK-WARNING")


def terminal(*cli_args: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *cli_args],
        capture_output=True,
        text=True,
        timeout=120,
        # Not this test process's environment: an earlier test's CLI call may have set it.
        env={
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("PREFECT_LOGGING", "DASK_", "RECFLOW_", "TF_CPP"))
        },
    )
    assert done.returncode == 0, done.stderr
    return {mark for mark in (*MARKS, "TF-DEPRECATION") if mark in done.stderr}


def test_verbose_flag_shows_every_librarys_logs():
    quiet, verbose = terminal(), terminal("-v")
    assert quiet == {"RECFLOW-INFO", "DASK-WARNING"}, json.dumps(sorted(quiet))
    assert verbose == {*MARKS, "TF-DEPRECATION"}, json.dumps(sorted(verbose))
