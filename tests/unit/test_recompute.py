"""Verified agreement: a peer adopts another peer's version only by recomputing it."""

from __future__ import annotations

from pathlib import Path

import pytest
from memswarm import MemoryPeer, fake_peer_id, lockstep_round, memory_swarm
from test_round_engine import CONFIG

from swarmtrain.dht import CommitRecord, ResultRecord, Verdict, VoteRecord
from swarmtrain.peer.round.merge import OuterOptimizer
from swarmtrain.peer.round.recompute import Claim, ballots_of, claims, commit_views
from swarmtrain.peer.round.state import ModelState, checksum_of, load_version
from swarmtrain.peer.store.errors import StoreError
from swarmtrain.peer.store.payloads import PayloadHistory
from swarmtrain.peer.store.state import pack_state
from swarmtrain.protocol import version_id

A, B, C, D = (fake_peer_id(n) for n in "abcd")


def _result(peer: str, version: str, checksum: str, accepted: list[str] | None = None) -> ResultRecord:
    return ResultRecord(peer_id=peer, version_id=version, state_checksum=checksum, accepted=accepted or [])


def test_claims_group_identical_results_most_holders_first() -> None:
    results = {A: _result(A, "a" * 64, "1" * 64), B: _result(B, "a" * 64, "1" * 64),
               C: _result(C, "a" * 64, "2" * 64), D: _result(D, "b" * 64, "1" * 64)}
    found = claims(3, results)
    assert [(c.version[0], c.checksum[0], len(c.holders)) for c in found] == [("a", "1", 2), ("a", "2", 1),
                                                                            ("b", "1", 1)]
    assert found[0].holders == tuple(sorted((A, B))) and found[0].round == 3
    assert claims(3, {}) == []


def _commit(peer: str, digest: str) -> CommitRecord:
    return CommitRecord(peer_id=peer, digest=digest, size=10, samples=8, base_version="0" * 64, train_loss=1.0)


def test_commit_views_try_the_frozen_set_then_all_then_only_the_judged() -> None:
    frozen = {A: _commit(A, "aa" * 32), B: _commit(B, "bb" * 32)}
    now = {**frozen, C: _commit(C, "cc" * 32)}  # C came after the deadline: nobody judged it
    votes = {D: VoteRecord(voter=D, votes={
        "aa" * 32: Verdict(accept=True, loss_delta=0.0, reason=""),
        "bb" * 32: Verdict(accept=True, loss_delta=0.0, reason="")})}
    assert commit_views(frozen, now, votes) == [frozen, now]  # the judged set equals the frozen one
    assert commit_views(None, now, votes) == [now, frozen]


def _parent(peer: MemoryPeer) -> ModelState:
    """V(0) as held in ``peer``'s store, with an outer optimizer of its own."""
    head = peer.ctx.store.commit(peer.state.version.hex())
    return load_version(peer.ctx.store, head.parent_id or "", OuterOptimizer(CONFIG.outer), next_round=0)


def test_a_peer_that_could_not_merge_recomputes_the_version_from_payloads_held_by_others(tmp_path: Path) -> None:
    peers, clock, _ = memory_swarm(tmp_path, CONFIG, ["a", "b", "c", "d"])
    *early, late = peers
    lockstep_round(early, clock, 0, before=20, after=5)
    v1 = early[0].state
    blobs = late.ctx.exchange.blobs  # type: ignore[attr-defined]
    # Author a has left: its payload is only served by the peers that merged it. No state
    # is served at all, so an adoption can only come from recomputation.
    for key in [k for k in blobs if k[0] == early[0].ctx.peer_id or k[1] == "state"]:
        del blobs[key]
    new, resynced = late.sync.agree(0, late.state, None)
    assert (new.version, new.checksum, new.round) == (v1.version, v1.checksum, 1) and resynced
    assert late.sync.resyncs == 1 and late.sync.disagreements == 0
    assert any("recomputed version" in line for line in late.lines)
    history = late.ctx.store.commit(v1.version.hex())
    assert {c.peer_id for c in history.accepted} == {p.ctx.peer_id for p in early}


@pytest.mark.parametrize("forgery", ["accepts-the-rejected", "other-checksum"])
def test_a_majority_of_fake_results_is_not_adopted(tmp_path: Path, forgery: str) -> None:
    """Agreement used to be a head-count: more fake results than honest ones made every
    honest peer replace its own merge. Now the fakes' claim must come out of the parent,
    the signed records and the payloads, and it does not."""
    peers, clock, table = memory_swarm(tmp_path, CONFIG, ["a", "b", "c", "flip"], faults={"flip": "sign-flip"})
    lockstep_round(peers, clock, 0, before=30, after=5)
    a = peers[0]
    v1 = a.state
    parent = _parent(a)
    # A state that passes every shape and finiteness check: the honest one, nudged.
    forged = {name: t + 0.01 for name, t in v1.params.items()}
    extra = v1.outer.state()
    fake_checksum = checksum_of(forged, extra)
    if forgery == "accepts-the-rejected":
        everything = sorted(bytes.fromhex(c.digest) for c in table.rows[("commits", 0)].values())
        fake_version, accepted = version_id(parent.version, everything).hex(), [d.hex() for d in everything]
    else:
        honest = sorted(bytes.fromhex(c.digest) for c in a.ctx.store.commit(v1.version.hex()).accepted)
        fake_version, accepted = v1.version.hex(), [d.hex() for d in honest]
    for name in ("x1", "x2", "x3", "x4", "x5"):
        fake = fake_peer_id(name)
        table.rows[("results", 0)][fake] = _result(fake, fake_version, fake_checksum, accepted)
        a.ctx.exchange.blobs[(fake, "state", fake_version)] = pack_state(forged, extra)  # type: ignore[attr-defined]
    new, resynced = a.sync.agree(0, parent, v1)
    assert new is v1 and not resynced
    assert a.ctx.store.commit(fake_version).state_checksum != fake_checksum if forgery == "other-checksum" \
        else not a.ctx.store.has_state(fake_version)
    assert a.sync.disagreements == 1 and a.sync.resyncs == 0
    line = next(line for line in a.lines if "not adopting" in line)
    assert "5 peer(s)" in line and f"keeping my own {v1.version.hex()[:12]}" in line


def test_a_claim_on_another_parent_is_not_a_child_of_the_held_version(tmp_path: Path) -> None:
    peers, clock, table = memory_swarm(tmp_path, CONFIG, ["a", "b"])
    lockstep_round(peers, clock, 0, before=20, after=0)
    a = peers[0]
    stranger = Claim(0, "ab" * 32, "cd" * 32, frozenset(), (fake_peer_id("x"),))
    result = a.sync.recomputer.recompute(0, _parent(a).version, stranger, deadline=clock.time() + 5)
    assert isinstance(result, str) and "do not follow from version" in result


def test_payload_history_keeps_rounds_across_a_restart_and_prunes_old_ones(tmp_path: Path) -> None:
    history = PayloadHistory(tmp_path / "p", keep_rounds=2)
    history.put(1, "11" * 32, b"one")
    history.put(2, "22" * 32, b"two")
    reopened = PayloadHistory(tmp_path / "p", keep_rounds=2)
    assert reopened.get("11" * 32) == b"one" and set(reopened.digests()) == {"11" * 32, "22" * 32}
    assert reopened.prune(current_round=4) == ["11" * 32]
    assert reopened.get("11" * 32) is None and reopened.get("22" * 32) == b"two"
    with pytest.raises(StoreError, match="not a payload digest"):
        reopened.put(3, "../etc", b"x")


def test_a_kept_payload_is_served_after_a_full_disk_from_memory(tmp_path: Path) -> None:
    """Keeping history helps others; a disk that refuses it must not stop the round."""
    peers, clock, _ = memory_swarm(tmp_path, CONFIG, ["a"])
    a = peers[0]

    def refuse(*_args: object) -> None:
        raise StoreError("could not write (ENOSPC: No space left on device); free disk space")
    a.sync.payloads.history.put = refuse  # type: ignore[method-assign]
    a.sync.payloads.keep(0, bytes.fromhex("33" * 32), b"payload")
    a.sync.payloads.keep(0, bytes.fromhex("44" * 32), b"payload2")
    fetched = a.ctx.exchange.fetch(a.ctx.peer_id, "update", "33" * 32, max_size=100, timeout=1.0)
    assert fetched == b"payload"
    assert sum("could not keep update payloads" in line for line in a.lines) == 1


def test_fake_identities_without_standing_draw_no_checks(tmp_path: Path) -> None:
    """2H fake commitments used to draw every check of every honest update (0 of H
    accepted). Checks now go to committers whose update the parent version merged."""
    from swarmtrain.peer.config import max_samples
    from swarmtrain.peer.round.decision import decide
    from swarmtrain.peer.round.recompute import commitments_of, standing_of
    peers, clock, table = memory_swarm(tmp_path, CONFIG, ["a", "b", "c"])
    lockstep_round(peers, clock, 0, before=20, after=0)  # a, b and c earn standing
    base = peers[0].state.version.hex()
    sybils = [fake_peer_id(f"sybil{i}") for i in range(6)]
    for i, s in enumerate(sybils):
        table.rows.setdefault(("commits", 1), {})[s] = CommitRecord(
            peer_id=s, digest=f"{i + 1:02x}" * 32, size=100, samples=10_000, base_version=base, train_loss=0.1)

    def sybils_vote() -> None:
        commits = table.rows[("commits", 1)]
        for s in sybils:
            table.rows.setdefault(("votes", 1), {})[s] = VoteRecord(voter=s, votes={
                c.digest: Verdict(accept=author in sybils, loss_delta=-1.0, reason="" if author in sybils else "no")
                for author, c in list(commits.items())[:64] if author != s})

    lockstep_round(peers, clock, 1, before=20, after=0, after_votes=sybils_vote)
    history = peers[0].ctx.store.commit(peers[0].state.version.hex())
    assert {c.peer_id for c in history.accepted} == {p.ctx.peer_id for p in peers}
    assert len({(p.state.version, p.state.checksum) for p in peers}) == 1
    # The same records decided as before (every committer a checker): the capture works.
    open_draw = decide(1, bytes.fromhex(history.parent_id or ""), commitments_of(table.rows[("commits", 1)]),
                       ballots_of(table.rows[("votes", 1)]), checkers_per_update=CONFIG.vote.checkers_per_update,
                       max_samples=max_samples(CONFIG), standing=())
    honest = {p.ctx.peer_id for p in peers}
    assert sum(open_draw.authors[d] in honest for d in open_draw.accepted) < 3
    assert standing_of(peers[0].ctx.store, peers[0].state.version) == frozenset(honest)


def test_a_colluding_majority_present_from_round_0_meets_the_founder(tmp_path: Path) -> None:
    """4 colluding identities commit in a new swarm's round 0 and vote for each other
    and against everyone else. Drawn from every committer, they used to carry the round
    and keep standing for good; the genesis' creator now checks round 0 alone, and its
    own update, which they were drawn to check and rejected, is accepted without votes."""
    from swarmtrain.peer.round.recompute import standing_of
    peers, clock, table = memory_swarm(tmp_path, CONFIG, ["a", "b", "c"])
    genesis = peers[0].state.version
    sybils = [fake_peer_id(f"sybil{i}") for i in range(4)]
    for i, s in enumerate(sybils):
        table.rows.setdefault(("commits", 0), {})[s] = CommitRecord(
            peer_id=s, digest=f"{i + 1:02x}" * 32, size=100, samples=10_000, base_version=genesis.hex(),
            train_loss=0.1)

    def sybils_vote() -> None:
        commits = table.rows[("commits", 0)]
        for s in sybils:
            table.rows.setdefault(("votes", 0), {})[s] = VoteRecord(voter=s, votes={
                c.digest: Verdict(accept=author in sybils, loss_delta=-1.0, reason="" if author in sybils else "no")
                for author, c in commits.items() if author != s})

    assert standing_of(peers[1].ctx.store, genesis, peers[0].ctx.peer_id) == {peers[0].ctx.peer_id}
    lockstep_round(peers, clock, 0, before=20, after=0, after_votes=sybils_vote)
    history = peers[0].ctx.store.commit(peers[0].state.version.hex())
    merged = {c.peer_id for c in history.accepted}
    assert not merged & set(sybils)
    assert merged == {p.ctx.peer_id for p in peers}
    assert len({(p.state.version, p.state.checksum) for p in peers}) == 1
