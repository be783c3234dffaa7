"""SwarmRecords over an in-memory stand-in for hivemind.DHT (no network, no processes)."""

from __future__ import annotations

import concurrent.futures
from typing import Any

import pytest
from hivemind.utils import MSGPackSerializer, ValueWithExpiration

from swarmtrain.dht.identity import Identity, load_or_create_identity
from swarmtrain.dht.keys import commits_key, genesis_key, peers_key, votes_key
from swarmtrain.dht.records import DHTTimeoutError, RecordOwnershipError, RecordTTLs, SwarmRecords
from swarmtrain.dht.testing import sample_commit, sample_genesis, sample_peer, sample_result, sample_votes
from swarmtrain.dht.validator import ROUNDS_AHEAD, SwarmRecordValidator

SWARM = "itest"


class FakeDHT:
    """Just enough of hivemind.DHT: dictionary values, subkeys, futures, add_validators."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.stores: list[tuple[str, Any, float, Any]] = []
        self.added_validators: list[SwarmRecordValidator] = []
        self.hang = False

    def store(self, key: str, value: Any, expiration_time: float, subkey: Any = None,
              return_future: bool = False) -> concurrent.futures.Future[bool]:
        assert return_future
        self.stores.append((key, value, expiration_time, subkey))
        # As hivemind does: values travel as msgpack, so store what a reader would decode.
        decoded = MSGPackSerializer.loads(MSGPackSerializer.dumps(value))
        entries = self.data.setdefault(key, {})
        if isinstance(entries, dict):
            entries[subkey] = ValueWithExpiration(decoded, expiration_time)
        return _done(True)

    def get(self, key: str, latest: bool = False, return_future: bool = False) -> concurrent.futures.Future[Any]:
        assert return_future and latest
        if self.hang:
            return concurrent.futures.Future()
        value = self.data.get(key)
        return _done(None if value is None else ValueWithExpiration(value, 2e9))

    def add_validators(self, validators: list[SwarmRecordValidator]) -> None:
        self.added_validators.extend(validators)


def _done(result: Any) -> concurrent.futures.Future[Any]:
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()
    future.set_result(result)
    return future


@pytest.fixture(scope="module")
def alice(tmp_path_factory: pytest.TempPathFactory) -> Identity:
    return load_or_create_identity(tmp_path_factory.mktemp("alice"))


@pytest.fixture(scope="module")
def bob(tmp_path_factory: pytest.TempPathFactory) -> Identity:
    return load_or_create_identity(tmp_path_factory.mktemp("bob"))


@pytest.fixture
def dht() -> FakeDHT:
    return FakeDHT()


def records_for(dht: FakeDHT, identity: Identity, **kwargs: Any) -> SwarmRecords:
    return SwarmRecords(dht, identity, SWARM, **kwargs)  # type: ignore[arg-type]


def test_publish_uses_our_marker_and_reads_key_by_peer_id(dht: FakeDHT, alice: Identity, bob: Identity) -> None:
    records_for(dht, alice).heartbeat(sample_peer(alice.peer_id))
    records_for(dht, bob).heartbeat(sample_peer(bob.peer_id, round=4))
    key, _, _, subkey = dht.stores[0]
    assert key == peers_key(SWARM) and subkey == alice.owner_marker
    peers = records_for(dht, alice).peers()
    assert set(peers) == {alice.peer_id, bob.peer_id} and peers[bob.peer_id].round == 4


def test_every_family_round_trips(dht: FakeDHT, alice: Identity) -> None:
    rec = records_for(dht, alice)
    commit, votes, result = sample_commit(alice.peer_id), sample_votes(alice.peer_id), sample_result(alice.peer_id)
    rec.publish_commit(5, commit)
    rec.publish_votes(5, votes)
    rec.publish_result(5, result)
    assert rec.commits(5) == {alice.peer_id: commit}
    assert rec.votes(5) == {alice.peer_id: votes}
    assert rec.results(5) == {alice.peer_id: result}
    assert rec.commits(6) == {} and rec.invalid_records == 0


def test_publishing_a_record_of_another_peer_raises(dht: FakeDHT, alice: Identity, bob: Identity) -> None:
    with pytest.raises(RecordOwnershipError, match="signs as"):
        records_for(dht, alice).publish_commit(1, sample_commit(bob.peer_id))
    with pytest.raises(RecordOwnershipError, match="swarm"):
        records_for(dht, alice).publish_genesis(sample_genesis(alice.peer_id, swarm="other"))
    assert dht.stores == []


def test_invalid_entries_are_skipped_and_counted(dht: FakeDHT, alice: Identity, bob: Identity) -> None:
    good = sample_commit(alice.peer_id)
    dht.data[commits_key(SWARM, 2)] = {
        alice.owner_marker: ValueWithExpiration(good.to_wire(), 2e9),
        bob.owner_marker: ValueWithExpiration({"peer_id": bob.peer_id}, 2e9),  # fails the schema
        b"no marker": ValueWithExpiration(sample_commit(bob.peer_id).to_wire(), 2e9),
    }
    rec = records_for(dht, bob)
    assert rec.commits(2) == {alice.peer_id: good}
    assert rec.invalid_records == 2
    # Under Bob's marker but claiming to be Alice's commit.
    dht.data[commits_key(SWARM, 3)] = {bob.owner_marker: ValueWithExpiration(good.to_wire(), 2e9)}
    assert rec.commits(3) == {}
    assert rec.invalid_records == 3
    dht.data[votes_key(SWARM, 2)] = "a plain value where entries belong"
    assert rec.votes(2) == {}
    assert rec.invalid_records == 4


def test_expirations_never_go_backwards(dht: FakeDHT, alice: Identity, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr("swarmtrain.dht.records.get_dht_time", lambda: clock[0])
    rec = records_for(dht, alice, ttls=RecordTTLs(heartbeat=60.0))
    rec.heartbeat(sample_peer(alice.peer_id))
    clock[0] = 990.0  # the clock steps back
    rec.heartbeat(sample_peer(alice.peer_id))
    shorter = records_for(dht, alice, ttls=RecordTTLs(heartbeat=5.0))
    shorter._last_expiration = dict(rec._last_expiration)  # same process, shrunk TTL
    shorter.heartbeat(sample_peer(alice.peer_id))
    expirations = [exp for _, _, exp, _ in dht.stores]
    assert expirations[0] == 1060.0
    assert expirations[0] < expirations[1] < expirations[2]


def test_validator_window_moves_only_when_needed(dht: FakeDHT, alice: Identity) -> None:
    rec = records_for(dht, alice)
    rec.commits(0)
    rec.votes(1)
    rec.results(ROUNDS_AHEAD - 40)
    assert len(dht.added_validators) == 1
    rec.commits(ROUNDS_AHEAD - 10)  # near the window's end: slide it
    assert len(dht.added_validators) == 2
    assert ROUNDS_AHEAD + 100 in dht.added_validators[-1].covered_rounds
    rec.heartbeat(sample_peer(alice.peer_id))  # static keys need no window
    assert len(dht.added_validators) == 2


def test_genesis_rule_earliest_then_creator_then_pin(dht: FakeDHT, alice: Identity, bob: Identity) -> None:
    ra, rb = records_for(dht, alice), records_for(dht, bob)
    assert ra.read_genesis() is None
    late = sample_genesis(alice.peer_id, genesis_time=2000.0)
    early = sample_genesis(bob.peer_id, genesis_time=1000.0)
    ra.publish_genesis(late)
    rb.publish_genesis(early)
    assert ra.read_genesis() == early == rb.read_genesis()
    assert ra.read_genesis(pin=late.digest()) == late
    assert ra.read_genesis(pin="0" * 64) is None
    # A tie on time is broken by the creator id, the same way for every reader.
    tie = sample_genesis(alice.peer_id, genesis_time=1000.0)
    ra.publish_genesis(tie)
    expected = min([early, tie], key=lambda g: g.creator)
    assert ra.read_genesis() == expected == rb.read_genesis()
    assert [g.digest() for g in ra.genesis_candidates()][0] == expected.digest()


def test_establish_genesis_endorses_an_existing_one(dht: FakeDHT, alice: Identity, bob: Identity) -> None:
    first = records_for(dht, alice).establish_genesis(sample_genesis(alice.peer_id), settle_s=0.0)
    assert first.creator == alice.peer_id
    mine = sample_genesis(bob.peer_id, genesis_time=5.0)  # earlier, but too late: one exists
    assert records_for(dht, bob).establish_genesis(mine, settle_s=0.0) == first
    entries = dht.data[genesis_key(SWARM)]
    assert {v.value["creator"] for v in entries.values()} == {alice.peer_id}  # bob endorsed alice's


def test_dht_timeout_is_a_typed_error(dht: FakeDHT, alice: Identity) -> None:
    dht.hang = True
    with pytest.raises(DHTTimeoutError, match="did not answer"):
        records_for(dht, alice, timeout=0.05).peers()


def test_ttls_are_validated() -> None:
    with pytest.raises(ValueError, match="heartbeat"):
        RecordTTLs(heartbeat=0.0)
