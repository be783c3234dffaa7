"""``swarmtrain status --watch`` in a real terminal (tmux) against a running 2-peer swarm.

The view is drawn by rich's Live display on a 120x40 tmux pane; the test reads the pane
with ``tmux capture-pane -p`` until the panels show an agreed round and a loss trend.
tmux runs on a private socket in the test's directory (``-S``), so no user's tmux server
is touched, and the session is killed by the name this test gave it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from swarmkit import SMOKE, Swarm

pytestmark = [pytest.mark.integration]


def _tmux(socket: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["tmux", "-S", str(socket), *args], capture_output=True, text=True, timeout=10)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)")
@pytest.mark.timeout(150)
def test_status_watch_in_tmux_shows_rounds_and_loss_trend(tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    swarm = Swarm(tmp_path, f"tmux-{tag}")
    socket, session = tmp_path / "tmux.sock", f"swarmtrain-status-{tag}"
    started = time.monotonic()
    try:
        first = swarm.start("peer0", *SMOKE, "--rounds", "3", "--start-delay", "8")
        address = first.address()
        swarm.start("peer1", *SMOKE, "--rounds", "3", "--initial-peers", address)
        status = [sys.executable, "-m", "swarmtrain.peer.app.cli", "status", "--swarm", swarm.name, "--watch",
                  "--initial-peers", address]
        # If the view exits, its last words stay on the pane for the failure message. A
        # COLUMNS/LINES exported by whatever runs the tests would override the pane's size.
        command = f"env -u COLUMNS -u LINES {shlex.join(status)}; echo \"status exited $?\"; sleep 120"
        env = {"HIVEMIND_LOGLEVEL": "WARNING", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        made = _tmux(socket, "new-session", "-d", "-s", session, "-x", "120", "-y", "40",
                     *[f"-e{k}={v}" for k, v in env.items()], command)
        assert made.returncode == 0, made.stderr
        pane = ""
        deadline = time.monotonic() + 110
        while time.monotonic() < deadline:
            pane = _tmux(socket, "capture-pane", "-p", "-t", session).stdout
            if "status exited" in pane:
                break
            if "2 peer(s)" in pane and "over the last" in pane and "round 0: accepted" in pane:
                break
            time.sleep(0.5)
        print(pane)  # shown with -s, and on failure
        (tmp_path / "pane.txt").write_text(pane)
        assert "status exited" not in pane, pane
        assert f"swarm '{swarm.name}': round" in pane and "2 peer(s)" in pane, pane
        assert "held-out loss" in pane and "over the last" in pane, pane  # the loss trend
        assert "recent rounds" in pane and "round 0: accepted" in pane, pane
        rows = [line for line in pane.splitlines() if "…" in line and ("training" in line or "waiting" in line)]
        assert len(rows) == 2 and all(line.rstrip().endswith("0.1.0") for line in rows), pane  # software
        assert max(len(line) for line in pane.splitlines()) <= 120
        print(f"panels shown {time.monotonic() - started:.1f}s after the first peer was started")
    finally:
        _tmux(socket, "kill-session", "-t", session)
        swarm.stop_all()
