"""Shared fixtures: real hivemind DHT nodes on 127.0.0.1, always shut down.

- ``swarm_node``: ``swarm_node(name, initial_peers=[...], swarm=...)`` starts a swarmtrain
  node (own data dir, identity, validators) and returns a :class:`SwarmNode`.
- ``plain_dht``: ``plain_dht(initial_peers=[...])`` starts a stock ``hivemind.DHT`` with no
  swarmtrain validators, as the ``hivemind-dht`` CLI would run it.
- ``wait_until``: ``wait_until(predicate, timeout=5.0, what="...")`` polls a condition.

Every node started through these fixtures is shut down at the end of the test, and any
p2pd daemon it spawned that is still alive then is killed by pid (a leftover daemon holds
its identity and makes the next start fail with "identity already taken").
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import hivemind
import pytest

from swarmtrain.dht.bootstrap import start_dht, visible_maddrs
from swarmtrain.dht.identity import Identity, load_or_create_identity
from swarmtrain.dht.records import SwarmRecords

DEFAULT_SWARM = "itest"


@dataclass
class SwarmNode:
    """One running swarmtrain DHT node and the handles tests need."""

    name: str
    data_dir: Path
    identity: Identity
    dht: hivemind.DHT
    records: SwarmRecords
    maddrs: list[str]  # loopback multiaddrs others bootstrap from

    @property
    def peer_id(self) -> str:
        """The node's base58 PeerID (equal to identity.peer_id)."""
        return self.identity.peer_id


def _child_pids(pid: int) -> set[int]:
    """Direct children of ``pid`` (Linux /proc), e.g. a DHT process's p2pd."""
    children: set[int] = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            children.add(int(stat.parent.name))
    return children


class _NodeTracker:
    """Remembers every DHT a test started and stops it, and its p2pd, at teardown."""

    def __init__(self) -> None:
        self._dhts: list[hivemind.DHT] = []

    def track(self, dht: hivemind.DHT) -> hivemind.DHT:
        self._dhts.append(dht)
        return dht

    def stop(self, dht: hivemind.DHT) -> None:
        """Shut one node down now (e.g. to restart it) and reap its daemon."""
        daemons = _child_pids(dht.pid) if dht.pid is not None else set()
        dht.shutdown()
        dht.join(timeout=5)
        for pid in daemons:  # normally already gone; never leave one holding an identity
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if dht in self._dhts:
            self._dhts.remove(dht)

    def stop_all(self) -> None:
        # Newest first: later nodes bootstrapped from earlier ones.
        for dht in reversed(list(self._dhts)):
            self.stop(dht)


@pytest.fixture
def node_tracker() -> Iterator[_NodeTracker]:
    """Stops every node registered with it at the end of the test."""
    tracker = _NodeTracker()
    try:
        yield tracker
    finally:
        tracker.stop_all()


@pytest.fixture
def swarm_node(tmp_path: Path, node_tracker: _NodeTracker) -> Callable[..., SwarmNode]:
    """Factory: start a swarmtrain DHT node with its own data dir under tmp_path."""

    def start(
        name: str,
        *,
        initial_peers: Sequence[str] = (),
        swarm: str = DEFAULT_SWARM,
        data_dir: Path | None = None,
        client_mode: bool = False,
        allowed: frozenset[str] | None = None,
    ) -> SwarmNode:
        directory = data_dir if data_dir is not None else tmp_path / name
        identity = load_or_create_identity(directory)
        dht = node_tracker.track(
            start_dht(initial_peers=list(initial_peers), identity=identity, swarm=swarm, client_mode=client_mode,
                      allowed_peers=allowed)
        )
        return SwarmNode(
            name=name,
            data_dir=directory,
            identity=identity,
            dht=dht,
            records=SwarmRecords(dht, identity, swarm, allowed=allowed),
            maddrs=visible_maddrs(dht),
        )

    return start


@pytest.fixture
def plain_dht(node_tracker: _NodeTracker) -> Callable[..., hivemind.DHT]:
    """Factory: a stock hivemind.DHT without swarmtrain validators (like the hivemind-dht CLI)."""

    def start(*, initial_peers: Sequence[str] = (), **kwargs: object) -> hivemind.DHT:
        return node_tracker.track(
            hivemind.DHT(
                initial_peers=list(initial_peers),
                start=True,
                host_maddrs=["/ip4/127.0.0.1/tcp/0"],
                **kwargs,
            )
        )

    return start


@pytest.fixture
def stop_node(node_tracker: _NodeTracker) -> Callable[[hivemind.DHT], None]:
    """Shut a node down in the middle of a test (for restarts)."""
    return node_tracker.stop


@pytest.fixture
def wait_until() -> Callable[..., None]:
    """Poll ``predicate`` every 0.1 s until it is true; fail the test after ``timeout``."""

    def wait(predicate: Callable[[], bool], *, timeout: float = 5.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.1)

    return wait
