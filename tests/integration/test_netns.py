"""Two peers on two "machines": network namespaces joined by a veth pair, shaped to 20
Mbit/s with tbf. The README's cross-machine steps, for real: the first peer listens on
0.0.0.0, its reachable (non-loopback) address comes first, the second peer joins by it,
and both end on the same versions. All traffic stays inside the namespaces made here.

Needs root and iproute2 (`ip netns`, `tc`); skipped, saying why, where those are missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from netns import ip as _ip
from swarmkit import SMOKE, Swarm, versions_by_round

pytestmark = [pytest.mark.integration]


@pytest.fixture
def two_hosts() -> Iterator[tuple[str, str, str]]:
    """Namespaces A (10.231.7.1) and B (10.231.7.2) on one veth link; yields (A, B, A's ip)."""
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("tc") is None:
        pytest.skip("network namespaces need root and iproute2 (ip, tc)")
    tag = uuid.uuid4().hex[:6]
    a, b = f"swarmtrain-a-{tag}", f"swarmtrain-b-{tag}"
    veth_a, veth_b = f"st{tag}a", f"st{tag}b"
    made: list[str] = []
    try:
        for ns in (a, b):
            _ip("netns", "add", ns)
            made.append(ns)
        _ip("link", "add", veth_a, "type", "veth", "peer", "name", veth_b)
        for ns, dev, address in ((a, veth_a, "10.231.7.1/24"), (b, veth_b, "10.231.7.2/24")):
            _ip("link", "set", dev, "netns", ns)
            _ip("-n", ns, "addr", "add", address, "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf",
                            "rate", "20mbit", "burst", "64kb", "latency", "100ms"],
                           check=True, capture_output=True, timeout=30)
    except subprocess.CalledProcessError as error:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        pytest.skip(f"cannot build network namespaces here: {error.stderr.decode(errors='replace').strip()}")
    try:
        yield a, b, "10.231.7.1"
    finally:
        for ns in made:  # deleting a namespace deletes its end of the veth pair, and so both
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


@pytest.mark.timeout(200)
def test_peers_on_two_hosts_join_by_the_reachable_address_and_agree(
        tmp_path: Path, two_hosts: tuple[str, str, str]) -> None:
    ns_a, ns_b, ip_a = two_hosts
    swarm = Swarm(tmp_path, "itest-netns")
    try:
        swarm.start("a", *SMOKE, "--rounds", "2", "--host", "0.0.0.0", "--port", "31337",
                    "--start-delay", "30", "--address-file", str(tmp_path / "a.addr"),
                    prefix=("ip", "netns", "exec", ns_a))
        address = swarm.peers["a"].address()
        assert address.startswith(f"/ip4/{ip_a}/tcp/31337/p2p/"), address  # reachable one first
        assert (tmp_path / "a.addr").read_text().split()[0] == address
        swarm.start("b", *SMOKE, "--rounds", "2", "--host", "0.0.0.0", "--initial-peers", address,
                    prefix=("ip", "netns", "exec", ns_b))
        swarm.wait("a", "b", timeout=150)
    finally:
        swarm.stop_all()
    finals = [versions_by_round(swarm.peers[n].log_text()) for n in ("a", "b")]
    assert sorted(finals[0]) == ["0", "1"] and finals[0] == finals[1], finals
