"""The round's decision as one pure function: commitments and ballots in, verdict out.

Every honest peer, and the one-process simulator, calls :func:`decide` on what it read
of a round, so equal inputs give equal outputs everywhere: who checks which update,
the votes counted for each, which updates are accepted, why the others were rejected,
the merge weight of each accepted update, and the id of the next version. Nothing here
reads a clock, a network or a disk.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from swarmtrain.dht import MAX_DIGESTS_PER_RECORD
from swarmtrain.peer.round.assignment import assignments
from swarmtrain.peer.round.vote import Tally, Verdict, common_rejection, tally
from swarmtrain.protocol import version_id
from swarmtrain.protocol.work import IdentityWork


@dataclass(frozen=True)
class Commitment:
    """What the decision needs of one signed commitment."""

    author: str
    digest: bytes
    samples: int
    work: int = 0  # the nonce proving the work on the author's identity (see admit)


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
    refused: dict[str, str]                   # author -> why its commitment was not admitted

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


# A round admits at most this many commitments: a ballot (one DHT record) holds at most
# this many verdicts, and a result this many accepted digests, so no round can produce a
# record that fails validation; a flood of identities cannot make every peer check more.
MAX_COMMITS = MAX_DIGESTS_PER_RECORD


def merge_weight(samples: int, max_samples: int) -> int:
    """An update's weight in the merge: its claimed samples, capped so no claim dominates."""
    return max(1, min(samples, max_samples))


def round_weight(commitments: Mapping[str, Commitment], max_samples: int) -> int:
    """The merge weights of all the round's commitments together: each update's share of
    the merge is its own weight over this."""
    return sum(merge_weight(c.samples, max_samples) for c in commitments.values())


def _priority(round_index: int, author: str) -> bytes:
    h = hashlib.blake2b(digest_size=16, person=b"swarmtrain-adm")
    h.update(round_index.to_bytes(8, "big"))
    h.update(author.encode())
    return h.digest()


@dataclass(frozen=True)
class Admission:
    """The commitments a round considers, and why the others were refused (by author)."""

    admitted: dict[str, Commitment]
    refused: dict[str, str]


def admit(round_index: int, commitments: Mapping[str, Commitment], *, standing: Collection[str] = (),
          cap: int = MAX_COMMITS, work: IdentityWork | None = None) -> Admission:
    """Which of the round's commitments are checked and may be merged.

    In a swarm that prices identities (``work``), a commitment whose author shows no
    proof of the work is refused first: it neither checks nor counts toward the cap.
    One digest committed by several authors (a byte-for-byte copy) is kept once, under
    the author with standing, then the smaller sample claim, then the round's draw: the
    update is the same either way, and no two peers may weigh it differently. Beyond
    ``cap`` commitments, authors with standing (accepted in the parent version) come
    first, then the rest in the round's draw order.
    """
    def order(author: str) -> tuple[bool, int, bytes]:
        return (author not in standing, commitments[author].samples, _priority(round_index, author))

    refused: dict[str, str] = {}
    if work is not None and work.bits:
        for author in sorted(commitments):
            if not work.accepts(author, commitments[author].work):
                refused[author] = f"no proof of work on its identity ({work.bits} bits)"
    by_digest: dict[bytes, str] = {}
    for author in sorted((a for a in commitments if a not in refused), key=order):
        first = by_digest.setdefault(commitments[author].digest, author)
        if first != author:
            refused[author] = f"duplicate of {first[:12]}'s update"
    kept = sorted(by_digest.values(), key=lambda a: (a not in standing, _priority(round_index, a)))
    for author in kept[cap:]:
        refused[author] = f"over the round's cap of {cap} commitments"
    return Admission({a: commitments[a] for a in sorted(kept[:cap])}, refused)


# Committers with standing needed before every check is theirs (with one, its own update
# would go unchecked; see checker_table for that case).
MIN_STANDING_CHECKERS = 2


def passes(count: Tally, author_has_standing: bool) -> bool:
    """Whether an update with these votes is merged: more of its checkers accept than
    reject; on a tie with at least one accept, when its author has standing.

    Checks drawn from peers with standing leave a 3-peer swarm two checkers per update,
    and one checker's held-out loss rising by a hair (noise at the update's small merge
    weight) made 1-1, a rejection of honest work. The tie goes to an author whose last
    update was merged: one colluding checker cannot then veto an honest peer, while a
    newcomer (a fresh identity) still needs a majority.
    """
    if count.votes_for != count.votes_against:
        return count.votes_for > count.votes_against
    return count.votes_for > 0 and author_has_standing


def checker_candidates(commitments: Mapping[str, Commitment], standing: Collection[str]) -> list[str]:
    """The admitted committers with standing (their update was merged into the parent
    version, or they founded the swarm), sorted."""
    return sorted(a for a in commitments if a in standing)


def checker_table(round_index: int, commitments: Mapping[str, Commitment], k: int,
                  standing: Collection[str] = (), parent: bytes = b"",
                  founder: str | None = None) -> dict[bytes, tuple[str, ...]]:
    """Who checks which admitted update of the round.

    - At least :data:`MIN_STANDING_CHECKERS` committers with standing: they alone are
      drawn. A new identity costs one key, so identities alone must not buy checks:
      before this, 2H fake commitments drew every check of every honest update. Standing
      costs an update that peers with standing judged useful; it lasts while the peer
      keeps being merged.
    - Exactly one (a new swarm's founder in round 0, or the only peer merged last
      round): it checks every other update alone, and its own is drawn from everyone
      else. Before, a new swarm's round 0 drew from every committer, and a colluding
      majority present from the start voted itself in and kept standing for good.
      When that one is the ``founder`` (the genesis' creator), its own update has no
      checkers and is accepted without votes (:func:`decide`): every joiner already
      trusts the founder through the genesis it pinned, while newcomers, who have
      earned nothing, vetoed its round-0 update on real peers (4 and 6 colluders, both
      runs), which also cost it standing for round 1, where a 1-1 tie then rejected
      its next honest update. Any other lone peer with standing stays checked by the
      rest: it may have reached standing by outlasting the others, and the newcomers'
      veto is what stops it from poisoning while it alone judges everyone else.
    - None: every committer is drawn (a swarm whose founder left before round 0).

    An update with no checkers (a lone committer, or the trusted founder above) is
    accepted without votes.
    """
    authors = {c.digest: author for author, c in commitments.items()}
    with_standing = checker_candidates(commitments, standing)
    if len(with_standing) >= MIN_STANDING_CHECKERS:
        return {d: tuple(who) for d, who in assignments(round_index, authors, with_standing, k, parent).items()}
    everyone = {d: tuple(who) for d, who in assignments(round_index, authors, sorted(commitments), k, parent).items()}
    if not with_standing:
        return everyone
    (lone,) = with_standing

    def checkers(digest: bytes, author: str) -> tuple[str, ...]:
        if author != lone:
            return (lone,)
        return () if lone == founder else everyone[digest]
    return {d: checkers(d, author) for d, author in authors.items()}


def decide(
    round_index: int,
    parent: bytes,
    commitments: Mapping[str, Commitment],
    ballots: Mapping[str, Mapping[bytes, Vote]],
    *,
    checkers_per_update: int,
    max_samples: int,
    standing: Collection[str] = (),
    work: IdentityWork | None = None,
    founder: str | None = None,
) -> RoundDecision:
    """Decide round ``round_index`` of version ``parent``.

    ``commitments`` is keyed by author (one commitment per peer and round, as the DHT
    records are), ``ballots`` by voter; both as frozen at their deadlines. Only admitted
    commitments (:func:`admit`) count. An update is accepted when more of its assigned
    checkers accept than reject it. An update without checkers is accepted without
    votes: a lone committer's, since nobody can check it and nobody else is affected
    (otherwise the first peer of a new swarm would waste its first rounds), and the
    ``founder``'s while it alone has standing (:func:`checker_table`). Merge weights are the claimed samples capped at
    ``max_samples``, here and not only at checkers, so no claim can dominate the mean.
    """
    admission = admit(round_index, commitments, standing=standing, work=work)
    admitted = admission.admitted
    authors = {c.digest: author for author, c in admitted.items()}
    table = checker_table(round_index, admitted, checkers_per_update, standing, parent, founder)
    counts = tally({voter: {d: v.accept for d, v in votes.items()} for voter, votes in ballots.items()}, table)
    counts.update({d: Tally(1, 0) for d, who in table.items() if not who})
    reasons = {voter: {d: v.reason for d, v in votes.items() if not v.accept and v.reason}
               for voter, votes in ballots.items()}
    accepted = tuple(sorted(d for d, t in counts.items() if passes(t, authors[d] in standing)))
    weights = {c.digest: merge_weight(c.samples, max_samples) for c in admitted.values()}
    return RoundDecision(
        round=round_index, parent=parent, authors=authors,
        checkers=table, counts=counts,
        rejections=common_rejection(reasons, table), weights=weights, accepted=accepted,
        next_version=version_id(parent, accepted), refused=admission.refused,
    )
