"""Record schemas: strictness, caps, wire round trips, worst-case sizes (no network)."""

from __future__ import annotations

import math
import pickle
from typing import Any

import pytest
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.validation import DHTRecord
from hivemind.utils import MSGPackSerializer
from hivemind.utils.crypto import RSAPrivateKey

from swarmtrain.dht.keys import KeyFamily, key_id, votes_key
from swarmtrain.dht.schemas import (
    MAX_ADDRESSES,
    MAX_DIGESTS_PER_RECORD,
    REASON_CHARS,
    CommitRecord,
    GenesisRecord,
    ResultRecord,
    ValidationError,
    VoteRecord,
    record_type,
)
from swarmtrain.dht.testing import (
    hex_digest,
    sample_commit,
    sample_genesis,
    sample_peer,
    sample_result,
    sample_votes,
)

PEER = "QmWEcoHcsQwbE63aTEx4Pwz6e7g2uackPKXhRfgFWktpW3"
OTHER = "12D3KooWS9TyL4VAw9FfXi6wAPGnLZvyKPijBAjLfnJ25DegzJys"

SAMPLES = [
    sample_genesis(PEER),
    sample_peer(PEER),
    sample_commit(PEER),
    sample_votes(PEER, [hex_digest("a"), hex_digest("b")]),
    sample_result(PEER),
]


@pytest.mark.parametrize("record", SAMPLES, ids=lambda r: type(r).__name__)
def test_wire_form_survives_hivemind_msgpack(record: Any) -> None:
    wire = MSGPackSerializer.loads(MSGPackSerializer.dumps(record.to_wire()))
    assert type(record).model_validate(wire) == record
    assert record_type(record.family) is type(record)


@pytest.mark.parametrize("record", SAMPLES, ids=lambda r: type(r).__name__)
def test_unknown_fields_are_refused(record: Any) -> None:
    with pytest.raises(ValidationError):
        type(record).model_validate({**record.to_wire(), "extra": 1})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("round", "3"),  # no str -> int coercion
        ("round", 3.0),
        ("round", True),  # bool is not a round number
        ("round", -1),
        ("bytes_sent", -5),
        ("version_id", hex_digest("x").upper()),  # lowercase hex only
        ("version_id", hex_digest("x")[:63]),
        ("state_checksum", "zz" * 32),
        ("last_val_loss", math.nan),
        ("last_val_loss", math.inf),
        ("peer_id", "not a peer id"),
        ("peer_id", "0OIl" * 10),  # not base58
        ("addresses", ["/ip4/1.2.3.4/tcp/1"] * (MAX_ADDRESSES + 1)),
        ("addresses", ["no-slash"]),
        ("role", "Trainer"),
        ("software_version", "x" * 65),
        ("time", 0.0),
    ],
)
def test_peer_record_refuses_wrong_types_and_ranges(field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        sample_peer(PEER, **{field: value})


def test_none_loss_and_int_time_are_accepted() -> None:
    rec = sample_peer(PEER, last_val_loss=None, time=1_800_000_000)
    assert rec.last_val_loss is None and isinstance(rec.time, float)


def test_records_are_immutable() -> None:
    with pytest.raises(ValidationError):
        sample_commit(PEER).size = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value"),
    [("size", 0), ("samples", 0), ("train_loss", math.nan), ("digest", "ab"), ("base_version", None)],
)
def test_commit_record_limits(field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        sample_commit(PEER, **{field: value})


def test_votes_are_capped_and_need_finite_deltas() -> None:
    digests = [hex_digest(str(i)) for i in range(MAX_DIGESTS_PER_RECORD + 1)]
    assert len(sample_votes(PEER, digests[:-1]).votes) == MAX_DIGESTS_PER_RECORD
    with pytest.raises(ValidationError):
        sample_votes(PEER, digests)
    with pytest.raises(ValidationError):
        VoteRecord.model_validate({"voter": PEER, "votes": {hex_digest("a"): {"accept": 1, "loss_delta": 0.0}}})
    with pytest.raises(ValidationError):
        VoteRecord.model_validate({"voter": PEER, "votes": {hex_digest("a"): {"accept": True, "loss_delta": math.inf}}})
    with pytest.raises(ValidationError):
        VoteRecord.model_validate({"voter": PEER, "votes": {"ABC": {"accept": True, "loss_delta": 0.0}}})


def test_vote_reasons_are_short_printable_text() -> None:
    def vote(reason: object) -> VoteRecord:
        return VoteRecord.model_validate({"voter": PEER, "votes": {
            hex_digest("a"): {"accept": False, "loss_delta": 0.0, "reason": reason}}})

    assert vote("digest mismatch").votes[hex_digest("a")].reason == "digest mismatch"
    assert sample_votes(PEER).votes[hex_digest("update-x")].reason == ""  # optional
    for bad in ("x" * (REASON_CHARS + 1), "caf\u00e9", "line\nbreak", 7):
        with pytest.raises(ValidationError):
            vote(bad)


def test_a_full_ballot_with_long_reasons_does_not_fit_one_record() -> None:
    # Why ballot() drops reasons when it must: 64 verdicts with full reasons pass the cap.
    digests = [hex_digest(str(i)) for i in range(MAX_DIGESTS_PER_RECORD)]
    with pytest.raises(ValidationError, match="record packs to"):
        VoteRecord.model_validate({"voter": PEER, "votes": {
            d: {"accept": False, "loss_delta": 0.0, "reason": "r" * REASON_CHARS} for d in digests}})


def test_result_accepted_digests_are_unique_and_capped() -> None:
    with pytest.raises(ValidationError):
        sample_result(PEER, accepted=[hex_digest("a"), hex_digest("a")])
    with pytest.raises(ValidationError):
        sample_result(PEER, accepted=[hex_digest(str(i)) for i in range(MAX_DIGESTS_PER_RECORD + 1)])
    assert sample_result(PEER, accepted=[]).accepted == []


@pytest.mark.parametrize(
    "config",
    [
        {"t": (1, 2)},  # a tuple would come back as a list
        {"b": b"bytes"},
        {1: "non-str key"},
        {"nan": math.nan},
        {"big": 2**64},
        {"blob": "x" * 5000},  # over MAX_CONFIG_BYTES
        {"deep": [[[[[[[[[[1]]]]]]]]]]},
    ],
)
def test_genesis_config_must_be_small_plain_data(config: dict[Any, Any]) -> None:
    with pytest.raises(ValidationError):
        sample_genesis(PEER, config=config)


def test_genesis_swarm_name_follows_the_swarm_rule() -> None:
    with pytest.raises(ValidationError):
        sample_genesis(PEER, swarm="Bad/Name")


def test_genesis_digest_and_order() -> None:
    early = sample_genesis(PEER, genesis_time=100.0)
    late = sample_genesis(PEER, genesis_time=200.0)
    assert early.digest() != late.digest() and len(early.digest()) == 64
    assert early.digest() == sample_genesis(PEER, genesis_time=100.0).digest()
    assert sorted([late, early], key=GenesisRecord.order_key)[0] == early
    pair = [sample_genesis(PEER, genesis_time=1.0), sample_genesis(OTHER, genesis_time=1.0)]
    tie = sorted(pair, key=GenesisRecord.order_key)
    assert tie[0].creator == min(PEER, OTHER)


def _largest_records() -> list[Any]:
    long_id = "Q" * 64
    digests = [hex_digest(str(i)) for i in range(MAX_DIGESTS_PER_RECORD)]
    return [
        sample_genesis(long_id, task="t" * 256, config={"k": "x" * 4000}),
        sample_peer(long_id, addresses=["/" + "a" * 255] * MAX_ADDRESSES, software_version="v" * 64,
                    role="r" * 32, last_val_loss=-1.2345678901234567e300),
        CommitRecord.model_validate(sample_commit(long_id).to_wire()),
        VoteRecord.model_validate({"voter": long_id, "votes": {
            d: {"accept": True, "loss_delta": -1.2345678901234567e300} for d in digests}}),
        ResultRecord.model_validate({**sample_result(long_id).to_wire(), "accepted": digests}),
    ]


def test_largest_records_stay_far_below_the_dht_process_limit() -> None:
    # The DHT process dies on calls whose pickled arguments pass ~16 KiB (docs/hivemind.md).
    # Check the worst case of each record: its store() arguments as pickled by hivemind,
    # and the signed value the DHT process sends to other nodes.
    validator = RSASignatureValidator(RSAPrivateKey())
    marker = validator.local_public_key
    for record in _largest_records():
        store_args = pickle.dumps((votes_key("demo", 2**40), record.to_wire(), 1e10, marker))
        assert len(store_args) < 12 * 1024, type(record).__name__
        value = MSGPackSerializer.dumps(record.to_wire())
        signed = validator.sign_value(DHTRecord(key_id("k"), MSGPackSerializer.dumps(marker), value, 1e10))
        assert len(signed) + len(marker) < 12 * 1024, type(record).__name__


def test_over_cap_records_are_refused() -> None:
    with pytest.raises(ValidationError, match="config packs to"):
        sample_genesis(PEER, config={"k": "x" * 4100})


def test_owner_fields() -> None:
    assert sample_peer(PEER).owner_peer_id == PEER
    assert sample_votes(OTHER).owner_peer_id == OTHER
    assert sample_genesis(PEER).owner_peer_id is None  # endorsements: see records.py
    assert {type(r).family for r in SAMPLES} == set(KeyFamily)
