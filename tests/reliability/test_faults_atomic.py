"""A writer killed (SIGKILL) inside ``recflow.atomic.atomic_dir`` or ``atomic_file``: the
target never appears half-written, and the next writer beside it removes the orphaned staging
directory or temp file while it leaves a live writer's alone."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from recflow.atomic import atomic_dir, write_text_atomic
from tests.support.processes import finish, leftovers, python_process, wait_until

# Writes into a staging directory (or temp file), says so, then waits to be killed.
WRITER = """
import sys, time
from pathlib import Path
from recflow.atomic import atomic_dir, atomic_file

target, kind = Path(sys.argv[1]), sys.argv[2]
if kind == "dir":
    with atomic_dir(target) as staging:
        (staging / "part").write_bytes(b"x" * 4096)
        print("staged", flush=True)
        time.sleep(600)
else:
    with atomic_file(target) as handle:
        handle.write(b"x" * 4096)
        handle.flush()
        print("staged", flush=True)
        time.sleep(600)
"""


@pytest.mark.parametrize("kind", ["dir", "file"])
def test_a_killed_writers_leftover_is_removed_by_the_next_writer(tmp_path: Path, kind) -> None:
    killed = python_process(WRITER, str(tmp_path / "1"), kind)
    live = python_process(WRITER, str(tmp_path / "2"), kind)
    try:
        for writer in (killed, live):
            assert writer.stdout is not None
            assert writer.stdout.readline().strip() == "staged"
        killed.send_signal(signal.SIGKILL)
        finish(killed, 30)
        assert not (tmp_path / "1").exists()
        assert len(leftovers(tmp_path)) == 2

        if kind == "dir":
            with atomic_dir(tmp_path / "3") as staging:
                (staging / "part").write_text("y")
        else:
            write_text_atomic(tmp_path / "3", "y")

        # Only the live writer's leftover remains, and the new target is whole.
        wait_until("the orphan removed", lambda: len(leftovers(tmp_path)) == 1, 5)
        assert leftovers(tmp_path)[0].startswith(".2.")
        whole = tmp_path / "3" if kind == "file" else tmp_path / "3" / "part"
        assert whole.read_text() == "y"
    finally:
        live.kill()
        finish(live, 30)
