"""Who checks which update: a deterministic draw anyone can recompute, in O(P log P).

Every candidate peer ``p`` gets a point ``BLAKE2b("swarmtrain-chk" | r | p)`` on a ring,
and every update ``d`` the point ``BLAKE2b("swarmtrain-chk" | r | d)``; the ``k``
candidates that follow ``d``'s point around the ring (skipping its author) check it. The
ring is sorted once per round and each update costs a binary search, so a round of P
peers and updates costs O(P log P), not the O(P^2 log P) of scoring every pair. A swarm
with ``k`` or fewer other peers checks everything. The author cannot choose its checkers
without changing its digest, and changing the digest moves it on the ring.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Mapping


def _point(round_index: int, item: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=32, person=b"swarmtrain-chk")
    h.update(round_index.to_bytes(8, "big"))
    h.update(item)
    return h.digest()


class CheckerRing:
    """The round's candidates in ring order; :meth:`checkers` draws for one update."""

    def __init__(self, round_index: int, peers: Iterable[str]) -> None:
        self.round = round_index
        ring = sorted((_point(round_index, b"peer:" + p.encode()), p) for p in set(peers))
        self._points = [point for point, _ in ring]
        self._peers = [peer for _, peer in ring]

    def checkers(self, digest: bytes, author: str, k: int) -> list[str]:
        """The ``k`` peers (never the author) that must check ``digest``."""
        if k < 1:
            raise ValueError(f"checkers per update must be >= 1, got {k}")
        n = len(self._peers)
        start = bisect.bisect_left(self._points, _point(self.round, b"update:" + digest))
        out: list[str] = []
        for i in range(min(n, k + 1)):
            peer = self._peers[(start + i) % n]
            if peer != author:
                out.append(peer)
            if len(out) == k:
                break
        return out


def checkers_for(round_index: int, digest: bytes, author: str, peers: Iterable[str], k: int) -> list[str]:
    """The ``k`` peers (never the author) that must check ``digest`` in this round."""
    return CheckerRing(round_index, peers).checkers(digest, author, k)


def assignments(round_index: int, authors: Mapping[bytes, str], peers: Iterable[str], k: int) -> dict[bytes, list[str]]:
    """Checkers for every update of the round: ``{digest: [checker, ...]}``."""
    ring = CheckerRing(round_index, peers)
    return {digest: ring.checkers(digest, author, k) for digest, author in authors.items()}


def to_check(round_index: int, me: str, authors: Mapping[bytes, str], peers: Iterable[str], k: int) -> list[bytes]:
    """The digests this peer must check, in digest order."""
    table = assignments(round_index, authors, peers, k)
    return sorted(d for d, checkers in table.items() if me in checkers)
