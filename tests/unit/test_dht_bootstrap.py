"""start_dht's argument checks, which fail before any process starts (no network)."""

from __future__ import annotations

import time

import pytest

from swarmtrain.dht.bootstrap import BootstrapError, MalformedMultiaddrError, is_loopback_host, start_dht
from swarmtrain.dht.identity import Identity, load_or_create_identity
from swarmtrain.dht.keys import InvalidSwarmNameError

PEER_ADDR = "/ip4/127.0.0.1/tcp/4001/p2p/QmXfzsrJ8n8o2gGqXbXvDJHnS6PNtEh5Evu7Wrqk1FNbAb"


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> Identity:
    return load_or_create_identity(tmp_path_factory.mktemp("peer"))


@pytest.mark.parametrize(
    ("initial_peers", "message"),
    [
        (PEER_ADDR, "got a single string; wrap it"),
        (["/ip4/127.0.0.1/tcp/notaport/p2p/QmXfzsrJ8n8o2gGqXbXvDJHnS6PNtEh5Evu7Wrqk1FNbAb"], "is not a multiaddr"),
        (["127.0.0.1:4001"], "is not a multiaddr"),
        (["/ip4/127.0.0.1/tcp/4001"], r"no /p2p/<peer id> part"),
        ([b"/ip4/127.0.0.1/tcp/4001"], "must be a string"),
    ],
)
def test_bad_initial_peers_fail_fast_with_a_hint(identity: Identity, initial_peers: object, message: str) -> None:
    started = time.monotonic()
    with pytest.raises(MalformedMultiaddrError, match=message):
        start_dht(initial_peers=initial_peers, identity=identity, swarm="demo")  # type: ignore[arg-type]
    assert time.monotonic() - started < 1.0  # refused before starting a daemon


def test_bad_host_port_and_swarm(identity: Identity) -> None:
    with pytest.raises(BootstrapError, match="host must be an IP address"):
        start_dht(initial_peers=[], identity=identity, swarm="demo", host="localhost")
    with pytest.raises(BootstrapError, match="port must be"):
        start_dht(initial_peers=[], identity=identity, swarm="demo", port=70000)
    with pytest.raises(InvalidSwarmNameError):
        start_dht(initial_peers=[], identity=identity, swarm="Not Valid")


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True),
    ("0.0.0.0", False), ("::", False), ("192.0.2.7", False), ("localhost", False), ("", False),
])
def test_is_loopback_host(host: str, loopback: bool) -> None:
    # Only a listen address that keeps the node on this machine counts; a name is not one.
    assert is_loopback_host(host) is loopback
