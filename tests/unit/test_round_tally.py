"""What a peer records about each update of a round: votes, reasons, its ballot record."""

from __future__ import annotations

from swarmtrain.dht import REASON_CHARS
from swarmtrain.dht.schemas import MAX_DIGESTS_PER_RECORD
from swarmtrain.peer.round.decision import RoundDecision
from swarmtrain.peer.round.engine import ballot
from swarmtrain.peer.round.vote import Tally, Verdict, common_rejection, reject

VOTER = "QmWEcoHcsQwbE63aTEx4Pwz6e7g2uackPKXhRfgFWktpW3"
D1, D2, D3 = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32


def test_common_rejection_counts_only_assigned_checkers_and_breaks_ties_alphabetically() -> None:
    reasons = {
        "a": {D1: "digest mismatch", D2: "norm 9 above"},
        "b": {D1: "digest mismatch", D2: "loss rose"},
        "c": {D1: "stale base version"},
        "intruder": {D1: "stale base version", D3: "made up"},
    }
    checkers = {D1: ["a", "b", "c"], D2: ["a", "b"], D3: ["a"]}
    assert common_rejection(reasons, checkers) == {D1: "digest mismatch", D2: "loss rose"}


def _view() -> RoundDecision:
    return RoundDecision(round=0, parent=b"\0" * 32, authors={D1: "p1", D2: "p2", D3: "p3"}, checkers={},
                         counts={D1: Tally(2, 0), D2: Tally(0, 2), D3: Tally(0, 1)},
                         rejections={D2: "digest mismatch"}, weights={D1: 1, D2: 1, D3: 1},
                         accepted=(D1,), next_version=b"\1" * 32, refused={})


def test_history_reason_prefers_my_own_then_the_checkers_then_the_tally() -> None:
    view = _view()
    assert view.accepted == (D1,) and view.rejected == (D2, D3)
    assert view.reason(D1, None) == "accepted"
    assert view.reason(D2, reject("norm 99 above 4x median 9")) == "norm 99 above 4x median 9"
    assert view.reason(D2, Verdict(True, "ok")) == "checkers: digest mismatch"  # outvoted
    assert view.reason(D2, None) == "checkers: digest mismatch"
    assert view.reason(D3, None) == "majority rejected"  # checkers gave no reason


def test_ballot_carries_short_printable_reasons_for_rejections_only() -> None:
    verdicts = {D1: Verdict(True, "ok", 2.0, 1.5), D2: reject("malformed payload: caf\u00e9\n" + "x" * 80)}
    record = ballot(VOTER, verdicts)
    assert record.votes[D1.hex()].reason == "" and record.votes[D1.hex()].loss_delta == -0.5
    reason = record.votes[D2.hex()].reason
    assert len(reason) == REASON_CHARS and reason.startswith("malformed payload: caf??") and reason.endswith("...")
    assert not record.votes[D2.hex()].accept and record.votes[D2.hex()].loss_delta == 0.0


def test_a_ballot_too_big_for_reasons_is_still_published_without_them() -> None:
    verdicts = {bytes([i]) * 32: reject("r" * 100) for i in range(MAX_DIGESTS_PER_RECORD)}
    record = ballot(VOTER, verdicts, commit_set=b"\x07" * 32)  # the set it judged fits too
    assert len(record.votes) == MAX_DIGESTS_PER_RECORD and record.commit_set == "07" * 32
    assert all(not v.accept and v.reason == "" for v in record.votes.values())
