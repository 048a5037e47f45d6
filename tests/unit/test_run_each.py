"""The bar over a set of steps (recflow/progress.py: run_each), as trial serving draws it over
its model loads; that trial serving draws it: tests/integration/test_pipeline_e2e.py."""

from __future__ import annotations

import pytest

from recflow.progress import run_each

MODELS = ["recflow_ranking", "recflow_retrieval", "recflow_recommend"]


class Server:
    """Stands in for TritonServer.load: records the loads, and fails the one named ``broken``."""

    def __init__(self, broken: str | None = None) -> None:
        self.broken = broken
        self.loaded: list[str] = []

    def load(self, name: str) -> None:
        if name == self.broken:
            raise RuntimeError(f"failed to load '{name}'")
        self.loaded.append(name)


def trial_loads(server: Server, title: str) -> None:
    run_each(title, MODELS, server.load, doing="loading", done="models loaded")


def bar_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    # Not a terminal: rich prints the bar once, in its final state, on stderr.
    captured = capsys.readouterr()
    assert captured.out == ""
    return [line for line in captured.err.splitlines() if line.strip()]


def test_one_line_for_the_set_once_every_model_is_loaded(capsys) -> None:
    server = Server()

    trial_loads(server, "trial serving c1")

    assert server.loaded == MODELS  # one at a time, in order
    (line,) = bar_lines(capsys)
    assert line.startswith("trial serving c1: models loaded"), line
    assert "3/3" in line


def test_a_failed_load_leaves_the_bar_at_the_model_that_failed(capsys) -> None:
    server = Server(broken="recflow_retrieval")

    with pytest.raises(RuntimeError, match="failed to load"):
        trial_loads(server, "trial serving c2")

    assert server.loaded == ["recflow_ranking"]
    (line,) = bar_lines(capsys)
    assert line.startswith("trial serving c2: loading"), line
    assert "1/3" in line and line.endswith("recflow_retrieval"), line
