"""The Prefect dashboard itself: headless Chromium renders the flow run page of the pipeline run
triggered in tests/support/prefect_server.py, and the rendered text must name the run and its state.

The dashboard is a JavaScript single-page app: ``--virtual-time-budget`` lets its requests to the
API and its rendering finish before Chromium dumps the DOM or takes the screenshot. The screenshot
is kept in test-artifacts/ (git-ignored) for a human to look at.
"""

from __future__ import annotations

import html
import os
import re
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.environment import unavailable

if TYPE_CHECKING:
    from tests.support.prefect_server import ScheduledPipeline

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
INSTALL = "apt-get update && apt-get install -y chromium"
# Without the background-networking flags Chromium keeps calling Google, which on a closed
# network means timeouts and log noise; without --no-sandbox it refuses to run as root.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
    # Milliseconds of page time: the app loads, queries the API and renders well within it.
    "--virtual-time-budget=30000",
]
CHROMIUM_TIMEOUT_S = 120


@pytest.fixture(scope="session")
def chromium(pytestconfig: pytest.Config) -> str:
    """Debian's chromium, installed with apt-get when missing (CI machines start fresh)."""
    if Path(CHROMIUM).exists():
        return CHROMIUM
    if os.geteuid() != 0:
        unavailable(f"{CHROMIUM} is missing and only root may install it: run `{INSTALL}`")
    say(pytestconfig, f"{CHROMIUM} is missing; installing Debian's chromium: {INSTALL}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["sh", "-c", INSTALL], check=True, env=env)
    return CHROMIUM


def say(config: pytest.Config, line: str) -> None:
    """Print past pytest's output capture: what the fixture does belongs in the test log."""
    config.get_terminal_writer().line(f"\n{line}")


def headless(chromium: str, profile: Path, *args: str) -> str:
    result = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=CHROMIUM_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def visible_text(dom: str) -> str:
    without_code = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", without_code)).split())


def test_flow_run_page_shows_the_run_name_and_state(
    chromium: str, scheduled_pipeline: ScheduledPipeline, tmp_path: Path, pytestconfig
):
    server = scheduled_pipeline.server
    run = server.flow_run(scheduled_pipeline.flow_run_id)
    page = f"{server.url}/runs/flow-run/{run['id']}"

    text = visible_text(headless(chromium, tmp_path / "profile", "--dump-dom", page))

    assert run["name"] in text, text[:2000]
    assert run["state"]["name"] in text, text[:2000]  # the state badge, e.g. "Completed"
    assert "Can't connect to Server API" not in text

    SCREENSHOTS.mkdir(exist_ok=True)
    shot = SCREENSHOTS / "prefect-flow-run.png"
    headless(chromium, tmp_path / "profile", f"--screenshot={shot}", page)
    assert shot.stat().st_size > 10_000
    say(pytestconfig, f"screenshot of the flow run page {page}: {shot}")
