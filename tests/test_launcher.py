"""`make run`'s launcher stops every child it started, also when told to stop twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import wait_until

ROOT = Path(__file__).resolve().parent.parent

# A child that takes a second to stop, and a launcher that waits for SIGTERM as `make run` does.
# The child's lines are printed from parts, so that the launcher's echo of its command never
# matches them.
LAUNCHER = textwrap.dedent(
    """
    import signal, sys
    from devservers.launcher import Launcher

    child = (
        "import signal, sys, time\\n"
        "def stop(*_):\\n"
        "    print('child', 'stopping', flush=True); time.sleep(1); sys.exit(0)\\n"
        "signal.signal(signal.SIGTERM, stop)\\n"
        "print('child', 'ready', flush=True)\\n"
        "time.sleep(120)\\n"
    )
    launcher = Launcher()
    started = launcher.start("slow", [sys.executable, "-c", child], {})
    print("pid", started.process.pid, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        launcher.watch()
    except KeyboardInterrupt:
        pass
    finally:
        launcher.stop_all()
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_second_sigterm_while_stopping_still_stops_every_child(tmp_path: Path) -> None:
    log = tmp_path / "launcher.log"
    with log.open("wb") as out:
        launcher = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_until(lambda: "child ready" in log.read_text())
        child_pid = int(log.read_text().split("pid ")[1].split()[0])
        launcher.send_signal(signal.SIGTERM)
        wait_until(lambda: "child stopping" in log.read_text())
        launcher.send_signal(signal.SIGTERM)  # as `make` passes on the one it got
        assert launcher.wait(timeout=15) == 0, log.read_text()
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert "stopped slow" in log.read_text()
    assert not _alive(child_pid)
