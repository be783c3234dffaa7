"""Peers behind NAT, for real: one public peer and two peers each behind its own NAT.

    home1 (10.234.1.2) -- router1 [MASQUERADE] 10.234.0.11 --+
                                                              +-- bridge "internet" -- public peer 10.234.0.1
    home2 (10.234.2.2) -- router2 [MASQUERADE] 10.234.0.12 --+

Each router namespace forwards its home's traffic out with iptables MASQUERADE and drops
every connection that starts outside, like a home router. The home peers reach the public
peer, but not each other: a home's private address has no route from outside, and the
other router refuses. They train together through the public peer's circuit relay
(``--auto-relay`` at home, ``--relay`` at the public peer). All addresses, routes and rules
live inside namespaces made here and go away with them.

Needs root, iproute2 and iptables; skipped, saying why, where those are missing.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from netns import Netns, require_tools
from swarmkit import SMOKE, Swarm, history, versions_by_round

pytestmark = [pytest.mark.integration]

PUBLIC_IP = "10.234.0.1"
ROUTER_IPS = ("10.234.0.11", "10.234.0.12")
HOME_IPS = ("10.234.1.2", "10.234.2.2")
PORT = 31337


@dataclass
class NatNet:
    net: Netns
    public: str                 # the public peer's namespace (owns the "internet" bridge)
    homes: tuple[str, str]      # the NATed peers' namespaces


def build_nat_net(net: Netns) -> NatNet:
    """The topology in this module's docstring, made inside ``net``'s namespaces."""
    public = net.add("pub")
    net.run(public, "ip", "link", "add", "wan", "type", "bridge")
    net.run(public, "ip", "link", "set", "wan", "up")
    net.address(public, "wan", f"{PUBLIC_IP}/24")
    homes = []
    for i, (router_ip, home_ip) in enumerate(zip(ROUTER_IPS, HOME_IPS), start=1):
        router, home = net.add(f"nat{i}"), net.add(f"home{i}")
        net.link(public, f"port{i}", router, "wan")
        net.run(public, "ip", "link", "set", f"port{i}", "master", "wan")
        net.address(router, "wan", f"{router_ip}/24")
        net.run(router, "ip", "route", "add", "default", "via", PUBLIC_IP)
        lan_gateway = home_ip.rsplit(".", 1)[0] + ".1"
        net.link(router, "lan", home, "eth0")
        net.address(router, "lan", f"{lan_gateway}/24")
        net.address(home, "eth0", f"{home_ip}/24")
        net.run(home, "ip", "route", "add", "default", "via", lan_gateway)
        net.run(router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        net.run(router, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE")
        net.run(router, "iptables", "-A", "FORWARD", "-i", "wan", "-m", "conntrack",
                "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
        net.run(router, "iptables", "-A", "FORWARD", "-i", "wan", "-j", "DROP")
        homes.append(home)
    return NatNet(net=net, public=public, homes=(homes[0], homes[1]))


def tcp_connects(net: Netns, ns: str, host: str, port: int) -> str:
    """"ok", or the error a TCP connect from ``ns`` to host:port ends with."""
    probe = (f"import socket\ntry:\n socket.create_connection(({host!r}, {port}), timeout=1.5)\n print('ok')\n"
             f"except OSError as e:\n print(type(e).__name__)")
    return net.run(ns, sys.executable, "-c", probe).stdout.strip()


@pytest.fixture
def nat_net() -> Iterator[NatNet]:
    require_tools("iptables")
    net = Netns()
    try:
        try:
            topology = build_nat_net(net)
        except subprocess.CalledProcessError as error:
            pytest.skip(f"cannot build NATed network namespaces here: {(error.stderr or '').strip()}")
        yield topology
    finally:
        net.close()


class _Listener:
    """A TCP listener on PORT inside a namespace, for probing reachability."""

    def __init__(self, net: Netns, ns: str) -> None:
        code = ("import socket,sys\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
                f"s.bind(('0.0.0.0',{PORT}))\ns.listen()\nprint('up',flush=True)\n"
                "while True:\n c,a=s.accept()\n print(a[0],flush=True)\n c.close()")
        self.process = subprocess.Popen([*net.prefix(ns), sys.executable, "-c", code], stdout=subprocess.PIPE,
                                        text=True, start_new_session=True)
        assert self.process.stdout is not None and self.process.stdout.readline().strip() == "up"

    def seen(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def close(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


@pytest.mark.timeout(60)
def test_the_topology_hides_each_home_behind_its_nat(nat_net: NatNet) -> None:
    net, (home1, home2) = nat_net.net, nat_net.homes
    public = _Listener(net, nat_net.public)
    try:
        for home, router_ip in zip(nat_net.homes, ROUTER_IPS):
            assert tcp_connects(net, home, PUBLIC_IP, PORT) == "ok"
            assert public.seen() == router_ip  # masqueraded: the public side sees the router
    finally:
        public.close()
    behind = _Listener(net, home2)
    try:
        assert tcp_connects(net, home1, HOME_IPS[1], PORT) == "TimeoutError"  # no route to a private address
        assert tcp_connects(net, home1, ROUTER_IPS[1], PORT) == "ConnectionRefusedError"  # no port forward
        assert tcp_connects(net, nat_net.public, HOME_IPS[1], PORT) != "ok"
    finally:
        behind.close()


ROUNDS = 3  # the target: the NATed peers and the public one agree for 3 rounds
ACCEPTED = re.compile(r"^round (\d+): version \w+ accepted (\d+), rejected (\d+)", re.MULTILINE)


@pytest.mark.timeout(170)
def test_two_nated_peers_train_with_a_public_relay_and_agree(tmp_path: Path, nat_net: NatNet) -> None:
    net = nat_net.net
    swarm = Swarm(tmp_path, "itest-nat")
    try:
        swarm.start("public", *SMOKE, "--rounds", str(ROUNDS), "--host", "0.0.0.0", "--port", str(PORT),
                    "--start-delay", "15", "--relay", prefix=net.prefix(nat_net.public))
        relay = swarm.peers["public"].address()
        assert relay.startswith(f"/ip4/{PUBLIC_IP}/tcp/{PORT}/p2p/"), relay
        for i, home in enumerate(nat_net.homes, start=1):
            swarm.start(f"home{i}", *SMOKE, "--rounds", str(ROUNDS), "--host", "0.0.0.0", "--port", str(PORT),
                        "--initial-peers", relay, "--auto-relay", prefix=net.prefix(home))
        for label in ("home1", "home2"):  # what others dial: the relayed address, not the private one
            assert swarm.peers[label].address().startswith(f"{relay}/p2p-circuit/p2p/"), swarm.peers[label].address()
        swarm.wait("public", "home1", "home2", timeout=125)
    finally:
        swarm.stop_all()
    logs = {label: swarm.peers[label].log_text() for label in ("public", "home1", "home2")}
    finals = {label: versions_by_round(log) for label, log in logs.items()}
    assert sorted(finals["public"]) == [str(r) for r in range(ROUNDS)], finals
    assert finals["home1"] == finals["public"] == finals["home2"], finals
    counts = {label: ACCEPTED.findall(log) for label, log in logs.items()}
    if all(found == [(str(r), "3", "0") for r in range(ROUNDS)] for found in counts.values()):
        return  # each peer fetched both others' updates every round: home to home through the relay
    # p2pd races two relay services (README "Peers behind NAT"): when the one with
    # libp2p's default limits wins, a relayed connection is reset after 128 KiB, so the
    # homes cannot fetch each other's updates. What still holds: the public peer reaches
    # both homes, and the only failure is that download.
    reasons = {c.peer_id: c.reason for commit in history(tmp_path / "public")[1:] for c in commit.contributions
               if not c.accepted}
    assert set(reasons.values()) == {"checkers: payload not downloaded (PeerUnavailable)"}, (reasons, counts)
    pytest.xfail(f"relay reset home-to-home transfers (p2pd relay-limit race); accepted counts {counts}")
