"""Proof of work on identities: the price, the check, and where a swarm applies it."""

from __future__ import annotations

import dataclasses

import pytest

from swarmtrain.dht import CommitRecord
from swarmtrain.peer.config import ConfigError, VoteConfig, preset
from swarmtrain.peer.round.decision import Commitment, admit
from swarmtrain.peer.round.simulate import Simulation
from swarmtrain.protocol.work import MAX_IDENTITY_BITS, IdentityWork

SALT = b"\x07" * 32


def test_a_solved_nonce_proves_the_work_for_its_identity_and_salt_only() -> None:
    work = IdentityWork(SALT, 12)
    nonce = work.solve("QmAlice")
    assert work.accepts("QmAlice", nonce)
    assert not work.accepts("QmBob", nonce)  # (fixed inputs: a 1 in 4096 coincidence would show every run)
    # Another swarm (salt) needs its own work.
    assert not IdentityWork(b"\x08" * 32, 12).accepts("QmAlice", nonce)
    # Every nonce below the solved one fails (solve returns the first that works).
    assert not any(work.accepts("QmAlice", n) for n in range(nonce))


def test_free_identities_and_bad_nonces() -> None:
    assert IdentityWork(SALT, 0).accepts("QmAnyone", 0)
    work = IdentityWork(SALT, 8)
    assert not work.accepts("QmAlice", -1) and not work.accepts("QmAlice", 2**64)
    with pytest.raises(ValueError, match="0..30 bits"):
        IdentityWork(SALT, MAX_IDENTITY_BITS + 1)
    with pytest.raises(ConfigError, match="vote.identity_bits"):
        VoteConfig(identity_bits=31)


def test_admission_refuses_commitments_without_the_work_before_anything_else() -> None:
    work = IdentityWork(SALT, 10)
    paid = {a: Commitment(a, bytes([i]) * 32, 16, work.solve(a)) for i, a in enumerate(["h1", "h2"])}
    free = {f"f{i}": Commitment(f"f{i}", bytes([10 + i]) * 32, 16, 0) for i in range(5)}
    admission = admit(3, {**paid, **free}, work=work, cap=3)
    assert set(admission.admitted) == {"h1", "h2"}
    # Refused for the missing work, not for the cap (they never counted toward it).
    assert all(admission.refused[a] == "no proof of work on its identity (10 bits)" for a in free)
    assert set(admit(3, {**paid, **free}).admitted) >= {"h1", "h2"}  # free identities: admitted


def test_commit_records_carry_the_nonce_and_older_records_mean_none() -> None:
    base = dict(peer_id="QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N", digest="ab" * 32, size=10, samples=1,
                base_version="cd" * 32, train_loss=1.0)
    assert CommitRecord(**base).work == 0
    assert CommitRecord(**base, work=12345).work == 12345
    with pytest.raises(ValueError):
        CommitRecord(**base, work=-1)


def test_the_simulator_pays_the_swarms_price_and_its_peers_are_admitted() -> None:
    base = preset("smoke").replace(task="synthetic")
    cfg = base.replace(vote=dataclasses.replace(base.vote, identity_bits=8),
                       train=dataclasses.replace(base.train, inner_steps=5))
    report = Simulation(cfg, peers=3).run_round()
    assert report.accepted == 3 and not any("proof of work" in o.reason for o in report.outcomes)
