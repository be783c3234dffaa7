"""Offences and cooling off, from history entries."""

from __future__ import annotations

from swarmtrain.peer.round.offences import OFFENCES_TO_COOL, cooling_off, is_offence, peer_records
from swarmtrain.peer.store.commit import Contribution


def _c(peer: str, reason: str, accepted: bool = False) -> Contribution:
    return Contribution(peer_id=peer, digest="ab", samples=16, accepted=accepted, votes_for=0,
                        votes_against=1, loss_delta=None, reason="accepted" if accepted else reason)


def test_only_rejections_this_peer_saw_for_the_authors_fault_are_offences() -> None:
    assert is_offence(_c("x", "non-finite values in w"))
    assert is_offence(_c("x", "loss rose by 0.3"))
    assert is_offence(_c("x", "refused at merge: shape of w"))
    assert is_offence(_c("x", "duplicate of 12ab's update"))
    # Others' word (colluders may write anything in a ballot) and no-fault causes are not.
    assert not is_offence(_c("x", "checkers: digest mismatch"))
    assert not is_offence(_c("x", "majority rejected"))
    assert not is_offence(_c("x", "payload not downloaded (FetchTimeout)"))
    assert not is_offence(_c("x", "stale base version"))
    assert not is_offence(_c("x", "over the round's cap of 64 commitments"))
    assert not is_offence(_c("x", "cooling off: 3 offences in the last 8 rounds"))
    assert not is_offence(_c("x", "", accepted=True))


def test_three_offences_in_the_window_cool_an_author_off_until_they_age_out() -> None:
    entries = [(r, (_c("bad", "non-finite values"), _c("good", "", accepted=True))) for r in range(3)]
    cooled = cooling_off(entries)
    assert set(cooled) == {"bad"} and cooled["bad"].startswith("cooling off: 3 offences")
    assert "non-finite" in cooled["bad"]
    assert cooling_off(entries[:2]) == {}  # two are not enough
    # Rounds of cooling off itself do not count, so the offences age out of the window.
    later = entries + [(r, (_c("bad", cooled["bad"]),)) for r in range(3, 8)]
    assert set(cooling_off(later)) == {"bad"}  # rounds 0..7: the three offences are in
    assert cooling_off(later + [(8, (_c("bad", cooled["bad"]),))]) == {}  # rounds 1..8: two


def test_colluders_words_cannot_cool_off_an_honest_peer() -> None:
    # Eight rounds in which others' ballots called the peer's update a digest mismatch:
    # this peer did not see it, so it is nothing.
    entries = [(r, (_c("honest", "checkers: digest mismatch"),)) for r in range(8)]
    assert cooling_off(entries) == {}
    records = peer_records(entries)
    assert records["honest"].rejected == 8 and records["honest"].offences == []


def test_records_count_accepted_rejected_and_offences_in_round_order() -> None:
    entries = [(2, (_c("p", "loss rose"),)), (0, (_c("p", "", accepted=True),)), (1, (_c("p", "checkers: x"),))]
    record = peer_records(entries)["p"]
    assert (record.accepted, record.rejected, record.offences, record.last_offence) == (1, 2, [2], "loss rose")
    assert record.to_dict()["offences"] == 1
    assert OFFENCES_TO_COOL == 3
