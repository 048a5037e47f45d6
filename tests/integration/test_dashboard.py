"""The Prefect dashboard itself: headless Chromium renders the flow run page of the pipeline run
triggered in tests/support/prefect_server.py. The rendered text must name the run and its state,
and its Artifacts tab must show the run's pictures as loaded images.

The dashboard is a JavaScript single-page app that picks its tab itself (a ``?tab=`` in the URL
is reset while the run loads), so the test drives Chromium over the DevTools protocol: it waits
for the page, clicks the tab, waits for the images to decode and reads their natural sizes (an
image that failed to load has 0), then takes the screenshot. The screenshot is kept in
test-artifacts/ (git-ignored) for a human to look at.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from websockets.sync.client import connect

from flows import pictures
from flows.reporting import PICTURES
from serving.server import find_free_port
from tests.support.environment import unavailable
from tests.support.prefect_server import LOOPBACK, wait_for

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


class Page:
    """One Chromium tab, driven over the DevTools protocol."""

    def __init__(self, socket):
        self.socket, self.ids = socket, itertools.count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        request = next(self.ids)
        self.socket.send(json.dumps({"id": request, "method": method, "params": params}))
        while True:  # events arrive in between; the answer carries the request's id
            message = json.loads(self.socket.recv(timeout=CHROMIUM_TIMEOUT_S))
            if message.get("id") == request:
                assert "error" not in message, message["error"]
                return message["result"]

    def run(self, script: str) -> Any:
        """The value of an async JavaScript function's body, awaited in the page."""
        answer = self.call(
            "Runtime.evaluate",
            expression=f"(async () => {{ {script} }})()",
            awaitPromise=True,
            returnByValue=True,
        )
        assert "exceptionDetails" not in answer, answer["exceptionDetails"]
        return answer["result"].get("value")


@contextmanager
def browser_page(chromium: str, profile: Path) -> Iterator[Page]:
    port = find_free_port(LOOPBACK)
    flags = [*CHROMIUM_FLAGS, f"--remote-debugging-port={port}", f"--user-data-dir={profile}"]
    log = profile.with_name("chromium.log")
    with log.open("wb") as out:
        process = subprocess.Popen([chromium, *flags, "about:blank"], stdout=out, stderr=out)
    try:

        def listening() -> list[dict[str, Any]] | None:
            assert process.poll() is None, f"chromium exited with {process.returncode}"
            with suppress(httpx.HTTPError):
                return httpx.get(f"http://{LOOPBACK}:{port}/json/list", timeout=5).json()
            return None

        targets = wait_for("chromium's DevTools endpoint", listening, CHROMIUM_TIMEOUT_S, log)
        (tab,) = [target for target in targets if target["type"] == "page"]
        with connect(tab["webSocketDebuggerUrl"], max_size=2**27) as socket:
            yield Page(socket)
    finally:
        process.terminate()
        process.wait(timeout=30)


# Waits in the page for a condition, polling; the page's own clock, so no guessing how long the
# app takes to query the API on a busy machine.
UNTIL = """
const until = async (probe, ms) => {
  for (const end = Date.now() + ms; Date.now() < end; await new Promise(r => setTimeout(r, 250))) {
    const value = probe();
    if (value) return value;
  }
  return null;
};
"""
SHOW_ARTIFACTS = (
    UNTIL
    + """
const tab = await until(() => document.querySelector("li.p-tab#artifacts"), 60000);
if (!tab) return {text: document.body.innerText, images: null};
const text = document.body.innerText;
tab.click();
const images = await until(() => {
  const shown = [...document.querySelectorAll("img[src^='data:image/png']")];
  return shown.length >= %d && shown.every(i => i.complete) ? shown : null;
}, 60000);
tab.scrollIntoView();  // the tab strip at the top, the artifacts' cards below it on screen
return {text, images: (images || []).map(i => ({alt: i.alt, width: i.naturalWidth}))};
"""
)


def test_flow_run_page_shows_the_run_and_its_pictures(
    chromium: str, scheduled_pipeline: ScheduledPipeline, tmp_path: Path, pytestconfig
):
    server = scheduled_pipeline.server
    run = server.flow_run(scheduled_pipeline.flow_run_id)
    page = f"{server.url}/runs/flow-run/{run['id']}"
    # A run of one ranker (no challengers) draws every picture but the contest's.
    titles = {title for name, (_, title) in PICTURES.items() if name != pictures.CONTEST}

    with browser_page(chromium, tmp_path / "profile") as tab:
        tab.call("Page.navigate", url=page)
        shown = tab.run(SHOW_ARTIFACTS % len(titles))
        shot = tab.call("Page.captureScreenshot", format="png")

    text = " ".join(shown["text"].split())
    assert run["name"] in text, text[:2000]
    assert run["state"]["name"] in text, text[:2000]  # the state badge, e.g. "Completed"
    assert "Can't connect to Server API" not in text
    # Every picture rendered on its artifact's card: decoded, so it has a width.
    widths = {image["alt"]: image["width"] for image in shown["images"] or []}
    assert set(widths) == titles, shown
    assert all(width > 0 for width in widths.values()), widths

    SCREENSHOTS.mkdir(exist_ok=True)
    screenshot = SCREENSHOTS / "prefect-flow-run.png"
    screenshot.write_bytes(base64.b64decode(shot["data"]))
    say(pytestconfig, f"screenshot of the flow run page {page} (Artifacts tab): {screenshot}")
