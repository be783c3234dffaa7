"""Per-peer records from the version history, and who is cooling off.

A peer's history entry of each round lists every commitment with its outcome and a
reason. From the last rounds of it this module counts, per author, updates accepted and
rejected, and *offences*: rejections this peer saw for itself (its own check, its own
admission or merge refusing the update) for a reason that is the author's fault. An
author with :data:`OFFENCES_TO_COOL` offences in the last :data:`OFFENCE_WINDOW` rounds
is cooling off: this peer does not download its updates to check them, and rejects them
with a reason that is not itself an offence, so the author is back once its offences
age out of the window.

Why only what this peer saw itself: other checkers' reasons come from their ballots,
and colluders can write anything there ("digest mismatch" for an honest update). Counting
their word would let them cool off honest peers in rounds where honest checkers are
drawn. A peer's own judgements cannot be forged by anyone else; an honest update's
rare noisy rejection (a few per hundred) does not reach 3 in 8 rounds.

Cooling off is each checker's own policy, not part of the round's decision: it changes
what a checker votes, never how votes are counted, so peers whose windows differ by a
round still compute the same version from the same ballots.

Pure: history entries in, records out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from swarmtrain.peer.store.commit import Contribution

# How many of the latest rounds' history entries are read.
OFFENCE_WINDOW = 8
# Offences within the window that make an author cool off.
OFFENCES_TO_COOL = 3

# A reason given by other checkers (the round's most common) or by nobody in particular:
# not this peer's own observation (see the module docstring).
_OTHERS_WORD = ("checkers: ", "majority rejected")
# Rejections that are not the author's fault: the network, a slow peer, the round's cap,
# a commitment that arrived late, and cooling off itself (else it would never end).
_NO_FAULT = ("not downloaded", "could not be fetched", "stale base", "over the round's cap",
             "committed after", "cooling off")


def is_offence(contribution: Contribution) -> bool:
    """Whether this history entry is an offence of its author, as this peer saw it."""
    if contribution.accepted:
        return False
    reason = contribution.reason
    if reason.startswith(_OTHERS_WORD):
        return False
    return not any(word in reason for word in _NO_FAULT)


@dataclass
class PeerRecord:
    """One author's record over the rounds read."""

    accepted: int = 0
    rejected: int = 0
    offences: list[int] = field(default_factory=list)  # rounds (history entries) of each offence
    last_offence: str = ""  # the reason of its latest offence

    def to_dict(self) -> dict[str, object]:
        return {"accepted": self.accepted, "rejected": self.rejected, "offences": len(self.offences),
                "last_offence": self.last_offence}


def peer_records(rounds: Iterable[tuple[int, Sequence[Contribution]]]) -> dict[str, PeerRecord]:
    """Per-author counts from ``(round, contributions)`` history entries, in any order."""
    records: dict[str, PeerRecord] = {}
    for round_, contributions in sorted(rounds, key=lambda entry: entry[0]):
        for c in contributions:
            record = records.setdefault(c.peer_id, PeerRecord())
            if c.accepted:
                record.accepted += 1
                continue
            record.rejected += 1
            if is_offence(c):
                record.offences.append(round_)
                record.last_offence = c.reason
    return records


def cooling_off(rounds: Iterable[tuple[int, Sequence[Contribution]]], *, window: int = OFFENCE_WINDOW,
                threshold: int = OFFENCES_TO_COOL) -> dict[str, str]:
    """Author -> the rejection reason for its updates, for every author cooling off after
    the latest ``window`` of ``rounds``."""
    latest = sorted(rounds, key=lambda entry: entry[0])[-window:]
    return {
        author: f"cooling off: {len(record.offences)} offences in the last {window} rounds, "
                f"latest: {record.last_offence:.60}"
        for author, record in sorted(peer_records(latest).items())
        if len(record.offences) >= threshold
    }
