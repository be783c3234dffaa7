"""Identity files and owner markers (no network)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.p2p import PeerID
from hivemind.proto import crypto_pb2

from swarmtrain.dht.identity import IDENTITY_FILENAME, IdentityError, load_identity, load_or_create_identity
from swarmtrain.dht.owner import InvalidOwnerMarkerError, peer_id_from_owner_marker


def test_identity_is_created_once_and_loads_the_same(tmp_path: Path) -> None:
    first = load_or_create_identity(tmp_path / "peer")
    path = tmp_path / "peer" / IDENTITY_FILENAME
    assert first.path == path and path.exists()
    again = load_or_create_identity(tmp_path / "peer")
    assert again.peer_id == first.peer_id and again.owner_marker == first.owner_marker
    # The PeerID libp2p will use for this key file (hivemind's own derivation).
    assert first.peer_id == PeerID.from_identity(path.read_bytes()).to_base58()
    assert list((tmp_path / "peer").iterdir()) == [path]  # no temp file left behind
    assert "PRIVATE" not in repr(first) and first.peer_id in repr(first)


def test_signing_key_is_the_identity_key(tmp_path: Path) -> None:
    identity = load_or_create_identity(tmp_path)
    validator = RSASignatureValidator(identity.private_key)
    assert validator.local_public_key == identity.owner_marker
    assert peer_id_from_owner_marker(identity.owner_marker) == identity.peer_id
    # The key travels into the DHT process by pickling.
    restored = pickle.loads(pickle.dumps(validator))
    assert restored.local_public_key == identity.owner_marker


def test_corrupt_identity_file_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / IDENTITY_FILENAME).write_bytes(b"\xff\x00garbage")
    with pytest.raises(IdentityError, match="delete it"):
        load_or_create_identity(tmp_path)


def test_non_rsa_identity_is_refused(tmp_path: Path) -> None:
    path = tmp_path / IDENTITY_FILENAME
    path.write_bytes(crypto_pb2.PrivateKey(key_type=crypto_pb2.KeyType.Ed25519, data=b"\x01" * 64).SerializeToString())
    with pytest.raises(IdentityError, match="Ed25519 key, swarmtrain needs RSA"):
        load_identity(path)


def test_missing_identity_file_is_an_identity_error(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="cannot read"):
        load_identity(tmp_path / "nope.key")


@pytest.mark.parametrize(
    "marker",
    [
        b"",
        b"[owner:ssh-rsa AAAA]",  # not a key
        b"[owner:ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl]",
        b"prefix[owner:ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7]",
        b"[owner:" + b"A" * 2000 + b"]",
        "[owner:ssh-rsa AAAA]",
    ],
)
def test_bad_owner_markers_raise(marker: object) -> None:
    with pytest.raises(InvalidOwnerMarkerError):
        peer_id_from_owner_marker(marker)  # type: ignore[arg-type]


def test_marker_with_trailing_bytes_is_refused(tmp_path: Path) -> None:
    identity = load_or_create_identity(tmp_path)
    with pytest.raises(InvalidOwnerMarkerError):
        peer_id_from_owner_marker(identity.owner_marker + b"x")
    with pytest.raises(InvalidOwnerMarkerError):
        peer_id_from_owner_marker(identity.owner_marker * 2)
