"""Swarm records between real DHT nodes (p2pd daemons) on 127.0.0.1.

The attackers here are hivemind nodes without swarmtrain's validators (what anyone can
run), writing straight through ``DHT.store``.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable
from pathlib import Path

import hivemind
import hivemind.dht.protocol
import pytest
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.utils import get_dht_time

from swarmtrain.dht.bootstrap import (
    ClockSkewError,
    DeadBootstrapError,
    IdentityTakenError,
    MalformedMultiaddrError,
    start_dht,
)
from swarmtrain.dht.identity import load_or_create_identity
from swarmtrain.dht.keys import commits_key, peers_key, votes_key
from swarmtrain.dht.testing import hex_digest, sample_commit, sample_genesis, sample_peer, sample_result, sample_votes

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

SWARM = "itest"
FAR_FUTURE = 10 * 24 * 3600.0  # an attacker's "later expiration"


def test_records_round_trip_between_two_nodes(swarm_node: Callable, wait_until: Callable) -> None:
    a = swarm_node("a")
    b = swarm_node("b", initial_peers=a.maddrs)
    assert a.dht.peer_id.to_base58() == a.peer_id  # identity file -> same PeerID as computed
    a.records.heartbeat(sample_peer(a.peer_id, round=7))
    b.records.heartbeat(sample_peer(b.peer_id, round=8))
    commit, votes = sample_commit(a.peer_id), sample_votes(b.peer_id, [sample_commit(a.peer_id).digest])
    result = sample_result(a.peer_id)
    a.records.publish_commit(7, commit)
    b.records.publish_votes(7, votes)
    a.records.publish_result(7, result)

    wait_until(lambda: len(b.records.peers()) == 2 and len(a.records.peers()) == 2, what="both heartbeats")
    assert b.records.peers()[a.peer_id].round == 7 and a.records.peers()[b.peer_id].round == 8
    assert b.records.commits(7) == {a.peer_id: commit}
    assert a.records.votes(7) == {b.peer_id: votes}
    assert b.records.results(7) == {a.peer_id: result}
    assert b.records.commits(8) == {}
    assert a.records.invalid_records == b.records.invalid_records == 0


def test_entry_under_another_peers_subkey_is_refused(
    swarm_node: Callable, plain_dht: Callable, wait_until: Callable
) -> None:
    a = swarm_node("a")
    b = swarm_node("b", initial_peers=a.maddrs)
    genuine = sample_commit(a.peer_id)
    a.records.publish_commit(3, genuine)
    wait_until(lambda: b.records.commits(3) == {a.peer_id: genuine}, what="the genuine commit")

    # Mallory writes under Alice's marker (she cannot sign it) with a later expiration ...
    mallory = plain_dht(initial_peers=a.maddrs)
    forged = sample_commit(a.peer_id, digest=hex_digest("evil"))
    mallory.store(commits_key(SWARM, 3), forged.to_wire(), get_dht_time() + FAR_FUTURE, subkey=a.identity.owner_marker)
    # ... and, signing with her own key, a record that claims to be Alice's.
    signer = plain_dht(initial_peers=a.maddrs, record_validators=[RSASignatureValidator()])
    impostor = signer.run_coroutine(_own_marker)
    signer.store(commits_key(SWARM, 3), forged.to_wire(), get_dht_time() + FAR_FUTURE, subkey=impostor)

    time.sleep(0.5)  # give the forgeries time to spread
    for reader in (a, b):
        assert reader.records.commits(3) == {a.peer_id: genuine}
        # Refused inside the DHT (store and replica reads), not merely skipped by the reader.
        assert reader.records.invalid_records == 0


def test_a_private_swarm_refuses_the_records_of_strangers(
    swarm_node: Callable, wait_until: Callable, tmp_path: Path
) -> None:
    """--allow-peers: a stranger running swarmtrain's own validators (signed, well-formed
    records) can neither store its commitment on a member nor have it read back."""
    members = frozenset(load_or_create_identity(tmp_path / name).peer_id for name in ("a", "b"))
    a = swarm_node("a", allowed=members)
    b = swarm_node("b", initial_peers=a.maddrs, allowed=members)
    stranger = swarm_node("c", initial_peers=a.maddrs)
    genuine = sample_commit(b.peer_id)
    b.records.publish_commit(3, genuine)
    stranger.records.publish_commit(3, sample_commit(stranger.peer_id, digest=hex_digest("uninvited")))
    wait_until(lambda: a.records.commits(3) == {b.peer_id: genuine}, what="the member's commit")
    wait_until(lambda: stranger.peer_id in stranger.records.commits(3), what="the stranger's own copy")
    time.sleep(0.5)  # give the stranger's record time to spread, were it let in
    for reader in (a, b):
        assert reader.records.commits(3) == {b.peer_id: genuine}
        assert reader.records.invalid_records == 0  # refused inside the DHT, not skipped by the reader


async def _own_marker(dht: hivemind.DHT, node: hivemind.DHTNode) -> bytes:
    """The owner marker of the node's RSA validator (run inside the DHT process)."""
    for validator in node.protocol.record_validator._validators:
        if isinstance(validator, RSASignatureValidator):
            return validator.local_public_key
    raise LookupError("no RSASignatureValidator on this node")


def test_plain_value_does_not_replace_the_dictionary(
    swarm_node: Callable, plain_dht: Callable, wait_until: Callable
) -> None:
    a = swarm_node("a")
    b = swarm_node("b", initial_peers=a.maddrs)
    a.records.heartbeat(sample_peer(a.peer_id))
    wait_until(lambda: a.peer_id in b.records.peers(), what="the heartbeat")

    mallory = plain_dht(initial_peers=a.maddrs)
    mallory.store(peers_key(SWARM), "garbage", get_dht_time() + FAR_FUTURE)
    time.sleep(0.5)
    for reader in (a, b):
        assert set(reader.records.peers()) == {a.peer_id}
    # The honest owner can still update its entry afterwards.
    a.records.heartbeat(sample_peer(a.peer_id, round=9))
    wait_until(lambda: b.records.peers()[a.peer_id].round == 9, what="the updated heartbeat")


def test_schema_invalid_entry_is_ignored_and_counted(
    swarm_node: Callable, plain_dht: Callable, wait_until: Callable
) -> None:
    # Stored while no honest validator covered the round (far beyond every window), the
    # bad entry sits in honest nodes' storage; readers must still drop and count it.
    far = 1_000_000
    a = swarm_node("a")
    b = swarm_node("b", initial_peers=a.maddrs)
    signer = plain_dht(initial_peers=a.maddrs, record_validators=[RSASignatureValidator()])
    marker = signer.run_coroutine(_own_marker)
    signer.store(votes_key(SWARM, far), {"voter": "nonsense"}, get_dht_time() + 600, subkey=marker)
    time.sleep(0.5)
    genuine = sample_votes(a.peer_id)
    a.records.publish_votes(far, genuine)
    wait_until(lambda: b.records.votes(far) == {a.peer_id: genuine}, what="the genuine ballot")
    assert b.records.invalid_records >= 1


def test_genesis_race_resolves_to_one_genesis(swarm_node: Callable) -> None:
    a = swarm_node("a")
    b = swarm_node("b", initial_peers=a.maddrs)
    now = time.time()
    mine = sample_genesis(a.peer_id, genesis_time=now)
    theirs = sample_genesis(b.peer_id, genesis_time=now + 0.001)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        fa = pool.submit(a.records.establish_genesis, mine, settle_s=1.0)
        fb = pool.submit(b.records.establish_genesis, theirs, settle_s=1.0)
        winner_a, winner_b = fa.result(), fb.result()
    assert winner_a == winner_b == mine
    assert a.records.read_genesis() == b.records.read_genesis() == mine


def test_plain_hivemind_node_bootstraps_two_swarm_nodes(
    swarm_node: Callable, plain_dht: Callable, wait_until: Callable
) -> None:
    relay = plain_dht()  # like `hivemind-dht`: no swarmtrain validators
    relay_addrs = [str(m) for m in relay.get_visible_maddrs()]
    a = swarm_node("a", initial_peers=relay_addrs)
    b = swarm_node("b", initial_peers=relay_addrs)
    a.records.heartbeat(sample_peer(a.peer_id))
    b.records.heartbeat(sample_peer(b.peer_id))
    a.records.publish_commit(0, sample_commit(a.peer_id))
    wait_until(lambda: set(a.records.peers()) == set(b.records.peers()) == {a.peer_id, b.peer_id}, what="peers")
    assert b.records.commits(0) == {a.peer_id: sample_commit(a.peer_id)}


def test_identity_persists_across_restart(swarm_node: Callable, stop_node: Callable, wait_until: Callable) -> None:
    a = swarm_node("a")
    b = swarm_node("b", initial_peers=a.maddrs)
    first_id = b.peer_id
    b.records.heartbeat(sample_peer(b.peer_id, round=1))
    stop_node(b.dht)

    again = swarm_node("b", initial_peers=a.maddrs, data_dir=b.data_dir)
    assert again.peer_id == first_id == again.dht.peer_id.to_base58()
    again.records.heartbeat(sample_peer(again.peer_id, round=2))
    wait_until(lambda: a.records.peers().get(first_id, None) is not None
               and a.records.peers()[first_id].round == 2, what="the restarted peer's heartbeat")


def test_startup_failures_are_one_line_typed_errors(
    swarm_node: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # start_dht directly (not the fixture) where the start must fail.
    lonely = load_or_create_identity(tmp_path / "lonely")

    started = time.monotonic()
    dead = "/ip4/127.0.0.1/tcp/9/p2p/QmXfzsrJ8n8o2gGqXbXvDJHnS6PNtEh5Evu7Wrqk1FNbAb"
    with pytest.raises(DeadBootstrapError, match="no initial peer answered"):
        start_dht(initial_peers=[dead], identity=lonely, swarm=SWARM)
    with pytest.raises(MalformedMultiaddrError):
        start_dht(initial_peers=["/ip4/127.0.0.1/tcp/9/p2p/QmNotAPeer"], identity=lonely, swarm=SWARM)
    assert time.monotonic() - started < 10.0

    a = swarm_node("a")
    with pytest.raises(IdentityTakenError, match="already used by a running node"):
        start_dht(initial_peers=a.maddrs, identity=a.identity, swarm=SWARM)

    # A bootstrap whose clock runs 10 s ahead (patched before its process forks).
    real_time = hivemind.dht.protocol.get_dht_time
    monkeypatch.setattr(hivemind.dht.protocol, "get_dht_time", lambda: real_time() + 10.0)
    skewed = swarm_node("skewed")
    monkeypatch.undo()
    with pytest.raises(ClockSkewError, match="clock is more than 3 s off"):
        start_dht(initial_peers=skewed.maddrs, identity=lonely, swarm=SWARM)
    # The failed start left no daemon holding the identity: a retry elsewhere works.
    retry = swarm_node("lonely", initial_peers=a.maddrs, data_dir=lonely.path.parent)
    assert retry.peer_id == lonely.peer_id
