"""Owner markers: who wrote a per-peer entry, and which libp2p peer that is.

hivemind's ``RSASignatureValidator`` protects any subkey containing
``[owner:ssh-rsa ...]``: only the holder of that RSA key can write it. Our identity file
holds one RSA key that is used both as the libp2p identity (so the PeerID is
``sha256-multihash(protobuf(RSA, DER public key))``, the libp2p peer-id spec) and as the
signing key, so the PeerID of an entry's owner can be computed from its marker alone. That
lets every validating node refuse an entry whose record claims a different peer id.
"""

from __future__ import annotations

import functools
import hashlib
import re

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hivemind.p2p import PeerID
from hivemind.proto import crypto_pb2

__all__ = [
    "MAX_MARKER_BYTES",
    "InvalidOwnerMarkerError",
    "make_owner_marker",
    "peer_id_from_owner_marker",
    "peer_id_from_public_key",
]

# A 4096-bit key's marker is ~730 bytes; anything much longer is not a key we make, and
# caching or hashing it is work an attacker chose for us.
MAX_MARKER_BYTES = 1024

# Exactly one marker and nothing else: the validator refuses subkeys that merely *contain*
# a marker, so one identity cannot spread entries over many subkeys of the same key.
_MARKER_RE = re.compile(rb"\[owner:(ssh-rsa [A-Za-z0-9+/]+={0,2})\]")

# sha2-256 multihash prefix: code 0x12, digest length 32 (multihash spec).
_SHA256_MULTIHASH_PREFIX = b"\x12\x20"


class InvalidOwnerMarkerError(ValueError):
    """A subkey is not exactly one ``[owner:ssh-rsa ...]`` marker holding an RSA key."""


def make_owner_marker(public_key: rsa.RSAPublicKey) -> bytes:
    """The marker hivemind's RSASignatureValidator puts in subkeys for ``public_key``."""
    openssh = public_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return b"[owner:" + openssh + b"]"


def peer_id_from_public_key(public_key: rsa.RSAPublicKey) -> str:
    """The base58 libp2p PeerID of an RSA identity with this public key."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    encoded = crypto_pb2.PublicKey(key_type=crypto_pb2.KeyType.RSA, data=der).SerializeToString()
    return PeerID(_SHA256_MULTIHASH_PREFIX + hashlib.sha256(encoded).digest()).to_base58()


def peer_id_from_owner_marker(marker: bytes) -> str:
    """The base58 PeerID of the owner named by ``marker``; raises InvalidOwnerMarkerError."""
    if not isinstance(marker, bytes):
        raise InvalidOwnerMarkerError(f"owner marker must be bytes, got {type(marker).__name__}")
    if len(marker) > MAX_MARKER_BYTES:
        raise InvalidOwnerMarkerError(f"owner marker is {len(marker)} bytes, the limit is {MAX_MARKER_BYTES}")
    return _cached_peer_id(marker)


# Parsing a key and hashing it costs ~30 us; every read and every validation of a
# dictionary repeats it for the same few hundred peers, so remember recent ones.
@functools.lru_cache(maxsize=4096)
def _cached_peer_id(marker: bytes) -> str:
    match = _MARKER_RE.fullmatch(marker)
    if match is None:
        raise InvalidOwnerMarkerError("subkey is not exactly one '[owner:ssh-rsa ...]' marker")
    try:
        public_key = serialization.load_ssh_public_key(match.group(1))
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:  # malformed base64 or key structure
        raise InvalidOwnerMarkerError(f"owner marker holds no readable public key: {error}") from error
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise InvalidOwnerMarkerError("owner marker must hold an RSA public key")
    return peer_id_from_public_key(public_key)
