"""Ballots name the commitment set they judged; peers decide over the most named one."""

from __future__ import annotations

import pytest
from memswarm import fake_peer_id

from swarmtrain.dht import CommitRecord, Verdict, VoteRecord
from swarmtrain.peer.round import recompute
from swarmtrain.peer.round.commitset import by_named, commit_set_digest, rebuild
from swarmtrain.peer.round.decision import Commitment
from swarmtrain.peer.round.recompute import commit_views, commitments_of

A, B, C, D, E, X = (fake_peer_id(n) for n in "abcdex")


def _c(author: str, byte: int, samples: int = 8, work: int = 0) -> Commitment:
    return Commitment(author, bytes([byte]) * 32, samples, work)


def _commit(peer: str, digest: str) -> CommitRecord:
    return CommitRecord(peer_id=peer, digest=digest, size=10, samples=8, base_version="0" * 64, train_loss=1.0)


def _ballot(voter: str, judged: list[str], commit_set: bytes | None) -> VoteRecord:
    return VoteRecord(voter=voter, commit_set=None if commit_set is None else commit_set.hex(),
                      votes={d: Verdict(accept=True, loss_delta=0.0, reason="") for d in judged})


def test_the_hash_covers_what_the_decision_reads_and_not_the_order() -> None:
    base = {A: _c(A, 1), B: _c(B, 2)}
    digest = commit_set_digest(base)
    assert commit_set_digest({B: _c(B, 2), A: _c(A, 1)}) == digest
    for changed in ({A: _c(A, 3), B: _c(B, 2)}, {A: _c(A, 1, samples=9), B: _c(B, 2)},
                    {A: _c(A, 1, work=1), B: _c(B, 2)}, {A: _c(A, 1)}, {**base, C: _c(C, 4)}):
        assert commit_set_digest(changed) != digest
    assert len(digest) == 32


def test_views_named_by_voters_with_standing_come_first() -> None:
    views = ["mine", "now", "judged"]
    digests = {v: bytes([i]) * 32 for i, v in enumerate(views)}
    named = {A: digests["now"], B: digests["now"], X: digests["judged"], D: digests["judged"], E: digests["judged"]}
    # Three voters name "judged", but only two with standing name "now".
    assert by_named(views, digests.__getitem__, named, standing={A, B, D})[0] == "now"
    # Without standing anywhere, the count of all voters decides.
    assert by_named(views, digests.__getitem__, named, standing=set())[0] == "judged"
    # Nobody names anything: the peer's own order stands.
    assert by_named(views, digests.__getitem__, {}, standing={A}) == views


def test_a_named_set_is_rebuilt_by_leaving_out_doubtful_commitments() -> None:
    now = {A: _c(A, 1), B: _c(B, 2), C: _c(C, 3), D: _c(D, 4)}
    target = commit_set_digest({A: now[A], C: now[C]})
    assert rebuild(target, now, doubtful=[B, D]) == {A: now[A], C: now[C]}
    assert rebuild(target, now, doubtful=[B]) is None  # D cannot be left out
    assert rebuild(commit_set_digest(now), now, doubtful=[B, D]) == now


def test_peers_that_froze_different_sets_take_the_one_most_voters_with_standing_judged() -> None:
    mine = {A: _commit(A, "aa" * 32), B: _commit(B, "bb" * 32), C: _commit(C, "cc" * 32)}
    now = {**mine, D: _commit(D, "dd" * 32)}   # D's commitment landed right at the deadline
    theirs_hash = commit_set_digest(commitments_of(mine))
    with_d = commit_set_digest(commitments_of(now))
    votes = {A: _ballot(A, ["bb" * 32], theirs_hash), B: _ballot(B, ["cc" * 32], theirs_hash),
             C: _ballot(C, ["aa" * 32, "dd" * 32], with_d)}
    standing = {A, B, C}
    # A peer that froze the set with D (and whose judged view holds D too, since C judged
    # it) rebuilds the set A and B named and decides over it.
    views = commit_views(now, now, votes, standing)
    assert views[0] == mine
    # A peer that froze without D keeps its own set.
    assert commit_views(mine, now, votes, standing)[0] == mine


def test_sets_named_only_by_fresh_identities_are_not_rebuilt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rebuilding costs hashes; identities without standing naming made-up sets must not
    make a peer pay them."""
    calls: list[bytes] = []
    monkeypatch.setattr(recompute, "rebuild", lambda target, *a: calls.append(target))
    now = {A: _commit(A, "aa" * 32), B: _commit(B, "bb" * 32)}
    votes = {fake_peer_id(f"sybil{i}"): _ballot(fake_peer_id(f"sybil{i}"), ["aa" * 32], bytes([i]) * 32)
             for i in range(20)}
    assert commit_views(now, now, votes, standing={A, B})[0] == now
    assert calls == []
    votes[A] = _ballot(A, ["bb" * 32], b"\x99" * 32)
    commit_views(now, now, votes, standing={A, B})
    assert calls == [b"\x99" * 32]
