"""Who checks which update: a deterministic draw anyone can recompute, in O(P log P).

The round's seed is its index and its parent version's id (unknown until the last
round's merge). Every candidate peer ``p`` gets a point ``BLAKE2b(seed | "peer:" p)`` on
a ring, and every update the point ``BLAKE2b(seed | "update:" author)``; the ``k``
candidates that follow the update's point around the ring (skipping its author) check
it. The ring is sorted once per round and each update costs a binary search, so a round
of P peers and updates costs O(P log P), not the O(P^2 log P) of scoring every pair. A
swarm with ``k`` or fewer other peers checks everything.

The update's point comes from its author, not its digest: any change to an update's
values gives a new digest, so with digest points an author could perturb its update
until the draw handed it to checkers it colludes with (a few dozen tries when a third of
the candidates collude and 3 check each update). An author cannot change its identity
within a round (a new one has no standing), and the parent version is not known before
the round, so nobody can arrange far ahead which of its identities sits where.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Mapping


def _point(seed: bytes, item: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=32, person=b"swarmtrain-chk")
    h.update(seed)
    h.update(item)
    return h.digest()


def _seed(round_index: int, parent: bytes) -> bytes:
    return round_index.to_bytes(8, "big") + len(parent).to_bytes(2, "big") + parent


class CheckerRing:
    """The round's candidates in ring order; :meth:`checkers` draws for one update."""

    def __init__(self, round_index: int, peers: Iterable[str], parent: bytes = b"") -> None:
        self.round = round_index
        self._seed = _seed(round_index, parent)
        ring = sorted((_point(self._seed, b"peer:" + p.encode()), p) for p in set(peers))
        self._points = [point for point, _ in ring]
        self._peers = [peer for _, peer in ring]

    def checkers(self, author: str, k: int) -> list[str]:
        """The ``k`` peers (never the author) that must check ``author``'s update."""
        if k < 1:
            raise ValueError(f"checkers per update must be >= 1, got {k}")
        n = len(self._peers)
        start = bisect.bisect_left(self._points, _point(self._seed, b"update:" + author.encode()))
        out: list[str] = []
        for i in range(min(n, k + 1)):
            peer = self._peers[(start + i) % n]
            if peer != author:
                out.append(peer)
            if len(out) == k:
                break
        return out


def checkers_for(round_index: int, author: str, peers: Iterable[str], k: int, parent: bytes = b"") -> list[str]:
    """The ``k`` peers (never the author) that must check ``author``'s update in this round."""
    return CheckerRing(round_index, peers, parent).checkers(author, k)


def assignments(round_index: int, authors: Mapping[bytes, str], peers: Iterable[str], k: int,
                parent: bytes = b"") -> dict[bytes, list[str]]:
    """Checkers for every update of the round: ``{digest: [checker, ...]}`` (one update
    per author and round, as admission guarantees)."""
    ring = CheckerRing(round_index, peers, parent)
    return {digest: ring.checkers(author, k) for digest, author in authors.items()}


def to_check(round_index: int, me: str, authors: Mapping[bytes, str], peers: Iterable[str], k: int,
             parent: bytes = b"") -> list[bytes]:
    """The digests this peer must check, in digest order."""
    table = assignments(round_index, authors, peers, k, parent)
    return sorted(d for d, checkers in table.items() if me in checkers)
