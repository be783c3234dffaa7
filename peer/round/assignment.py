"""Who checks which update: a deterministic draw anyone can recompute.

For round ``r`` and an update with digest ``d``, every candidate peer ``p`` (all peers
but the author) gets the score ``BLAKE2b("swarmtrain-check" | r | d | p)``; the ``k``
lowest scores check ``d``. A swarm with ``k`` or fewer other peers checks everything.
The author cannot choose its checkers without changing its digest, and changing the
digest reshuffles them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping


def _score(round_index: int, digest: bytes, peer: str) -> bytes:
    h = hashlib.blake2b(digest_size=32, person=b"swarmtrain-chk")
    h.update(round_index.to_bytes(8, "big"))
    h.update(digest)
    h.update(peer.encode())
    return h.digest()


def checkers_for(round_index: int, digest: bytes, author: str, peers: Iterable[str], k: int) -> list[str]:
    """The ``k`` peers (never the author) that must check ``digest`` in this round."""
    if k < 1:
        raise ValueError(f"checkers per update must be >= 1, got {k}")
    candidates = sorted({p for p in peers if p != author})
    candidates.sort(key=lambda p: _score(round_index, digest, p))
    return candidates[:k]


def assignments(round_index: int, authors: Mapping[bytes, str], peers: Iterable[str], k: int) -> dict[bytes, list[str]]:
    """Checkers for every update of the round: ``{digest: [checker, ...]}``."""
    peer_list = sorted(set(peers))
    return {digest: checkers_for(round_index, digest, author, peer_list, k)
            for digest, author in authors.items()}


def to_check(round_index: int, me: str, authors: Mapping[bytes, str], peers: Iterable[str], k: int) -> list[bytes]:
    """The digests this peer must check, in digest order."""
    table = assignments(round_index, authors, peers, k)
    return sorted(d for d, checkers in table.items() if me in checkers)
