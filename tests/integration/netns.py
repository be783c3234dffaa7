"""Network namespaces for integration tests: build small topologies, always tear them down.

A :class:`Netns` records every namespace it makes; deleting a namespace deletes the veth
ends, bridges and iptables rules inside it, so :meth:`Netns.close` (called from a
``finally``) leaves nothing behind. Every address, route and rule lives inside namespaces
made here; the root namespace is never changed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import pytest

__all__ = ["Netns", "ip", "require_tools"]


def ip(*args: str) -> None:
    """Run ``ip ARGS`` and raise CalledProcessError (with stderr) if it fails."""
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def require_tools(*tools: str) -> None:
    """Skip the calling test, saying why, unless it runs as root with ``tools`` on PATH."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    missing = [tool for tool in ("ip", *tools) if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"network namespace tests need {', '.join(missing)} (e.g. apt-get install iproute2 iptables)")


class Netns:
    """Namespaces named ``swarmtrain-<role>-<tag>``, and the links between them."""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.made: list[str] = []
        self._links = 0

    def add(self, role: str) -> str:
        """A new namespace with loopback up; returns its name."""
        name = f"swarmtrain-{role}-{self.tag}"
        ip("netns", "add", name)
        self.made.append(name)
        ip("-n", name, "link", "set", "lo", "up")
        return name

    def prefix(self, ns: str) -> tuple[str, ...]:
        """The command prefix that runs a program inside ``ns``."""
        return ("ip", "netns", "exec", ns)

    def run(self, ns: str, *command: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.prefix(ns), *command], check=check, capture_output=True, text=True,
                              timeout=timeout)

    def link(self, ns_a: str, dev_a: str, ns_b: str, dev_b: str) -> None:
        """A veth pair with end ``dev_a`` in ``ns_a`` and ``dev_b`` in ``ns_b``, both up."""
        # Made in the root namespace under unique temporary names (interface names are
        # per namespace, but two tests' tmp names must not clash there), then moved.
        self._links += 1
        tmp_a, tmp_b = f"st{self.tag}{self._links}a", f"st{self.tag}{self._links}b"
        ip("link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b)
        try:
            ip("link", "set", tmp_a, "netns", ns_a)
            ip("link", "set", tmp_b, "netns", ns_b)
        except subprocess.CalledProcessError:
            # An end still in the root namespace would outlive close(); deleting it deletes both.
            subprocess.run(["ip", "link", "del", tmp_a], capture_output=True, timeout=30)
            subprocess.run(["ip", "link", "del", tmp_b], capture_output=True, timeout=30)
            raise
        for ns, tmp, dev in ((ns_a, tmp_a, dev_a), (ns_b, tmp_b, dev_b)):
            ip("-n", ns, "link", "set", tmp, "name", dev)
            ip("-n", ns, "link", "set", dev, "up")

    def address(self, ns: str, dev: str, cidr: str) -> None:
        ip("-n", ns, "addr", "add", cidr, "dev", dev)

    def close(self) -> None:
        """Delete every namespace made here, and with them their links and rules."""
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self.made.clear()
