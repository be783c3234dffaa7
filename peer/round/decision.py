"""The round's decision as one pure function: commitments and ballots in, verdict out.

Every honest peer, and the one-process simulator, calls :func:`decide` on what it read
of a round, so equal inputs give equal outputs everywhere: who checks which update,
the votes counted for each, which updates are accepted, why the others were rejected,
the merge weight of each accepted update, and the id of the next version. Nothing here
reads a clock, a network or a disk.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from swarmtrain.peer.round.assignment import assignments
from swarmtrain.peer.round.vote import Tally, Verdict, common_rejection, tally
from swarmtrain.protocol import version_id


@dataclass(frozen=True)
class Commitment:
    """What the decision needs of one signed commitment."""

    author: str
    digest: bytes
    samples: int


@dataclass(frozen=True)
class Vote:
    """One checker's published judgement of one update (the reason only for rejections)."""

    accept: bool
    reason: str = ""


@dataclass(frozen=True)
class RoundDecision:
    """The outcome of one round, the same on every peer that read the same records."""

    round: int
    parent: bytes
    authors: dict[bytes, str]                 # digest -> author
    checkers: dict[bytes, tuple[str, ...]]    # digest -> its assigned checkers
    counts: dict[bytes, Tally]                # votes counted from assigned checkers only
    rejections: dict[bytes, str]              # the checkers' most common reason, if any
    weights: dict[bytes, int]                 # merge weight (samples, capped) of every update
    accepted: tuple[bytes, ...]               # sorted digests
    next_version: bytes                       # BLAKE2b(parent, accepted digests)

    @property
    def rejected(self) -> tuple[bytes, ...]:
        return tuple(sorted(set(self.authors) - set(self.accepted)))

    def is_accepted(self, digest: bytes) -> bool:
        return digest in self.accepted

    def reason(self, digest: bytes, mine: Verdict | None = None) -> str:
        """What a history records for ``digest``: "accepted", or this peer's own reason
        when it checked and rejected the update, else its checkers' most common one."""
        if self.is_accepted(digest):
            return "accepted"
        if mine is not None and not mine.accept:
            return mine.reason
        if digest in self.rejections:
            return f"checkers: {self.rejections[digest]}"
        return "majority rejected"


def checker_table(round_index: int, commitments: Mapping[str, Commitment], k: int) -> dict[bytes, tuple[str, ...]]:
    """Who checks which update of the round: every committer is a candidate checker."""
    authors = {c.digest: author for author, c in commitments.items()}
    return {d: tuple(who) for d, who in assignments(round_index, authors, list(commitments), k).items()}


def decide(
    round_index: int,
    parent: bytes,
    commitments: Mapping[str, Commitment],
    ballots: Mapping[str, Mapping[bytes, Vote]],
    *,
    checkers_per_update: int,
    max_samples: int,
) -> RoundDecision:
    """Decide round ``round_index`` of version ``parent``.

    ``commitments`` is keyed by author (one commitment per peer and round, as the DHT
    records are), ``ballots`` by voter. An update is accepted when more of its assigned
    checkers accept than reject it; a lone committer is accepted without votes, since
    nobody can check it and nobody else is affected (otherwise the first peer of a new
    swarm would waste its first rounds). Merge weights are the claimed samples capped at
    ``max_samples``, here and not only at checkers, so no claim can dominate the mean.
    """
    authors = {c.digest: author for author, c in commitments.items()}
    table = checker_table(round_index, commitments, checkers_per_update)
    counts = tally({voter: {d: v.accept for d, v in votes.items()} for voter, votes in ballots.items()}, table)
    if len(authors) == 1:
        counts = {d: Tally(1, 0) for d in authors}
    reasons = {voter: {d: v.reason for d, v in votes.items() if not v.accept and v.reason}
               for voter, votes in ballots.items()}
    accepted = tuple(sorted(d for d, t in counts.items() if t.accepted))
    weights = {c.digest: max(1, min(c.samples, max_samples)) for c in commitments.values()}
    return RoundDecision(
        round=round_index, parent=parent, authors=authors,
        checkers=table, counts=counts,
        rejections=common_rejection(reasons, table), weights=weights, accepted=accepted,
        next_version=version_id(parent, accepted),
    )
