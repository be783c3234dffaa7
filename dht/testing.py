"""Valid sample records for tests (here and in other packages' tests).

Each builder returns a record that passes its schema; keyword arguments override fields.
They take the peer id explicitly because a record is only accepted under the subkey of
the peer it names.
"""

from __future__ import annotations

import hashlib
from typing import Any

from swarmtrain.dht.schemas import CommitRecord, GenesisRecord, PeerRecord, ResultRecord, VoteRecord

__all__ = ["hex_digest", "sample_commit", "sample_genesis", "sample_peer", "sample_result", "sample_votes"]


def hex_digest(label: str) -> str:
    """A deterministic 64-hex-digit digest for ``label``."""
    return hashlib.blake2b(label.encode(), digest_size=32).hexdigest()


def sample_genesis(creator: str, /, **overrides: Any) -> GenesisRecord:
    """A genesis of swarm 'itest' created by ``creator``."""
    fields: dict[str, Any] = {
        "protocol_version": 1,
        "swarm": "itest",
        "task": "synthetic",
        "config": {"preset": "smoke", "rounds": {"train_s": 2.0, "commit_s": 1.0}, "seed": 7},
        "initial_checksum": hex_digest("initial"),
        "genesis_time": 1_800_000_000.0,
        "creator": creator,
    }
    fields.update(overrides)
    return GenesisRecord.model_validate(fields)


def sample_peer(peer_id: str, /, **overrides: Any) -> PeerRecord:
    """A heartbeat of ``peer_id`` at round 3."""
    fields: dict[str, Any] = {
        "peer_id": peer_id,
        "addresses": [f"/ip4/127.0.0.1/tcp/31337/p2p/{peer_id}"],
        "round": 3,
        "version_id": hex_digest("v3"),
        "state_checksum": hex_digest("s3"),
        "role": "trainer",
        "last_val_loss": 2.5,
        "bytes_sent": 1000,
        "bytes_received": 2000,
        "updates_accepted": 2,
        "updates_rejected": 1,
        "software_version": "swarmtrain 0.1.0",
        "time": 1_800_000_100.0,
    }
    fields.update(overrides)
    return PeerRecord.model_validate(fields)


def sample_commit(peer_id: str, /, **overrides: Any) -> CommitRecord:
    """A commitment of ``peer_id`` to an update built on version 'v3'."""
    fields: dict[str, Any] = {
        "peer_id": peer_id,
        "digest": hex_digest(f"update-{peer_id}"),
        "size": 4096,
        "samples": 64,
        "base_version": hex_digest("v3"),
        "train_loss": 2.25,
    }
    fields.update(overrides)
    return CommitRecord.model_validate(fields)


def sample_votes(voter: str, digests: list[str] | None = None, /, **overrides: Any) -> VoteRecord:
    """``voter``'s ballot: accepts every digest in ``digests`` (default: one sample digest)."""
    chosen = digests if digests is not None else [hex_digest("update-x")]
    fields: dict[str, Any] = {
        "voter": voter,
        "votes": {digest: {"accept": True, "loss_delta": -0.01} for digest in chosen},
    }
    fields.update(overrides)
    return VoteRecord.model_validate(fields)


def sample_result(peer_id: str, /, **overrides: Any) -> ResultRecord:
    """``peer_id``'s result: version 'v4' from one accepted update."""
    fields: dict[str, Any] = {
        "peer_id": peer_id,
        "version_id": hex_digest("v4"),
        "state_checksum": hex_digest("s4"),
        "accepted": [hex_digest("update-x")],
    }
    fields.update(overrides)
    return ResultRecord.model_validate(fields)
