"""The progress bars recflow draws in the terminal: one look for all of them.

A bar is a description, the bar, ``done/total``, the time elapsed and a free ``detail`` field
(the running loss and validation metric of an epoch, the model that is loading). rich draws it
on stderr, where the log lines go too (stdout stays for results), and on a terminal that is not
interactive (a log file, CI) prints only its last state, once, when it stops: a finished bar
stays as one line and the log lines after it are not drawn over. Used by the training epochs
(``models/progress.py``) and trial serving's model loads (``release/trial.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def progress_bar(console: Console | None = None) -> Progress:
    """A rich ``Progress`` whose tasks take ``detail=...`` (add_task/update); start and stop it
    (or use it as a context manager, which stops it on an error too)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[detail]}"),
        console=console or Console(stderr=True),
    )


def run_each(
    title: str,
    names: Sequence[str],
    run: Callable[[str], object],
    *,
    doing: str,
    done: str,
    console: Console | None = None,
) -> None:
    """``run(name)`` for each of ``names`` in turn under one bar for the set, which names the
    one running and advances as each returns: ``<title>: <doing> ... <name>``, then
    ``<title>: <done>``. An error stops the bar where it happened, naming the step that raised.
    Trial serving loads its models with it (``release/trial.py``)."""
    bar = progress_bar(console)
    task = bar.add_task(f"{title}: {doing}", total=len(names), detail="")
    with bar:
        for name in names:
            bar.update(task, detail=name)
            run(name)
            bar.advance(task)
        bar.update(task, description=f"{title}: {done}", detail="")
