"""`swarmtrain demo`, the README's main command, run as a user would (smoke preset)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration]


@pytest.mark.timeout(200)
def test_demo_runs_a_local_swarm_and_its_final_view_shows_the_final_version(tmp_path: Path) -> None:
    """Three smoke peers: they end on one version, the last table shows it, and every peer
    spent at least 80 % of its time in inner steps (training never waits for the network)."""
    env = {**os.environ, "COLUMNS": "200"}
    demo = subprocess.Popen(
        [sys.executable, "-m", "swarmtrain.peer.app.cli", "demo", "--peers", "3", "--rounds", "2",
         "--preset", "smoke", "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    try:
        out, _ = demo.communicate(timeout=170)
    finally:
        if demo.poll() is None:  # SIGTERM: the demo ends the peers it started, then itself
            os.killpg(demo.pid, signal.SIGTERM)
            demo.wait(timeout=30)
    assert demo.returncode == 0, out
    assert "Traceback" not in out, out
    finals = set(re.findall(r"peer\d \[exited \(0\)\]: round 1: version ([0-9a-f]{12})", out))
    assert len(finals) == 1, out  # every peer ended its last round on one version
    # The table drawn last was read after that round: it shows the swarm on that version.
    shown = re.findall(r"swarm 'demo-local': round \d+ \([^)]*\), 3 peer\(s\), version ([0-9a-f]{12})", out)
    assert shown and shown[-1] == finals.pop(), out
    for peer in ("peer0", "peer1", "peer2"):
        assert (tmp_path / peer / "versions").is_dir()
        log = (tmp_path / f"{peer}.log").read_text()
        trained = re.search(r"trained (\d+) steps in [0-9.]+s \(utilisation ([0-9.]+)%", log)
        assert trained is not None, log
        assert int(trained.group(1)) > 0 and float(trained.group(2)) >= 80.0, log
    assert re.search(r"busy.*smp/s", out) and re.search(r"\b(8\d|9\d|100)%", out), out
