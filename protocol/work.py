"""Proof of work on a peer's identity: what a new identity costs in a swarm that asks.

A libp2p identity is one RSA key, free to make by the thousand. A swarm whose genesis
sets ``vote.identity_bits`` = b admits a commitment only from an identity that carries a
nonce for which BLAKE2b(salt, peer id, nonce) starts with b zero bits: about 2^b hashes
to find, one to check. The salt is the swarm's genesis digest, so the work cannot be
done before the swarm exists, nor reused in another swarm.

Honest peers pay it once per identity and swarm (about a second at 20 bits in Python);
an attacker pays it for every identity it brings. It prices identities, it does not
stop a patient attacker: standing and the checks do the rest.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

_PERSON = b"swarmtrain-work"  # BLAKE2b personalisation: these hashes are no other digest
MAX_IDENTITY_BITS = 30  # 2^30 hashes: some minutes in Python; more would lock honest joiners out
_NONCE_BYTES = 8


def _hasher(salt: bytes, peer_id: str) -> hashlib._Hash:  # type: ignore[name-defined]
    h = hashlib.blake2b(digest_size=32, person=_PERSON)
    for part in (salt, peer_id.encode()):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h


def _leading_zero_bits(digest: bytes) -> int:
    value = int.from_bytes(digest, "big")
    return len(digest) * 8 - value.bit_length()


@dataclass(frozen=True)
class IdentityWork:
    """A swarm's price of an identity: ``bits`` leading zero bits over ``salt``."""

    salt: bytes
    bits: int

    def __post_init__(self) -> None:
        if not 0 <= self.bits <= MAX_IDENTITY_BITS:
            raise ValueError(f"identity work must be 0..{MAX_IDENTITY_BITS} bits, got {self.bits}")

    def accepts(self, peer_id: str, nonce: int) -> bool:
        """Whether ``nonce`` is proof of the work for ``peer_id``."""
        if self.bits == 0:
            return True
        if not 0 <= nonce < 1 << (8 * _NONCE_BYTES):
            return False
        h = _hasher(self.salt, peer_id)
        h.update(nonce.to_bytes(_NONCE_BYTES, "little"))
        return _leading_zero_bits(h.digest()) >= self.bits

    def solve(self, peer_id: str) -> int:
        """The smallest nonce that proves the work for ``peer_id`` (about 2^bits hashes)."""
        if self.bits == 0:
            return 0
        prefix = _hasher(self.salt, peer_id)
        for nonce in range(1 << (8 * _NONCE_BYTES)):
            h = prefix.copy()
            h.update(nonce.to_bytes(_NONCE_BYTES, "little"))
            if _leading_zero_bits(h.digest()) >= self.bits:
                return nonce
        raise AssertionError("unreachable: 2^64 nonces tried")  # pragma: no cover
