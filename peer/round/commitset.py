"""The commitment set a round is decided over, and the hash of it that ballots name.

Peers freeze a round's commitments at the commit deadline. A commitment published right
at the deadline can be in one peer's set and not in another's; the two then draw other
checkers and tally other votes, and compute different versions (one of them recomputes
the other's afterwards, at the cost of its own merge). So each ballot names the hash of
the set its voter froze and judged, and every peer decides over the set that most voters
with standing named, among the sets it can build from what it read. Voters without
standing only break ties: fresh identities cannot pick the set.

Pure: commitments and ballots' named hashes in, the hash or the ordered views out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Mapping, Sequence
from itertools import combinations
from typing import TypeVar

from swarmtrain.peer.round.decision import Commitment

View = TypeVar("View")


def commit_set_digest(commitments: Mapping[str, Commitment]) -> bytes:
    """BLAKE2b-256 of what the decision reads of each commitment, by author."""
    h = hashlib.blake2b(digest_size=32, person=b"swarmtrain-cset")
    for author in sorted(commitments):
        c = commitments[author]
        name = author.encode()
        h.update(len(name).to_bytes(2, "big") + name)
        h.update(c.digest)
        h.update(c.samples.to_bytes(8, "big") + c.work.to_bytes(8, "big"))
    return h.digest()


def by_named(views: Sequence[View], digest_of: Callable[[View], bytes], named: Mapping[str, bytes],
             standing: Collection[str]) -> list[View]:
    """``views`` with the most named first: by voters with standing, then by all voters;
    otherwise in the given order (a peer lists its own frozen set first)."""
    def key(item: tuple[int, View]) -> tuple[int, int, int]:
        index, view = item
        digest = digest_of(view)
        voters = [v for v, d in named.items() if d == digest]
        return (-sum(v in standing for v in voters), -len(voters), index)

    return [view for _, view in sorted(enumerate(views), key=key)]


# At most this many doubtful commitments are tried left out of a set to rebuild a named one
# (at most 2^8 hashes of at most 64 commitments each, a few milliseconds in all).
MAX_DOUBTFUL = 8


def rebuild(target: bytes, now: Mapping[str, Commitment], doubtful: Collection[str]) -> dict[str, Commitment] | None:
    """The subset of ``now`` whose hash is ``target``, leaving out some of the
    ``doubtful`` authors (fewest first); None when no such subset is found.

    ``now`` is every commitment readable after the round, which holds every set any peer
    froze (a commitment is not taken back within a round); the commitments a named set
    may lack are the doubtful ones: those none of its voters judged.
    """
    candidates = sorted(a for a in doubtful if a in now)[:MAX_DOUBTFUL]
    for size in range(len(candidates) + 1):
        for left_out in combinations(candidates, size):
            view = {a: c for a, c in now.items() if a not in left_out}
            if commit_set_digest(view) == target:
                return view
    return None
