"""The round's pure decision: the same inputs give the same verdict on every peer."""

from __future__ import annotations

import hashlib

from swarmtrain.peer.round.decision import MAX_COMMITS, Commitment, Vote, admit, checker_table, decide
from swarmtrain.protocol import version_id

PARENT = b"\x07" * 32
PEERS = ["p1", "p2", "p3", "p4"]


def _commits(samples: dict[str, int] | None = None) -> dict[str, Commitment]:
    return {p: Commitment(p, bytes([i + 1]) * 32, (samples or {}).get(p, 100)) for i, p in enumerate(PEERS)}


def _decide(commits: dict[str, Commitment], ballots: dict[str, dict[bytes, Vote]], k: int = 2):  # type: ignore[no-untyped-def]
    return decide(3, PARENT, commits, ballots, checkers_per_update=k, max_samples=500)


def _all_vote(commits: dict[str, Commitment], accept: dict[bytes, bool], k: int = 2) -> dict[str, dict[bytes, Vote]]:
    table = checker_table(3, commits, k, parent=PARENT)
    return {voter: {d: Vote(accept[d], "" if accept[d] else "loss rose") for d, who in table.items() if voter in who}
            for voter in commits}


def test_majority_of_assigned_checkers_decides_and_the_version_follows() -> None:
    commits = _commits()
    bad = commits["p4"].digest
    decision = _decide(commits, _all_vote(commits, {c.digest: c.digest != bad for c in commits.values()}))
    assert decision.accepted == tuple(sorted(c.digest for p, c in commits.items() if p != "p4"))
    assert decision.rejected == (bad,)
    assert decision.reason(bad) == "checkers: loss rose"
    assert decision.next_version == version_id(PARENT, decision.accepted)
    assert all(len(who) == 2 and commits[decision.authors[d]].author not in who for d, who in decision.checkers.items())


def test_votes_of_unassigned_peers_are_ignored() -> None:
    commits = _commits()
    target = commits["p1"].digest
    ballots = _all_vote(commits, {c.digest: True for c in commits.values()})
    outsiders = [p for p in PEERS if p not in checker_table(3, commits, 2, parent=PARENT)[target] and p != "p1"]
    for p in outsiders:
        ballots[p][target] = Vote(False, "stuffed")
    assert _decide(commits, ballots).is_accepted(target)


def test_a_lone_committer_is_accepted_without_votes_and_nothing_else_is() -> None:
    lone = {"p1": Commitment("p1", b"\x01" * 32, 10)}
    assert _decide(lone, {}).accepted == (b"\x01" * 32,)
    assert _decide(_commits(), {}).accepted == ()  # several committers, nobody voted: nothing


def test_merge_weights_are_capped_claims() -> None:
    commits = _commits({"p1": 10**9, "p2": 0, "p3": 250})
    weights = _decide(commits, {}).weights
    assert weights[commits["p1"].digest] == 500  # capped
    assert weights[commits["p2"].digest] == 1    # at least one sample
    assert weights[commits["p3"].digest] == 250


def test_the_decision_does_not_depend_on_the_order_records_were_read_in() -> None:
    commits = _commits()
    ballots = _all_vote(commits, {c.digest: c.author != "p2" for c in commits.values()})
    a = _decide(commits, ballots)
    b = _decide(dict(reversed(list(commits.items()))), dict(reversed(list(ballots.items()))))
    assert a == b


def test_a_copied_digest_is_kept_once_whichever_order_peers_read_the_records_in() -> None:
    """Two authors of one digest: every peer keeps the same one, with one weight (the
    records once gave peers different merge weights, so equal version ids with unequal
    checksums)."""
    commits = _commits()
    copy = Commitment("copier", commits["p2"].digest, 10**6)
    forward = {**commits, "copier": copy}
    backward = dict(reversed(list(forward.items())))
    a, b = decide(3, PARENT, forward, {}, checkers_per_update=2, max_samples=500), \
        decide(3, PARENT, backward, {}, checkers_per_update=2, max_samples=500)
    assert a == b
    assert a.authors[copy.digest] == "p2" and a.weights[copy.digest] == 100  # the smaller claim
    assert a.refused == {"copier": "duplicate of p2's update"}
    assert "copier" not in {p for who in a.checkers.values() for p in who}


def test_standing_wins_a_copied_digest() -> None:
    commits = {"old": Commitment("old", b"\x05" * 32, 400), "new": Commitment("new", b"\x05" * 32, 1)}
    decision = decide(3, PARENT, commits, {}, checkers_per_update=2, max_samples=500, standing={"old"})
    assert decision.authors == {b"\x05" * 32: "old"} and "new" in decision.refused


def test_a_flood_of_commitments_is_capped_and_peers_with_standing_come_first() -> None:
    flood = {f"sybil{i:03d}": Commitment(f"sybil{i:03d}", i.to_bytes(2, "big") * 16, 100) for i in range(200)}
    honest = {p: Commitment(p, bytes([0xF0 + i]) * 32, 100) for i, p in enumerate(["h1", "h2", "h3"])}
    admission = admit(5, {**flood, **honest}, standing={"h1", "h2", "h3"})
    assert len(admission.admitted) == MAX_COMMITS
    assert {"h1", "h2", "h3"} <= set(admission.admitted)
    assert len(admission.refused) == 203 - MAX_COMMITS
    assert all("cap" in why for why in admission.refused.values())
    decision = decide(5, PARENT, {**flood, **honest}, {}, checkers_per_update=3, max_samples=500,
                      standing={"h1", "h2", "h3"})
    # No peer is assigned more checks than one ballot record holds.
    per_checker: dict[str, int] = {}
    for who in decision.checkers.values():
        for p in who:
            per_checker[p] = per_checker.get(p, 0) + 1
    assert max(per_checker.values()) <= MAX_COMMITS


def test_checks_go_to_committers_with_standing_once_there_are_two() -> None:
    commits = {p: Commitment(p, bytes([i]) * 32, 8) for i, p in enumerate("abcdef")}
    table = checker_table(0, commits, 2, standing={"a", "b"})
    assert {p for who in table.values() for p in who} == {"a", "b"}
    # "z" has standing but did not commit: nobody with standing checks, so everyone does.
    everyone = checker_table(0, commits, 2, standing={"z"})
    assert everyone == checker_table(0, commits, 2) and len({p for w in everyone.values() for p in w}) > 2


def test_a_lone_peer_with_standing_checks_the_rest_and_everyone_else_checks_it() -> None:
    commits = {p: Commitment(p, bytes([i]) * 32, 8) for i, p in enumerate("abcdef")}
    table = checker_table(0, commits, 2, standing={"a"})
    for digest, who in table.items():
        if digest == commits["a"].digest:
            assert len(who) == 2 and "a" not in who
        else:
            assert who == ("a",)


def test_a_founder_stops_a_colluding_majority_present_from_round_0() -> None:
    """4 colluders accept each other and reject the 3 honest peers. Drawn from every
    committer they used to carry round 0 (and keep standing from then on); with the
    founder's standing, round 0's checks of the others are the founder's."""
    honest, sybils = ["h1", "h2", "h3"], ["s1", "s2", "s3", "s4"]
    commits = {p: Commitment(p, hashlib.blake2b(p.encode(), digest_size=32).digest(), 8) for p in honest + sybils}

    def ballots(standing: set[str], parent: bytes, founder: str | None) -> dict[str, dict[bytes, Vote]]:
        table = checker_table(0, commits, 2, standing, parent=parent, founder=founder)
        out: dict[str, dict[bytes, Vote]] = {}
        for digest, who in table.items():
            author = next(a for a, c in commits.items() if c.digest == digest)
            for voter in who:
                fellow = (voter in sybils) == (author in sybils)
                out.setdefault(voter, {})[digest] = Vote(fellow)
        return out

    def accepted(standing: set[str], parent: bytes, founder: str | None = None) -> set[str]:
        decision = decide(0, parent, commits, ballots(standing, parent, founder), checkers_per_update=2,
                          max_samples=8, standing=standing, founder=founder)
        return {decision.authors[d] for d in decision.accepted}

    parents = [bytes([i]) * 32 for i in range(12)]  # new swarms: the draw differs with the genesis
    # The capture, without a founder: in some new swarms only colluders are merged.
    assert any(accepted(set(), p) and accepted(set(), p) <= set(sybils) for p in parents)
    # A lone peer with standing that is not the founder has its own update drawn from
    # everyone else, and there the colluders veto it in some swarms.
    assert any("h1" not in accepted({"h1"}, p) for p in parents)
    for parent in parents:
        assert {"h2", "h3"} <= accepted({"h1"}, parent) <= set(honest), parent
        # The founder's own update is not theirs to veto: all honest work is merged.
        assert accepted({"h1"}, parent, founder="h1") == set(honest), parent


def test_the_founder_alone_with_standing_is_not_checked_and_otherwise_is() -> None:
    commits = {p: Commitment(p, bytes([i]) * 32, 8) for i, p in enumerate("abcdef")}
    table = checker_table(0, commits, 2, standing={"a"}, founder="a")
    assert table[commits["a"].digest] == ()
    assert all(who == ("a",) for d, who in table.items() if d != commits["a"].digest)
    decision = decide(0, PARENT, commits, {}, checkers_per_update=2, max_samples=8, standing={"a"}, founder="a")
    assert decision.accepted == (commits["a"].digest,)  # accepted without votes; the rest had none
    # Once another committer has standing too, the founder is checked like everyone.
    shared = checker_table(0, commits, 2, standing={"a", "b"}, founder="a")
    assert shared[commits["a"].digest] == ("b",)
    # A founder without standing (its update was rejected last round) is checked too.
    assert len(checker_table(0, commits, 2, standing={"b"}, founder="a")[commits["a"].digest]) == 1


def test_a_tie_goes_to_an_author_with_standing_and_never_without_an_accept() -> None:
    from swarmtrain.peer.round.decision import passes
    from swarmtrain.peer.round.vote import Tally
    assert passes(Tally(1, 1), author_has_standing=True)
    assert not passes(Tally(1, 1), author_has_standing=False)
    assert not passes(Tally(0, 0), author_has_standing=True)
    assert passes(Tally(2, 1), author_has_standing=False) and not passes(Tally(1, 2), author_has_standing=True)
