"""SwarmRecordValidator on synthetic DHTRecords, composed as the DHT composes it (no network)."""

from __future__ import annotations

import pickle

import msgpack
import pytest
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.protocol import DHTProtocol
from hivemind.dht.validation import CompositeValidator, DHTRecord
from hivemind.utils import MSGPackSerializer

from swarmtrain.dht.identity import Identity, load_or_create_identity
from swarmtrain.dht.keys import commits_key, genesis_key, key_id, peers_key, result_key, votes_key
from swarmtrain.dht.schemas import SwarmRecord
from swarmtrain.dht.testing import sample_commit, sample_genesis, sample_peer, sample_result, sample_votes
from swarmtrain.dht.validator import (
    MAX_COVERED_ROUNDS,
    ROUNDS_AHEAD,
    SwarmRecordValidator,
    round_window,
    swarm_validators,
)

SWARM = "itest"
EXPIRATION = 2e9


@pytest.fixture(scope="module")
def alice(tmp_path_factory: pytest.TempPathFactory) -> Identity:
    return load_or_create_identity(tmp_path_factory.mktemp("alice"))


@pytest.fixture(scope="module")
def mallory(tmp_path_factory: pytest.TempPathFactory) -> Identity:
    return load_or_create_identity(tmp_path_factory.mktemp("mallory"))


def composite(identity: Identity, rounds: range = range(0, ROUNDS_AHEAD)) -> CompositeValidator:
    """The validator stack a swarmtrain DHT node runs, signing as ``identity``."""
    return CompositeValidator(swarm_validators(identity, SWARM, rounds))


def signed(identity: Identity, key: str, value: object, subkey: object = None) -> DHTRecord:
    """What ``identity``'s node sends when it stores ``value`` under its own marker."""
    record = DHTRecord(
        key=key_id(key),
        subkey=MSGPackSerializer.dumps(identity.owner_marker if subkey is None else subkey),
        value=MSGPackSerializer.dumps(value),
        expiration_time=EXPIRATION,
    )
    return DHTRecord(record.key, record.subkey, composite(identity).sign_value(record), EXPIRATION)


def wire(record: SwarmRecord) -> dict[str, object]:
    return record.to_wire()


@pytest.mark.parametrize(
    ("key", "build"),
    [
        (genesis_key(SWARM), lambda pid: sample_genesis(pid)),
        (peers_key(SWARM), lambda pid: sample_peer(pid)),
        (commits_key(SWARM, 3), lambda pid: sample_commit(pid)),
        (votes_key(SWARM, 3), lambda pid: sample_votes(pid)),
        (result_key(SWARM, ROUNDS_AHEAD - 1), lambda pid: sample_result(pid)),
    ],
)
def test_own_valid_entries_pass(alice: Identity, key: str, build: object) -> None:
    record = signed(alice, key, wire(build(alice.peer_id)))  # type: ignore[operator]
    assert composite(alice).validate(record)


def test_other_applications_keys_pass_untouched(alice: Identity) -> None:
    plain = DHTRecord(key_id("someone/else"), DHTProtocol.IS_REGULAR_VALUE, MSGPackSerializer.dumps("x"), EXPIRATION)
    assert composite(alice).validate(plain)
    # Our swarm's name under another swarm is another application's key too.
    other_swarm = DHTRecord(key_id("swarmtrain/other/peers"), DHTProtocol.IS_REGULAR_VALUE, b"\x01", EXPIRATION)
    assert composite(alice).validate(other_swarm)


def test_plain_value_under_a_per_peer_key_is_refused(alice: Identity) -> None:
    for key in (peers_key(SWARM), genesis_key(SWARM), commits_key(SWARM, 0)):
        plain = DHTRecord(key_id(key), DHTProtocol.IS_REGULAR_VALUE, MSGPackSerializer.dumps("garbage"), EXPIRATION)
        assert not composite(alice).validate(plain)
        # Even a plain value that looks like a valid record.
        value = MSGPackSerializer.dumps(wire(sample_peer(alice.peer_id)))
        looks_valid = DHTRecord(key_id(key), DHTProtocol.IS_REGULAR_VALUE, value, EXPIRATION)
        assert not composite(alice).validate(looks_valid)


def test_entry_under_another_peers_marker_is_refused(alice: Identity, mallory: Identity) -> None:
    forged = wire(sample_peer(alice.peer_id, round=99))
    # Mallory cannot sign for Alice's marker: her node leaves the value unsigned.
    record = signed(mallory, peers_key(SWARM), forged, subkey=alice.owner_marker)
    assert not composite(alice).validate(record)
    assert not composite(mallory).validate(record)


def test_entry_claiming_another_peer_id_is_refused(alice: Identity, mallory: Identity) -> None:
    # Correctly signed under Mallory's own marker, but the record says it is Alice's.
    record = signed(mallory, commits_key(SWARM, 1), wire(sample_commit(alice.peer_id)))
    assert not composite(alice).validate(record)
    assert composite(alice).validate(signed(mallory, commits_key(SWARM, 1), wire(sample_commit(mallory.peer_id))))


def test_genesis_is_bound_to_its_swarm_not_its_writer(alice: Identity, mallory: Identity) -> None:
    # Re-publishing (endorsing) someone else's genesis is allowed ...
    assert composite(alice).validate(signed(mallory, genesis_key(SWARM), wire(sample_genesis(alice.peer_id))))
    # ... a genesis of another swarm under this swarm's key is not.
    other = wire(sample_genesis(alice.peer_id, swarm="other"))
    assert not composite(alice).validate(signed(mallory, genesis_key(SWARM), other))


@pytest.mark.parametrize(
    "subkey_of",
    [
        lambda ident: ident.owner_marker.decode(),  # str subkey holding the marker
        lambda ident: ident.owner_marker + b"#2",  # a second entry for the same owner
        lambda ident: b"x" + ident.owner_marker,
        lambda ident: [ident.owner_marker],
    ],
)
def test_subkeys_must_be_exactly_one_marker(alice: Identity, subkey_of: object) -> None:
    subkey = subkey_of(alice)  # type: ignore[operator]
    record = signed(alice, peers_key(SWARM), wire(sample_peer(alice.peer_id)), subkey=subkey)
    assert not composite(alice).validate(record)


def test_subkey_without_any_marker_is_refused(alice: Identity) -> None:
    # No marker: the RSA validator lets it through as "unprotected"; ours must not.
    record = DHTRecord(
        key_id(peers_key(SWARM)),
        MSGPackSerializer.dumps(b"anything"),
        MSGPackSerializer.dumps(wire(sample_peer(alice.peer_id))),
        EXPIRATION,
    )
    assert not composite(alice).validate(record)


@pytest.mark.parametrize(
    "value",
    [
        {"peer_id": "x"},  # fails the schema
        "just a string",
        None,
        {**sample_commit("QmWEcoHcsQwbE63aTEx4Pwz6e7g2uackPKXhRfgFWktpW3").to_wire(), "extra": 1},
    ],
)
def test_schema_invalid_values_are_refused(alice: Identity, value: object) -> None:
    assert not composite(alice).validate(signed(alice, commits_key(SWARM, 1), value))


def test_undecodable_and_oversized_values_are_refused(alice: Identity) -> None:
    validator = SwarmRecordValidator(SWARM)
    key, subkey = key_id(peers_key(SWARM)), MSGPackSerializer.dumps(alice.owner_marker)
    for value in (b"\xc1", MSGPackSerializer.dumps(1) + b"trailing", msgpack.packb("x" * 20000)):
        assert not validator.validate(DHTRecord(key, subkey, value, EXPIRATION))
    # hivemind's ext types (here a tuple) never form a valid record.
    assert not validator.validate(DHTRecord(key, subkey, MSGPackSerializer.dumps((1, 2)), EXPIRATION))


def test_rounds_outside_the_window_are_not_ours_until_covered(alice: Identity) -> None:
    far = 10_000
    plain = DHTRecord(key_id(votes_key(SWARM, far)), DHTProtocol.IS_REGULAR_VALUE, b"\x01", EXPIRATION)
    validator = SwarmRecordValidator(SWARM)
    assert validator.validate(plain)  # not covered: treated as someone else's key
    assert validator.merge_with(SwarmRecordValidator(SWARM, round_window(far)))
    assert not validator.validate(plain)
    assert far in validator.covered_rounds


def test_window_is_bounded_and_only_merges_the_same_swarm() -> None:
    validator = SwarmRecordValidator(SWARM, range(0, 10))
    assert not validator.merge_with(SwarmRecordValidator("other"))
    assert not validator.merge_with(RSASignatureValidator())
    validator.merge_with(SwarmRecordValidator(SWARM, range(5000, 5000 + MAX_COVERED_ROUNDS)))
    assert validator.covered_rounds == range(5000, 5000 + MAX_COVERED_ROUNDS)  # oldest rounds dropped
    assert validator.family_of(key_id(commits_key(SWARM, 3))) is None
    assert validator.family_of(key_id(peers_key(SWARM))) is not None  # static keys always stay


def test_pickle_is_small_and_rebuilds_the_table() -> None:
    validator = SwarmRecordValidator(SWARM, round_window(700))
    blob = pickle.dumps(validator)
    assert len(blob) < 512  # the DHT process dies on pipe messages over ~16 KiB
    restored = pickle.loads(blob)
    assert restored.covered_rounds == validator.covered_rounds
    assert restored.family_of(key_id(result_key(SWARM, 700))) is validator.family_of(key_id(result_key(SWARM, 700)))


def test_composite_order_strips_the_signature_before_our_check(alice: Identity) -> None:
    stack = composite(alice)
    priorities = [v.priority for v in stack._validators]
    assert priorities == sorted(priorities) and isinstance(stack._validators[-1], RSASignatureValidator)
    record = signed(alice, peers_key(SWARM), wire(sample_peer(alice.peer_id)))
    assert b"[signature:" in record.value and stack.validate(record)


def test_validator_alone_fails_closed_on_signed_values(alice: Identity) -> None:
    # Without the RSA validator in front, a signed value does not decode: fail closed.
    record = signed(alice, peers_key(SWARM), wire(sample_peer(alice.peer_id)))
    assert not SwarmRecordValidator(SWARM).validate(record)


def test_a_private_swarm_refuses_every_record_of_an_identity_off_its_list(alice: Identity,
                                                                        mallory: Identity) -> None:
    members = frozenset({alice.peer_id})
    private = CompositeValidator(swarm_validators(alice, SWARM, allowed=members))
    for key, build in ((peers_key(SWARM), sample_peer), (commits_key(SWARM, 3), sample_commit),
                       (votes_key(SWARM, 3), sample_votes), (result_key(SWARM, 3), sample_result)):
        assert private.validate(signed(alice, key, wire(build(alice.peer_id))))
        assert not private.validate(signed(mallory, key, wire(build(mallory.peer_id))))
    # Not even by endorsing a genesis, nor on another application's keys' behalf.
    assert not private.validate(signed(mallory, genesis_key(SWARM), wire(sample_genesis(alice.peer_id))))
    assert private.validate(DHTRecord(key_id("someone/else"), DHTProtocol.IS_REGULAR_VALUE,
                                      MSGPackSerializer.dumps("x"), EXPIRATION))


def test_the_allow_list_survives_the_pickle_and_window_moves() -> None:
    members = frozenset(f"Qm{'a' * 44}{i}" for i in range(10))
    validator = SwarmRecordValidator(SWARM, round_window(0), members)
    restored = pickle.loads(pickle.dumps(validator))
    assert restored._allowed == members
    assert restored.merge_with(SwarmRecordValidator(SWARM, round_window(900), members))
    with pytest.raises(ValueError, match="allow-list"):
        restored.merge_with(SwarmRecordValidator(SWARM, round_window(900)))  # an open one: a caller's bug
    # The largest list still pickles far below the ~16 KiB a DHT call may carry.
    from swarmtrain.dht.allowlist import MAX_ALLOWED_PEERS
    biggest = frozenset(f"Qm{i:044d}" for i in range(MAX_ALLOWED_PEERS))
    assert len(pickle.dumps(SwarmRecordValidator(SWARM, round_window(700), biggest))) < 12_000
