"""The Docker image: two peers in two containers on one container network train together.

Opt-in, because it needs a container engine (docker, or podman as root) and a built
image, which a plain CI machine has neither of; `make docker-test` builds the image and
runs this. Without them the test is skipped and says why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from swarmkit import versions_by_round

pytestmark = [pytest.mark.integration]

IMAGE = os.environ.get("SWARMTRAIN_TEST_IMAGE", "")
ENGINE = next((e for e in ("docker", "podman") if shutil.which(e) and subprocess.run(
    [e, "info"], capture_output=True).returncode == 0), None) if IMAGE else None

if not IMAGE:
    pytest.skip("set SWARMTRAIN_TEST_IMAGE to a built swarmtrain image (make docker-test does)",
                allow_module_level=True)
if ENGINE is None:
    pytest.skip("no working container engine (docker or podman) on this machine", allow_module_level=True)

def _engine(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    assert ENGINE is not None
    return subprocess.run([ENGINE, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(240)
def test_two_containers_join_by_address_file_and_agree(tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    network, names = f"swarmtrain-test-{tag}", [f"swarmtrain-test-{tag}-peer{i}" for i in range(2)]
    shared = tmp_path / "shared"
    shared.mkdir()
    assert _engine("network", "create", network).returncode == 0
    try:
        common = ["--preset", "smoke", "--rounds", "2", "--swarm", "docker-test", "--host", "0.0.0.0"]
        started = _engine("run", "-d", "--name", names[0], "--network", network, "--network-alias", "peer0",
                          "-v", f"{shared}:/shared", IMAGE, "join", *common, "--port", "31337",
                          "--start-delay", "30", "--address-file", "/shared/peer0.addr")
        assert started.returncode == 0, started.stderr
        address_file = shared / "peer0.addr"
        deadline = time.monotonic() + 90
        while not (address_file.exists() and address_file.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.5)
        addresses = address_file.read_text().split()
        assert addresses and not addresses[0].startswith("/ip4/127."), addresses  # reachable ones first
        peer_id = addresses[0].rsplit("/", 1)[-1]
        started = _engine("run", "-d", "--name", names[1], "--network", network, IMAGE, "join", *common,
                          "--initial-peers", f"/dns4/peer0/tcp/31337/p2p/{peer_id}")
        assert started.returncode == 0, started.stderr
        for name in names:
            waited = _engine("wait", name, timeout=150)
            assert waited.stdout.strip() == "0", _engine("logs", name).stdout
        logs = [_engine("logs", name).stdout + _engine("logs", name).stderr for name in names]
    finally:
        for name in names:
            _engine("rm", "-f", "-v", name)  # -v: and its anonymous /data volume
        _engine("network", "rm", network)
    finals = [versions_by_round(log) for log in logs]
    assert all(sorted(f) == ["0", "1"] for f in finals), logs
    assert finals[0] == finals[1], logs  # same version after every round
    assert all("Traceback" not in log for log in logs), logs
