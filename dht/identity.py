"""A peer's persistent identity: one RSA key file in its data directory.

The same key is the libp2p identity (``DHT(identity_path=...)``) and the key that signs the
peer's DHT entries (``RSASignatureValidator``), so the PeerID and the owner marker stay the
same across restarts and each can be computed from the other (see owner.py).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.protobuf.message import DecodeError
from hivemind.p2p import P2P
from hivemind.proto import crypto_pb2
from hivemind.utils.crypto import RSAPrivateKey

from swarmtrain.dht.owner import make_owner_marker, peer_id_from_public_key

__all__ = ["IDENTITY_FILENAME", "Identity", "IdentityError", "load_identity", "load_or_create_identity"]

IDENTITY_FILENAME = "identity.key"


class IdentityError(ValueError):
    """The identity file cannot be read or created."""


class FileRSAPrivateKey(RSAPrivateKey):
    """hivemind's RSAPrivateKey built from an existing key instead of a freshly generated one.

    hivemind only offers a constructor that generates a new key; pickling (it travels into
    the DHT process inside the validator) goes through the parent's __getstate__/__setstate__.
    """

    def __init__(self, private_key: rsa.RSAPrivateKey) -> None:
        # No super().__init__(): it would generate (and throw away) a fresh 2048-bit key.
        self._private_key = private_key


@dataclass(frozen=True)
class Identity:
    """The key file, its private key and what follows from it."""

    path: Path
    private_key: RSAPrivateKey
    peer_id: str  # base58 libp2p PeerID, the same one the DHT will report once started
    owner_marker: bytes  # the subkey under which this peer writes its entries

    def __repr__(self) -> str:  # never print key material into logs
        return f"Identity(path={str(self.path)!r}, peer_id={self.peer_id!r})"


def load_identity(path: Path) -> Identity:
    """Read an identity file written by :func:`load_or_create_identity` (or ``P2P.generate_identity``)."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise IdentityError(f"cannot read identity file {path}: {error.strerror}; check its permissions") from error
    try:
        message = crypto_pb2.PrivateKey.FromString(raw)
    except DecodeError as error:
        raise IdentityError(
            f"identity file {path} is not a libp2p private key; delete it to make a new identity"
        ) from error
    if message.key_type != crypto_pb2.KeyType.RSA:
        # Our owner markers and signatures are RSA (hivemind's RSASignatureValidator).
        raise IdentityError(
            f"identity file {path} holds a {crypto_pb2.KeyType.Name(message.key_type)} key, swarmtrain needs RSA; "
            "delete it to make a new identity"
        )
    try:
        private_key = serialization.load_der_private_key(message.data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise IdentityError(f"identity file {path} is corrupt; delete it to make a new identity") from error
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise IdentityError(f"identity file {path} does not hold an RSA key; delete it to make a new identity")
    public_key = private_key.public_key()
    return Identity(
        path=path,
        private_key=FileRSAPrivateKey(private_key),
        peer_id=peer_id_from_public_key(public_key),
        owner_marker=make_owner_marker(public_key),
    )


def load_or_create_identity(data_dir: str | os.PathLike[str]) -> Identity:
    """Load ``<data_dir>/identity.key``, creating the directory and the key on first use."""
    # Absolute, so the daemon (which gets this path) and error messages do not depend on cwd.
    directory = Path(data_dir).expanduser().resolve()
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise IdentityError(f"cannot create data directory {directory}: {error.strerror}") from error
    path = directory / IDENTITY_FILENAME
    if not path.exists():
        _create_atomically(path)
    return load_identity(path)


def _create_atomically(path: Path) -> None:
    # Two peers started at once on the same data dir must end with one key, not two
    # half-written ones: write a private temp file, then hard-link it into place, which
    # fails if the other peer won the race (then we use theirs).
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        P2P.generate_identity(str(temp))
        try:
            os.link(temp, path)
        except FileExistsError:
            pass
    except OSError as error:
        raise IdentityError(f"cannot write identity file {path}: {error.strerror}") from error
    finally:
        temp.unlink(missing_ok=True)
