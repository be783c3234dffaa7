"""The metrics a peer and a bootstrap node export, read back from their own registries."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from hivemind.dht.validation import CompositeValidator, DHTRecord
from hivemind.utils import MSGPackSerializer
from hypothesis import given
from hypothesis import strategies as st

from swarmtrain.dht.identity import Identity, load_or_create_identity
from swarmtrain.dht.keys import commits_key, key_id
from swarmtrain.dht.testing import hex_digest, sample_commit, sample_peer
from swarmtrain.dht.validator import SwarmRecordValidator, swarm_validators
from swarmtrain.peer.app.bootstrap import _CountingValidator
from swarmtrain.peer.metrics import (REASON_CATEGORIES, BootstrapMetrics, PeerMetrics, reason_category,
                                         recorded_contributions)
from swarmtrain.peer.round.engine import RoundSummary
from swarmtrain.peer.store.commit import Contribution
from swarmtrain.peer.store.versions import StoreError
from swarmtrain.peer.training.worker import WorkerStats

PEER = "QmSA2vCtVHmpNqkWxrDRRPPqhpzQecwo4sTWERDmhxGve4"


def value(metrics: PeerMetrics | BootstrapMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def summary(round_: int = 4, **overrides: object) -> RoundSummary:
    fields: dict[str, object] = dict(
        round=round_, version_id=hex_digest(f"v{round_}"), state_checksum=hex_digest("s"), accepted=2, rejected=1,
        mine_accepted=True, validation_loss=3.25, bytes_sent=10, bytes_received=20, seconds=9.0, resynced=False,
        steps=5)
    return RoundSummary(**{**fields, **overrides})  # type: ignore[arg-type]


def contribution(accepted: bool, reason: str) -> Contribution:
    return Contribution(peer_id=PEER, digest=hex_digest(reason), samples=8, accepted=accepted, votes_for=1,
                        votes_against=0, loss_delta=None, reason=reason)


# Reasons as the checks, the decision, the admission and the merge write them.
REAL_REASONS = {
    "payload not downloaded (FetchTimeout)": "not_downloaded",
    "checkers: payload not downloaded": "not_downloaded",
    "digest mismatch: served bytes differ from the commitment": "digest_mismatch",
    "stale base version": "stale_base",
    "replayed update": "replayed",
    "duplicate of QmSA2vCtVHmp's update": "duplicate",
    "over the round's cap of 64 commitments": "over_cap",
    "claims 9999 samples, allowed 1..512": "sample_claim",
    "refused at merge: malformed payload: truncated": "refused_at_merge",
    "malformed payload: bad magic": "malformed",
    "shape of 'layers.0.norm.weight' is (3,), expected (4,)": "malformed",
    "non-finite values in 'w'": "malformed",
    "empty update": "empty",
    "norm 12.3 above 3.0x median 1.1": "norm",
    "checkers: norm 0.001 below 0.1x median 1.1": "norm",
    "held-out loss rose by 0.0312": "loss",
    "loss not finite after update": "loss",
    "majority rejected": "majority",
    "cooling off: 3 offences in the last 8 rounds, latest: held-out loss rose by 0.0312": "cooling_off",
    "no proof of work on its identity (16 bits)": "no_work",
    "near-copy of update 0a1b2c3d4e5f merged last round (cosine 0.998)": "near_copy",
    "checkers: near-copy of update 0a1b2c3d4e5f of this round (cosine 0.97)": "near_copy",
}


def test_every_reason_a_peer_writes_has_its_own_category() -> None:
    for reason, category in REAL_REASONS.items():
        assert reason_category(reason) == category, reason


@given(st.text(max_size=200))
def test_any_reason_text_maps_into_the_fixed_set(reason: str) -> None:
    # A hostile checker writes what it likes into its ballot's reasons.
    assert reason_category(reason) in REASON_CATEGORIES


def test_heartbeats_feed_gauges_and_counters_by_their_increase() -> None:
    metrics = PeerMetrics()
    assert math.isnan(value(metrics, "swarmtrain_heldout_loss") or 0.0)  # unknown until a version is measured
    metrics.peer_status(sample_peer(PEER, round=3, utilisation=0.9, samples_per_s=12.5, resyncs=1),
                        invalid_records=0, fetch_failures=2)
    later = sample_peer(PEER, round=4, version_id=hex_digest("v4"), bytes_sent=1500, bytes_received=2000,
                        updates_accepted=3, last_val_loss=None, resyncs=1)
    metrics.peer_status(later, invalid_records=5, fetch_failures=2)

    assert value(metrics, "swarmtrain_round") == 4
    assert value(metrics, "swarmtrain_sent_bytes_total") == 1500
    assert value(metrics, "swarmtrain_received_bytes_total") == 2000
    assert value(metrics, "swarmtrain_own_updates_total", outcome="accepted") == 3
    assert value(metrics, "swarmtrain_own_updates_total", outcome="rejected") == 1
    assert value(metrics, "swarmtrain_resyncs_total") == 1
    assert value(metrics, "swarmtrain_invalid_records_total") == 5
    assert value(metrics, "swarmtrain_fetch_failures_total") == 2
    assert value(metrics, "swarmtrain_utilisation") == 0.9  # kept while a heartbeat carries none
    assert math.isnan(value(metrics, "swarmtrain_heldout_loss") or 0.0)
    # One version series: the one held now.
    assert value(metrics, "swarmtrain_version", version=hex_digest("v4")[:12]) == 1
    assert value(metrics, "swarmtrain_version", version=hex_digest("v3")[:12]) is None


def test_rounds_count_updates_by_outcome_and_reason_category() -> None:
    metrics = PeerMetrics()
    recorded = [contribution(True, "accepted"), contribution(True, "accepted"),
                contribution(False, "checkers: held-out loss rose by 0.2"), contribution(False, "digest mismatch")]
    metrics.round_done(summary(4), train_loss=4.5, contributions=recorded)
    metrics.round_done(summary(5, validation_loss=3.0), train_loss=math.nan, contributions=None,
                       throughput=WorkerStats(steps=90, samples=1440, busy_seconds=18.0, wall_seconds=20.0),
                       own_totals=(2, 0))

    assert value(metrics, "swarmtrain_rounds_total") == 2
    assert value(metrics, "swarmtrain_updates_total", outcome="accepted", reason="accepted") == 2 + 2
    assert value(metrics, "swarmtrain_updates_total", outcome="rejected", reason="loss") == 1
    assert value(metrics, "swarmtrain_updates_total", outcome="rejected", reason="digest_mismatch") == 1
    assert value(metrics, "swarmtrain_updates_total", outcome="rejected", reason="unrecorded") == 1
    assert value(metrics, "swarmtrain_heldout_loss") == 3.0
    assert value(metrics, "swarmtrain_train_loss") == 4.5  # a round without steps keeps the last one
    # The round it led to, set with the counter: a scrape between the round's end and the
    # next heartbeat once saw rounds_total 1 and round 0.
    assert value(metrics, "swarmtrain_round") == 6
    # The training behind it too: a scrape before the next heartbeat once saw utilisation 0.
    assert value(metrics, "swarmtrain_utilisation") == 0.9
    assert value(metrics, "swarmtrain_samples_per_second") == 72.0
    # And its own updates' outcome: a scrape before the next heartbeat once saw
    # rounds_total 1 and own updates accepted 0 in a round that accepted them all.
    assert value(metrics, "swarmtrain_own_updates_total", outcome="accepted") == 2
    # The heartbeat then carries the same running totals: nothing is counted twice.
    metrics.peer_status(sample_peer(PEER, round=6, updates_accepted=2, updates_rejected=0),
                        invalid_records=0, fetch_failures=0)
    assert value(metrics, "swarmtrain_own_updates_total", outcome="accepted") == 2


class _Store:
    """The one VersionStore method recorded_contributions uses."""

    def __init__(self, commits: dict[str, object]) -> None:
        self.commits = commits

    def commit(self, version_id: str) -> object:
        if version_id not in self.commits:
            raise StoreError(f"no version {version_id}")
        return self.commits[version_id]


def test_recorded_contributions_only_for_a_version_this_round_made() -> None:
    made = (contribution(True, "accepted"),)
    store = _Store({hex_digest("v4"): SimpleNamespace(round=4, contributions=made),
                    hex_digest("v3"): SimpleNamespace(round=3, contributions=made),
                    hex_digest("v5"): SimpleNamespace(round=5, contributions=())})
    assert recorded_contributions(store, summary(4)) == made  # type: ignore[arg-type]
    # The round was not resolved here: the peer stayed on round 3's version.
    assert recorded_contributions(store, summary(4, version_id=hex_digest("v3"))) is None  # type: ignore[arg-type]
    assert recorded_contributions(store, summary(5)) is None  # type: ignore[arg-type]  # downloaded
    assert recorded_contributions(store, summary(6)) is None  # type: ignore[arg-type]  # not in the store


def test_bootstrap_metrics_and_registries_of_their_own() -> None:
    boot, other = BootstrapMetrics(), BootstrapMetrics()  # the global registry would refuse a second set
    assert math.isnan(value(boot, "swarmtrain_swarm_round") or 0.0)
    boot.dht_status(peers=3, stored_keys=7, refused=2, swarm_round=None)
    boot.dht_status(peers=2, stored_keys=9, refused=5, swarm_round=11)
    assert value(boot, "swarmtrain_dht_peers") == 2
    assert value(boot, "swarmtrain_dht_stored_keys") == 9
    assert value(boot, "swarmtrain_dht_refused_records_total") == 5
    assert value(boot, "swarmtrain_swarm_round") == 11
    assert value(other, "swarmtrain_dht_refused_records_total") == 0
    boot.describe(role="bootstrap", peer_id=PEER, swarm="s", software="swarmtrain 0.1.0")
    assert value(boot, "swarmtrain_node_info", role="bootstrap", peer_id=PEER, swarm="s",
                 software="swarmtrain 0.1.0") == 1
    assert value(boot, "swarmtrain_rounds_total") is None  # a bootstrap exports no peer metrics


def test_the_bootstrap_counts_what_its_validators_refuse(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The wrapper a bootstrap node installs in its DHT process: same answers, counted."""
    alice = load_or_create_identity(tmp_path_factory.mktemp("alice"))
    mallory = load_or_create_identity(tmp_path_factory.mktemp("mallory"))
    counting = _CountingValidator(CompositeValidator(swarm_validators(alice, "s")))
    key = key_id(commits_key("s", 3))

    def entry(signer: Identity, marker: bytes, commit: object, key: bytes = key) -> DHTRecord:
        record = DHTRecord(key, MSGPackSerializer.dumps(marker), MSGPackSerializer.dumps(commit), 2e9)
        signed = CompositeValidator(swarm_validators(signer, "s")).sign_value(record)
        return DHTRecord(record.key, record.subkey, signed, 2e9)

    genuine = entry(alice, alice.owner_marker, sample_commit(alice.peer_id).to_wire())
    assert counting.validate(genuine) and counting.refused == 0
    forged = entry(mallory, alice.owner_marker, sample_commit(alice.peer_id).to_wire())  # alice's marker
    impostor = entry(mallory, mallory.owner_marker, sample_commit(alice.peer_id).to_wire())  # claims alice
    assert not counting.validate(forged) and not counting.validate(impostor)
    assert counting.refused == 2
    assert counting.strip_value(genuine) == CompositeValidator(swarm_validators(alice, "s")).strip_value(genuine)
    # add_validators (how round windows move) still reaches the wrapped validator.
    malformed = entry(alice, alice.owner_marker, {"peer_id": "nonsense"}, key=key_id(commits_key("s", 5000)))
    assert counting.validate(malformed)  # round 5000 is outside the window: not one of "our" keys yet
    counting.extend([SwarmRecordValidator("s", range(5000, 5001))])
    assert not counting.validate(malformed)
    assert counting.refused == 3
